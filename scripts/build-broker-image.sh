#!/usr/bin/env bash
# Build the MQTT broker image for container tests: Debian's mosquitto in a minbase amd64 root file system,
# made with debootstrap and `podman import` like the target images (no container registry is needed).
# Idempotent: an image whose tag carries the current recipe hash is reused.
#   scripts/build-broker-image.sh
# Run it as `podman run ... "$(. scripts/lib.sh; broker_image)"` with a mosquitto.conf mounted over
# /etc/mosquitto/mosquitto.conf (tests/support/mqtt_broker.py writes one); without one, mosquitto
# listens on the container's loopback only.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

image=$(broker_image)
if podman image exists "$image"; then
  log "image $image is up to date"
  exit 0
fi

if [ "$(dpkg --print-architecture)" != amd64 ]; then
  bash "$EDGEAI_ROOT/scripts/qemu-binfmt.sh"  # an amd64 broker on another host runs under qemu
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/edgeai-rootfs-broker.XXXXXX")
trap 'rm -rf "$work"' EXIT
log "debootstrap $EDGEAI_IMAGE_SUITE/amd64 with $EDGEAI_BROKER_PACKAGES into $work (~1 min)"
bootstrap_rootfs amd64 "$EDGEAI_BROKER_PACKAGES" "$work"
# A broker needs no package manager at run time: drop apt's and dpkg's caches (the tools stay, small).
rm -rf "$work/rootfs"/var/cache/apt/archives/*.deb "$work/rootfs"/var/log/*

import_rootfs "$work" amd64 "$image" "$(recipe_hash "$EDGEAI_BROKER_RECIPE" "$EDGEAI_BROKER_PACKAGES")" \
  localhost/edgeai-broker: \
  --change 'CMD ["/usr/sbin/mosquitto", "-c", "/etc/mosquitto/mosquitto.conf"]' --change 'STOPSIGNAL SIGTERM' \
  --change 'EXPOSE 1883' --change 'EXPOSE 8883'
