"""The on-device model store.

Layout::

    <root>/models/<name>/<version>/manifest.json
    <root>/models/<name>/<version>/<model file>      (plus gate data files)
  or, for a signed, encrypted artifact (docs/artifact-format.md):
    <root>/models/<name>/<version>/model.eaf         the artifact, as received: never decrypted to disk
    <root>/models/<name>/<version>/keyslot.json      its data key, wrapped for this device's key
    <root>/models/<name>/active   -> <version>        (symlink)
    <root>/models/<name>/previous -> <version>        (symlink, the rollback target)

Crash safety: a version is written into a staging directory, fsynced, then renamed
into place in one step; pointers are switched by renaming a new symlink over the
old one. A crash at any moment therefore leaves either the old or the new version
active, never neither, and never a half-written version under its own name.
Mutations hold an exclusive lock on ``<root>/models/.lock``.

Trust: artifacts must be signed by a key in ``<root>/etc/signers/*.pub``; their data keys
open with the device keyring in ``<root>/keys``. With ``require_signed`` the store refuses
plaintext models altogether.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .artifact import Artifact, ArtifactError
from .keys import DeviceKeyring, load_public, key_id, key_type, write_atomic
from .manifest import Manifest, ManifestError, check_name, version_key

ACTIVE = "active"
PREVIOUS = "previous"
_STAGING_PREFIX = ".staging-"
_POINTERS = (ACTIVE, PREVIOUS)
ARTIFACT_FILE = "model.eaf"
KEYSLOT_FILE = "keyslot.json"
_RESERVED = ("manifest.json", ARTIFACT_FILE, KEYSLOT_FILE)


class StoreError(RuntimeError):
    """A store operation was refused or failed; ``str()`` says which model and why."""


@dataclass
class Change:
    changed: bool
    name: str
    version: Optional[str]
    previous: Optional[str] = None
    message: str = ""


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, data: bytes, mode: int = 0o640) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _same_key(stored: Dict[str, Any], new: Dict[str, Any]) -> bool:
    """Two slots for one artifact and one device key are equivalent (wrapping is randomised)."""
    return all(stored.get(k) == new.get(k) for k in ("artifact_id", "key_id", "type"))


def _copy_file(src: str, dst: str) -> None:
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())
    os.chmod(dst, 0o640)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    def __init__(self, root: str, keep: int = 2, require_signed: bool = False,
                 hardware_class: Optional[str] = None) -> None:
        """``keep``: how many versions besides the active one are kept for rollback.
        ``require_signed``: refuse plaintext models (install and load).
        ``hardware_class``: refuse artifacts built for other classes."""
        if keep < 1:
            raise ValueError("keep must be at least 1 so that a rollback target exists")
        self.root = root
        self.models_dir = os.path.join(root, "models")
        self.signers_dir = os.path.join(root, "etc", "signers")
        self.keep = keep
        self.require_signed = require_signed
        self.hardware_class = hardware_class
        self.keyring = DeviceKeyring(root)

    def trusted_signers(self) -> Dict[str, Any]:
        """The Ed25519 public keys in <root>/etc/signers/*.pub, by key id."""
        found: Dict[str, Any] = {}
        try:
            names = sorted(os.listdir(self.signers_dir))
        except FileNotFoundError:
            return found
        for fname in names:
            if not fname.endswith(".pub"):
                continue
            with open(os.path.join(self.signers_dir, fname), "rb") as f:
                key = load_public(f.read(), "signer key %s" % fname)
            if key_type(key) == "ed25519":
                found[key_id(key)] = key
        return found

    # -- reading ---------------------------------------------------------------------------

    def names(self) -> List[str]:
        try:
            entries = os.listdir(self.models_dir)
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if not e.startswith(".") and os.path.isdir(self._dir(e)))

    def versions(self, name: str) -> List[str]:
        check_name("model name", name)
        try:
            entries = os.listdir(self._dir(name))
        except FileNotFoundError:
            return []
        found = [e for e in entries if not e.startswith(".") and e not in _POINTERS
                 and os.path.isfile(os.path.join(self._dir(name), e, "manifest.json"))]
        return sorted(found, key=version_key)

    def pointer(self, name: str, which: str = ACTIVE) -> Optional[str]:
        """The version a pointer names, or None when it is unset or dangling."""
        try:
            target = os.readlink(os.path.join(self._dir(name), which))
        except OSError:
            return None
        return target if os.path.isfile(os.path.join(self._dir(name), target, "manifest.json")) else None

    def active(self, name: str) -> Optional[str]:
        return self.pointer(name, ACTIVE)

    def manifest(self, name: str, version: str) -> Manifest:
        path = os.path.join(self._version_dir(name, version), "manifest.json")
        try:
            with open(path, encoding="utf-8") as f:
                return Manifest.from_json(f.read())
        except FileNotFoundError:
            raise StoreError("model %s version %s is not installed" % (name, version)) from None
        except ManifestError as exc:
            raise StoreError("model %s version %s: manifest: %s" % (name, version, exc)) from None

    def is_artifact(self, name: str, version: str) -> bool:
        return os.path.isfile(os.path.join(self._version_dir(name, version), ARTIFACT_FILE))

    def keyslot(self, name: str, version: str) -> Dict[str, Any]:
        with open(os.path.join(self._version_dir(name, version), KEYSLOT_FILE), encoding="utf-8") as f:
            return json.load(f)

    def details(self, name: str, version: str) -> Dict[str, Any]:
        """What a controller compares before sending anything: identity, signature, key slot."""
        manifest = self.manifest(name, version)
        info: Dict[str, Any] = {"sha256": manifest.sha256, "size": manifest.size, "signed": False,
                                "runtime": manifest.runtime, "precision": manifest.precision}
        if self.is_artifact(name, version):
            from .artifact import read_header
            header = read_header(os.path.join(self._version_dir(name, version), ARTIFACT_FILE))
            try:
                slot_key = self.keyslot(name, version).get("key_id")
            except (OSError, ValueError):
                slot_key = None
            info.update(signed=True, artifact_id=header.get("artifact_id"), signer=header.get("signer"),
                        payload_chunks_sha256=(header.get("payload") or {}).get("chunks_sha256"), key_id=slot_key,
                        cipher=(header.get("envelope") or {}).get("cipher"))
        return info

    def read_model(self, name: str, version: str) -> bytes:
        """The model's bytes, checked against the manifest's size and sha256; an artifact is
        verified and decrypted into memory, never onto disk."""
        manifest = self.manifest(name, version)
        if self.is_artifact(name, version):
            return self._decrypt(name, version, manifest)
        if self.require_signed:
            raise StoreError("model %s version %s is a plaintext model and this device loads signed artifacts only"
                             % (name, version))
        with open(os.path.join(self._version_dir(name, version), manifest.model_file), "rb") as f:
            data = f.read()
        if len(data) != manifest.size or sha256_bytes(data) != manifest.sha256:
            raise StoreError("model %s version %s: %s does not match the manifest's size and sha256 (corrupt on disk)"
                             % (name, version, manifest.model_file))
        return data

    def file_path(self, name: str, version: str, filename: str) -> str:
        check_name("file name", filename)
        return os.path.join(self._version_dir(name, version), filename)

    def status(self) -> List[Dict[str, object]]:
        return [{"name": n, "versions": self.versions(n), "active": self.active(n),
                 "previous": self.pointer(n, PREVIOUS),
                 "installed": {v: self.details(n, v) for v in self.versions(n)}} for n in self.names()]

    # -- changing --------------------------------------------------------------------------

    def install(self, manifest: Manifest, model: bytes, files: Optional[Mapping[str, bytes]] = None,
                force: bool = False) -> Change:
        """Store a plaintext version (not activating it). Installing the same bytes again changes nothing."""
        name, version = manifest.name, manifest.version
        if self.require_signed:
            raise StoreError("installing %s %s: this device takes signed artifacts only (require_signed)"
                             % (name, version))
        if len(model) != manifest.size:
            raise StoreError("installing %s %s: model is %d bytes, the manifest says %d"
                             % (name, version, len(model), manifest.size))
        if sha256_bytes(model) != manifest.sha256:
            raise StoreError("installing %s %s: model sha256 does not match the manifest" % (name, version))
        files = self._check_files(manifest, files, reserved=(manifest.model_file,))
        with self._locked():
            if self._already_installed(manifest):
                return Change(False, name, version, message="already installed")
            self._check_downgrade(manifest, force)
            self._stage(manifest, lambda staging: _write_file(os.path.join(staging, manifest.model_file), model),
                        files)
        return Change(True, name, version, message="installed")

    def install_artifact(self, path: str, keyslot: Dict[str, Any], files: Optional[Mapping[str, bytes]] = None,
                         force: bool = False) -> Change:
        """Verify and store a signed artifact (not activating it).

        Before anything is written: the signature (a trusted signer), the hardware class and the
        runtime version, the key slot (opens with this device's key, matches the key commitment),
        every chunk and both digests (streamed, O(chunk) memory, the plaintext is dropped), and the
        gate files against the signed manifest. The artifact is then copied in as it came, encrypted.
        The same model again changes nothing; the same artifact with a slot for another device key
        replaces the slot (key rotation).
        """
        art = self.open_artifact(path)
        manifest = art.manifest
        name, version = manifest.name, manifest.version
        files = self._check_files(manifest, files, reserved=())
        current_slot = self._installed_slot(manifest)
        if current_slot is not None and _same_key(current_slot, keyslot):
            return Change(False, name, version, message="already installed")
        if current_slot is not None:
            return self.rekey(name, version, keyslot)
        data_key = self._open_slot(art, keyslot)
        try:
            art.check(data_key)
        except ArtifactError as exc:
            raise StoreError("installing %s %s: %s" % (name, version, exc)) from None
        finally:
            del data_key
        with self._locked():
            if self._already_installed(manifest):
                return Change(False, name, version, message="already installed")
            self._check_downgrade(manifest, force)

            def write_model(staging: str) -> None:
                _copy_file(path, os.path.join(staging, ARTIFACT_FILE))
                _write_file(os.path.join(staging, KEYSLOT_FILE), json.dumps(keyslot, sort_keys=True).encode())

            self._stage(manifest, write_model, files)
        return Change(True, name, version, message="installed (signed artifact %s)" % art.artifact_id)

    def holds(self, name: str, version: str, sha256: str) -> bool:
        """Is ``version`` of ``name`` stored here with that model sha256 (False if unreadable)?"""
        try:
            return self.manifest(name, version).sha256 == sha256
        except (StoreError, ManifestError, ValueError):
            return False

    def rebuild_delta(self, path: str, keyslot: Dict[str, Any], out_path: str) -> Dict[str, Any]:
        """Rebuild the artifact a delta (edgeai_runtime.delta) carries into ``out_path``, patching the
        version of its model held here whose sha256 is the delta's base. Stores nothing; the rebuilt
        artifact is installed like any other. Raises ArtifactError (reason ``delta_*`` and the like)."""
        from .delta import Delta
        delta = Delta.open(path, self.trusted_signers())
        base = delta.base
        held = [v for v in self.versions(base["name"]) if self.holds(base["name"], v, base["sha256"])]
        if not held:
            raise ArtifactError("delta_base_missing", "%s patches %s %s (sha256 %s), which this device does not hold "
                                "(it holds: %s)" % (path, base["name"], base["version"], base["sha256"][:12],
                                                    ", ".join(self.versions(base["name"])) or "none"))
        base_version = self.active(base["name"]) if self.active(base["name"]) in held else held[-1]
        try:
            model = self.read_model(base["name"], base_version)
        except StoreError as exc:
            raise ArtifactError("delta_base_missing", "%s: its base %s %s does not load: %s"
                                % (path, base["name"], base_version, exc)) from None
        data_key = self.keyring.open_slot(keyslot, delta.target["artifact_id"])
        delta.rebuild(model, data_key, out_path)
        return {"base_version": base_version, "bytes": delta.size, "full_bytes": delta.target["artifact_size"],
                "bytes_saved": delta.target["artifact_size"] - delta.size}

    def rekey(self, name: str, version: str, keyslot: Dict[str, Any]) -> Change:
        """Replace an installed artifact's key slot with one for another device key (rotation).
        The new slot must open with this device's keyring and match the artifact's key commitment."""
        if not self.is_artifact(name, version):
            raise StoreError("re-keying %s %s: it is not an installed signed artifact" % (name, version))
        if _same_key(self.keyslot(name, version), keyslot):
            return Change(False, name, version, message="key slot unchanged")
        art = self.open_artifact(os.path.join(self._version_dir(name, version), ARTIFACT_FILE))
        self._open_slot(art, keyslot)
        with self._locked():
            write_atomic(os.path.join(self._version_dir(name, version), KEYSLOT_FILE),
                         json.dumps(keyslot, sort_keys=True).encode(), 0o640)
        return Change(True, name, version, message="re-keyed for device key %s" % keyslot.get("key_id"))

    def activate(self, name: str, version: str) -> Change:
        """Point ``active`` at version; the version it replaces becomes ``previous``."""
        with self._locked():
            self.manifest(name, version)  # refuses a version that is not installed
            current = self.active(name)
            if current == version:
                return Change(False, name, version, self.pointer(name, PREVIOUS), "already active")
            if current is not None:
                self._set_pointer(name, PREVIOUS, current)
            self._set_pointer(name, ACTIVE, version)
            self._prune(name)
        return Change(True, name, version, current, "activated")

    def rollback(self, name: str, version: Optional[str] = None) -> Change:
        """Activate ``version``, or the ``previous`` pointer's version."""
        target = version or self.pointer(name, PREVIOUS)
        if target is None:
            raise StoreError("rolling back %s: no previous version is kept" % name)
        if target == self.active(name):
            return Change(False, name, target, message="already active")
        return self.activate(name, target)

    def restore_pointers(self, name: str, active: Optional[str], previous: Optional[str]) -> None:
        """Put ``active`` and ``previous`` back as they were before a failed update (None: no pointer)."""
        with self._locked():
            for which, version in ((ACTIVE, active), (PREVIOUS, previous)):
                if version is None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self._dir(name), which))
                    continue
                self.manifest(name, version)  # refuses a version that is not installed
                if self.pointer(name, which) != version:
                    self._set_pointer(name, which, version)

    def remove(self, name: str, version: str) -> Change:
        with self._locked():
            if version not in self.versions(name):
                return Change(False, name, version, message="not installed")
            if version == self.active(name):
                raise StoreError("removing %s %s: it is the active version" % (name, version))
            if version == self.pointer(name, PREVIOUS):
                os.unlink(os.path.join(self._dir(name), PREVIOUS))
            self._remove_version(name, version)
        return Change(True, name, version, message="removed")

    def recover(self) -> List[str]:
        """Clean up after a crash: remove staging directories. Returns what was removed."""
        removed = []
        with self._locked():
            for name in self.names():
                for entry in os.listdir(self._dir(name)):
                    path = os.path.join(self._dir(name), entry)
                    if entry.startswith(_STAGING_PREFIX) or entry.startswith(".ptr-"):
                        if os.path.isdir(path) and not os.path.islink(path):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(path)
                        removed.append(os.path.join(name, entry))
        return removed

    # -- internals -------------------------------------------------------------------------

    def open_artifact(self, path: str) -> Artifact:
        """An artifact whose signature (by a trusted signer), hardware class and runtime version are checked."""
        try:
            art = Artifact.open(path, self.trusted_signers())
            art.check_compatible(self.hardware_class)
        except ArtifactError as exc:
            raise StoreError("artifact refused: %s" % exc) from None
        return art

    def _open_slot(self, art: Artifact, keyslot: Dict[str, Any]) -> bytes:
        try:
            data_key = self.keyring.open_slot(keyslot, art.artifact_id)
            art.check_key(data_key)
        except ArtifactError as exc:
            raise StoreError("%s %s: %s" % (art.manifest.name, art.manifest.version, exc)) from None
        return data_key

    def _decrypt(self, name: str, version: str, manifest: Manifest) -> bytes:
        art = self.open_artifact(os.path.join(self._version_dir(name, version), ARTIFACT_FILE))
        if art.manifest.sha256 != manifest.sha256:
            raise StoreError("model %s version %s: manifest.json does not match the signed artifact" % (name, version))
        data_key = self._open_slot(art, self.keyslot(name, version))
        try:
            # Both digests of this file were checked when it was installed (install_artifact); the tags
            # under the committed key pin every byte since. See Artifact.decrypt.
            return art.decrypt(data_key, payload_digest=False)
        except ArtifactError as exc:
            raise StoreError("model %s version %s: %s" % (name, version, exc)) from None

    def _installed_slot(self, manifest: Manifest) -> Optional[Dict[str, Any]]:
        """The stored slot when this exact model is installed as an artifact; None when not installed."""
        if not self._already_installed(manifest):
            return None
        if not self.is_artifact(manifest.name, manifest.version):
            raise StoreError("installing %s %s: the same model is installed as plaintext; remove that version first"
                             % (manifest.name, manifest.version))
        return self.keyslot(manifest.name, manifest.version)

    def _already_installed(self, manifest: Manifest) -> bool:
        """True for the same model under its version; refuses a different model under that version."""
        name, version = manifest.name, manifest.version
        if not os.path.isdir(self._version_dir(name, version)):
            return False
        try:
            current = self.manifest(name, version)
        except StoreError:
            current = None
        if current is not None and current.sha256 == manifest.sha256:
            return True
        raise StoreError("installing %s %s: a different model is installed under this version; "
                         "remove it first or use a new version" % (name, version))

    def _check_downgrade(self, manifest: Manifest, force: bool) -> None:
        """Refuse a version older than the active one (or, with none active, the newest installed)."""
        name = manifest.name
        installed = self.versions(name)
        newest = self.active(name) or (installed[-1] if installed else None)
        if newest is not None and not force and version_key(manifest.version) < version_key(newest):
            raise StoreError("installing %s %s: older than the %s version %s; pass force to downgrade"
                             % (name, manifest.version, "active" if self.active(name) else "installed", newest))

    def _check_files(self, manifest: Manifest, files: Optional[Mapping[str, bytes]],
                     reserved: tuple) -> Dict[str, bytes]:
        name, version = manifest.name, manifest.version
        files = dict(files or {})
        for fname, data in files.items():
            check_name("file name", fname)
            if fname in _RESERVED + tuple(reserved):
                raise StoreError("installing %s %s: extra file %s clashes with the model" % (name, version, fname))
            want = manifest.files.get(fname)
            if want is not None and sha256_bytes(data) != want:
                raise StoreError("installing %s %s: gate file %s does not match the sha256 in the signed manifest"
                                 % (name, version, fname))
        missing = sorted(set(manifest.files) - set(files))
        if missing:
            raise StoreError("installing %s %s: the manifest lists gate files %s, which were not given"
                             % (name, version, ", ".join(missing)))
        return files

    def _stage(self, manifest: Manifest, write_model, files: Mapping[str, bytes]) -> None:
        name, version = manifest.name, manifest.version
        os.makedirs(self._dir(name), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self._dir(name))
        try:
            os.chmod(staging, 0o750)
            write_model(staging)
            for fname, data in files.items():
                _write_file(os.path.join(staging, fname), data)
            # The manifest last: a version directory is complete when it has one.
            _write_file(os.path.join(staging, "manifest.json"), manifest.to_json().encode())
            _fsync_dir(staging)
            os.rename(staging, self._version_dir(name, version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self._dir(name))

    def _dir(self, name: str) -> str:
        return os.path.join(self.models_dir, check_name("model name", name))

    def _version_dir(self, name: str, version: str) -> str:
        return os.path.join(self._dir(name), check_name("version", version))

    def _set_pointer(self, name: str, which: str, version: str) -> None:
        tmp = os.path.join(self._dir(name), ".ptr-%s-%d" % (which, os.getpid()))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(version, tmp)
        os.replace(tmp, os.path.join(self._dir(name), which))
        _fsync_dir(self._dir(name))

    def _prune(self, name: str) -> None:
        pinned = {self.active(name), self.pointer(name, PREVIOUS)}
        others = [v for v in self.versions(name) if v not in pinned]
        budget = max(self.keep - (1 if self.pointer(name, PREVIOUS) else 0), 0)
        for version in others[:max(len(others) - budget, 0)]:
            self._remove_version(name, version)

    def _remove_version(self, name: str, version: str) -> None:
        # Rename first so that a crash never leaves a half-deleted directory under its version name.
        doomed = os.path.join(self._dir(name), "%s%s-removed" % (_STAGING_PREFIX, version))
        os.rename(self._version_dir(name, version), doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            os.makedirs(self.models_dir, exist_ok=True)
        except OSError as exc:
            raise StoreError("opening the model store at %s: %s" % (self.models_dir, exc.strerror)) from None
        fd = os.open(os.path.join(self.models_dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StoreError("model store at %s: no space left on device" % self.models_dir) from None
            raise
        finally:
            os.close(fd)


def open_store(config: Any) -> ModelStore:
    """The store as a RuntimeConfig describes it."""
    return ModelStore(config.root, keep=config.keep_versions, require_signed=config.require_signed,
                      hardware_class=config.hardware_class)
