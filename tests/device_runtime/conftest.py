"""Shared fixtures for the device runtime's tests: the digits models, built offline once per session."""
from __future__ import annotations

import pytest

from edgeai_runtime.format import keys
from support import modelgen
from support.ota_device import Device


@pytest.fixture(scope="session")
def digits():
    """The trained digits MLP (modelgen.DigitsModel: model, X_test, y_test, accuracy, ...)."""
    return modelgen.train_digits_mlp(seed=0)


@pytest.fixture(scope="session")
def digits_onnx(digits):
    """ONNX bytes: input 'input' FP32 [N, 64]; outputs 'label' INT64 [N], 'probabilities' FP32 [N, 10]."""
    return modelgen.digits_onnx(digits)


@pytest.fixture(scope="session")
def digits_tflite(digits):
    """Float .tflite bytes: input 'input' FP32 [1, 64]; output 'probabilities' FP32 [1, 10]."""
    return modelgen.digits_tflite(digits)


@pytest.fixture(scope="session")
def digits_tflite_int8(digits):
    """Dynamic-range int8 .tflite bytes (int8 weights, float I/O), same interface as digits_tflite."""
    return modelgen.digits_tflite(digits, quantize="int8")


@pytest.fixture(scope="session")
def signer():
    """The fleet's Ed25519 signing key for artifact tests."""
    return keys.generate("ed25519")


@pytest.fixture
def device(tmp_path, signer, digits):
    """A device root with digits 1.0.0 serving from a signed artifact, the service running (support.ota_device)."""
    dev = Device(tmp_path / "device", signer, digits)
    yield dev
    if dev.proc.poll() is None:
        dev.stop()
