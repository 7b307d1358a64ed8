"""The model manifest kept beside every stored model version.

Pure data and validation: no I/O beyond (de)serialising JSON text.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.format.tensors import V2_TO_NUMPY

FORMAT_VERSION = 1
RUNTIMES = ("onnxruntime", "tflite", "edgetpu", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
MODEL_FILE_BY_RUNTIME = {"onnxruntime": "model.onnx", "tflite": "model.tflite", "edgetpu": "model.tflite",
                         "tensorrt": "model.engine"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ManifestError(EdgeAIError, ValueError):
    """A manifest is malformed; ``str()`` names the field."""

    default_reason = "bad_manifest"


def check_name(kind: str, value: str) -> str:
    """Names and versions become directory names: refuse anything that is not a plain token."""
    if not isinstance(value, str) or not _NAME_RE.match(value) or value in (".", ".."):
        raise ManifestError("%s %r must be 1-128 characters of letters, digits, '_', '.', '-'" % (kind, value))
    return value


def version_key(version: str) -> Tuple[Tuple[int, int, str], ...]:
    """Order versions numerically where they are numbers: 1.10.0 > 1.9.2, 2 > 1.0-rc1."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.+-]", version))


@dataclass(frozen=True)
class TensorSignature:
    name: str
    datatype: str
    shape: List[int]

    @classmethod
    def parse(cls, data: Any, where: str) -> "TensorSignature":
        if not isinstance(data, dict):
            raise ManifestError("%s must be an object with name, datatype and shape" % where)
        name, datatype, shape = data.get("name"), data.get("datatype"), data.get("shape")
        if not isinstance(name, str) or not name:
            raise ManifestError("%s.name must be a non-empty string" % where)
        if datatype not in V2_TO_NUMPY:
            raise ManifestError("%s.datatype %r is not one of %s" % (where, datatype, ", ".join(V2_TO_NUMPY)))
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= -1 for d in shape):
            raise ManifestError("%s.shape must be a list of integers (-1 for any size)" % where)
        return cls(name, datatype, list(shape))


@dataclass(frozen=True)
class Preprocessing:
    """What the client-side pipeline feeds the model, as in the design notes' EdgeOptimizedAgent."""
    shape: List[int] = field(default_factory=list)
    dtype: str = "float32"
    mean: Any = 0.0
    std: Any = 1.0


VALIDATION_KEYS = ("golden", "dataset", "accuracy_threshold", "label_output", "latency_p95_ms")


@dataclass(frozen=True)
class Validation:
    """Gate data: golden samples (exact labels) and a validation set with an accuracy threshold.

    ``golden`` and ``dataset`` name .npz files in the version directory holding arrays
    ``inputs`` (keyed by input name as ``inputs.<name>``) and ``labels``.
    """
    golden: Optional[str] = None
    dataset: Optional[str] = None
    accuracy_threshold: Optional[float] = None
    label_output: Optional[str] = None
    latency_p95_ms: Optional[float] = None  # budget for one-row inference, measured by the gate


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    runtime: str
    precision: str
    sha256: str
    size: int
    inputs: List[TensorSignature]
    outputs: List[TensorSignature]
    model_file: str = ""
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    validation: Validation = field(default_factory=Validation)
    hardware_classes: List[str] = field(default_factory=list)
    created: str = ""                     # ISO 8601 UTC, set when an artifact is packed
    min_runtime_version: str = ""         # the oldest edgeai-device-runtime that may load it
    files: Dict[str, str] = field(default_factory=dict)   # gate data file name -> sha256
    format_version: int = FORMAT_VERSION

    @classmethod
    def from_dict(cls, data: Any) -> "Manifest":
        if not isinstance(data, dict):
            raise ManifestError("manifest must be a JSON object")
        fmt = data.get("format_version", FORMAT_VERSION)
        if fmt != FORMAT_VERSION:
            raise ManifestError("format_version %r is not supported (this runtime reads %d)" % (fmt, FORMAT_VERSION))
        for key in ("name", "version", "runtime", "precision", "sha256", "size", "inputs", "outputs"):
            if key not in data:
                raise ManifestError("%s is missing" % key)
        runtime, precision = data["runtime"], data["precision"]
        if runtime not in RUNTIMES:
            raise ManifestError("runtime %r is not one of %s" % (runtime, ", ".join(RUNTIMES)))
        if precision not in PRECISIONS:
            raise ManifestError("precision %r is not one of %s" % (precision, ", ".join(PRECISIONS)))
        sha = data["sha256"]
        if not isinstance(sha, str) or not re.match(r"^[0-9a-f]{64}$", sha):
            raise ManifestError("sha256 must be 64 lowercase hex digits")
        size = data["size"]
        if not isinstance(size, int) or size <= 0:
            raise ManifestError("size must be a positive integer")
        for key in ("inputs", "outputs"):
            if not isinstance(data[key], list) or not data[key]:
                raise ManifestError("%s must be a non-empty list" % key)
        model_file = data.get("model_file") or MODEL_FILE_BY_RUNTIME[runtime]
        check_name("model_file", model_file)
        pre = data.get("preprocessing") or {}
        val = data.get("validation") or {}
        if not isinstance(pre, dict) or not isinstance(val, dict):
            raise ManifestError("preprocessing and validation must be objects")
        threshold = val.get("accuracy_threshold")
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
            raise ManifestError("validation.accuracy_threshold must be a number from 0 to 1")
        if threshold is not None and not val.get("dataset"):
            raise ManifestError("validation.accuracy_threshold needs validation.dataset")
        budget = val.get("latency_p95_ms")
        if budget is not None and not (isinstance(budget, (int, float)) and not isinstance(budget, bool)
                                       and budget > 0):
            raise ManifestError("validation.latency_p95_ms must be a positive number of milliseconds")
        for key in ("golden", "dataset"):
            if val.get(key) is not None:
                check_name("validation.%s" % key, val[key])
        classes = data.get("hardware_classes") or []
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ManifestError("hardware_classes must be a list of class names")
        files = data.get("files") or {}
        if not isinstance(files, dict):
            raise ManifestError("files must map file names to sha256 digests")
        for fname, digest in files.items():
            check_name("files key", fname)
            if not isinstance(digest, str) or not re.match(r"^[0-9a-f]{64}$", digest):
                raise ManifestError("files[%s] must be 64 lowercase hex digits" % fname)
        for key in ("created", "min_runtime_version"):
            if not isinstance(data.get(key, ""), str):
                raise ManifestError("%s must be a string" % key)
        if data.get("min_runtime_version"):
            check_name("min_runtime_version", data["min_runtime_version"])
        return cls(
            name=check_name("name", data["name"]),
            version=check_name("version", data["version"]),
            runtime=runtime,
            precision=precision,
            sha256=sha,
            size=size,
            inputs=[TensorSignature.parse(t, "inputs[%d]" % i) for i, t in enumerate(data["inputs"])],
            outputs=[TensorSignature.parse(t, "outputs[%d]" % i) for i, t in enumerate(data["outputs"])],
            model_file=model_file,
            preprocessing=Preprocessing(**{k: pre[k] for k in ("shape", "dtype", "mean", "std") if k in pre}),
            validation=Validation(**{k: val[k] for k in VALIDATION_KEYS if k in val}),
            hardware_classes=list(classes),
            created=data.get("created", ""),
            min_runtime_version=data.get("min_runtime_version", ""),
            files=dict(files),
        )

    @classmethod
    def for_model(cls, name: str, version: str, runtime: str, precision: str, model: bytes,
                  inputs: List[Dict[str, Any]], outputs: List[Dict[str, Any]], **extra: Any) -> "Manifest":
        """Describe ``model``'s bytes (sha256 and size computed here); ``extra`` takes the optional fields."""
        data: Dict[str, Any] = {"name": name, "version": version, "runtime": runtime, "precision": precision,
                                "sha256": hashlib.sha256(model).hexdigest(), "size": len(model),
                                "inputs": inputs, "outputs": outputs}
        data.update(extra)
        return cls.from_dict(data)

    @classmethod
    def from_json(cls, text: str) -> "Manifest":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ManifestError("manifest is not valid JSON: %s" % exc) from None
        return cls.from_dict(data)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
