#!/usr/bin/env bash
# Build the simulated-device base image for one architecture (amd64 or arm64)
# with debootstrap and `podman import`: no container registry is needed.
# Idempotent: an image whose tag carries the current recipe hash is reused.
#   scripts/build-target-image.sh amd64|arm64
set -euo pipefail
. "$(dirname "$0")/lib.sh"

arch=${1:?usage: build-target-image.sh amd64|arm64}
case "$arch" in amd64|arm64) ;; *) die "unknown architecture '$arch' (amd64 or arm64)";; esac

if [ -n "${EDGEAI_TARGET_IMAGE:-}" ]; then
  log "EDGEAI_TARGET_IMAGE=$EDGEAI_TARGET_IMAGE is set: not building $arch"
  podman image exists "$EDGEAI_TARGET_IMAGE" || die "image $EDGEAI_TARGET_IMAGE is not present; pull it first"
  exit 0
fi

image=$(target_image "$arch")
if podman image exists "$image"; then
  log "image $image is up to date"
  exit 0
fi

host_arch=$(dpkg --print-architecture)
if [ "$arch" != "$host_arch" ]; then
  bash "$EDGEAI_ROOT/scripts/qemu-binfmt.sh"  # foreign targets run under qemu-user
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/edgeai-rootfs-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "debootstrap $EDGEAI_IMAGE_SUITE/$arch into $work (amd64 ~1 min, arm64 under qemu ~3-4 min)"
bootstrap_rootfs "$arch" "$EDGEAI_IMAGE_PACKAGES" "$work"
# systemd in a container: no getty or udev-settle waits at boot.
ln -sf /dev/null "$work/rootfs/etc/systemd/system/getty@tty1.service"
ln -sf /dev/null "$work/rootfs/etc/systemd/system/systemd-udevd.service"
ln -sf /dev/null "$work/rootfs/etc/systemd/system/systemd-networkd-wait-online.service"
# Under qemu-user, systemd cannot set up unit credentials (LoadCredential=) and these
# early-boot units fail with 243/CREDENTIALS, leaving the system "degraded". They need
# no credentials in a container: clear the list so boot ends "running" on every arch.
for unit in systemd-tmpfiles-setup systemd-tmpfiles-setup-dev systemd-sysusers; do
  mkdir -p "$work/rootfs/etc/systemd/system/$unit.service.d"
  printf '[Service]\nLoadCredential=\n' > "$work/rootfs/etc/systemd/system/$unit.service.d/no-credentials.conf"
done

import_rootfs "$work" "$arch" "$image" "$(image_recipe_hash)" "localhost/edgeai-target:$arch-" \
  --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3'
