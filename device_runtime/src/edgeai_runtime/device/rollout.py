"""The device's side of a staged rollout (the controller's ``edgeai.fleet.rollout``, docs/rollout.md).

Two things happen here, because they are decisions about this device:

* The **soak**: after a new version went in, watch it for ``seconds`` under the device's real traffic. It
  succeeds only if, at every sample, the service serves that version, its p95 latency over the requests since the
  soak began (``GET /v2/models/stats?window=``, at most the service's 300 s) stays within ``p95_ms``, the backend error rate of the requests answered
  since the soak began stays within ``max_error_rate`` (judged once ``min_requests`` were seen), and the service
  restarted no more than ``max_restarts`` times; and at the end at least ``min_requests`` requests were answered
  (too little traffic proves nothing). It stops at the first breach.
* The **marks**: what the rollout did or found here (``MARKS``), kept in the deployment history
  (``state/history.sqlite``, table ``rollout_marks``). The controller's ledger is a cache of these: a controller
  that lost it (a fresh AWX execution environment) rebuilds it from every device's ``status``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

from edgeai_runtime.device.client import ServiceClient, ServiceDown, ServiceError
from edgeai_runtime.device.journal import History
from edgeai_runtime.device.store import ModelStore
from edgeai_runtime.format.updates import soak_problems

#: installed: this rollout's version went in (details.updated: whether it changed what serves);
#: soaked / soak_failed: the soak's verdict (details: its numbers); rolled_back: the version before serves again;
#: deferred: not now (outside the maintenance window, or the device's defer hook said so); failed: the update
#: itself failed (the OTA installer put the version before back).
MARKS = ("installed", "soaked", "soak_failed", "rolled_back", "deferred", "failed")


@dataclass
class SoakLimits:
    seconds: float
    p95_ms: float = 100.0
    max_error_rate: float = 0.05
    max_restarts: int = 0
    min_requests: int = 20
    interval_s: float = 5.0

    def check(self) -> None:
        """The one rule for the limits (edgeai_runtime.format.updates.soak_problems, which the update document's
        rollout block is checked by too): ValueError naming the first that does not check."""
        problems = soak_problems(asdict(self))
        if problems:
            raise ValueError("the soak's %s" % problems[0][1])


class _Counters:
    """Requests and backend errors of one version since the soak began, across service restarts (a restarted
    service counts from zero again)."""

    def __init__(self) -> None:
        self.base: Optional[Dict[str, int]] = None
        self.carried_ok = self.carried_failed = 0
        self.last_ok = self.last_failed = 0

    def update(self, ok: int, failed: int, restarted: bool) -> None:
        if self.base is None:
            self.base = {"ok": ok, "failed": failed}
        elif restarted:  # what the old process answered stays counted; the new one starts from 0
            self.carried_ok += self.last_ok - self.base["ok"]
            self.carried_failed += self.last_failed - self.base["failed"]
            self.base = {"ok": 0, "failed": 0}
        self.last_ok, self.last_failed = ok, failed

    @property
    def requests(self) -> int:
        return self.ok + self.failed

    @property
    def ok(self) -> int:
        return self.carried_ok + self.last_ok - (self.base or {}).get("ok", 0)

    @property
    def failed(self) -> int:
        return self.carried_failed + self.last_failed - (self.base or {}).get("failed", 0)


def _version_stats(stats: Dict[str, Any], name: str, version: str) -> Dict[str, Any]:
    for entry in stats.get("model_stats") or []:
        if entry.get("name") == name and str(entry.get("version")) == version:
            return dict(entry)
    return {}


class Soak:
    """Watch one serving version for ``limits.seconds`` (see the module's docstring)."""

    def __init__(self, client: ServiceClient, restart_grace_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.restart_grace_s = restart_grace_s
        self._clock = clock
        self._sleep = sleep

    def run(self, name: str, version: str, limits: SoakLimits) -> Dict[str, Any]:
        limits.check()
        start = self._clock()
        counters = _Counters()
        identity: Optional[Dict[str, Any]] = None
        restarts = 0
        worst_p95: Optional[float] = None
        samples: List[Dict[str, Any]] = []
        reasons: List[str] = []
        service_window: Optional[float] = None  # the service's stats window: a longer soak judges its latest part
        while True:
            elapsed = self._clock() - start
            try:
                process = dict(self.client.status().get("process") or {})
                serving = self.client.serving(name)
                # Only what was answered since the soak began (and a second before): an earlier try of this version
                # may still be in the service's window.
                if service_window is None:
                    service_window = float(self.client.call("GET", "/v2/models/stats", timeout=30)["window_seconds"])
                window = min(elapsed + 1.0, service_window)
                stats = _version_stats(self.client.call("GET", "/v2/models/stats?window=%.3f" % window, timeout=30),
                                       name, version)
            except ServiceDown:
                if not self.client.wait_up(self.restart_grace_s):
                    reasons.append("the inference service stopped answering and did not come back within %.0f s"
                                   % self.restart_grace_s)
                    break
                continue  # the next sample sees the new process
            except ServiceError as exc:
                reasons.append("the inference service failed to report its state: %s" % exc)
                break
            restarted = identity is not None and process != identity
            if restarted:
                restarts += 1
            identity = process
            success = (stats.get("inference_stats") or {}).get("success") or {}
            fail = (stats.get("inference_stats") or {}).get("fail") or {}
            counters.update(int(success.get("count") or 0), int(fail.get("count") or 0), restarted)
            p95_s = (stats.get("window") or {}).get("latency_p95_seconds")
            p95_ms = None if p95_s is None else round(p95_s * 1000.0, 3)
            samples.append({"t": round(elapsed, 3), "p95_ms": p95_ms, "requests": counters.requests,
                            "errors": counters.failed, "restarts": restarts})
            judged = counters.requests >= max(limits.min_requests, 1)
            if p95_ms is not None and judged:
                worst_p95 = p95_ms if worst_p95 is None else max(worst_p95, p95_ms)
            reasons = self._breaches(name, version, limits, serving, restarts, counters, p95_ms if judged else None)
            if reasons or elapsed >= limits.seconds:
                break
            self._sleep(min(limits.interval_s, max(limits.seconds - elapsed, 0.0)))
        if not reasons and counters.requests < limits.min_requests:
            reasons.append("only %d requests were answered in the %.0f s soak, fewer than min_requests %d: too "
                           "little traffic to judge" % (counters.requests, limits.seconds, limits.min_requests))
        return {"passed": not reasons, "reasons": reasons, "name": name, "version": version,
                "seconds": round(self._clock() - start, 3), "requests": counters.requests,
                "errors": counters.failed,
                "error_rate": round(counters.failed / counters.requests, 6) if counters.requests else 0.0,
                "p95_ms": worst_p95, "restarts": restarts, "limits": asdict(limits), "samples": samples}

    @staticmethod
    def _breaches(name: str, version: str, limits: SoakLimits, serving: Optional[str], restarts: int,
                  counters: _Counters, p95_ms: Optional[float]) -> List[str]:
        reasons = []
        if serving != version:
            reasons.append("the service serves %s %s, not %s" % (name, serving, version))
        if restarts > limits.max_restarts:
            reasons.append("the inference service restarted %d time(s), more than max_restarts %d"
                           % (restarts, limits.max_restarts))
        if p95_ms is not None and p95_ms > limits.p95_ms:
            reasons.append("p95 latency %.1f ms is over %.1f ms" % (p95_ms, limits.p95_ms))
        if counters.requests >= max(limits.min_requests, 1) and \
                counters.failed / counters.requests > limits.max_error_rate:
            reasons.append("error rate %.3f (%d of %d requests failed) is over %.3f"
                           % (counters.failed / counters.requests, counters.failed, counters.requests,
                              limits.max_error_rate))
        return reasons


def status(history: History, store: ModelStore, client: ServiceClient, rollout: str, name: str,
           version: str) -> Dict[str, Any]:
    """What the controller rebuilds its ledger from: this device's marks for ``rollout``, what serves now, and the
    newest committed update of ``name`` to ``version`` (its ``from_version`` is the version before)."""
    try:
        serving: Optional[str] = client.serving(name)
        service_up = True
    except (ServiceDown, ServiceError):
        serving, service_up = None, False
    committed = [row for row in history.rows(name, limit=200)
                 if row["version"] == version and row["outcome"] == "committed"]
    return {"rollout": rollout, "name": name, "version": version, "active": store.active(name),
            "serving": serving, "service_up": service_up, "marks": history.rollout_marks(rollout),
            "committed": committed[0] if committed else None}
