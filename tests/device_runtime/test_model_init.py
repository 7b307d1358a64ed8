"""`model init`: a manifest written from the model file itself (ONNX and TFLite), with optional gate
data, that the existing install path takes unchanged and a real service serves; refusals write nothing."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from edgeai_runtime.controller.publisher import ModelDir
from edgeai_runtime.format.manifest import Manifest
from edgeai_runtime.format.modelfile import ModelFileError, init_model, sniff_format
from edgeai_runtime.service.gate import encode_npz
from support import modelgen
from support.service import runtime, start_service, write_config


def artifact_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeai_runtime.controller.publisher", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def last_json(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def listing(directory):
    """Every file under ``directory`` with its bytes: what a refusal must leave as it was."""
    out = {}
    for base, _dirs, files in os.walk(directory):
        for fname in files:
            path = os.path.join(base, fname)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = f.read()
    return out


@pytest.fixture(scope="module")
def gate_data(tmp_path_factory, digits):
    """Golden samples and the held-out validation set, as .npz files outside any model directory."""
    where = tmp_path_factory.mktemp("gate")
    golden_x, golden_y = modelgen.golden_samples(digits, n=10)
    val_x, val_y = modelgen.validation_set(digits)
    paths = {"golden": where / "golden.npz", "validation": where / "validation.npz",
             "wrong": where / "wrong-golden.npz", "no-labels": where / "no-labels.npz"}
    paths["golden"].write_bytes(encode_npz({"input": golden_x}, golden_y))
    paths["validation"].write_bytes(encode_npz({"input": val_x}, val_y))
    paths["wrong"].write_bytes(encode_npz({"input": golden_x}, (golden_y + 1) % 10))
    np.savez(paths["no-labels"], **{"inputs.input": golden_x})
    return paths


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits_onnx, gate_data):
    """A device root holding digits 1.0.0 as `model init` described it, installed with the existing
    `model install --activate` (gate data included), and a real service serving it."""
    model_dir = tmp_path_factory.mktemp("mymodel")
    (model_dir / "model.onnx").write_bytes(digits_onnx)
    no_root = tmp_path_factory.mktemp("unused") / "no-such-root"
    init = runtime(no_root, "model", "init",
                   str(model_dir / "model.onnx"), "--name", "digits", "--version", "1.0.0",
                   "--golden", str(gate_data["golden"]), "--validation", str(gate_data["validation"]),
                   "--min-accuracy", "0.9", "--label-output", "probabilities")
    assert init.returncode == 0, init.stdout + init.stderr
    root = tmp_path_factory.mktemp("device")
    write_config(root)
    install = runtime(root, "model", "install", "--manifest", str(model_dir / "manifest.json"),
                      "--model", str(model_dir / "model.onnx"), "--file", "golden.npz=%s" % (model_dir / "golden.npz"),
                      "--file", "validation.npz=%s" % (model_dir / "validation.npz"), "--activate")
    assert install.returncode == 0, install.stdout + install.stderr
    proc, base = start_service(root)
    yield {"dir": model_dir, "no_root": no_root, "init": last_json(init), "install": last_json(install), "base": base}
    proc.terminate()
    proc.wait(timeout=30)


def test_init_reads_the_onnx_model_without_a_device_root(served, digits_onnx):
    result, model_dir = served["init"], served["dir"]
    assert result["changed"] is True and not served["no_root"].exists()
    written = json.loads((model_dir / "manifest.json").read_text())
    assert written == result["manifest"] and Manifest.from_dict(written).to_dict() == written
    assert written["runtime"] == "onnxruntime" and written["model_file"] == "model.onnx"
    assert written["sha256"] == hashlib.sha256(digits_onnx).hexdigest() and written["size"] == len(digits_onnx)
    assert written["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert written["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]},
                                  {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]


def test_gate_data_is_copied_beside_the_model_and_named_in_the_manifest(served, gate_data, digits):
    model_dir, written = served["dir"], served["init"]["manifest"]
    for fname, source in (("golden.npz", gate_data["golden"]), ("validation.npz", gate_data["validation"])):
        assert (model_dir / fname).read_bytes() == source.read_bytes()
        assert written["files"][fname] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert written["validation"] == {"golden": "golden.npz", "dataset": "validation.npz", "accuracy_threshold": 0.9,
                                     "label_output": "probabilities", "latency_p95_ms": None}
    assert served["init"]["rows"] == {"golden": 10, "dataset": len(modelgen.validation_set(digits)[1])}
    # The controller's model directory reader (edgeai-artifact pack / publish) takes it as it is.
    assert ModelDir.read(str(model_dir)).files == {"golden.npz": str(model_dir / "golden.npz"),
                                                   "validation.npz": str(model_dir / "validation.npz")}


def test_the_installed_manifest_activates_through_its_gate_and_serves(served, digits):
    activation = served["install"]["activation"]
    gate = activation["gate"]
    assert activation["via"] == "store" and gate["golden_checked"] == 10 and gate["threshold"] == 0.9
    assert gate["samples"] > 100 and gate["accuracy"] >= 0.9
    x = digits.X_test[:16]
    reply = httpx.post(served["base"] + "/v2/models/digits/infer", timeout=30, json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]})
    assert reply.status_code == 200, reply.text
    outputs = {o["name"]: o for o in reply.json()["outputs"]}
    probs = np.array(outputs["probabilities"]["data"], dtype=np.float32).reshape(16, 10)
    np.testing.assert_allclose(probs, digits.predict_proba(x), atol=1e-4)
    assert outputs["label"]["data"] == digits.model.predict(x).tolist()


@pytest.mark.parametrize("gate,needle", [
    ({"golden": "wrong"}, "of digits 1.0.0: predicted"),
    ({"validation": "validation", "min_accuracy": 1.0}, "below the threshold 1.0000"),
])
def test_the_gate_judges_by_the_gate_data_init_was_given(tmp_path, digits_onnx, gate_data, gate, needle):
    (tmp_path / "model.onnx").write_bytes(digits_onnx)
    kwargs = {k: str(gate_data[v]) if isinstance(v, str) else v for k, v in gate.items()}
    result = init_model(str(tmp_path / "model.onnx"), "digits", "1.0.0", label_output="probabilities", **kwargs)
    root = tmp_path / "device"
    root.mkdir()
    files = ["--file=%s=%s" % (name, path) for name, path in result["files"].items()]
    install = runtime(root, "model", "install", "--manifest", result["manifest_path"], "--model",
                      str(tmp_path / "model.onnx"), *files, "--activate")
    failure = last_json(install)
    assert install.returncode == 1 and failure["reason"] == "gate" and needle in failure["msg"], failure


def test_init_reads_the_tflite_model_through_edgeai_artifact(tmp_path, digits_tflite):
    (tmp_path / "digits.tflite").write_bytes(digits_tflite)
    proc = artifact_cli("init", str(tmp_path / "digits.tflite"), "--name", "digits", "--version", "2.0.0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = json.loads((tmp_path / "manifest.json").read_text())
    assert written == last_json(proc)["manifest"]
    assert written["runtime"] == "tflite" and written["model_file"] == "digits.tflite"
    assert written["sha256"] == hashlib.sha256(digits_tflite).hexdigest() and written["size"] == len(digits_tflite)
    assert written["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [1, 64]}]
    assert written["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10]}]
    assert ModelDir.read(str(tmp_path)).sha256 == written["sha256"]


def test_the_format_is_sniffed_from_the_first_bytes(digits_onnx, digits_tflite):
    assert (sniff_format(digits_onnx[:16]), sniff_format(digits_tflite[:16])) == ("onnx", "tflite")
    assert sniff_format(b"") == sniff_format(b"name,value\n") == "unknown"


def _bad_cases(digits_onnx, digits_tflite):
    return {
        "text": ("notes.onnx", b"name,value\n1,2\n", "unknown_format", "neither an ONNX nor a TFLite model"),
        "empty": ("empty.tflite", b"", "unknown_format", "the file is empty"),
        "truncated onnx": ("cut.onnx", digits_onnx[:len(digits_onnx) // 2], "unreadable_model",
                           "is not a loadable ONNX model"),
        "truncated tflite": ("cut.tflite", digits_tflite[:len(digits_tflite) // 3], "unreadable_model",
                             "is not a loadable TFLite model"),
    }


@pytest.mark.parametrize("case", ["text", "empty", "truncated onnx", "truncated tflite"])
def test_what_is_not_a_model_is_refused_and_nothing_is_written(tmp_path, digits_onnx, digits_tflite, case):
    fname, data, reason, needle = _bad_cases(digits_onnx, digits_tflite)[case]
    (tmp_path / fname).write_bytes(data)
    before = listing(tmp_path)
    proc = runtime(tmp_path / "absent-root", "model", "init", str(tmp_path / fname), "--name", "m", "--version", "1")
    failure = last_json(proc)
    assert proc.returncode == 1 and failure["failed"] is True and failure["reason"] == reason, failure
    assert needle in failure["msg"] and str(tmp_path / fname) in failure["msg"]
    assert listing(tmp_path) == before


def test_an_existing_manifest_is_kept_without_force(tmp_path, digits_onnx, gate_data):
    model = tmp_path / "model.onnx"
    model.write_bytes(digits_onnx)
    first = init_model(str(model), "digits", "1.0.0")
    assert first["changed"] and first["written"] == [str(tmp_path / "manifest.json")]
    before = listing(tmp_path)
    assert init_model(str(model), "digits", "1.0.0")["changed"] is False  # the same manifest: nothing to do
    with pytest.raises(ModelFileError) as refused:
        init_model(str(model), "digits", "1.0.1", golden=str(gate_data["golden"]))
    assert refused.value.reason == "manifest_exists" and "pass --force" in str(refused.value)
    assert listing(tmp_path) == before  # not even the golden file was copied
    forced = init_model(str(model), "digits", "1.0.1", golden=str(gate_data["golden"]), force=True)
    assert forced["changed"] and json.loads((tmp_path / "manifest.json").read_text())["version"] == "1.0.1"


@pytest.mark.parametrize("kwargs,reason,needle", [
    ({"golden": "no-labels"}, "bad_gate_data", "lacks arrays labels"),
    ({"golden": "missing"}, "bad_gate_data", "No such file"),
    ({"min_accuracy": 0.9}, "usage", "--min-accuracy needs --validation"),
    ({"label_output": "logits"}, "usage", "'logits' is not an output"),
    ({"version": "1/2"}, "usage", "version '1/2' must be"),
])
def test_bad_arguments_and_gate_data_are_refused_before_writing(tmp_path, digits_onnx, gate_data, kwargs,
                                                                reason, needle):
    (tmp_path / "model.onnx").write_bytes(digits_onnx)
    kwargs = {k: str(gate_data[v]) if v in gate_data else str(tmp_path / v) if v == "missing" else v
              for k, v in kwargs.items()}
    before = listing(tmp_path)
    with pytest.raises(ModelFileError) as refused:
        init_model(str(tmp_path / "model.onnx"), "digits", kwargs.pop("version", "1.0.0"), **kwargs)
    assert refused.value.reason == reason and needle in str(refused.value), str(refused.value)
    assert listing(tmp_path) == before


def test_an_output_that_is_not_a_tensor_is_refused_by_name(tmp_path, digits):
    """skl2onnx's default ZipMap output (a sequence of maps) has no v2 datatype: init names it."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    onx = to_onnx(modelgen._unwrap(digits), initial_types=[("input", FloatTensorType([None, 64]))], target_opset=17)
    (tmp_path / "zipmap.onnx").write_bytes(onx.SerializeToString())
    before = listing(tmp_path)
    with pytest.raises(ModelFileError) as refused:
        init_model(str(tmp_path / "zipmap.onnx"), "digits", "1.0.0")
    assert refused.value.reason == "unsupported_tensor" and "output 'output_probability' is seq(map(int64," \
        in str(refused.value), str(refused.value)
    assert listing(tmp_path) == before
