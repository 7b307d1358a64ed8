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
image_recipe_hash() {
  printf '%s %s %s\n' "$EDGEAI_IMAGE_RECIPE" "$EDGEAI_IMAGE_PACKAGES" "$EDGEAI_IMAGE_SUITE" | sha256sum | cut -c1-12
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
