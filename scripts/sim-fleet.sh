#!/usr/bin/env bash
# Start or remove the simulated fleet of inventories/sim.
#   scripts/sim-fleet.sh up     build the images if needed, start every container
#   scripts/sim-fleet.sh down   remove the containers
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$EDGEAI_VENV/bin/activate" 2>/dev/null || die "no venv at $EDGEAI_VENV: run scripts/setup.sh first"
cd "$EDGEAI_ROOT"

case "${1:-up}" in
  up)
    bash scripts/build-target-image.sh amd64
    bash scripts/build-target-image.sh arm64
    ansible-playbook -i inventories/sim playbooks/sim_fleet.yml \
      -e "sim_image_amd64=$(target_image amd64)" -e "sim_image_arm64=$(target_image arm64)"
    ;;
  down)
    ansible-playbook -i inventories/sim playbooks/sim_fleet.yml -e sim_fleet_state=absent
    ;;
  *) die "usage: sim-fleet.sh up|down";;
esac
