"""The outbox's MQTT sync (edgeai_runtime.device.mqtt_sync) against a real mosquitto on 127.0.0.1:
TLS with client certificates, the per-device ACL, a broker that is down, refuses, or dies mid-batch."""
from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter

import pytest

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.mqtt_sync import Backoff, MqttSync, SyncFailed
from edgeai_runtime.device.outbox import Outbox
from support.mqtt_broker import SUBSCRIBER, Broker, BrokerPKI, Subscriber, acl_text, tls_client, try_connect


@pytest.fixture
def pki(tmp_path):
    return BrokerPKI(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path, pki):
    running = Broker(tmp_path / "broker", pki)
    yield running
    running.stop()


@pytest.fixture
def subscriber(broker, pki):
    broker.start()
    sub = Subscriber(broker, pki.identity(SUBSCRIBER)).start()
    yield sub
    sub.stop()


def device(tmp_path, pki, broker, device_id="dev-a", cert_cn=None, **settings):
    """A device root with its TLS identity in keys/tls (CN ``cert_cn``, default its id), its config and outbox."""
    root = tmp_path / device_id
    pki.identity(cert_cn or device_id, root / "keys" / "tls")
    values = dict(root=str(root), device_id=device_id, mqtt_host="127.0.0.1", mqtt_port=broker.port,
                  backoff_initial_s=0.05, backoff_max_s=0.5, sync_batch=20, mqtt_keepalive_s=5)
    values.update(settings)
    config = TelemetryConfig(**values).check()
    return config, Outbox.from_config(config)


def seqs(messages):
    return [json.loads(payload)["seq"] for _topic, payload in messages]


def run_in_thread(sync):
    stop = threading.Event()
    thread = threading.Thread(target=sync.run, args=(stop,), kwargs={"poll_s": 0.05}, daemon=True)
    thread.start()
    return stop, thread


def test_records_arrive_on_their_topics_highest_priority_first(tmp_path, pki, broker, subscriber):
    config, box = device(tmp_path, pki, broker)
    box.enqueue_many("inference", [{"i": i} for i in range(10)])
    box.enqueue_many("telemetry", [{"i": i} for i in range(50)])
    box.enqueue("ota", {"outcome": "committed"})
    sync = MqttSync(config, box)
    sizes = []
    while True:
        done = sync.publish_batch()
        if not done.sent:
            break
        sizes.append(done.sent)
        assert done.delivered == done.sent
    sync.close()
    assert sizes == [20, 20, 20, 1]  # bounded batches: sync_batch at a time
    got = subscriber.wait_for(61)
    assert len(got) == 61 and sorted(seqs(got)) == list(range(1, 62))
    assert got[0] == ("edgeai/dev-a/ota", box_message(got[0][1], "ota"))
    assert Counter(message[0] for message in got) == {"edgeai/dev-a/telemetry": 50, "edgeai/dev-a/inference": 10,
                                                      "edgeai/dev-a/ota": 1}
    assert [json.loads(message[1])["kind"] for message in got][-10:] == ["inference"] * 10
    status = box.status()
    assert status["records"] == 0 and status["bytes"] == 0 and status["delivered"] == 61


def box_message(payload, kind):
    message = json.loads(payload)
    assert message["kind"] == kind and message["device_id"] == "dev-a" and message["boot_id"]
    return payload


def test_a_broker_that_is_down_is_retried_with_backoff_and_nothing_is_lost(tmp_path, pki, caplog):
    """The subscriber's session (and its subscription) is made before the broker goes down and kept in the
    broker's persistence, so what the device sends the moment the broker is back is queued for the subscriber
    even if the device reconnects first (without it, that was a race the device could win)."""
    broker = Broker(tmp_path / "broker", pki, persistence=True)
    broker.start()
    sub = Subscriber(broker, pki.identity(SUBSCRIBER)).start()
    broker.stop()  # SIGTERM: mosquitto saves the subscriber's session
    config, box = device(tmp_path, pki, broker)
    box.enqueue_many("telemetry", [{"i": i} for i in range(30)])
    sync = MqttSync(config, box)
    try:
        with caplog.at_level(logging.WARNING, logger="edgeai_runtime.device.mqtt_sync"):
            stop, thread = run_in_thread(sync)
            time.sleep(1.0)  # nothing listens on the port
            assert sync.backoff.attempt >= 3 and box.status()["records"] == 30
            assert any("cannot connect to the broker 127.0.0.1:%d" % broker.port in r.getMessage()
                       for r in caplog.records)
            broker.start()
            try:
                got = sub.wait_for(30, timeout=15)
            finally:
                stop.set()
                thread.join(10)
    finally:
        sub.stop()
        broker.stop()
    assert sorted(set(seqs(got))) == list(range(1, 31)) and box.status()["records"] == 0


def test_a_broker_killed_mid_batch_is_retried_and_nothing_is_lost(tmp_path, pki, broker, subscriber):
    """kill -9 of the broker mid-batch: the batch's records without PUBACK stay and are sent to the
    restarted broker. (What the killed broker had acknowledged but not yet passed on to the subscriber
    is the broker's loss, not the device's: it is counted apart, and only those may be missing.)"""
    config, box = device(tmp_path, pki, broker, sync_batch=50)
    total = 3000
    box.enqueue_many("telemetry", [{"i": i, "pad": "x" * 200} for i in range(total)])
    sync = MqttSync(config, box)
    acked = {0: [], 1: []}  # PUBACKed seqs, by broker: the killed one (0) and the restarted one (1)
    broker_epoch = [0]

    def on_puback(done):  # the epoch is read at each PUBACK, not when the hook is set
        acked[broker_epoch[0]].extend(done)

    sync.on_puback = on_puback
    stop, thread = run_in_thread(sync)
    try:
        deadline = time.monotonic() + 20
        while len(subscriber.received()) < 300 and time.monotonic() < deadline:
            time.sleep(0.001)
        broker.kill()  # mid-batch: its connections reset, PUBACKs of the batch in flight never come
        time.sleep(0.3)  # (the sync has seen the drop: every PUBACK of the killed broker is counted under 0)
        left = box.status()["records"]
        assert 0 < left < total, "the kill did not land mid-drain"
        broker_epoch[0] = 1
        broker.start()  # same port; the subscriber reconnects and subscribes again
        deadline = time.monotonic() + 30
        while box.status()["records"] and time.monotonic() < deadline:
            time.sleep(0.05)
        owed = set(range(1, total + 1)) - set(acked[0])  # what the restarted broker must pass on
        deadline = time.monotonic() + 10
        while owed - set(seqs(subscriber.received())) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(10)
    received = seqs(subscriber.received())
    everything = set(range(1, total + 1))
    assert box.status()["records"] == 0
    assert set(acked[0]) | set(acked[1]) == everything  # every record was acknowledged before it was deleted
    missing = everything - set(received)
    assert missing <= set(acked[0]), "lost by the device: %s" % sorted(missing - set(acked[0]))[:20]
    print("broker killed mid-batch after %d PUBACKs: %d records, %d messages received, %d duplicates, %d acknowledged "
          "by the killed broker but never passed on"
          % (len(acked[0]), total, len(received), len(received) - len(set(received)), len(missing)))


def test_publishing_to_another_devices_topic_is_refused(tmp_path, pki, broker, subscriber):
    """dev-b's certificate (its user name is dev-b) may not write dev-a's topics: the broker answers
    PUBACK 0x87 (MQTT 5) and delivers nothing; its own topic works."""
    dev_b = pki.identity("dev-b")
    client = tls_client(dev_b, pki.ca_file, "dev-b")
    acks = {}
    client.on_publish = lambda _c, _u, mid, reason, _p: acks.__setitem__(mid, reason)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        own = client.publish("edgeai/dev-b/telemetry", b"mine", qos=1)
        own.wait_for_publish(5)
        other = client.publish("edgeai/dev-a/telemetry", b"forged", qos=1)
        deadline = time.monotonic() + 5
        while len(acks) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.disconnect()
        client.loop_stop()
    assert acks[other.mid].value == 0x87 and not acks[own.mid].is_failure
    assert subscriber.wait_for(1) == [("edgeai/dev-b/telemetry", b"mine")]
    time.sleep(0.2)
    assert len(subscriber.received()) == 1


def test_a_refused_record_stays_queued_and_its_kind_is_held_back(tmp_path, pki, broker, subscriber, caplog):
    """A device configured as dev-a holding dev-b's certificate: every publish is refused (PUBACK 0x87;
    mosquitto 2.0 then closes the connection), nothing is deleted, the refused kind is held back; with
    its own certificate everything arrives."""
    config, box = device(tmp_path, pki, broker, cert_cn="dev-b", backoff_max_s=30.0)
    box.enqueue_many("telemetry", [{"i": i} for i in range(5)])
    box.enqueue("ota", {"outcome": "committed"})
    sync = MqttSync(config, box)
    with caplog.at_level(logging.ERROR, logger="edgeai_runtime.device.mqtt_sync"):
        stop, thread = run_in_thread(sync)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(box.status()["refused"][k]["broker"]
                                                      for k in ("ota", "telemetry")):
            time.sleep(0.02)
        held = sorted(sync.held)
        stop.set()
        thread.join(10)
    assert held == ["ota", "telemetry"]
    status = box.status()
    assert status["records"] == 6 and status["delivered"] == 0
    # (each at least once: a PUBACK that the broker's close overtakes is lost, and the kind tried again)
    assert status["refused"]["ota"]["broker"] >= 1 and status["refused"]["telemetry"]["broker"] >= 1
    refused = {r.seq: r.refusals for r in box.pending(10)}
    assert refused[6] >= 1 and sum(refused.values()) == status["refused"]["ota"]["broker"] + \
        status["refused"]["telemetry"]["broker"]
    assert sync.publish_batch().sent == 0  # both kinds held back: nothing is tried
    sync.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("1 ota records on edgeai/dev-a/ota: Not authorized (0x87); they stay queued" in line
               for line in lines), lines
    assert subscriber.received() == []
    pki.identity("dev-a", tmp_path / "dev-a" / "keys" / "tls")  # its own certificate, read at the next connection
    sync.held.clear()  # (instead of waiting out the hold)
    done = sync.drain()
    sync.close()
    assert done.delivered == 6 and box.status()["records"] == 0
    assert sorted(seqs(subscriber.wait_for(6))) == [1, 2, 3, 4, 5, 6]


def test_a_broker_refusing_every_publish_then_accepting_loses_nothing(tmp_path, pki, broker, subscriber):
    broker.set_acl(acl_text(device_access="deny"))
    config, box = device(tmp_path, pki, broker)
    box.enqueue_many("telemetry", [{"i": i} for i in range(25)])
    sync = MqttSync(config, box)
    stop, thread = run_in_thread(sync)
    try:
        # Two refusals take one retry: its backoff, and a reconnect after the broker's ACL reload, can pass 5 s.
        deadline = time.monotonic() + 30
        while box.status()["refused"]["telemetry"]["broker"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert box.status()["refused"]["telemetry"]["broker"] >= 2  # refused, held back, tried again, refused
        assert box.status()["records"] == 25 and subscriber.received() == []
        broker.set_acl(acl_text())
        got = subscriber.wait_for(25, timeout=10)
    finally:
        stop.set()
        thread.join(10)
    assert sorted(set(seqs(got))) == list(range(1, 26)) and box.status()["records"] == 0


def test_a_device_without_a_certificate_or_with_another_cas_is_refused(tmp_path, pki, broker):
    broker.start()
    assert try_connect(broker, pki.identity("dev-a")) == "connected"
    assert try_connect(broker, None).startswith("refused")
    impostor = BrokerPKI.foreign(tmp_path / "foreign").identity("dev-a")  # same CN, another CA
    assert try_connect(broker, impostor).startswith("refused")
    assert "certificate verify failed" in broker.log()
    # The sync itself: another CA's certificate in keys/tls is refused at the handshake, the records stay.
    config, box = device(tmp_path, pki, broker)
    foreign = BrokerPKI.foreign(tmp_path / "foreign2")
    foreign.identity("dev-a", tmp_path / "dev-a" / "keys" / "tls")
    (tmp_path / "dev-a" / "keys" / "tls" / "ca.crt").write_bytes(open(pki.ca_file, "rb").read())
    box.enqueue("telemetry", {})
    with pytest.raises(SyncFailed) as refused:
        MqttSync(config, box).drain()
    assert refused.value.reason == "tls" and box.status()["records"] == 1


def test_a_revoked_certificate_is_refused(tmp_path, pki):
    broker = Broker(tmp_path / "crl-broker", pki, crl=True)
    try:
        config, box = device(tmp_path, pki, broker)
        box.enqueue("telemetry", {})
        broker.start()
        assert try_connect(broker, pki.identity("dev-a", tmp_path / "dev-a" / "keys" / "tls")) == "connected"
        revoked = pki.identity("dev-a", tmp_path / "dev-a" / "keys" / "tls")
        pki.revoke(revoked)
        broker.restart()  # the CRL is read at start
        with pytest.raises(SyncFailed) as refused:
            MqttSync(config, box).drain()
        assert refused.value.reason == "tls" and box.status()["records"] == 1
        pki.identity("dev-a", tmp_path / "dev-a" / "keys" / "tls")  # rotated: a new certificate, not revoked
        assert MqttSync(config, box).drain().delivered == 1
    finally:
        broker.stop()


def test_a_key_that_does_not_match_the_certificate_is_named(tmp_path, pki, broker):
    config, box = device(tmp_path, pki, broker)
    other = pki.identity("dev-b")
    (tmp_path / "dev-a" / "keys" / "tls" / "device.crt").write_bytes(open(other.cert, "rb").read())
    with pytest.raises(SyncFailed) as bad:
        MqttSync(config, box).connect()
    assert bad.value.reason == "tls" and "device.crt" in str(bad.value) and "device.key" in str(bad.value)


def test_backoff_is_full_jitter_doubling_to_its_cap():
    backoff = Backoff(0.5, 8.0, random.Random(7))
    ceilings = []
    for _round in range(8):
        ceilings.append(backoff.ceiling())
        draws = [Backoff(0.5, 8.0, random.Random(i)) for i in range(200)]
        for b in draws:
            b.attempt = backoff.attempt
        values = [b.next() for b in draws]
        assert all(0 <= v <= ceilings[-1] for v in values)
        assert min(values) < 0.2 * ceilings[-1] and max(values) > 0.8 * ceilings[-1]  # uniform over [0, ceiling]
        backoff.next()
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5
    config = TelemetryConfig(device_id="d", mqtt_host="h", backoff_initial_s=2, backoff_max_s=30).check()
    sync = MqttSync(config, Outbox("/nonexistent/outbox.sqlite3", "d"))
    assert (sync.backoff.initial_s, sync.backoff.cap_s) == (2, 30)
