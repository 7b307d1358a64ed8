"""Cost of the telemetry collector (device.telemetry.Collector.sample) against a bare psutil baseline.

    .venv/bin/python bench/bench_telemetry.py [--samples 200] [--rounds 5] [--evidence CLASS] [--out summary.json]

In one process and one run, interleaved in rounds so that a noisy neighbour's load falls on both alike:

  psutil     the bare psutil reads a collector of CPU, memory, filesystem and network needs at least:
             cpu_times(), cpu_freq(), virtual_memory(), swap_memory(), disk_usage() of the root and
             net_io_counters(pernic=True);
  collector  Collector.sample() over a throw-away device root with the digits model installed and a
             deployment history row, sensors read from sim/evidence/<CLASS> (default jetson_orin, the
             largest tree), no service running (the inference stats come from a service's in-process
             snapshot on a device; here a fixed one, so no HTTP is measured);
  scrape     exposition.render() of a collector sample: the text a /metrics scrape adds;
  metrics    the service's own registry (service.metrics.Metrics, one model version's series) rendered
             as a scrape before this collector existed, and
  metrics+   the same registry with the telemetry collector registered, as the service has it now: what a
             /metrics scrape costs the service, before and after.

For each: CPU time per sample (time.process_time(), user + system of this process) in milliseconds, the
median over the rounds, and what one sample a second costs as % of one core (ms per sample / 1000 ms x
100). The ratio is against the bare psutil baseline of the same run. Prints a JSON summary last.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "device_runtime" / "src"))

from edgeai_runtime.device.config import RuntimeConfig, TelemetryConfig  # noqa: E402
from edgeai_runtime.device.exposition import render  # noqa: E402
from edgeai_runtime.device.journal import History  # noqa: E402
from edgeai_runtime.device.exposition import TelemetryCollector  # noqa: E402
from edgeai_runtime.device.telemetry import Collector  # noqa: E402
from edgeai_runtime.service.metrics import Metrics  # noqa: E402

STATS = {"window_seconds": 300.0, "max_samples": 4096, "model_stats": [{
    "name": "digits", "version": "1.0.0", "last_inference": 0, "inference_count": 1000,
    "inference_stats": {"success": {"count": 1000, "ns": 2_000_000_000}, "fail": {"count": 3, "ns": 3_000_000}},
    "window": {"requests": 300, "errors": 1, "latency_p50_seconds": 0.0015, "latency_p95_seconds": 0.004,
               "covered_seconds": 300.0, "truncated": False}}]}


def bare_psutil() -> Any:
    return (psutil.cpu_times(), psutil.cpu_freq(), psutil.virtual_memory(), psutil.swap_memory(),
            psutil.disk_usage("/"), psutil.net_io_counters(pernic=True))


def cpu_ms_per_call(fn: Callable[[], Any], n: int) -> float:
    started = time.process_time()
    for _call in range(n):
        fn()
    return (time.process_time() - started) / n * 1000.0


def service_metrics() -> Metrics:
    """The service's registry with the series one served version has after some requests."""
    metrics = Metrics()
    labels = ("digits", "1.0.0")
    for seconds in (0.001, 0.002, 0.004):
        metrics.inferences.labels(*labels).inc()
        metrics.duration.labels(*labels).observe(seconds)
        metrics.batch_size.labels(*labels).observe(1)
    metrics.errors.labels(*labels, "bad_request").inc()
    metrics.active.labels(*labels).set(1)
    metrics.accuracy.labels(*labels).set(0.97)
    metrics.swaps.labels("digits").inc()
    return metrics


def device_root(base: Path) -> Path:
    root = base / "device"
    (root / "etc").mkdir(parents=True)
    try:
        from support import modelgen
        from support.digits_store import serving_store
        serving_store(root, modelgen.train_digits_mlp(seed=0))
    except ImportError as exc:  # scikit-learn / onnx missing: an empty store (one listdir less per sample)
        print("note: no model installed (%s)" % exc)
    history = History(str(root / "state" / "history.sqlite"))
    history.record("digits", "1.0.0", None, "push", "committed", None, {"stage": 0.1})
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=200, help="samples per round and kind")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--evidence", default="jetson_orin", help="sim/evidence class the sensors are read from")
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-telemetry-") as tmp:
        root = device_root(Path(tmp))
        evidence = REPO / "sim" / "evidence" / args.evidence
        config = TelemetryConfig(root=str(root), device_id="bench", evidence_root=str(evidence))
        collector = Collector(config, RuntimeConfig(root=str(root), hardware_class=args.evidence),
                              stats=lambda: STATS)
        sample = collector.sample()
        before, after = service_metrics(), service_metrics()
        after.registry.register(TelemetryCollector(collector.sample))
        kinds: Dict[str, Callable[[], Any]] = {"psutil": bare_psutil, "collector": collector.sample,
                                               "scrape": lambda: render(sample),
                                               "metrics": lambda: before.exposition(""),
                                               "metrics+": lambda: after.exposition("")}
        for fn in kinds.values():  # warm: imports, first-call caches
            cpu_ms_per_call(fn, 5)
        results: Dict[str, List[float]] = {k: [] for k in kinds}
        wall: Dict[str, List[float]] = {k: [] for k in kinds}
        for round_no in range(args.rounds):
            order = list(kinds)[round_no % len(kinds):] + list(kinds)[:round_no % len(kinds)]
            for kind in order:
                started = time.perf_counter()
                results[kind].append(cpu_ms_per_call(kinds[kind], args.samples))
                wall[kind].append((time.perf_counter() - started) / args.samples * 1000.0)
        size = len(render(sample))

    base = statistics.median(results["psutil"])
    summary: Dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "machine": platform.machine(),
                    "load1_at_end": os.getloadavg()[0]},
        "evidence": args.evidence, "samples_per_round": args.samples, "rounds": args.rounds,
        "scrape_bytes": size, "kinds": {}}
    print("%-10s %14s %14s %12s %10s" % ("kind", "cpu ms/sample", "wall ms/sample", "% core @1 s", "x psutil"))
    for kind in kinds:
        ms = statistics.median(results[kind])
        entry = {"cpu_ms_per_sample": round(ms, 4), "wall_ms_per_sample": round(statistics.median(wall[kind]), 4),
                 "core_percent_at_1s": round(ms / 10.0, 4), "ratio_to_psutil": round(ms / base, 2) if base else None,
                 "cpu_ms_rounds": [round(v, 4) for v in results[kind]]}
        summary["kinds"][kind] = entry
        row = (kind, ms, entry["wall_ms_per_sample"], entry["core_percent_at_1s"], entry["ratio_to_psutil"])
        print("%-10s %14.3f %14.3f %12.3f %10s" % row)
    collect_scrape = summary["kinds"]["collector"]["cpu_ms_per_sample"] + summary["kinds"]["scrape"]["cpu_ms_per_sample"]
    summary["collector_plus_scrape_cpu_ms"] = round(collect_scrape, 4)
    print("a /metrics scrape's telemetry part (sample + render): %.3f CPU ms, %d bytes" % (collect_scrape, size))
    print("=== summary (JSON; everything below this line) ===")
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
