"""ModelStore on a real filesystem: layout, atomic pointers, keep-N, and kill -9 at random moments."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.device.store import ModelStore, StoreError


def fake_manifest(version: str, payload: bytes, name: str = "m") -> Manifest:
    return Manifest.for_model(name, version, "onnxruntime", "fp32", payload,
                              inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                              outputs=[{"name": "y", "datatype": "FP32", "shape": [-1, 2]}])


def install(store: ModelStore, version: str, name: str = "m"):
    payload = ("model %s %s" % (name, version)).encode() * 100
    return store.install(fake_manifest(version, payload, name), payload)


def test_install_is_idempotent_and_checked(tmp_path):
    store = ModelStore(str(tmp_path))
    assert install(store, "1.0.0").changed
    assert not install(store, "1.0.0").changed
    assert store.versions("m") == ["1.0.0"]
    assert store.active("m") is None  # installing does not activate
    payload = b"x" * 10
    with pytest.raises(StoreError, match="sha256 does not match"):
        store.install(fake_manifest("2.0.0", payload), b"y" * 10)
    with pytest.raises(StoreError, match="different model is installed under this version"):
        store.install(fake_manifest("1.0.0", payload), payload)
    assert store.versions("m") == ["1.0.0"]


def test_activate_previous_rollback_and_keep(tmp_path):
    store = ModelStore(str(tmp_path), keep=2)
    for v in ("1.0.0", "1.2.0", "1.10.0"):
        install(store, v)
    assert store.versions("m") == ["1.0.0", "1.2.0", "1.10.0"]  # numeric order, not text order
    assert store.activate("m", "1.0.0").changed
    assert not store.activate("m", "1.0.0").changed
    change = store.activate("m", "1.2.0")
    assert change.previous == "1.0.0" and store.pointer("m", "previous") == "1.0.0"
    store.activate("m", "1.10.0")
    assert store.versions("m") == ["1.0.0", "1.2.0", "1.10.0"]  # keep=2 besides the active one
    install(store, "1.11.0")
    store.activate("m", "1.11.0")
    # The oldest version that is neither active nor previous goes.
    assert store.versions("m") == ["1.2.0", "1.10.0", "1.11.0"]
    assert store.active("m") == "1.11.0" and store.pointer("m", "previous") == "1.10.0"
    assert store.rollback("m").version == "1.10.0"
    assert store.active("m") == "1.10.0" and store.pointer("m", "previous") == "1.11.0"
    assert store.rollback("m", "1.2.0").version == "1.2.0"
    with pytest.raises(StoreError, match="it is the active version"):
        store.remove("m", "1.2.0")
    with pytest.raises(StoreError, match="not installed"):
        store.activate("m", "9.9.9")
    # The pair is one record (one symlink whose target is the JSON), switched with one rename.
    record = json.loads(os.readlink(tmp_path / "models" / "m" / "pointers"))
    assert record == {"active": "1.2.0", "previous": "1.10.0"}
    assert not os.path.lexists(tmp_path / "models" / "m" / "active")


def test_corrupt_file_on_disk_is_detected(tmp_path):
    store = ModelStore(str(tmp_path))
    install(store, "1.0.0")
    path = tmp_path / "models" / "m" / "1.0.0" / "model.onnx"
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupt on disk"):
        store.read_model("m", "1.0.0")


def test_names_and_versions_cannot_escape_the_store(tmp_path):
    store = ModelStore(str(tmp_path))
    with pytest.raises(ValueError, match="must be 1-128 characters"):
        store.versions("../etc")
    with pytest.raises(ValueError):
        fake_manifest("../../x", b"abc")


CHURN = r"""
import sys
import time
from edgeai_runtime.device.store import ModelStore
sys.path.insert(0, sys.argv[2])
from test_store import install
store = ModelStore(sys.argv[1], keep=2)
print("churning", flush=True)
while True:
    version = "2.%d.0" % time.monotonic_ns()  # newer than anything an earlier, killed run installed
    install(store, version)
    store.activate("m", version)
    store.rollback("m")
    store.activate("m", version)
"""


def test_kill_9_at_random_moments_never_leaves_no_active_version(tmp_path):
    """A crash at any moment leaves either the old or the new version active, never neither."""
    store = ModelStore(str(tmp_path), keep=2)
    install(store, "1.0.0")
    store.activate("m", "1.0.0")
    rng = random.Random(7)
    kills = 0
    for attempt in range(25):  # pylint: disable=unused-variable
        proc = subprocess.Popen([sys.executable, "-c", CHURN, str(tmp_path), os.path.dirname(__file__)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.readline()  # the imports take longer than the kill window on a loaded machine
        time.sleep(rng.uniform(0.3, 0.6))
        proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate()[1]
        assert proc.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
        kills += 1
        active = store.active("m")
        assert active is not None, "no active version after kill -9"
        assert store.read_model("m", active)  # complete and matching its manifest
        store.recover()
        leftovers = [e for e in os.listdir(tmp_path / "models" / "m") if e.startswith(".")]
        assert leftovers == []
        for version in store.versions("m"):
            store.read_model("m", version)
    assert kills == 25
    versions = store.versions("m")
    # The churn ran, and keep=2 held: active + 2 kept, plus at most one version that was
    # installed but not yet activated when the kill came (pruning happens on activation).
    assert "1.0.0" not in versions and len(versions) <= 4
