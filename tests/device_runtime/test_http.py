"""The inference service as a real server process on 127.0.0.1: KServe v2, errors, metrics, admin, auth."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx
import numpy as np
import pytest

from support import modelgen
from support.digits_store import serving_store
from support.service import free_port, runtime, start_service, voluntary_switches, write_config

BODY_LIMIT = 256 * 1024


@dataclass
class Server:
    client: httpx.Client
    root: object
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def digits():
    return modelgen.train_digits_mlp(seed=0)


@pytest.fixture(scope="module")
def server(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("device")
    serving_store(root, digits, ("1.0.0", "2.0.0"))
    write_config(root, max_batch_size=8, max_body_bytes=BODY_LIMIT, max_queue=64)
    proc, base = start_service(root)
    with httpx.Client(base_url=base, timeout=30) as client:
        yield Server(client, root, proc)
    proc.terminate()
    proc.wait(timeout=30)


def infer_body(x, **extra):
    body = {"id": "req-1", "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}
    body.update(extra)
    return body


def test_health_and_server_metadata(server):
    client = server.client
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2").json()
    assert meta["name"] == "edgeai-runtime" and "version" in meta


def test_model_metadata_and_ready(server):
    client = server.client
    meta = client.get("/v2/models/digits").json()
    assert meta["name"] == "digits" and meta["versions"] == ["1.0.0"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert client.get("/v2/models/digits/versions/1.0.0").status_code == 200
    assert client.get("/v2/models/digits/ready").json() == {"name": "digits", "ready": True}
    assert client.get("/v2/models/nope").status_code == 404
    assert client.get("/v2/models/digits/versions/9.9.9").status_code == 404


def test_infer_answers_right(server, digits):
    client = server.client
    x = digits.X_test[:32]
    reply = client.post("/v2/models/digits/infer", json=infer_body(x))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model_name"] == "digits" and body["model_version"] == "1.0.0" and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    probs = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(outputs["probabilities"]["shape"])
    assert probs.shape == (32, 10)
    np.testing.assert_allclose(probs, digits.predict_proba(x), atol=1e-4)
    assert outputs["label"]["datatype"] == "INT64"
    only = client.post("/v2/models/digits/versions/1.0.0/infer",
                       json=infer_body(x[:1], outputs=[{"name": "label"}])).json()
    assert [o["name"] for o in only["outputs"]] == ["label"]


@pytest.mark.parametrize("mutate,status,needle", [
    (lambda b: b["inputs"][0].update(name="pixels"), 400, "inputs[0].name: unknown input 'pixels'"),
    (lambda b: b["inputs"][0].update(datatype="INT32"), 400, "inputs[0] (input).datatype: 'INT32'"),
    (lambda b: b["inputs"][0].update(shape=[2, 63]), 400, "inputs[0] (input).shape: [2, 63]"),
    (lambda b: b["inputs"][0].update(data=[1.0] * 5), 400, "inputs[0] (input).data: 5 values"),
    (lambda b: b.pop("inputs"), 400, "inputs: must be a non-empty list"),
    (lambda b: b.update(outputs=[{"name": "logits"}]), 400, "outputs: unknown output 'logits'"),
])
def test_bad_tensors_name_the_field(server, digits, mutate, status, needle):
    client = server.client
    body = infer_body(digits.X_test[:2])
    mutate(body)
    reply = client.post("/v2/models/digits/infer", json=body)
    assert reply.status_code == status and needle in reply.json()["error"], reply.text


def test_malformed_unknown_and_oversized(server, digits):
    client = server.client
    bad = client.post("/v2/models/digits/infer", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    assert client.post("/v2/models/nope/infer", json=infer_body(digits.X_test[:1])).status_code == 404
    assert client.post("/v2/models/digits/versions/7/infer", json=infer_body(digits.X_test[:1])).status_code == 404
    big = client.post("/v2/models/digits/infer", content=b" " * (BODY_LIMIT + 1),
                      headers={"content-type": "application/json"})
    assert big.status_code == 413


def test_metrics_carry_the_design_notes_names(server, digits):
    client = server.client
    client.post("/v2/models/digits/infer", json=infer_body(digits.X_test[:1]))
    text = client.get("/metrics").text
    for name in ("edge_ai_inferences_total", "edge_ai_inference_duration_seconds_bucket",
                 "edge_ai_memory_usage_bytes", "edge_ai_inference_errors_total", "edge_ai_model_accuracy"):
        assert name in text, name
    assert 'edge_ai_inferences_total{model="digits",version="1.0.0"}' in text
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool (Debian package prometheus) is not installed; scripts/setup.sh installs it")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def test_openapi_document(server):
    """The full checks are in test_openapi.py and test_schema_fuzz.py; here, the document of this server."""
    client = server.client
    reply = client.get("/openapi.json")
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    doc = reply.json()
    assert doc["openapi"] == "3.1.0" and doc["info"]["version"] == client.get("/v2").json()["version"]
    infer = doc["paths"]["/v2/models/{name}/infer"]
    assert infer["parameters"][0]["schema"]["enum"] == ["digits"]
    example = infer["post"]["requestBody"]["content"]["application/json"]["examples"]["digits"]["value"]
    assert client.post("/v2/models/digits/infer", json=example).status_code == 200


def test_cli_activation_switches_the_running_service(server, digits):
    client, root = server.client, server.root
    switched = runtime(root, "model", "activate", "digits", "2.0.0")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    result = json.loads(switched.stdout)
    assert result["changed"] and result["via"] == "service" and result["previous"] == "1.0.0"
    assert client.post("/v2/models/digits/infer", json=infer_body(digits.X_test[:1])).json()["model_version"] == "2.0.0"
    # Both versions answer while 1.0.0 stays loaded as the rollback target.
    assert client.get("/v2/models/digits/versions/1.0.0/ready").status_code == 200
    back = json.loads(runtime(root, "model", "rollback", "digits").stdout)
    assert back["version"] == "1.0.0" and back["instant"]
    listed = json.loads(runtime(root, "model", "list").stdout)
    assert listed["models"][0]["active"] == "1.0.0"


def test_admin_needs_loopback_and_non_loopback_needs_a_token(tmp_path):
    refused = runtime(tmp_path, "serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 1 and "bearer token" in json.loads(refused.stdout)["msg"]


def test_token_is_required_when_configured(tmp_path, digits):
    serving_store(tmp_path, digits)
    write_config(tmp_path)
    proc, base = start_service(tmp_path, env=dict(os.environ, EDGEAI_RUNTIME_TOKEN="s3cret-token"))
    try:
        assert httpx.get(base + "/v2/models/digits").status_code == 401
        good = httpx.get(base + "/v2/models/digits", headers={"authorization": "Bearer s3cret-token"})
        assert good.status_code == 200
        assert httpx.get(base + "/v2/models/digits", headers={"authorization": "Bearer wrong"}).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_cloud_fallback_answers_when_no_local_model_is_ready(server, tmp_path, digits):
    """A device with no model forwards to the cloud URL (here: the other service, on loopback)."""
    write_config(tmp_path, cloud_fallback_url=str(server.client.base_url).rstrip("/"))
    proc, base = start_service(tmp_path)
    try:
        reply = httpx.post(base + "/v2/models/digits/infer", json=infer_body(digits.X_test[:1]), timeout=30)
        assert reply.status_code == 200 and reply.headers["x-edgeai-served-by"] == "cloud-fallback"
        assert reply.json()["model_name"] == "digits"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_binary_tensor_extension(server, digits):
    """Inputs as raw little-endian bytes after the JSON header, outputs asked back as bytes."""
    client = server.client
    x = np.ascontiguousarray(digits.X_test[:3], dtype="<f4")
    header = json.dumps({"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    reply = client.post("/v2/models/digits/infer", content=header + x.tobytes(),
                        headers={"inference-header-content-length": str(len(header))})
    assert reply.status_code == 200, reply.text
    length = int(reply.headers["inference-header-content-length"])
    meta = json.loads(reply.content[:length])
    [out] = meta["outputs"]
    assert out["parameters"]["binary_data_size"] == 3 * 10 * 4 and "data" not in out
    probs = np.frombuffer(reply.content[length:], dtype="<f4").reshape(out["shape"])
    np.testing.assert_allclose(probs, digits.predict_proba(x), atol=1e-4)
    short = client.post("/v2/models/digits/infer", content=header + x.tobytes()[:100],
                        headers={"inference-header-content-length": str(len(header))})
    assert short.status_code == 400 and "binary_data_size" in short.json()["error"]


def test_idle_service_sleeps_and_its_date_header_stays_current(server):
    """No periodic work while idle: over 3 s without requests the service's threads wake (voluntary
    context switches) a few times at most; uvicorn's stock main loop alone wakes 30 times. The Date
    header, made when a response asks for it instead of by that loop, is current afterwards."""
    server.client.get("/v2/health/live").raise_for_status()
    time.sleep(1.0)  # the last response's own work is over
    before = voluntary_switches(server.proc.pid)
    idle_from = time.time()
    time.sleep(3.0)
    after = voluntary_switches(server.proc.pid)
    woke = {tid: n - before.get(tid, 0) for tid, n in after.items() if n - before.get(tid, 0)}
    assert sum(woke.values()) < 10, "threads woke while idle: %s" % woke
    reply = server.client.get("/v2/health/live")
    date = parsedate_to_datetime(reply.headers["date"]).timestamp()
    assert idle_from + 2.0 <= date <= time.time() + 1.0, reply.headers["date"]
    assert reply.headers["server"] == "uvicorn"
