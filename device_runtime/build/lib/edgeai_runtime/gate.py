"""The activation gate: golden samples, then accuracy on the validation set.

Gate data lives in .npz files next to the model (named by the manifest's
``validation.golden`` / ``validation.dataset``): arrays ``inputs.<input name>``
and ``labels`` (integer class per row). The predicted class is the argmax of
the ``label_output`` output (the first output when unset).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional

import numpy as np

from .manifest import Manifest

Infer = Callable[[Mapping[str, np.ndarray]], Dict[str, np.ndarray]]


class GateFailed(RuntimeError):
    """The new version did not pass; ``str()`` is one line saying which check and by how much."""


@dataclass
class GateResult:
    golden_checked: int = 0
    accuracy: Optional[float] = None
    threshold: Optional[float] = None
    samples: int = 0

    def to_dict(self) -> Dict[str, object]:
        return {"golden_checked": self.golden_checked, "accuracy": self.accuracy,
                "threshold": self.threshold, "samples": self.samples}


def encode_npz(inputs: Mapping[str, np.ndarray], labels: np.ndarray) -> bytes:
    """Gate data in the layout ``run_gate`` reads: ``inputs.<name>`` arrays and ``labels``."""
    buffer = io.BytesIO()
    np.savez(buffer, labels=np.asarray(labels, dtype=np.int64),
             **{"inputs." + name: np.asarray(value) for name, value in inputs.items()})
    return buffer.getvalue()


def load_npz(data: bytes, what: str, manifest: Manifest):
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


def run_gate(infer: Infer, manifest: Manifest, read_file: Callable[[str], bytes], batch: int = 1) -> GateResult:
    """Run the manifest's gate against ``infer``. Raises GateFailed; returns what was measured."""
    result = GateResult(threshold=manifest.validation.accuracy_threshold)
    validation = manifest.validation
    if validation.golden:
        inputs, labels = load_npz(read_file(validation.golden), "golden samples", manifest)
        predicted = predict(infer, manifest, inputs, batch)
        wrong = np.flatnonzero(predicted != labels.astype(np.int64))
        if wrong.size:
            i = int(wrong[0])
            raise GateFailed("golden sample %d of %s %s: predicted %d, expected %d (%d of %d golden samples wrong)"
                             % (i, manifest.name, manifest.version, predicted[i], labels[i], wrong.size, len(labels)))
        result.golden_checked = len(labels)
    if validation.dataset:
        inputs, labels = load_npz(read_file(validation.dataset), "validation set", manifest)
        predicted = predict(infer, manifest, inputs, batch)
        result.samples = len(labels)
        result.accuracy = float((predicted == labels.astype(np.int64)).mean()) if len(labels) else 0.0
        threshold = validation.accuracy_threshold
        if threshold is not None and result.accuracy < threshold:
            raise GateFailed("accuracy of %s %s is %.4f on %d validation samples, below the threshold %.4f"
                             % (manifest.name, manifest.version, result.accuracy, result.samples, threshold))
    return result
