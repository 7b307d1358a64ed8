"""The controller's side of the artifact format: fleet keys, packing model directories and
releases of variants, wrapping data keys for devices, publishing the pull registry. Used by the ``edgeai-artifact`` CLI and the collection's action plugins.

    edgeai-artifact init    MODEL_FILE --name N --version V [--golden F] [--validation F] [--min-accuracy X]
                            [--label-output O] [--precision P] [--force]
    edgeai-artifact keygen  --keys-dir DIR
    edgeai-artifact pack    --keys-dir DIR --model-dir SRC --out-dir DIR [--cipher C] [--chunk-mib N]
    edgeai-artifact wrap    --keys-dir DIR --artifact A --public-key PEM_FILE
    edgeai-artifact inspect A
    edgeai-artifact publish --keys-dir DIR --registry DIR --out-dir DIR --model-dir SRC [...]
                            (--devices FILE | --device PEM_FILE [...]) [--cipher C] [--force]

A passphrase for the fleet's private keys comes from the environment variable
EDGEAI_FLEET_KEY_PASSPHRASE, never from the command line. Every command prints one JSON object;
exit status 1 means refused or failed (``failed: true``, ``msg``).

The keys directory (0700) holds:
    signing.key / signing.pub   Ed25519: signs every artifact; devices trust signing.pub
    escrow.key  / escrow.pub    X25519: every artifact's data key is also wrapped for it
                                (``<artifact>.keys.json``), so the controller can wrap an
                                artifact for new or re-keyed devices without re-encrypting it
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from edgeai_runtime.format import artifact, keys, modelfile
from edgeai_runtime.fsutil import exclusive_lock, read_json_or_none, write_atomic
from edgeai_runtime.controller import packing, variants
from edgeai_runtime.format.keys import ArtifactError
from edgeai_runtime.format.manifest import Manifest, ManifestError, version_key
from edgeai_runtime.format.updates import RolloutBlockError

PASSPHRASE_ENV = "EDGEAI_FLEET_KEY_PASSPHRASE"
CIPHER_TAGS = {"aes-256-gcm": "aes", "chacha20-poly1305": "chacha"}
_MEASURED = ("sha256", "size", "created", "min_runtime_version")


class FleetKeys:
    def __init__(self, keys_dir: str, passphrase: Optional[str] = None) -> None:
        self.dir = os.path.abspath(os.path.expanduser(keys_dir))
        self.passphrase = passphrase.encode() if passphrase else None
        self._cache: Dict[str, keys.PrivateKey] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def exists(self) -> bool:
        return all(os.path.exists(self.path(n)) for n in ("signing.key", "signing.pub", "escrow.key", "escrow.pub"))

    def ensure(self) -> bool:
        """Create the missing key pairs; True when something was created. Never replaces a key."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        created = False
        for name, kind in (("signing", "ed25519"), ("escrow", "x25519")):
            if os.path.exists(self.path(name + ".key")):
                continue
            key = keys.generate(kind)
            keys.write_private(self.path(name + ".key"), key, self.passphrase)
            write_atomic(self.path(name + ".pub"), keys.public_pem(key).encode(), 0o644)
            created = True
        return created

    def private(self, name: str) -> keys.PrivateKey:
        if name not in self._cache:
            if not os.path.exists(self.path(name + ".key")):
                raise ArtifactError("no_fleet_keys", "the fleet keys are missing from %s (create them with "
                                    "edgeai.fleet.fleet_keys or edgeai-artifact keygen)" % self.dir)
            self._cache[name] = keys.load_private(self.path(name + ".key"), self.passphrase)
        return self._cache[name]

    @property
    def signing(self) -> ed25519.Ed25519PrivateKey:
        key = self.private("signing")
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise self._wrong_kind("signing", key, "ed25519")
        return key

    @property
    def escrow(self) -> x25519.X25519PrivateKey:
        key = self.private("escrow")
        if not isinstance(key, x25519.X25519PrivateKey):
            raise self._wrong_kind("escrow", key, "x25519")
        return key

    def _wrong_kind(self, name: str, key: keys.PrivateKey, kind: str) -> ArtifactError:
        return ArtifactError("bad_key", "the fleet key %s is %s, not %s"
                             % (self.path(name + ".key"), keys.key_type(key), kind))

    def public_pem(self, name: str) -> str:
        with open(self.path(name + ".pub"), encoding="ascii") as f:
            return f.read()

    def describe(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"keys_dir": self.dir}
        for name in ("signing", "escrow"):
            if os.path.exists(self.path(name + ".pub")):
                pem = self.public_pem(name)
                out[name] = {"key_id": keys.key_id(keys.load_public(pem)), "public_key": pem}
        return out


@dataclass(frozen=True)
class ModelDir:
    """A model directory as the roles take it: manifest.json, the model file, the gate files."""
    path: str
    fields: Dict[str, Any]
    model_path: str
    files: Dict[str, str]      # gate file name -> path
    sha256: str                # the model file's, checked against the manifest

    @classmethod
    def read(cls, path: str) -> "ModelDir":
        path = os.path.abspath(path)
        try:
            with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
                data = json.load(f)
        except OSError as exc:
            raise ArtifactError("bad_manifest", "reading %s/manifest.json: %s" % (path, exc.strerror)) from None
        except ValueError as exc:
            raise ArtifactError("bad_manifest", "%s/manifest.json is not JSON: %s" % (path, exc)) from None
        try:
            manifest = Manifest.from_dict(data)
        except ManifestError as exc:
            raise ArtifactError("bad_manifest", "%s/manifest.json: %s" % (path, exc)) from None
        model_path = os.path.join(path, manifest.model_file)
        if not os.path.isfile(model_path):
            raise ArtifactError("bad_manifest", "%s names model file %s, which is not there" % (path, manifest.model_file))
        variants.check_format(model_path, manifest.runtime)
        digest = artifact.sha256_file(model_path)
        if digest != manifest.sha256 or os.path.getsize(model_path) != manifest.size:
            raise ArtifactError("bad_manifest", "%s: %s does not match manifest.json's sha256 and size"
                                % (path, manifest.model_file))
        gate = [manifest.validation.golden, manifest.validation.dataset]
        files = {name: os.path.join(path, name) for name in gate if name}
        for name, fpath in files.items():
            if not os.path.isfile(fpath):
                raise ArtifactError("bad_manifest", "%s names gate file %s, which is not there" % (path, name))
        fields = {k: v for k, v in manifest.to_dict().items() if k not in _MEASURED}
        fields["files"] = {name: artifact.sha256_file(fpath) for name, fpath in files.items()}
        return cls(path, fields, model_path, files, digest)

    @property
    def identity(self) -> str:
        """The variant's identity (edgeai_runtime.controller.variants.identity)."""
        return variants.identity(dict(self.fields, sha256=self.sha256))


@dataclass(frozen=True)
class Release:
    """A model version as the roles take it: one model directory, or a release directory whose
    subdirectories are its variants (one build per runtime or hardware class), e.g.

        digits-1.0.0/onnxruntime-fp32/{manifest.json, model.onnx, golden.npz, ...}
        digits-1.0.0/tflite-int8/{manifest.json, model.tflite, ...}

    Every variant has the same name and version; no two claim the same class with the same
    runtime and precision."""
    path: str
    variants: List[ModelDir]

    @classmethod
    def read(cls, path: str) -> "Release":
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, "manifest.json")):
            return cls(path, [ModelDir.read(path)])
        try:
            entries = sorted(os.listdir(path))
        except OSError as exc:
            raise ArtifactError("bad_release", "reading the release %s: %s" % (path, exc.strerror)) from None
        found = [ModelDir.read(os.path.join(path, e)) for e in entries
                 if os.path.isfile(os.path.join(path, e, "manifest.json"))]
        if not found:
            raise ArtifactError("bad_release", "%s holds neither manifest.json nor variant directories with one"
                                % path)
        first = found[0]
        for other in found[1:]:
            if (other.fields["name"], other.fields["version"]) != (first.fields["name"], first.fields["version"]):
                raise ArtifactError("bad_release", "%s is %s %s but %s is %s %s: a release holds one model version"
                                    % (first.path, first.fields["name"], first.fields["version"], other.path,
                                       other.fields["name"], other.fields["version"]))
        variants.check_distinct([(v.path, v.fields) for v in found])
        return cls(path, found)

    def select(self, profile: Dict[str, Any]) -> ModelDir:
        """The variant that fits a device's class profile (hardware_class, runtime, precision)."""
        index = variants.choose([(os.path.relpath(v.path, os.path.dirname(self.path)), v.fields)
                                 for v in self.variants], variants.Profile.from_dict(profile))
        return self.variants[index]


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[None]:
    """Forks packing the same model for many hosts at once pack it once."""
    with exclusive_lock(os.path.join(directory, ".lock"), mode=0o644):
        yield


def artifact_path(out_dir: str, model_dir: ModelDir, cipher: str) -> str:
    """Where the artifact of this variant under this cipher is kept: one file per variant identity."""
    fname = "%s-%s%s" % (model_dir.identity, CIPHER_TAGS[cipher], artifact.SUFFIX)
    return os.path.join(os.path.abspath(out_dir), fname)


def ensure_artifact(model_dir: ModelDir, out_dir: str, fleet: FleetKeys, cipher: str = "aes-256-gcm",
                    chunk_size: int = artifact.DEFAULT_CHUNK) -> Tuple[str, Dict[str, Any], bool]:
    """Pack ``model_dir`` unless an artifact of the same model, metadata and cipher, signed by this
    fleet's key and openable by its escrow key, is already there. Returns (path, header, changed)."""
    if cipher not in artifact.CIPHERS:
        raise ArtifactError("bad_format", "cipher %r is not one of %s" % (cipher, ", ".join(artifact.CIPHERS)))
    os.makedirs(out_dir, exist_ok=True)
    path = artifact_path(out_dir, model_dir, cipher)
    with _locked(out_dir):
        header = _reusable(path, model_dir, fleet, cipher, chunk_size)
        if header is not None:
            return path, header, False
        packed = packing.pack(model_dir.model_path, path, model_dir.fields, fleet.signing, cipher=cipher,
                              chunk_size=chunk_size)
        escrow = keys.wrap(packed.data_key, fleet.escrow.public_key(), packed.artifact_id)
        write_atomic(path + ".keys.json", json.dumps({"artifact_id": packed.artifact_id, "escrow": escrow},
                                                     sort_keys=True, indent=1).encode(), 0o600)
        return path, packed.header, True


def _reusable(path: str, model_dir: ModelDir, fleet: FleetKeys, cipher: str,
              chunk_size: int) -> Optional[Dict[str, Any]]:
    if not (os.path.exists(path) and os.path.exists(path + ".keys.json")):
        return None
    signer = fleet.signing.public_key()
    try:
        art = artifact.Artifact.open(path, {keys.key_id(signer): signer})
        art.check_key(_escrow_data_key(path, art.artifact_id, fleet))
    except ArtifactError:
        return None
    header = art.header
    same_fields = {k: v for k, v in header["manifest"].items() if k not in _MEASURED} == \
        {k: v for k, v in Manifest.from_dict(dict(model_dir.fields, sha256="0" * 64, size=1)).to_dict().items()
         if k not in _MEASURED}
    envelope = header["envelope"]
    if same_fields and header["manifest"]["sha256"] == model_dir.sha256 and envelope["cipher"] == cipher \
            and envelope["chunk_size"] == chunk_size:
        return header
    return None


def _escrow_data_key(path: str, artifact_id: str, fleet: FleetKeys) -> bytes:
    try:
        with open(path + ".keys.json", encoding="utf-8") as f:
            sidecar = json.load(f)
    except (OSError, ValueError):
        raise ArtifactError("no_escrow", "%s.keys.json is missing or unreadable: the artifact cannot be wrapped "
                            "for devices any more; pack it again" % path) from None
    return keys.unwrap(sidecar.get("escrow") or {}, fleet.escrow, artifact_id)


def ensure_delta(base_path: str, target_path: str, fleet: FleetKeys) -> Tuple[Optional[str], Dict[str, Any]]:
    """A delta (edgeai_runtime.format.delta) from the model in the artifact ``base_path`` to the artifact
    ``target_path``, both packed here (their escrow slots open their data keys), kept beside the
    target and made once. Returns (path, facts), or (None, facts with ``reason``) when a delta would
    not save enough to be worth shipping."""
    from edgeai_runtime.controller import deltas
    from edgeai_runtime.format import delta
    signer = fleet.signing.public_key()
    trusted = {keys.key_id(signer): signer}
    base = artifact.Artifact.open(base_path, trusted)
    target = artifact.Artifact.open(target_path, trusted)
    out = "%s.from-%s%s" % (target_path[:-len(artifact.SUFFIX)], base.manifest.version, delta.SUFFIX)
    pair = {"base_sha256": base.manifest.sha256, "target_artifact_id": target.artifact_id}
    none = {"made": False, "reason": "a delta from %s would not save %d%% of the bytes"
            % (base.manifest.version, 100 * (1 - deltas.WORTH_SHIPPING))}
    if deltas.window_log(base.manifest.size, target.manifest.size) > delta.MAX_WINDOW_LOG:
        return None, none
    with _locked(os.path.dirname(os.path.abspath(target_path))):
        try:
            have = delta.Delta.open(out, trusted)
            have.check_sealed()
            if (have.base["sha256"], have.target["artifact_id"]) == tuple(pair.values()):
                return out, _delta_facts(out, have.header, made=False)
        except (ArtifactError, OSError):
            pass  # none yet, or not this pair, or damaged: make it (again)
        if read_json_or_none(out + ".none") == pair:  # not worth it, found before
            return None, none
        base_model = base.decrypt(_escrow_data_key(base_path, base.artifact_id, fleet))
        made = deltas.make(base_model, base.manifest.to_dict(), target_path,
                           _escrow_data_key(target_path, target.artifact_id, fleet), fleet.signing, out)
        if made is None:
            write_atomic(out + ".none", json.dumps(pair, sort_keys=True).encode(), 0o644)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(out)
            return None, none
    return out, dict(_delta_facts(out, made.header, made=True), seconds=round(made.seconds, 3))


def older_artifacts(out_dir: str, fields: Dict[str, Any], cipher: str) -> List[str]:
    """Artifacts in ``out_dir`` of earlier versions of the same kind of variant (model name, runtime
    and precision) under the same cipher, newest first: the bases worth a delta."""
    found = []
    suffix = "-%s%s" % (CIPHER_TAGS[cipher], artifact.SUFFIX)
    for entry in os.listdir(out_dir):
        if not (entry.startswith(fields["name"] + "-") and entry.endswith(suffix)):
            continue
        try:
            manifest = artifact.read_header(os.path.join(out_dir, entry)).get("manifest") or {}
        except (ArtifactError, OSError):
            continue
        same_kind = all(manifest.get(k) == fields[k] for k in ("name", "runtime", "precision"))
        if same_kind and version_key(str(manifest.get("version"))) < version_key(fields["version"]):
            found.append((version_key(manifest["version"]), os.path.join(out_dir, entry)))
    return [path for _key, path in sorted(found, reverse=True)]


def _delta_facts(path: str, header: Dict[str, Any], made: bool) -> Dict[str, Any]:
    full = header["target"]["artifact_size"]
    size = os.path.getsize(path)
    return {"made": made, "path": path, "base_version": header["base"]["version"],
            "base_sha256": header["base"]["sha256"], "bytes": size, "full_bytes": full, "bytes_saved": full - size}


@dataclass(frozen=True)
class Device:
    """A device to publish for: its public key and the class profile it reports (None: none)."""
    name: str
    public_pem: str
    profile: Optional[Dict[str, Any]] = None

    @property
    def key_id(self) -> str:
        return keys.key_id(keys.load_public(self.public_pem, "the public key of device %s" % self.name))

    def variant_of(self, release: Release) -> ModelDir:
        """The variant of ``release`` this device gets, as ``edgeai.fleet.model`` chooses it in push mode."""
        if self.profile:
            return release.select(self.profile)
        if len(release.variants) == 1:
            return release.variants[0]  # a device runtime too old to report its profile: nothing to choose
        raise ArtifactError("no_profile", "the device reports no class profile, so none of the %d variants in %s "
                            "can be chosen for it" % (len(release.variants), release.path))


def read_devices(path: str) -> List[Device]:
    """The devices file: {"<name>": {"public_key": "<PEM>", "profile": {...} or null}, ...}, as
    playbooks/publish.yml writes it from each host's edgeai_device_key fact."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise ArtifactError("bad_devices", "reading the devices file %s: %s" % (path, exc.strerror)) from None
    except ValueError as exc:
        raise ArtifactError("bad_devices", "the devices file %s is not JSON: %s" % (path, exc)) from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and v.get("public_key") for v in data.values()):
        raise ArtifactError("bad_devices", "%s must map device names to {\"public_key\": PEM, \"profile\": {...}}"
                            % path)
    return [Device(name, entry["public_key"], entry.get("profile") or None) for name, entry in sorted(data.items())]


def publish_registry(registry: str, model_dirs: List[str], out_dir: str, fleet: FleetKeys,
                     devices: Sequence[Union[str, Device]], cipher: str = "aes-256-gcm", force: bool = False,
                     sequence: Optional[int] = None, delta_bases: int = 2, rollout: Optional[Dict[str, Any]] = None,
                     keep_before: Optional[str] = None) -> Dict[str, Any]:
    """Pack the releases (model directories, or release directories of variants), then write the
    pull registry: artifacts, gate files and a signed update document per device
    (edgeai_runtime.controller.publish). Each device gets, of every release, the variant that fits
    its class profile; only the variants some device gets are packed, each once. A device that no
    variant of a release fits gets no new document (its old one stays) and is listed in
    ``refused``, naming its class and the variants on offer. Each release also gets deltas from
    the ``delta_bases`` newest older versions of that variant packed in ``out_dir`` (where worth it).
    ``devices``: Device records, or bare public key PEMs (a device reporting no profile). ``rollout``: the rollout
    block every release's entry carries (a staged rollout's wave); ``keep_before``: where each device's document
    from before the rollout is kept (edgeai_runtime.controller.publish.publish)."""
    from edgeai_runtime.controller.publish import publish
    releases = [Release.read(path) for path in model_dirs]
    packed: Dict[str, Dict[str, Any]] = {}

    def release_of(model_dir: ModelDir) -> Dict[str, Any]:
        if model_dir.path not in packed:
            path, _header, _changed = ensure_artifact(model_dir, out_dir, fleet, cipher)
            deltas = []
            for base in older_artifacts(out_dir, model_dir.fields, cipher)[:delta_bases]:
                try:
                    delta_path, facts = ensure_delta(base, path, fleet)
                except (ArtifactError, OSError):  # a delta is an optimisation: the artifact goes anyway
                    continue
                if delta_path:
                    deltas.append(facts)
            packed[model_dir.path] = {"artifact": path, "files": model_dir.files, "force": force, "deltas": deltas,
                                      **({"rollout": rollout} if rollout is not None else {})}
        return packed[model_dir.path]

    pems: Dict[str, str] = {}
    per_device: Dict[str, List[Dict[str, Any]]] = {}
    refused: Dict[str, str] = {}
    chosen: Dict[str, List[str]] = {}
    for index, device in enumerate(devices):
        if isinstance(device, str):
            device = Device("device %d" % (index + 1), device)
        try:
            kid = device.key_id
            picks = [device.variant_of(release) for release in releases]
        except ArtifactError as exc:
            refused[device.name] = "%s: %s" % (device.name, exc)
            continue
        pems[kid] = device.public_pem
        per_device[kid] = [release_of(md) for md in picks]
        chosen[device.name] = [md.identity for md in picks]
    result = publish(registry, fleet.signing, [], pems, lambda path, pem: wrap_for(path, fleet, pem), sequence,
                     per_device, keep_before)
    result.update(refused=refused, variants=chosen)
    return result


def rollback_registry(registry: str, fleet: FleetKeys, devices: Sequence[Device], rollout: Dict[str, Any],
                      keep_before: str, out_dir: str, sequence: Optional[int] = None) -> Dict[str, Any]:
    """Publish the fleet rollback of ``rollout`` (a block of action ``rollback``) for ``devices``: each one's
    document goes back to the entry it had before the rollout (edgeai_runtime.controller.publish.publish_rollback).
    The key slots are wrapped again through the escrow slots of the artifacts as packed in ``out_dir`` (the
    registry holds no escrow slots). ``refused`` is keyed by device name, as publish_registry's."""
    from edgeai_runtime.controller.publish import publish_rollback
    by_kid = {device.key_id: device for device in devices}

    def wrap(path: str, pem: str) -> Dict[str, str]:
        artifact_id = artifact.read_header(path).get("artifact_id", "")
        packed = os.path.join(os.path.abspath(out_dir), os.path.basename(path))
        try:  # the artifact from before was packed earlier and is never packed again: no lock
            data_key = _escrow_data_key(packed, artifact_id, fleet)
        except ArtifactError as exc:
            raise ArtifactError(exc.reason, "the rollback of %s needs the escrow slot of %s as packed in %s (the "
                                            "artifact directory the release before was published from): %s" % (
                                                rollout.get("id"), os.path.basename(path), out_dir, exc)) from None
        return keys.wrap(data_key, keys.load_public(pem, "the device's public key"), artifact_id)

    result = publish_rollback(registry, fleet.signing, {kid: d.public_pem for kid, d in by_kid.items()}, rollout,
                              keep_before, wrap, sequence)
    result["refused"] = {by_kid[kid].name: "%s: %s" % (by_kid[kid].name, why)
                         for kid, why in result["refused"].items()}
    result["devices"] = sorted(d.name for kid, d in by_kid.items()
                               if os.path.join(registry, "updates", kid + ".json") in result["documents"])
    return result


def wrap_for(path: str, fleet: FleetKeys, public_pem: str, artifact_id: Optional[str] = None) -> Dict[str, str]:
    """A key slot of the artifact at ``path`` for one device's public key (via the escrow slot).
    Read under the artifact directory's lock, so a fork re-packing the file cannot pair one
    artifact's header with another's escrow slot; with ``artifact_id``, the file must still be that
    artifact (ArtifactError ``artifact_replaced`` otherwise)."""
    with _locked(os.path.dirname(os.path.abspath(path))):
        header = artifact.read_header(path)
        found = header.get("artifact_id", "")
        if artifact_id is not None and found != artifact_id:
            raise ArtifactError("artifact_replaced", "%s is now artifact %s, not %s: it was packed again meanwhile"
                                % (path, found, artifact_id))
        data_key = _escrow_data_key(path, found, fleet)
    return keys.wrap(data_key, keys.load_public(public_pem, "the device's public key"), found)


# -- CLI ---------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeai-artifact", description="pack, sign and wrap model artifacts")
    sub = parser.add_subparsers(dest="command", required=True)
    modelfile.add_init_arguments(sub.add_parser(
        "init", help="write manifest.json beside an .onnx or .tflite file, read from the model (a model directory)"))
    keygen = sub.add_parser("keygen", help="create the fleet signing and escrow keys (never replaces one)")
    keygen.add_argument("--keys-dir", required=True)
    pack = sub.add_parser("pack", help="pack a model directory into a signed, encrypted artifact")
    pack.add_argument("--keys-dir", required=True)
    pack.add_argument("--model-dir", required=True, help="holds manifest.json, the model and its gate files")
    pack.add_argument("--out-dir", required=True)
    pack.add_argument("--cipher", choices=sorted(artifact.CIPHERS), default="aes-256-gcm")
    pack.add_argument("--chunk-mib", type=int, default=artifact.DEFAULT_CHUNK >> 20, choices=[1, 2, 3, 4])
    wrap = sub.add_parser("wrap", help="wrap an artifact's data key for one device public key")
    wrap.add_argument("--keys-dir", required=True)
    wrap.add_argument("--artifact", required=True)
    wrap.add_argument("--public-key", required=True, help="PEM file of the device's public key")
    inspect = sub.add_parser("inspect", help="print an artifact's header (signature not checked)")
    inspect.add_argument("artifact")
    publish = sub.add_parser("publish", help="write a pull registry: artifacts and signed per-device update documents")
    publish.add_argument("--keys-dir", required=True)
    publish.add_argument("--registry", required=True, help="directory to write (host it with any web server)")
    publish.add_argument("--out-dir", required=True, help="where packed artifacts are kept")
    publish.add_argument("--model-dir", action="append", required=True,
                         help="a model directory, or a release directory of variants (repeatable)")
    publish.add_argument("--device", action="append", default=[],
                         help="a device's public key PEM file (repeatable; the device gets single-variant releases)")
    publish.add_argument("--devices", help="a JSON file: {name: {public_key: PEM, profile: {hardware_class, runtime, "
                                           "precision}}}; each device gets the variant that fits its profile")
    publish.add_argument("--cipher", choices=sorted(artifact.CIPHERS), default="aes-256-gcm")
    publish.add_argument("--force", action="store_true", help="let devices install versions older than their active ones")
    publish.add_argument("--sequence", type=int, help="document sequence (default: now, in seconds)")
    publish.add_argument("--delta-bases", type=int, default=2,
                         help="deltas from this many earlier versions packed in --out-dir (0: none)")
    publish.add_argument("--rollout", type=_json_object, help="a rollout block (JSON) every entry carries: a staged "
                                                              "rollout's wave (edgeai_runtime.format.updates)")
    publish.add_argument("--keep-before", help="keep each device's document from before the rollout here (for rollback)")
    rollback = sub.add_parser("rollback", help="pull mode's fleet rollback: documents back to what they were before "
                                               "a rollout, with a rollout block of action rollback")
    rollback.add_argument("--keys-dir", required=True)
    rollback.add_argument("--registry", required=True)
    rollback.add_argument("--devices", required=True, help="the devices file, as publish's")
    rollback.add_argument("--rollout", type=_json_object, required=True, help="the rollback's block (JSON)")
    rollback.add_argument("--keep-before", required=True, help="where publish --keep-before kept the documents")
    rollback.add_argument("--out-dir", required=True, help="the artifact directory the releases were packed in "
                                                           "(publish --out-dir): their escrow slots are there")
    rollback.add_argument("--sequence", type=int, help="document sequence (default: now, in seconds)")
    return parser


def _json_object(text: str) -> Dict[str, Any]:
    try:
        found = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("not JSON: %s" % exc) from None
    if not isinstance(found, dict):
        raise argparse.ArgumentTypeError("a JSON object is needed, got %s" % type(found).__name__)
    return found


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            result: Dict[str, Any] = {"changed": False, "header": artifact.read_header(args.artifact)}
        elif args.command == "init":
            result = modelfile.init_from_args(args)
        else:
            fleet = FleetKeys(args.keys_dir, os.environ.get(PASSPHRASE_ENV))
            if args.command == "keygen":
                result = dict(fleet.describe(), changed=fleet.ensure())
                result.update(fleet.describe())
            elif args.command == "pack":
                path, header, changed = ensure_artifact(ModelDir.read(args.model_dir), args.out_dir, fleet,
                                                        args.cipher, args.chunk_mib << 20)
                result = {"changed": changed, "artifact": path, "artifact_id": header["artifact_id"],
                          "payload_chunks_sha256": header["payload"]["chunks_sha256"], "sha256": header["manifest"]["sha256"]}
            elif args.command == "publish":
                devices: List[Union[str, Device]] = list(read_devices(args.devices)) if args.devices else []
                for pem_file in args.device:
                    with open(pem_file, encoding="ascii") as f:
                        devices.append(Device(pem_file, f.read()))
                if not devices:
                    raise ArtifactError("bad_devices", "publish: give the devices (--devices FILE or --device PEM)")
                result = publish_registry(args.registry, args.model_dir, args.out_dir, fleet, devices, args.cipher,
                                          args.force, args.sequence, args.delta_bases, args.rollout, args.keep_before)
            elif args.command == "rollback":
                result = rollback_registry(args.registry, fleet, read_devices(args.devices), args.rollout,
                                           args.keep_before, args.out_dir, args.sequence)
            else:
                with open(args.public_key, encoding="ascii") as f:
                    result = {"changed": False, "keyslot": wrap_for(args.artifact, fleet, f.read())}
    except (ArtifactError, modelfile.ModelFileError, RolloutBlockError, OSError) as exc:
        print(json.dumps({"failed": True, "changed": False, "msg": str(exc),
                          "reason": getattr(exc, "reason", type(exc).__name__)}))
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
