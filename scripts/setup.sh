#!/usr/bin/env bash
# Set up everything this checkout needs, on Debian as root. Idempotent, and quick
# when everything is in place:
#   - Debian packages: podman, runc, debootstrap, qemu-user-static + binfmt (arm64 targets),
#     prometheus (promtool), mosquitto (the MQTT broker the telemetry tests start), netavark and
#     aardvark-dns (containers on a test network, --internal too, reach each other by name; netavark runs
#     iptables, which a minimal Debian lacks)
#     chromium (headless: tests/integration/test_fleet_report_browser.py opens the rollout report in it)
#   - .venv with the pinned controller/test toolchain (requirements-dev.txt)
#   - the target images, amd64 and arm64, and the MQTT broker image (debootstrap + podman import; no registry)
#   - the .collections link that lets ansible find this collection
# --no-images does all but the images; --images-only builds just them (after a --no-images run):
# scripts/test.sh builds them while the static checks run.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$EDGEAI_ROOT"

images=yes others=yes
case "${1:-}" in
  "") ;;
  --no-images) images=no ;;
  --images-only) others=no ;;
  *) die "usage: $0 [--no-images | --images-only]" ;;
esac
# The target images at once: the arm64 debootstrap runs under qemu and takes longest; the broker image
# (mosquitto, for the container tests) is built after the amd64 one, meanwhile.
build_images() {
  { bash scripts/build-target-image.sh amd64 && bash scripts/build-broker-image.sh; } & amd64_build=$!
  bash scripts/build-target-image.sh arm64 || die "building the arm64 target image failed"
  wait "$amd64_build" || die "building the amd64 target image or the broker image failed"
}
if [ "$others" = no ]; then
  build_images
  log "images complete"
  exit 0
fi

APT_PACKAGES=(podman runc debootstrap qemu-user-static binfmt-support uidmap rsync python3 python3-venv ca-certificates git shellcheck prometheus mosquitto mosquitto-clients netavark aardvark-dns iptables chromium)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f '${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "installing ${missing[*]} needs root"
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# arm64 targets run under qemu-user through binfmt_misc.
bash scripts/qemu-binfmt.sh

# The venv, reinstalled only when requirements-dev.txt or device_runtime/pyproject.toml changes.
stamp="$EDGEAI_VENV/.requirements.sha256"
want=$(cat requirements-dev.txt device_runtime/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$EDGEAI_VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "creating $EDGEAI_VENV from requirements-dev.txt"
  python3 -m venv "$EDGEAI_VENV"
  "$EDGEAI_VENV/bin/pip" install -q --upgrade pip
  "$EDGEAI_VENV/bin/pip" install -q -r requirements-dev.txt
  # The device runtime, editable: tests and the controller-side tools import it.
  "$EDGEAI_VENV/bin/pip" install -q --no-deps -e device_runtime
  echo "$want" > "$stamp"
fi

# ansible.cfg's collections_path finds this checkout through this link.
link=.collections/ansible_collections/edgeai/fleet
if [ "$(readlink "$link" 2>/dev/null)" != "../../.." ]; then
  mkdir -p "$(dirname "$link")"
  ln -sfn ../../.. "$link"
fi

mkdir -p "$ANSIBLE_HOME"
[ "$images" = no ] || build_images
log "setup complete"
