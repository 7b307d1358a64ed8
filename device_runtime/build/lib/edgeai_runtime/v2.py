"""KServe v2 (Open Inference Protocol) JSON tensors: request decoding and validation, response encoding.

Pure functions: no HTTP here. Errors are V2Error with the HTTP status and a
message naming the offending field, as the protocol's ``{"error": ...}`` body.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .manifest import Manifest, TensorSignature
from .tensors import V2_TO_NUMPY, v2_datatype


class V2Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_json(body: bytes) -> Dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise V2Error(400, "request body is not valid JSON: %s" % exc) from None
    if not isinstance(data, dict):
        raise V2Error(400, "request body must be a JSON object")
    return data


def _shape_matches(shape: Sequence[int], spec: Sequence[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d == -1 for s, d in zip(shape, spec))


def decode_request(data: Mapping[str, Any], manifest: Manifest,
                   max_batch: Optional[int] = None) -> Tuple[Dict[str, np.ndarray], Optional[List[str]]]:
    """Turn a v2 infer request into {input name: array}, checked against the manifest.

    Returns the arrays and the requested output names (None for all).
    """
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "inputs: must be a non-empty list of tensors")
    specs = {t.name: t for t in manifest.inputs}
    arrays: Dict[str, np.ndarray] = {}
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
        arrays[name] = _decode_tensor(tensor, specs[name], "%s (%s)" % (where, name))
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


def _decode_tensor(tensor: Mapping[str, Any], spec: TensorSignature, where: str) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise V2Error(400, "%s.datatype: %r, but the model takes %s" % (where, datatype, spec.datatype))
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise V2Error(400, "%s.shape: must be a list of non-negative integers" % where)
    if not _shape_matches(shape, spec.shape):
        raise V2Error(400, "%s.shape: %s does not fit the model's %s (-1 is any size)" % (where, shape, spec.shape))
    if "data" not in tensor:
        raise V2Error(400, "%s.data: missing" % where)
    try:
        array = np.asarray(tensor["data"], dtype=V2_TO_NUMPY[datatype])
    except (TypeError, ValueError, OverflowError) as exc:
        raise V2Error(400, "%s.data: not %s values: %s" % (where, datatype, exc)) from None
    count = math.prod(shape)
    if array.size != count:
        raise V2Error(400, "%s.data: %d values, but shape %s holds %d" % (where, array.size, shape, count))
    return array.reshape(shape)


def encode_response(manifest: Manifest, outputs: Mapping[str, np.ndarray], request_id: Optional[str],
                    wanted: Optional[List[str]]) -> Dict[str, Any]:
    names = wanted or [t.name for t in manifest.outputs]
    body: Dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version, "outputs": [
        {"name": n, "datatype": v2_datatype(outputs[n].dtype), "shape": list(outputs[n].shape),
         "data": outputs[n].ravel().tolist()} for n in names]}
    if request_id is not None:
        body["id"] = request_id
    return body


def model_metadata(manifest: Manifest, platform: str) -> Dict[str, Any]:
    def tensors(sigs: Sequence[TensorSignature]) -> List[Dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sigs]
    return {"name": manifest.name, "versions": [manifest.version], "platform": platform,
            "inputs": tensors(manifest.inputs), "outputs": tensors(manifest.outputs)}
