"""kill -9 of the outbox's process at random moments, during enqueue and during sync, for at least 200
cycles against a real mosquitto: no acknowledged record is lost (an enqueue is acknowledged when the
call returned; a delivery when the broker's PUBACK came). A subscriber with a persistent session
counts what arrived; the duplicates (before deduplication by device_id, boot_id, seq) are reported."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.mqtt_sync import MqttSync
from edgeai_runtime.device.outbox import Outbox
from support.mqtt_broker import SUBSCRIBER, Broker, BrokerPKI, Subscriber

CYCLES = int(os.environ.get("EDGEAI_KILL_CYCLES", "210"))
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Zygote:
    """tests/support/outbox_worker.py's parent: forks a worker per cycle."""

    def __init__(self, config_path, env):
        self.proc = subprocess.Popen([sys.executable, "-m", "support.outbox_worker", str(config_path)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=TESTS)

    def ask(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the worker parent died (exit status %s)" % self.proc.poll())
        return int(answer)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)


def read_acks(path):
    enqueued, pubacked = set(), set()
    if not path.exists():  # killed before its first note (still starting)
        return enqueued, pubacked, [""]
    lines = path.read_text().splitlines()
    for line in lines:
        if line.startswith("E "):
            enqueued.add(int(line[2:]))
        elif line.startswith("P "):
            pubacked.update(int(s) for s in line[2:].split())
    return enqueued, pubacked, lines[-1:] or [""]


def test_kill_9_during_enqueue_and_sync_loses_no_acknowledged_record(tmp_path):
    pki = BrokerPKI(tmp_path / "pki")
    broker = Broker(tmp_path / "broker", pki).start()
    subscriber = Subscriber(broker, pki.identity(SUBSCRIBER), session_expiry=3600).start()
    root = tmp_path / "dev-a"
    pki.identity("dev-a", root / "keys" / "tls")
    settings = dict(root=str(root), device_id="dev-a", mqtt_host="127.0.0.1", mqtt_port=broker.port,
                    backoff_initial_s=0.01, backoff_max_s=0.05, sync_batch=25, mqtt_keepalive_s=5)
    config = TelemetryConfig(**settings).check()
    (tmp_path / "config.json").write_text(json.dumps(settings))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([TESTS] + sys.path))
    zygote = Zygote(tmp_path / "config.json", env)
    rng = random.Random(15)
    modes = Counter()
    landed = Counter()  # where the sync-mode kills fell, by the worker's last note
    enqueued, pubacked = set(), set()
    started = time.monotonic()
    try:
        for cycle in range(CYCLES):
            mode = ("enqueue", "sync", "both")[cycle % 3]
            acks = tmp_path / "acks" / ("%03d" % cycle)
            acks.parent.mkdir(exist_ok=True)
            pid = zygote.ask("run %s %d %s" % (mode, rng.randrange(1 << 30), acks))
            time.sleep(rng.uniform(0.005, 0.12))
            os.kill(pid, signal.SIGKILL)
            status = zygote.ask("reap %d" % pid)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
                "cycle %d: the %s worker ended by itself (status %d) before the kill" % (cycle, mode, status)
            e, p, tail = read_acks(acks)
            enqueued |= e
            pubacked |= p
            modes[mode] += 1
            if mode != "enqueue":
                landed[{"E": "after an enqueue", "P": "between PUBACK and delete", "D": "after a delete"}.get(
                    tail[0][:1], "before any note (starting, connecting)")] += 1
        kill_wall = time.monotonic() - started
        # Whatever the killed workers left: one clean sync sends the rest.
        box = Outbox.from_config(config)
        assert box._connect().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sync = MqttSync(config, box)
        sync.drain()
        sync.close()
        assert box.status()["records"] == 0
        last_seq = box.status()["last_seq"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (enqueued | pubacked) - {json.loads(message[1])["seq"]
                                                                       for message in subscriber.received()}:
            time.sleep(0.1)
        time.sleep(0.3)
        received = subscriber.received()
    finally:
        zygote.close()
        subscriber.stop()
        broker.stop()
    by_seq = {}
    for topic, payload in received:
        message = json.loads(payload)
        assert topic == "edgeai/dev-a/%s" % message["kind"] and message["device_id"] == "dev-a"
        # a duplicate is the same record again, never another record under its seq
        assert by_seq.setdefault((message["boot_id"], message["seq"]), payload) == payload
    arrived = {seq for _boot, seq in by_seq}
    # the kills found work to interrupt
    assert len(enqueued) > 5 * CYCLES and len(pubacked) > 2 * CYCLES, (len(enqueued), len(pubacked))
    lost = (enqueued | pubacked) - arrived
    assert not lost, "acknowledged but never delivered: %s" % sorted(lost)[:20]
    assert arrived <= set(range(1, last_seq + 1))
    duplicates = len(received) - len(arrived)
    print("\nkill -9: %d cycles (%s) in %.1f s; sync kills landed %s; %d records acknowledged at enqueue, "
          "%d PUBACKed, %d arrived once or more, %d messages received: %d duplicates before dedup (%.2f%%)"
          % (sum(modes.values()), dict(modes), kill_wall, dict(landed), len(enqueued), len(pubacked), len(arrived),
             len(received), duplicates, 100.0 * duplicates / max(1, len(received))))
    assert sum(modes.values()) >= 200
