#!/usr/bin/env bash
# The whole test suite: set everything up, then ansible-lint, changelog lint, mypy and
# import-linter on the device runtime, ansible-test sanity, the Molecule default, ota and offline
# scenarios, and pytest (collection unit tests, the device runtime against real ONNX
# Runtime/LiteRT and a real HTTP server, integration tests against fresh containers).
# Exits non-zero on the first failing stage.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$EDGEAI_ROOT"

bash scripts/setup.sh
. "$EDGEAI_VENV/bin/activate"
# Molecule, ansible-compat and ansible-test write into ~; keep that inside the checkout.
export HOME="$EDGEAI_STATE/home"
mkdir -p "$HOME"
EDGEAI_IMAGE_AMD64=$(target_image amd64)
EDGEAI_IMAGE_ARM64=$(target_image arm64)
export EDGEAI_IMAGE_AMD64 EDGEAI_IMAGE_ARM64 NO_COLOR=1 PY_COLORS=0 ANSIBLE_FORCE_COLOR=0

stage() { log "=== $* ==="; }

# Molecule/ansible-compat may leave a copy of this collection in $ANSIBLE_HOME/collections;
# a stale one would shadow the checkout for ansible-lint and Molecule. The checkout is the source.
rm -rf "$ANSIBLE_HOME/collections/ansible_collections/edgeai"

# Collect every test first: a collection error (say, two test files with one basename) costs
# seconds here instead of surfacing after the Molecule stages.
stage "pytest --collect-only"
python -m pytest tests/unit tests/device_runtime tests/integration -p no:cacheprovider \
  --collect-only -q >"$EDGEAI_STATE/pytest-collect.txt" || {
  cat "$EDGEAI_STATE/pytest-collect.txt"; die "pytest could not collect the suite"; }
tail -n 1 "$EDGEAI_STATE/pytest-collect.txt"

stage "ansible-lint --profile production"
ansible-lint --offline --profile production

stage "antsibull-changelog lint"
antsibull-changelog lint

# Both read their settings from device_runtime/pyproject.toml; the mypy cache stays in .state.
stage "mypy (device_runtime)"
mypy --config-file device_runtime/pyproject.toml --cache-dir "$EDGEAI_STATE/mypy-cache" \
  device_runtime/src/edgeai_runtime

stage "import-linter"
lint-imports --no-cache --no-logo device_runtime/pyproject.toml

stage "ansible-test sanity"
bash scripts/sanity.sh

stage "demo models (built offline)"
python scripts/build-demo-models.py "$EDGEAI_STATE/demo-models"

stage "molecule test (default: generic amd64 + raspberry_pi arm64)"
molecule test --scenario-name default

stage "molecule test (ota: the fault matrix of model updates, generic amd64)"
molecule test --scenario-name ota

stage "molecule test (offline: network cut, queued, synced, deduplicated at the subscriber; generic amd64)"
molecule test --scenario-name offline

stage "molecule test (rollout: staged rollouts - canary breach, wave breach, green, SIGKILL and resume; 6 x generic amd64)"
molecule test --scenario-name rollout

stage "pytest: unit and integration"
# Exit code 5 (no tests collected) is a failure here: the suite must never be empty.
set +e
# A test that hangs fails after 15 minutes with its stack (pytest-timeout), not at CI's 90.
python -m pytest tests/unit tests/device_runtime tests/integration -p no:cacheprovider -ra --durations=30 \
  --timeout=900
rc=$?
set -e
[ "$rc" = 5 ] && die "pytest collected no tests"
exit "$rc"
