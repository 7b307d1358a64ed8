"""The activation gate: golden samples, then accuracy on the validation set.

Gate data lives in .npz files next to the model (named by the manifest's
``validation.golden`` / ``validation.dataset``): arrays ``inputs.<input name>``
and ``labels`` (integer class per row). The predicted class is the argmax of
the ``label_output`` output (the first output when unset).
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.format.manifest import Manifest

Infer = Callable[[Mapping[str, np.ndarray]], Dict[str, np.ndarray]]


class GateFailed(EdgeAIError, RuntimeError):
    """The new version did not pass; ``str()`` is one line saying which check and by how much."""

    default_reason = "gate"


@dataclass
class GateResult:
    golden_checked: int = 0
    accuracy: Optional[float] = None
    threshold: Optional[float] = None
    samples: int = 0
    latency_p95_ms: Optional[float] = None
    latency_budget_ms: Optional[float] = None
    latency_samples: int = 0

    def to_dict(self) -> Dict[str, object]:
        return {"golden_checked": self.golden_checked, "accuracy": self.accuracy,
                "threshold": self.threshold, "samples": self.samples,
                "latency_p95_ms": self.latency_p95_ms, "latency_budget_ms": self.latency_budget_ms,
                "latency_samples": self.latency_samples}


def encode_npz(inputs: Mapping[str, np.ndarray], labels: np.ndarray) -> bytes:
    """Gate data in the layout ``run_gate`` reads: ``inputs.<name>`` arrays and ``labels``."""
    buffer = io.BytesIO()
    arrays = {"inputs." + name: np.asarray(value) for name, value in inputs.items()}
    # allow_pickle=True is numpy's default; named here, it is not a keyword **arrays could fill.
    np.savez(buffer, allow_pickle=True, labels=np.asarray(labels, dtype=np.int64), **arrays)
    return buffer.getvalue()


def load_npz(data: bytes, what: str, manifest: Manifest) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises several types for a bad archive
        raise GateFailed("%s of %s %s is not a readable .npz file: %s"
                         % (what, manifest.name, manifest.version, exc)) from None
    names = [t.name for t in manifest.inputs]
    missing = [n for n in ["labels"] + ["inputs." + n for n in names] if n not in arrays.files]
    if missing:
        raise GateFailed("%s of %s %s lacks arrays %s" % (what, manifest.name, manifest.version, ", ".join(missing)))
    return {n: arrays["inputs." + n] for n in names}, arrays["labels"]


def predict(infer: Infer, manifest: Manifest, inputs: Mapping[str, np.ndarray], batch: int) -> np.ndarray:
    """Argmax predictions over all rows, run ``batch`` rows at a time."""
    output = manifest.validation.label_output or manifest.outputs[0].name
    rows = len(next(iter(inputs.values())))
    predictions = []
    for start in range(0, rows, batch):
        chunk = {k: v[start:start + batch] for k, v in inputs.items()}
        result = infer(chunk)
        if output not in result:
            raise GateFailed("output %r is not produced by %s %s" % (output, manifest.name, manifest.version))
        values = np.asarray(result[output])
        predictions.append(values.argmax(axis=-1) if values.ndim > 1 else values)
    return np.concatenate(predictions).astype(np.int64)


#: The latency probe: at most this many one-row inferences, and no more than this long once it has the minimum.
LATENCY_MAX_SAMPLES, LATENCY_MIN_SAMPLES, LATENCY_TIME_S = 100, 20, 2.0


def measure_p95_ms(infer: Infer, rows: Mapping[str, np.ndarray]) -> Tuple[float, int]:
    """p95 of one-row inference latency (ms) over the rows given, cycling through them, after one warm-up."""
    count = len(next(iter(rows.values())))

    def one(i: int) -> Dict[str, np.ndarray]:
        return {k: v[i % count:i % count + 1] for k, v in rows.items()}

    infer(one(0))
    times: List[float] = []
    deadline = time.perf_counter() + LATENCY_TIME_S
    while len(times) < LATENCY_MAX_SAMPLES and (len(times) < LATENCY_MIN_SAMPLES or time.perf_counter() < deadline):
        sample = one(len(times))
        started = time.perf_counter()
        infer(sample)
        times.append((time.perf_counter() - started) * 1000.0)
    return float(np.percentile(times, 95)), len(times)


def run_gate(infer: Infer, manifest: Manifest, read_file: Callable[[str], bytes], batch: int = 1,
             latency_budget_ms: Optional[float] = None,
             probe_rows: Optional[Mapping[str, np.ndarray]] = None) -> GateResult:
    """Run the manifest's gate against ``infer``: golden samples, accuracy on the validation set,
    and p95 one-row latency against ``latency_budget_ms`` (else the manifest's ``latency_p95_ms``).
    Raises GateFailed; returns what was measured. Latency is probed on the validation rows (else the
    golden ones, else ``probe_rows``) and only when there is a budget."""
    validation = manifest.validation
    budget = latency_budget_ms if latency_budget_ms is not None else validation.latency_p95_ms
    result = GateResult(threshold=validation.accuracy_threshold, latency_budget_ms=budget)
    rows = probe_rows
    if validation.golden:
        inputs, labels = load_npz(read_file(validation.golden), "golden samples", manifest)
        rows = inputs
        predicted = predict(infer, manifest, inputs, batch)
        wrong = np.flatnonzero(predicted != labels.astype(np.int64))
        if wrong.size:
            i = int(wrong[0])
            raise GateFailed("golden sample %d of %s %s: predicted %d, expected %d (%d of %d golden samples wrong)"
                             % (i, manifest.name, manifest.version, predicted[i], labels[i], wrong.size, len(labels)))
        result.golden_checked = len(labels)
    if validation.dataset:
        inputs, labels = load_npz(read_file(validation.dataset), "validation set", manifest)
        rows = inputs
        predicted = predict(infer, manifest, inputs, batch)
        result.samples = len(labels)
        result.accuracy = float((predicted == labels.astype(np.int64)).mean()) if len(labels) else 0.0
        threshold = validation.accuracy_threshold
        if threshold is not None and result.accuracy < threshold:
            raise GateFailed("accuracy of %s %s is %.4f on %d validation samples, below the threshold %.4f"
                             % (manifest.name, manifest.version, result.accuracy, result.samples, threshold))
    if budget is not None and rows:
        result.latency_p95_ms, result.latency_samples = measure_p95_ms(infer, rows)
        result.latency_p95_ms = round(result.latency_p95_ms, 3)
        if result.latency_p95_ms > budget:
            raise GateFailed("p95 latency of %s %s is %.3f ms over %d one-row inferences, over the budget of %.3f ms"
                             % (manifest.name, manifest.version, result.latency_p95_ms, result.latency_samples,
                                budget))
    return result
