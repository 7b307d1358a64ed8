#!/usr/bin/env bash
# The whole test suite: set everything up, then ansible-lint, changelog lint, mypy and
# import-linter on the device runtime, ansible-test sanity, the Molecule default, ota and offline
# scenarios, and pytest (collection unit tests, the device runtime against real ONNX
# Runtime/LiteRT and a real HTTP server, integration tests against fresh containers).
# Exits non-zero on the first failing stage.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$EDGEAI_ROOT"

# Everything but the images first; the images (debootstrap, arm64 under qemu: minutes on a fresh machine) are
# built in the background while the static checks run, and waited for before Molecule.
bash scripts/setup.sh --no-images
mkdir -p "$EDGEAI_STATE"
images_log="$EDGEAI_STATE/images.log"
# Its own process group (setsid), so that a failing stage stops the whole build, debootstrap and all.
setsid bash scripts/setup.sh --images-only >"$images_log" 2>&1 &
images_job=$!
trap 'kill -- "-$images_job" 2>/dev/null || true' EXIT
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

stage "target images (built since setup)"
wait "$images_job" || { cat "$images_log" >&2; die "building the target images failed"; }
trap - EXIT
cat "$images_log" >&2

# default's Raspberry Pi runs under qemu-user, one emulated process at a time, and leaves a core idle for most of
# its run: ota and offline (one amd64 device each) run beside it, one after the other, in a process group of their
# own, with their own HOME and ANSIBLE_HOME (Molecule and ansible-compat install this collection into caches there;
# two runs must not write one copy), logged to .state/molecule-side.log and printed after default. They start once
# default's deploy is past the controller's wheelhouse (.state/wheelhouse, shared: two runs must not build it at
# once), or once default's converge is over, whichever its log shows first.
stage "molecule test (default: generic amd64 + raspberry_pi arm64; beside it ota, then offline)"
side_log="$EDGEAI_STATE/molecule-side.log" default_log="$EDGEAI_STATE/molecule-default.log"
: >"$default_log"
mkdir -p "$EDGEAI_STATE/home-side"
rm -rf "$EDGEAI_STATE/ansible-side/collections/ansible_collections/edgeai"
# shellcheck disable=SC2016  # the script's $DEFAULT_LOG is expanded by the inner bash, from its environment
DEFAULT_LOG="$default_log" HOME="$EDGEAI_STATE/home-side" ANSIBLE_HOME="$EDGEAI_STATE/ansible-side" setsid bash -c '
  set -e
  until grep -q -e "TASK \[edgeai.fleet.inference_service : Checksum the runtime wheel" \
                -e "\[default > converge\] Executed" "$DEFAULT_LOG"; do sleep 2; done
  echo "=== molecule test (ota: the fault matrix of model updates, generic amd64) ==="
  molecule test --scenario-name ota
  echo "=== molecule test (offline: network cut, queued, synced, deduplicated at the subscriber; generic amd64) ==="
  molecule test --scenario-name offline' >"$side_log" 2>&1 &
side_job=$!
trap 'kill -- "-$side_job" 2>/dev/null || true' EXIT
molecule test --scenario-name default 2>&1 | tee "$default_log"
stage "molecule test (ota, then offline: run beside default; their output follows)"
side_rc=0
wait "$side_job" || side_rc=$?
trap - EXIT
cat "$side_log"
[ "$side_rc" = 0 ] || die "molecule ota or offline failed (rc $side_rc; the output above)"

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
