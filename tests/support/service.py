"""The inference service as a real process on 127.0.0.1, for tests: config, start, the CLI."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(root, **settings):
    (root / "etc").mkdir(exist_ok=True)
    settings.setdefault("port", free_port())
    (root / "etc" / "runtime.json").write_text(json.dumps(settings))


def start_service(root, env=None, log_name="service.log"):
    """Start `edgeai-runtime serve` on root's configured port; wait until it answers ready."""
    config = json.loads((root / "etc" / "runtime.json").read_text())
    log = open(root / log_name, "a")
    proc = subprocess.Popen([sys.executable, "-m", "edgeai_runtime.cli", "--root", str(root), "serve"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    base = "http://127.0.0.1:%d" % config["port"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + "/v2/health/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    pytest.fail("service never became ready:\n" + (root / log_name).read_text())


def runtime(root, *args, env=None, timeout=120):
    """Run the device CLI; a CompletedProcess with text output."""
    return subprocess.run([sys.executable, "-m", "edgeai_runtime.cli", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, check=False)


def voluntary_switches(pid: int) -> dict:
    """{thread id: voluntary context switches so far} of a process: how often each thread has slept and woken."""
    counts = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/status" % (pid, tid), encoding="ascii") as f:
                counts[int(tid)] = next(int(line.split(":")[1]) for line in f
                                        if line.startswith("voluntary_ctxt_switches:"))
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return counts
