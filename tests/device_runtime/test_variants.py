"""Model variants on the controller: releases of several builds of one version, the choice per
device class profile, artifact files keyed by variant identity, and wrapping addressed by artifact id.

Real digits models (ONNX and int8 .tflite), real packing and key wrapping, real processes racing
on one artifact directory.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil

import pytest

from edgeai_runtime.format import artifact, keys
from edgeai_runtime.controller import publisher, variants
from edgeai_runtime.format.keys import ArtifactError, DeviceKeyring
from support import modelgen
from support.digits_store import digits_manifest

GENERIC = dict(hardware_class="generic", runtime="onnxruntime", precision="fp32")
NANO = dict(hardware_class="jetson_nano", runtime="tensorrt", precision="fp16")
PI = dict(hardware_class="raspberry_pi", runtime="tflite", precision="int8")
CORAL = dict(hardware_class="coral", runtime="edgetpu", precision="int8")


def write_variant(path, manifest, model, files):
    os.makedirs(path)
    for name, data in list(files.items()) + [(manifest.model_file, model)]:
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    with open(os.path.join(path, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(manifest.to_json())
    return str(path)


@pytest.fixture(scope="module")
def builds(digits, digits_onnx):
    return {"onnx": digits_onnx, "tflite_int8": modelgen.digits_tflite(digits, quantize="int8")}


@pytest.fixture
def release(tmp_path, digits, builds):
    """digits 1.0.0 as an ONNX fp32 build for any class and an int8 .tflite for the Pi and Coral."""
    root = tmp_path / "digits-1.0.0"
    write_variant(root / "onnxruntime-fp32", *_manifest(builds["onnx"], digits))
    write_variant(root / "tflite-int8", *_manifest(builds["tflite_int8"], digits, runtime="tflite", precision="int8",
                                                   hardware_classes=["raspberry_pi", "coral"]))
    return root


def _manifest(model, digits, version="1.0.0", **kwargs):
    manifest, files = digits_manifest(version, model, digits, **kwargs)
    return manifest, model, files


def reason(excinfo):
    return excinfo.value.reason


def test_each_class_gets_the_variant_that_fits(release):
    rel = publisher.Release.read(str(release))
    chosen = {p["hardware_class"]: os.path.basename(rel.select(p).path) for p in (GENERIC, NANO, PI, CORAL)}
    assert chosen == {"generic": "onnxruntime-fp32", "jetson_nano": "onnxruntime-fp32",
                      "raspberry_pi": "tflite-int8", "coral": "tflite-int8"}


def test_a_single_model_directory_is_a_release_of_one(release):
    rel = publisher.Release.read(str(release / "onnxruntime-fp32"))
    assert [v.path for v in rel.variants] == [str(release / "onnxruntime-fp32")]
    assert rel.select(NANO).fields["runtime"] == "onnxruntime"


def test_the_profile_runtime_beats_a_fallback_and_its_precision_beats_another(tmp_path, digits, builds):
    root = tmp_path / "rel"
    write_variant(root / "a-tflite-fp32", *_manifest(modelgen.digits_tflite(digits), digits, runtime="tflite"))
    write_variant(root / "b-tflite-int8", *_manifest(builds["tflite_int8"], digits, runtime="tflite",
                                                     precision="int8"))
    write_variant(root / "c-edgetpu-int8", *_manifest(builds["tflite_int8"], digits, runtime="edgetpu",
                                                      precision="int8"))
    rel = publisher.Release.read(str(root))
    assert os.path.basename(rel.select(CORAL).path) == "c-edgetpu-int8"      # its own runtime first
    assert os.path.basename(rel.select(PI).path) == "b-tflite-int8"          # then its own precision
    assert os.path.basename(rel.select(dict(PI, precision="fp32")).path) == "a-tflite-fp32"


def test_no_variant_for_a_class_names_the_class_and_the_offer(release):
    rel = publisher.Release.read(str(release))
    with pytest.raises(ArtifactError) as excinfo:
        rel.select(dict(hardware_class="generic", runtime="tflite", precision="int8"))
    assert reason(excinfo) == "no_variant"
    message = str(excinfo.value)
    assert "generic" in message and "onnxruntime-fp32 (onnxruntime/fp32 for any class)" in message
    assert "tflite-int8 (tflite/int8 for raspberry_pi, coral)" in message


def test_two_variants_claiming_the_same_class_and_runtime_are_refused(tmp_path, digits, builds):
    root = tmp_path / "rel"
    write_variant(root / "one", *_manifest(builds["onnx"], digits, hardware_classes=["generic", "jetson_orin"]))
    write_variant(root / "two", *_manifest(builds["onnx"], digits, threshold=0.8))
    with pytest.raises(ArtifactError) as excinfo:
        publisher.Release.read(str(root))
    assert reason(excinfo) == "variant_conflict"
    assert str(root / "one") in str(excinfo.value) and str(root / "two") in str(excinfo.value)
    assert "generic, jetson_orin" in str(excinfo.value)


def test_the_same_runtime_for_disjoint_classes_is_fine(tmp_path, digits, builds):
    root = tmp_path / "rel"
    write_variant(root / "orin", *_manifest(builds["onnx"], digits, hardware_classes=["jetson_orin"]))
    write_variant(root / "rest", *_manifest(builds["onnx"], digits, hardware_classes=["generic"], threshold=0.8))
    rel = publisher.Release.read(str(root))
    assert os.path.basename(rel.select(dict(NANO, hardware_class="jetson_orin")).path) == "orin"
    with pytest.raises(ArtifactError) as excinfo:
        rel.select(NANO)
    assert reason(excinfo) == "no_variant" and "jetson_nano" in str(excinfo.value)


def test_a_release_holds_one_model_version(tmp_path, digits, builds):
    root = tmp_path / "rel"
    write_variant(root / "a", *_manifest(builds["onnx"], digits))
    write_variant(root / "b", *_manifest(builds["tflite_int8"], digits, version="1.0.1", runtime="tflite"))
    with pytest.raises(ArtifactError) as excinfo:
        publisher.Release.read(str(root))
    assert reason(excinfo) == "bad_release" and "1.0.1" in str(excinfo.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError) as excinfo:
        publisher.Release.read(str(empty))
    assert reason(excinfo) == "bad_release" and str(empty) in str(excinfo.value)


@pytest.mark.parametrize("runtime, wrong", [("onnxruntime", "tflite_int8"), ("tflite", "onnx"),
                                            ("edgetpu", "onnx"), ("tensorrt", "onnx")])
def test_a_model_file_in_another_format_than_its_runtime_fails_at_pack_time(tmp_path, digits, builds, runtime,
                                                                            wrong):
    manifest, model, files = _manifest(builds[wrong], digits, runtime=runtime)
    path = write_variant(tmp_path / "v", manifest, model, files)
    with pytest.raises(ArtifactError) as excinfo:
        publisher.ModelDir.read(path)
    assert reason(excinfo) == "bad_manifest"
    assert os.path.join(path, manifest.model_file) in str(excinfo.value) and runtime in str(excinfo.value)


def test_sniffing_knows_the_real_formats(builds):
    assert variants.sniff_format(builds["onnx"][:16]) == "onnx"
    assert variants.sniff_format(builds["tflite_int8"][:16]) == "tflite"
    assert variants.sniff_format(b"\x00" * 16) == "unknown"


def test_two_variants_of_one_version_never_share_an_artifact_file(tmp_path, release, signer_keys):
    fleet = signer_keys
    out = tmp_path / "artifacts"
    rel = publisher.Release.read(str(release))
    paths = {}
    for variant in rel.variants:
        path, header, changed = publisher.ensure_artifact(variant, str(out), fleet)
        assert changed
        assert header["manifest"]["runtime"] == variant.fields["runtime"]
        paths[variant.fields["runtime"]] = path
    assert len(set(paths.values())) == 2
    assert os.path.basename(paths["tflite"]).startswith("digits-1.0.0-tflite-int8-")
    for variant in rel.variants:  # packed once: both are reused
        assert publisher.ensure_artifact(variant, str(out), fleet)[2] is False


def test_wrapping_is_addressed_by_artifact_id(tmp_path, release, signer_keys):
    fleet = signer_keys
    variant = publisher.Release.read(str(release)).variants[0]
    path, header, _packed = publisher.ensure_artifact(variant, str(tmp_path / "a"), fleet)
    ring = DeviceKeyring(str(tmp_path / "device"))
    ring.create("x25519")
    pem = ring.current().public_pem
    slot = publisher.wrap_for(path, fleet, pem, header["artifact_id"])
    assert slot["artifact_id"] == header["artifact_id"]
    with pytest.raises(ArtifactError) as excinfo:
        publisher.wrap_for(path, fleet, pem, "0" * len(header["artifact_id"]))
    assert reason(excinfo) == "artifact_replaced" and header["artifact_id"] in str(excinfo.value)


def _pack_and_wrap(args):
    """One fork of a playbook run (a process of its own): choose the variant for its class, pack it (once), wrap it."""
    release, out, keys_dir, pem, profile = args
    fleet = publisher.FleetKeys(keys_dir)
    variant = publisher.Release.read(release).select(profile)
    path, header, _packed = publisher.ensure_artifact(variant, out, fleet)
    return variant.fields["runtime"], path, header["artifact_id"], publisher.wrap_for(path, fleet, pem,
                                                                                      header["artifact_id"])


def test_forks_packing_two_variants_at_once_get_slots_for_their_own_artifact(tmp_path, release, signer_keys):
    """The demo's failure: forks packing the ONNX and the TFLite build of digits 1.0.0 into one
    artifact directory at once. Every slot must open its own artifact on the device."""
    ring = DeviceKeyring(str(tmp_path / "device"))
    ring.create("x25519")
    out = str(tmp_path / "artifacts")
    jobs = [(str(release), out, signer_keys.dir, ring.current().public_pem, profile)
            for profile in (GENERIC, PI, NANO, CORAL) * 3]
    # spawn, not fork: by now this pytest process runs the threads of earlier tests (servers, MQTT
    # loops, ONNX Runtime pools), and a fork copies their held locks into children that then hang.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_pack_and_wrap, jobs)
    assert {r[0] for r in results} == {"onnxruntime", "tflite"}
    assert len({r[1] for r in results}) == 2 and len({r[2] for r in results}) == 2  # one packing per variant
    signer = signer_keys.signing.public_key()
    for _runtime, path, artifact_id, slot in results:
        art = artifact.Artifact.open(path, {keys.key_id(signer): signer})
        assert art.artifact_id == artifact_id
        art.check_key(keys.unwrap(slot, ring.private(ring.current_id()), artifact_id))


@pytest.fixture
def signer_keys(tmp_path):
    fleet = publisher.FleetKeys(str(tmp_path / "fleet-keys"))
    fleet.ensure()
    return fleet


def test_the_demo_release_builds_and_fits_every_sim_class(tmp_path):
    """scripts/build-demo-models.py writes the release the simulated fleet serves."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "build-demo-models.py")
    import subprocess
    import sys
    subprocess.run([sys.executable, script, str(tmp_path), "--version", "1.1.0"], check=True, capture_output=True)
    newer = publisher.Release.read(str(tmp_path / "digits-1.1.0"))
    assert {v.fields["version"] for v in newer.variants} == {"1.1.0"}
    rel = publisher.Release.read(str(tmp_path / "digits-1.0.0"))
    assert {v.sha256 for v in newer.variants}.isdisjoint(v.sha256 for v in rel.variants)  # another build
    assert sorted(os.path.basename(v.path) for v in rel.variants) == ["onnxruntime-fp32", "tflite-int8"]
    for profile in (GENERIC, NANO, PI, CORAL):
        rel.select(profile)
    manifest = json.loads((tmp_path / "digits-1.0.0" / "tflite-int8" / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["hardware_classes"] == ["raspberry_pi", "coral"]
    shutil.rmtree(tmp_path / "digits-1.0.0")


# -- pull mode: each device's update document names its own variant --------------------------

def _device(tmp_path, name, profile):
    ring = DeviceKeyring(str(tmp_path / "devices" / name))
    ring.create("x25519")
    return ring, {"public_key": ring.current().public_pem, "profile": profile}


def _publish_cli(tmp_path, release, keys_dir, devices_file):
    """edgeai-artifact publish, in a process of its own, as playbooks/publish.yml runs it."""
    release = release if isinstance(release, (list, tuple)) else [release]
    import subprocess
    import sys
    argv = [sys.executable, "-m", "edgeai_runtime.controller.publisher", "publish", "--keys-dir", keys_dir,
            "--registry", str(tmp_path / "registry"), "--out-dir", str(tmp_path / "artifacts"),
            "--devices", str(devices_file), "--sequence", "7"] + ["--model-dir=%s" % r for r in release]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_publishing_a_release_gives_each_device_its_variant_and_refuses_one_that_none_fits(tmp_path, release,
                                                                                           signer_keys):
    rings, devices = {}, {}
    misfit = dict(hardware_class="jetson_orin", runtime="tflite", precision="int8")
    for name, profile in (("amd64", GENERIC), ("pi", PI), ("coral", CORAL), ("nano", NANO), ("misfit", misfit)):
        rings[name], devices[name] = _device(tmp_path, name, profile)
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps(devices))

    first = _publish_cli(tmp_path, release, signer_keys.dir, devices_file)
    assert first["changed"] and len(first["documents"]) == 4, first
    refused = first["refused"]
    assert list(refused) == ["misfit"] and reason_text_names(refused["misfit"], "jetson_orin", "tflite-int8"), refused
    runtimes = {}
    for name, ring in rings.items():
        path = tmp_path / "registry" / "updates" / (ring.current_id() + ".json")
        if name == "misfit":
            assert not path.exists()  # nothing at all for it: it keeps whatever it had
            continue
        doc = json.loads(path.read_text())
        (model,) = doc["models"]
        header = artifact.read_header(str(tmp_path / "registry" / model["artifact"]["path"]))
        assert model["keyslot"]["artifact_id"] == header["artifact_id"]  # its slot opens its own variant
        assert ring.open_slot(model["keyslot"], header["artifact_id"])
        runtimes[name] = (header["manifest"]["runtime"], header["manifest"]["precision"])
        assert model["model_sha256"] == header["manifest"]["sha256"]
        assert first["variants"][name] == [publisher.Release.read(str(release)).select(devices[name]["profile"])
                                           .identity]
    assert runtimes == {"amd64": ("onnxruntime", "fp32"), "pi": ("tflite", "int8"), "coral": ("tflite", "int8"),
                        "nano": ("onnxruntime", "fp32")}
    packed = sorted(p.name for p in (tmp_path / "artifacts").glob("*.eaf"))
    assert len(packed) == 2, packed  # each variant packed once, for every device that gets it

    again = _publish_cli(tmp_path, release, signer_keys.dir, devices_file)
    assert not again["changed"] and again["documents"] == [] and list(again["refused"]) == ["misfit"], again


def reason_text_names(message, *words):
    return all(word in message for word in words)


def test_a_device_refused_a_release_keeps_the_document_it_had(tmp_path, release, signer_keys):
    """A device that reports no class profile gets single-variant releases; offered a release of
    several variants it is refused by name, and its signed document stays byte for byte."""
    ring, bare = _device(tmp_path, "old-runtime", None)
    _ring, amd64 = _device(tmp_path, "amd64", GENERIC)
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps({"old-runtime": bare, "amd64": amd64}))
    first = _publish_cli(tmp_path, release / "onnxruntime-fp32", signer_keys.dir, devices_file)
    assert first["refused"] == {} and len(first["documents"]) == 2, first
    doc = tmp_path / "registry" / "updates" / (ring.current_id() + ".json")
    before = doc.read_bytes(), (tmp_path / "registry" / "updates" / (ring.current_id() + ".json.sig")).read_bytes()

    second = _publish_cli(tmp_path, release, signer_keys.dir, devices_file)
    assert list(second["refused"]) == ["old-runtime"], second
    assert "reports no class profile" in second["refused"]["old-runtime"] and "2 variants" in second["refused"]["old-runtime"]
    after = doc.read_bytes(), (tmp_path / "registry" / "updates" / (ring.current_id() + ".json.sig")).read_bytes()
    assert after == before


def test_the_device_reports_its_class_profile_with_its_key(tmp_path):
    """What publish.yml chooses variants by: `keys ensure` / `keys show` print the profile the
    runtime reads from etc/profile.json (edgeai.fleet.device_key puts it in its fact)."""
    from support.service import runtime
    root = tmp_path / "device"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "profile.json").write_text(json.dumps(dict(CORAL, max_batch_size=4)))
    for action in ("ensure", "show"):
        done = runtime(root, "keys", action)
        assert done.returncode == 0, done.stderr + done.stdout
        assert json.loads(done.stdout)["profile"] == CORAL


def _publisher_cli(*argv):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "edgeai_runtime.controller.publisher"] + [str(a) for a in argv],
                          capture_output=True, text=True, check=False)
    return done.returncode, json.loads(done.stdout)


def test_the_published_fleet_rollback_wraps_the_release_before_for_each_device_again(
        tmp_path, release, digits, builds, signer_keys):
    """edgeai-artifact publish --rollout --keep-before, then rollback (what playbooks/rollout.yml runs after a breach
    in pull mode): the device's document goes back to 1.0.0 with a key slot its key opens, wrapped through the
    escrow slot that packing 1.0.0 left in --out-dir; without that artifact directory the rollback is refused,
    naming the artifact and the directory, and no document is written."""
    newer = tmp_path / "digits-2.0.0"
    write_variant(newer / "onnxruntime-fp32", *_manifest(builds["onnx"], digits, version="2.0.0"))
    ring, device = _device(tmp_path, "amd64", GENERIC)
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps({"amd64": device}))
    registry, kept = tmp_path / "registry", tmp_path / "kept"
    doc = registry / "updates" / (ring.current_id() + ".json")
    _publish_cli(tmp_path, release, signer_keys.dir, devices_file)
    update = {"id": "digits-2.0.0", "attempt": 1, "action": "update", "soak": {"seconds": 5}}
    rc, published = _publisher_cli("publish", "--keys-dir", signer_keys.dir, "--registry", registry, "--out-dir",
                                   tmp_path / "artifacts", "--devices", devices_file, "--sequence", 8,
                                   "--model-dir", newer, "--rollout", json.dumps(update), "--keep-before", kept)
    assert rc == 0 and published["changed"], published
    assert [m["version"] for m in json.loads(doc.read_text())["models"]] == ["2.0.0"]

    block = {"id": "digits-2.0.0", "attempt": 1, "action": "rollback", "reason": "wave1 breached: 1 of 1 failed"}
    rollback = ["rollback", "--keys-dir", signer_keys.dir, "--registry", registry, "--devices", devices_file,
                "--keep-before", kept, "--rollout", json.dumps(block), "--sequence", 9]
    elsewhere = tmp_path / "fresh-controller-artifacts"
    elsewhere.mkdir()
    rc, refused = _publisher_cli(*rollback, "--out-dir", elsewhere)
    assert rc == 1 and refused["reason"] == "no_escrow", refused
    assert "digits-2.0.0" in refused["msg"] and str(elsewhere) in refused["msg"] and ".eaf" in refused["msg"], refused
    assert [m["version"] for m in json.loads(doc.read_text())["models"]] == ["2.0.0"]  # nothing written

    rc, done = _publisher_cli(*rollback, "--out-dir", tmp_path / "artifacts")
    assert rc == 0 and done["changed"] and done["devices"] == ["amd64"] and done["refused"] == {}, done
    (model,) = json.loads(doc.read_text())["models"]
    assert (model["version"], model["force"], model["rollout"]) == ("1.0.0", True, block)
    header = artifact.read_header(str(registry / model["artifact"]["path"]))
    assert header["manifest"]["version"] == "1.0.0"
    assert ring.open_slot(model["keyslot"], header["artifact_id"])
    rc, again = _publisher_cli(*rollback, "--out-dir", tmp_path / "artifacts")
    assert rc == 0 and not again["changed"] and again["documents"] == [], again
