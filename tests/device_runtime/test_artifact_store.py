"""Signed artifacts in the real ModelStore and ModelManager: verified install, decrypt into memory,
nothing half-installed after a refusal, downgrade protection, key rotation, plaintext refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgeai_runtime.controller import packing
from edgeai_runtime.format import keys
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.service.serving import ModelManager
from edgeai_runtime.device.store import ModelStore, StoreError
from support import artifacts
from support.digits_store import digits_manifest

WINDOW = 64


@pytest.fixture
def device(tmp_path, signer):
    root = tmp_path / "device"
    ring = artifacts.device(str(root), signer)
    return ModelStore(str(root), keep=2, require_signed=True, hardware_class="generic"), ring


@pytest.fixture
def outdir(tmp_path):
    path = tmp_path / "controller"
    path.mkdir()
    return str(path)


def plaintext_windows_on_disk(root: str, model: bytes) -> list:
    """Every file under ``root`` holding any WINDOW-byte window of the model (sampled every 997 bytes)."""
    windows = {model[i:i + WINDOW] for i in range(0, len(model) - WINDOW, 997)}
    hits = []
    for dirpath, _dirs, names in os.walk(root):
        for fname in names:
            path = os.path.join(dirpath, fname)
            if os.path.islink(path):
                continue
            with open(path, "rb") as f:
                data = f.read()
            if any(w in data for w in windows):
                hits.append(path)
    return hits


def test_install_load_and_serve_without_plaintext_on_disk(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    slot = artifacts.slot_for(packed, ring)
    change = store.install_artifact(path, slot, files)
    assert change.changed and "signed artifact" in change.message
    assert not store.install_artifact(path, slot, files).changed
    # A freshly wrapped slot for the same device key is the same thing: still no change.
    assert not store.install_artifact(path, artifacts.slot_for(packed, ring), files).changed
    details = store.details("digits", "1.0.0")
    assert details["signed"] and details["artifact_id"] == packed.artifact_id
    assert details["payload_chunks_sha256"] == packed.header["payload"]["chunks_sha256"] and details["key_id"] == ring.current_id()
    manager = ModelManager(store, RuntimeConfig(root=store.root, require_signed=True))
    try:
        result = manager.activate("digits", "1.0.0")
        assert result["changed"] and result["gate"]["accuracy"] >= 0.9
    finally:
        manager.close()
    assert store.read_model("digits", "1.0.0") == digits_onnx
    assert plaintext_windows_on_disk(store.root, digits_onnx) == []


def assert_nothing_installed(store):
    assert store.names() == [] or all(store.versions(n) == [] for n in store.names())
    leftovers = [e for n in store.names() for e in os.listdir(os.path.join(store.models_dir, n))
                 if e.startswith(".staging")]
    assert leftovers == []


def test_untrusted_signer_is_refused_and_nothing_written(device, outdir, digits, digits_onnx):
    store, ring = device
    rogue = keys.generate("ed25519")
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, rogue)
    with pytest.raises(StoreError, match="not trusted here"):
        store.install_artifact(path, artifacts.slot_for(packed, ring), files)
    assert_nothing_installed(store)


def test_wrong_device_key_is_refused_and_nothing_written(device, outdir, digits, digits_onnx, signer):
    store, _ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    other = keys.generate("x25519")
    slot = keys.wrap(packed.data_key, other.public_key(), packed.artifact_id)
    with pytest.raises(StoreError, match="holds no private key"):
        store.install_artifact(path, slot, files)
    assert_nothing_installed(store)


def test_tampered_chunk_is_refused_at_install(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    with open(path, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x80]))
    with pytest.raises(StoreError, match="fails authentication"):
        store.install_artifact(path, artifacts.slot_for(packed, ring), files)
    assert_nothing_installed(store)


def test_gate_files_are_bound_to_the_signed_manifest(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    swapped = dict(files, **{"golden.npz": files["validation.npz"]})
    with pytest.raises(StoreError, match="gate file golden.npz does not match"):
        store.install_artifact(path, artifacts.slot_for(packed, ring), swapped)
    with pytest.raises(StoreError, match="lists gate files golden.npz"):
        store.install_artifact(path, artifacts.slot_for(packed, ring), {"validation.npz": files["validation.npz"]})
    assert_nothing_installed(store)


def test_other_hardware_class_is_refused(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    store.hardware_class = "raspberry_pi"
    # pack_digits' manifest names no classes: any class may load it.
    assert store.install_artifact(path, artifacts.slot_for(packed, ring), files).changed
    manifest, _files = digits_manifest("2.0.0", digits_onnx, digits)
    fields = dict(manifest.to_dict(), hardware_classes=["jetson_orin"])
    src = os.path.join(outdir, "m")
    with open(src, "wb") as f:
        f.write(digits_onnx)
    for key in ("sha256", "size", "created", "min_runtime_version", "files"):
        fields.pop(key)
    orin = packing.pack(src, os.path.join(outdir, "orin.eaf"), fields, signer)
    with pytest.raises(StoreError, match="built for jetson_orin, not for this raspberry_pi device"):
        store.install_artifact(orin.path, artifacts.slot_for(orin, ring))


def test_older_version_needs_force(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    for version in ("1.0.0", "1.2.0"):
        path, packed, files = artifacts.pack_digits(outdir, version, digits_onnx, digits, signer)
        store.install_artifact(path, artifacts.slot_for(packed, ring), files)
    store.activate("digits", "1.2.0")
    path, packed, files = artifacts.pack_digits(outdir, "1.1.0", digits_onnx, digits, signer)
    with pytest.raises(StoreError, match="older than the active version 1.2.0; pass force"):
        store.install_artifact(path, artifacts.slot_for(packed, ring), files)
    assert store.versions("digits") == ["1.0.0", "1.2.0"]
    assert store.install_artifact(path, artifacts.slot_for(packed, ring), files, force=True).changed
    assert store.versions("digits") == ["1.0.0", "1.1.0", "1.2.0"]


def test_plaintext_is_refused_when_signed_models_are_required(device, digits, digits_onnx):
    store, _ring = device
    manifest, files = digits_manifest("1.0.0", digits_onnx, digits)
    with pytest.raises(StoreError, match="signed artifacts only"):
        store.install(manifest, digits_onnx, files)
    lax = ModelStore(store.root)
    lax.install(manifest, digits_onnx, files)
    # The scan used above does find a plaintext model when there is one.
    assert plaintext_windows_on_disk(store.root, digits_onnx) == [os.path.join(store.root, "models", "digits",
                                                                               "1.0.0", "model.onnx")]
    with pytest.raises(StoreError, match="plaintext model and this device loads signed artifacts only"):
        store.read_model("digits", "1.0.0")


def test_key_rotation_rewraps_and_retires_the_old_key(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    store.install_artifact(path, artifacts.slot_for(packed, ring), files)
    old = ring.current_id()
    new = ring.create("rsa").key_id
    root = store.root
    cli = [sys.executable, "-m", "edgeai_runtime.cli", "--root", root]
    # The old key is still needed by the installed version: retire keeps it.
    out = json.loads(subprocess.run(cli + ["keys", "retire"], capture_output=True, text=True, check=True).stdout)
    assert out["changed"] is False and out["still_needed"] == [old]
    # Re-wrap for the new key (what the controller's escrow does), then the old key can go.
    change = store.rekey("digits", "1.0.0", artifacts.slot_for(packed, ring))
    assert change.changed and store.details("digits", "1.0.0")["key_id"] == new
    assert not store.rekey("digits", "1.0.0", artifacts.slot_for(packed, ring)).changed
    out = json.loads(subprocess.run(cli + ["keys", "retire"], capture_output=True, text=True, check=True).stdout)
    assert out["changed"] is True and out["retired"] == [old] and out["key_ids"] == [new]
    assert store.read_model("digits", "1.0.0") == digits_onnx
    # A slot that does not open is refused and leaves the working one in place.
    bogus = keys.wrap(os.urandom(32), keys.load_public(ring.current().public_pem), packed.artifact_id)
    bogus["key_id"] = "0" * 32
    with pytest.raises(StoreError):
        store.rekey("digits", "1.0.0", bogus)
    assert store.read_model("digits", "1.0.0") == digits_onnx


def test_cli_install_from_artifact_and_keyslot(device, outdir, digits, digits_onnx, signer):
    store, ring = device
    path, packed, files = artifacts.pack_digits(outdir, "1.0.0", digits_onnx, digits, signer)
    file_args = []
    for name, data in files.items():
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
        file_args.append("--file=%s=%s" % (name, os.path.join(outdir, name)))
    cli = [sys.executable, "-m", "edgeai_runtime.cli", "--root", store.root]
    slot = json.dumps(artifacts.slot_for(packed, ring))
    proc = subprocess.run(cli + ["model", "install", "--artifact", path, "--keyslot", "-"] + file_args,
                          input=slot, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["changed"] is True
    proc = subprocess.run(cli + ["artifact", "verify", path], capture_output=True, text=True, check=False)
    assert json.loads(proc.stdout)["artifact_id"] == packed.artifact_id
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"X")
    proc = subprocess.run(cli + ["artifact", "verify", path], capture_output=True, text=True, check=False)
    failure = json.loads(proc.stdout)
    assert proc.returncode == 1 and failure["failed"] and failure["reason"] == "manifest_tampered"
