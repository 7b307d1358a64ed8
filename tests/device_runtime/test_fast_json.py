"""The infer path's JSON with orjson (service/v2.py, service/app.py decode_body): what is accepted, what is
refused, and how the refusal is worded are the json module's; only the speed is orjson's.

Without orjson importable the comparisons are skipped (both sides would be the json module); the other
test files run the served path either way.
"""
from __future__ import annotations

import json
import random
import struct

import numpy as np
import pytest

from edgeai_runtime.format.manifest import Manifest, TensorSignature
from edgeai_runtime.service import app, v2
from edgeai_runtime.service.v2 import V2Error

needs_orjson = pytest.mark.skipif(not v2.FAST_JSON, reason="orjson is not importable")

MANIFEST = Manifest(name="m", version="1", runtime="onnxruntime", precision="fp32", sha256="0" * 64, size=1,
                    inputs=[TensorSignature("x", "FP32", [-1, 4]), TensorSignature("n", "INT64", [-1, 2])],
                    outputs=[TensorSignature("y", "FP32", [-1, 4])])


def request(x="[[1, 2, 3, 4]]", n="[[1, 2]]", x_shape="[1, 4]", n_shape="[1, 2]", extra="") -> bytes:
    text = ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": %s, "data": %s}, '
            '{"name": "n", "datatype": "INT64", "shape": %s, "data": %s}]%s}' % (x_shape, x, n_shape, n, extra))
    return text.encode()


def reading(body: bytes, fast: bool):
    """What decoding ``body`` gives: the arrays and the rest, or the refusal (status, message)."""
    try:
        arrays, wanted, request_id, binary = app._decode_body(body, None, MANIFEST, v2.MAX_TENSOR_ELEMENTS, fast)
    except V2Error as exc:
        return ("refused", exc.status, exc.message)
    return ({k: (a.dtype.str, a.shape, a.tobytes()) for k, a in arrays.items()}, wanted, request_id, binary)


@needs_orjson
def test_orjson_reads_every_number_as_the_json_module_does():
    """Random doubles written at every precision and exponent, and integers up to 64 bits: the same arrays."""
    rng = random.Random(14)
    floats = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _draw in range(4000)]
    floats = [f for f in floats if np.isfinite(f) and abs(f) < 3e38] + [rng.uniform(-1, 1) for _draw in range(4000)]
    texts = [repr(f) for f in floats] + ["%.*g" % (rng.randint(1, 25), f) for f in floats] + ["-0", "0.0", "1E5"]
    rows = len(texts) // 4
    x = "[%s]" % ", ".join(texts[:rows * 4])
    ints = [rng.randint(-2 ** 63, 2 ** 63 - 1) for _draw in range(rows * 2 - 2)] + [2 ** 63 - 1, -2 ** 63]
    body = request(x=x, n=json.dumps(ints), x_shape="[%d, 4]" % rows, n_shape="[%d, 2]" % rows)
    assert v2.parse_json(body, fast=True) == v2.parse_json(body, fast=False)
    fast, plain = reading(body, True), reading(body, False)
    assert fast[0] != "refused" and fast == plain


REFUSED = {
    # orjson reads an integer beyond 64 bits as a float: the json module's reading decides (413, not 400)
    "huge-int-in-shape": request(x_shape="[123456789012345678901234567890, 4]"),
    "huge-int-in-int64-data": request(n="[[1, 123456789012345678901234567890]]"),
    "huge-int-in-fp32-data": request(x="[[1, 2, 3, %d]]" % 10 ** 39),
    "float-overflow": request(x="[[1, 2, 3, 1e400]]"),
    "nan-literal": request(x="[[1, 2, NaN, 4]]"),
    "infinity-literal": request(x="[[1, 2, -Infinity, 4]]"),
    "lone-surrogate-name": request(extra=', "outputs": [{"name": "\\ud800"}]'),
    "byte-order-mark": b"\xef\xbb\xbf" + request(),
    "not-utf8": request().replace(b'"x"', b'"\xff"'),
    "too-deep": request(x="[" * 40 + "1" + "]" * 40),
    "not-an-object": b"[1, 2]",
    "trailing-garbage": request() + b" x",
    "float-in-int64": request(n="[[1, 2.5]]"),
}


@needs_orjson
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_refusal_and_its_message_do_not_depend_on_orjson(case):
    body = REFUSED[case]
    expected = reading(body, False)
    assert expected[0] == "refused", expected
    try:
        app.decode_body(body, None, MANIFEST, v2.MAX_TENSOR_ELEMENTS)  # what the service runs: orjson first
    except V2Error as exc:
        assert ("refused", exc.status, exc.message) == expected
    else:
        pytest.fail("accepted with orjson, refused without: %r" % (expected,))


def test_a_huge_integer_in_a_shape_is_a_413_on_either_path():
    with pytest.raises(V2Error) as caught:
        app.decode_body(REFUSED["huge-int-in-shape"], None, MANIFEST, v2.MAX_TENSOR_ELEMENTS)
    assert caught.value.status == 413


def test_dumps_writes_what_the_json_module_reads_back():
    payload, _raw = v2.encode_response(MANIFEST, {"y": np.array([[0.1, 1e-05, 3.4e38, -0.0]], dtype=np.float32)},
                                       "id-\u00e9", None)
    written = v2.dumps(payload)
    assert json.loads(written) == payload
    assert "id-\u00e9".encode() in written  # UTF-8, not \u escapes, as Starlette's JSONResponse writes


def test_nan_outputs_are_still_a_422_before_dumps():
    """orjson would write NaN as null: encode_response refuses first, whichever library writes."""
    with pytest.raises(V2Error) as caught:
        v2.encode_response(MANIFEST, {"y": np.array([[np.nan, 0, 0, 0]], dtype=np.float32)}, None, None)
    assert caught.value.status == 422
