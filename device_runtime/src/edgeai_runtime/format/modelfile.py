"""A model file described by reading it, and the manifest written beside it (``model init``).

``describe`` tells an .onnx from a .tflite file by its first bytes (``sniff_format``), loads it in
the runtime that serves it (onnxruntime, or LiteRT's / tflite-runtime's Interpreter: the same
libraries the backends use, so no new dependency) and reads its inputs and outputs: names, KServe
v2 datatypes (format.tensors) and shapes, -1 for every dimension that is not fixed.

``init_model`` writes ``manifest.json`` beside the model from that description, with optional gate
data (golden samples, a validation set: .npz files in the layout ``service.gate`` reads, arrays
``inputs.<input name>`` and ``labels``), copied beside the model when they are elsewhere. The
directory is then a model directory as ``edgeai-runtime model install`` and ``edgeai-artifact
pack`` take it. Everything is checked before anything is written; a refusal writes nothing.

Both command lines (``edgeai-runtime model init``, ``edgeai-artifact init``) take their arguments
from ``add_init_arguments`` and run ``init_from_args``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.format.manifest import PRECISIONS, Manifest, ManifestError, TensorSignature, check_name
from edgeai_runtime.format.tensors import V2_TO_NUMPY, v2_datatype
from edgeai_runtime.fsutil import write_atomic

#: How many first bytes ``sniff_format`` needs.
SNIFF_BYTES = 16
#: The runtime that serves each format ``describe`` reads.
RUNTIME_OF_FORMAT = {"onnx": "onnxruntime", "tflite": "tflite"}
MANIFEST_FILE = "manifest.json"

#: onnxruntime's element type names (``tensor(<name>)``) that have a KServe v2 datatype here.
_ORT_ELEMENT = {"float": "float32", "double": "float64", "float16": "float16", "bool": "bool",
                "int8": "int8", "int16": "int16", "int32": "int32", "int64": "int64",
                "uint8": "uint8", "uint16": "uint16", "uint32": "uint32", "uint64": "uint64"}
_ORT_TENSOR = re.compile(r"^tensor\((\w+)\)$")


class ModelFileError(EdgeAIError, ValueError):
    """A model file (or its gate data) that ``model init`` cannot describe, or a manifest it will not
    overwrite. Reasons: ``unknown_format``, ``unreadable_model``, ``no_reader`` (the runtime library
    is not installed), ``unsupported_tensor``, ``bad_gate_data``, ``manifest_exists``, ``usage``."""

    default_reason = "bad_model"


def sniff_format(head: bytes) -> str:
    """The format of a model file from its first bytes: ``tflite`` (a flatbuffer with the TFL3
    identifier), ``onnx`` (a protobuf ModelProto: its first field is ir_version, tag 0x08), or
    ``unknown`` (which is what a serialised TensorRT plan is to this check)."""
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "tflite"
    if head[:1] == b"\x08":
        return "onnx"
    return "unknown"


@dataclass(frozen=True)
class ModelDescription:
    """What a model file is, read from the file itself."""
    path: str
    format: str                      # onnx | tflite
    runtime: str                     # the manifest runtime that loads it
    sha256: str
    size: int
    inputs: List[TensorSignature]
    outputs: List[TensorSignature]

    def to_dict(self) -> Dict[str, Any]:
        return {"path": self.path, "format": self.format, "runtime": self.runtime, "sha256": self.sha256,
                "size": self.size, "inputs": [_signature(t) for t in self.inputs],
                "outputs": [_signature(t) for t in self.outputs]}


def _signature(tensor: TensorSignature) -> Dict[str, Any]:
    return {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}


def _dims(shape: Optional[Sequence[Any]]) -> List[int]:
    """A shape as the manifest writes it: fixed dimensions as they are, -1 for any other
    (onnxruntime's symbolic names and None, LiteRT's -1 in ``shape_signature``)."""
    if shape is None:
        return []
    return [int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 else -1
            for d in shape]


def _onnx_tensors(model: bytes, path: str) -> Tuple[List[TensorSignature], List[TensorSignature]]:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")  # as service.backends.onnx.import_onnxruntime does
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelFileError("reading the ONNX model %s needs onnxruntime, which is not installed here "
                             "(pip install 'edgeai-device-runtime[onnx]')" % path, reason="no_reader") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: a refusal is reported once, by the exception
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types (InvalidProtobuf, Fail, InvalidGraph ...)
        raise ModelFileError("%s is not a loadable ONNX model: %s" % (path, _one_line(exc)),
                             reason="unreadable_model") from None

    def tensor(arg: Any, kind: str) -> TensorSignature:
        found = _ORT_TENSOR.match(str(arg.type))
        element = _ORT_ELEMENT.get(found.group(1)) if found else None
        if element is None:
            raise ModelFileError("%s: %s %r is %s, which has no KServe v2 datatype the runtime serves (%s)"
                                 % (path, kind, arg.name, arg.type, ", ".join(V2_TO_NUMPY)),
                                 reason="unsupported_tensor")
        return TensorSignature(str(arg.name), v2_datatype(element), _dims(arg.shape))

    return ([tensor(a, "input") for a in session.get_inputs()],
            [tensor(a, "output") for a in session.get_outputs()])


def _interpreter_module() -> Any:
    """LiteRT's interpreter module, else tflite-runtime's (as the tflite backend takes them), else None."""
    try:
        from ai_edge_litert import interpreter
        return interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as older
        return older
    except ImportError:
        return None


def _tflite_tensors(model: bytes, path: str) -> Tuple[List[TensorSignature], List[TensorSignature]]:
    module = _interpreter_module()
    if module is None:
        raise ModelFileError("reading the TFLite model %s needs ai-edge-litert or tflite-runtime, neither of which "
                             "is installed here (pip install 'edgeai-device-runtime[litert]')" % path,
                             reason="no_reader")
    try:
        interpreter = module.Interpreter(model_content=model)
        details = (interpreter.get_input_details(), interpreter.get_output_details())
    except Exception as exc:  # ValueError for a bad flatbuffer, RuntimeError for unresolved ops
        raise ModelFileError("%s is not a loadable TFLite model: %s" % (path, _one_line(exc)),
                             reason="unreadable_model") from None

    def tensor(detail: Any, kind: str) -> TensorSignature:
        try:
            datatype = v2_datatype(detail["dtype"])
        except (ValueError, TypeError):
            raise ModelFileError("%s: %s %r is %s, which has no KServe v2 datatype the runtime serves (%s)"
                                 % (path, kind, detail["name"], np.dtype(detail["dtype"]), ", ".join(V2_TO_NUMPY)),
                                 reason="unsupported_tensor") from None
        shape = [int(d) for d in detail["shape"]]
        signature = [int(d) for d in detail.get("shape_signature", shape)]
        dims = signature if len(signature) == len(shape) else shape
        return TensorSignature(str(detail["name"]), datatype, _dims(dims))

    return [tensor(d, "input") for d in details[0]], [tensor(d, "output") for d in details[1]]


def _one_line(message: object, limit: int = 300) -> str:
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ModelFileError("reading %s %s: %s" % (what, path, exc.strerror or exc),
                             reason="unreadable_model" if what == "the model" else "bad_gate_data") from None


def describe(path: str) -> ModelDescription:
    """Read the model file at ``path``: its format (from its first bytes), inputs, outputs, sha256, size."""
    path = os.path.abspath(path)
    model = _read(path, "the model")
    found = sniff_format(model[:SNIFF_BYTES])
    if found not in RUNTIME_OF_FORMAT:
        raise ModelFileError("%s is neither an ONNX nor a TFLite model (its first bytes are %s)"
                             % (path, model[:8].hex() or "none: the file is empty"), reason="unknown_format")
    read = _onnx_tensors if found == "onnx" else _tflite_tensors
    inputs, outputs = read(model, path)
    if not inputs or not outputs:
        raise ModelFileError("%s has no %s" % (path, "inputs" if not inputs else "outputs"),
                             reason="unreadable_model")
    return ModelDescription(path, found, RUNTIME_OF_FORMAT[found], hashlib.sha256(model).hexdigest(), len(model),
                            inputs, outputs)


def check_gate_data(path: str, data: bytes, inputs: Sequence[TensorSignature]) -> int:
    """Refuse gate data ``run_gate`` could not use with these inputs; the number of rows it holds."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            loaded = {name: arrays[name] for name in arrays.files}
    except Exception as exc:  # numpy raises several types for a bad archive
        raise ModelFileError("%s is not a readable .npz file: %s" % (path, _one_line(exc)),
                             reason="bad_gate_data") from None
    missing = [n for n in ["labels"] + ["inputs." + t.name for t in inputs] if n not in loaded]
    if missing:
        raise ModelFileError("%s lacks arrays %s (gate data holds inputs.<input name> and labels)"
                             % (path, ", ".join(missing)), reason="bad_gate_data")
    labels = loaded["labels"]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ModelFileError("%s: labels must be a 1-D integer array (one class per row), not %s %s"
                             % (path, labels.dtype, list(labels.shape)), reason="bad_gate_data")
    for tensor in inputs:
        array = loaded["inputs." + tensor.name]
        want = V2_TO_NUMPY[tensor.datatype]
        fits = array.ndim == len(tensor.shape) and array.ndim > 0 and all(
            d == s or s == -1 for d, s in zip(array.shape[1:], tensor.shape[1:]))
        if array.dtype != want or not fits or len(array) != len(labels):
            raise ModelFileError("%s: inputs.%s is %s %s, but the model takes %s %s, with one row per label (%d)"
                                 % (path, tensor.name, array.dtype, list(array.shape), want, tensor.shape,
                                    len(labels)), reason="bad_gate_data")
    return len(labels)


def init_model(model_path: str, name: str, version: str, golden: Optional[str] = None,
               validation: Optional[str] = None, min_accuracy: Optional[float] = None,
               label_output: Optional[str] = None, precision: str = "fp32", force: bool = False) -> Dict[str, Any]:
    """Write ``manifest.json`` beside ``model_path`` from what the model says, with gate data copied
    beside it. Returns what was written (JSON for the CLIs): ``changed`` is false when the manifest
    and gate files there are already exactly these. Refuses (ModelFileError) before writing anything."""
    try:
        check_name("name", name)
        check_name("version", version)
    except ManifestError as exc:
        raise ModelFileError(str(exc), reason="usage") from None
    if precision not in PRECISIONS:
        raise ModelFileError("precision %r is not one of %s" % (precision, ", ".join(PRECISIONS)), reason="usage")
    if min_accuracy is not None and not validation:
        raise ModelFileError("--min-accuracy needs --validation: the accuracy is measured on the validation set",
                             reason="usage")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise ModelFileError("--min-accuracy %s must be from 0 to 1" % min_accuracy, reason="usage")
    model = describe(model_path)
    directory = os.path.dirname(model.path)
    model_file = os.path.basename(model.path)
    try:
        check_name("model file name", model_file)
    except ManifestError as exc:
        raise ModelFileError("%s; rename the model file" % exc, reason="usage") from None
    outputs = [t.name for t in model.outputs]
    if label_output is not None and label_output not in outputs:
        raise ModelFileError("--label-output %r is not an output of %s (it has %s)"
                             % (label_output, model.path, ", ".join(outputs)), reason="usage")

    gate: Dict[str, Tuple[str, bytes]] = {}     # file name beside the model -> (source path, bytes)
    gate_names: Dict[str, Optional[str]] = {"golden": None, "dataset": None}
    rows: Dict[str, int] = {}
    for key, source in (("golden", golden), ("dataset", validation)):
        if not source:
            continue
        fname = os.path.basename(source)
        try:
            check_name("gate file name", fname)
        except ManifestError as exc:
            raise ModelFileError("%s; rename %s" % (exc, source), reason="usage") from None
        if fname in (MANIFEST_FILE, model_file) or fname in gate:
            raise ModelFileError("gate file %s would clash with %s beside the model; rename it"
                                 % (source, "the other gate file" if fname in gate else fname), reason="usage")
        data = _read(source, "gate data")
        rows[key] = check_gate_data(source, data, model.inputs)
        gate[fname] = (os.path.abspath(source), data)
        gate_names[key] = fname

    fields: Dict[str, Any] = {
        "name": name, "version": version, "runtime": model.runtime, "precision": precision,
        "sha256": model.sha256, "size": model.size, "model_file": model_file,
        "inputs": [_signature(t) for t in model.inputs], "outputs": [_signature(t) for t in model.outputs],
        "files": {fname: hashlib.sha256(data).hexdigest() for fname, (_src, data) in gate.items()},
        "validation": dict(gate_names, accuracy_threshold=min_accuracy, label_output=label_output),
    }
    try:
        manifest = Manifest.from_dict(fields)
    except ManifestError as exc:  # what the model says and the manifest cannot hold
        raise ModelFileError("%s: %s" % (model.path, exc), reason="unsupported_tensor") from None
    text = manifest.to_json().encode()

    writes: List[Tuple[str, bytes]] = []
    for fname, (source, data) in gate.items():
        target = os.path.join(directory, fname)
        if os.path.exists(target) and os.path.realpath(target) == os.path.realpath(source):
            continue
        if _same(target, data):
            continue
        if os.path.exists(target) and not force:
            raise ModelFileError("%s exists and is not %s; pass --force to replace it" % (target, source),
                                 reason="manifest_exists")
        writes.append((target, data))
    manifest_path = os.path.join(directory, MANIFEST_FILE)
    if not _same(manifest_path, text):
        if os.path.exists(manifest_path) and not force:
            raise ModelFileError("%s exists and says something else; pass --force to replace it" % manifest_path,
                                 reason="manifest_exists")
        writes.append((manifest_path, text))  # last: the directory is complete when it is there
    for target, data in writes:
        write_atomic(target, data, 0o644)
    return {"changed": bool(writes), "manifest_path": manifest_path, "model": model.path,
            "files": {fname: os.path.join(directory, fname) for fname in gate}, "rows": rows,
            "written": [target for target, _data in writes], "manifest": manifest.to_dict()}


def _same(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read() == data
    except OSError:
        return False


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``model init`` / ``edgeai-artifact init`` (``init_from_args`` reads them)."""
    parser.add_argument("model_file", metavar="MODEL_FILE",
                        help="the .onnx or .tflite file; the manifest goes beside it")
    parser.add_argument("--name", required=True, help="the model's name")
    parser.add_argument("--version", required=True, help="this build's version")
    parser.add_argument("--golden", metavar="FILE", help="golden samples (.npz: inputs.<input name>, labels)")
    parser.add_argument("--validation", metavar="FILE", help="validation set (.npz: inputs.<input name>, labels)")
    parser.add_argument("--min-accuracy", type=float, metavar="X",
                        help="accuracy (0-1) the validation set must reach before a version is activated")
    parser.add_argument("--label-output", help="the output whose argmax is the class (default: the first output)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="what the build is (default %(default)s; it is not read from the model)")
    parser.add_argument("--force", action="store_true", help="replace a manifest or gate file that says otherwise")


def init_from_args(args: argparse.Namespace) -> Dict[str, Any]:
    return init_model(args.model_file, args.name, args.version, golden=args.golden, validation=args.validation,
                      min_accuracy=args.min_accuracy, label_output=args.label_output, precision=args.precision,
                      force=args.force)
