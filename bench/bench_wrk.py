"""Service overhead measured with wrk (a C HTTP client), so the client's own cost stays out of it.

  .venv/bin/python bench/bench_wrk.py [--seconds 5]

Runs in one process, on 127.0.0.1 only, bounded in time:
  raw      onnxruntime InferenceSession.run on the digits model, batch 1 (the baseline)
  floor    wrk GET /v2/health/live: HTTP and framework cost with no model
  infer    wrk POST /v2/models/digits/infer, batch 1, one connection
and prints p50/p99 for each, the p50 overhead (infer - raw) against the issue's 0.5 ms target,
and the ratios. Needs `wrk` (Debian package wrk).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from bench_service import Service, body_for  # noqa: E402  pylint: disable=wrong-import-position
from edgeai_runtime.device.store import ModelStore  # noqa: E402  pylint: disable=wrong-import-position
from support import modelgen  # noqa: E402  pylint: disable=wrong-import-position
from support.digits_store import install_digits  # noqa: E402  pylint: disable=wrong-import-position

LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("%s", "r"); wrk.body = f:read("*a"); f:close()
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, seconds: int, script: str = "") -> dict:
    argv = ["wrk", "-t1", "-c1", "-d%ds" % seconds, "--latency"] + (["-s", script] if script else []) + [url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    found = {q: float(v) * UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": found.get("50"), "p99_ms": found.get("99"), "req_per_s": float(rate.group(1)) if rate else None,
            "non_2xx": int(errors.group(1)) if errors else 0}


def raw(onnx: bytes, x: np.ndarray, seconds: float) -> dict:
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    times = []
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline and len(times) < 200000:
        started = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - started)
    return {"p50_ms": round(float(np.percentile(times, 50)) * 1e3, 4),
            "p99_ms": round(float(np.percentile(times, 99)) * 1e3, 4),
            "req_per_s": len(times) / (time.perf_counter() - began)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    digits = modelgen.train_digits_mlp(seed=0)
    onnx = modelgen.digits_onnx(digits)
    x = np.ascontiguousarray(digits.X_test[:1], dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edgeai-wrk-") as tmp:
        root = Path(tmp) / "device"
        store = ModelStore(str(root))
        install_digits(store, "1.0.0", onnx, digits)
        store.activate("digits", "1.0.0")
        (Path(tmp) / "body.json").write_bytes(body_for(x))
        (Path(tmp) / "post.lua").write_text(LUA % (Path(tmp) / "body.json"))
        service = Service(root, max_batch_size=32, max_delay_ms=0)
        service.start()
        try:
            service.wait_ready()
            wrk(service.base + "/v2/models/digits/infer", 2, str(Path(tmp) / "post.lua"))  # warm up
            results = {"raw": raw(onnx, x, args.seconds),
                       "floor": wrk(service.base + "/v2/health/live", args.seconds),
                       "infer": wrk(service.base + "/v2/models/digits/infer", args.seconds, str(Path(tmp) / "post.lua"))}
        finally:
            service.stop()
    overhead = results["infer"]["p50_ms"] - results["raw"]["p50_ms"]
    summary = dict(results, p50_overhead_ms=round(overhead, 3),
                   p50_above_floor_ms=round(results["infer"]["p50_ms"] - results["floor"]["p50_ms"], 3),
                   p50_ratio_vs_raw=round(results["infer"]["p50_ms"] / results["raw"]["p50_ms"], 1),
                   throughput_ratio_vs_raw=round(results["infer"]["req_per_s"] / results["raw"]["req_per_s"], 4),
                   overhead_target_ms=0.5, overhead_target_met=overhead <= 0.5)
    for name in ("raw", "floor", "infer"):
        r = results[name]
        print("%-6s p50 %.4f ms  p99 %.4f ms  %.0f req/s" % (name, r["p50_ms"], r["p99_ms"], r["req_per_s"]))
    print("p50 overhead over raw %+.3f ms (target <= 0.5 ms: %s); above the HTTP floor %+.3f ms; p50 x%.1f raw"
          % (overhead, "met" if overhead <= 0.5 else "NOT met", summary["p50_above_floor_ms"],
             summary["p50_ratio_vs_raw"]))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
