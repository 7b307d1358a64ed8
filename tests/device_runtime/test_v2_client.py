"""An unchanged standard KServe v2 client (NVIDIA's ``tritonclient.http``) against a real server on 127.0.0.1.

The client is used exactly as its documentation shows; nothing in it is patched. Both ways it
sends tensors are covered: JSON tensors (``binary_data=False``) and its default, the binary
tensor data extension (``GET /v2`` lists ``binary_tensor_data``).
"""
from __future__ import annotations

import numpy as np
import pytest

from support.digits_store import serving_store
from test_http import start_service, write_config

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in requirements-dev.txt")


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("v2client")
    serving_store(root, digits)
    write_config(root, max_batch_size=8, max_queue=64)
    proc, base = start_service(root)
    client = httpclient.InferenceServerClient(base[len("http://"):])
    try:
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=30)


def test_health_and_readiness(served):
    assert served.is_server_live()
    assert served.is_server_ready()
    assert served.is_model_ready("digits")
    assert served.is_model_ready("digits", "1.0.0")
    assert not served.is_model_ready("nope")


def test_server_and_model_metadata(served):
    assert served.get_server_metadata()["name"] == "edgeai-runtime"
    meta = served.get_model_metadata("digits")
    assert meta["name"] == "digits" and meta["versions"] == ["1.0.0"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]} == {"label": [-1], "probabilities": [-1, 10]}
    with pytest.raises(httpclient.InferenceServerException):
        served.get_model_metadata("nope")


def _infer(client, x, binary):
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput("probabilities", binary_data=binary)]
    return client.infer("digits", [tensor], outputs=wanted, request_id="v2-client-1")


def test_infer_matches_the_sklearn_model(served, digits):
    x = np.ascontiguousarray(digits.X_test[:4], dtype=np.float32)
    result = _infer(served, x, binary=False)
    probs = result.as_numpy("probabilities")
    assert probs.shape == (4, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, digits.predict_proba(x), atol=1e-4)
    response = result.get_response()
    assert response["model_name"] == "digits" and response["model_version"] == "1.0.0"
    assert response["id"] == "v2-client-1"
    assert result.as_numpy("label") is None  # only the requested output comes back


def test_infer_errors_reach_the_client(served, digits):
    tensor = httpclient.InferInput("input", [2, 63], "FP32")
    tensor.set_data_from_numpy(np.zeros((2, 63), dtype=np.float32), binary_data=False)
    with pytest.raises(httpclient.InferenceServerException, match=r"shape: \[2, 63\]"):
        served.infer("digits", [tensor])


def test_infer_with_the_clients_default_binary_tensors(served, digits):
    x = np.ascontiguousarray(digits.X_test[:4], dtype=np.float32)
    probs = _infer(served, x, binary=True).as_numpy("probabilities")
    np.testing.assert_allclose(probs, digits.predict_proba(x), atol=1e-4)
