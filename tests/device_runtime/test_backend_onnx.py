"""OnnxBackend against small ONNX graphs built here with onnx.helper, checked against numpy.

Everything runs on onnxruntime's CPU provider (this machine has no GPU).
``choose_providers`` is pure logic and is tested with made-up ``available`` lists.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeai_runtime.service.backends.base import BackendOptions, ModelLoadError, TensorSpec  # noqa: E402
from edgeai_runtime.service.backends.onnx import (  # noqa: E402
    CPU_EP,
    CUDA_EP,
    TRT_EP,
    OnnxBackend,
    choose_providers,
    ort_shape,
    ort_type_to_v2,
)

OPSET = 17
IR_VERSION = 8


def _model(graph) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edgeai-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _weights():
    rng = np.random.default_rng(1234)
    w = rng.standard_normal((64, 10)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    return w, b


def classifier_bytes() -> bytes:
    """x[batch,64] -> softmax(x @ W + b)[batch,10], batch symbolic."""
    w, b = _weights()
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _model(graph)


def numpy_classifier(x: np.ndarray) -> np.ndarray:
    w, b = _weights()
    logits = x @ w + b
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def int64_bytes() -> bytes:
    """ids[batch,4] int64 -> (ids*3+7)[batch,4] int64 and row sums total[batch] int64."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "three"], ["m"]),
            helper.make_node("Add", ["m", "seven"], ["scaled"]),
            helper.make_node("ReduceSum", ["ids", "axes"], ["total"], keepdims=0),
        ],
        "int64_model",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 4])],
        [
            helper.make_tensor_value_info("scaled", TensorProto.INT64, [None, 4]),
            helper.make_tensor_value_info("total", TensorProto.INT64, [None]),
        ],
        initializer=[
            numpy_helper.from_array(np.array(3, dtype=np.int64), "three"),
            numpy_helper.from_array(np.array(7, dtype=np.int64), "seven"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"),
        ],
    )
    return _model(graph)


def mixed_types_bytes() -> bytes:
    """image uint8[1,2,3] -> half fp16; offsets int8[1,2,3] -> wide int32 (fixed shapes)."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["image"], ["half"], to=TensorProto.FLOAT16),
            helper.make_node("Cast", ["offsets"], ["wide"], to=TensorProto.INT32),
        ],
        "mixed",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, [1, 2, 3]),
            helper.make_tensor_value_info("offsets", TensorProto.INT8, [1, 2, 3]),
        ],
        [
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, [1, 2, 3]),
            helper.make_tensor_value_info("wide", TensorProto.INT32, [1, 2, 3]),
        ],
    )
    return _model(graph)


@pytest.fixture(scope="module")
def classifier():
    backend = OnnxBackend(classifier_bytes(), BackendOptions(threads=2))
    yield backend
    backend.close()


# --------------------------------------------------------------------------- loading


def test_probe_says_usable_here():
    assert OnnxBackend.probe() is None
    assert OnnxBackend.runtime == "onnxruntime"


def test_specs_of_classifier(classifier):
    assert list(classifier.inputs) == [TensorSpec("x", "FP32", [-1, 64])]
    assert list(classifier.outputs) == [TensorSpec("probs", "FP32", [-1, 10])]


def test_details_report_providers_actually_used(classifier):
    details = classifier.details
    assert details["providers"] == [CPU_EP]
    assert details["requested_providers"] == [CPU_EP]
    assert details["threads"] == 2
    assert CPU_EP in details["available_providers"]
    assert "provider_fallback" not in details


def test_threads_reach_the_session(classifier):
    assert classifier._session.get_session_options().intra_op_num_threads == 2


@pytest.mark.parametrize("batch", [1, 32])
def test_classifier_matches_numpy(classifier, batch):
    x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
    out = classifier.infer({"x": x})
    assert set(out) == {"probs"}
    probs = out["probs"]
    assert probs.shape == (batch, 10)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, numpy_classifier(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), np.ones(batch), rtol=1e-5)


def test_int64_model_matches_numpy():
    backend = OnnxBackend(int64_bytes(), BackendOptions())
    try:
        assert list(backend.inputs) == [TensorSpec("ids", "INT64", [-1, 4])]
        assert list(backend.outputs) == [TensorSpec("scaled", "INT64", [-1, 4]),
                                         TensorSpec("total", "INT64", [-1])]
        ids = np.arange(32 * 4, dtype=np.int64).reshape(32, 4) - 50
        out = backend.infer({"ids": ids})
        assert out["scaled"].dtype == np.int64
        np.testing.assert_array_equal(out["scaled"], ids * 3 + 7)
        np.testing.assert_array_equal(out["total"], ids.sum(axis=1))
    finally:
        backend.close()


def test_uint8_int8_fp16_int32_types():
    backend = OnnxBackend(mixed_types_bytes(), BackendOptions())
    try:
        assert [(s.name, s.datatype, s.shape) for s in backend.inputs] == [
            ("image", "UINT8", [1, 2, 3]), ("offsets", "INT8", [1, 2, 3])]
        assert [(s.name, s.datatype, s.shape) for s in backend.outputs] == [
            ("half", "FP16", [1, 2, 3]), ("wide", "INT32", [1, 2, 3])]
        image = np.array([[[0, 1, 2], [127, 200, 255]]], dtype=np.uint8)
        offsets = np.array([[[-128, -1, 0], [1, 64, 127]]], dtype=np.int8)
        out = backend.infer({"image": image, "offsets": offsets})
        assert out["half"].dtype == np.float16
        np.testing.assert_array_equal(out["half"], image.astype(np.float16))
        assert out["wide"].dtype == np.int32
        np.testing.assert_array_equal(out["wide"], offsets.astype(np.int32))
    finally:
        backend.close()


def test_loads_from_bytearray_and_memoryview():
    raw = classifier_bytes()
    for blob in (bytearray(raw), memoryview(raw)):
        backend = OnnxBackend(blob, BackendOptions())
        assert backend.outputs[0].name == "probs"
        backend.close()


@pytest.mark.parametrize("blob", [
    b"this is not an onnx model",
    b"\x08\x07\x12\x0bgarbage\xff\xff\xff\xff",
])
def test_corrupt_bytes_raise_model_load_error(blob):
    with pytest.raises(ModelLoadError) as info:
        OnnxBackend(blob, BackendOptions())
    msg = str(info.value)
    assert msg and "\n" not in msg and msg == msg.strip()


def test_truncated_model_raises_model_load_error():
    raw = classifier_bytes()
    with pytest.raises(ModelLoadError) as info:
        OnnxBackend(raw[: len(raw) // 2], BackendOptions())
    assert "\n" not in str(info.value)


def test_empty_bytes_raise_model_load_error():
    with pytest.raises(ModelLoadError):
        OnnxBackend(b"", BackendOptions())


def test_concurrent_infer_matches_sequential(classifier):
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((8, 64)).astype(np.float32) for i in range(16)]
    expected = [numpy_classifier(x) for x in batches]
    results = [None] * len(batches)
    errors = []

    def work(i):
        try:
            results[i] = classifier.infer({"x": batches[i]})["probs"]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for got, want in zip(results, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_infer_after_close_fails():
    backend = OnnxBackend(classifier_bytes(), BackendOptions())
    backend.close()
    with pytest.raises(RuntimeError):
        backend.infer({"x": np.zeros((1, 64), np.float32)})


# --------------------------------------------------------------------------- type/shape mapping


@pytest.mark.parametrize("ort_type,v2", [
    ("tensor(float)", "FP32"), ("tensor(float16)", "FP16"), ("tensor(double)", "FP64"),
    ("tensor(int64)", "INT64"), ("tensor(int32)", "INT32"), ("tensor(int8)", "INT8"),
    ("tensor(uint8)", "UINT8"), ("tensor(bool)", "BOOL"), ("tensor(string)", "BYTES"),
])
def test_ort_type_to_v2(ort_type, v2):
    assert ort_type_to_v2(ort_type) == v2


@pytest.mark.parametrize("ort_type", ["tensor(bfloat16)", "seq(map(int64,tensor(float)))", "map(string,float)"])
def test_ort_type_without_v2_name(ort_type):
    with pytest.raises(ValueError):
        ort_type_to_v2(ort_type)


def test_ort_shape_symbolic_and_none_become_minus_one():
    assert ort_shape(["batch", 64]) == [-1, 64]
    assert ort_shape([None, 3, 224, 224]) == [-1, 3, 224, 224]
    assert ort_shape([1, 10]) == [1, 10]
    assert ort_shape([]) == []


# --------------------------------------------------------------------------- choose_providers


def test_choose_cpu_only():
    assert choose_providers([CPU_EP], "fp32") == [CPU_EP]
    # Providers we never ask for are ignored.
    assert choose_providers(["AzureExecutionProvider", CPU_EP], "fp16") == [CPU_EP]


def test_choose_cpu_is_always_last_even_if_not_listed():
    assert choose_providers([], "fp32") == [CPU_EP]


def test_choose_cuda_available():
    assert choose_providers([CUDA_EP, CPU_EP], "fp32") == [CUDA_EP, CPU_EP]
    assert choose_providers([CPU_EP, CUDA_EP], "fp16") == [CUDA_EP, CPU_EP]


def test_choose_tensorrt_cuda_fp16():
    got = choose_providers([TRT_EP, CUDA_EP, CPU_EP], "fp16")
    assert got == [(TRT_EP, {"trt_fp16_enable": True}), CUDA_EP, CPU_EP]


def test_choose_tensorrt_int8_and_fp32():
    assert choose_providers([TRT_EP, CUDA_EP, CPU_EP], "int8")[0] == (TRT_EP, {"trt_int8_enable": True})
    assert choose_providers([TRT_EP, CUDA_EP, CPU_EP], "fp32") == [TRT_EP, CUDA_EP, CPU_EP]


def test_choose_tensorrt_cache_only_when_given():
    got = choose_providers([TRT_EP, CUDA_EP, CPU_EP], "fp16", trt_cache_dir="/var/cache/trt")
    assert got[0] == (TRT_EP, {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                               "trt_engine_cache_path": "/var/cache/trt"})
    assert "trt_engine_cache_path" not in choose_providers([TRT_EP, CPU_EP], "fp16")[0][1]


def test_choose_device_id():
    got = choose_providers([TRT_EP, CUDA_EP, CPU_EP], "fp32", device_id=1)
    assert got == [(TRT_EP, {"device_id": 1}), (CUDA_EP, {"device_id": 1}), CPU_EP]


@pytest.mark.parametrize("prefer,expected", [
    ("cpu", [CPU_EP]),
    ("CPU", [CPU_EP]),
    (CPU_EP, [CPU_EP]),
    ("cuda", [CUDA_EP, CPU_EP]),
    ("cuda:0", [CUDA_EP, CPU_EP]),
    ("gpu", [CUDA_EP, CPU_EP]),
    ("tensorrt", [TRT_EP, CUDA_EP, CPU_EP]),
    ("trt", [TRT_EP, CUDA_EP, CPU_EP]),
    (None, [TRT_EP, CUDA_EP, CPU_EP]),
    ("", [TRT_EP, CUDA_EP, CPU_EP]),
    ("OpenVINOExecutionProvider", [TRT_EP, CUDA_EP, CPU_EP]),  # not available: ignored
])
def test_choose_prefer(prefer, expected):
    assert choose_providers([TRT_EP, CUDA_EP, CPU_EP], "fp32", prefer=prefer) == expected


def test_choose_prefer_unavailable_falls_down_the_chain():
    assert choose_providers([CUDA_EP, CPU_EP], "fp16", prefer="tensorrt") == [CUDA_EP, CPU_EP]
    assert choose_providers([CPU_EP], "fp32", prefer="cuda") == [CPU_EP]


def test_choose_prefer_other_available_provider_goes_first():
    got = choose_providers(["OpenVINOExecutionProvider", CUDA_EP, CPU_EP], "fp32",
                           prefer="OpenVINOExecutionProvider")
    assert got == ["OpenVINOExecutionProvider", CUDA_EP, CPU_EP]


def test_prefer_cpu_via_options_device():
    backend = OnnxBackend(classifier_bytes(), BackendOptions(device="cpu"))
    try:
        assert backend.details["requested_providers"] == [CPU_EP]
        assert backend.details["providers"] == [CPU_EP]
    finally:
        backend.close()


# --------------------------------------------------------------------------- requested vs. actually used


def test_details_show_actual_providers_when_requested_one_is_missing(monkeypatch):
    """onnxruntime claims CUDA (as a GPU build on a driverless machine does); the session
    still runs on CPU and ``details`` must say so rather than echo the request."""
    import warnings

    import onnxruntime as ort
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_EP, CPU_EP])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = OnnxBackend(classifier_bytes(), BackendOptions())
    try:
        assert backend.details["requested_providers"] == [CUDA_EP, CPU_EP]
        assert backend.details["providers"] == [CPU_EP]
        x = np.ones((2, 64), np.float32)
        np.testing.assert_allclose(backend.infer({"x": x})["probs"], numpy_classifier(x), rtol=1e-5, atol=1e-6)
    finally:
        backend.close()


def test_accelerator_session_failure_retries_on_cpu(monkeypatch):
    """If creating the session with accelerator providers raises, the CPU alone is tried
    before the model is blamed, and the reason is kept in ``details``."""
    import onnxruntime as ort
    real = ort.InferenceSession

    def flaky(model, sess_options=None, providers=None):
        names = [p if isinstance(p, str) else p[0] for p in providers]
        if names != [CPU_EP]:
            raise RuntimeError("CUDA failure 35: CUDA driver version is insufficient\nmore detail")
        return real(model, sess_options=sess_options, providers=providers)

    monkeypatch.setattr(ort, "get_available_providers", lambda: [TRT_EP, CUDA_EP, CPU_EP])
    monkeypatch.setattr(ort, "InferenceSession", flaky)
    backend = OnnxBackend(classifier_bytes(), BackendOptions(precision="fp16"))
    try:
        assert backend.details["providers"] == [CPU_EP]
        assert backend.details["provider_fallback"] == "CUDA failure 35: CUDA driver version is insufficient"
    finally:
        backend.close()

    monkeypatch.setattr(ort, "InferenceSession", flaky)
    with pytest.raises(ModelLoadError) as info:
        OnnxBackend(b"not a model", BackendOptions())
    assert "\n" not in str(info.value)


def test_onnx_runtime_telemetry_is_off(tmp_path):
    """Loading and running a model leaves no ONNX Runtime telemetry store (device id, event database)
    under the home and cache directories: the uploader behind it wakes an idle service on a timer."""
    model = tmp_path / "model.onnx"
    model.write_bytes(classifier_bytes())
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"))
    script = ("import sys, numpy as np\n"
              "from edgeai_runtime.service.backends.base import BackendOptions\n"
              "from edgeai_runtime.service.backends.onnx import OnnxBackend\n"
              "backend = OnnxBackend(open(sys.argv[1], 'rb').read(), BackendOptions())\n"
              "backend.infer({'x': np.ones((1, 64), np.float32)})\n")
    subprocess.run([sys.executable, "-c", script, str(model)], env=env, check=True, timeout=120)
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
