"""Build the demo models the simulated fleet serves, offline, into a directory per model.

  python scripts/build-demo-models.py OUTDIR

Writes OUTDIR/digits-onnx/ (ONNX MLP trained on scikit-learn's bundled digits) and
OUTDIR/digits-tflite/ (the same network as a .tflite flatbuffer), each with
manifest.json, the model and its gate data (golden samples and the held-out split,
accuracy threshold 0.9). Idempotent: a model directory whose manifest already exists
is left alone, so deploys stay unchanged on a re-run.
"""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import modelgen  # noqa: E402  pylint: disable=wrong-import-position
from support.digits_store import digits_manifest  # noqa: E402  pylint: disable=wrong-import-position


def write_package(outdir: str, dirname: str, manifest, model: bytes, files) -> None:
    target = os.path.join(outdir, dirname)
    if os.path.exists(os.path.join(target, "manifest.json")):
        print("%s: up to date" % target)
        return
    tmp = target + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    for name, data in list(files.items()) + [(manifest.model_file, model)]:
        with open(os.path.join(tmp, name), "wb") as f:
            f.write(data)
    with open(os.path.join(tmp, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    os.rename(tmp, target)
    print("%s: built %s %s (%s, %d bytes)" % (target, manifest.name, manifest.version, manifest.runtime, len(model)))


def main() -> int:
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    digits = modelgen.train_digits_mlp(seed=0)
    onnx = modelgen.digits_onnx(digits)
    write_package(outdir, "digits-onnx", *_with(digits_manifest("1.0.0", onnx, digits), onnx))
    tflite = modelgen.digits_tflite(digits)
    write_package(outdir, "digits-tflite",
                  *_with(digits_manifest("1.0.0", tflite, digits, runtime="tflite"), tflite))
    return 0


def _with(manifest_and_files, model):
    manifest, files = manifest_and_files
    return manifest, model, files


if __name__ == "__main__":
    sys.exit(main())
