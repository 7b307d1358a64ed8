"""The CLI finds the running service by the address the service announces (<root>/cache/service.json:
the port it really bound, its pid and that process's create time), never by runtime.json's port:
`serve --port` is seen, a clean shutdown withdraws the announcement, a crashed service's is ignored."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest

from edgeai_runtime.device.client import address_path, announced
from edgeai_runtime.device.store import ModelStore
from support.digits_store import digits_manifest, install_digits
from support.service import free_port, runtime, write_config


class Tripwire:
    """A socket listening on runtime.json's port that counts (and drops) every connection: the CLI
    must never knock there while the service runs on another port, or after it has gone."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.hits = 0
        self.running = True
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _peer = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.hits += 1
            conn.close()

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.sock.close()


class Device:
    def __init__(self, root, serve_port: int) -> None:
        self.root, self.serve_port, self.proc = root, serve_port, None
        self.base = "http://127.0.0.1:%d" % serve_port

    def start(self, port=None) -> None:
        """`serve --port` (this device's serve port, or ``port``: 0 lets the OS choose one, which only
        the announcement tells); wait until it answers ready."""
        port = self.serve_port if port is None else port
        log = open(self.root / "service.log", "a")
        self.proc = subprocess.Popen([sys.executable, "-m", "edgeai_runtime.cli", "--root", str(self.root), "serve",
                                      "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.proc.poll() is None:
            address, _why = announced(str(self.root))
            if address is not None and address.pid == self.proc.pid:
                self.base = "http://127.0.0.1:%d" % address.port
                try:
                    if httpx.get(self.base + "/v2/health/ready", timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail("service never became ready:\n" + (self.root / "service.log").read_text())

    def serving(self) -> dict:
        status = httpx.get(self.base + "/v2/admin/status", timeout=10).json()
        active = {e["name"]: (e.get("active") or {}).get("version") for e in status["serving"]}
        return {"active": active, "process": status["process"]}


@pytest.fixture(scope="module")
def device(tmp_path_factory, digits, digits_onnx):
    """digits 1.0.0 (active) and 2.0.0 installed; runtime.json names one port (watched by a tripwire),
    the service runs with `serve --port` on another."""
    root = tmp_path_factory.mktemp("device")
    store = ModelStore(str(root))
    install_digits(store, "1.0.0", digits_onnx, digits)
    install_digits(store, "2.0.0", digits_onnx, digits)
    store.activate("digits", "1.0.0")
    config_port, serve_port = free_port(), free_port()
    while serve_port == config_port:
        serve_port = free_port()
    write_config(root, port=config_port)
    dev = Device(root, serve_port)
    dev.tripwire = Tripwire(config_port)
    dev.start()
    yield dev
    if dev.proc.poll() is None:
        dev.proc.kill()
        dev.proc.wait(timeout=30)
    dev.tripwire.close()


def cli(device, *args):
    proc = runtime(device.root, *args)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, result
    return result


def test_the_service_announces_the_port_it_bound(device):
    data = json.loads(open(address_path(str(device.root)), encoding="utf-8").read())
    assert {k: v for k, v in data.items() if k != "create_time"} == {
        "host": "127.0.0.1", "port": device.serve_port, "pid": device.proc.pid}
    assert abs(data["create_time"] - psutil.Process(device.proc.pid).create_time()) < 0.5
    assert data["port"] != json.loads((device.root / "etc" / "runtime.json").read_text())["port"]


def test_activate_and_install_reach_the_service_on_its_serve_port(device, digits, digits_onnx, tmp_path):
    before = device.serving()
    switched = cli(device, "model", "activate", "digits", "2.0.0")
    assert switched["via"] == "service" and switched["changed"] is True
    assert device.serving()["active"]["digits"] == "2.0.0"

    manifest, files = digits_manifest("3.0.0", digits_onnx, digits)
    (tmp_path / "manifest.json").write_text(manifest.to_json())
    (tmp_path / "model.onnx").write_bytes(digits_onnx)
    args = []
    for fname, data in files.items():
        (tmp_path / fname).write_bytes(data)
        args.append("--file=%s=%s" % (fname, tmp_path / fname))
    installed = cli(device, "model", "install", "--manifest", str(tmp_path / "manifest.json"),
                    "--model", str(tmp_path / "model.onnx"), *args, "--activate")
    assert installed["activation"]["via"] == "service" and installed["activation"]["version"] == "3.0.0"
    after = device.serving()
    # The same process switched twice, without a restart; runtime.json's port was never tried.
    assert after["active"]["digits"] == "3.0.0" and after["process"] == before["process"]
    assert device.tripwire.hits == 0


def test_a_clean_shutdown_withdraws_the_announcement(device):
    device.proc.send_signal(signal.SIGTERM)
    assert device.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it is done
    assert "Application shutdown complete" in (device.root / "service.log").read_text()
    assert not os.path.exists(address_path(str(device.root)))
    switched = cli(device, "model", "activate", "digits", "2.0.0")
    assert switched["via"] == "store" and switched["changed"] is True
    assert device.tripwire.hits == 0


def test_a_port_the_os_chose_is_found_and_a_crashed_services_announcement_is_ignored(device):
    device.start(port=0)
    port = json.loads(open(address_path(str(device.root)), encoding="utf-8").read())["port"]
    assert port not in (0, device.serve_port) and device.serving()["active"]["digits"] == "2.0.0"
    assert cli(device, "model", "activate", "digits", "3.0.0")["via"] == "service"
    assert device.serving()["active"]["digits"] == "3.0.0"
    pid = device.proc.pid
    device.proc.kill()
    device.proc.wait(timeout=30)
    stale = json.loads(open(address_path(str(device.root)), encoding="utf-8").read())
    assert stale["pid"] == pid and not psutil.pid_exists(pid)
    address, why = announced(str(device.root))
    assert address is None and "names pid %d, which has gone" % pid in why
    switched = cli(device, "model", "activate", "digits", "1.0.0")
    assert switched["via"] == "store" and switched["changed"] is True
    assert ModelStore(str(device.root)).active("digits") == "1.0.0"
    assert device.tripwire.hits == 0


def test_a_reused_pid_is_not_taken_for_the_service(tmp_path):
    """A live pid whose process started at another time (the pid was reused since) is not the service."""
    (tmp_path / "cache").mkdir()
    me = psutil.Process()
    (tmp_path / "cache" / "service.json").write_text(json.dumps(
        {"host": "127.0.0.1", "port": 1, "pid": me.pid, "create_time": me.create_time() - 60}))  # over _SAME_PROCESS_S
    address, why = announced(str(tmp_path))
    assert address is None and "is another process" in why
    (tmp_path / "cache" / "service.json").write_text(json.dumps(
        {"host": "::", "port": 1, "pid": me.pid, "create_time": me.create_time()}))
    address, why = announced(str(tmp_path))
    assert address is not None and address.url("/x") == "http://[::1]:1/x" and why == ""
    (tmp_path / "cache" / "service.json").write_text("{half")
    assert announced(str(tmp_path))[0] is None
