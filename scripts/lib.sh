# Shared helpers for the scripts in this folder. Source it; do not run it.
# shellcheck shell=bash
EDGEAI_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export EDGEAI_ROOT
export CONTAINERS_CONF="$EDGEAI_ROOT/scripts/containers.conf"
EDGEAI_VENV=${EDGEAI_VENV:-$EDGEAI_ROOT/.venv}
export EDGEAI_VENV
# Molecule, ansible-compat and ansible write into ~/.ansible unless told otherwise.
export EDGEAI_STATE="$EDGEAI_ROOT/.state"
export ANSIBLE_HOME="$EDGEAI_STATE/ansible"
export ANSIBLE_CONFIG="$EDGEAI_ROOT/ansible.cfg"

log() { printf '[edgeai %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The Debian packages each target image carries; hashed into the image tag so a
# changed recipe rebuilds the image and an unchanged one is reused.
EDGEAI_IMAGE_PACKAGES="python3,python3-venv,python3-apt,sudo,systemd,systemd-sysv,dbus,iproute2,ca-certificates,libgomp1,libusb-1.0-0"
EDGEAI_IMAGE_SUITE=bookworm
EDGEAI_IMAGE_MIRROR=${EDGEAI_IMAGE_MIRROR:-http://deb.debian.org/debian}

# Bump EDGEAI_IMAGE_RECIPE when build-target-image.sh changes what goes into an image.
EDGEAI_IMAGE_RECIPE=2
# recipe_hash RECIPE PACKAGES: the tag part of an image built by the recipe from the packages.
recipe_hash() {
  printf '%s %s %s\n' "$1" "$2" "$EDGEAI_IMAGE_SUITE" | sha256sum | cut -c1-12
}
image_recipe_hash() { recipe_hash "$EDGEAI_IMAGE_RECIPE" "$EDGEAI_IMAGE_PACKAGES"; }

# The broker image (scripts/build-broker-image.sh): Debian's mosquitto, amd64, for container tests.
# Bump EDGEAI_BROKER_RECIPE when build-broker-image.sh changes what goes into the image.
EDGEAI_BROKER_PACKAGES="mosquitto"
EDGEAI_BROKER_RECIPE=1
broker_image() {
  printf 'localhost/edgeai-broker:%s\n' "$(recipe_hash "$EDGEAI_BROKER_RECIPE" "$EDGEAI_BROKER_PACKAGES")"
}

# bootstrap_rootfs ARCH PACKAGES DIR: a minbase Debian root file system of the suite in DIR/rootfs, with
# PACKAGES (comma-separated) installed, slimmed of package lists, docs and man pages.
bootstrap_rootfs() {
  local arch=$1 packages=$2 work=$3
  debootstrap --arch="$arch" --variant=minbase --include="$packages" \
    "$EDGEAI_IMAGE_SUITE" "$work/rootfs" "$EDGEAI_IMAGE_MIRROR" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap of $packages for $arch failed"; }
  rm -rf "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/cache/apt/*.bin \
         "$work/rootfs"/usr/share/doc/* "$work/rootfs"/usr/share/man/*
}

# import_rootfs DIR ARCH IMAGE RECIPE_HASH STALE_PREFIX [--change ...]: DIR/rootfs as the image IMAGE, labelled
# with its recipe hash. Images of older recipes are dead weight: those whose name:tag starts with STALE_PREFIX
# are removed, except IMAGE and those a container still uses.
import_rootfs() {
  local work=$1 arch=$2 image=$3 hash=$4 stale=$5
  shift 5
  log "podman import -> $image"
  tar -C "$work/rootfs" -c . | podman import --quiet --arch "$arch" "$@" \
    --change "LABEL org.edgeai.recipe=$hash" - "$image" >/dev/null
  log "built $image"
  podman images --format '{{.Repository}}:{{.Tag}}' | awk -v p="$stale" 'index($0, p) == 1' | grep -vxF "$image" \
    | xargs -r podman rmi >/dev/null 2>&1 || true
}

# localhost/edgeai-target:<arch>-<recipe hash>, unless EDGEAI_TARGET_IMAGE names a pulled image.
target_image() {
  local arch=$1
  if [ -n "${EDGEAI_TARGET_IMAGE:-}" ]; then
    printf '%s\n' "$EDGEAI_TARGET_IMAGE"
  else
    printf 'localhost/edgeai-target:%s-%s\n' "$arch" "$(image_recipe_hash)"
  fi
}
