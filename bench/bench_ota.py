"""Benchmark of one-device OTA (edgeai_runtime.device.ota) with a ~50 MB model, end to end, by phase.

    .venv/bin/python bench/bench_ota.py [--quick] [--size-mb 50] [--out summary.json]

Everything runs on 127.0.0.1: a real service process (``edgeai-runtime serve``) over a throw-away
device root holding v1 as a signed artifact, and a registry (signed update document + the v2
artifact) served over HTTPS by a local file server with a throw-away CA. Measured, in rounds (best
and median reported):

1. ``pull``: ``Agent.run_once`` - download (stage), verify, load beside v1, gate (golden samples and
   a p95 latency probe), activate (with a probe inference), commit; watch window 0 (a configured
   wait, not work: reported separately by ``--watch``);
2. ``push``: ``Updater.apply`` of the artifact already on the device (no transfer);
3. ``rollback``: ``Updater.rollback`` until the previous version has answered a probe inference;
4. ``rerun``: ``Agent.run_once`` when the device already serves what the registry says;
5. ``pull (delta)``: ``Agent.run_once`` with the device back on v1 and a delta (v2 differs from v1
   in its last layer only) offered beside the artifact: download, rebuild (``delta rebuild``), and
   every phase as in 1. ``delta make (controller)`` is the controller's one-time cost of the delta.

Baselines measured in the same run: ``copy`` (read + write + fsync of the artifact file),
``load-plain`` (``onnxruntime.InferenceSession`` from the plaintext bytes + one inference: what any
deployment of the model pays). The model is an MLP of random weights (64 -> H -> H -> 10); its gate
has golden samples labelled by its own predictions and no accuracy threshold, since random weights
have no accuracy to gate on. The last thing printed is a JSON summary.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeai_runtime.controller import deltas, packing  # noqa: E402
from edgeai_runtime.controller.publish import publish  # noqa: E402
from edgeai_runtime.format import keys  # noqa: E402
from edgeai_runtime.device.config import load_config  # noqa: E402
from edgeai_runtime.service.gate import encode_npz  # noqa: E402
from edgeai_runtime.format.keys import DeviceKeyring  # noqa: E402
from edgeai_runtime.device.ota import Policy, Updater  # noqa: E402
from edgeai_runtime.device.agent import Agent, Downloader  # noqa: E402
from edgeai_runtime.device.store import ModelStore  # noqa: E402
from support.https_files import Registry  # noqa: E402
from support.pki import make_ca, make_server_cert, write_pem  # noqa: E402
from support.service import start_service, write_config  # noqa: E402

TARGET_OTA_S = 10.0
TARGET_ROLLBACK_S = 1.0
TARGET_RERUN_RATIO = 0.5
TARGET_DELTA_SAVED = 0.8
PROFILES = {"full": {"rounds": 3}, "quick": {"rounds": 1}}


def mlp(hidden: int, seed: int, last_seed: int) -> bytes:
    """64 -> hidden -> hidden -> 10, random weights; ``last_seed`` draws only the last layer."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((64, hidden)) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, hidden)) / np.sqrt(hidden)).astype(np.float32)
    w3 = (np.random.default_rng(last_seed).standard_normal((hidden, 10)) / np.sqrt(hidden)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["input", "w1"], ["h1"]), helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "w2"], ["h2"]), helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("MatMul", ["a2", "w3"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "bench_mlp",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
                              [numpy_helper.from_array(w, n) for w, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def gate_files(model: bytes) -> Dict[str, bytes]:
    x = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    labels = ort.InferenceSession(model).run(None, {"input": x})[0].argmax(axis=1)
    return {"golden.npz": encode_npz({"input": x}, labels)}


def pack(workdir: Path, version: str, model: bytes, signer) -> Dict[str, Any]:
    files = gate_files(model)
    src = workdir / ("model-%s.onnx" % version)
    src.write_bytes(model)
    fields = {"name": "bench", "version": version, "runtime": "onnxruntime", "precision": "fp32",
              "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
              "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
              "validation": {"golden": "golden.npz", "latency_p95_ms": 1000.0},
              "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    out = workdir / ("bench-%s.eaf" % version)
    packed = packing.pack(str(src), str(out), fields, signer)
    src.unlink()
    paths = {}
    for name, data in files.items():
        (workdir / ("%s-%s" % (version, name))).write_bytes(data)
        paths[name] = str(workdir / ("%s-%s" % (version, name)))
    return {"path": str(out), "packed": packed, "files": files, "file_paths": paths}


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def baselines(v2: Dict[str, Any], model: bytes, workdir: Path) -> Dict[str, float]:
    def copy() -> None:
        with open(v2["path"], "rb") as src, open(workdir / "copy.bin", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())

    def load_plain() -> None:
        session = ort.InferenceSession(model)
        session.run(None, {"input": np.zeros((1, 64), np.float32)})

    return {"copy": timed(copy)[0], "load-plain": timed(load_plain)[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="one round")
    parser.add_argument("--size-mb", type=float, default=50.0, help="model size (default 50)")
    parser.add_argument("--watch", type=float, default=0.0, help="watch window of the pull update (default 0)")
    parser.add_argument("--out", help="also write the JSON summary here")
    args = parser.parse_args()
    profile = PROFILES["quick" if args.quick else "full"]
    hidden = int(((args.size_mb * 1e6 / 4) ** 0.5))
    workdir = Path(tempfile.mkdtemp(prefix="bench-ota-"))
    signer = ed25519.Ed25519PrivateKey.generate()
    rows: Dict[str, List[float]] = {}
    phases: List[Dict[str, float]] = []
    notes: Dict[str, Any] = {}
    try:
        v1_model, v2_model = mlp(hidden, 1, 1), mlp(hidden, 1, 2)
        v1, v2 = pack(workdir, "1.0.0", v1_model, signer), pack(workdir, "2.0.0", v2_model, signer)
        notes.update(model_bytes=len(v2_model), artifact_bytes=os.path.getsize(v2["path"]), hidden=hidden)
        seconds, made = timed(deltas.make, v1_model, {"name": "bench", "version": "1.0.0",
                                                      "sha256": hashlib.sha256(v1_model).hexdigest()},
                              v2["path"], v2["packed"].data_key, signer, str(workdir / "bench-2.0.0.from-1.0.0.eafd"))
        assert made is not None, "no delta: the versions share too little"
        rows["delta make (controller)"] = [seconds]
        delta_facts = {"path": made.path, "base_version": "1.0.0", "base_sha256": made.header["base"]["sha256"]}
        notes.update(delta_bytes=made.size, delta_saved=made.bytes_saved / made.full_size)
        ca_key, ca_cert = make_ca("bench CA")
        key, cert = make_server_cert(ca_key, ca_cert)
        ca = write_pem(workdir / "ca.pem", ca_cert)
        server = Registry(str(workdir / "registry"), write_pem(workdir / "s.pem", cert), write_pem(workdir / "s.key", key))
        for round_no in range(profile["rounds"]):
            root = workdir / ("device-%d" % round_no)
            (root / "etc" / "signers").mkdir(parents=True)
            (root / "etc" / "signers" / ("%s.pub" % keys.key_id(signer))).write_text(keys.public_pem(signer))
            ring = DeviceKeyring(str(root))
            ring.create("x25519")
            public = keys.load_public(ring.current().public_pem)
            store = ModelStore(str(root), require_signed=True)
            store.install_artifact(v1["path"], keys.wrap(v1["packed"].data_key, public, v1["packed"].artifact_id),
                                   v1["files"])
            store.activate("bench", "1.0.0")
            write_config(root, require_signed=True)
            proc, _base = start_service(root)
            try:
                config = load_config(str(root))
                slot2 = keys.wrap(v2["packed"].data_key, public, v2["packed"].artifact_id)
                publish(str(workdir / "registry"), signer, [{"artifact": v2["path"], "files": v2["file_paths"]}],
                        {ring.current_id(): ring.current().public_pem}, lambda a, p: slot2, sequence=round_no + 1)
                for name, seconds in baselines(v2, v2_model, workdir).items():
                    rows.setdefault(name, []).append(seconds)
                agent = Agent(config, Downloader(server.url, ca), Policy(watch_s=args.watch, interval_s=0.2))
                seconds, result = timed(agent.run_once)
                assert not result["failed"] and result["models"][0]["outcome"] == "committed", result
                rows.setdefault("pull", []).append(seconds)
                full_pull_bytes = result["models"][0]["bytes_transferred"]
                phases.append(dict(result["models"][0]["timings"], total=seconds))
                seconds, rerun = timed(agent.run_once)
                assert not rerun["changed"], rerun
                rows.setdefault("rerun", []).append(seconds)
                seconds, back = timed(Updater(config).rollback, "bench", None, "bench")
                assert back["active_version"] == "1.0.0"
                rows.setdefault("rollback", []).append(seconds)
                seconds, pushed = timed(Updater(config).apply, store.file_path("bench", "2.0.0", "model.eaf"),
                                        store.keyslot("bench", "2.0.0"), v2["files"], Policy(watch_s=0))
                assert pushed["outcome"] == "committed", pushed
                rows.setdefault("push (on device)", []).append(seconds)
                # Delta: the device is back on v1 without v2; the registry offers a delta beside the artifact.
                Updater(config).rollback("bench", "1.0.0", "bench")
                store.remove("bench", "2.0.0")
                publish(str(workdir / "registry"), signer, [{"artifact": v2["path"], "files": v2["file_paths"],
                                                             "deltas": [delta_facts]}],
                        {ring.current_id(): ring.current().public_pem}, lambda a, p: slot2, sequence=100 + round_no)
                seconds, result = timed(agent.run_once)
                model = result["models"][0]
                assert not result["failed"] and model["outcome"] == "committed" and model["delta"]["used"], result
                rows.setdefault("pull (delta)", []).append(seconds)
                rows.setdefault("delta rebuild", []).append(model["delta"]["rebuild_s"])
                notes.update(delta_pull_bytes=model["bytes_transferred"], full_pull_bytes=full_pull_bytes)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        server.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    best = {k: min(v) for k, v in rows.items()}
    median = {k: statistics.median(v) for k, v in rows.items()}
    phase_best = min(phases, key=lambda p: p["total"])
    targets = {"ota_under_10s": best["pull"] < TARGET_OTA_S, "rollback_under_1s": best["rollback"] < TARGET_ROLLBACK_S,
               "rerun_at_most_half": best["rerun"] <= TARGET_RERUN_RATIO * best["pull"],
               "delta_80pct_fewer_bytes": notes["delta_saved"] >= TARGET_DELTA_SAVED}
    print("model %.1f MB (hidden %d), artifact %.1f MB, %d round(s), watch %.1f s"
          % (notes["model_bytes"] / 1e6, hidden, notes["artifact_bytes"] / 1e6, profile["rounds"], args.watch))
    print("%-18s %8s %8s %10s %10s" % ("operation", "best s", "median s", "x copy", "x load"))
    for name in ("copy", "load-plain", "pull", "push (on device)", "rollback", "rerun", "pull (delta)",
                 "delta rebuild", "delta make (controller)"):
        print("%-18s %8.3f %8.3f %10.2f %10.2f" % (name, best[name], median[name], best[name] / best["copy"],
                                                   best[name] / best["load-plain"]))
    print("pull phases (best round): " + ", ".join("%s %.3f s" % (k, v) for k, v in phase_best.items()))
    print("rerun / pull = %.3f (target <= %.2f)" % (best["rerun"] / best["pull"], TARGET_RERUN_RATIO))
    saved = 1 - notes["delta_pull_bytes"] / notes["full_pull_bytes"]
    print("delta: %d bytes vs artifact %d (%.2f%% fewer; pulled %d vs %d bytes with gate files: %.2f%% fewer; "
          "target >= %d%%)" % (notes["delta_bytes"], notes["artifact_bytes"], 100 * notes["delta_saved"],
                               notes["delta_pull_bytes"], notes["full_pull_bytes"], 100 * saved,
                               100 * TARGET_DELTA_SAVED))
    summary = {"environment": {"cpus": os.cpu_count(), "python": platform.python_version(),
                               "onnxruntime": ort.__version__, "onnx": onnx.__version__,
                               "loadavg": os.getloadavg()},
               "notes": notes, "rounds": rows, "best_s": best, "median_s": median, "pull_phases": phase_best,
               "rerun_over_pull": best["rerun"] / best["pull"], "targets": targets,
               "targets_met": all(targets.values())}
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
