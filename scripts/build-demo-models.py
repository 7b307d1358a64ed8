"""Build the demo model release the simulated fleet serves, offline.

  python scripts/build-demo-models.py OUTDIR [--version V ...]

Writes the release OUTDIR/digits-1.0.0/ (and one per --version: the staged rollout scenario rolls out 1.1.0 and
1.2.0, each a network trained from another seed, so each version is another build), one variant of it per runtime:
  onnxruntime-fp32/  an ONNX MLP trained on scikit-learn's bundled digits (any class that runs
                     ONNX Runtime: generic, and the Jetsons through ONNX Runtime)
  tflite-int8/       the same network as a .tflite flatbuffer with int8 weights (raspberry_pi, and
                     coral, which runs it on LiteRT's CPU kernels when no Edge TPU build is on offer)
each with manifest.json, the model and its gate data (golden samples and the held-out split,
accuracy threshold 0.9). Idempotent: a variant directory whose manifest already exists is left
alone, so deploys stay unchanged on a re-run.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from support import modelgen  # noqa: E402  pylint: disable=wrong-import-position
from support.digits_store import digits_manifest  # noqa: E402  pylint: disable=wrong-import-position

VERSION = "1.0.0"


def write_package(target: str, manifest, model: bytes, files) -> None:
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
    print("%s: built %s %s (%s/%s, %d bytes)"
          % (target, manifest.name, manifest.version, manifest.runtime, manifest.precision, len(model)))


def build_release(outdir: str, version: str, seed: int) -> None:
    release = os.path.join(outdir, "digits-%s" % version)
    if all(os.path.exists(os.path.join(release, v, "manifest.json")) for v in ("onnxruntime-fp32", "tflite-int8")):
        print("%s: up to date" % release)
        return
    os.makedirs(release, exist_ok=True)
    digits = modelgen.train_digits_mlp(seed=seed)
    onnx = modelgen.digits_onnx(digits)
    manifest, files = digits_manifest(version, onnx, digits)
    write_package(os.path.join(release, "onnxruntime-fp32"), manifest, onnx, files)
    tflite = modelgen.digits_tflite(digits, quantize="int8")
    manifest, files = digits_manifest(version, tflite, digits, runtime="tflite", precision="int8",
                                      hardware_classes=["raspberry_pi", "coral"])
    write_package(os.path.join(release, "tflite-int8"), manifest, tflite, files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir")
    parser.add_argument("--version", action="append", default=[], help="another version to build (repeatable)")
    args = parser.parse_args()
    versions = [VERSION] + [v for v in args.version if v != VERSION]
    for seed, version in enumerate(versions):
        build_release(args.outdir, version, seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
