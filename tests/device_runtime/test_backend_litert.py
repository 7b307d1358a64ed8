"""The LiteRT (``tflite``) backend with real LiteRT inference on the digits models from modelgen.

The .tflite files are written by tests/support/modelgen.py with the flatbuffers schema
that ai-edge-litert ships (no TensorFlow), from the same scikit-learn MLP as the ONNX model.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest

from edgeai_runtime.service.backends import BackendOptions, BackendUnavailable, ModelLoadError, TensorSpec
from edgeai_runtime.service.backends import backend_class, create_backend
from edgeai_runtime.service.backends import litert as litert_mod
from edgeai_runtime.service.backends.litert import LiteRTBackend
from support import modelgen


def _probs(backend, X):
    return backend.infer({"input": X})["probabilities"]


def test_runtime_name_and_probe():
    assert backend_class("tflite") is LiteRTBackend
    assert LiteRTBackend.runtime == "tflite"
    assert LiteRTBackend.probe() is None


def test_probe_reason_when_neither_wheel_is_installed(monkeypatch):
    # None in sys.modules makes 'import x' raise ImportError.
    for name in ("ai_edge_litert", "ai_edge_litert.interpreter",
                 "tflite_runtime", "tflite_runtime.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)
    assert LiteRTBackend.probe() == "neither ai-edge-litert nor tflite-runtime is installed"
    with pytest.raises(BackendUnavailable) as exc:
        LiteRTBackend(b"TFL3", BackendOptions())
    assert str(exc.value) == "neither ai-edge-litert nor tflite-runtime is installed"


def test_tflite_runtime_is_the_fallback(monkeypatch):
    """Without ai-edge-litert, the module tflite_runtime.interpreter is used (stand-in module here)."""
    import types
    fake_pkg = types.ModuleType("tflite_runtime")
    fake_interp = types.ModuleType("tflite_runtime.interpreter")
    fake_pkg.interpreter = fake_interp
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", fake_pkg)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake_interp)
    mod, dist = litert_mod.import_interpreter_module()
    assert mod is fake_interp and dist == "tflite-runtime"


def test_generated_flatbuffer_is_aligned(digits_tflite, digits_tflite_int8):
    for model in (digits_tflite, digits_tflite_int8):
        assert model[4:8] == b"TFL3"
        offsets = modelgen.tflite_buffer_offsets(model)
        assert len(offsets) == 4                       # 2 kernels + 2 biases
        assert all(o % 16 == 0 for o in offsets), offsets
    assert len(digits_tflite_int8) < len(digits_tflite) / 2


def test_specs_use_v2_datatypes_and_a_resizable_batch(digits_tflite):
    be = LiteRTBackend(digits_tflite, BackendOptions())
    try:
        assert list(be.inputs) == [TensorSpec("input", "FP32", [-1, 64])]
        assert list(be.outputs) == [TensorSpec("probabilities", "FP32", [-1, 10])]
        assert be.details["runtime"] == "tflite"
        assert be.details["library"].startswith("ai-edge-litert")
    finally:
        be.close()


@pytest.mark.parametrize("fixture", ["digits_tflite", "digits_tflite_int8"])
def test_accuracy_on_the_test_split(request, digits, fixture):
    model = request.getfixturevalue(fixture)
    precision = "int8" if fixture.endswith("int8") else "fp32"
    be = create_backend("tflite", model, BackendOptions(precision=precision))
    X, y = modelgen.validation_set(digits)
    acc = modelgen.accuracy(_probs(be, X), y)
    assert acc >= 0.95, acc
    assert abs(acc - digits.accuracy) <= 0.01, (acc, digits.accuracy)
    be.close()


def test_float_model_matches_scikit_learn(digits, digits_tflite):
    be = LiteRTBackend(digits_tflite, BackendOptions())
    X = modelgen.validation_set(digits)[0]
    np.testing.assert_allclose(_probs(be, X), digits.predict_proba(X), atol=1e-4)


def test_int8_model_is_really_quantized_and_close(digits, digits_tflite_int8):
    be = LiteRTBackend(digits_tflite_int8, BackendOptions(precision="int8"))
    X = modelgen.validation_set(digits)[0]
    p = _probs(be, X)
    diff = np.abs(p - digits.predict_proba(X)).max()
    assert 0 < diff < 0.1, diff          # not bit-identical (int8 weights), but close
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)


def test_golden_samples(digits, digits_tflite):
    X, y = modelgen.golden_samples(digits, n=10)
    assert sorted(y.tolist()) == list(range(10))
    be = LiteRTBackend(digits_tflite, BackendOptions())
    assert np.argmax(_probs(be, X), axis=1).tolist() == y.tolist()


@pytest.mark.parametrize("sizes", [(32,), (1, 32, 7, 1), (0, 5)])
def test_batches_other_than_the_models_batch_of_one(digits, digits_tflite, sizes):
    be = LiteRTBackend(digits_tflite, BackendOptions())
    expected = digits.predict_proba(digits.X_test)
    for n in sizes:
        out = _probs(be, digits.X_test[:n])
        assert out.shape == (n, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, expected[:n], atol=1e-4)
    assert be.details["batching"] == "resize"


class _RowAtATime(LiteRTBackend):
    resize_batch = False


def test_row_by_row_batching(digits, digits_tflite):
    be = _RowAtATime(digits_tflite, BackendOptions())
    out = _probs(be, digits.X_test[:32])
    assert out.shape == (32, 10)
    np.testing.assert_allclose(out, digits.predict_proba(digits.X_test[:32]), atol=1e-4)
    assert be.details["batching"] == "loop"


def test_falls_back_to_rows_when_the_model_cannot_be_resized(digits, digits_tflite):
    """A graph with fixed shapes fails allocate_tensors after a resize: infer must still answer."""
    be = LiteRTBackend(digits_tflite, BackendOptions())
    interp = be._interpreter
    real_allocate = interp.allocate_tensors
    calls = []

    def allocate_fixed_batch():
        batch = int(interp.get_input_details()[0]["shape"][0])
        calls.append(batch)
        if batch != 1:
            raise RuntimeError("tensor has fixed shape\nNode number 0 (RESHAPE) failed to prepare.")
        return real_allocate()

    interp.allocate_tensors = allocate_fixed_batch
    out = _probs(be, digits.X_test[:9])
    assert calls[0] == 9 and calls[-1] == 1          # tried the resize, then restored batch 1
    np.testing.assert_allclose(out, digits.predict_proba(digits.X_test[:9]), atol=1e-4)
    assert be.details["batching"] == "loop"
    calls.clear()
    assert _probs(be, digits.X_test[:4]).shape == (4, 10)
    assert calls == []                                # no second resize attempt


def test_concurrent_infer_is_serialised(digits, digits_tflite):
    """Many threads with different batch sizes on one backend all get their own rows back."""
    be = LiteRTBackend(digits_tflite, BackendOptions())
    X = digits.X_test
    expected = digits.predict_proba(X)
    errors = []

    def worker(k):
        try:
            for i in range(40):
                n = 1 + (k * 7 + i) % 12
                start = (k * 31 + i * 5) % (len(X) - n)
                out = _probs(be, X[start:start + n])
                np.testing.assert_allclose(out, expected[start:start + n], atol=1e-4)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)          # switch threads often, so races show up
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[0]


def test_threads_option_is_used(digits_tflite):
    be = LiteRTBackend(digits_tflite, BackendOptions(threads=2))
    assert be.details["threads"] == 2


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_accepted_precisions(digits_tflite, precision):
    LiteRTBackend(digits_tflite, BackendOptions(precision=precision)).close()


def test_unknown_precision_is_refused(digits_tflite):
    with pytest.raises(BackendUnavailable) as exc:
        LiteRTBackend(digits_tflite, BackendOptions(precision="int4"))
    assert str(exc.value) == "precision int4 is not supported by the tflite backend (fp32, fp16, int8)"


@pytest.mark.parametrize("mangle", [
    lambda m: b"this is not a flatbuffer" * 8,
    lambda m: m[: len(m) // 2],
    lambda m: m[:8],
    lambda m: b"\0\0\0\0TFL3" + b"\0" * 64,
    lambda m: m[:100] + bytes(b ^ 0xFF for b in m[100:400]) + m[400:],
], ids=["garbage", "truncated", "header-only", "zeros", "bit-flipped"])
def test_corrupt_model_is_a_model_load_error(digits_tflite, mangle):
    with pytest.raises(ModelLoadError) as exc:
        LiteRTBackend(mangle(digits_tflite), BackendOptions())
    reason = str(exc.value)
    assert "\n" not in reason and reason.startswith("not a loadable TFLite model"), reason


def test_empty_model_is_a_model_load_error():
    with pytest.raises(ModelLoadError, match="^empty model$"):
        LiteRTBackend(b"", BackendOptions())


def test_an_onnx_model_is_not_a_tflite_model(digits_onnx):
    with pytest.raises(ModelLoadError):
        LiteRTBackend(digits_onnx, BackendOptions())


def test_bytearray_and_memoryview_are_accepted(digits, digits_tflite):
    for model in (bytearray(digits_tflite), memoryview(digits_tflite)):
        be = LiteRTBackend(model, BackendOptions())
        assert _probs(be, digits.X_test[:3]).shape == (3, 10)


def test_closed_backend_refuses_infer(digits, digits_tflite):
    be = LiteRTBackend(digits_tflite, BackendOptions())
    be.close()
    be.close()
    with pytest.raises(RuntimeError, match="closed"):
        _probs(be, digits.X_test[:1])


def test_onnx_model_of_the_same_network_agrees(digits, digits_onnx, digits_tflite):
    """The ONNX export (run with onnxruntime directly) and the .tflite give the same classes."""
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(digits_onnx, providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    X, y = modelgen.validation_set(digits)
    label, probs = sess.run(None, {"input": X})
    assert modelgen.accuracy(probs, y) >= 0.95
    be = LiteRTBackend(digits_tflite, BackendOptions())
    assert np.array_equal(np.argmax(_probs(be, X), axis=1), label)
    int8 = ort.InferenceSession(modelgen.digits_onnx_int8(digits_onnx), providers=["CPUExecutionProvider"])
    assert modelgen.accuracy(int8.run(["probabilities"], {"input": X})[0], y) >= 0.95
