"""Inference results into the outbox (kind ``inference``), per model as ``TelemetryConfig.inference_results``
says: ``all``, a ``sample`` (``sample_rate``), or those ``below_confidence`` (``confidence_below``).

Never slows or fails an inference: ``offer`` only decides the sampling and puts a reference to the
outputs on a bounded queue (dropping, and counting, when it is full); a writer thread computes the
confidence and queues the records in the outbox, many per transaction. A full outbox or disk
refuses records there, logged at most once a minute.

Confidence: of the model's first floating-point output in its manifest's order (the class
probabilities or logits; a label output of integers is passed over), per row the largest
probability: the row as it is when it already is a probability distribution (values in [0, 1]
summing to 1), else its softmax. A request's confidence is its least confident row's. A model
without a floating-point output has none (null): ``below_confidence`` queues nothing for it.
"""
from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeai_runtime.device.config import ConfigError, TelemetryConfig, load_telemetry_config
from edgeai_runtime.device.outbox import Outbox, OutboxError

log = logging.getLogger(__name__)

#: Rows of a request whose class and confidence a record lists.
MAX_ROWS = 16
_Item = Tuple[str, str, Mapping[str, np.ndarray], Sequence[str], Optional[str], float, float]


def row_confidences(outputs: Mapping[str, np.ndarray], order: Sequence[str]) -> Optional[List[Tuple[int, float]]]:
    """(class, confidence) per row of the first floating-point output in ``order``; None without one."""
    for name in order:
        value = outputs.get(name)
        if value is None or not np.issubdtype(value.dtype, np.floating) or value.size == 0:
            continue
        rows = np.asarray(value, dtype=np.float64).reshape(value.shape[0] if value.ndim > 1 else 1, -1)
        distributed = bool(np.all(rows >= 0) and np.all(rows <= 1) and np.allclose(rows.sum(axis=1), 1.0, atol=1e-3))
        if not distributed:
            shifted = np.exp(rows - rows.max(axis=1, keepdims=True))
            rows = shifted / shifted.sum(axis=1, keepdims=True)
        best = rows.argmax(axis=1)
        return [(int(c), float(rows[i, c])) for i, c in enumerate(best)]
    return None


class ResultRecorder:
    """Queues inference results of the models ``config.inference_results`` names."""

    def __init__(self, config: TelemetryConfig, outbox: Optional[Outbox] = None, max_pending: int = 1024,
                 batch: int = 100, rng: Optional[random.Random] = None) -> None:
        self.policies = dict(config.inference_results)
        self.outbox = outbox or Outbox.from_config(config)
        self.batch = batch
        self.rng = rng or random.Random()
        self.pending: "queue.Queue[Optional[_Item]]" = queue.Queue(maxsize=max_pending)
        self.dropped = 0       # offered while the queue was full
        self.refused = 0       # refused by the outbox (full disk, cap held by higher priorities)
        self.recorded = 0
        self._complained = 0.0
        self._writer = threading.Thread(target=self._write_loop, name="edgeai-results", daemon=True)
        self._writer.start()

    @classmethod
    def for_root(cls, root: str) -> Optional["ResultRecorder"]:
        """The recorder of a device whose telemetry.json asks for inference results; None otherwise
        (and when that file is unusable: logged, the service serves on)."""
        if not os.path.exists(os.path.join(root, "etc", "telemetry.json")):
            return None
        try:
            config = load_telemetry_config(root)
        except ConfigError as exc:
            log.error("inference results are not queued: %s", exc)
            return None
        return cls(config) if config.inference_results else None

    def wants(self, model: str) -> bool:
        return model in self.policies

    def offer(self, model: str, version: str, outputs: Mapping[str, np.ndarray], order: Sequence[str],
              request_id: Optional[str], latency_s: float) -> None:
        """Called by the service after an inference (on the event loop): cheap, never raises, never waits."""
        try:
            policy = self.policies.get(model)
            if policy is None:
                return
            if policy["mode"] == "sample" and self.rng.random() >= float(policy.get("sample_rate", 1.0)):
                return
            self.pending.put_nowait((model, version, outputs, tuple(order), request_id, latency_s, time.time()))
        except queue.Full:
            self.dropped += 1
        except Exception:  # noqa: BLE001 - an inference result is never worth a failed inference
            log.exception("offering an inference result of %s failed", model)

    def record(self, item: _Item) -> Optional[Dict[str, Any]]:
        """The record of one offered result; None when its policy does not keep it."""
        model, version, outputs, order, request_id, latency_s, when = item
        rows = row_confidences(outputs, order)
        confidence = min(row[1] for row in rows) if rows else None
        policy = self.policies[model]
        if policy["mode"] == "below_confidence" and (confidence is None
                                                     or confidence >= float(policy.get("confidence_below", 1.0))):
            return None
        return {"model": model, "version": version, "request_id": request_id, "time": round(when, 6),
                "latency_s": round(latency_s, 6), "rows": len(rows) if rows else None,
                "confidence": None if confidence is None else round(confidence, 6),
                "top": [{"class": c, "confidence": round(p, 6)} for c, p in (rows or [])[:MAX_ROWS]]}

    def _write_loop(self) -> None:
        while True:
            item = self.pending.get()
            items = [item]
            while item is not None and len(items) < self.batch:
                try:
                    item = self.pending.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
            records = []
            for one in items:
                if one is None:
                    continue
                try:
                    made = self.record(one)
                except Exception:  # noqa: BLE001
                    log.exception("making the inference result record of %s failed", one[0])
                    continue
                if made is not None:
                    records.append(made)
            if records:
                try:
                    self.outbox.enqueue_many("inference", records)
                    self.recorded += len(records)
                except OutboxError as exc:
                    self.refused += len(records)
                    self._complain("%d inference results were not queued: %s" % (len(records), exc))
            if items[-1] is None:
                return

    def _complain(self, message: str) -> None:
        now = time.monotonic()
        if not self._complained or now - self._complained >= 60:
            self._complained = now
            log.warning("%s (%d refused, %d dropped so far)", message, self.refused, self.dropped)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (up to ``timeout``), then stop the writer."""
        try:
            self.pending.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._writer.join(timeout)
        self.outbox.close()
