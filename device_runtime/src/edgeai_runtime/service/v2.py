"""KServe v2 (Open Inference Protocol) JSON tensors: request decoding and validation, response encoding.

Pure functions: no HTTP here. Errors are V2Error with the HTTP status and a
message naming the offending field, as the protocol's ``{"error": ...}`` body.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.format.manifest import Manifest, TensorSignature
from edgeai_runtime.format.tensors import V2_TO_NUMPY, v2_datatype


class V2Error(EdgeAIError):
    """A KServe v2 request that does not check; ``status`` is the HTTP status to answer with."""

    default_reason = "bad_request"

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __reduce__(self) -> Tuple[type, Tuple[int, str]]:
        """Pickled by status and message, so that it comes back from the offload worker process."""
        return type(self), (self.status, self.message)


def parse_json(body: bytes) -> Dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise V2Error(400, "request body is not valid JSON: %s" % exc) from None
    if not isinstance(data, dict):
        raise V2Error(400, "request body must be a JSON object")
    return data


#: Header of the binary tensor data extension: the length of the JSON part of the body.
BINARY_HEADER = "inference-header-content-length"


def split_body(body: bytes, json_length: Optional[str]) -> Tuple[Dict[str, Any], bytes]:
    """The JSON request and, with the binary tensor data extension, the raw tensor bytes after it."""
    if json_length is None:
        return parse_json(body), b""
    if not json_length.isdigit() or int(json_length) > len(body):
        raise V2Error(400, "Inference-Header-Content-Length: %r does not fit a body of %d bytes"
                      % (json_length, len(body)))
    return parse_json(body[:int(json_length)]), body[int(json_length):]


def _shape_matches(shape: Sequence[int], spec: Sequence[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d == -1 for s, d in zip(shape, spec))


def decode_request(data: Mapping[str, Any], manifest: Manifest, max_batch: Optional[int] = None,
                   binary: bytes = b"") -> Tuple[Dict[str, np.ndarray], Optional[List[str]]]:
    """Turn a v2 infer request into {input name: array}, checked against the manifest.

    ``binary`` holds the tensors sent with the binary tensor data extension, in input order.
    Returns the arrays and the requested output names (None for all).
    """
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "inputs: must be a non-empty list of tensors")
    specs = {t.name: t for t in manifest.inputs}
    arrays: Dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        where = "inputs[%d]" % i
        if not isinstance(tensor, dict):
            raise V2Error(400, "%s: must be an object with name, shape, datatype and data" % where)
        name = tensor.get("name")
        if name not in specs:
            raise V2Error(400, "%s.name: unknown input %r; %s %s takes %s"
                          % (where, name, manifest.name, manifest.version, ", ".join(sorted(specs))))
        if name in arrays:
            raise V2Error(400, "%s.name: input %r is given twice" % (where, name))
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise V2Error(400, "%s (%s).parameters.binary_data_size: %r bytes are not in the body"
                              % (where, name, size))
            chunk, offset = binary[offset:offset + size], offset + size
        else:
            chunk = None
        arrays[name] = _decode_tensor(tensor, specs[name], "%s (%s)" % (where, name), chunk)
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise V2Error(400, "inputs: missing %s" % ", ".join(missing))
    batches = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batches) > 1:
        raise V2Error(400, "inputs: batch sizes differ between inputs (%s)" % sorted(batches))
    if max_batch and batches and max(batches) > max_batch:
        raise V2Error(400, "inputs: batch of %d exceeds this device's max_batch_size %d" % (max(batches), max_batch))
    outputs = data.get("outputs")
    wanted = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                    for o in outputs):
            raise V2Error(400, "outputs: must be a list of objects with a name")
        known = {t.name for t in manifest.outputs}
        wanted = [o["name"] for o in outputs]
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise V2Error(400, "outputs: unknown output %r; %s %s gives %s"
                          % (unknown[0], manifest.name, manifest.version, ", ".join(sorted(known))))
    return arrays, wanted


def _decode_tensor(tensor: Mapping[str, Any], spec: TensorSignature, where: str,
                   chunk: Optional[bytes] = None) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise V2Error(400, "%s.datatype: %r, but the model takes %s" % (where, datatype, spec.datatype))
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise V2Error(400, "%s.shape: must be a list of non-negative integers" % where)
    if not _shape_matches(shape, spec.shape):
        raise V2Error(400, "%s.shape: %s does not fit the model's %s (-1 is any size)" % (where, shape, spec.shape))
    count = math.prod(shape)
    dtype = V2_TO_NUMPY[datatype]
    if chunk is not None:
        if len(chunk) != count * dtype.itemsize:
            raise V2Error(400, "%s.parameters.binary_data_size: %d bytes, but shape %s of %s takes %d"
                          % (where, len(chunk), shape, datatype, count * dtype.itemsize))
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    if "data" not in tensor:
        raise V2Error(400, "%s.data: missing" % where)
    try:
        array = np.asarray(tensor["data"], dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise V2Error(400, "%s.data: not %s values: %s" % (where, datatype, exc)) from None
    if array.size != count:
        raise V2Error(400, "%s.data: %d values, but shape %s holds %d" % (where, array.size, shape, count))
    return array.reshape(shape)


def binary_outputs(data: Mapping[str, Any], manifest: Manifest) -> List[str]:
    """The outputs the client asked to get as binary data (request-wide ``binary_data_output``,
    or ``binary_data`` on a requested output)."""
    everything = bool((data.get("parameters") or {}).get("binary_data_output"))
    requested = {o["name"]: bool((o.get("parameters") or {}).get("binary_data", everything))
                 for o in data.get("outputs") or []}
    if requested:
        return [n for n, binary in requested.items() if binary]
    return [t.name for t in manifest.outputs] if everything else []


def encode_response(manifest: Manifest, outputs: Mapping[str, np.ndarray], request_id: Optional[str],
                    wanted: Optional[List[str]], binary: Sequence[str] = ()) -> Tuple[Dict[str, Any], bytes]:
    """The v2 response: JSON, plus the little-endian bytes of the outputs in ``binary``, in order."""
    tensors, chunks = [], []
    for name in wanted or [t.name for t in manifest.outputs]:
        value = outputs[name]
        tensor: Dict[str, Any] = {"name": name, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
        if name in binary:
            raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = value.ravel().tolist()
        tensors.append(tensor)
    body: Dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version, "outputs": tensors}
    if request_id is not None:
        body["id"] = request_id
    return body, b"".join(chunks)


def model_metadata(manifest: Manifest, platform: str) -> Dict[str, Any]:
    def tensors(sigs: Sequence[TensorSignature]) -> List[Dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sigs]
    return {"name": manifest.name, "versions": [manifest.version], "platform": platform,
            "inputs": tensors(manifest.inputs), "outputs": tensors(manifest.outputs)}
