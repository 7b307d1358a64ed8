"""OTA transactions (edgeai_runtime.device.ota) against a real service process on 127.0.0.1, a real store
and real SQLite: the happy path with its phases, and the fault matrix's device-side rows. After each
fault the previous version still serves, the store is consistent, and the error says what failed."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from edgeai_runtime.format import artifact
from edgeai_runtime.device.ota import Policy, UpdateFailed
from edgeai_runtime.device.store import StoreError
from support import artifacts, modelgen
from support.artifacts import flip
from support.digits_store import untrained_digits
from support.ota_device import QUICK
from support.service import runtime, start_service


def retrained(seed):
    return modelgen.digits_onnx(modelgen.train_digits_mlp(seed=seed))


def test_update_goes_through_every_phase_and_a_rerun_changes_nothing(device):
    result = device.apply("2.0.0", model=retrained(3))
    assert result["changed"] and result["outcome"] == "committed"
    assert result["previous_version"] == "1.0.0" and result["active_version"] == "2.0.0"
    assert set(result["timings"]) == {"stage", "verify", "load", "gate", "activate", "watch", "commit"}
    assert result["timings"]["watch"] >= QUICK.watch_s
    assert device.serving() == "2.0.0" and device.answers("2.0.0")
    [row] = device.history()
    assert (row["version"], row["from_version"], row["outcome"], row["reason"]) == ("2.0.0", "1.0.0", "committed", None)
    assert row["duration_s"] > 0 and row["timings"]["gate"] > 0

    path = str(device.art_dir / "digits-2.0.0.eaf")
    packed_slot = device.store().keyslot("digits", "2.0.0")
    again = device.updater().apply(path, packed_slot, None, QUICK)
    assert not again["changed"] and again["outcome"] == "unchanged"
    assert len(device.history()) == 1


def test_rollback_serves_the_previous_version_and_records_why(device):
    device.apply("2.0.0", model=retrained(3))
    started = time.monotonic()
    result = device.updater().rollback("digits", reason="operator: bad camera batch")
    assert result["changed"] and result["active_version"] == "1.0.0"
    assert time.monotonic() - started < 5
    device.assert_previous_serves("1.0.0")
    newest = device.history()[0]
    assert newest["outcome"] == "manual_rollback" and newest["reason"] == "operator: bad camera batch"
    assert not device.updater().rollback("digits", version="1.0.0")["changed"]
    with pytest.raises(StoreError, match="not kept"):
        device.updater().rollback("digits", version="7.0.0")


def refused(device, target, match, phase, **kwargs):
    with pytest.raises(UpdateFailed, match=match) as exc:
        device.apply(target, **kwargs)
    result = exc.value.result
    assert not result["changed"] and result["outcome"] == "refused" and result["phase"] == phase
    device.assert_previous_serves()
    assert "2.0.0" not in device.store().versions("digits"), "a refused version stays installed"
    newest = device.history()[0]
    assert newest["outcome"] == "refused" and newest["phase"] == phase and newest["reason"]
    return result


def test_corrupt_byte_is_refused(device):
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    art = artifact.Artifact.open(path, {artifacts.keys.key_id(device.signer): device.signer.public_key()})
    flip(path, art.payload_offset + 100)
    refused(device, path, "chunk 0 of .* fails authentication", "verify",
            slot=artifacts.slot_for(packed, device.ring), files=files)


def test_truncated_download_is_refused(device):
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    os.truncate(path, os.path.getsize(path) - 1000)
    refused(device, path, "truncated", "stage", slot=artifacts.slot_for(packed, device.ring), files=files)


def test_checksum_mismatch_in_the_signed_manifest_is_refused(device):
    """The publisher signed a manifest whose model sha256 is not the payload's (a broken build)."""
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    with open(path, "rb") as f:
        data = f.read()
    header_len = artifact.PREAMBLE.unpack(data[:artifact.PREAMBLE.size])[3]
    header = json.loads(data[artifact.PREAMBLE.size:artifact.PREAMBLE.size + header_len])
    header["manifest"]["sha256"] = "0" * 64
    body = artifact.canonical(header)
    assert len(body) == header_len
    signed = data[:artifact.PREAMBLE.size] + body
    rest = data[artifact.PREAMBLE.size + header_len + artifact.SIGNATURE_BYTES:]
    with open(path, "wb") as f:
        f.write(signed + device.signer.sign(signed) + rest)
    refused(device, path, "model sha256 is [0-9a-f]{64}, the signed manifest says 0{64}", "verify",
            slot=artifacts.slot_for(packed, device.ring), files=files)


def test_bad_signature_is_refused(device):
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    with open(path, "rb") as f:
        header_len = artifact.PREAMBLE.unpack(f.read(artifact.PREAMBLE.size))[3]
    flip(path, artifact.PREAMBLE.size + header_len + 5)
    refused(device, path, "signature", "stage", slot=artifacts.slot_for(packed, device.ring), files=files)


def test_wrong_device_key_is_refused(device):
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    other = artifacts.keys.generate("x25519")
    slot = artifacts.keys.wrap(packed.data_key, other.public_key(), packed.artifact_id)
    refused(device, path, "this device holds no private key [0-9a-f]{32}", "verify", slot=slot, files=files)


def test_downgrade_needs_force(device):
    with pytest.raises(UpdateFailed, match="older than the active version 1.0.0; pass force"):
        device.apply("0.9.0", model=retrained(5))
    device.assert_previous_serves()
    assert "0.9.0" not in device.store().versions("digits")
    assert device.history()[0]["outcome"] == "refused"


def test_downgrade_with_force_goes_through(device):
    result = device.apply("0.9.0", model=retrained(5), policy=Policy(watch_s=0, force=True))
    assert result["outcome"] == "committed" and device.serving() == "0.9.0"


def test_accuracy_gate_failure_is_refused(device):
    """A real model whose accuracy (about 0.97) is below the threshold its manifest sets."""
    refused(device, "2.0.0", "accuracy of digits 2.0.0 is 0.9[0-9]+ on [0-9]+ validation samples, below the "
            "threshold 0.9990", "gate", model=modelgen.digits_onnx(device.digits), threshold=0.999)


def test_golden_sample_failure_is_refused(device):
    refused(device, "2.0.0", "golden sample 0 of digits 2.0.0: predicted [0-9], expected 0", "gate",
            model=modelgen.digits_onnx(untrained_digits()))


def test_latency_budget_is_part_of_the_gate(device):
    refused(device, "2.0.0", r"p95 latency of digits 2.0.0 is .* over the budget of 0.000 ms", "gate",
            model=retrained(3), policy=Policy(watch_s=0, latency_p95_ms=0.0001))


def test_service_restart_after_the_switch_rolls_back(device):
    """The service dies (kill -9) while the new version is being watched and its supervisor starts
    it again: the update rolls back by itself and the previous version serves."""
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    journal = device.root / "state" / "ota.json"
    outcome = {}

    def crash_during_watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(journal.read_text()).get("phase") == "watch":
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        device.stop(signal.SIGKILL)
        device.start()  # what systemd's Restart=always does
        outcome["restarted"] = True

    crasher = threading.Thread(target=crash_during_watch)
    crasher.start()
    with pytest.raises(UpdateFailed, match="rolled back to 1.0.0: watch: the inference service restarted") as exc:
        device.updater().apply(path, artifacts.slot_for(packed, device.ring), files, Policy(watch_s=30, interval_s=0.2))
    crasher.join()
    assert outcome["restarted"] and exc.value.result["outcome"] == "rolled_back"
    device.assert_previous_serves()
    newest = device.history()[0]
    assert newest["outcome"] == "rolled_back" and newest["phase"] == "watch" and "restarted" in newest["reason"]


def test_backend_errors_after_the_switch_roll_back(device, monkeypatch):
    """The error-rate check: every request the new version answers in the watch window fails in
    the backend. Hardware faults cannot be made here, so the new model's backend is wrapped, in the
    service process, to raise on real traffic (a test double for a failing accelerator)."""
    pytest.importorskip("onnxruntime")
    device.stop()
    sitecustomize = device.root / "inject"
    sitecustomize.mkdir()
    # Served traffic only: the gate calls the backend directly, and the installer's probes send zeros.
    (sitecustomize / "sitecustomize.py").write_text(
        "import edgeai_runtime.service.serving as s\n"
        "orig = s.LoadedModel.infer\n"
        "def infer(self, inputs):\n"
        "    if self.version == '2.0.0' and any(v.any() for v in inputs.values()):\n"
        "        raise RuntimeError('accelerator fault (injected by the test)')\n"
        "    return orig(self, inputs)\n"
        "s.LoadedModel.infer = infer\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(sitecustomize)] + sys.path))
    device.proc, device.base = start_service(device.root, env=env)
    stop = threading.Event()

    def traffic():
        x = device.digits.X_test[:1].astype(np.float32)
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
        while not stop.is_set():
            httpx.post(device.base + "/v2/models/digits/infer", json=body, timeout=30)
            time.sleep(0.01)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        with pytest.raises(UpdateFailed, match=r"rolled back to 1.0.0: watch: error rate [01]\.\d+ \(\d+ of \d+ requests failed in the backend\)"):
            device.apply("2.0.0", model=retrained(3), policy=Policy(watch_s=20, interval_s=0.3, min_requests=5))
    finally:
        stop.set()
        sender.join()
    device.assert_previous_serves()


def write_update_args(device, path, packed, files):
    """The CLI arguments of `edgeai-runtime ota apply` for an artifact, with its slot and gate files on disk."""
    slot_path = device.art_dir / "slot.json"
    slot_path.write_text(json.dumps(artifacts.slot_for(packed, device.ring)))
    args = ["ota", "apply", "--artifact", path, "--keyslot", str(slot_path), "--watch", "0.2", "--interval", "0.1"]
    for name, data in files.items():
        (device.art_dir / name).write_bytes(data)
        args += ["--file", "%s=%s" % (name, device.art_dir / name)]
    return args


KILL_LOOPS = 50


def test_kill_9_of_the_installer_at_random_points(device):
    """kill -9 of `edgeai-runtime ota apply` at random moments, 50 times. After each, recovery (a new
    process, as the next update or the agent would run it) leaves either the update committed and
    serving, or the previous version serving with the transaction recorded as interrupted."""
    path, packed, files = device.pack("2.0.0", model=retrained(3))
    args = write_update_args(device, path, packed, files)
    cmd = [sys.executable, "-m", "edgeai_runtime.cli", "--root", str(device.root)] + args
    journal = device.root / "state" / "ota.json"

    def reset_to_v1():
        if device.store().active("digits") == "2.0.0":
            device.updater().rollback("digits", version="1.0.0", reason="test reset")
        if "2.0.0" in device.store().versions("digits"):
            device.store().remove("digits", "2.0.0")

    def wait_for_journal(proc):
        while not journal.exists() and proc.poll() is None:
            time.sleep(0.002)

    # A calibration run: how long the transaction takes, and how long until its watch window starts
    # (verify, load, gate and activate take a few per cent of it, the watch the rest).
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_journal(proc)
    started = time.monotonic()
    before_watch = None
    while proc.poll() is None:
        try:
            if before_watch is None and json.loads(journal.read_text())["phase"] in ("watch", "commit"):
                before_watch = time.monotonic() - started
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.002)
    assert proc.wait(timeout=120) == 0
    transaction = time.monotonic() - started
    before_watch = before_watch or transaction
    reset_to_v1()
    rng = random.Random(20261123)
    seen = {}
    for loop in range(KILL_LOOPS):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if loop % 10 == 0:  # now and then before the transaction starts (opening the artifact, the lock)
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # mostly somewhere inside it: every other time before the watch, so the short phases are hit too
            wait_for_journal(proc)
            deadline = time.monotonic() + rng.uniform(0.0, before_watch if loop % 2 else transaction)
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.002)
        try:
            phase = json.loads(journal.read_text())["phase"]
        except (OSError, ValueError, KeyError):
            phase = "none" if proc.poll() is None else "finished"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        seen[phase] = seen.get(phase, 0) + 1
        recovered = runtime(device.root, "ota", "recover")
        assert recovered.returncode == 0, (loop, phase, recovered.stdout, recovered.stderr)
        rows = device.history()
        assert all(row["outcome"] != "in_progress" for row in rows), (loop, phase, rows[:2])
        assert not journal.exists()
        if rows and rows[0]["outcome"] == "committed" and rows[0]["version"] == "2.0.0":
            assert device.serving() == "2.0.0" and device.answers("2.0.0")
            reset_to_v1()
        else:
            device.assert_previous_serves()
            assert "2.0.0" not in device.store().versions("digits"), (loop, phase)
            if rows and rows[0]["version"] == "2.0.0":
                assert rows[0]["outcome"] == "interrupted" and "interrupted" in rows[0]["reason"]
    # The kills landed all over the transaction, not only before it started or after it ended.
    assert len([p for p in seen if p in ("verify", "load", "activate", "watch", "commit")]) >= 3, seen
    print("kill -9 loops by the phase the journal showed:", seen)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs for the model store needs root")
def test_disk_full_during_install_is_refused(device):
    """The model store lives on a small tmpfs that the new version does not fit in."""
    models = device.root / "models"
    saved = device.root.parent / "models-saved"
    device.stop()
    os.rename(models, saved)
    models.mkdir()
    size = 2 << 20
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", str(models)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        os.rmdir(models)
        os.rename(saved, models)
        pytest.skip("cannot mount a tmpfs here: %s" % mounted.stderr.strip())
    try:
        subprocess.run(["cp", "-a", str(saved) + "/.", str(models)], check=True)
        device.start()
        path, packed, files = device.pack("2.0.0", model=retrained(3))
        need = os.path.getsize(path) + sum(len(d) for d in files.values())
        free = os.statvfs(models).f_bavail * os.statvfs(models).f_frsize
        with open(models / "filler", "wb") as f:
            f.write(b"\0" * max(free - need // 2, 0))
        refused(device, path, "no space left on device", "verify", slot=artifacts.slot_for(packed, device.ring),
                files=files)
    finally:
        if device.proc.poll() is None:
            device.stop()
        subprocess.run(["umount", str(models)], check=False)
