"""Inference results into the outbox (edgeai_runtime.service.results): the confidence, the three modes,
an outbox that is locked or full never slowing or failing an inference, and the real service."""
from __future__ import annotations

import json
import random
import sqlite3
import time

import httpx
import numpy as np
import pytest

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.outbox import MiB, Outbox
from edgeai_runtime.service.results import ResultRecorder, row_confidences
from support.digits_store import serving_store
from support.service import start_service, write_config


def test_confidence_is_the_top_probability_of_the_first_floating_output():
    probabilities = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    outputs = {"label": np.array([1, 0], dtype=np.int64), "probabilities": probabilities}
    got = row_confidences(outputs, ["label", "probabilities"])  # the integer label is passed over
    assert [row[0] for row in got] == [1, 0] and np.allclose([row[1] for row in got], [0.7, 0.5])
    logits = {"logits": np.array([[2.0, 0.0, 0.0]])}  # not a distribution: its softmax
    [(cls, p)] = row_confidences(logits, ["logits"])
    assert cls == 0 and p == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert row_confidences({"label": np.array([3])}, ["label"]) is None
    [(_cls, single)] = row_confidences({"p": np.array([0.2, 0.8])}, ["p"])  # one row without a batch axis
    assert single == pytest.approx(0.8)


def recorder(tmp_path, policies, **kwargs):
    config = TelemetryConfig(root=str(tmp_path), device_id="dev-a", inference_results=policies).check()
    return ResultRecorder(config, **kwargs), Outbox.from_config(config)


def offer_rows(rec, rows, model="digits"):
    for row in rows:
        rec.offer(model, "1.0.0", {"probabilities": np.array([row], dtype=np.float32)}, ["probabilities"], None, 0.001)


def inference_records(box):
    return [json.loads(r.message)["data"] for r in box.pending(10 ** 6) if r.kind == "inference"]


def test_the_three_modes(tmp_path):
    rows = [[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.99, 0.01]]
    rec, box = recorder(tmp_path / "all", {"digits": {"mode": "all"}})
    offer_rows(rec, rows)
    offer_rows(rec, rows, model="other")  # no policy: not queued
    rec.close()
    got = inference_records(box)
    assert [r["confidence"] for r in got] == pytest.approx([0.95, 0.6, 0.7, 0.99])
    assert got[2]["top"] == [{"class": 1, "confidence": pytest.approx(0.7)}] and got[0]["model"] == "digits"
    rec, box = recorder(tmp_path / "low", {"digits": {"mode": "below_confidence", "confidence_below": 0.8}})
    offer_rows(rec, rows)
    rec.close()
    assert [r["confidence"] for r in inference_records(box)] == pytest.approx([0.6, 0.7])
    rec, box = recorder(tmp_path / "sample", {"digits": {"mode": "sample", "sample_rate": 0.25}},
                        rng=random.Random(3))
    offer_rows(rec, rows * 100)
    rec.close()
    assert 60 <= len(inference_records(box)) <= 140  # a quarter of 400
    rec, box = recorder(tmp_path / "none", {"digits": {"mode": "sample", "sample_rate": 0.0}})
    offer_rows(rec, rows)
    rec.close()
    assert inference_records(box) == []


def test_a_locked_outbox_never_makes_an_inference_wait(tmp_path):
    rec, box = recorder(tmp_path, {"digits": {"mode": "all"}}, max_pending=50)
    box.enqueue("telemetry", {})  # the database exists
    other = sqlite3.connect(box.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the outbox (e.g. a long write)
    started = time.perf_counter()
    offer_rows(rec, [[0.9, 0.1]] * 2000)
    spent = time.perf_counter() - started
    assert spent < 0.5, spent  # 2000 offers; the writer thread is stuck on the lock meanwhile
    assert rec.dropped >= 2000 - 51 - rec.batch
    other.execute("ROLLBACK")
    other.close()
    rec.close(timeout=30)
    assert rec.recorded == 2000 - rec.dropped and len(inference_records(box)) == rec.recorded


@pytest.fixture(scope="module")
def digits_service(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("results-device")
    serving_store(root, digits)
    write_config(root)
    (root / "etc" / "telemetry.json").write_text(json.dumps(
        {"device_id": "dev-a", "outbox_max_bytes": MiB, "inference_results": {"digits": {"mode": "all"}}}))
    proc, base = start_service(root)
    yield root, base
    proc.terminate()
    proc.wait(30)


def infer(base, x):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    return httpx.post(base + "/v2/models/digits/infer", json=body, timeout=30)


def test_the_service_queues_the_results_of_its_inferences(digits_service, digits):
    root, base = digits_service
    box = Outbox(str(root / "outbox" / "outbox.sqlite3"), "dev-a")
    x = digits.X_test[:3].astype(np.float32) / 16.0
    answer = infer(base, x)
    assert answer.status_code == 200
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    deadline = time.monotonic() + 10
    while not inference_records(box) and time.monotonic() < deadline:
        time.sleep(0.05)
    [record] = inference_records(box)
    assert record["model"] == "digits" and record["version"] == "1.0.0" and record["rows"] == 3
    probabilities = np.array(outputs["probabilities"]).reshape(3, 10)
    assert [t["class"] for t in record["top"]] == outputs["label"]
    assert record["confidence"] == pytest.approx(probabilities.max(axis=1).min(), abs=1e-5)
    assert record["latency_s"] > 0


def test_a_full_outbox_never_fails_an_inference(digits_service, digits):
    root, base = digits_service
    box = Outbox(str(root / "outbox" / "outbox.sqlite3"), "dev-a", max_bytes=MiB)
    box.delete([r.seq for r in box.pending(10 ** 6) if r.kind == "inference"])
    # The cap held by telemetry to the last small record: no room for a result, and none to evict.
    while box.status()["evicted"]["telemetry"]["records"] == 0:
        box.enqueue_many("telemetry", [{"i": i} for i in range(200)])
    box.enqueue("telemetry", {"i": -1})
    before = box.status()["refused"]["inference"]["outbox_full"]
    x = digits.X_test[:1].astype(np.float32) / 16.0
    for _round in range(20):
        assert infer(base, x).status_code == 200
    deadline = time.monotonic() + 10
    while box.status()["refused"]["inference"]["outbox_full"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert box.status()["refused"]["inference"]["outbox_full"] > before
    assert box.status()["kinds"]["telemetry"]["records"] > 0
