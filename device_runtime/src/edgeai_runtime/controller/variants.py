"""Model variants: one model version built once per runtime or hardware class.

Pure rules, no I/O beyond reading a model file's first bytes: what a variant is (its identity),
which runtimes a class profile can serve, which variant of a release fits a device, and whether
a model file is in the format its manifest claims (by format.modelfile.sniff_format).

A variant's identity is (name, version, runtime, precision, plaintext sha256); the controller's
artifact file names and caches are keyed by it, so two variants never share a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from edgeai_runtime.format.keys import ArtifactError
from edgeai_runtime.format.modelfile import SNIFF_BYTES, sniff_format

#: The model runtimes a device whose class profile names ``runtime`` can serve, best first. A Jetson
#: (``tensorrt``) also runs ONNX models through ONNX Runtime (TensorRT / CUDA execution providers); a
#: Coral (``edgetpu``) runs plain .tflite models on LiteRT's CPU kernels when no Edge TPU build fits.
#: This follows the packages the inference_service role installs for each profile runtime.
SERVES: Dict[str, Tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime",),
    "tensorrt": ("tensorrt", "onnxruntime"),
    "tflite": ("tflite",),
    "edgetpu": ("edgetpu", "tflite"),
}

#: The file format each model runtime loads.
FORMAT_OF_RUNTIME = {"onnxruntime": "onnx", "tflite": "tflite", "edgetpu": "tflite", "tensorrt": "tensorrt-plan"}


@dataclass(frozen=True)
class Profile:
    """What a device is, as far as choosing a model build goes (its etc/profile.json)."""
    hardware_class: str
    runtime: str
    precision: str

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "Profile":
        missing = [k for k in ("hardware_class", "runtime", "precision") if not data.get(k)]
        if missing:
            raise ArtifactError("no_profile", "the device's class profile lacks %s" % ", ".join(missing))
        return cls(str(data["hardware_class"]), str(data["runtime"]), str(data["precision"]))

    def describe(self) -> str:
        return "%s (runtime %s, precision %s)" % (self.hardware_class, self.runtime, self.precision)


def identity(manifest: Mapping[str, object]) -> str:
    """A variant's identity as a file-name stem: name-version-runtime-precision-sha256[:16]."""
    return "%s-%s-%s-%s-%s" % (manifest["name"], manifest["version"], manifest["runtime"], manifest["precision"],
                               str(manifest["sha256"])[:16])


def _classes(manifest: Mapping[str, object]) -> List[str]:
    """The hardware classes a variant is limited to (none: any class). Manifest.from_dict has
    checked that they are a list of class names."""
    classes = manifest.get("hardware_classes") or []
    if not isinstance(classes, (list, tuple)):
        raise ArtifactError("bad_manifest", "hardware_classes must be a list of class names, not %r" % (classes,))
    return [str(c) for c in classes]


def label(manifest: Mapping[str, object]) -> str:
    """How people read a variant: runtime/precision, and the classes it is limited to."""
    classes = _classes(manifest)
    return "%s/%s for %s" % (manifest["runtime"], manifest["precision"],
                             ", ".join(classes) if classes else "any class")


def _claims(manifest: Mapping[str, object], hardware_class: str) -> bool:
    classes = _classes(manifest)
    return not classes or hardware_class in classes


def rank(manifest: Mapping[str, object], profile: Profile) -> Optional[Tuple[int, int, int]]:
    """How well a variant fits a device (lower is better), or None when it cannot serve there:
    the manifest must allow the class and the runtime must be one the profile serves. Then the
    profile's own runtime beats a fallback, its precision beats another, and a variant that names
    the class beats one that allows any class."""
    chain = SERVES.get(profile.runtime, (profile.runtime,))
    if manifest["runtime"] not in chain or not _claims(manifest, profile.hardware_class):
        return None
    return (chain.index(str(manifest["runtime"])), 0 if manifest["precision"] == profile.precision else 1,
            0 if manifest.get("hardware_classes") else 1)


def check_distinct(variants: Sequence[Tuple[str, Mapping[str, object]]]) -> None:
    """Refuse a release in which two variants claim the same class with the same runtime and
    precision (the choice between them would be arbitrary). ``variants`` are (where, manifest)."""
    for i, (where_a, a) in enumerate(variants):
        for where_b, b in variants[i + 1:]:
            if (a["runtime"], a["precision"]) != (b["runtime"], b["precision"]):
                continue
            classes_a, classes_b = set(_classes(a)), set(_classes(b))
            if classes_a and classes_b and not classes_a & classes_b:
                continue
            shared = sorted(classes_a & classes_b) if classes_a and classes_b else sorted(classes_a | classes_b)
            raise ArtifactError("variant_conflict", "%s and %s both claim %s with runtime %s, precision %s"
                                % (where_a, where_b, ", ".join(shared) or "every class", a["runtime"],
                                   a["precision"]))


def choose(variants: Sequence[Tuple[str, Mapping[str, object]]], profile: Profile) -> int:
    """The index of the variant that fits ``profile`` best; ArtifactError ``no_variant`` naming the
    device's class and every variant on offer when none fits."""
    ranked: List[Tuple[Tuple[int, int, int], int]] = []
    for index, (_where, manifest) in enumerate(variants):
        score = rank(manifest, profile)
        if score is not None:
            ranked.append((score, index))
    if not ranked:
        offer = "; ".join("%s (%s)" % (where, label(m)) for where, m in variants)
        raise ArtifactError("no_variant", "no variant fits a %s device: it serves %s; on offer: %s"
                            % (profile.describe(), " or ".join(SERVES.get(profile.runtime, (profile.runtime,))),
                               offer))
    ranked.sort()
    if len(ranked) > 1 and ranked[0][0] == ranked[1][0]:  # check_distinct rules this out; be sure anyway
        raise ArtifactError("variant_conflict", "%s and %s fit a %s device equally well"
                            % (variants[ranked[0][1]][0], variants[ranked[1][1]][0], profile.describe()))
    return ranked[0][1]


def check_format(path: str, runtime: str) -> None:
    """Refuse a model file whose format is not what ``runtime`` loads, naming the file."""
    with open(path, "rb") as f:
        found = sniff_format(f.read(SNIFF_BYTES))
    want = FORMAT_OF_RUNTIME.get(runtime)
    if want == "tensorrt-plan":
        if found != "unknown":
            raise ArtifactError("bad_manifest", "%s is a %s model, but the manifest says runtime %s (a TensorRT "
                                "plan)" % (path, found, runtime))
    elif found != want:
        raise ArtifactError("bad_manifest", "%s is %s, but the manifest says runtime %s, which loads %s models"
                            % (path, "not a recognised model file" if found == "unknown" else "a %s model" % found,
                               runtime, want))
