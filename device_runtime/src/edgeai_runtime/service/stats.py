"""Per model and version inference statistics over a sliding window, for ``GET /v2/models/stats``.

The shape follows Triton's statistics extension where it has a field (``model_stats``, ``inference_count``,
``last_inference`` in milliseconds since the epoch, ``inference_stats.success`` / ``fail`` with ``count`` and
``ns``, counted since the service started), plus ``window``: the requests and errors answered in the last
``window_seconds`` and the p50 / p95 latency of the successful ones.

Bounded: each version keeps at most ``max_samples`` outcomes (the newest), and only versions the service has
loaded are kept (``retain``). Recording is an append under a lock, on the event loop; ``snapshot`` runs in
whatever thread renders it (a /metrics scrape renders off the event loop).
"""
from __future__ import annotations

import collections
import math
import threading
import time
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Tuple

Key = Tuple[str, str]
#: (monotonic time, seconds, ok)
Outcome = Tuple[float, float, bool]


def percentile(ordered: List[float], q: float) -> Optional[float]:
    """The nearest-rank ``q`` quantile (0 < q <= 1) of an ascending list; None for an empty one."""
    if not ordered:
        return None
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class VersionStats:
    """One model version's counters and window."""

    __slots__ = ("outcomes", "success_count", "success_ns", "fail_count", "fail_ns", "last_inference_ms")

    def __init__(self, max_samples: int) -> None:
        self.outcomes: Deque[Outcome] = collections.deque(maxlen=max_samples)
        self.success_count = self.success_ns = self.fail_count = self.fail_ns = 0
        self.last_inference_ms = 0


class InferenceStats:
    def __init__(self, window_s: float = 300.0, max_samples: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or max_samples < 1:
            raise ValueError("window_s must be positive and max_samples at least 1")
        self.window_s = window_s
        self.max_samples = max_samples
        self._clock = clock
        self._versions: Dict[Key, VersionStats] = {}
        self._lock = threading.Lock()

    def record(self, model: str, version: str, seconds: float, ok: bool) -> None:
        """One answered request of ``model`` ``version``: its latency, and whether it succeeded."""
        now = self._clock()
        ns = int(seconds * 1e9)
        with self._lock:
            stats = self._versions.get((model, version))
            if stats is None:
                stats = self._versions[(model, version)] = VersionStats(self.max_samples)
            stats.outcomes.append((now, seconds, ok))
            if ok:
                stats.success_count += 1
                stats.success_ns += ns
            else:
                stats.fail_count += 1
                stats.fail_ns += ns
            stats.last_inference_ms = int(time.time() * 1000)

    def track(self, model: str, version: str) -> None:
        """List a loaded version (with zeros until it answers)."""
        with self._lock:
            self._versions.setdefault((model, version), VersionStats(self.max_samples))

    def retain(self, loaded: Iterable[Key]) -> None:
        """Forget the versions not in ``loaded`` (unloaded ones): what is kept stays as bounded as the manager."""
        keep = set(loaded)
        with self._lock:
            for key in [k for k in self._versions if k not in keep]:
                del self._versions[key]

    def snapshot(self, window_s: Optional[float] = None) -> Dict[str, Any]:
        """The ``GET /v2/models/stats`` body; ``window_s`` (at most the service's window) narrows the window, e.g. to
        the requests since a rollout's soak began."""
        if window_s is not None and not 0 < window_s <= self.window_s:
            raise ValueError("the window must be within 0-%g seconds, got %r" % (self.window_s, window_s))
        window_s = self.window_s if window_s is None else window_s
        now = self._clock()
        since = now - window_s
        with self._lock:
            copied = [(key, list(s.outcomes), s.success_count, s.success_ns, s.fail_count, s.fail_ns,
                       s.last_inference_ms) for key, s in sorted(self._versions.items())]
        model_stats = []
        for (model, version), outcomes, ok_count, ok_ns, fail_count, fail_ns, last in copied:
            recent = [o for o in outcomes if o[0] >= since]
            latencies = sorted(o[1] for o in recent if o[2])
            oldest = recent[0][0] if recent else now
            model_stats.append({
                "name": model, "version": version, "last_inference": last, "inference_count": ok_count,
                "inference_stats": {"success": {"count": ok_count, "ns": ok_ns},
                                    "fail": {"count": fail_count, "ns": fail_ns}},
                "window": {"requests": len(recent), "errors": len(recent) - len(latencies),
                           "latency_p50_seconds": percentile(latencies, 0.50),
                           "latency_p95_seconds": percentile(latencies, 0.95),
                           "covered_seconds": round(min(window_s, now - oldest), 3),
                           "truncated": len(outcomes) == self.max_samples and outcomes[0][0] >= since}})
        return {"window_seconds": window_s, "max_samples": self.max_samples, "model_stats": model_stats}
