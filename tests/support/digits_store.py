"""Install the digits models into a real ModelStore, with gate data, as a device would hold them."""
from __future__ import annotations

from typing import Optional

import numpy as np

from edgeai_runtime.service.gate import encode_npz
from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.device.store import ModelStore

from . import modelgen

ONNX_INPUTS = [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
ONNX_OUTPUTS = [{"name": "label", "datatype": "INT64", "shape": [-1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
TFLITE_INPUTS = [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]
TFLITE_OUTPUTS = [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10]}]


def digits_manifest(version: str, model: bytes, digits: modelgen.DigitsModel, runtime: str = "onnxruntime",
                    precision: str = "fp32", threshold: Optional[float] = 0.9, name: str = "digits",
                    hardware_classes: Optional[list] = None):
    """The manifest and gate files for a digits model (golden samples + the held-out split)."""
    golden_x, golden_y = modelgen.golden_samples(digits, n=10)
    val_x, val_y = modelgen.validation_set(digits)
    files = {"golden.npz": encode_npz({"input": golden_x}, golden_y),
             "validation.npz": encode_npz({"input": val_x}, val_y)}
    onnx = runtime == "onnxruntime"
    manifest = Manifest.for_model(
        name, version, runtime, precision, model,
        inputs=ONNX_INPUTS if onnx else TFLITE_INPUTS, outputs=ONNX_OUTPUTS if onnx else TFLITE_OUTPUTS,
        preprocessing={"shape": [64], "dtype": "float32", "mean": 0.0, "std": 16.0},
        validation={"golden": "golden.npz", "dataset": "validation.npz", "accuracy_threshold": threshold,
                    "label_output": "probabilities"},
        hardware_classes=hardware_classes or [])
    return manifest, files


def install_digits(store: ModelStore, version: str, model: bytes, digits: modelgen.DigitsModel, **kwargs):
    manifest, files = digits_manifest(version, model, digits, **kwargs)
    store.install(manifest, model, files)
    return manifest


def untrained_digits(seed: int = 1) -> modelgen.DigitsModel:
    """A digits MLP fitted on shuffled labels: a real model that fails any sensible accuracy gate."""
    good = modelgen.train_digits_mlp(seed=0)
    from sklearn.neural_network import MLPClassifier
    rng = np.random.default_rng(seed)
    bad = MLPClassifier(hidden_layer_sizes=(32,), max_iter=5, random_state=seed)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad.fit(good.X_train, rng.permutation(good.y_train))
    return modelgen.DigitsModel(bad, good.X_train, good.y_train, good.X_test, good.y_test,
                                float((bad.predict(good.X_test) == good.y_test).mean()), seed)


def serving_store(root, digits: modelgen.DigitsModel, versions=("1.0.0",)) -> ModelStore:
    """A model store under ``root`` holding the digits versions, the first active: 1.0.0 is ``digits``
    itself, 2.0.0 the MLP trained with seed 3 (another model, same interface); gate data from ``digits``."""
    store = ModelStore(str(root))
    for version in versions:
        model = digits if version == "1.0.0" else modelgen.train_digits_mlp(seed=3)
        install_digits(store, version, modelgen.digits_onnx(model), digits)
    store.activate("digits", versions[0])
    return store
