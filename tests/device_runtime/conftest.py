"""Shared fixtures for the device runtime's tests: the digits models, built offline once per session."""
from __future__ import annotations

import pytest

from support import modelgen


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
