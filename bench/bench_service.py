"""Benchmark of the edgeai-runtime inference service against raw onnxruntime, on the digits model.

    .venv/bin/python bench/bench_service.py [--quick] [--out summary.json]

Everything runs on 127.0.0.1: two real service processes (``edgeai-runtime serve``, one with
max_delay_ms 0 and one with 2, both max_batch_size 32) over two throw-away model stores, with
both digits versions (1.0.0, 2.0.0) installed, gate data included. Every loop is bounded by a
time limit and a request cap. Three parts, see bench/README.md for what each number means:

1. overhead: service vs ``onnxruntime.InferenceSession.run`` (same model bytes, same default
   session options as the backend), batch 1 and 32, client concurrency 1 and 8;
2. hot swap: client threads send requests non-stop while the CLI switches versions back and forth;
3. rollback: time from ``edgeai-runtime model rollback`` until a request is served by the
   previous version, and ``ModelManager.rollback`` in-process.

Ratios are always against a baseline measured in the same run. The last thing printed is a
JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from edgeai_runtime.device.config import RuntimeConfig  # noqa: E402
from edgeai_runtime.service.serving import ModelManager  # noqa: E402
from edgeai_runtime.device.store import ModelStore  # noqa: E402
from support import modelgen  # noqa: E402
from support.digits_store import install_digits  # noqa: E402

TARGET_OVERHEAD_MS = 0.5
TARGET_SWAP_FAILURES = 0
TARGET_ROLLBACK_S = 1.0
#: A swap window is from issuing the switch until this long after it has returned.
SETTLE_S = 0.25

PROFILES = {
    # measure_s / warmup_s per cell; request cap per cell; hot-swap phases; rollback trials
    "full": dict(rounds=4, warmup_s=0.5, measure_s=4.0, cap=200000, steady_s=5.0, swap_cycles=3, swap_gap_s=1.0,
                 admin_cycles=3, swap_clients=4, rollback_trials=5, inproc_trials=20),
    "quick": dict(rounds=1, warmup_s=0.2, measure_s=0.8, cap=100000, steady_s=1.5, swap_cycles=1, swap_gap_s=0.4,
                  admin_cycles=1, swap_clients=4, rollback_trials=2, inproc_trials=5),
}


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def pct(values: Sequence[float], q: float) -> Optional[float]:
    return ms(float(np.percentile(values, q))) if len(values) else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a is not None and b else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_command() -> List[str]:
    exe = Path(sys.executable).with_name("edgeai-runtime")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "edgeai_runtime.cli"]


# -- service processes ------------------------------------------------------------------------

class Service:
    """One `edgeai-runtime serve` process on 127.0.0.1 over its own store root."""

    def __init__(self, root: Path, **settings) -> None:
        self.root = root
        self.port = free_port()
        self.settings = dict(settings, host="127.0.0.1", port=self.port)
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "runtime.json").write_text(json.dumps(self.settings))
        self.base = "http://127.0.0.1:%d" % self.port
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self.log = open(self.root / "service.log", "w")
        self.proc = subprocess.Popen(cli_command() + ["--root", str(self.root), "serve"],
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, limit_s: float = 90.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if httpx.get(self.base + "/v2/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit("service never became ready:\n" + (self.root / "service.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str) -> Tuple[dict, float]:
        started = time.perf_counter()
        done = subprocess.run(cli_command() + ["--root", str(self.root), *args], capture_output=True, text=True,
                              timeout=120, check=False)
        elapsed = time.perf_counter() - started
        try:
            result = json.loads(done.stdout)
        except ValueError:
            result = {"failed": True, "msg": done.stdout + done.stderr}
        if done.returncode != 0:
            result.setdefault("failed", True)
        return result, elapsed


def body_for(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()


def new_client(base: str) -> httpx.Client:
    # One connection per thread, kept alive between requests.
    return httpx.Client(base_url=base, timeout=10.0, limits=httpx.Limits(max_connections=1,
                                                                         max_keepalive_connections=1))


HEADERS = {"content-type": "application/json"}


# -- closed-loop load ---------------------------------------------------------------------------

def closed_loop(make_worker: Callable[[], Tuple[Callable[[], bool], Callable[[], None]]], concurrency: int,
                warmup_s: float, measure_s: float, cap: int) -> Tuple[List[float], int, float]:
    """``concurrency`` threads call their worker back to back: ``warmup_s`` unrecorded, then
    ``measure_s`` (or ``cap`` calls in all) recorded. A worker returns False for a failed call.
    Returns (latencies in seconds, failed calls, wall seconds of the recorded window)."""
    latencies: List[List[float]] = [[] for i in range(concurrency)]
    failures = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1)
    stop_at = [0.0]
    record_from = [0.0]
    per_thread_cap = max(1, cap // concurrency)

    def run(i: int) -> None:
        call, close = make_worker()
        try:
            barrier.wait(timeout=30)
            lat, fails = latencies[i], 0
            while True:
                t0 = time.perf_counter()
                if t0 >= stop_at[0] or len(lat) >= per_thread_cap:
                    break
                ok = call()
                t1 = time.perf_counter()
                if t0 >= record_from[0]:
                    lat.append(t1 - t0)
                    if not ok:
                        fails += 1
            failures[i] = fails
        finally:
            close()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    now = time.perf_counter()
    record_from[0] = now + warmup_s
    stop_at[0] = now + warmup_s + measure_s
    barrier.wait(timeout=30)
    for t in threads:
        t.join(timeout=measure_s + warmup_s + 30)
    lats = [x for lat in latencies for x in lat]
    # Wall time of the recorded window: from record_from to the last completion.
    wall = max(min(time.perf_counter(), stop_at[0] + 10) - record_from[0], 1e-9)
    return lats, sum(failures), wall


def measure(runs: Dict[str, Callable], concurrency: int, profile: dict) -> Dict[str, dict]:
    """Measure each of ``runs`` (name -> worker factory) in ``profile['rounds']`` interleaved rounds of
    ``measure_s / rounds`` each, pooled, so that a noisy neighbour's load falls on all of them alike."""
    pooled = {name: ([], 0, 0.0) for name in runs}
    rounds = profile["rounds"]
    names = list(runs)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotated: no run always goes first
            make_worker = runs[name]
            lats, fails, wall = closed_loop(make_worker, concurrency, profile["warmup_s"] if r == 0 else 0.1,
                                            profile["measure_s"] / rounds, profile["cap"] // rounds)
            got = pooled[name]
            pooled[name] = (got[0] + lats, got[1] + fails, got[2] + wall)
    out = {}
    for name, (lats, fails, wall) in pooled.items():
        out[name] = {"requests": len(lats), "failed": fails, "p50_ms": pct(lats, 50), "p99_ms": pct(lats, 99),
                     "mean_ms": ms(float(np.mean(lats))) if lats else None,
                     "throughput_rps": round(len(lats) / max(wall, 1e-9), 1)}
    return out


def raw_worker(session: ort.InferenceSession, x: np.ndarray):
    feed = {"input": x}

    def call() -> bool:
        session.run(None, feed)
        return True
    return lambda: (call, lambda: None)


def service_worker(base: str, body: bytes):
    def make():
        client = new_client(base)

        def call() -> bool:
            return client.post("/v2/models/digits/infer", content=body, headers=HEADERS).status_code == 200
        return call, client.close
    return make


def live_worker(base: str):
    """GET /v2/health/live: the HTTP floor (client + uvicorn + Starlette, no body, no model)."""
    def make():
        client = new_client(base)

        def call() -> bool:
            return client.get("/v2/health/live").status_code == 200
        return call, client.close
    return make


# -- part 1 -----------------------------------------------------------------------------------------

def part_overhead(profile: dict, onnx_bytes: bytes, digits, services: Dict[float, Service],
                  batches=(1, 32), concurrencies=(1, 8)) -> List[dict]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])  # same default options
    cells = []
    floors = {}
    for conc in concurrencies:
        floors[conc] = measure({"live": live_worker(services[min(services)].base)}, conc, profile)["live"]
        print("  HTTP floor (GET /v2/health/live) conc %d: p50 %.3f ms p99 %.3f ms %.1f req/s"
              % (conc, floors[conc]["p50_ms"], floors[conc]["p99_ms"], floors[conc]["throughput_rps"]), flush=True)
    for batch in batches:
        x = np.ascontiguousarray(digits.X_test[:batch], dtype=np.float32)
        body = body_for(x)
        # The service answers right before anything is timed.
        for delay, service in services.items():
            reply = httpx.post(service.base + "/v2/models/digits/infer", content=body, headers=HEADERS, timeout=10)
            probs = {o["name"]: o for o in reply.json()["outputs"]}["probabilities"]
            np.testing.assert_allclose(np.array(probs["data"], np.float32).reshape(batch, 10),
                                       session.run(["probabilities"], {"input": x})[0], atol=1e-5)
        for conc in concurrencies:
            runs = {"raw": raw_worker(session, x)}
            runs.update({delay: service_worker(service.base, body) for delay, service in services.items()})
            got = measure(runs, conc, profile)
            raw = got["raw"]
            for delay in services:
                svc = got[delay]
                overhead = round(svc["p50_ms"] - raw["p50_ms"], 3) if svc["p50_ms"] is not None else None
                cell = {"batch": batch, "concurrency": conc, "max_delay_ms": delay, "raw": raw, "service": svc,
                        "p50_overhead_ms": overhead,
                        "http_floor": floors[conc],
                        "p50_above_http_floor_ms": round(svc["p50_ms"] - floors[conc]["p50_ms"], 3),
                        "p50_ratio": ratio(svc["p50_ms"], raw["p50_ms"]),
                        "p99_ratio": ratio(svc["p99_ms"], raw["p99_ms"]),
                        "throughput_ratio": ratio(svc["throughput_rps"], raw["throughput_rps"]),
                        "overhead_target_met": overhead is not None and overhead <= TARGET_OVERHEAD_MS}
                cells.append(cell)
                print("  batch %2d conc %d delay %g ms | raw p50 %7.3f p99 %7.3f %8.1f req/s | service p50 %7.3f "
                      "p99 %7.3f %7.1f req/s fail %d | overhead p50 %+.3f ms, p50 x%.2f p99 x%.2f thr x%.3f"
                      % (batch, conc, delay, raw["p50_ms"], raw["p99_ms"], raw["throughput_rps"], svc["p50_ms"],
                         svc["p99_ms"], svc["throughput_rps"], svc["failed"], overhead, cell["p50_ratio"],
                         cell["p99_ratio"], cell["throughput_ratio"]), flush=True)
    return cells


# -- part 2 -----------------------------------------------------------------------------------------

class SteadyLoad:
    """Client threads sending batch-1 requests back to back, recording (start, end, status, version)."""

    def __init__(self, base: str, body: bytes, clients: int, limit_s: float) -> None:
        self.base, self.body = base, body
        self.records: List[List[tuple]] = [[] for i in range(clients)]
        self.stop = threading.Event()
        self.deadline = time.perf_counter() + limit_s
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, i: int) -> None:
        out = self.records[i]
        with new_client(self.base) as client:
            while not self.stop.is_set() and time.perf_counter() < self.deadline:
                t0 = time.perf_counter()
                version = None
                try:
                    reply = client.post("/v2/models/digits/infer", content=self.body, headers=HEADERS)
                    status = reply.status_code
                    if status == 200:
                        version = reply.json().get("model_version")
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                out.append((t0, time.perf_counter(), status, version))

    def __enter__(self) -> "SteadyLoad":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def all(self) -> List[tuple]:
        return sorted((r for rs in self.records for r in rs), key=lambda r: r[0])


def part_hot_swap(profile: dict, digits, service: Service) -> dict:
    body = body_for(np.ascontiguousarray(digits.X_test[:1], dtype=np.float32))
    limit = profile["steady_s"] + (profile["swap_cycles"] * 2 + profile["admin_cycles"] * 2) * (
        profile["swap_gap_s"] + 15) + 30
    windows: List[dict] = []
    admin = new_client(service.base)
    with SteadyLoad(service.base, body, profile["swap_clients"], limit) as load:
        time.sleep(profile["steady_s"])
        steady_end = time.perf_counter()
        for cycle in range(profile["swap_cycles"]):  # pylint: disable=unused-variable
            for version in ("2.0.0", "1.0.0"):
                t0 = time.perf_counter()
                result = service.cli("model", "activate", "digits", version)[0]
                windows.append({"how": "cli", "target": version, "t0": t0, "t1": time.perf_counter(),
                                "failed": bool(result.get("failed")), "instant": result.get("instant"),
                                "switch_s": result.get("seconds"), "msg": result.get("msg")})
                time.sleep(profile["swap_gap_s"])
        for cycle in range(profile["admin_cycles"]):  # pylint: disable=unused-variable
            for version in ("2.0.0", "1.0.0"):
                t0 = time.perf_counter()
                reply = admin.post("/v2/admin/models/digits/activate", json={"version": version}, timeout=60)
                windows.append({"how": "admin", "target": version, "t0": t0, "t1": time.perf_counter(),
                                "failed": reply.status_code != 200, "instant": reply.json().get("instant"),
                                "switch_s": reply.json().get("seconds"), "msg": reply.json().get("error")})
                time.sleep(profile["swap_gap_s"])
        run_end = time.perf_counter()
    admin.close()
    records = load.all()
    failed = [r for r in records if r[2] != 200]
    steady = [r[1] - r[0] for r in records if r[1] <= steady_end]
    steady_p99 = pct(steady, 99)

    def in_windows(how: str) -> List[float]:
        return [r[1] - r[0] for r in records
                if any(r[0] <= w["t1"] + SETTLE_S and r[1] >= w["t0"] for w in windows if w["how"] == how)]

    # After a switch has returned, every request that starts later must be served by the target.
    stale = 0
    for w in windows:
        nxt = next((r for r in records if r[0] > w["t1"] and r[2] == 200), None)
        if nxt is not None and nxt[3] != w["target"]:
            stale += 1
    summary = {"clients": profile["swap_clients"], "requests": len(records),
               "failed_requests": len(failed), "failed_statuses": sorted({str(r[2]) for r in failed}),
               "switches": len(windows), "switches_failed": sum(w["failed"] for w in windows),
               "stale_after_switch": stale,
               "served_by": {v: sum(1 for r in records if r[3] == v) for v in ("1.0.0", "2.0.0")},
               "steady": {"requests": len(steady), "p50_ms": pct(steady, 50), "p99_ms": steady_p99},
               "duration_s": round(run_end - records[0][0], 2) if records else 0,
               "target_met": len(failed) == TARGET_SWAP_FAILURES}
    for how in ("cli", "admin"):
        lat = in_windows(how)
        ws = [w for w in windows if w["how"] == how]
        summary["during_%s_swaps" % how] = {
            "requests": len(lat), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "max_ms": ms(max(lat)) if lat else None, "p99_ratio_vs_steady": ratio(pct(lat, 99), steady_p99),
            "window_s": [round(w["t1"] - w["t0"], 3) for w in ws],
            "server_switch_s": [w["switch_s"] for w in ws], "instant": [w["instant"] for w in ws]}
    errors = [w["msg"] for w in windows if w["failed"]]
    if errors:
        summary["switch_errors"] = errors[:3]
    return summary


# -- part 3 -----------------------------------------------------------------------------------------

def served_version(client: httpx.Client, body: bytes) -> Optional[str]:
    try:
        reply = client.post("/v2/models/digits/infer", content=body, headers=HEADERS)
    except httpx.HTTPError:
        return None
    return reply.json().get("model_version") if reply.status_code == 200 else None


def time_until_served(client: httpx.Client, body: bytes, target: str, start: Callable[[], object],
                      limit_s: float = 20.0) -> Tuple[Optional[float], object, int]:
    """Call ``start()`` (non-blocking), then send requests back to back until one is answered by
    ``target``. Returns (seconds from start to that answer, start's result, requests sent)."""
    t0 = time.perf_counter()
    handle = start()
    sent = 0
    while time.perf_counter() - t0 < limit_s:
        sent += 1
        if served_version(client, body) == target:
            return time.perf_counter() - t0, handle, sent
    return None, handle, sent


def part_rollback(profile: dict, digits, service: Service, onnx_v1: bytes, onnx_v2: bytes, workdir: Path) -> dict:
    body = body_for(np.ascontiguousarray(digits.X_test[:1], dtype=np.float32))
    client = new_client(service.base)
    status = client.get("/v2/admin/status").json()["serving"][0]
    current = status["active"]["version"]
    previous = status["previous"]["version"] if status["previous"] else None
    assert previous, "the service keeps no previous version loaded: %s" % status
    cli_trials, admin_trials = [], []
    for i in range(profile["rollback_trials"] * 2):
        target = previous
        if i % 2 == 0:  # through the CLI (a new process, then the loopback admin endpoint)
            cmd = cli_command() + ["--root", str(service.root), "model", "rollback", "digits"]
            cli_started = time.perf_counter()
            seconds, proc, sent = time_until_served(
                client, body, target, lambda: subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True))
            out = proc.communicate(timeout=60)[0]
            cli_wall = time.perf_counter() - cli_started
            result = json.loads(out) if out.strip() else {"failed": True}
            cli_trials.append({"to": target, "served_s": seconds, "cli_wall_s": round(cli_wall, 4),
                               "server_switch_s": result.get("seconds"), "instant": result.get("instant"),
                               "via": result.get("via"), "failed": bool(result.get("failed")),
                               "requests_before_switch": sent - 1})
        else:  # straight to the admin endpoint, no process start
            box: dict = {}
            admin = new_client(service.base)  # made before the clock starts
            admin.get("/v2/admin/status")

            def post() -> threading.Thread:
                def run():
                    box["reply"] = admin.post("/v2/admin/models/digits/rollback", json={}, timeout=60).json()
                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                return thread
            seconds, thread, sent = time_until_served(client, body, target, post)
            thread.join(timeout=60)
            admin.close()
            reply = box.get("reply", {})
            admin_trials.append({"to": target, "served_s": seconds, "server_switch_s": reply.get("seconds"),
                                 "instant": reply.get("instant"), "failed": "error" in reply or not reply,
                                 "requests_before_switch": sent - 1})
        current, previous = target, current
    client.close()

    # In process: ModelManager over its own store, both versions loaded (hot), then cold (only active loaded).
    root = workdir / "inproc"
    store = ModelStore(str(root))
    install_digits(store, "1.0.0", onnx_v1, digits)
    install_digits(store, "2.0.0", onnx_v2, digits)
    config = RuntimeConfig(root=str(root), max_batch_size=32)
    manager = ModelManager(store, config)
    manager.activate("digits", "1.0.0")
    manager.activate("digits", "2.0.0")
    hot = []
    for trial in range(profile["inproc_trials"]):  # pylint: disable=unused-variable
        t0 = time.perf_counter()
        result = manager.rollback("digits")
        hot.append(time.perf_counter() - t0)
        assert result["instant"], result
    manager.close()
    cold_manager = ModelManager(ModelStore(str(root)), config)
    cold_manager.sync_from_store()
    t0 = time.perf_counter()
    cold_result = cold_manager.rollback("digits")
    cold = time.perf_counter() - t0
    cold_manager.close()

    def stats(values: List[Optional[float]]) -> dict:
        got = [v for v in values if v is not None]
        return {"median_ms": ms(float(np.median(got))) if got else None, "max_ms": ms(max(got)) if got else None,
                "missed": len(values) - len(got)}

    cli_served = stats([t["served_s"] for t in cli_trials])
    admin_served = stats([t["served_s"] for t in admin_trials])
    hot_stats = stats(hot)
    worst = max([v for v in (cli_served["max_ms"], admin_served["max_ms"]) if v is not None] or [float("inf")])
    return {"cli": {"served_by_previous": cli_served,
                    "cli_wall": stats([t["cli_wall_s"] for t in cli_trials]), "trials": cli_trials},
            "admin_endpoint": {"served_by_previous": admin_served, "trials": admin_trials},
            "in_process_hot": hot_stats,
            "in_process_cold": {"ms": ms(cold), "instant": cold_result["instant"]},
            "cli_vs_in_process_ratio": ratio(cli_served["median_ms"], hot_stats["median_ms"]),
            "target_met": worst < TARGET_ROLLBACK_S * 1000 and not any(
                t["failed"] for t in cli_trials + admin_trials) and cli_served["missed"] + admin_served["missed"] == 0}


# -- main -------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="short measurement windows (under ~40 s)")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store roots and service logs")
    args = parser.parse_args(argv)
    profile = PROFILES["quick" if args.quick else "full"]
    started = time.perf_counter()
    load_before = os.getloadavg()

    digits = modelgen.train_digits_mlp(seed=0)
    onnx_v1 = modelgen.digits_onnx(digits)
    onnx_v2 = modelgen.digits_onnx(modelgen.train_digits_mlp(seed=3))
    workdir = Path(tempfile.mkdtemp(prefix="edgeai-bench-"))
    services: Dict[float, Service] = {}
    try:
        for delay in (0.0, 2.0):
            root = workdir / ("delay%g" % delay)
            store = ModelStore(str(root))
            install_digits(store, "1.0.0", onnx_v1, digits)
            install_digits(store, "2.0.0", onnx_v2, digits)
            store.activate("digits", "1.0.0")
            services[delay] = Service(root, max_batch_size=32, max_delay_ms=delay, max_queue=256)
        for service in services.values():  # both start at once; an idle one costs no CPU later
            service.start()
        for service in services.values():
            service.wait_ready()
        print("edgeai-runtime service benchmark (%s); %d CPUs, load average %.2f; onnxruntime %s"
              % ("quick" if args.quick else "full", os.cpu_count(), load_before[0], ort.__version__), flush=True)

        print("\n[1] service vs raw InferenceSession.run (max_batch_size 32)", flush=True)
        cells = part_overhead(profile, onnx_v1, digits, services)

        print("\n[2] hot swap under steady load (max_delay_ms 2)", flush=True)
        swap = part_hot_swap(profile, digits, services[2.0])
        print("  %d requests from %d clients, %d failed %s; %d switches (%d refused), %d stale after a switch"
              % (swap["requests"], swap["clients"], swap["failed_requests"], swap["failed_statuses"],
                 swap["switches"], swap["switches_failed"], swap["stale_after_switch"]))
        print("  steady p50 %.3f ms p99 %.3f ms" % (swap["steady"]["p50_ms"], swap["steady"]["p99_ms"]))
        for how in ("cli", "admin"):
            d = swap["during_%s_swaps" % how]
            if d["requests"]:
                print("  during %-5s swaps: %4d requests p50 %.3f ms p99 %.3f ms max %.3f ms; p99 x%.2f steady;"
                      " windows %s s" % (how, d["requests"], d["p50_ms"], d["p99_ms"], d["max_ms"],
                                         d["p99_ratio_vs_steady"], d["window_s"]), flush=True)

        print("\n[3] rollback time", flush=True)
        rollback = part_rollback(profile, digits, services[2.0], onnx_v1, onnx_v2, workdir)
        print("  CLI `model rollback`: served by previous after median %s ms (max %s); CLI process wall median %s ms"
              % (rollback["cli"]["served_by_previous"]["median_ms"], rollback["cli"]["served_by_previous"]["max_ms"],
                 rollback["cli"]["cli_wall"]["median_ms"]))
        print("  admin endpoint: served by previous after median %s ms (max %s)"
              % (rollback["admin_endpoint"]["served_by_previous"]["median_ms"],
                 rollback["admin_endpoint"]["served_by_previous"]["max_ms"]))
        print("  ModelManager.rollback in-process: hot median %s ms (max %s); cold (reload + gate) %s ms"
              % (rollback["in_process_hot"]["median_ms"], rollback["in_process_hot"]["max_ms"],
                 rollback["in_process_cold"]["ms"]), flush=True)
    finally:
        for service in services.values():
            service.stop()
        if args.keep:
            print("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    headline = next(c for c in cells if c["batch"] == 1 and c["concurrency"] == 1 and c["max_delay_ms"] == 0.0)
    summary = {
        "profile": "quick" if args.quick else "full",
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                        "latency": "client-side, request sent to full response read, body pre-encoded; raw is "
                                   "InferenceSession.run in this process with the same model bytes"},
        "targets": {"p50_overhead_ms_max": TARGET_OVERHEAD_MS, "swap_failed_requests": TARGET_SWAP_FAILURES,
                    "rollback_s_max": TARGET_ROLLBACK_S},
        "overhead": cells,
        "headline_batch1_conc1_delay0": {
            k: headline[k] for k in ("p50_overhead_ms", "p50_ratio", "p99_ratio", "throughput_ratio",
                                     "overhead_target_met")},
        "hot_swap": swap,
        "rollback": rollback,
        "targets_met": {"overhead_batch1_conc1": headline["overhead_target_met"],
                        "overhead_all_cells": all(c["overhead_target_met"] for c in cells),
                        "hot_swap_zero_failures": swap["target_met"],
                        "rollback_under_1s": rollback["target_met"]},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(summary, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print("\n=== summary (JSON; everything below this line) ===")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
