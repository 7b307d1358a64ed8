"""Pull-mode devices following a staged rollout (edgeai_runtime.device.pull_rollout): the real agent against a
registry written by the real publisher and served over HTTPS on 127.0.0.1, the real service under real traffic,
the real store, deployment history and outbox. An update soaked and reported; a version whose soak fails rolled
back and reported failed; the fleet's rollback; a second run that does nothing; agents killed between the update
and its mark and mid-soak that go on in the next run; rollout blocks that do not check."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from edgeai_runtime.controller.publish import publish, publish_rollback
from edgeai_runtime.device.agent import Agent, Downloader, RegistryError
from edgeai_runtime.device.config import load_config, load_telemetry_config
from edgeai_runtime.device.journal import History
from edgeai_runtime.device.ota import Policy
from edgeai_runtime.device.outbox import Outbox
from edgeai_runtime.device.pull_rollout import Step, next_step, record_state
from edgeai_runtime.format.updates import RolloutBlockError, canonical, check_rollout
from edgeai_runtime.fsutil import CRASH_ENV, TRACE_ENV
from support import artifacts, modelgen
from support.https_files import Registry
from support.ota_device import Device
from support.pki import make_ca, make_server_cert, write_pem
from support.traffic import traffic

SOAK = {"seconds": 1.5, "p95_ms": 100, "max_error_rate": 0.05, "max_restarts": 0, "min_requests": 5,
        "interval_s": 0.2}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = make_ca("edgeai test CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    return {"ca": write_pem(d / "ca.pem", ca_cert), "cert": write_pem(d / "good.pem", cert),
            "key": write_pem(d / "good.key", key)}


class Fleet:
    """One device's registry: publish releases with rollout blocks, run the agent (in-process or its CLI)."""

    def __init__(self, device, directory, pki):
        self.device, self.dir, self.pki = device, directory, pki
        self.registry = Registry(str(directory), pki["cert"], pki["key"])
        self.sequence = 10
        (device.root / "etc" / "telemetry.json").write_text(json.dumps({"device_id": "cam-01"}))

    def publish(self, version, rollout, seed=3, force=False, keep_before=None):
        model = modelgen.digits_onnx(modelgen.train_digits_mlp(seed=seed) if seed else self.device.digits)
        path, packed, files = self.device.pack(version, model=model)
        for name, data in files.items():
            (self.device.art_dir / name).write_bytes(data)
        release = {"artifact": path, "files": {n: str(self.device.art_dir / n) for n in files}, "force": force}
        if rollout is not None:
            release["rollout"] = rollout
        self.sequence += 1
        ring = self.device.ring
        publish(str(self.dir), self.device.signer, [release], {ring.current_id(): ring.current().public_pem},
                lambda artifact_path, pem: artifacts.slot_for(packed, ring), sequence=self.sequence,
                keep_before=keep_before)
        return path, packed

    def agent(self):
        return Agent(load_config(str(self.device.root)),
                     Downloader(self.registry.url, self.pki["ca"], retries=2, backoff_s=0.05),
                     Policy(watch_s=0.4, interval_s=0.1))

    def cli(self, env=None, wait=True):
        argv = [sys.executable, "-m", "edgeai_runtime.cli", "--root", str(self.device.root), "agent", "--once",
                "--registry", self.registry.url, "--ca-file", self.pki["ca"], "--watch", "0.4"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, **(env or {})))
        if not wait:
            return proc
        out, err = proc.communicate(timeout=180)
        return proc.returncode, out, err

    def marks(self, rollout="digits-2.0.0"):
        return [(m["mark"], m["attempt"], m["from_version"], m["details"].get("cause"))
                for m in self.history().rollout_marks(rollout)]

    def history(self):
        return History(str(self.device.root / "state" / "history.sqlite"))

    def records(self, kind=None):
        with Outbox.from_config(load_telemetry_config(str(self.device.root))) as outbox:
            found = [json.loads(r.message) for r in outbox.pending(1000)]
        return [m for m in found if kind is None or m["kind"] == kind]

    def close(self):
        self.registry.close()


@pytest.fixture
def fleet(device, tmp_path, pki):
    made = Fleet(device, tmp_path / "registry", pki)
    yield made
    made.close()


def update_block(attempt=1, **soak):
    return {"id": "digits-2.0.0", "attempt": attempt, "action": "update", "soak": dict(SOAK, **soak)}


def test_an_update_is_soaked_then_reported_once_and_a_second_run_does_nothing(fleet):
    fleet.publish("2.0.0", update_block())
    with traffic(fleet.device):
        result = fleet.agent().run_once()
    assert not result["failed"] and result["changed"], result
    [model] = result["models"]
    assert model["outcome"] == "committed" and model["active_version"] == "2.0.0"
    outcome = model["rollout"]
    assert (outcome["id"], outcome["attempt"], outcome["action"], outcome["state"]) == (
        "digits-2.0.0", 1, "update", "succeeded")
    assert outcome["marks"] == ["installing", "installed", "soaked"] and outcome["soak"]["passed"]
    assert outcome["report"]["queued"]
    assert fleet.device.serving() == "2.0.0" and fleet.device.answers("2.0.0")
    assert fleet.marks() == [("installing", 1, "1.0.0", None), ("installed", 1, "1.0.0", None),
                             ("soaked", 1, "1.0.0", None)]
    assert fleet.history().rollout_marks("digits-2.0.0")[1]["details"] == {"updated": True}
    [ota] = fleet.records("ota")
    assert (ota["data"]["outcome"], ota["data"]["mode"]) == ("committed", "pull")
    [record] = fleet.records("rollout")
    data = record["data"]
    assert record["device_id"] == "cam-01" and data == outcome["report"]["record"]
    assert {k: v for k, v in data.items() if k not in ("soak", "time")} == {
        "rollout": "digits-2.0.0", "attempt": 1, "action": "update", "name": "digits", "version": "2.0.0",
        "state": "succeeded", "version_before": "1.0.0", "version_after": "2.0.0", "updated": True, "reason": None}
    assert data["soak"]["passed"] and data["soak"]["requests"] >= 5 and data["soak"]["limits"]["p95_ms"] == 100

    rc, out, err = fleet.cli()  # the timer's next run: nothing to do, nothing to report
    assert rc == 0, out + err
    second = json.loads(out.strip().splitlines()[-1])
    assert not second["changed"] and not second["failed"]
    assert second["models"][0]["rollout"]["state"] == "succeeded" and second["models"][0]["rollout"]["marks"] == []
    assert len(fleet.marks()) == 3 and len(fleet.records()) == 2


def test_a_version_whose_soak_fails_is_rolled_back_and_reported_failed(fleet):
    fleet.publish("2.0.0", update_block(p95_ms=0.001))  # an honest breach: no real request is that fast
    with traffic(fleet.device):
        result = fleet.agent().run_once()
    assert result["failed"] and "rollout digits-2.0.0 attempt 1 failed: soak failed: p95 latency" in result["msg"]
    outcome = result["models"][0]["rollout"]
    assert outcome["state"] == "failed" and not outcome["soak"]["passed"]
    assert outcome["marks"] == ["installing", "installed", "soak_failed", "rolled_back"]
    fleet.device.assert_previous_serves("1.0.0")  # serving the version before, verified, the store consistent
    assert fleet.marks()[-1] == ("rolled_back", 1, "1.0.0", "failed")
    rollback = fleet.history().rows("digits")[0]
    assert rollback["outcome"] == "manual_rollback" and rollback["version"] == "1.0.0"
    assert "rollout digits-2.0.0 attempt 1: soak failed: p95 latency" in rollback["reason"]
    [record] = fleet.records("rollout")
    data = record["data"]
    assert (data["state"], data["version_before"], data["version_after"], data["updated"]) == (
        "failed", "1.0.0", "1.0.0", False)
    assert data["reason"].startswith("soak failed: p95 latency") and not data["soak"]["passed"]

    again = fleet.agent().run_once()  # the document still names 2.0.0: it is not installed again
    assert not again["failed"] and not again["changed"], again
    assert fleet.device.serving() == "1.0.0" and len(fleet.marks()) == 4 and len(fleet.records("rollout")) == 1


def test_the_fleet_rollback_brings_back_the_version_before(fleet):
    fleet.publish("2.0.0", update_block())
    with traffic(fleet.device):
        assert fleet.agent().run_once()["models"][0]["rollout"]["state"] == "succeeded"
    breach = {"id": "digits-2.0.0", "attempt": 1, "action": "rollback",
              "reason": "wave 1 breached: 2 of 3 devices failed"}
    fleet.publish("1.0.0", breach, seed=None, force=True)  # the version before, the same build the device holds
    result = fleet.agent().run_once()
    assert not result["failed"] and result["changed"], result
    outcome = result["models"][0]["rollout"]
    assert (outcome["action"], outcome["state"], outcome["marks"]) == ("rollback", "rolled_back", ["rolled_back"])
    fleet.device.assert_previous_serves("1.0.0")
    assert fleet.marks()[-1] == ("rolled_back", 1, "1.0.0", "breach")
    [first, record] = [r["data"] for r in fleet.records("rollout")]
    assert first["state"] == "succeeded"
    assert {k: record[k] for k in ("action", "version", "state", "version_before", "version_after", "reason")} == {
        "action": "rollback", "version": "2.0.0", "state": "rolled_back", "version_before": "1.0.0",
        "version_after": "1.0.0", "reason": "wave 1 breached: 2 of 3 devices failed"}
    assert fleet.history().rollout_marks("digits-2.0.0")[-1]["details"] == {"cause": "breach", "changed": True}

    again = fleet.agent().run_once()
    assert not again["changed"] and len(fleet.records("rollout")) == 2 and len(fleet.marks()) == 4


def test_the_published_fleet_rollback_puts_back_the_document_from_before_the_rollout(fleet, tmp_path):
    """publish_rollback (what playbooks/rollout.yml publishes after a breach in pull mode): each device's document
    goes back to the entry it had before the rollout, kept when the rollout's first wave was published."""
    kept, ring = tmp_path / "before", fleet.device.ring
    devices = {ring.current_id(): ring.current().public_pem}
    _path, packed_v1 = fleet.publish("1.0.0", None, seed=None)  # what the device was told before the rollout
    assert fleet.agent().run_once()["changed"] is False
    fleet.publish("2.0.0", update_block(), keep_before=str(kept))
    fleet.publish("2.0.0", update_block(), keep_before=str(kept))  # published again: the kept one stays
    [kept_file] = kept.iterdir()
    assert [m["version"] for m in json.loads(kept_file.read_text())["models"]] == ["1.0.0"]
    with traffic(fleet.device):
        assert fleet.agent().run_once()["models"][0]["rollout"]["state"] == "succeeded"
    fleet.device.assert_previous_serves("2.0.0")

    block = {"id": "digits-2.0.0", "attempt": 1, "action": "rollback", "reason": "wave1 breached: 1 of 2 failed"}

    def wrap(_path, _pem):
        return artifacts.slot_for(packed_v1, ring)
    done = publish_rollback(str(fleet.dir), fleet.device.signer, devices, block, str(kept), wrap, sequence=5)
    assert done["changed"] and done["refused"] == {}, done
    doc = json.loads((fleet.dir / "updates" / kept_file.name).read_text())
    assert doc["sequence"] > fleet.sequence  # a lower sequence than the update's would be refused as a replay
    assert [(m["version"], m["force"], m["rollout"]) for m in doc["models"]] == [("1.0.0", True, block)]
    again = publish_rollback(str(fleet.dir), fleet.device.signer, devices, block, str(kept), wrap)
    assert not again["changed"] and again["documents"] == []

    result = fleet.agent().run_once()
    assert not result["failed"] and result["models"][0]["rollout"]["state"] == "rolled_back", result
    assert fleet.device.serving() == "1.0.0"
    assert fleet.marks()[-1] == ("rolled_back", 1, "1.0.0", "breach")


def test_a_fleet_rollback_is_refused_for_a_device_with_nothing_to_go_back_to(fleet, tmp_path):
    ring = fleet.device.ring
    devices = {ring.current_id(): ring.current().public_pem}
    block = {"id": "digits-2.0.0", "attempt": 1, "action": "rollback", "reason": "canary breached"}

    def wrap(_path, _pem):
        raise AssertionError('never called: nothing is written')
    nothing = publish_rollback(str(fleet.dir), fleet.device.signer, devices, block, str(tmp_path / "k"), wrap)
    assert "carries no rollout digits-2.0.0: nothing was published to roll back" in nothing["refused"][ring.current_id()]
    fleet.publish("2.0.0", update_block(), keep_before=str(tmp_path / "k"))  # it had no document before
    unkept = publish_rollback(str(fleet.dir), fleet.device.signer, devices, block, str(tmp_path / "k"), wrap)
    assert not unkept["changed"]
    assert "no update document from before the rollout digits-2.0.0 is kept" in unkept["refused"][ring.current_id()]


def test_a_rollback_reaches_a_device_the_update_never_reached(fleet):
    """The controller cannot know whether a pull device fetched the update before the breach: the rollback
    still ends in a mark and a record, saying nothing changed."""
    fleet.publish("1.0.0", {"id": "digits-2.0.0", "attempt": 1, "action": "rollback", "reason": "canary breached"},
                  seed=None, force=True)
    result = fleet.agent().run_once()
    assert not result["failed"] and result["models"][0]["rollout"]["state"] == "rolled_back", result
    assert fleet.device.serving() == "1.0.0"
    assert fleet.history().rollout_marks("digits-2.0.0")[-1]["details"] == {"cause": "breach", "changed": False}
    [record] = fleet.records("rollout")
    assert (record["data"]["state"], record["data"]["version_before"], record["data"]["version_after"]) == (
        "rolled_back", "1.0.0", "1.0.0")


def test_an_agent_killed_mid_soak_soaks_again_in_the_next_run(fleet):
    fleet.publish("2.0.0", update_block(seconds=3))
    with traffic(fleet.device):
        proc = fleet.cli(wait=False)
        deadline = time.monotonic() + 120
        while ("installed", 1, "1.0.0", None) not in fleet.marks() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.8)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert [m[0] for m in fleet.marks()] == ["installing", "installed"] and fleet.records("rollout") == []
        assert fleet.device.serving() == "2.0.0"
        result = fleet.agent().run_once()
    outcome = result["models"][0]["rollout"]
    assert outcome["marks"] == ["soaked"] and outcome["state"] == "succeeded", result
    assert result["models"][0]["outcome"] == "unchanged"  # soaked again, not installed again
    assert [row["outcome"] for row in fleet.device.history()] == ["committed"]
    [record] = fleet.records("rollout")
    assert record["data"]["state"] == "succeeded" and record["data"]["updated"]


def test_an_agent_killed_between_its_update_and_the_mark_goes_on_from_there(tmp_path, signer, digits, pki):
    """Killed at the write of its ``installed`` mark (fsutil's write points, as in test_crash_safety): the next run
    reads the update it made from the history (an ``installing`` mark, the version committed since), marks it and
    soaks it, without installing again. A first device finds which write point that is."""
    points = []
    for name in ("traced", "killed"):
        device = Device(tmp_path / name, signer, digits)
        fleet = Fleet(device, tmp_path / ("%s-registry" % name), pki)
        try:
            fleet.publish("2.0.0", update_block())
            trace = tmp_path / ("%s.trace" % name)
            env = {TRACE_ENV: str(trace)}
            if points:
                env[CRASH_ENV] = str(points.index("history: rollout mark (installed)") + 1)
            with traffic(device):
                rc, out, err = fleet.cli(env=env)
            if not points:
                assert rc == 0, out + err
                points = trace.read_text().splitlines()
                continue
            assert rc == -signal.SIGKILL, out + err
            assert [m[0] for m in fleet.marks()] == ["installing"] and device.serving() == "2.0.0"
            with traffic(device):
                result = fleet.agent().run_once()
            outcome = result["models"][0]["rollout"]
            assert outcome["marks"] == ["installed", "soaked"] and outcome["state"] == "succeeded", result
            assert [row["outcome"] for row in device.history()] == ["committed"]
            assert fleet.history().rollout_marks("digits-2.0.0")[1]["details"] == {"updated": True, "resumed": True}
            [record] = fleet.records("rollout")
            assert record["data"]["updated"] and record["data"]["version_before"] == "1.0.0"
        finally:
            fleet.close()
            device.stop()


@pytest.mark.parametrize("change, field", [
    (lambda b: b["soak"].update(p95_ms=0), "rollout.soak.p95_ms: p95_ms must be positive, got 0"),
    (lambda b: b.update(attempt=0), "rollout.attempt must be an integer of 1 or more, got 0"),
    (lambda b: b.update(action="upgrade"), "rollout.action must be one of update, rollback, got 'upgrade'"),
    (lambda b: b.pop("soak"), "rollout.soak must be an object of soak limits, got None"),
    (lambda b: b.update(id="digits-3.0.0"), "rollout.id digits-3.0.0 is not this entry's version (digits 2.0.0)"),
])
def test_a_document_with_a_bad_rollout_block_is_refused_and_nothing_installed(fleet, change, field):
    fleet.publish("2.0.0", update_block())
    doc_path = fleet.dir / "updates" / ("%s.json" % fleet.device.ring.current_id())
    doc = json.loads(doc_path.read_text())
    change(doc["models"][0]["rollout"])
    body = canonical(doc)  # signed by the fleet's key: only the block is wrong
    doc_path.with_name(doc_path.name + ".sig").write_bytes(fleet.device.signer.sign(body))
    doc_path.write_bytes(body)
    with pytest.raises(RegistryError) as exc:
        fleet.agent().run_once()
    message = str(exc.value)
    assert exc.value.reason == "format" and field in message, message
    assert "the update document for device %s: models[0] (digits 2.0.0)" % fleet.device.ring.current_id() in message
    fleet.device.assert_previous_serves("1.0.0")
    assert len(fleet.device.history()) == 0 and fleet.marks() == [] and fleet.records() == []


def test_publish_refuses_a_bad_block_and_rewrites_a_document_only_when_its_block_changes(fleet):
    with pytest.raises(RolloutBlockError, match=r"publishing digits 2\.0\.0 \(.*\): rollout\.soak\.seconds is "
                                                r"missing"):
        fleet.publish("2.0.0", {"id": "digits-2.0.0", "attempt": 1, "action": "update", "soak": {}})
    doc_path = fleet.dir / "updates" / ("%s.json" % fleet.device.ring.current_id())
    assert not doc_path.exists()  # refused before anything was written
    path, packed = fleet.publish("2.0.0", update_block())
    ring = fleet.device.ring
    release = {"artifact": path, "files": {n: str(fleet.device.art_dir / n) for n in ("golden.npz", "validation.npz")}}

    def again(rollout, sequence):
        return publish(str(fleet.dir), fleet.device.signer, [dict(release, **rollout)],
                       {ring.current_id(): ring.current().public_pem},
                       lambda artifact_path, pem: artifacts.slot_for(packed, ring), sequence=sequence)

    assert again({"rollout": update_block()}, 20)["documents"] == []  # the same block: the same document
    assert json.loads(doc_path.read_text())["models"][0]["rollout"] == update_block()
    assert again({"rollout": update_block(attempt=2)}, 21)["documents"] == [str(doc_path)]
    assert json.loads(doc_path.read_text())["models"][0]["rollout"]["attempt"] == 2
    assert again({}, 22)["documents"] == [str(doc_path)]  # no block: a document as before the rollouts
    assert "rollout" not in json.loads(doc_path.read_text())["models"][0]


@pytest.mark.parametrize("block, message", [
    ("update", "rollout must be an object, got str"),
    ({"id": "digits-2.0.0", "attempt": 1, "action": "update", "soak": {"seconds": 1}, "wave": 2},
     "rollout.wave is not a field of the rollout block"),
    ({"id": "2.0.0", "attempt": 1, "action": "update", "soak": {"seconds": 1}}, 'rollout.id must be "digits-<version>"'),
    ({"id": "digits-2.0.0", "attempt": True, "action": "update", "soak": {"seconds": 1}}, "rollout.attempt must be"),
    ({"id": "digits-2.0.0", "attempt": 1, "action": "update", "soak": {"seconds": 1, "p95": 5}},
     "rollout.soak.p95: p95 is not a soak limit"),
    ({"id": "digits-2.0.0", "attempt": 1, "action": "update", "soak": {"seconds": "300"}},
     "rollout.soak.seconds: seconds must be a number, got '300'"),
    ({"id": "digits-2.0.0", "attempt": 1, "action": "update", "soak": {"seconds": 1, "max_restarts": 0.5}},
     "rollout.soak.max_restarts: max_restarts must be an integer, got 0.5"),
    ({"id": "digits-2.0.0", "attempt": 1, "action": "rollback"}, "rollout.id digits-2.0.0 names the entry's own"),
    ({"id": "digits-3.0.0", "attempt": 1, "action": "rollback"}, "rollout.reason must be a non-empty string"),
    ({"id": "digits-3.0.0", "attempt": 1, "action": "rollback", "reason": " "}, "rollout.reason must be"),
])
def test_rollout_blocks_that_do_not_check(block, message):
    with pytest.raises(RolloutBlockError) as exc:
        check_rollout(block, "digits", "2.0.0")
    assert message in str(exc.value) and exc.value.reason == "bad_rollout"


def test_rollout_blocks_that_check():
    update = {"id": "my-model-2.0.0", "attempt": 3, "action": "update", "soak": {"seconds": 0}}
    assert check_rollout(update, "my-model", "2.0.0") is update
    rollback = {"id": "digits-2.0.0", "attempt": 1, "action": "rollback", "reason": "breach", "soak": SOAK}
    assert check_rollout(rollback, "digits", "1.0.0") is rollback


def mark(name, at=1.0, **details):
    return {"mark": name, "time": at, "details": details}


@pytest.mark.parametrize("marks, action, serving, committed, step", [
    ([], "update", "1.0.0", None, Step("install")),
    ([mark("installing", 5.0)], "update", "1.0.0", None, Step("install")),  # killed before its update went in
    ([mark("installing", 5.0)], "update", "2.0.0", {"finished": 6.0}, Step("went_in")),
    ([mark("installing", 5.0)], "update", "2.0.0", {"finished": 4.0}, Step("install")),  # an older update's
    ([mark("installing"), mark("installed")], "update", "2.0.0", None, Step("soak")),
    ([mark("installing"), mark("installed"), mark("soaked")], "update", "2.0.0", None, Step("done")),
    ([mark("installing"), mark("installed"), mark("soak_failed")], "update", "2.0.0", None,
     Step("roll_back", "failed")),
    ([mark("installing"), mark("installed"), mark("soak_failed"), mark("rolled_back", cause="failed")], "update",
     "1.0.0", None, Step("done")),
    ([mark("installing"), mark("failed")], "update", "1.0.0", None, Step("done")),
    ([], "rollback", "2.0.0", None, Step("roll_back", "breach")),
    ([mark("installing"), mark("installed"), mark("soaked")], "rollback", "2.0.0", None, Step("roll_back", "breach")),
    ([mark("installing"), mark("installed"), mark("soak_failed")], "rollback", "2.0.0", None,
     Step("roll_back", "failed")),  # its own soak had failed: it is a failure, not a breach
    ([mark("installing"), mark("failed")], "rollback", "1.0.0", None, Step("done")),
    ([mark("soaked"), mark("rolled_back", cause="breach")], "rollback", "1.0.0", None, Step("done")),
])
def test_the_next_step_is_read_from_the_marks(marks, action, serving, committed, step):
    assert next_step(marks, action, "2.0.0", serving, committed) == step


def test_the_state_of_the_record():
    assert record_state([mark("installing")]) is None
    assert record_state([mark("installed"), mark("soaked")]) == "succeeded"
    assert record_state([mark("installing"), mark("failed")]) == "failed"
    assert record_state([mark("soak_failed"), mark("rolled_back", cause="failed")]) == "failed"
    assert record_state([mark("soaked"), mark("rolled_back", cause="breach")]) == "rolled_back"
