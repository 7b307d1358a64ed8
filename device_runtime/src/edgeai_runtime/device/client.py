"""The running service's HTTP API as seen from the device itself (loopback): admin calls, readiness,
a probe inference and the metrics. Used by the CLI and the OTA installer; stdlib only."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.device.config import RuntimeConfig


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


class ServiceClient:
    def __init__(self, config: RuntimeConfig, timeout: float = 300.0) -> None:
        self.config = config
        self.timeout = timeout

    def url(self, path: str) -> str:
        config = self.config
        host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "127.0.0.1", "localhost") or config.loopback_only \
            else config.host
        return "http://%s:%d%s" % (host if ":" not in host else "[%s]" % host, config.port, path)

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """(status, body) for any answer, errors included; ServiceDown when nothing answers."""
        data = json.dumps(body or {}).encode() if method == "POST" else None
        request = urllib.request.Request(self.url(path), data=data, method=method,
                                         headers={"content-type": "application/json"})
        if self.config.token:
            request.add_header("authorization", "Bearer %s" % self.config.token)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise ServiceDown("the inference service at %s does not answer: %s"
                              % (self.url(""), getattr(exc, "reason", exc))) from None

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
