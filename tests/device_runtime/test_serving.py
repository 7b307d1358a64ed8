"""Blue-green ModelManager with real ONNX Runtime models: gate, refusal, instant rollback, memory limit."""
from __future__ import annotations

import threading
import time

import pytest

from edgeai_runtime.service.backends import ModelLoadError
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.service.gate import GateFailed
from edgeai_runtime.service.serving import ModelManager
from edgeai_runtime.device.store import ModelStore, StoreError
from support import modelgen
from support.digits_store import digits_manifest, install_digits, untrained_digits


@pytest.fixture(scope="module")
def onnx_v1(digits_onnx):
    """The digits model (conftest's session fixture) as the first version."""
    return digits_onnx


@pytest.fixture(scope="module")
def onnx_v2():
    """A second, independently trained good model."""
    return modelgen.digits_onnx(modelgen.train_digits_mlp(seed=3))


@pytest.fixture(scope="module")
def onnx_bad():
    return modelgen.digits_onnx(untrained_digits())


@pytest.fixture
def store(tmp_path):
    return ModelStore(str(tmp_path), keep=2)


def manager_for(store, **config):
    return ModelManager(store, RuntimeConfig(root=store.root, max_batch_size=8, **config))


def predict(manager, name, x):
    model = manager.acquire(name)
    try:
        return model.version, model.infer({"input": x})["probabilities"].argmax(axis=1)
    finally:
        model.release()


def test_activate_gates_and_serves(store, digits, onnx_v1):
    install_digits(store, "1.0.0", onnx_v1, digits)
    manager = manager_for(store)
    result = manager.activate("digits", "1.0.0")
    assert result["changed"] and result["gate"]["golden_checked"] == 10
    assert result["gate"]["accuracy"] >= 0.95
    assert store.active("digits") == "1.0.0"
    version, labels = predict(manager, "digits", digits.X_test[:50])
    assert version == "1.0.0" and (labels == digits.y_test[:50]).mean() > 0.9
    assert manager.activate("digits", "1.0.0")["changed"] is False


def test_failed_gate_keeps_the_old_version_serving(store, digits, onnx_v1, onnx_bad):
    install_digits(store, "1.0.0", onnx_v1, digits)
    manager = manager_for(store)
    manager.activate("digits", "1.0.0")
    manifest, files = digits_manifest("2.0.0", onnx_bad, digits, threshold=0.9)
    store.install(manifest, onnx_bad, files)
    with pytest.raises(GateFailed, match=r"golden sample|accuracy of digits 2.0.0 is 0\.\d+"):
        manager.activate("digits", "2.0.0")
    assert store.active("digits") == "1.0.0"
    assert predict(manager, "digits", digits.X_test[:5])[0] == "1.0.0"
    [status] = manager.status()
    assert status["active"]["version"] == "1.0.0" and "2.0.0" in status["last_error"]


def test_corrupt_model_fails_to_load_and_old_keeps_serving(store, digits, onnx_v1):
    install_digits(store, "1.0.0", onnx_v1, digits)
    manager = manager_for(store)
    manager.activate("digits", "1.0.0")
    garbage = b"\x08\x07not an onnx model" * 50
    manifest, files = digits_manifest("2.0.0", garbage, digits)
    store.install(manifest, garbage, files)
    with pytest.raises(ModelLoadError):
        manager.activate("digits", "2.0.0")
    assert store.active("digits") == "1.0.0" and manager.ready("digits")


def test_rollback_is_instant_and_in_flight_requests_finish(store, digits, onnx_v1, onnx_v2):
    v2 = onnx_v2
    install_digits(store, "1.0.0", onnx_v1, digits)
    install_digits(store, "2.0.0", v2, digits)
    manager = manager_for(store)
    manager.activate("digits", "1.0.0")
    held = manager.acquire("digits")  # an in-flight request on 1.0.0
    manager.activate("digits", "2.0.0")
    assert held.infer({"input": digits.X_test[:2]})["probabilities"].shape == (2, 10)  # still usable
    held.release()
    started = time.perf_counter()
    result = manager.rollback("digits")
    elapsed = time.perf_counter() - started
    assert result["instant"] and result["version"] == "1.0.0" and elapsed < 1.0
    assert store.active("digits") == "1.0.0" and store.pointer("digits", "previous") == "2.0.0"


def test_swap_under_load_fails_no_request(store, digits, onnx_v1, onnx_v2):
    v2 = onnx_v2
    install_digits(store, "1.0.0", onnx_v1, digits)
    install_digits(store, "2.0.0", v2, digits)
    manager = manager_for(store)
    manager.activate("digits", "1.0.0")
    stop, failures, served = threading.Event(), [], set()

    def client():
        x = digits.X_test[:4]
        while not stop.is_set():
            try:
                served.add(predict(manager, "digits", x)[0])
            except Exception as exc:  # any failure counts
                failures.append(exc)

    threads = [threading.Thread(target=client) for i in range(4)]  # pylint: disable=unused-variable
    for t in threads:
        t.start()
    for round_ in range(3):  # pylint: disable=unused-variable
        manager.activate("digits", "2.0.0")
        manager.activate("digits", "1.0.0")
    stop.set()
    for t in threads:
        t.join()
    assert failures == [] and served == {"1.0.0", "2.0.0"}


def test_previous_is_unloaded_beyond_the_memory_limit(store, digits, onnx_v1, onnx_v2):
    v2 = onnx_v2
    install_digits(store, "1.0.0", onnx_v1, digits)
    install_digits(store, "2.0.0", v2, digits)
    manager = manager_for(store, memory_limit_bytes=len(onnx_v1) + len(v2) // 2)
    manager.activate("digits", "1.0.0")
    manager.activate("digits", "2.0.0")
    [status] = manager.status()
    assert status["previous"] is None
    result = manager.rollback("digits")  # still works: reloaded from the store, gated again
    assert result["version"] == "1.0.0" and not result["instant"]


def test_incompatible_hardware_class_is_refused(store, digits, onnx_v1):
    manifest, files = digits_manifest("1.0.0", onnx_v1, digits)
    data = manifest.to_dict()
    data["hardware_classes"] = ["coral"]
    from edgeai_runtime.format.manifest import Manifest
    store.install(Manifest.from_dict(data), onnx_v1, files)
    manager = manager_for(store, hardware_class="generic")
    with pytest.raises(StoreError, match="built for coral, not for this generic device"):
        manager.activate("digits", "1.0.0")
    assert store.active("digits") is None
