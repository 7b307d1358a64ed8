"""Delta updates (edgeai_runtime.format.delta): a new version shipped as a zstd patch against the version
the device holds, rebuilt on the device into the very artifact the controller packed, and installed
through the same OTA transaction. Every bad delta is refused before anything changes, with a
reason of its own, so the caller can fall back to the full artifact."""
from __future__ import annotations

import copy
import hashlib
import json
import os

import pytest

from edgeai_runtime.controller import deltas
from edgeai_runtime.device.rebuild import rebuild
from edgeai_runtime.format import artifact, delta, keys
from edgeai_runtime.device.ota import DeltaFailed
from support import modelgen
from support.artifacts import flip, slot_for
from support.ota_device import QUICK
from support.service import runtime


def last_layer_tuned(digits, shift=1e-3):
    """The digits model with only its output layer's biases changed (a fine-tuned last layer):
    same predictions, different bytes in one place."""
    tuned = copy.deepcopy(digits.model)
    tuned.intercepts_[-1] = tuned.intercepts_[-1] + shift
    return modelgen.digits_onnx(tuned)


@pytest.fixture
def update(device):
    """v2.0.0 (last layer tuned) packed, and a delta for it against the serving v1.0.0."""
    base = modelgen.digits_onnx(device.digits)
    path, packed, files = device.pack("2.0.0", model=last_layer_tuned(device.digits))
    base_manifest = device.store().manifest("digits", "1.0.0").to_dict()
    made = deltas.make(base, base_manifest, path, packed.data_key, device.signer,
                       str(device.art_dir / "digits-2.0.0.from-1.0.0.eafd"))
    assert made is not None
    return path, packed, files, made


def test_delta_rebuilds_the_packed_artifact_byte_for_byte(device, update):
    path, packed, _files, made = update
    out = str(device.art_dir / "rebuilt.eaf")
    info = rebuild(device.store(), made.path, slot_for(packed, device.ring), out)
    assert artifact.sha256_file(out) == artifact.sha256_file(path)
    assert info["base_version"] == "1.0.0" and info["bytes"] == made.size == os.path.getsize(made.path)
    assert info["full_bytes"] == os.path.getsize(path)
    assert info["bytes_saved"] >= 0.8 * info["full_bytes"], info


def test_delta_update_commits_and_records_the_bytes_saved(device, update):
    _path, packed, files, made = update
    result = device.updater().apply_delta(made.path, slot_for(packed, device.ring), files, QUICK,
                                          bytes_transferred=made.size)
    assert result["outcome"] == "committed" and result["active_version"] == "2.0.0"
    assert result["delta"]["used"] and result["delta"]["bytes_saved"] == made.bytes_saved
    assert result["timings"]["stage"] >= result["delta"]["rebuild_s"] > 0
    assert device.serving() == "2.0.0" and device.answers("2.0.0")
    [row] = device.history()
    assert row["outcome"] == "committed" and row["bytes_saved"] == made.bytes_saved
    assert row["bytes_transferred"] == made.size
    assert not [e for e in os.listdir(device.root / "cache") if e.startswith("rebuilt")]


def bad_delta(device, update, reason, match, edit):
    """The delta, edited by ``edit(path, made)``, is refused with ``reason``; nothing changed, and the
    full artifact then goes through (the fallback every caller takes)."""
    path, packed, files, made = update
    edit(made.path, made)
    slot = slot_for(packed, device.ring)
    with pytest.raises(DeltaFailed, match=match) as exc:
        device.updater().apply_delta(made.path, slot, files, QUICK)
    assert exc.value.reason == reason and not exc.value.result["changed"]
    device.assert_previous_serves("1.0.0")
    assert device.store().versions("digits") == ["1.0.0"] and device.history() == []
    assert not [e for e in os.listdir(device.root / "cache") if e.startswith("rebuilt")]
    assert device.updater().apply(path, slot, files, QUICK)["outcome"] == "committed"


def sealed_patch_offset(made):
    return os.path.getsize(made.path) - made.header["patch"]["size"] - artifact.TAG_BYTES


def test_corrupt_patch_byte_falls_back(device, update):
    bad_delta(device, update, "delta_checksum", "does not match the delta's signed digest",
              lambda p, m: flip(p, sealed_patch_offset(m) + 5))


def test_truncated_delta_falls_back(device, update):
    def cut(p, m):
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) - 7)
    bad_delta(device, update, "delta_truncated", "truncated|its header says", cut)


def test_edited_delta_header_falls_back(device, update):
    bad_delta(device, update, "delta_tampered", "signature does not verify",
              lambda p, m: flip(p, delta.PREAMBLE.size + 30))


def test_edited_target_head_falls_back(device, update):
    body = len(artifact.canonical(update[3].header))
    bad_delta(device, update, "delta_checksum", "target artifact's header",
              lambda p, m: flip(p, delta.PREAMBLE.size + body + artifact.SIGNATURE_BYTES + 40))


def test_delta_against_a_base_the_device_lacks_falls_back(device, signer):
    other = last_layer_tuned(device.digits, shift=5e-3)  # a version this device never had
    path, packed, files = device.pack("2.0.0", model=last_layer_tuned(device.digits))
    manifest = dict(device.store().manifest("digits", "1.0.0").to_dict(), sha256=_sha256(other), size=len(other))
    made = deltas.make(other, manifest, path, packed.data_key, signer, str(device.art_dir / "d.eafd"),
                       target_model=last_layer_tuned(device.digits))
    assert made is not None
    bad_delta(device, (path, packed, files, made), "delta_base_missing", "does not hold", lambda p, m: None)


def test_patch_that_gives_another_model_is_refused(device, update):
    """A delta signed by the fleet but whose patch yields other bytes (a controller bug): the target's
    sha256 catches it before any chunk is sealed."""
    path, packed, files, _made = update
    base = modelgen.digits_onnx(device.digits)
    wrong = last_layer_tuned(device.digits, shift=2e-3)
    made = deltas.make(base, device.store().manifest("digits", "1.0.0").to_dict(), path, packed.data_key,
                       device.signer, str(device.art_dir / "wrong.eafd"), target_model=wrong)
    bad_delta(device, (path, packed, files, made), "delta_result", "does not match digits 2.0.0's sha256",
              lambda p, m: None)


def test_delta_for_another_device_key_is_refused(device, update):
    path, packed, files, made = update
    stranger = keys.generate("x25519")
    slot = keys.wrap(packed.data_key, stranger.public_key(), packed.artifact_id)
    with pytest.raises(DeltaFailed) as exc:
        device.updater().apply_delta(made.path, slot, files, QUICK)
    assert exc.value.reason in ("wrong_device_key", "unknown_device_key"), exc.value
    device.assert_previous_serves("1.0.0")


def resign(path, key, edit):
    """Rewrite a delta: ``edit(header, rest)`` changes the header in place and may return new bytes
    for what follows the signature (target head + sealed patch); then sign with ``key``."""
    with open(path, "rb") as f:
        data = f.read()
    header_len = delta.PREAMBLE.unpack(data[:delta.PREAMBLE.size])[3]
    header = json.loads(data[delta.PREAMBLE.size:delta.PREAMBLE.size + header_len])
    rest = data[delta.PREAMBLE.size + header_len + artifact.SIGNATURE_BYTES:]
    rest = edit(header, rest) or rest
    body = artifact.canonical(header)
    preamble = delta.PREAMBLE.pack(delta.MAGIC, delta.FORMAT_VERSION, 0, len(body))
    with open(path, "wb") as f:
        f.write(preamble + body + key.sign(preamble + body) + rest)


def test_delta_signed_by_an_untrusted_key_falls_back(device, update):
    rogue = keys.generate("ed25519")
    bad_delta(device, update, "untrusted_signer", "not trusted",
              lambda p, m: resign(p, rogue, lambda h, r: h.update(signer=keys.key_id(rogue))))


def test_patch_failing_authentication_falls_back(device, update):
    """Signed by the fleet key, digest updated: only the AEAD tag catches the edited patch."""
    def edit(header, rest):
        head = header["target"]["head_size"]
        sealed = bytearray(rest[head:])
        sealed[-1] ^= 1
        header["patch"]["sealed_sha256"] = hashlib.sha256(bytes(sealed)).hexdigest()
        return rest[:head] + bytes(sealed)
    bad_delta(device, update, "delta_tampered", "fails authentication",
              lambda p, m: resign(p, device.signer, edit))


def test_signed_delta_with_an_impossible_head_size_falls_back(device, update):
    bad_delta(device, update, "delta_format", "not a format 1 delta header",
              lambda p, m: resign(p, device.signer, lambda h, r: h["target"].update(head_size=10)))


def test_patch_declaring_another_size_is_refused_before_decompressing(device, update):
    """zstandard allocates what the frame declares: the declared size is checked first."""
    path, packed, files, _made = update
    base = modelgen.digits_onnx(device.digits)
    longer = last_layer_tuned(device.digits) + b"\0" * 4096
    made = deltas.make(base, device.store().manifest("digits", "1.0.0").to_dict(), path, packed.data_key,
                       device.signer, str(device.art_dir / "long.eafd"), target_model=longer)
    bad_delta(device, (path, packed, files, made), "delta_patch", "frame declares", lambda p, m: None)


def test_cli_falls_back_to_the_artifact_given_beside_the_delta(device, update, tmp_path):
    path, packed, files, made = update
    flip(made.path, sealed_patch_offset(made) + 5)
    slot = tmp_path / "slot.json"
    slot.write_text(json.dumps(slot_for(packed, device.ring)))
    gate = []
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        gate.append("--file=%s=%s" % (name, tmp_path / name))
    done = runtime(device.root, "ota", "apply", "--delta", made.path, "--artifact", path, "--keyslot", str(slot),
                   "--watch", "0.4", "--interval", "0.2", *gate)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"] == "committed" and not result["delta"]["used"]
    assert result["delta"]["fallback_reason"].startswith("delta_checksum")
    assert device.serving() == "2.0.0"


def test_unrelated_versions_get_no_delta(device):
    base = modelgen.digits_onnx(device.digits)
    path, packed, _files = device.pack("2.0.0", model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=4)))
    out = device.art_dir / "none.eafd"
    assert deltas.make(base, device.store().manifest("digits", "1.0.0").to_dict(), path, packed.data_key,
                       device.signer, str(out)) is None
    assert not out.exists()


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


# -- pull mode: the registry offers the delta beside the artifact ------------------------------

def _publish_with_delta(device, update, registry_dir):
    from edgeai_runtime.controller.publish import publish
    path, packed, files, made = update
    file_paths = {}
    for name, data in files.items():
        (device.art_dir / name).write_bytes(data)
        file_paths[name] = str(device.art_dir / name)
    facts = {"path": made.path, "base_version": "1.0.0", "base_sha256": made.header["base"]["sha256"]}
    publish(str(registry_dir), device.signer, [{"artifact": path, "files": file_paths, "deltas": [facts]}],
            {device.ring.current_id(): device.ring.current().public_pem},
            lambda artifact_path, pem: slot_for(packed, device.ring), sequence=5)
    return path, made


def _pull(device, tmp_path):
    from edgeai_runtime.device.config import load_config
    from edgeai_runtime.device.agent import Agent, Downloader
    from support.https_files import Registry
    from support.pki import make_ca, make_server_cert, write_pem
    ca_key, ca_cert = make_ca("edgeai delta test CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    ca = write_pem(tmp_path / "ca.pem", ca_cert)
    registry = Registry(str(tmp_path / "registry"), write_pem(tmp_path / "srv.pem", cert),
                        write_pem(tmp_path / "srv.key", key))
    try:
        agent = Agent(load_config(str(device.root)), Downloader(registry.url, ca, retries=1, backoff_s=0.05), QUICK)
        return agent.run_once(), [r[0] for r in registry.requests]
    finally:
        registry.close()


def test_agent_fetches_the_delta_not_the_artifact(device, update, tmp_path):
    path, made = _publish_with_delta(device, update, tmp_path / "registry")
    result, requested = _pull(device, tmp_path)
    assert not result["failed"], result
    [model] = result["models"]
    assert model["outcome"] == "committed" and model["delta"]["used"]
    assert model["delta"]["bytes_saved"] == made.bytes_saved
    assert any(r.endswith(".eafd") for r in requested) and not any(r.endswith(".eaf") for r in requested)
    assert model["bytes_transferred"] < 0.2 * os.path.getsize(path) + sum(
        os.path.getsize(device.art_dir / n) for n in ("golden.npz", "validation.npz"))
    assert device.serving() == "2.0.0" and device.history()[0]["bytes_saved"] == made.bytes_saved
    assert not os.listdir(device.root / "cache" / "downloads")


def test_agent_falls_back_when_the_delta_does_not_give_the_artifact(device, update, tmp_path):
    """The delta downloads intact (its published sha256 matches) but patches into other bytes: the
    device refuses it with nothing changed, and the agent fetches the artifact."""
    path, packed, files, _made = update
    wrong = deltas.make(modelgen.digits_onnx(device.digits), device.store().manifest("digits", "1.0.0").to_dict(),
                        path, packed.data_key, device.signer, str(device.art_dir / "wrong.eafd"),
                        target_model=last_layer_tuned(device.digits, shift=2e-3))
    _publish_with_delta(device, (path, packed, files, wrong), tmp_path / "registry")
    result, requested = _pull(device, tmp_path)
    assert not result["failed"], result
    [model] = result["models"]
    assert model["outcome"] == "committed" and not model["delta"]["used"]
    assert model["delta"]["fallback_reason"].startswith("delta_result"), model["delta"]
    assert any(r.endswith(".eafd") for r in requested) and any(r.endswith(".eaf") for r in requested)
    assert device.serving() == "2.0.0" and [r["outcome"] for r in device.history()] == ["committed"]


def test_agent_falls_back_to_the_artifact_when_the_delta_is_bad(device, update, tmp_path):
    """The registry's copy of the delta is corrupt (its published sha256 then fails the download
    check): the agent fetches the artifact instead, and the update goes through."""
    path, made = _publish_with_delta(device, update, tmp_path / "registry")
    flip(str(tmp_path / "registry" / "artifacts" / os.path.basename(made.path)), made.size - 3)
    result, requested = _pull(device, tmp_path)
    assert not result["failed"], result
    [model] = result["models"]
    assert model["outcome"] == "committed" and not model["delta"]["used"]
    assert "checksum" in model["delta"]["fallback_reason"], model["delta"]
    assert any(r.endswith(".eaf") for r in requested)
    assert device.serving() == "2.0.0"


def test_recovery_removes_artifacts_rebuilt_by_dead_installers(device):
    """A kill -9 during a rebuild leaves cache/rebuilt-<pid>.eaf: the next installer removes it, and
    leaves alone one of a process still running."""
    cache = device.root / "cache"
    cache.mkdir(exist_ok=True)
    import subprocess
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, partial = cache / ("rebuilt-%d.eaf" % dead.pid), cache / ("rebuilt-%d.eaf.partial-%d" % (dead.pid, dead.pid))
    alive = cache / ("rebuilt-%d.eaf" % device.proc.pid)
    for f in (stale, partial, alive):
        f.write_bytes(b"x" * 10)
    device.updater().recover()
    assert not stale.exists() and not partial.exists() and alive.exists()
