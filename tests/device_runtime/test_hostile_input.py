"""Hostile and malformed input against the real service on 127.0.0.1 (issue 14, builds 2 and 4).

Every case gets a 4xx (a 422 for an output that JSON cannot carry: the same request asking for binary
output gets it; a JSON 500 with a request id where the service itself fails) with the
v2 ``{"error": str}`` object naming the field; after each, the service is still ready and still
answers a valid inference right. Models: the digits MLP, and two graphs built here with
onnx.helper: ``log`` (y = Log(x), so x <= 0 really gives NaN and -inf) and ``types`` (BOOL and
INT8 inputs, for the datatype range checks).
"""
from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from onnx import TensorProto, checker, helper
from starlette.requests import Request
from starlette.routing import Route

from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.device.store import ModelStore
from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.service.app import create_app
from edgeai_runtime.service.v2 import BINARY_HEADER, MAX_INPUTS, MAX_JSON_DEPTH
from support.digits_store import install_digits
from support.service import start_service, write_config

BODY_LIMIT = 1024 * 1024


def _onnx(nodes, inputs, outputs) -> bytes:
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17)], producer_name="edgeai-tests")
    model.ir_version = 8
    checker.check_model(model)
    return model.SerializeToString()


def log_model() -> bytes:
    """x FP32 [N, 4] -> y = Log(x): NaN for x < 0, -inf for x == 0."""
    return _onnx([helper.make_node("Log", ["x"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])


def types_model() -> bytes:
    """flag BOOL [N, 2] -> not_flag = Not(flag); small INT8 [N, 2] -> same = Identity(small)."""
    return _onnx([helper.make_node("Not", ["flag"], ["not_flag"]), helper.make_node("Identity", ["small"], ["same"])],
                 [helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N", 2]),
                  helper.make_tensor_value_info("small", TensorProto.INT8, ["N", 2])],
                 [helper.make_tensor_value_info("not_flag", TensorProto.BOOL, ["N", 2]),
                  helper.make_tensor_value_info("same", TensorProto.INT8, ["N", 2])])


def reshape_model() -> bytes:
    """x FP32 [N, 4], target INT64 [2] -> y = Reshape(x, target): ONNX Runtime fails on a target that does not fit."""
    return _onnx([helper.make_node("Reshape", ["x", "target"], ["y"])],
                 [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                  helper.make_tensor_value_info("target", TensorProto.INT64, [2])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["A", "B"])])


def install(store: ModelStore, name: str, model: bytes, inputs, outputs) -> None:
    store.install(Manifest.for_model(name, "1", "onnxruntime", "fp32", model, inputs=inputs, outputs=outputs), model)
    store.activate(name, "1")


@dataclass
class Served:
    client: httpx.Client
    root: object
    #: request ids of the failures the tests cause on purpose: the only tracebacks the service may log
    failures: list = field(default_factory=list)


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits, digits_onnx):
    root = tmp_path_factory.mktemp("device")
    store = ModelStore(str(root))
    install_digits(store, "1.0.0", digits_onnx, digits)
    store.activate("digits", "1.0.0")
    install(store, "log", log_model(), [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
            [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}])
    install(store, "types", types_model(),
            [{"name": "flag", "datatype": "BOOL", "shape": [-1, 2]},
             {"name": "small", "datatype": "INT8", "shape": [-1, 2]}],
            [{"name": "not_flag", "datatype": "BOOL", "shape": [-1, 2]},
             {"name": "same", "datatype": "INT8", "shape": [-1, 2]}])
    install(store, "reshape", reshape_model(),
            [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
             {"name": "target", "datatype": "INT64", "shape": [2]}],
            [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}])
    write_config(root, max_body_bytes=BODY_LIMIT, max_batch_size=8)
    proc, base = start_service(root)
    with httpx.Client(base_url=base, timeout=30) as client:
        yield Served(client, root)
    proc.terminate()
    proc.wait(timeout=30)


def digits_body(x: np.ndarray) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}


def assert_still_serving(served: Served, digits) -> None:
    """Ready, and a valid inference still gives the model's answer."""
    client = served.client
    assert client.get("/v2/health/ready").status_code == 200
    x = digits.X_test[:4]
    reply = client.post("/v2/models/digits/infer", json=digits_body(x))
    assert reply.status_code == 200, reply.text
    probs = {o["name"]: o for o in reply.json()["outputs"]}["probabilities"]
    np.testing.assert_allclose(np.array(probs["data"], np.float32).reshape(4, 10), digits.predict_proba(x), atol=1e-4)


def assert_json_error(reply: httpx.Response, status: int, needle: str) -> None:
    assert reply.status_code == status, (reply.status_code, reply.text)
    assert reply.headers["content-type"] == "application/json", reply.headers
    body = reply.json()
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    assert needle in body["error"], body["error"]


def row(**tensor) -> bytes:
    """A digits request of one row whose tensor has ``tensor``'s fields replaced (JSON bytes)."""
    body = digits_body(np.full((1, 64), 0.5, np.float32))
    body["inputs"][0].update(tensor)
    return json.dumps(body).encode()


def with_data(literal: str, at: int = 0) -> bytes:
    """One digits row whose data holds the raw JSON ``literal`` at index ``at`` (json.dumps cannot write some)."""
    values = ["0.5"] * 64
    values[at] = literal
    return row(data=[]).replace(b'"data": []', b'"data": [' + ",".join(values).encode() + b"]")


def edit(change) -> bytes:
    body = json.loads(row())
    change(body)
    return json.dumps(body).encode()


def nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


# (id, model, body, status, what the error must say)
DIGITS_CASES = [
    ("nan-in-data", with_data("NaN", 3), 400, "NaN is not a JSON number"),
    ("infinity-in-data", with_data("Infinity"), 400, "Infinity is not a JSON number"),
    ("minus-infinity-in-data", with_data("-Infinity"), 400, "-Infinity is not a JSON number"),
    ("1e39-in-fp32-data", with_data("1e39", 5), 400, "inputs[0] (input).data[5]: 1e+39 is out of range for FP32"),
    ("1e400-in-data", with_data("1e400"), 400, "inputs[0] (input).data[0]: inf is not finite"),
    ("null-in-data", with_data("null", 7), 400, "inputs[0] (input).data[7]: null is not a number"),
    ("string-in-data", with_data('"0.5"'), 400, "inputs[0] (input).data[0]: '0.5' is not a number"),
    ("booleans-as-fp32", row(data=[True] * 64), 400, "inputs[0] (input).data[0]: true is not a number"),
    ("data-not-a-list", row(data={"a": 1}), 400, "inputs[0] (input).data: must be a list of FP32 values"),
    ("ragged-nested-data", row(shape=[2, 64], data=[[0.5] * 64, [0.5] * 63]), 400,
     "inputs[0] (input).data: nested lists of unequal length"),
    ("request-parameters-list", edit(lambda b: b.update(parameters=[])), 400, "parameters: must be an object"),
    ("request-parameters-string", edit(lambda b: b.update(parameters="x")), 400, "parameters: must be an object"),
    ("request-parameters-null-pair", edit(lambda b: b.update(parameters=[None, None])), 400,
     "parameters: must be an object, not an array"),
    ("tensor-parameters-list", row(parameters=[]), 400, "inputs[0] (input).parameters: must be an object"),
    ("tensor-parameters-string", row(parameters="binary"), 400, "inputs[0] (input).parameters: must be an object"),
    ("tensor-parameters-null-pair", row(parameters=[None, None]), 400,
     "inputs[0] (input).parameters: must be an object"),
    ("output-parameters-list", edit(lambda b: b.update(outputs=[{"name": "label", "parameters": []}])), 400,
     "outputs[0].parameters: must be an object"),
    ("output-parameters-string", edit(lambda b: b.update(outputs=[{"name": "label", "parameters": "x"}])), 400,
     "outputs[0].parameters: must be an object"),
    ("output-parameters-null-pair", edit(lambda b: b.update(outputs=[{"name": "label", "parameters": [None, None]}])),
     400, "outputs[0].parameters: must be an object"),
    ("binary-data-output-not-bool", edit(lambda b: b.update(parameters={"binary_data_output": "yes"})), 400,
     "parameters.binary_data_output: must be true or false"),
    ("binary-data-size-bool", row(parameters={"binary_data_size": True}), 400,
     "inputs[0] (input).parameters.binary_data_size: must be a non-negative integer, not true"),
    ("boolean-in-shape", row(shape=[True, 64]), 400, "inputs[0] (input).shape[0]: true is not a non-negative integer"),
    ("float-in-shape", row(shape=[1, 64.0]), 400, "inputs[0] (input).shape[1]: 64.0 is not a non-negative integer"),
    ("shape-not-a-list", row(shape="1x64"), 400, "inputs[0] (input).shape: must be a list"),
    ("name-not-a-string", row(name=["input"]), 400, "inputs[0].name: must be a string, not an array"),
    ("tensor-not-an-object", edit(lambda b: b.update(inputs=["input"])), 400, "inputs[0]: must be an object"),
    ("id-not-a-string", edit(lambda b: b.update(id=7)), 400, "id: must be a string, not a number"),
    ("output-not-an-object", edit(lambda b: b.update(outputs=["label"])), 400, "outputs[0]: must be an object"),
    ("output-name-not-a-string", edit(lambda b: b.update(outputs=[{"name": 1}])), 400,
     "outputs[0].name: must be a string"),
    ("output-asked-twice", edit(lambda b: b.update(outputs=[{"name": "label"}] * 2)), 400,
     "outputs[1].name: output 'label' is asked for twice"),
    ("too-many-tensors", edit(lambda b: b.update(inputs=b["inputs"] * (MAX_INPUTS + 1))), 400,
     "inputs: %d tensors; at most %d" % (MAX_INPUTS + 1, MAX_INPUTS)),
    ("elements-over-the-limit", row(shape=[10 ** 6, 64]), 413,
     "inputs[0] (input).shape: [1000000, 64] holds more than"),
    ("nested-33-deep", nested(MAX_JSON_DEPTH + 1), 400, "nests arrays and objects more than %d deep" % MAX_JSON_DEPTH),
    ("nested-32-deep-is-parsed", nested(MAX_JSON_DEPTH - 1), 400, "inputs[0]: must be an object"),
    ("nested-1000-deep", nested(1000), 400, "more than %d deep" % MAX_JSON_DEPTH),
    ("nested-100000-deep", nested(100000), 400, "more than %d deep" % MAX_JSON_DEPTH),
    ("deep-brackets-in-a-string-are-no-nesting", row(name="[" * 1000), 400, "inputs[0].name: unknown input '[[[["),
    ("not-utf8", b'{"inputs": "\xff"}', 400, "not UTF-8"),
    ("binary-header-not-digits", None, 400, "Inference-Header-Content-Length"),
]


@pytest.mark.parametrize("body,status,needle", [c[1:] for c in DIGITS_CASES], ids=[c[0] for c in DIGITS_CASES])
def test_hostile_digits_request_is_a_json_4xx(served, digits, body, status, needle):
    if body is None:  # a header that str.isdigit() takes but int() does not: '²' in latin-1
        reply = served.client.post("/v2/models/digits/infer", content=row(),
                                   headers={"content-type": "application/json", BINARY_HEADER: b"\xb2"})
    else:
        reply = served.client.post("/v2/models/digits/infer", content=body,
                                   headers={"content-type": "application/json"})
    assert_json_error(reply, status, needle)
    assert_still_serving(served, digits)


def types_body(flag, small, shape=(1, 2)) -> dict:
    return {"inputs": [{"name": "flag", "shape": list(shape), "datatype": "BOOL", "data": flag},
                       {"name": "small", "shape": list(shape), "datatype": "INT8", "data": small}]}


TYPES_CASES = [
    ("int8-over-127", types_body([True, False], [1, 128]), "inputs[1] (small).data[1]: 128 is out of range for INT8"),
    ("int8-under-minus-128", types_body([True, False], [-129, 0]), "data[0]: -129 is out of range for INT8"),
    ("int8-huge", types_body([True, False], [2 ** 70, 0]), "data[0]: 1180591620717411303424 is out of range for INT8"),
    ("int8-fraction", types_body([True, False], [1.5, 0]), "(small).data[0]: 1.5 is not an integer"),
    ("int8-null", types_body([True, False], [None, 0]), "(small).data[0]: null is not a number"),
    ("int8-booleans", types_body([True, False], [True, False]), "(small).data[0]: true is not a number"),
    ("bool-as-integers", types_body([1, 0], [1, 2]), "inputs[0] (flag).data[0]: 1 is not a boolean"),
    ("bool-as-strings", types_body(["true", "false"], [1, 2]), "(flag).data[0]: 'true' is not a boolean"),
    ("bool-mixed", types_body([[True, 0]], [[1, 2]]), "(flag).data[0][1]: 0 is not a boolean"),
]


@pytest.mark.parametrize("body,needle", [c[1:] for c in TYPES_CASES], ids=[c[0] for c in TYPES_CASES])
def test_values_out_of_their_datatype_are_a_json_400(served, digits, body, needle):
    assert_json_error(served.client.post("/v2/models/types/infer", json=body), 400, needle)
    assert_still_serving(served, digits)


def test_valid_values_of_every_kind_still_serve(served, digits):
    client = served.client
    reply = client.post("/v2/models/types/infer", json=types_body([[True, False], [False, False]],
                                                                  [[-128, 127], [0, -1]], shape=(2, 2)))
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    assert outputs["not_flag"] == {"name": "not_flag", "datatype": "BOOL", "shape": [2, 2],
                                   "data": [False, True, True, True]}
    assert outputs["same"]["data"] == [-128, 127, 0, -1]
    # Nested row-major data, ints in an FP32 tensor, and a string id all still work.
    x = np.rint(digits.X_test[:3])
    body = {"id": "nested", "inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                                        "data": x.astype(int).tolist()}]}
    reply = client.post("/v2/models/digits/infer", json=body)
    assert reply.status_code == 200 and reply.json()["id"] == "nested", reply.text
    probs = {o["name"]: o for o in reply.json()["outputs"]}["probabilities"]
    np.testing.assert_allclose(np.array(probs["data"]).reshape(3, 10), digits.predict_proba(x), atol=1e-4)


def test_nan_output_is_a_clear_json_422_and_binary_data_carries_it(served, digits):
    client = served.client
    x = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [-1.0, 0.0, 1.0, 4.0]}]}
    reply = client.post("/v2/models/log/infer", json=x)
    assert_json_error(reply, 422, "output y holds NaN or infinite values, which JSON cannot carry")
    assert "binary_data" in reply.json()["error"]
    assert_still_serving(served, digits)
    # The same request asking for y as binary data gets NaN and -inf, bit for bit.
    x["outputs"] = [{"name": "y", "parameters": {"binary_data": True}}]
    reply = client.post("/v2/models/log/infer", json=x)
    assert reply.status_code == 200, reply.text
    length = int(reply.headers[BINARY_HEADER])
    header = json.loads(reply.content[:length])
    assert header["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [1, 4],
                                  "parameters": {"binary_data_size": 16}}]
    y = np.frombuffer(reply.content[length:], dtype="<f4")
    assert np.isnan(y[0]) and y[1] == -np.inf and y[2] == 0.0 and y[3] == pytest.approx(np.log(4.0))
    # Finite outputs still come back as JSON.
    reply = client.post("/v2/models/log/infer", json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                                  "data": [1.0, 1.0, 1.0, 1.0]}]})
    assert reply.status_code == 200 and reply.json()["outputs"][0]["data"] == [0.0] * 4, reply.text


ROUTES = [("/v2/health/live", "GET"), ("/v2/health/ready", "GET"), ("/v2", "GET"), ("/v2/models/digits", "GET"),
          ("/v2/models/digits/versions/1.0.0", "GET"), ("/v2/models/digits/ready", "GET"),
          ("/v2/models/digits/versions/1.0.0/ready", "GET"), ("/v2/models/digits/infer", "POST"),
          ("/v2/models/digits/versions/1.0.0/infer", "POST"), ("/metrics", "GET"), ("/openapi.json", "GET"),
          ("/v2/models/stats", "GET"),
          ("/v2/admin/status", "GET"), ("/v2/admin/reload", "POST"), ("/v2/admin/models/digits/prepare", "POST"),
          ("/v2/admin/models/digits/activate", "POST"), ("/v2/admin/models/digits/rollback", "POST"),
          ("/v2/admin/models/digits/discard", "POST")]


def test_every_route_is_listed_here(tmp_path):
    """ROUTES covers the app's routes, so that the wrong-method test below covers every one."""
    app = create_app(RuntimeConfig(root=str(tmp_path)))
    listed = {re.sub(r"/digits|/1\.0\.0", "", path) for path, _methods in ROUTES}
    app_paths = {re.sub(r"/\{name\}|/\{version\}", "", route.path) for route in app.routes}
    assert listed == app_paths


@pytest.mark.parametrize("path,allowed", ROUTES, ids=[p for p, _methods in ROUTES])
def test_a_wrong_method_is_a_json_405(served, path, allowed):
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
        if method == allowed:
            continue
        reply = served.client.request(method, path)
        assert_json_error(reply, 405, "%s is not allowed on %s" % (method, path))
        assert allowed in reply.headers["allow"]


UNKNOWN_PATHS = ["/", "/v1/models/digits:predict", "/v2/models/digits/explain",
                 "/v2/models/digits/versions/1.0.0/infer/extra", "/%ff%fe", "/" + "x" * 4000]


@pytest.mark.parametrize("path", UNKNOWN_PATHS, ids=[p if len(p) < 60 else "/x*4000" for p in UNKNOWN_PATHS])
def test_an_unknown_route_is_a_json_404(served, digits, path):
    assert_json_error(served.client.post(path, content=b"{}"), 404, "no route POST")
    assert_json_error(served.client.get(path), 404, "no route GET")
    assert_still_serving(served, digits)


def errors_counted(text: str, **labels: str) -> float:
    """The value of edge_ai_inference_errors_total with exactly these labels in a scrape (0 when absent)."""
    for found, value in re.findall(r"^edge_ai_inference_errors_total\{(.*)\} (\S+)$", text, re.M):
        if dict(re.findall(r'(\w+)="([^"]*)"', found)) == labels:
            return float(value)
    return 0.0


def test_unknown_models_count_under_one_label(served, digits):
    client = served.client

    body = digits_body(digits.X_test[:1])
    client.post("/v2/models/never-%s/infer" % uuid.uuid4().hex, json=body)  # the fixed label exists from here on
    before = client.get("/metrics").text
    names = ["m%s" % uuid.uuid4().hex for _name in range(490)]
    for name in names:
        assert client.post("/v2/models/%s/infer" % name, json=body).status_code == 404
    for version in range(10):  # an unknown version of a model that exists counts there too
        reply = client.post("/v2/models/digits/versions/v%d/infer" % version, json=body)
        assert reply.status_code == 404
    after = client.get("/metrics").text
    growth = len(after.encode()) - len(before.encode())
    assert growth < 2048, growth
    unknown = {"model": "_unknown", "version": "", "reason": "not_found"}
    assert errors_counted(after, **unknown) - errors_counted(before, **unknown) == 500
    assert not any(name in after for name in names) and 'version="v0"' not in after
    # A model in the store keeps its own labels.
    own = {"model": "digits", "version": "1.0.0", "reason": "bad_request"}
    counted = errors_counted(after, **own)
    client.post("/v2/models/digits/infer", content=with_data("null"), headers={"content-type": "application/json"})
    assert errors_counted(client.get("/metrics").text, **own) == counted + 1
    assert_still_serving(served, digits)


def test_an_unexpected_exception_is_a_json_500_with_a_request_id(tmp_path, caplog):
    """In-process (httpx's ASGI transport): a route that raises, as a bug would, reaches Starlette's
    ServerErrorMiddleware, the outermost layer, which answers through the app's handler."""
    app = create_app(RuntimeConfig(root=str(tmp_path)))

    async def broken(request: Request):
        raise ZeroDivisionError("a bug in an endpoint")

    async def get(path: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
            return await client.get(path)

    app.router.routes.append(Route("/v2/broken", broken, methods=["GET"]))
    with caplog.at_level(logging.ERROR, logger="edgeai_runtime.service.app"):
        reply = asyncio.run(get("/v2/broken"))
    assert reply.status_code == 500 and reply.headers["content-type"] == "application/json"
    request_id = reply.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert reply.json() == {"error": "internal error (request id %s)" % request_id}
    logged = [r for r in caplog.records if request_id in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info and logged[0].exc_info[0] is ZeroDivisionError
    assert "GET /v2/broken" in logged[0].getMessage()


def test_a_backend_failure_is_a_json_500_with_a_request_id(served, digits):
    """ONNX Runtime really fails on this input; the answer and the log name the same request id."""
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8},
                       {"name": "target", "shape": [2], "datatype": "INT64", "data": [3, 3]}]}
    reply = served.client.post("/v2/models/reshape/infer", json=body)
    request_id = reply.headers.get("x-request-id", "")
    served.failures.append(request_id)
    assert_json_error(reply, 500, "inference failed (request id %s): " % request_id)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    log = (served.root / "service.log").read_text()
    assert re.search(r"inference on reshape failed \(request id %s\)\nTraceback" % request_id, log), log[-3000:]
    assert_still_serving(served, digits)
    body["inputs"][1]["data"] = [4, 2]
    reply = served.client.post("/v2/models/reshape/infer", json=body)
    assert reply.status_code == 200 and reply.json()["outputs"][0]["shape"] == [4, 2], reply.text


def test_the_service_logged_no_other_traceback(served):
    """Last in this module: nothing above but the failures caused on purpose reached an exception in the service."""
    log = (served.root / "service.log").read_text()
    assert log.count("Traceback") == len(served.failures), log[-3000:]
    assert all(request_id in log for request_id in served.failures)
