"""The controller's reader of pull-mode rollout outcomes (edgeai_runtime.controller.outcomes) against a real
mosquitto on 127.0.0.1: a persistent session registered before the devices publish, the spool written
before each PUBACK, dedup by (device_id, boot_id, seq), records of other attempts and on foreign topics set
aside, and the broker's refusals as bounded, named errors. The devices are paho clients with their own
certificates (CN = device id, so the ACL lets each write only its own topics), publishing the outbox's
envelope (edgeai_runtime.device.outbox.encode_message) at QoS 1 as the telemetry daemon does."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeai_runtime.controller import outcomes
from edgeai_runtime.controller.outcomes import Expected, OutcomeReader, OutcomesError, ReaderSettings, Spool, Tally
from edgeai_runtime.device.outbox import encode_message
from support.mqtt_broker import SUBSCRIBER, Broker, BrokerPKI, free_port, tls_client

ROLLOUT = "digits-1.1.0"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path):
    return BrokerPKI(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path, pki):
    running = Broker(tmp_path / "broker", pki).start()
    yield running
    running.stop()


@pytest.fixture
def reader_identity(pki):
    return pki.identity(SUBSCRIBER)


def settings_for(broker, identity, session=ROLLOUT, port=None, **more):
    return ReaderSettings("127.0.0.1", port or broker.port, identity.ca, identity.cert, identity.key, session, **more)


def reader(broker, identity, spool, **more):
    return OutcomeReader(settings_for(broker, identity, **more), str(spool))


def verdict(device, seq, state="succeeded", attempt=1, action="update", rollout=ROLLOUT, boot="boot-1", at=None):
    """The outbox's message of a device's rollout verdict, as the pull agent queues it."""
    at = time.time() if at is None else at
    after = "1.1.0" if state == "succeeded" else "1.0.0"
    data = {"rollout": rollout, "attempt": attempt, "action": action, "name": "digits", "version": "1.1.0",
            "state": state, "version_before": "1.0.0", "version_after": after,
            "reason": "" if state == "succeeded" else "soak: p95 latency 240 ms over 100 ms", "soak": None,
            "time": at}
    return encode_message(device, boot, seq, "rollout", at, data)


def publish(broker, pki, device, messages, topic_device=None, timeout=10.0):
    """Publish ``messages`` at QoS 1 as ``device`` (its own certificate) on ``<prefix>/<topic_device>/rollout``;
    the PUBACK reason codes, in order."""
    identity = pki.identity(device)
    client = tls_client(identity, pki.ca_file, device)
    connected, acks, cond = threading.Event(), {}, threading.Condition()

    def on_publish(_c, _u, mid, reason, _p):
        with cond:
            acks[mid] = reason.value
            cond.notify_all()

    client.on_connect = lambda *_args: connected.set()
    client.on_publish = on_publish
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        assert connected.wait(timeout), broker.log()[-2000:]
        topic = "edgeai/%s/rollout" % (topic_device or device)
        mids = [client.publish(topic, payload, qos=1).mid for payload in messages]
        with cond:
            assert cond.wait_for(lambda: all(m in acks for m in mids), timeout), broker.log()[-2000:]
        return [acks[m] for m in mids]
    finally:
        client.disconnect()
        client.loop_stop()


def spool_lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def test_register_then_collect_what_the_devices_sent_while_the_reader_was_away(
        tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "spool" / "outcomes.jsonl"
    first = reader(broker, reader_identity, spool).register(timeout_s=5)
    again = reader(broker, reader_identity, spool).register(timeout_s=5)
    assert (first["changed"], first["session_present"]) == (True, False)
    assert (again["changed"], again["session_present"]) == (False, True)  # idempotent: the session was there
    assert first["client_id"] == "edgeai-outcomes-" + ROLLOUT and first["topic"] == "edgeai/+/rollout"
    # 0x00, not 0x10 "no matching subscribers": the broker queues them for the registered session
    assert publish(broker, pki, "dev-a", [verdict("dev-a", 7)]) == [0]
    assert publish(broker, pki, "dev-b", [verdict("dev-b", 3, state="failed")]) == [0]

    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a", "dev-b"], timeout_s=5)
    assert result["complete"] and result["missing"] == [] and result["connected"] and result["session_present"]
    assert {d: v["data"]["state"] for d, v in result["verdicts"].items()} == {"dev-a": "succeeded", "dev-b": "failed"}
    assert result["verdicts"]["dev-a"]["seq"] == 7 and result["verdicts"]["dev-a"]["boot_id"] == "boot-1"
    assert result["received"] == 2 and result["changed"] and result["duplicates"] == 0
    assert result["seconds"] < 4 and result["warnings"] == []
    assert [line["topic"] for line in spool_lines(spool)] == ["edgeai/dev-a/rollout", "edgeai/dev-b/rollout"]


def test_duplicates_are_dropped_and_the_newest_verdict_counts(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    now = time.time()
    first, second = verdict("dev-a", 11, state="failed", at=now - 5), verdict("dev-a", 12, at=now)
    # the outbox sent 11 again (its PUBACK was lost), and the controller sees 12 before 11's copy
    publish(broker, pki, "dev-a", [first, second, first])
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert result["duplicates"] == 1 and result["unique"] == 2 and result["records"] == 3
    assert result["verdicts"]["dev-a"]["seq"] == 12 and result["verdicts"]["dev-a"]["data"]["state"] == "succeeded"
    # a reboot starts the seqs again: the same seq with another boot_id is another record
    publish(broker, pki, "dev-a", [verdict("dev-a", 12, state="failed", boot="boot-2", at=now + 1)])
    later = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert later["complete"] and later["unique"] == 2  # from the spool: it asks the broker nothing
    assert not later["connected"]
    both = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a", "dev-x"], timeout_s=2)
    assert both["unique"] == 3 and both["duplicates"] == 1
    assert both["verdicts"]["dev-a"]["boot_id"] == "boot-2" and both["missing"] == ["dev-x"]


def test_a_device_that_never_reports_is_missing_after_the_timeout(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    publish(broker, pki, "dev-a", [verdict("dev-a", 1)])
    started = time.monotonic()
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a", "dev-silent"], timeout_s=2)
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 4.0 and 2.0 <= result["seconds"] < 4.0
    assert result["missing"] == ["dev-silent"] and not result["complete"] and list(result["verdicts"]) == ["dev-a"]


def test_a_verdict_that_arrives_while_collecting_ends_the_wait(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    late = threading.Timer(1.0, publish, (broker, pki, "dev-a", [verdict("dev-a", 4)]))
    late.start()
    try:
        result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=10)
    finally:
        late.join()
    assert result["complete"] and 1.0 <= result["seconds"] < 5.0


def test_records_of_another_attempt_action_or_rollout_are_kept_but_not_taken(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    publish(broker, pki, "dev-a", [verdict("dev-a", 1, attempt=1), verdict("dev-a", 2, attempt=2, action="rollback"),
                                   verdict("dev-a", 3, rollout="digits-1.2.0", attempt=2)])
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 2, ["dev-a"], timeout_s=2)
    assert result["missing"] == ["dev-a"] and result["ignored"]["other_rollout"] == 3 and result["received"] == 3
    assert len(spool_lines(spool)) == 3
    # the spool kept them: attempt 1 and the rollback of attempt 2 are there without the broker
    broker.stop()
    assert reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=2)["complete"]
    rollback = reader(broker, reader_identity, spool).collect(ROLLOUT, 2, ["dev-a"], timeout_s=2, action="rollback")
    assert rollback["verdicts"]["dev-a"]["seq"] == 2 and not rollback["connected"]


def test_a_record_on_another_devices_topic_is_set_aside_and_shadows_nothing(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    forged = verdict("dev-a", 5, state="failed")
    # dev-b may write only its own topics (the ACL): it sends dev-a's id there, then dev-a its real record
    assert publish(broker, pki, "dev-b", [forged], topic_device="dev-b") == [0]
    publish(broker, pki, "dev-a", [verdict("dev-a", 5)])
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert result["ignored"]["topic_mismatch"] == 1 and result["duplicates"] == 0
    assert result["mismatched"] == [{"topic": "edgeai/dev-b/rollout", "device_id": "dev-a", "seq": 5}]
    assert result["verdicts"]["dev-a"]["data"]["state"] == "succeeded"


def test_a_reader_killed_after_acknowledging_finds_the_verdict_in_its_spool(tmp_path, pki, broker, reader_identity):
    """The broker never sends an acknowledged message again: the spool is the only copy. A collect killed
    after the PUBACKs (here: one that ended) leaves the verdicts for the next."""
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    publish(broker, pki, "dev-a", [verdict("dev-a", 9)])
    publish(broker, pki, "dev-b", [verdict("dev-b", 2)])
    # the controller asked for dev-a only, then died: dev-b's verdict was acknowledged all the same
    assert reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)["received"] == 2
    again = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a", "dev-b"], timeout_s=3)
    assert again["complete"] and again["received"] == 0 and again["verdicts"]["dev-b"]["seq"] == 2
    # without the spool they are gone: the broker acknowledged them and holds nothing more
    elsewhere = reader(broker, reader_identity, tmp_path / "empty.jsonl").collect(ROLLOUT, 1, ["dev-a"], timeout_s=2)
    assert elsewhere["missing"] == ["dev-a"] and elsewhere["received"] == 0 and elsewhere["connected"]


def test_a_collect_killed_mid_wait_leaves_what_it_acknowledged_in_the_spool(
        tmp_path, pki, broker, reader_identity):
    """kill -9 of a collecting CLI after a verdict reached it: the next collect has it (from the spool, or
    from the broker again when the PUBACK had not gone yet), exactly once after dedup."""
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    args = [sys.executable, "-m", "edgeai_runtime.controller.outcomes", "collect", "--broker",
            "127.0.0.1:%d" % broker.port, "--ca", reader_identity.ca, "--cert", reader_identity.cert, "--key",
            reader_identity.key, "--session", ROLLOUT, "--spool", str(spool), "--rollout", ROLLOUT, "--attempt", "1",
            "--device", "dev-a", "--device", "dev-never", "--timeout", "30"]
    env = dict(os.environ, PYTHONPATH=str(REPO / "device_runtime" / "src"))
    collecting = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while "edgeai-outcomes-%s" % ROLLOUT not in broker.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        publish(broker, pki, "dev-a", [verdict("dev-a", 1)])
        while not (spool.exists() and spool.read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert spool.read_text() and collecting.poll() is None
    finally:
        collecting.kill()
        collecting.wait()
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert result["complete"] and result["unique"] == 1 and result["verdicts"]["dev-a"]["seq"] == 1


def test_a_broker_restarted_mid_collect_is_connected_again(tmp_path, pki, reader_identity):
    broker = Broker(tmp_path / "persistent", pki, persistence=True).start()
    try:
        spool = tmp_path / "outcomes.jsonl"
        reader(broker, reader_identity, spool).register(timeout_s=5)
        done = {}
        collecting = threading.Thread(target=lambda: done.update(
            reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=20)))
        collecting.start()
        time.sleep(1.0)
        broker.restart()  # the session is saved (persistence) and the reader's connection closed
        publish(broker, pki, "dev-a", [verdict("dev-a", 1)])
        collecting.join(25)
        assert done["complete"] and done["reconnects"] >= 1 and done["session_present"]
        assert any("made again" in w for w in done["warnings"]) and not any("no session" in w for w in done["warnings"])
    finally:
        broker.stop()


def test_a_message_that_cannot_be_spooled_is_not_acknowledged(tmp_path, pki, broker, reader_identity, monkeypatch):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    publish(broker, pki, "dev-a", [verdict("dev-a", 1)])

    def disk_full(self, line):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Spool, "append", disk_full)
        with pytest.raises(OutcomesError) as failed:
            reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert failed.value.reason == "spool" and str(spool) in str(failed.value)
    assert "No space left on device" in str(failed.value) and failed.value.result["missing"] == ["dev-a"]
    # no PUBACK went: the broker gives it again
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert result["complete"] and result["received"] == 1


def test_a_broker_restarted_without_persistence_lost_the_session_and_says_so(
        tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    broker.restart()  # no persistence: the session is gone
    assert publish(broker, pki, "dev-a", [verdict("dev-a", 1)]) == [0x10]  # "no matching subscribers": deleted
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=2)
    assert result["session_present"] is False and result["missing"] == ["dev-a"]
    assert len(result["warnings"]) == 1 and "had no session" in result["warnings"][0]


def test_a_broker_that_refuses_the_readers_certificate_is_a_clear_error_in_bounded_time(tmp_path, pki, broker):
    # another CA's certificate (the reader trusts the broker; the broker does not trust it)
    impostor = dataclasses.replace(BrokerPKI.foreign(tmp_path / "foreign").identity(SUBSCRIBER), ca=pki.ca_file)
    started = time.monotonic()
    with pytest.raises(OutcomesError) as refused:
        reader(broker, impostor, tmp_path / "outcomes.jsonl").collect(ROLLOUT, 1, ["dev-a"], timeout_s=30)
    elapsed = time.monotonic() - started
    message = str(refused.value)
    assert refused.value.reason == "tls" and elapsed < 10, (elapsed, message)  # well before the 30 s
    assert "127.0.0.1:%d" % broker.port in message and "client certificate" in message
    assert "3 tries" in message and refused.value.result["missing"] == ["dev-a"]


def test_a_broker_whose_certificate_is_not_trusted_is_refused_at_once(tmp_path, broker, reader_identity):
    other_ca = BrokerPKI.foreign(tmp_path / "foreign").ca_file
    bad = ReaderSettings("127.0.0.1", broker.port, other_ca, reader_identity.cert, reader_identity.key, ROLLOUT)
    started = time.monotonic()
    with pytest.raises(OutcomesError) as refused:
        OutcomeReader(bad, str(tmp_path / "s.jsonl")).register(timeout_s=20)
    assert refused.value.reason == "tls" and time.monotonic() - started < 3
    assert "127.0.0.1:%d" % broker.port in str(refused.value) and other_ca in str(refused.value)


def test_an_unreachable_broker_is_retried_until_the_deadline(tmp_path, reader_identity):
    port = free_port()  # nothing listens there
    settings = ReaderSettings("127.0.0.1", port, reader_identity.ca, reader_identity.cert, reader_identity.key,
                              ROLLOUT)
    started = time.monotonic()
    with pytest.raises(OutcomesError) as down:
        OutcomeReader(settings, str(tmp_path / "s.jsonl")).collect(ROLLOUT, 1, ["dev-a"], timeout_s=2)
    elapsed = time.monotonic() - started
    assert down.value.reason == "connect" and 1.8 <= elapsed < 3.0, elapsed
    assert "127.0.0.1:%d" % port in str(down.value) and "Connection refused" in str(down.value)


def test_one_reader_at_a_time_per_spool(tmp_path, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    with Spool(str(spool)):
        with pytest.raises(OutcomesError) as busy:
            reader(broker, reader_identity, spool).register(timeout_s=5)
    assert busy.value.reason == "busy" and str(spool) in str(busy.value)


def test_a_torn_last_line_is_ended_and_the_next_message_kept_whole(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    reader(broker, reader_identity, spool).register(timeout_s=5)
    with open(spool, "a", encoding="utf-8") as f:
        f.write('{"topic": "edgeai/dev-a/rollout", "payl')  # killed mid-write: that message was not acknowledged
    publish(broker, pki, "dev-a", [verdict("dev-a", 1)])
    result = reader(broker, reader_identity, spool).collect(ROLLOUT, 1, ["dev-a"], timeout_s=3)
    assert result["complete"] and result["ignored"]["malformed"] == 1
    assert len(Path(spool).read_text().splitlines()) == 2


def test_the_cli_registers_and_collects(tmp_path, pki, broker, reader_identity):
    spool = tmp_path / "outcomes.jsonl"
    base = ["--broker", "127.0.0.1:%d" % broker.port, "--ca", reader_identity.ca, "--cert", reader_identity.cert,
            "--key", reader_identity.key, "--session", ROLLOUT, "--spool", str(spool)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "device_runtime" / "src"))

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "edgeai_runtime.controller.outcomes", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)
        return done.returncode, json.loads(done.stdout), done.stderr

    rc, registered, _err = cli("register", *base)
    assert rc == 0 and registered["changed"] and registered["session_expiry_s"] == 7 * 86400
    publish(broker, pki, "dev-a", [verdict("dev-a", 1)])
    rc, collected, _err = cli("collect", *base, "--rollout", ROLLOUT, "--attempt", "1", "--device", "dev-a",
                              "--device", "dev-b", "--timeout", "2")
    assert rc == 0 and collected["missing"] == ["dev-b"] and collected["verdicts"]["dev-a"]["seq"] == 1
    assert collected["action"] == "update" and not collected.get("failed")
    broker.stop()
    rc, failed, _err = cli("collect", *base, "--rollout", ROLLOUT, "--attempt", "1", "--device", "dev-a",
                           "--device", "dev-b", "--timeout", "1")
    assert rc == 1 and failed["failed"] and failed["reason"] == "connect"
    assert failed["msg"].startswith("collecting the outcomes of %s attempt 1 on the broker 127.0.0.1:%d: "
                                    % (ROLLOUT, broker.port))
    assert failed["verdicts"]["dev-a"]["seq"] == 1 and failed["missing"] == ["dev-b"]  # the spool's, with the error


# -- the tally, without a broker ------------------------------------------------------------------

def line(payload, topic="edgeai/dev-a/rollout"):
    return {"topic": topic, "payload": payload if isinstance(payload, str) else payload.decode()}


def test_the_tally_sorts_every_kind_of_line():
    tally = Tally(Expected(ROLLOUT, 1, "update", ("dev-a", "dev-b")), "edgeai")
    telemetry = encode_message("dev-a", "b", 1, "telemetry", 1.0, {"cpu": 1})
    not_a_state = verdict("dev-a", 2, state="installed")
    seen = [tally.add(x) for x in (
        {}, line("not json"), line("[1, 2]"), line(telemetry), line(not_a_state), line(verdict("dev-c", 1), topic="edgeai/dev-c/rollout"),
        line(verdict("dev-a", 3), topic="edgeai/dev-a/telemetry"), line(verdict("dev-a", 4)),
        line(verdict("dev-a", 4)), line(verdict("dev-b", 1, attempt=True), topic="edgeai/dev-b/rollout"))]
    assert seen == ["malformed", "malformed", "malformed", "malformed", "malformed", "unlisted_device",
                    "topic_mismatch", "verdict", "duplicate", "other_rollout"]
    summary = tally.summary()
    assert summary["missing"] == ["dev-b"] and summary["records"] == 10 and summary["unique"] == 5
    assert summary["ignored"] == {"malformed": 5, "topic_mismatch": 1, "other_rollout": 1, "unlisted_device": 1}


def test_topic_device_reads_a_prefix_of_several_levels():
    assert outcomes.topic_device("site/edgeai", "site/edgeai/cam-07/rollout") == "cam-07"
    assert outcomes.topic_device("edgeai", "edgeai/a/b/rollout") is None
    assert outcomes.topic_device("edgeai", "other/cam/rollout") is None


@pytest.mark.parametrize("text, expected", [("broker:8883", ("broker", 8883)), ("10.0.0.2", ("10.0.0.2", 8883)),
                                            ("[::1]:1883", ("::1", 1883))])
def test_parse_broker(text, expected):
    assert outcomes.parse_broker(text) == expected


def test_bad_settings_are_usage_errors(tmp_path):
    good = dict(host="h", port=8883, ca="c", cert="c", key="k", session="digits-1.1.0")
    for bad in (dict(session="a b"), dict(session=""), dict(prefix="edgeai/+"), dict(prefix="edgeai/"),
                dict(port=0), dict(session_expiry_s=0)):
        with pytest.raises(OutcomesError) as refused:
            ReaderSettings(**dict(good, **bad)).check()
        assert refused.value.reason == "usage"
    with pytest.raises(OutcomesError, match="attempt"):
        Expected(ROLLOUT, 0, "update", ("a",)).check()
    with pytest.raises(OutcomesError, match="update or rollback"):
        Expected(ROLLOUT, 1, "install", ("a",)).check()
