"""The telemetry daemon (edgeai_runtime.device.telemetry_daemon.run) with a real sample callable (psutil),
a real outbox and a real mosquitto; its clean SIGTERM; ``edgeai-runtime outbox status``; the OTA
installer's outcome records."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.outbox import Outbox
from edgeai_runtime.device.telemetry_daemon import run
from support.mqtt_broker import SUBSCRIBER, Broker, BrokerPKI, Subscriber
from support.service import runtime


@pytest.fixture
def pki(tmp_path):
    return BrokerPKI(tmp_path / "pki")


@pytest.fixture
def broker(tmp_path, pki):
    running = Broker(tmp_path / "broker", pki).start()
    yield running
    running.stop()


@pytest.fixture
def subscriber(broker, pki):
    sub = Subscriber(broker, pki.identity(SUBSCRIBER)).start()
    yield sub
    sub.stop()


def device_settings(tmp_path, pki, broker=None, **extra):
    root = tmp_path / "dev-a"
    pki.identity("dev-a", root / "keys" / "tls")
    settings = dict(device_id="dev-a", interval_s=0.1, backoff_initial_s=0.05, backoff_max_s=0.5,
                    mqtt_keepalive_s=5)
    if broker is not None:
        settings.update(mqtt_host="127.0.0.1", mqtt_port=broker.port)
    settings.update(extra)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "telemetry.json").write_text(json.dumps(settings))
    return root, TelemetryConfig(root=str(root), **settings).check()


class PsutilSample:
    """A small real sample (the collector's job, done with psutil); the first call fails."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a sensor went away")
        return {"n": self.calls, "cpu": {"use_ratio": psutil.cpu_percent() / 100.0, "count": psutil.cpu_count()},
                "memory": {"available_bytes": psutil.virtual_memory().available}}


def test_the_daemon_queues_a_sample_every_interval_and_sends_it(tmp_path, pki, broker, subscriber, caplog):
    _root, config = device_settings(tmp_path, pki, broker)
    sample, written = PsutilSample(), []
    stop = threading.Event()
    with caplog.at_level(logging.INFO, logger="edgeai_runtime.device.telemetry_daemon"):
        thread = threading.Thread(target=run, args=(config, sample, written.append, stop), daemon=True)
        thread.start()
        time.sleep(1.05)
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert 8 <= sample.calls <= 13  # one per 0.1 s
    assert any("taking a sample failed" in r.getMessage() for r in caplog.records)  # and it went on
    got = subscriber.wait_for(sample.calls - 1, timeout=5)
    messages = [json.loads(p) for t, p in got if t == "edgeai/dev-a/telemetry"]
    assert [m["data"]["n"] for m in messages] == list(range(2, sample.calls + 1))
    assert [w["n"] for w in written] == list(range(2, sample.calls + 1))  # the textfile hook: each sample
    assert all(0 <= m["data"]["cpu"]["use_ratio"] <= 1 and m["data"]["memory"]["available_bytes"] > 0
               for m in messages)
    assert set(messages[-1]["data"]["outbox"]) >= {"records", "bytes", "evicted_records", "refused_records"}
    assert "outbox" not in written[-1]
    assert Outbox.from_config(config).status()["records"] == 0


def test_without_a_broker_the_samples_are_kept(tmp_path, pki, caplog):
    _root, config = device_settings(tmp_path, pki)
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="edgeai_runtime.device.telemetry_daemon"):
        thread = threading.Thread(target=run, args=(config, lambda: {"ok": True}, None, stop), daemon=True)
        thread.start()
        time.sleep(0.55)
        stop.set()
        thread.join(10)
    assert any("no mqtt_host" in r.getMessage() for r in caplog.records)
    assert 4 <= Outbox.from_config(config).status()["kinds"]["telemetry"]["records"] <= 7


def test_sigterm_ends_the_daemon_cleanly(tmp_path, pki, broker, subscriber):
    root, _config = device_settings(tmp_path, pki, broker, interval_s=0.2)
    script = textwrap.dedent("""
        import logging, sys
        import psutil
        from edgeai_runtime.device.config import load_telemetry_config
        from edgeai_runtime.device.telemetry_daemon import run
        logging.basicConfig(level=logging.INFO)
        sample = lambda: {"memory_available_bytes": psutil.virtual_memory().available}
        sys.exit(run(load_telemetry_config(sys.argv[1]), sample))
    """)
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert len(subscriber.wait_for(3, timeout=20)) >= 3, log_path.read_text()
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log_path.read_text()
        assert time.monotonic() - started < 5
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log_path.read_text()
    assert "telemetry: stopped" in text and "Traceback" not in text
    assert "dev-a" in broker.log() and "Client dev-a disconnected." in broker.log()


def test_outbox_status_on_the_command_line(tmp_path, pki):
    root, config = device_settings(tmp_path, pki)
    missing = runtime(root, "outbox", "status")
    out = json.loads(missing.stdout)
    assert missing.returncode == 0 and out["outbox"]["exists"] is False and not (root / "outbox").exists()
    box = Outbox.from_config(config)
    box.enqueue_many("telemetry", [{"i": i} for i in range(3)])
    box.enqueue("ota", {"outcome": "committed"})
    done = runtime(root, "outbox", "status")
    out = json.loads(done.stdout)
    assert done.returncode == 0 and out["changed"] is False, done.stdout + done.stderr
    status = out["outbox"]
    assert status["records"] == 4 and status["kinds"]["telemetry"]["records"] == 3
    assert status["kinds"]["ota"]["records"] == 1 and status["kinds"]["inference"]["records"] == 0
    assert status["evicted"]["inference"] == {"records": 0, "bytes": 0} and status["oldest_age_s"] >= 0
    assert status["device_id"] == "dev-a" and status["synchronous"] == "FULL"
    (root / "etc" / "telemetry.json").write_text(json.dumps({"device_id": "dev-a", "outbox_synchronous": "OFF"}))
    bad = runtime(root, "outbox", "status")
    assert bad.returncode == 1 and json.loads(bad.stdout)["reason"] == "bad_config"


def test_the_ota_installer_queues_its_outcome(device, caplog):
    (device.root / "etc" / "telemetry.json").write_text(json.dumps({"device_id": "dev-a"}))
    result = device.apply("2.0.0")
    assert result["outcome"] == "committed"
    [record] = [json.loads(r.message) for r in Outbox(str(device.root / "outbox" / "outbox.sqlite3"), "dev-a")
                .pending(10)]
    assert record["kind"] == "ota" and record["device_id"] == "dev-a"
    data = record["data"]
    assert (data["name"], data["version"], data["from_version"], data["outcome"]) == ("digits", "2.0.0", "1.0.0",
                                                                                      "committed")
    assert data["txid"] == result["txid"] and data["timings"]["activate"] >= 0
    # An outbox that cannot be written never fails an update: the outcome stands, a warning says so.
    outbox_dir = device.root / "outbox"
    for name in os.listdir(outbox_dir):
        os.unlink(outbox_dir / name)
    (outbox_dir / "outbox.sqlite3").mkdir()
    with caplog.at_level(logging.WARNING, logger="edgeai_runtime.device.ota"):
        rolled = device.updater().rollback("digits", reason="test")
    assert rolled["changed"] is True and device.serving() == "1.0.0"
    assert any("not queued for the broker" in r.getMessage() and "manual_rollback" in r.getMessage()
               for r in caplog.records)


def test_no_telemetry_config_no_ota_records(device):
    assert device.apply("2.0.0")["outcome"] == "committed"
    assert not (device.root / "outbox").exists()
