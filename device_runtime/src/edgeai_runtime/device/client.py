"""The running service's HTTP API as seen from the device itself (loopback): admin calls, readiness,
a probe inference and the metrics. Used by the CLI and the OTA installer.

Where the service is: one source of truth, the address the running service announces. At startup,
once it listens, the service writes ``<root>/cache/service.json`` (``announce``): the host and port
it really bound (``serve --port`` included), its pid and that process's create time; a clean
shutdown removes it (``withdraw``). The client reads it on every call (``announced``) and trusts it
only while that pid is alive with the same create time, so a file a crashed service left (or a pid
reused since) is ignored. With no live service announced the client says ServiceDown at once, as
when nothing answers, and never tries runtime.json's port or a default one.
"""
from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import psutil

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.fsutil import write_atomic


class ServiceError(EdgeAIError, RuntimeError):
    """The service answered with an error; ``str()`` is its message, ``status`` the HTTP status."""

    default_reason = "service"

    def __init__(self, status: int, message: str, data: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.data = data or {}


class ServiceDown(EdgeAIError, ConnectionError):
    """Nothing answers on the service's port."""

    default_reason = "service_down"


#: Where the running service announces itself, under the device root.
ADDRESS_FILE = os.path.join("cache", "service.json")
#: How far the create time the service read of itself may be from the one a client reads (seconds).
#: Natively they agree to the clock tick; under qemu-user (the arm64 sim devices) the emulated
#: process's own /proc/self/stat says 0.1-0.2 s later than the kernel's /proc/<pid>/stat. A reused
#: pid started after the service ended, which takes the kernel a whole pid range of forks: seconds
#: at the very least, so 5 s still tells a reused pid from the service.
_SAME_PROCESS_S = 5.0


def address_path(root: str) -> str:
    return os.path.join(root, ADDRESS_FILE)


@dataclass(frozen=True)
class ServiceAddress:
    """Where the running service listens, as it announced it."""
    host: str
    port: int
    pid: int
    create_time: float

    @property
    def connect_host(self) -> str:
        """The host to connect to: loopback for the wildcard addresses (IPv6's for ``::``, which
        asyncio binds IPv6-only), else the bound address itself."""
        if self.host in ("0.0.0.0", "", "localhost"):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    def url(self, path: str, scheme: str = "http") -> str:
        host = self.connect_host
        return "%s://%s:%d%s" % (scheme, host if ":" not in host else "[%s]" % host, self.port, path)

    def to_dict(self) -> Dict[str, Any]:
        return {"host": self.host, "port": self.port, "pid": self.pid, "create_time": self.create_time}


def _create_time(pid: int) -> Optional[float]:
    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, ValueError):  # gone, a zombie we cannot read, or a pid psutil refuses
        return None


def announce(root: str, host: str, port: int) -> ServiceAddress:
    """Write this process's address to ``<root>/cache/service.json`` (atomically); the service calls
    it once it listens."""
    pid = os.getpid()
    address = ServiceAddress(host, int(port), pid, _create_time(pid) or 0.0)
    path = address_path(root)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomic(path, (json.dumps(address.to_dict(), sort_keys=True) + "\n").encode(), 0o644,
                 label="service.json")
    return address


def withdraw(root: str) -> bool:
    """Remove service.json if this process wrote it (a newer service's stays); True when removed."""
    path = address_path(root)
    found = _read_address(path)
    if found is None or found.pid != os.getpid():
        return False
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _read_address(path: str) -> Optional[ServiceAddress]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return ServiceAddress(str(data["host"]), int(data["port"]), int(data["pid"]), float(data["create_time"]))
    except (OSError, ValueError, TypeError, KeyError):  # none, or half-readable: no service to trust
        return None


def announced(root: str) -> Tuple[Optional[ServiceAddress], str]:
    """(the live service's address, "") or (None, why there is none)."""
    path = address_path(root)
    address = _read_address(path)
    if address is None:
        return None, "no inference service is running (%s is %s)" % (
            path, "unreadable" if os.path.exists(path) else "absent")
    started = _create_time(address.pid)
    if started is None or abs(started - address.create_time) > _SAME_PROCESS_S:
        return None, "no inference service is running (%s names pid %d, which %s: left by a service that " \
            "did not shut down cleanly)" % (path, address.pid, "has gone" if started is None else "is another process")
    return address, ""


class ServiceClient:
    def __init__(self, config: RuntimeConfig, timeout: float = 300.0) -> None:
        self.config = config
        self.timeout = timeout

    def address(self) -> ServiceAddress:
        """The running service's address (read afresh: a restarted service announces a new one);
        ServiceDown when no live service is announced."""
        address, why = announced(self.config.root)
        if address is None:
            raise ServiceDown(why)
        return address

    def url(self, path: str) -> str:
        return self.address().url(path, "https" if self.config.tls else "http")

    def _tls_context(self) -> Optional[ssl.SSLContext]:
        """For a service with mTLS: the device's own fleet certificate as the client's, and the fleet CA as the
        only one trusted. Its host name is not checked: this is the device's own service on loopback, and its
        certificate names the device id, not 127.0.0.1; the CA check is what proves it the fleet's."""
        if not self.config.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.config.tls_client_ca_file)
        context.check_hostname = False
        context.load_cert_chain(str(self.config.tls_cert_file), self.config.tls_key_file)
        return context

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """(status, body) for any answer, errors included; ServiceDown when nothing answers."""
        url = self.url(path)
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"content-type": "application/json"})
        if self.config.token:
            request.add_header("authorization", "Bearer %s" % self.config.token)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout,
                                        context=self._tls_context()) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise ServiceDown("the inference service at %s does not answer: %s"
                              % (url, getattr(exc, "reason", exc))) from None

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
             timeout: Optional[float] = None) -> Dict[str, Any]:
        """The JSON answer of a call that must succeed; ServiceError otherwise."""
        status, raw = self.request(method, path, body, timeout)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {"error": raw[:200].decode("utf-8", "replace")}
        if status >= 400:
            raise ServiceError(status, answer.get("error") or "HTTP %d" % status, answer)
        return answer

    def up(self) -> bool:
        try:
            self.request("GET", "/v2/health/live", timeout=5)
            return True
        except ServiceDown:
            return False

    def wait_up(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the service to answer (a restart in progress)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.up():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)

    # -- what the OTA watch reads ----------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        return self.call("GET", "/v2/admin/status", timeout=30)

    def serving(self, name: str) -> Optional[str]:
        """The version the service serves for ``name`` right now, or None."""
        for entry in self.status().get("serving", []):
            if entry.get("name") == name and entry.get("active"):
                return str(entry["active"]["version"])
        return None

    def ready(self, name: str, version: str) -> bool:
        return self.request("GET", "/v2/models/%s/versions/%s/ready" % (name, version), timeout=30)[0] == 200

    def infer(self, name: str, version: str, inputs: Dict[str, Any]) -> Dict[str, Any]:
        """A KServe v2 JSON inference; ``inputs`` maps input name to (datatype, shape, flat data)."""
        body = {"inputs": [{"name": n, "datatype": dt, "shape": shape, "data": data}
                           for n, (dt, shape, data) in inputs.items()]}
        return self.call("POST", "/v2/models/%s/versions/%s/infer" % (name, version), body, timeout=60)

    def counts(self, name: str, version: str) -> Tuple[float, float]:
        """(requests answered, backend errors) for one version, from the Prometheus metrics."""
        from prometheus_client.parser import text_string_to_metric_families
        status, raw = self.request("GET", "/metrics", timeout=30)
        if status != 200:
            raise ServiceError(status, "GET /metrics answered %d" % status)
        answered = errors = 0.0
        for family in text_string_to_metric_families(raw.decode("utf-8", "replace")):
            for sample in family.samples:
                labels = sample.labels
                if labels.get("model") != name or labels.get("version") != version:
                    continue
                if sample.name == "edge_ai_inferences_total":
                    answered += sample.value
                elif sample.name == "edge_ai_inference_errors_total" and labels.get("reason") == "backend":
                    errors += sample.value
        return answered, errors
