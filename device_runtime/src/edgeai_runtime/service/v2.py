"""KServe v2 (Open Inference Protocol) JSON tensors: request decoding and validation, response encoding.

Pure functions: no HTTP here. Errors are V2Error with the HTTP status and a
message naming the offending field, as the protocol's ``{"error": ...}`` body.
"""
from __future__ import annotations

import importlib
import json
import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

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


#: Deepest nesting of arrays and objects a request may have. A v2 request needs 3 levels plus the
#: rank of its tensors' nested ``data``; the bound is checked before decoding, so that deep input
#: cannot exhaust the parser's recursion.
MAX_JSON_DEPTH = 32
#: Most tensors in ``inputs`` (models served here take a handful).
MAX_INPUTS = 64
#: Most elements in one input tensor when the caller gives no bound: one per byte of the default
#: ``max_body_bytes`` (16 MiB). No JSON or binary tensor can hold more elements than its body has bytes.
MAX_TENSOR_ELEMENTS = 16 * 1024 ** 2

#: Every byte but brackets, braces and quotes, for ``bytes.translate`` to delete.
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1
_DEPTH_STEP[[ord("]"), ord("}")]] = -1
_QUOTE = ord('"')
_OPENERS = b"[{"
_SCAN_CHUNK = 1 << 20  # bytes per step of the depth scan: bounds its temporary arrays
_SHORT_STRUCTURE = 128  # brackets and quotes up to which the scan loops in Python


def json_depth(body: bytes, stop: Optional[int] = None) -> int:
    """How deep arrays and objects nest in a JSON text, by a linear scan that parses nothing.

    Escaped backslashes and quotes go first (``\\\\`` pairs, then ``\\"``: in valid JSON a run of
    backslashes pairs off from its start), then every byte but brackets and quotes; a bracket after
    an odd number of quotes is in a string. Exact for valid JSON in UTF-8, where every byte below
    0x80 is the character it looks like. The scan ends early, with a depth over ``stop``, once the
    depth passes it. About 1 ms per MB of tensor data, 10 ms per MB of nothing but brackets and quotes.
    """
    if b"\\" in body:
        body = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    text = body.translate(None, _NOT_STRUCTURE)
    if len(text) <= _SHORT_STRUCTURE:
        return _short_depth(text)
    structure = np.frombuffer(text, dtype=np.uint8)
    deepest, depth, odd = 0, 0, 0  # odd: 1 while the chunks so far end inside a string
    for begin in range(0, len(structure), _SCAN_CHUNK):
        part = structure[begin:begin + _SCAN_CHUNK]
        is_quote = part == _QUOTE
        # 1 outside strings, from the parity of the quotes so far (a uint8 sum wraps; its parity holds)
        outside = (((np.cumsum(is_quote, dtype=np.uint8) + odd) & 1) ^ 1).view(np.int8)
        running = np.cumsum(_DEPTH_STEP[part] * outside, dtype=np.int32) + depth
        deepest, depth = max(deepest, int(running.max())), int(running[-1])
        odd = (odd + int(np.count_nonzero(is_quote))) & 1
        if stop is not None and deepest > stop:
            break
    return deepest


def _short_depth(structure: bytes) -> int:
    """json_depth of a few brackets and quotes (most requests have a few dozen): a loop beats numpy's set-up."""
    deepest = depth = 0
    in_string = False
    for char in structure:
        if char == _QUOTE:
            in_string = not in_string
        elif not in_string:
            depth += 1 if char in _OPENERS else -1
            deepest = max(deepest, depth)
    return deepest


def _reject_constant(literal: str) -> Any:
    raise V2Error(400, "request body is not valid JSON: %s is not a JSON number (the v2 protocol has no "
                  "non-finite values in JSON)" % literal)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


#: orjson, when installed: it reads and writes v2 bodies 3-6x faster than the json module (bench/bench_kserve.py).
_orjson = _optional("orjson")
#: Whether ``fast`` parsing and :func:`dumps` use orjson.
FAST_JSON = _orjson is not None


def parse_json(body: bytes, fast: bool = False) -> Dict[str, Any]:
    """A JSON object from a request body (UTF-8, as RFC 8259 requires), nesting checked before it is parsed.

    With ``fast``, orjson (when installed) parses a body it accepts; anything else, and every refusal with its
    message, is the json module's. orjson refuses all the json module does (NaN and Infinity included) and
    more (integers beyond 64 bits, lone surrogates, 1e400), so a body is never accepted only because of it.
    """
    if fast and _orjson is not None and json_depth(body, stop=MAX_JSON_DEPTH) <= MAX_JSON_DEPTH:
        try:
            fast_data = _orjson.loads(body)
        except _orjson.JSONDecodeError:
            pass  # read below: the json module's answer, or its error message
        else:
            if isinstance(fast_data, dict):
                return fast_data
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise V2Error(400, "request body is not valid JSON: not UTF-8 (%s)" % exc) from None
    if json_depth(body, stop=MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise V2Error(400, "request body nests arrays and objects more than %d deep" % MAX_JSON_DEPTH)
    try:
        data = _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        raise V2Error(400, "request body is not valid JSON: %s" % exc) from None
    if not isinstance(data, dict):
        raise V2Error(400, "request body must be a JSON object")
    return data


#: Header of the binary tensor data extension: the length of the JSON part of the body.
BINARY_HEADER = "inference-header-content-length"


def split_body(body: bytes, json_length: Optional[str], fast: bool = False) -> Tuple[Dict[str, Any], bytes]:
    """The JSON request and, with the binary tensor data extension, the raw tensor bytes after it
    (``fast`` as for :func:`parse_json`)."""
    if json_length is None:
        return parse_json(body, fast), b""
    if not (json_length.isascii() and json_length.isdigit()) or int(json_length) > len(body):
        raise V2Error(400, "Inference-Header-Content-Length: %s does not fit a body of %d bytes"
                      % (_show(json_length), len(body)))
    return parse_json(body[:int(json_length)], fast), body[int(json_length):]


def _show(value: Any) -> str:
    """A client's value for an error message, cut short: an error never echoes a large body back."""
    text = "null" if value is None else ("true" if value else "false") if isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else type(value).__name__


def _parameters(holder: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """The ``parameters`` object of a request, tensor or output ({} when absent); ``where`` names the holder."""
    params = holder.get("parameters")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise V2Error(400, "%sparameters: must be an object, not %s"
                      % (where + "." if where else "", _json_type(params)))
    return params


def _flag(params: Mapping[str, Any], key: str, where: str) -> Optional[bool]:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise V2Error(400, "%s.%s: must be true or false, not %s" % (where, key, _json_type(value)))
    return value


def _shape_matches(shape: Sequence[int], spec: Sequence[int]) -> bool:
    return len(shape) == len(spec) and all(s == d or d == -1 for s, d in zip(shape, spec))


def decode_request(data: Mapping[str, Any], manifest: Manifest, max_batch: Optional[int] = None,
                   binary: bytes = b"", max_elements: int = MAX_TENSOR_ELEMENTS,
                   ) -> Tuple[Dict[str, np.ndarray], Optional[List[str]]]:
    """Turn a v2 infer request into {input name: array}, checked against the manifest.

    ``binary`` holds the tensors sent with the binary tensor data extension, in input order.
    ``max_elements`` bounds each tensor (413 above it), checked on its shape before its data.
    Returns the arrays and the requested output names (None for all).
    """
    request_id = data.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(400, "id: must be a string, not %s" % _json_type(request_id))
    _flag(_parameters(data, ""), "binary_data_output", "parameters")
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise V2Error(400, "inputs: must be a non-empty list of tensors")
    if len(inputs) > MAX_INPUTS:
        raise V2Error(400, "inputs: %d tensors; at most %d are accepted" % (len(inputs), MAX_INPUTS))
    specs = {t.name: t for t in manifest.inputs}
    arrays: Dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        where = "inputs[%d]" % i
        if not isinstance(tensor, dict):
            raise V2Error(400, "%s: must be an object with name, shape, datatype and data" % where)
        name = tensor.get("name")
        if not isinstance(name, str):
            raise V2Error(400, "%s.name: must be a string, not %s" % (where, _json_type(name)))
        if name not in specs:
            raise V2Error(400, "%s.name: unknown input %s; %s %s takes %s"
                          % (where, _show(name), manifest.name, manifest.version, ", ".join(sorted(specs))))
        if name in arrays:
            raise V2Error(400, "%s.name: input %r is given twice" % (where, name))
        where = "%s (%s)" % (where, name)
        size = _parameters(tensor, where).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise V2Error(400, "%s.parameters.binary_data_size: must be a non-negative integer, not %s"
                              % (where, _show(size)))
            if offset + size > len(binary):
                raise V2Error(400, "%s.parameters.binary_data_size: %d bytes are not in the body" % (where, size))
            chunk: Optional[bytes] = binary[offset:offset + size]
            offset += size
        else:
            chunk = None
        arrays[name] = _decode_tensor(tensor, specs[name], where, chunk, max_elements)
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise V2Error(400, "inputs: missing %s" % ", ".join(missing))
    batches = {a.shape[0] for a in arrays.values() if a.ndim}
    if len(batches) > 1:
        raise V2Error(400, "inputs: batch sizes differ between inputs (%s)" % sorted(batches))
    if max_batch and batches and max(batches) > max_batch:
        raise V2Error(400, "inputs: batch of %d exceeds this device's max_batch_size %d" % (max(batches), max_batch))
    return arrays, _requested_outputs(data, manifest)


def _requested_outputs(data: Mapping[str, Any], manifest: Manifest) -> Optional[List[str]]:
    """The names in ``outputs``, each checked (None when the request has no ``outputs``: all of them)."""
    outputs = data.get("outputs")
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise V2Error(400, "outputs: must be a list of objects with a name, not %s" % _json_type(outputs))
    known = {t.name for t in manifest.outputs}
    wanted: List[str] = []
    for i, output in enumerate(outputs):
        where = "outputs[%d]" % i
        if not isinstance(output, dict):
            raise V2Error(400, "%s: must be an object with a name, not %s" % (where, _json_type(output)))
        name = output.get("name")
        if not isinstance(name, str):
            raise V2Error(400, "%s.name: must be a string, not %s" % (where, _json_type(name)))
        if name not in known:
            raise V2Error(400, "outputs: unknown output %s; %s %s gives %s"
                          % (_show(name), manifest.name, manifest.version, ", ".join(sorted(known))))
        if name in wanted:  # each copy would be encoded again: a small request for a large answer
            raise V2Error(400, "%s.name: output %r is asked for twice" % (where, name))
        _flag(_parameters(output, where), "binary_data", where + ".parameters")
        wanted.append(name)
    return wanted


def _decode_tensor(tensor: Mapping[str, Any], spec: TensorSignature, where: str,
                   chunk: Optional[bytes] = None, max_elements: int = MAX_TENSOR_ELEMENTS) -> np.ndarray:
    datatype = tensor.get("datatype")
    if datatype != spec.datatype:
        raise V2Error(400, "%s.datatype: %s, but the model takes %s" % (where, _show(datatype), spec.datatype))
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        raise V2Error(400, "%s.shape: must be a list of non-negative integers, not %s" % (where, _json_type(shape)))
    for i, size in enumerate(shape):
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise V2Error(400, "%s.shape[%d]: %s is not a non-negative integer" % (where, i, _show(size)))
    if not _shape_matches(shape, spec.shape):
        raise V2Error(400, "%s.shape: %s does not fit the model's %s (-1 is any size)"
                      % (where, _show(shape), spec.shape))
    count = math.prod(shape)
    if count > max_elements:
        raise V2Error(413, "%s.shape: %s holds more than the %d elements a tensor may have"
                      % (where, _show(shape), max_elements))
    dtype = V2_TO_NUMPY[datatype]
    if chunk is not None:
        if len(chunk) != count * dtype.itemsize:
            raise V2Error(400, "%s.parameters.binary_data_size: %d bytes, but shape %s of %s takes %d"
                          % (where, len(chunk), shape, datatype, count * dtype.itemsize))
        return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    if "data" not in tensor:
        raise V2Error(400, "%s.data: missing" % where)
    array = _json_data(tensor["data"], datatype, where + ".data")
    if array.size != count:
        raise V2Error(400, "%s.data: %d values, but shape %s holds %d" % (where, array.size, shape, count))
    return array.reshape(shape)


#: The numpy kinds (of the array numpy makes from the JSON values) each datatype takes.
_KINDS = {"BOOL": "b", "FP16": "iuf", "FP32": "iuf", "FP64": "iuf"}


def _json_data(values: Any, datatype: str, where: str) -> np.ndarray:
    """A tensor's JSON ``data`` (flat or nested row-major) as an array of ``datatype``, every value checked.

    numpy reads the values once, with the type it finds; that type and the values' range decide.
    Only when they do not fit does a walk over the values find the first one to name.
    """
    if not isinstance(values, list):
        raise V2Error(400, "%s: must be a list of %s values, not %s" % (where, datatype, _json_type(values)))
    dtype = V2_TO_NUMPY[datatype]
    try:
        found = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        _explain(values, datatype, where)
        raise V2Error(400, "%s: nested lists of unequal length; a tensor's data is one flat or nested "
                      "row-major list" % where) from None
    if found.dtype.kind == "O" and dtype.kind == "f":  # ints too large for int64, with nothing else wrong
        _explain(values, datatype, where)
        found = np.asarray(values, dtype=np.float64)
    if found.size == 0:
        return found.astype(dtype)
    fits = found.dtype.kind in _KINDS.get(datatype, "iu")
    if fits and dtype.kind in "iu":
        info = np.iinfo(dtype)
        fits = bool(found.min() >= info.min and found.max() <= info.max)
    if fits and found.dtype.kind == "f":
        fits = bool(np.isfinite(found).all())
    array = found
    if fits:
        with np.errstate(over="ignore"):
            array = found.astype(dtype, copy=False)
        fits = dtype.kind != "f" or bool(np.isfinite(array).all())
    if not fits:
        _explain(values, datatype, where)
        raise V2Error(400, "%s: not %s values" % (where, datatype))
    return array


def _elements(values: List[Any], index: Tuple[int, ...] = ()) -> Iterator[Tuple[Tuple[int, ...], Any]]:
    for i, value in enumerate(values):
        if isinstance(value, list):
            yield from _elements(value, index + (i,))
        else:
            yield index + (i,), value


def _explain(values: List[Any], datatype: str, where: str) -> None:
    """Raise the V2Error that names the first value ``datatype`` cannot hold; return if there is none."""
    dtype = V2_TO_NUMPY[datatype]
    for index, value in _elements(values):
        problem = _value_problem(value, datatype, dtype)
        if problem:
            raise V2Error(400, "%s[%s]: %s" % (where, "][".join(map(str, index)), problem))


def _value_problem(value: Any, datatype: str, dtype: np.dtype) -> Optional[str]:
    if datatype == "BOOL":
        return None if isinstance(value, bool) else "%s is not a boolean (BOOL data is true or false)" % _show(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "%s is not a number" % _show(value)
    if dtype.kind in "iu":
        if not isinstance(value, int):
            return "%s is not an integer (%s data is integers)" % (_show(value), datatype)
        info = np.iinfo(dtype)
        return None if info.min <= value <= info.max else "%s is out of range for %s" % (_show(value), datatype)
    try:
        number = float(value)
    except OverflowError:
        return "%s is out of range for %s" % (_show(value), datatype)
    if not math.isfinite(number):
        return "%s is not finite" % _show(value)
    with np.errstate(over="ignore"):
        held = dtype.type(number)
    return None if math.isfinite(held) else "%s is out of range for %s" % (_show(value), datatype)


def binary_outputs(data: Mapping[str, Any], manifest: Manifest) -> List[str]:
    """The outputs the client asked to get as binary data (request-wide ``binary_data_output``,
    or ``binary_data`` on a requested output)."""
    everything = bool(_parameters(data, "").get("binary_data_output"))
    requested = {o["name"]: bool(_parameters(o, "outputs[%d]" % i).get("binary_data", everything))
                 for i, o in enumerate(data.get("outputs") or [])}
    if requested:
        return [n for n, binary in requested.items() if binary]
    return [t.name for t in manifest.outputs] if everything else []


def encode_response(manifest: Manifest, outputs: Mapping[str, np.ndarray], request_id: Optional[str],
                    wanted: Optional[List[str]], binary: Sequence[str] = ()) -> Tuple[Dict[str, Any], bytes]:
    """The v2 response: JSON, plus the little-endian bytes of the outputs in ``binary``, in order.

    JSON has no NaN or infinity: an output in JSON that holds one is a 500 that says so, and that
    binary data (which carries any value) gets it.
    """
    tensors, chunks = [], []
    for name in wanted or [t.name for t in manifest.outputs]:
        value = outputs[name]
        tensor: Dict[str, Any] = {"name": name, "datatype": v2_datatype(value.dtype), "shape": list(value.shape)}
        if name in binary:
            raw = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise V2Error(422, "output %s holds NaN or infinite values, which JSON cannot carry; ask for it "
                              "as binary data (binary tensor extension: \"parameters\": {\"binary_data\": true} on "
                              "the output, or \"binary_data_output\": true on the request)" % name)
            tensor["data"] = value.ravel().tolist()
        tensors.append(tensor)
    body: Dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version, "outputs": tensors}
    if request_id is not None:
        body["id"] = request_id
    return body, b"".join(chunks)


def dumps(payload: Mapping[str, Any]) -> bytes:
    """A response body: orjson when installed, else what Starlette's JSONResponse writes. The payload holds no
    NaN or infinity (encode_response refuses them; orjson would write null, the json module raise)."""
    if _orjson is not None:
        return bytes(_orjson.dumps(payload))
    return json.dumps(payload, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


def model_metadata(manifest: Manifest, platform: str) -> Dict[str, Any]:
    def tensors(sigs: Sequence[TensorSignature]) -> List[Dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in sigs]
    return {"name": manifest.name, "versions": [manifest.version], "platform": platform,
            "inputs": tensors(manifest.inputs), "outputs": tensors(manifest.outputs)}
