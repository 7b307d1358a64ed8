"""Idle cost of the inference service: CPU time and wakeups of `edgeai-runtime serve` with no requests.

    .venv/bin/python bench/bench_idle.py [--quick] [--seconds 60] [--strace-seconds 10] [--out summary.json]

Three processes are started and measured side by side, over the same windows, so a noisy
neighbour's load falls on all of them alike:

  sleep     ``python -c 'import time; time.sleep(N)'``: the floor of an idle process;
  uvicorn   a bare Starlette app under ``uvicorn.run`` (one JSON route, no edgeai code): what the
            HTTP stack costs by itself;
  service   ``edgeai-runtime serve`` over a throw-away store with the digits ONNX model installed,
            gate data included, and active.

Each server answers a few requests first (inferences for the service), as a deploy's probes do.
Then, with no requests at all:

  1. settle window (``--settle``): right after the last request, what a backend's spin-waiting
     thread pool or any other after-request work costs;
  2. idle window (``--seconds``, default 60): process CPU time as % of one core, twice: psutil's
     user + system of all threads, exited ones included (the kernel's tick-sampled accounting,
     10 ms steps), and the threads' own nanosecond run times (/proc/PID/task/*/schedstat; the
     finer number); and voluntary context switches (wakeups) summed over the threads. A thread
     that starts and ends inside the window is not seen in /proc/PID/task, so the number of
     threads started and ended is printed too;
  3. strace window (``--strace-seconds``, when strace is installed): ``strace -f -c`` on each
     process, which does see short-lived threads: system calls per second, the most frequent
     ones, and how many threads were created. strace slows what it traces, so this window is
     kept apart from the CPU window.

Ratios are against the bare uvicorn app measured in the same run; against ``sleep`` (about 0)
the difference is printed instead. Everything is on 127.0.0.1; the processes are stopped at the
end, also on errors. The last thing printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import httpx  # noqa: E402  pylint: disable=wrong-import-position
import psutil  # noqa: E402  pylint: disable=wrong-import-position

from bench_service import Service, body_for, free_port  # noqa: E402  pylint: disable=wrong-import-position
from edgeai_runtime.device.store import ModelStore  # noqa: E402  pylint: disable=wrong-import-position
from support import modelgen  # noqa: E402  pylint: disable=wrong-import-position
from support.digits_store import install_digits  # noqa: E402  pylint: disable=wrong-import-position

PROFILES = {
    "full": dict(seconds=60.0, settle_s=5.0, strace_s=10.0, requests=50),
    "quick": dict(seconds=5.0, settle_s=1.0, strace_s=3.0, requests=20),
}

BARE_APP = """
import sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

async def live(request):
    return JSONResponse({"live": True})

uvicorn.run(Starlette(routes=[Route("/live", live)]), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning", access_log=False)
"""


# -- what is measured --------------------------------------------------------------------------

def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def thread_counters(pid: int) -> Dict[int, Tuple[int, int, int]]:
    """Per thread: (voluntary, involuntary context switches, nanoseconds on a CPU) so far."""
    counts: Dict[int, Tuple[int, int, int]] = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid), encoding="ascii") as f:
                fields = dict(line.split(":", 1) for line in f if "ctxt_switches" in line)
            with open("/proc/%d/task/%s/schedstat" % (pid, tid), encoding="ascii") as f:
                run_ns = int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended while we listed them
        counts[int(tid)] = (int(fields["voluntary_ctxt_switches"]), int(fields["nonvoluntary_ctxt_switches"]), run_ns)
    return counts


class Sample:
    def __init__(self, proc: psutil.Process) -> None:
        self.at = time.perf_counter()
        self.cpu = cpu_seconds(proc)
        self.threads = thread_counters(proc.pid)


def window(before: Sample, after: Sample) -> dict:
    seconds = after.at - before.at
    voluntary = involuntary = run_ns = 0
    for tid, (vol, invol, ns) in after.threads.items():
        vol0, invol0, ns0 = before.threads.get(tid, (0, 0, 0))
        voluntary += vol - vol0
        involuntary += invol - invol0
        run_ns += ns - ns0
    started = sorted(set(after.threads) - set(before.threads))
    ended = sorted(set(before.threads) - set(after.threads))
    return {"seconds": round(seconds, 2), "cpu_s": round(after.cpu - before.cpu, 4),
            "cpu_pct": round(100.0 * (after.cpu - before.cpu) / seconds, 4),
            "sched_cpu_pct": round(100.0 * run_ns / 1e9 / seconds, 4),
            "wakeups_per_s": round(voluntary / seconds, 2), "involuntary_per_s": round(involuntary / seconds, 2),
            "threads": len(after.threads), "threads_started": len(started), "threads_ended": len(ended)}


def measure_together(procs: Dict[str, psutil.Process], seconds: float) -> Dict[str, dict]:
    """One window of ``seconds`` over all processes at once; this process sleeps meanwhile."""
    before = {name: Sample(proc) for name, proc in procs.items()}
    time.sleep(seconds)
    after = {name: Sample(proc) for name, proc in procs.items()}
    return {name: window(before[name], after[name]) for name in procs}


def parse_strace_summary(text: str) -> Dict[str, int]:
    """``strace -c`` table -> {syscall: calls}. Rows: % time, seconds, usecs/call, calls, [errors], syscall."""
    calls: Dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] != "total" and parts[0].replace(".", "", 1).isdigit() and parts[3].isdigit():
            calls[parts[-1]] = int(parts[3])
    return calls


def strace_together(procs: Dict[str, psutil.Process], seconds: float, workdir: Path) -> Dict[str, dict]:
    tracers = {}
    for name, proc in procs.items():
        out = workdir / ("strace-%s.txt" % name)
        tracers[name] = (out, subprocess.Popen(["strace", "-f", "-c", "-q", "-o", str(out), "-p", str(proc.pid)],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    time.sleep(seconds)
    results = {}
    for name, (out, tracer) in tracers.items():
        tracer.send_signal(signal.SIGINT)
        try:
            err = tracer.communicate(timeout=30)[1]
        except subprocess.TimeoutExpired:
            tracer.kill()
            err = tracer.communicate()[1]
        table = out.read_text() if out.exists() else ""
        calls = parse_strace_summary(table)
        message = err.decode(errors="replace").strip()
        if "total" not in table and message:  # could not attach (ptrace not allowed); no calls prints nothing
            results[name] = {"error": message[-300:]}
            continue
        total = sum(calls.values())
        top = sorted(calls.items(), key=lambda kv: -kv[1])[:5]
        results[name] = {"seconds": round(seconds, 2), "syscalls_per_s": round(total / seconds, 2),
                         "threads_created": calls.get("clone3", 0) + calls.get("clone", 0),
                         "top": dict(top)}
    return results


# -- the processes -----------------------------------------------------------------------------

def wait_http(url: str, proc: subprocess.Popen, limit_s: float = 90.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("%s never answered 200" % url)


def ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 3) if b else None


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="short windows (a smoke run, under a minute)")
    parser.add_argument("--seconds", type=float, help="idle window in seconds (full 60, quick 5)")
    parser.add_argument("--settle", type=float, help="window right after the last request (full 5, quick 1)")
    parser.add_argument("--strace-seconds", type=float, help="strace window (full 10, quick 3; 0: none)")
    parser.add_argument("--out", help="also write the JSON summary to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary store root and logs")
    args = parser.parse_args(argv)
    profile = dict(PROFILES["quick" if args.quick else "full"])
    for key, value in (("seconds", args.seconds), ("settle_s", args.settle), ("strace_s", args.strace_seconds)):
        if value is not None:
            profile[key] = value
    strace = shutil.which("strace") if profile["strace_s"] > 0 else None
    started = time.perf_counter()
    load_before = os.getloadavg()

    digits = modelgen.train_digits_mlp(seed=0)
    workdir = Path(tempfile.mkdtemp(prefix="edgeai-bench-idle-"))
    service = Service(workdir / "root")
    procs: Dict[str, subprocess.Popen] = {}
    try:
        store = ModelStore(str(service.root))
        install_digits(store, "1.0.0", modelgen.digits_onnx(digits), digits)
        store.activate("digits", "1.0.0")
        total_s = profile["settle_s"] + profile["seconds"] + profile["strace_s"] + 60
        procs["sleep"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(%d)" % total_s])
        uvicorn_port = free_port()
        procs["uvicorn"] = subprocess.Popen([sys.executable, "-c", BARE_APP, str(uvicorn_port)])
        service.start()
        procs["service"] = service.proc
        uvicorn_base = "http://127.0.0.1:%d" % uvicorn_port
        wait_http(uvicorn_base + "/live", procs["uvicorn"])
        service.wait_ready()
        print("edgeai-runtime idle benchmark (%s); %d CPUs, load average %.2f; windows: settle %gs, idle %gs, "
              "strace %s" % ("quick" if args.quick else "full", os.cpu_count(), load_before[0], profile["settle_s"],
                             profile["seconds"], "%gs" % profile["strace_s"] if strace else "none"), flush=True)

        body = body_for(digits.X_test[:1].astype("float32") / 16.0)
        with httpx.Client(timeout=10) as client:
            for _request in range(profile["requests"]):
                client.get(uvicorn_base + "/live").raise_for_status()
                client.post(service.base + "/v2/models/digits/infer", content=body,
                            headers={"content-type": "application/json"}).raise_for_status()
        # the client's connections are closed: from here on nothing talks to the servers
        watched = {name: psutil.Process(p.pid) for name, p in procs.items()}
        settle = measure_together(watched, profile["settle_s"])
        idle = measure_together(watched, profile["seconds"])
        traced = strace_together(watched, profile["strace_s"], workdir) if strace else {}
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise SystemExit("%s exited during the measurement (status %s)" % (name, proc.returncode))
    finally:
        service.stop()
        for name, proc in procs.items():
            if name != "service" and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        if args.keep:
            print("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    labels = {"sleep": "sleep (floor)", "uvicorn": "bare uvicorn+Starlette", "service": "edgeai-runtime serve"}
    windows = ("no requests", "idle window, %gs" % profile["seconds"], "settle, %gs" % profile["settle_s"],
               "strace, %gs" % profile["strace_s"])
    print("\n%-23s | %-40s | %-17s | %s" % windows)
    print("%-23s | %8s %8s %9s %6s %6s | %8s %8s | %10s %7s" % (
        "", "CPU %", "sched %", "wakeups/s", "thr", "+/-", "sched %", "wakeup/s", "syscalls/s", "clones"))
    for name, row in idle.items():
        trace = traced.get(name, {})
        print("%-23s | %8.4f %8.4f %9.2f %6d %2d/%-3d | %8.4f %8.2f | %10s %7s" % (
            labels[name], row["cpu_pct"], row["sched_cpu_pct"], row["wakeups_per_s"], row["threads"],
            row["threads_started"], row["threads_ended"], settle[name]["sched_cpu_pct"],
            settle[name]["wakeups_per_s"], trace.get("syscalls_per_s", "-"), trace.get("threads_created", "-")))
    for name, trace in traced.items():
        if "top" in trace and trace["top"]:
            print("  strace %-8s top: %s" % (name, ", ".join("%s %d" % kv for kv in trace["top"].items())))
        elif "error" in trace:
            print("  strace %-8s failed: %s" % (name, trace["error"]))
    svc, bare, floor = idle["service"], idle["uvicorn"], idle["sleep"]
    ratios = {"cpu_vs_uvicorn": ratio(svc["cpu_pct"], bare["cpu_pct"]),
              "sched_cpu_vs_uvicorn": ratio(svc["sched_cpu_pct"], bare["sched_cpu_pct"]),
              "wakeups_vs_uvicorn": ratio(svc["wakeups_per_s"], bare["wakeups_per_s"]),
              "cpu_pct_above_sleep": round(svc["cpu_pct"] - floor["cpu_pct"], 4),
              "sched_cpu_pct_above_sleep": round(svc["sched_cpu_pct"] - floor["sched_cpu_pct"], 4),
              "wakeups_per_s_above_sleep": round(svc["wakeups_per_s"] - floor["wakeups_per_s"], 2)}
    if "syscalls_per_s" in traced.get("service", {}) and "syscalls_per_s" in traced.get("uvicorn", {}):
        ratios["syscalls_vs_uvicorn"] = ratio(traced["service"]["syscalls_per_s"], traced["uvicorn"]["syscalls_per_s"])
    print("\nservice / bare uvicorn: CPU x%s, sched CPU x%s, wakeups x%s%s" % (
        ratios["cpu_vs_uvicorn"], ratios["sched_cpu_vs_uvicorn"], ratios["wakeups_vs_uvicorn"],
        ", syscalls x%s" % ratios["syscalls_vs_uvicorn"] if "syscalls_vs_uvicorn" in ratios else ""))
    print("service - sleep: CPU %+.4f %%, sched CPU %+.4f %%, wakeups %+.2f/s" % (
        ratios["cpu_pct_above_sleep"], ratios["sched_cpu_pct_above_sleep"], ratios["wakeups_per_s_above_sleep"]))

    summary = {
        "profile": "quick" if args.quick else "full",
        "windows_s": {"settle": profile["settle_s"], "idle": profile["seconds"],
                      "strace": profile["strace_s"] if strace else 0},
        "environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "loadavg_before": [round(x, 2) for x in load_before],
                        "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "idle": idle, "settle": settle, "strace": traced, "ratios": ratios,
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
