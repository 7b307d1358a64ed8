"""Our service against a KServe 0.21 peer, on one pinned core, measured with wrk; uvloop/httptools; the JSON path.

  .venv/bin/python bench/bench_kserve.py [--quick] [--out F] [--extra-path DIR] [--kserve-python PY]

Everything on 127.0.0.1, bounded in time; see bench/README.md ("bench_kserve.py"). Servers run on
core 1 (``taskset -c 1``), wrk on core 0, on the digits ONNX model, batch 1, the same v2 JSON body:
  raw            ``InferenceSession.run`` in a child process on core 1 (the baseline)
  ours-default   ``edgeai-runtime serve`` where uvloop, httptools and orjson do not import: asyncio + h11
  ours-uvloop    the same where uvloop and httptools import: serve() picks uvloop + httptools
  ours-orjson    ours-uvloop with orjson importable too: what a device with the runtime's dependencies runs
  kserve         kserve.ModelServer (bench/kserve_peer.py) in its own venv, REST only, one worker
Each server at wrk concurrency 1 and 8, plus ``GET /v2/health/live`` at 1 (the HTTP floor), in
interleaved rounds whose order rotates; the server's CPU per request from /proc/PID/stat
(utime + stime, all threads) around each window. Then JSON decode/encode microbenchmarks of a
batch-1 and a batch-32 body, stdlib json against orjson. Prints tables, the targets and a JSON
summary; never fails on a missed target.

uvloop, httptools and orjson are runtime dependencies; the service uses each when it imports
(http_server.fastest_stack, v2.FAST_JSON). A configuration that goes without one gets a directory
first on its path with a package of that name that raises ImportError. Where they are not in the
venv, ``--extra-path DIR`` (default /tmp/speed-extra when it exists) is put on the path of the
ours-uvloop and ours-orjson servers, ``--orjson-path DIR`` (default /tmp/speed-orjson) on that of
ours-orjson and of the microbenchmarks, e.g. after
``pip install --target /tmp/speed-extra uvloop httptools`` and
``pip install --target /tmp/speed-orjson orjson``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_EXTRA = "/tmp/speed-extra"
DEFAULT_ORJSON = "/tmp/speed-orjson"
DEFAULT_KSERVE_PYTHON = "/tmp/kserve-venv/bin/python"
LUA = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("%s", "r"); wrk.body = f:read("*a"); f:close()
"""
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
TARGET_THROUGHPUT_X = 2.0
TARGET_P50_OVER_RAW_MS = 0.25
TARGET_CPU_MS = 0.2
PROFILES = {"full": dict(rounds=4, seconds=5, floor_seconds=3, raw_seconds=4, micro_number=2000),
            "quick": dict(rounds=1, seconds=3, floor_seconds=2, raw_seconds=2, micro_number=300)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), from /proc/PID/stat."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def with_path(extra: List[Optional[str]], env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ if env is None else env)
    paths = [str(REPO / "device_runtime" / "src"), str(REPO / "tests")] + [e for e in extra if e]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


# -- child processes ----------------------------------------------------------------------------

def serve_child(root: str) -> int:
    """``edgeai-runtime --root ROOT serve``, the CLI's own code path: loop, parser and JSON are what import."""
    from edgeai_runtime import cli
    return cli.main(["--root", root, "serve"])


def blocker(tmp: Path, modules: List[str]) -> Optional[str]:
    """A directory that makes ``modules`` fail to import, to put first on a server's path (None for none)."""
    if not modules:
        return None
    path = tmp / ("no-" + "-".join(modules))
    for name in modules:
        (path / name).mkdir(parents=True, exist_ok=True)
        (path / name / "__init__.py").write_text("raise ImportError('%s is left out of this run')\n" % name)
    return str(path)


def raw_child(model: str, body: str, seconds: float) -> int:
    """Back-to-back ``session.run`` on the request's input, like the ONNX backend (all outputs)."""
    import numpy as np
    import onnxruntime as ort
    request = json.loads(Path(body).read_text())["inputs"][0]
    x = np.asarray(request["data"], dtype=np.float32).reshape(request["shape"])
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    for _attempt in range(200):
        session.run(None, {"input": x})
    times: List[float] = []
    cpu0, began = time.process_time(), time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline and len(times) < 500000:
        t0 = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t0)
    wall, cpu = time.perf_counter() - began, time.process_time() - cpu0
    print(json.dumps({"p50_ms": float(np.percentile(times, 50)) * 1e3, "p99_ms": float(np.percentile(times, 99)) * 1e3,
                      "req_per_s": len(times) / wall, "cpu_ms_per_req": cpu / len(times) * 1e3,
                      "requests": len(times)}))
    return 0


# -- servers --------------------------------------------------------------------------------------

class Server:
    """One server process on the server core; its pid is the server's (taskset execs the command)."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], port: int, log: Path, cpu: int) -> None:
        self.name, self.port, self.log_path = name, port, log
        self.base = "http://127.0.0.1:%d" % port
        self.log = open(log, "w")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(["taskset", "-c", str(cpu)] + argv, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def wait_ready(self, path: str, limit_s: float = 120.0) -> None:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.base + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("%s never became ready:\n%s" % (self.name, self.log_path.read_text()[-3000:]))

    def libraries(self) -> List[str]:
        """The native event loop / HTTP parser / JSON modules mapped into the process: proof of what is used."""
        maps = Path("/proc/%d/maps" % self.proc.pid).read_text()
        return sorted({m for m in ("uvloop", "httptools", "orjson") if re.search(r"/%s/\S*\.so" % m, maps)})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def post(url: str, body: bytes) -> Dict[str, Any]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def check_answer(server: Server, body: bytes, expected: Dict[str, List[Any]]) -> None:
    """The server answers the bench's request with what raw onnxruntime computes, before it is timed."""
    outputs = {o["name"]: o["data"] for o in post(server.base + "/v2/models/digits/infer", body)["outputs"]}
    pairs = zip(outputs["probabilities"], expected["probabilities"])
    if outputs["label"] != expected["label"] or any(abs(a - b) > 1e-6 for a, b in pairs):
        raise SystemExit("%s answered %r, raw onnxruntime %r" % (server.name, outputs, expected))


# -- wrk ----------------------------------------------------------------------------------------------

def wrk(server: Server, path: str, connections: int, seconds: int, script: str, cpu: int) -> Dict[str, Any]:
    argv = ["taskset", "-c", str(cpu), "wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--latency",
            "--timeout", "5s"] + (["-s", script] if script else []) + [server.base + path]
    before = cpu_seconds(server.proc.pid)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    used = cpu_seconds(server.proc.pid) - before
    found = {q: float(v) * UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s)", out)
    if not done or "50" not in found:
        raise SystemExit("could not read wrk's output:\n" + out)
    requests, wall_s = int(done.group(1)), float(done.group(2)) * UNITS[done.group(3)] / 1e3
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"p50_ms": found["50"], "p99_ms": found.get("99"), "requests": requests, "req_per_s": requests / wall_s,
            "cpu_s": used, "cpu_ms_per_req": used / requests * 1e3 if requests else None,
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": socket_errors.group(1).strip() if socket_errors else None}


# -- JSON microbenchmarks ------------------------------------------------------------------------------

def json_micro(digits: Any, number: int, extra: Optional[str]) -> Dict[str, Any]:
    """Decode and encode of the v2 request and response bodies, batch 1 and 32, stdlib json against orjson.

    decode: ``json.loads`` of the request body + ``np.asarray(data, float32)`` (what v2.decode_request
    does); encode: the response dict as v2.encode_response builds it (``tolist()``) + Starlette's
    JSONResponse rendering (``json.dumps(..., ensure_ascii=False, allow_nan=False,
    separators=(",", ":"))``). orjson also encodes the numpy arrays directly (OPT_SERIALIZE_NUMPY).
    Microseconds per call, best of 5 repeats.
    """
    import numpy as np
    if extra and extra not in sys.path:
        sys.path.append(extra)
    try:
        import orjson
    except ImportError:
        orjson = None
    results: Dict[str, Any] = {"orjson": getattr(orjson, "__version__", None)}
    for batch in (1, 32):
        x = np.ascontiguousarray(digits.X_test[:batch], dtype=np.float32)
        body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()
        rng = np.random.default_rng(0)
        probabilities = rng.random((batch, 10), dtype=np.float32)
        label = probabilities.argmax(axis=1).astype(np.int64)

        def response(tolist: bool = True) -> Dict[str, Any]:
            outs = []
            for name, value in (("label", label), ("probabilities", probabilities)):
                outs.append({"name": name, "datatype": "INT64" if name == "label" else "FP32",
                             "shape": list(value.shape), "data": value.ravel().tolist() if tolist else value.ravel()})
            return {"model_name": "digits", "model_version": "1.0.0", "outputs": outs}

        def stdlib_decode() -> Any:
            return np.asarray(json.loads(body)["inputs"][0]["data"], dtype=np.float32)

        def stdlib_encode() -> bytes:
            return json.dumps(response(), ensure_ascii=False, allow_nan=False, indent=None,
                              separators=(",", ":")).encode("utf-8")

        cases: Dict[str, Callable[[], Any]] = {"decode stdlib json": stdlib_decode,
                                               "encode stdlib json": stdlib_encode}
        if orjson is not None:
            cases["decode orjson"] = lambda: np.asarray(orjson.loads(body)["inputs"][0]["data"], dtype=np.float32)
            cases["encode orjson"] = lambda: orjson.dumps(response())
            cases["encode orjson numpy"] = lambda: orjson.dumps(response(tolist=False),
                                                                option=orjson.OPT_SERIALIZE_NUMPY)
        row = {"body_bytes": len(body), "response_bytes": len(stdlib_encode())}
        for name, call in cases.items():
            row[name + " us"] = min(timeit.repeat(call, number=number, repeat=5)) / number * 1e6
        results["batch%d" % batch] = row
    return results


# -- the run -----------------------------------------------------------------------------------------------

def median(values: List[float]) -> Optional[float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def summarize(cells: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over rounds; CPU per request over all rounds' requests together."""
    requests = sum(c["requests"] for c in cells)
    return {"p50_ms": median([c["p50_ms"] for c in cells]), "p99_ms": median([c["p99_ms"] for c in cells]),
            "req_per_s": median([c["req_per_s"] for c in cells]), "requests": requests,
            "cpu_ms_per_req": sum(c["cpu_s"] for c in cells) / requests * 1e3 if requests else None,
            "non_2xx": sum(c.get("non_2xx", 0) for c in cells),
            "socket_errors": [c["socket_errors"] for c in cells if c.get("socket_errors")],
            "rounds": [{k: c[k] for k in ("p50_ms", "req_per_s", "cpu_ms_per_req")} for c in cells]}


def rnd(value: Optional[float], digits: int = 3) -> Optional[float]:
    return None if value is None else round(value, digits)


def main() -> int:  # pylint: disable=too-many-locals,too-many-statements,too-many-branches
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s windows (about 1-2 minutes)")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=int, help="seconds per wrk window")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    parser.add_argument("--extra-path", default=DEFAULT_EXTRA if os.path.isdir(DEFAULT_EXTRA) else None,
                        help="directory with uvloop, httptools, orjson (default %s when it exists)" % DEFAULT_EXTRA)
    parser.add_argument("--orjson-path", default=DEFAULT_ORJSON if os.path.isdir(DEFAULT_ORJSON) else None,
                        help="directory with orjson (default %s when it exists)" % DEFAULT_ORJSON)
    parser.add_argument("--kserve-python", default=DEFAULT_KSERVE_PYTHON, help="python of a venv with kserve")
    parser.add_argument("--kserve-stock-logging", action="store_true",
                        help="keep KServe's three log lines per request (default: off, the peer at its fastest)")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory and the server logs")
    parser.add_argument("--serve-child", metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--raw-child", nargs=3, metavar=("MODEL", "BODY", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_child:
        return serve_child(args.serve_child)
    if args.raw_child:
        return raw_child(args.raw_child[0], args.raw_child[1], float(args.raw_child[2]))

    profile = dict(PROFILES["quick" if args.quick else "full"])
    profile.update({k: v for k, v in (("rounds", args.rounds), ("seconds", args.seconds)) if v})
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    sys.path[:0] = [str(REPO / "device_runtime" / "src"), str(REPO / "tests")]
    import numpy as np
    import onnxruntime as ort
    from edgeai_runtime.device.store import ModelStore
    from support import modelgen
    from support.digits_store import install_digits

    have_kserve = os.path.exists(args.kserve_python)
    digits = modelgen.train_digits_mlp(seed=0)
    onnx = modelgen.digits_onnx(digits)
    x = np.ascontiguousarray(digits.X_test[:1], dtype=np.float32)
    label, probabilities = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    expected = {"label": label.tolist(), "probabilities": probabilities.ravel().tolist()}
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="edgeai-kserve-bench-"))
    servers: Dict[str, Server] = {}
    me = [sys.executable, str(Path(__file__).resolve())]
    try:
        (tmp / "digits.onnx").write_bytes(onnx)
        (tmp / "body.json").write_bytes(body)
        script = str(tmp / "post.lua")
        Path(script).write_text(LUA % (tmp / "body.json"))
        configs = [("ours-default", [blocker(tmp, ["uvloop", "httptools", "orjson"])]),
                   ("ours-uvloop", [blocker(tmp, ["orjson"]), args.extra_path]),
                   ("ours-orjson", [args.extra_path, args.orjson_path])]
        for name, extra in configs:
            root = tmp / name
            store = ModelStore(str(root))
            install_digits(store, "1.0.0", onnx, digits)
            store.activate("digits", "1.0.0")
            port = free_port()
            (root / "etc").mkdir(parents=True, exist_ok=True)
            (root / "etc" / "runtime.json").write_text(json.dumps({"host": "127.0.0.1", "port": port,
                                                                   "max_batch_size": 32, "max_delay_ms": 0}))
            servers[name] = Server(name, me + ["--serve-child", str(root)], with_path(extra), port,
                                   tmp / (name + ".log"), args.server_cpu)
        if have_kserve:
            port = free_port()
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
            servers["kserve"] = Server("kserve", [args.kserve_python, str(HERE / "kserve_peer.py"),
                                                  str(tmp / "digits.onnx"), str(port)]
                                       + (["--stock-logging"] if args.kserve_stock_logging else []),
                                       env, port, tmp / "kserve.log", args.server_cpu)
        else:
            print("no KServe peer: %s does not exist" % args.kserve_python)
        for server in servers.values():
            server.wait_ready("/v2/health/ready" if server.name != "kserve" else "/v2/health/live")
            check_answer(server, body, expected)
            wrk(server, "/v2/models/digits/infer", 8, 1, script, args.client_cpu)  # warm up
        loaded = {name: s.libraries() for name, s in servers.items()}
        if (loaded["ours-default"] or not {"httptools", "uvloop"} <= set(loaded["ours-uvloop"])
                or "orjson" in loaded["ours-uvloop"] or "orjson" not in loaded["ours-orjson"]):
            raise SystemExit("the servers did not run what was asked for: %s (uvloop/httptools on --extra-path? "
                             "orjson on --orjson-path?)" % loaded)
        print("servers on core %d, wrk on core %d; native loop/parser libraries loaded: %s"
              % (args.server_cpu, args.client_cpu, loaded))

        cells: Dict[str, List[Dict[str, Any]]] = {}
        names = list(servers)
        raw_argv = ["taskset", "-c", str(args.server_cpu)] + me + ["--raw-child", str(tmp / "digits.onnx"),
                                                                   str(tmp / "body.json"), str(profile["raw_seconds"])]
        for r in range(profile["rounds"]):
            order = names[r % len(names):] + names[:r % len(names)]
            windows: List[Any] = [("raw", None, 0)]
            for conc in ((1, 8) if r % 2 == 0 else (8, 1)):
                windows += [(name, "/v2/models/digits/infer", conc) for name in order]
            windows += [(name, "/v2/health/live", 1) for name in order]
            for name, path, conc in windows:
                if name == "raw":
                    done = subprocess.run(raw_argv, capture_output=True, text=True, timeout=120, check=True,
                                          env=with_path([]))
                    cells.setdefault("raw", []).append(json.loads(done.stdout.strip().splitlines()[-1]))
                    continue
                floor = path.endswith("/live")
                key = "%s %s c%d" % (name, "floor" if floor else "infer", conc)
                cells.setdefault(key, []).append(wrk(servers[name], path, conc,
                                                     profile["floor_seconds"] if floor else profile["seconds"],
                                                     "" if floor else script, args.client_cpu))
            print("round %d/%d done" % (r + 1, profile["rounds"]), flush=True)
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    raw = {"p50_ms": median([c["p50_ms"] for c in cells["raw"]]), "p99_ms": median([c["p99_ms"] for c in cells["raw"]]),
           "req_per_s": median([c["req_per_s"] for c in cells["raw"]]),
           "cpu_ms_per_req": median([c["cpu_ms_per_req"] for c in cells["raw"]]),
           "rounds": [{k: c[k] for k in ("p50_ms", "req_per_s")} for c in cells["raw"]]}
    table = {key: summarize(value) for key, value in cells.items() if key != "raw"}

    def per_round_ratio(a: str, b: str, field: str) -> Optional[float]:
        """Median over rounds of a/b, each round's a against the same round's b."""
        return median([x[field] / y[field] for x, y in zip(cells[a], cells[b]) if y[field]])

    print("\n%-26s %9s %9s %10s %12s %8s" % ("", "p50 ms", "p99 ms", "req/s", "CPU ms/req", "non-2xx"))
    print("%-26s %9.4f %9.4f %10.0f %12.4f" % ("raw session.run", raw["p50_ms"], raw["p99_ms"], raw["req_per_s"],
                                               raw["cpu_ms_per_req"]))
    for key in sorted(table):
        t = table[key]
        print("%-26s %9.4f %9.4f %10.0f %12.4f %8d" % (key, t["p50_ms"], t["p99_ms"], t["req_per_s"],
                                                       t["cpu_ms_per_req"], t["non_2xx"]))
    verdicts: Dict[str, Any] = {}
    print()
    for name in ("ours-default", "ours-uvloop", "ours-orjson"):
        over = table[name + " infer c1"]["p50_ms"] - raw["p50_ms"]
        cpu1, cpu8 = table[name + " infer c1"]["cpu_ms_per_req"], table[name + " infer c8"]["cpu_ms_per_req"]
        v: Dict[str, Any] = {"p50_c1_minus_raw_ms": rnd(over, 4), "p50_target_met": over <= TARGET_P50_OVER_RAW_MS,
                             "p50_c1_above_floor_ms": rnd(table[name + " infer c1"]["p50_ms"]
                                                          - table[name + " floor c1"]["p50_ms"], 4),
                             "cpu_ms_per_req_c1": rnd(cpu1, 4), "cpu_ms_per_req_c8": rnd(cpu8, 4),
                             "cpu_target_met": max(cpu1, cpu8) <= TARGET_CPU_MS}
        if "kserve" in servers:
            v["throughput_x_kserve_c8"] = rnd(per_round_ratio(name + " infer c8", "kserve infer c8", "req_per_s"))
            v["throughput_x_kserve_c1"] = rnd(per_round_ratio(name + " infer c1", "kserve infer c1", "req_per_s"))
            v["cpu_per_req_x_kserve_c8"] = rnd(per_round_ratio(name + " infer c8", "kserve infer c8",
                                                               "cpu_ms_per_req"))
            v["capacity_x_kserve_c8"] = rnd(table["kserve infer c8"]["cpu_ms_per_req"] / cpu8)
            v["throughput_target_met"] = v["throughput_x_kserve_c8"] >= TARGET_THROUGHPUT_X
        verdicts[name] = v
        print("%s: p50 c1 - raw %+.4f ms (<= %.2f: %s); CPU/req c1 %.4f ms, c8 %.4f ms (<= %.1f: %s)%s"
              % (name, over, TARGET_P50_OVER_RAW_MS, "met" if v["p50_target_met"] else "MISSED", cpu1, cpu8,
                 TARGET_CPU_MS, "met" if v["cpu_target_met"] else "MISSED",
                 "; c8 throughput x%.3f KServe (>= %.0fx: %s), CPU/req x%.3f KServe (CPU-bound capacity x%.2f)"
                 % (v["throughput_x_kserve_c8"], TARGET_THROUGHPUT_X,
                    "met" if v["throughput_target_met"] else "MISSED", v["cpu_per_req_x_kserve_c8"],
                    v["capacity_x_kserve_c8"])
                 if "kserve" in servers else ""))
    uv = {"throughput_c1": per_round_ratio("ours-uvloop infer c1", "ours-default infer c1", "req_per_s"),
          "throughput_c8": per_round_ratio("ours-uvloop infer c8", "ours-default infer c8", "req_per_s"),
          "cpu_per_req_c1": per_round_ratio("ours-uvloop infer c1", "ours-default infer c1", "cpu_ms_per_req"),
          "cpu_per_req_c8": per_round_ratio("ours-uvloop infer c8", "ours-default infer c8", "cpu_ms_per_req"),
          "p50_c1": per_round_ratio("ours-uvloop infer c1", "ours-default infer c1", "p50_ms"),
          "floor_throughput_c1": per_round_ratio("ours-uvloop floor c1", "ours-default floor c1", "req_per_s")}
    uv = {k: rnd(v) for k, v in uv.items()}
    print("uvloop+httptools / default: throughput c1 x%s, c8 x%s; CPU/req c1 x%s, c8 x%s; p50 c1 x%s; floor c1 x%s"
          % (uv["throughput_c1"], uv["throughput_c8"], uv["cpu_per_req_c1"], uv["cpu_per_req_c8"], uv["p50_c1"],
             uv["floor_throughput_c1"]))

    orjson_vs_uvloop = {k: rnd(per_round_ratio("ours-orjson infer " + c, "ours-uvloop infer " + c, f))
                        for k, c, f in (("throughput_c1", "c1", "req_per_s"), ("throughput_c8", "c8", "req_per_s"),
                                        ("cpu_per_req_c1", "c1", "cpu_ms_per_req"),
                                        ("cpu_per_req_c8", "c8", "cpu_ms_per_req"), ("p50_c1", "c1", "p50_ms"))}
    print("orjson (ours-orjson / ours-uvloop): throughput c1 x%s, c8 x%s; CPU/req c1 x%s, c8 x%s; p50 c1 x%s"
          % tuple(orjson_vs_uvloop[k] for k in ("throughput_c1", "throughput_c8", "cpu_per_req_c1",
                                                "cpu_per_req_c8", "p50_c1")))
    micro = json_micro(digits, profile["micro_number"], args.orjson_path)
    print("\nJSON path, us per call (best of 5), orjson %s:" % micro["orjson"])
    for batch in ("batch1", "batch32"):
        row = micro[batch]
        print("  %-8s body %5d B, response %5d B: %s" % (batch, row["body_bytes"], row["response_bytes"], ", ".join(
            "%s %.1f" % (k[:-3], v) for k, v in row.items() if k.endswith(" us"))))
    c1_us = table["ours-default infer c1"]["p50_ms"] * 1e3
    json_us = micro["batch1"]["decode stdlib json us"] + micro["batch1"]["encode stdlib json us"]
    print("  batch 1: stdlib decode+encode %.1f us = %.1f%% of ours-default's c1 p50 (%.0f us)"
          % (json_us, json_us / c1_us * 100, c1_us))
    summary = {"profile": profile, "environment": {
        "cpus": os.cpu_count(), "python": platform.python_version(), "server_cpu": args.server_cpu,
        "client_cpu": args.client_cpu, "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "kserve_stock_logging": args.kserve_stock_logging, "libraries": loaded},
        "raw": {k: rnd(v, 4) if isinstance(v, float) else v for k, v in raw.items()}, "cells": table,
        "targets": verdicts, "uvloop_httptools_vs_default": uv,
        "orjson_vs_uvloop": orjson_vs_uvloop, "json": micro,
        "json_batch1_share_of_c1_p50": rnd(json_us / c1_us, 4)}
    print("\n=== summary (JSON) ===")
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
