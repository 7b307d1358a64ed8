"""The telemetry outbox and its MQTT sync, each against a bare baseline measured in the same run.

    .venv/bin/python bench/bench_outbox.py [--quick] [--drain-mib 256] [--out summary.json]

1. enqueue: records/s of ``Outbox.enqueue`` (one telemetry-sized record, ~600 bytes, per call and
   per transaction) at ``synchronous=FULL`` and ``NORMAL``, against a bare loop of
   ``INSERT`` + commit into a one-table SQLite database in WAL mode at the same setting; rounds
   interleaved so that a noisy neighbour's load falls on all alike.
2. sync: messages/s of ``MqttSync.drain`` (batches of ``sync_batch`` 100, delete after PUBACK) to a
   local mosquitto (TLS, client certificate, the per-device ACL: tests/support/mqtt_broker.py),
   against a bare paho-mqtt QoS 1 loop over the same TLS connection setup (publish everything with
   100 in flight, wait for every PUBACK; nothing read from or deleted in SQLite).
3. drain: a backlog of ``--drain-mib`` MiB (default 256) of ~2 KiB records, sent by a separate
   process (``MqttSync.drain`` as the daemon runs it): its peak RSS (ru_maxrss; goal <= 64 MiB) and the
   time; beside it, the RSS of the same process after importing everything, before draining (VmHWM
   from /proc/self/status: ru_maxrss of a child counts the parent's RSS at the fork).

Nothing leaves 127.0.0.1. The last thing printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "device_runtime" / "src"))

from paho.mqtt import __version__ as paho_version  # noqa: E402

from edgeai_runtime.device.config import TelemetryConfig  # noqa: E402
from edgeai_runtime.device.mqtt_sync import MqttSync  # noqa: E402
from edgeai_runtime.device.outbox import MiB, Outbox, encode_message  # noqa: E402
from support.mqtt_broker import Broker, BrokerPKI, tls_client  # noqa: E402

SAMPLE = {"cpu": {"use_ratio": 0.23, "frequency_hertz": 1.5e9, "count": 4},
          "memory": {"total_bytes": 4 * 1024 ** 3, "available_bytes": 3 * 1024 ** 3},
          "filesystems": [{"mount": "/", "size_bytes": 32 * 1024 ** 3, "free_bytes": 20 * 1024 ** 3}],
          "sensors": {"thermal_zone0": 48.3, "throttled_now": 0, "throttled_since_boot": 0},
          "inference": {"digits": {"1.0.0": {"requests": 1234, "errors": 0, "p50_seconds": 0.0012,
                                             "p95_seconds": 0.0031}}},
          "pad": "x" * 150}


def bare_inserts(path: str, n: int, synchronous: str) -> float:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=%s" % synchronous)
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    body = encode_message("bench", "boot", 1, "telemetry", time.time(), SAMPLE)
    started = time.perf_counter()
    for _n in range(n):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (body) VALUES (?)", (body,))
        db.execute("COMMIT")
    spent = time.perf_counter() - started
    db.close()
    return n / spent


def outbox_enqueues(path: str, n: int, synchronous: str) -> float:
    box = Outbox(path, "bench", max_bytes=1024 * MiB, synchronous=synchronous)
    box.enqueue("telemetry", SAMPLE)
    started = time.perf_counter()
    for _n in range(n):
        box.enqueue("telemetry", SAMPLE)
    spent = time.perf_counter() - started
    box.close()
    return n / spent


def bench_enqueue(work: Path, n: int, rounds: int) -> Dict[str, Any]:
    rates: Dict[str, List[float]] = {k: [] for k in ("outbox_FULL", "bare_FULL", "outbox_NORMAL", "bare_NORMAL")}
    for r in range(rounds):
        for mode in ("FULL", "NORMAL"):
            rates["outbox_%s" % mode].append(outbox_enqueues(str(work / ("o-%s-%d.db" % (mode, r))), n, mode))
            rates["bare_%s" % mode].append(bare_inserts(str(work / ("b-%s-%d.db" % (mode, r))), n, mode))
    best = {k: round(max(v), 1) for k, v in rates.items()}
    return {"records_per_round": n, "rounds": rounds, "records_per_s": best, "all_rounds": rates,
            "ratio_FULL": round(best["outbox_FULL"] / best["bare_FULL"], 3),
            "ratio_NORMAL": round(best["outbox_NORMAL"] / best["bare_NORMAL"], 3),
            "FULL_vs_NORMAL": round(best["outbox_FULL"] / best["outbox_NORMAL"], 3)}


def device_config(work: Path, pki: BrokerPKI, broker: Broker, **extra: Any) -> TelemetryConfig:
    root = work / "dev-a"
    if not (root / "keys" / "tls" / "device.crt").exists():
        pki.identity("dev-a", root / "keys" / "tls")
    return TelemetryConfig(root=str(root), device_id="dev-a", mqtt_host="127.0.0.1", mqtt_port=broker.port,
                           sync_batch=100, **extra).check()


def bare_paho(pki: BrokerPKI, broker: Broker, n: int, payload: bytes) -> float:
    identity = pki.identity("dev-a")
    client = tls_client(identity, pki.ca_file, "dev-a-bare")
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    done = threading.Semaphore(0)
    client.on_publish = lambda *_args: done.release()
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(6, 1, 1)  # TCP_NODELAY, as the sync sets it
    client.connect(broker.host, broker.port)
    client.loop_start()
    started = time.perf_counter()
    for _n in range(n):
        client.publish("edgeai/dev-a/telemetry", payload, qos=1)
    for _n in range(n):
        done.acquire()
    spent = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return n / spent


def bench_sync(work: Path, pki: BrokerPKI, broker: Broker, n: int, rounds: int) -> Dict[str, Any]:
    config = device_config(work, pki, broker)
    payload = encode_message("dev-a", "boot", 1, "telemetry", time.time(), SAMPLE)
    rates: Dict[str, List[float]] = {"sync": [], "bare_paho": []}
    for _round in range(rounds):
        box = Outbox(str(work / "sync.db"), "dev-a", max_bytes=1024 * MiB)
        box.enqueue_many("telemetry", [SAMPLE] * n)
        sync = MqttSync(config, box)
        sync.connect()
        started = time.perf_counter()
        delivered = sync.drain().delivered
        rates["sync"].append(delivered / (time.perf_counter() - started))
        sync.close()
        assert delivered == n and box.status()["records"] == 0
        box.close()
        rates["bare_paho"].append(bare_paho(pki, broker, n, payload))
    best = {k: round(max(v), 1) for k, v in rates.items()}
    return {"messages_per_round": n, "message_bytes": len(payload), "rounds": rounds, "messages_per_s": best,
            "all_rounds": rates, "ratio": round(best["sync"] / best["bare_paho"], 3)}


DRAIN_CHILD = """
import json, sys, time
sys.path[:0] = sys.argv[2:4]
from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.mqtt_sync import MqttSync
from edgeai_runtime.device.outbox import Outbox
def hwm():  # this process's own peak RSS (ru_maxrss would include the parent's, which forked it)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
config = TelemetryConfig(**json.loads(sys.argv[1])).check()
box = Outbox.from_config(config)
before = box.status()
sync = MqttSync(config, box)
rss_ready = hwm()
started = time.perf_counter()
done = sync.drain()
spent = time.perf_counter() - started
sync.close()
print(json.dumps({"records": before["records"], "bytes": before["bytes"], "delivered": done.delivered,
                  "seconds": spent, "rss_ready_bytes": rss_ready,
                  "peak_rss_bytes": hwm(),
                  "left": box.status()["records"]}))
"""


def bench_drain(work: Path, pki: BrokerPKI, broker: Broker, mib: int) -> Dict[str, Any]:
    config = device_config(work, pki, broker, outbox_max_bytes=(mib + 64) * MiB, outbox_synchronous="FULL")
    record = dict(SAMPLE, pad="x" * 1700)
    box = Outbox.from_config(config)
    started = time.perf_counter()
    while box.status()["bytes"] < mib * MiB:
        box.enqueue_many("telemetry", [record] * 2000)
    fill_s = time.perf_counter() - started
    box.close()
    settings = {f: getattr(config, f) for f in ("root", "device_id", "mqtt_host", "mqtt_port", "sync_batch",
                                                "outbox_max_bytes", "outbox_synchronous")}
    done = subprocess.run([sys.executable, "-c", DRAIN_CHILD, json.dumps(settings),
                           str(REPO / "device_runtime" / "src"), str(REPO / "tests")],
                          capture_output=True, text=True, check=False, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError("the drain process failed:\n%s" % done.stderr[-3000:])
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(fill_seconds=round(fill_s, 2), backlog_mib=round(result["bytes"] / MiB, 1),
                  messages_per_s=round(result["delivered"] / result["seconds"], 1),
                  mib_per_s=round(result["bytes"] / MiB / result["seconds"], 2),
                  peak_rss_mib=round(result["peak_rss_bytes"] / MiB, 1),
                  rss_ready_mib=round(result["rss_ready_bytes"] / MiB, 1),
                  seconds=round(result["seconds"], 2),
                  database_file_mib=round(os.path.getsize(config.outbox_path) / MiB, 1))
    result["peak_rss_target_met"] = result["peak_rss_bytes"] <= 64 * MiB
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer records, 32 MiB drain")
    parser.add_argument("--drain-mib", type=int, default=None)
    parser.add_argument("--out")
    args = parser.parse_args()
    n_enqueue, n_sync, rounds = (300, 3000, 2) if args.quick else (2000, 20000, 3)
    drain_mib = args.drain_mib or (32 if args.quick else 256)
    work = Path(tempfile.mkdtemp(prefix="bench-outbox-", dir=os.environ.get("BENCH_TMP")))
    pki = BrokerPKI(work / "pki")
    broker = Broker(work / "broker", pki).start()
    summary: Dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "sqlite": sqlite3.sqlite_version, "paho": paho_version,
                                           "load_average": os.getloadavg()}}
    try:
        print("== enqueue (%d records x %d rounds) ==" % (n_enqueue, rounds), flush=True)
        summary["enqueue"] = bench_enqueue(work, n_enqueue, rounds)
        print(json.dumps(summary["enqueue"]["records_per_s"]), flush=True)
        print("== sync (%d messages x %d rounds) ==" % (n_sync, rounds), flush=True)
        summary["sync"] = bench_sync(work, pki, broker, n_sync, rounds)
        print(json.dumps(summary["sync"]["messages_per_s"]), flush=True)
        print("== drain a %d MiB backlog ==" % drain_mib, flush=True)
        summary["drain"] = bench_drain(work, pki, broker, drain_mib)
        print(json.dumps({k: summary["drain"][k] for k in ("backlog_mib", "records", "seconds", "messages_per_s",
                                                           "peak_rss_mib", "rss_ready_mib")}), flush=True)
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary["machine"]["load_average_after"] = os.getloadavg()
    summary["bench_rusage_maxrss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("=== summary (JSON; everything below this line) ===")
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
