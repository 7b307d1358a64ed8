"""The one health check of a model version in place, used by the OTA installer after the switch,
through the watch window, after an undo, and to tell whether there is anything to do: the service
serves the version, reports it ready and answers a probe inference (and, in the watch, does not
restart and keeps its backend error rate under the policy's limit). With no service running, the
version must load and pass its gate here."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from edgeai_runtime.device.client import ServiceClient, ServiceDown, ServiceError
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.device.store import ModelStore

if TYPE_CHECKING:  # pragma: no cover
    from edgeai_runtime.device.ota import Policy


class Health:
    def __init__(self, client: ServiceClient, store: ModelStore, config: RuntimeConfig,
                 restart_grace_s: float = 60.0) -> None:
        self.client = client
        self.store = store
        self.config = config
        #: How long to wait for a service that was up and stopped answering (its supervisor restarting it).
        self.restart_grace_s = restart_grace_s

    def check(self, name: str, version: str, service_up: bool) -> None:
        """Raise unless ``version`` is in place and healthy (see the module's docstring)."""
        if not service_up:
            from edgeai_runtime.service.serving import ModelManager
            manager = ModelManager(self.store, self.config)
            try:
                manager.load(name, version).close_when_idle(0)
            finally:
                manager.close()
            return
        self._serves(name, version)
        self.probe(name, version)

    def ok(self, name: str, version: str) -> bool:
        """Is ``version`` in place? With the service up it must serve it and answer; with none
        running, the store's pointer is what the service will serve when it starts."""
        if not self.client.up():
            return self.store.active(name) == version
        try:
            self.check(name, version, True)
            return True
        except Exception:  # anything wrong means "not in the wanted state": the caller acts
            return False

    def identity(self) -> Dict[str, Any]:
        """The service process (pid, start time): a change means it restarted."""
        return dict(self.client.status().get("process") or {})

    def watch(self, name: str, version: str, policy: "Policy", identity: Dict[str, Any]) -> None:
        """Watch ``version`` for ``policy.watch_s``; raise at the first sign of trouble. A service
        that stops answering gets ``restart_grace_s`` to come back, and then counts as restarted."""
        base: Optional[Tuple[float, float]] = None
        deadline = time.monotonic() + policy.watch_s
        while True:
            try:
                if base is None:
                    base = self.client.counts(name, version)
                self._watch_once(name, version, policy, identity, base)
            except ServiceDown:
                if not self.client.wait_up(self.restart_grace_s):
                    raise RuntimeError("the inference service stopped answering during the watch window and did "
                                       "not come back within %.0f s" % self.restart_grace_s) from None
                continue  # the next round sees the restart
            if time.monotonic() >= deadline:
                return
            time.sleep(min(policy.interval_s, max(deadline - time.monotonic(), 0.0)))

    def _watch_once(self, name: str, version: str, policy: "Policy", identity: Dict[str, Any],
                    base: Tuple[float, float]) -> None:
        now = self.identity()
        if now != identity:
            raise RuntimeError("the inference service restarted during the watch window (pid %s started at %s, now "
                               "pid %s started at %s)"
                               % (identity.get("pid"), identity.get("started"), now.get("pid"), now.get("started")))
        self._serves(name, version)
        self.probe(name, version)
        answered, errors = self.client.counts(name, version)
        seen, failed = answered - base[0] + errors - base[1], errors - base[1]
        if seen >= policy.min_requests and failed / seen > policy.max_error_rate:
            raise RuntimeError("error rate %.3f (%d of %d requests failed in the backend) is over %.3f"
                               % (failed / seen, failed, seen, policy.max_error_rate))

    def _serves(self, name: str, version: str) -> None:
        serving = self.client.serving(name)
        if serving != version:
            raise RuntimeError("the service serves %s %s, not %s" % (name, serving, version))
        if not self.client.ready(name, version):
            raise RuntimeError("%s %s is not ready" % (name, version))

    def probe(self, name: str, version: str) -> None:
        """One inference of zeros shaped like the manifest's inputs, through the HTTP API."""
        manifest = self.store.manifest(name, version)
        inputs = {}
        for tensor in manifest.inputs:
            shape = [1 if d < 0 else d for d in tensor.shape]
            count = 1
            for d in shape:
                count *= d
            inputs[tensor.name] = (tensor.datatype, shape, [False if tensor.datatype == "BOOL" else 0] * count)
        try:
            answer = self.client.infer(name, version, inputs)
        except ServiceError as exc:
            raise RuntimeError("a probe inference on %s %s failed: %s" % (name, version, exc)) from None
        if not answer.get("outputs"):
            raise RuntimeError("a probe inference on %s %s returned no outputs" % (name, version))
