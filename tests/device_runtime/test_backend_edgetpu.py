"""The Edge TPU (``edgetpu``) backend.

There is no Edge TPU on the machines these tests run on, and Coral's libedgetpu is not
installed. The delegate path is exercised with a TEST DOUBLE standing in for Coral's
``libedgetpu.so.1``: a few lines of C compiled by ``modelgen.build_edgetpu_double`` that
implement TFLite's external-delegate plugin ABI. Through the backend's test-only
``EDGEAI_EDGETPU_LIBRARY`` override, LiteRT really dlopens it, calls
``tflite_plugin_create_delegate`` with the backend's options, and applies the returned
TfLiteDelegate to the interpreter (its Prepare is called). The double claims no nodes, so
inference runs on LiteRT's CPU kernels: these tests prove the loading, option passing,
error mapping and batching, not anything about TPU execution or edgetpu-compiled models.
"""
from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest

from edgeai_runtime.service.backends import BackendOptions, BackendUnavailable, ModelLoadError
from edgeai_runtime.service.backends import backend_class, create_backend
from edgeai_runtime.service.backends import edgetpu as edgetpu_mod
from edgeai_runtime.service.backends.edgetpu import EdgeTPUBackend
from support import modelgen

NOT_FOUND = "libedgetpu.so.1 not found (install libedgetpu1-std)"
NO_DEVICE = "no Edge TPU device: Failed to load delegate"


def _real_libedgetpu_present():
    try:
        ctypes.CDLL("libedgetpu.so.1")
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def edgetpu_double(tmp_path_factory):
    """Path of the compiled TEST DOUBLE of Coral's libedgetpu.so.1 (not the real library)."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler (cc) to build the libedgetpu test double")
    return modelgen.build_edgetpu_double(tmp_path_factory.mktemp("fake-edgetpu"))


@pytest.fixture
def fake_edgetpu(monkeypatch, edgetpu_double, tmp_path):
    """Point the backend at the double; return the path of the double's call log."""
    log = tmp_path / "edgetpu-calls.log"
    monkeypatch.setenv(edgetpu_mod.LIBRARY_ENV, edgetpu_double)
    monkeypatch.setenv(modelgen.FAKE_EDGETPU_LOG_ENV, str(log))
    monkeypatch.delenv(modelgen.FAKE_EDGETPU_ENV, raising=False)
    return log


def _calls(log):
    return log.read_text().splitlines() if log.exists() else []


def test_runtime_name():
    assert backend_class("edgetpu") is EdgeTPUBackend
    assert EdgeTPUBackend.runtime == "edgetpu"


def test_double_is_loaded_and_applied_by_litert(fake_edgetpu, digits, digits_tflite_int8):
    """Test double for Coral's libedgetpu: the delegate is created with the device option,
    applied to the graph (Prepare called), and the model still answers correctly on CPU."""
    assert EdgeTPUBackend.probe() is None
    be = create_backend("edgetpu", digits_tflite_int8, BackendOptions(precision="int8", device="usb"))
    assert _calls(fake_edgetpu) == ["option device=usb", "create ok", "prepare ok"]
    X, y = modelgen.validation_set(digits)
    probs = be.infer({"input": X})["probabilities"]
    assert probs.shape == (len(X), 10)
    assert modelgen.accuracy(probs, y) >= 0.95
    details = be.details
    assert details["runtime"] == "edgetpu"
    assert details["device"] == "usb"
    assert details["delegates"][0].startswith("libedgetpu.so.1 (override ")
    assert details["edgetpu_custom_ops"] == 0          # not an edgetpu_compiler model: all on CPU
    assert details["batching"] == "loop"               # compiled models have fixed shapes
    be.close()
    import gc
    gc.collect()
    assert _calls(fake_edgetpu)[-1] == "destroy"


def test_no_device_option_passes_no_options(fake_edgetpu, digits, digits_tflite_int8):
    """Test double for Coral's libedgetpu: without options.device no option reaches the library."""
    be = EdgeTPUBackend(digits_tflite_int8, BackendOptions(precision="int8"))
    assert _calls(fake_edgetpu)[:2] == ["create ok", "prepare ok"]
    out = be.infer({"input": digits.X_test[:32]})["probabilities"]
    assert out.shape == (32, 10)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_no_tpu_is_backend_unavailable(fake_edgetpu, monkeypatch, digits_tflite_int8):
    """Test double for Coral's libedgetpu, told to behave like the real one with no TPU
    attached (create returns NULL, LiteRT raises ValueError 'Failed to load delegate')."""
    monkeypatch.setenv(modelgen.FAKE_EDGETPU_ENV, "absent")
    with pytest.raises(BackendUnavailable) as exc:
        EdgeTPUBackend(digits_tflite_int8, BackendOptions(precision="int8", device="usb"))
    assert str(exc.value) == NO_DEVICE
    assert "create absent" in _calls(fake_edgetpu)


def test_delegate_prepare_failure_is_a_model_load_error(fake_edgetpu, monkeypatch, digits_tflite_int8):
    """Test double for Coral's libedgetpu whose Prepare fails (as a version-mismatched model can)."""
    monkeypatch.setenv(modelgen.FAKE_EDGETPU_ENV, "prepare-error")
    with pytest.raises(ModelLoadError) as exc:
        EdgeTPUBackend(digits_tflite_int8, BackendOptions(precision="int8"))
    reason = str(exc.value)
    assert reason.startswith("the Edge TPU delegate could not prepare the model: ") and "\n" not in reason
    assert "prepare error" in _calls(fake_edgetpu)


def test_missing_library_is_backend_unavailable(monkeypatch, tmp_path, digits_tflite_int8):
    monkeypatch.setenv(edgetpu_mod.LIBRARY_ENV, str(tmp_path / "libedgetpu.so.1"))
    assert EdgeTPUBackend.probe() == NOT_FOUND
    with pytest.raises(BackendUnavailable) as exc:
        EdgeTPUBackend(digits_tflite_int8, BackendOptions(precision="int8"))
    assert str(exc.value) == NOT_FOUND


@pytest.mark.skipif(_real_libedgetpu_present(), reason="Coral's libedgetpu is installed here")
def test_default_library_name_is_not_here(monkeypatch, digits_tflite_int8):
    monkeypatch.delenv(edgetpu_mod.LIBRARY_ENV, raising=False)
    assert edgetpu_mod.library_name() == "libedgetpu.so.1"
    assert EdgeTPUBackend.probe() == NOT_FOUND
    with pytest.raises(BackendUnavailable) as exc:
        create_backend("edgetpu", digits_tflite_int8, BackendOptions(precision="int8"))
    assert str(exc.value) == NOT_FOUND


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_only_int8_is_accepted(fake_edgetpu, digits_tflite, precision):
    with pytest.raises(BackendUnavailable) as exc:
        EdgeTPUBackend(digits_tflite, BackendOptions(precision=precision))
    assert str(exc.value) == "precision %s is not supported by the edgetpu backend (int8 only)" % precision
    assert _calls(fake_edgetpu) == []                 # refused before touching the library


def test_default_options_are_fp32_and_refused(fake_edgetpu, digits_tflite_int8):
    with pytest.raises(BackendUnavailable, match=r"^precision fp32 is not supported by the edgetpu backend \(int8 only\)$"):
        EdgeTPUBackend(digits_tflite_int8, BackendOptions())


def test_corrupt_model_with_the_double(fake_edgetpu, digits_tflite_int8):
    with pytest.raises(ModelLoadError):
        EdgeTPUBackend(digits_tflite_int8[: len(digits_tflite_int8) // 3], BackendOptions(precision="int8"))


def test_pycoral_is_never_imported(fake_edgetpu, digits_tflite_int8):
    import sys
    EdgeTPUBackend(digits_tflite_int8, BackendOptions(precision="int8")).close()
    assert "pycoral" not in sys.modules
    from pathlib import Path
    source = Path(edgetpu_mod.__file__).read_text()
    assert "import pycoral" not in source and "from pycoral" not in source
