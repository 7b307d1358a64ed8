#!/usr/bin/env bash
# The main job on the simulated fleet: set everything up, start one container per
# hardware class, and run deploy.yml against them. Safe to run again.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$EDGEAI_ROOT"

bash scripts/setup.sh
bash scripts/sim-fleet.sh up
. "$EDGEAI_VENV/bin/activate"
python scripts/build-demo-models.py "$EDGEAI_STATE/demo-models"
log "ansible-playbook deploy.yml -i inventories/sim"
ansible-playbook deploy.yml -i inventories/sim "$@"
