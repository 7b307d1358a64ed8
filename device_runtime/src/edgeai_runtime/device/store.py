"""The on-device model store.

Layout::

    <root>/models/<name>/<version>/manifest.json
    <root>/models/<name>/<version>/<model file>      (plus gate data files)
  or, for a signed, encrypted artifact (docs/artifact-format.md):
    <root>/models/<name>/<version>/model.eaf         the artifact, as received: never decrypted to disk
    <root>/models/<name>/<version>/keyslot.json      its data key, wrapped for this device's key
    <root>/models/<name>/pointers -> {"active":"<version>","previous":"<version>"}
                                                      the pointer record: a symlink whose target is the JSON
  stores written by older runtimes have two symlinks instead (read, and replaced by the record on
  the next switch):
    <root>/models/<name>/active   -> <version>
    <root>/models/<name>/previous -> <version>        (the rollback target)

Crash safety: a version is written into a staging directory (``.staging-<pid>-*``), fsynced,
then renamed into place in one step. The active/previous pair is switched in one step too: a new
record symlink is renamed over the old one, so a crash leaves the old pair or the new pair, never
a mix of the two (and never ``active`` without its rollback target). A symlink's target lives in
its inode, so switching back needs no free data block: a rollback works on a full disk.
Mutations hold an exclusive lock on ``<root>/models/.lock``; what a killed writer left (staging
directories, pointer temporaries, temp files) is swept by whoever next gets the lock, and by every
``open_store`` (which then reports it in ``swept``).

Space: an install checks, before it stages anything, that the filesystem has room for what it
writes; a full disk is refused with a DiskFull (fsutil) naming the filesystem, the bytes needed
and the bytes free.

Trust: artifacts must be signed by a key in ``<root>/etc/signers/*.pub``; their data keys
open with the device keyring in ``<root>/keys``. With ``require_signed`` the store refuses
plaintext models altogether.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.format.artifact import Artifact, ArtifactError
from edgeai_runtime.fsutil import (blocks, exclusive_lock, fsync_dir, is_disk_full, mount_point, shortfall, space,
                                   write_atomic, write_point)
from edgeai_runtime.format.keys import DeviceKeyring, load_public, key_id, key_type
from edgeai_runtime.format.manifest import Manifest, ManifestError, check_name, version_key

ACTIVE = "active"
PREVIOUS = "previous"
RECORD = "pointers"
_STAGING_PREFIX = ".staging-"
_LEFTOVER_PREFIXES = (_STAGING_PREFIX, ".ptr-")
_POINTERS = (ACTIVE, PREVIOUS, RECORD)
ARTIFACT_FILE = "model.eaf"
KEYSLOT_FILE = "keyslot.json"
_RESERVED = ("manifest.json", ARTIFACT_FILE, KEYSLOT_FILE)


class StoreError(EdgeAIError, RuntimeError):
    """A store operation was refused or failed; ``str()`` says which model and why."""

    default_reason = "store"


class DiskFull(StoreError):
    """No space left on the filesystem holding ``path``. ``str()`` names the filesystem (its mount
    point), what needed the room, the bytes needed (when known) and the bytes free; never a bare
    ``[Errno 28]``. ``reason`` is the stable code ``disk_full`` (docs/artifact-format.md)."""

    default_reason = "disk_full"

    def __init__(self, path: str, doing: str, needed: Optional[int] = None, detail: Optional[str] = None) -> None:
        try:
            free = space(path)[0]
            mount = mount_point(path)
        except OSError:
            free, mount = -1, "?"
        self.path, self.doing, self.needed, self.free, self.mount = path, doing, needed, free, mount
        need = "%d bytes needed, %d free" % (needed, free) if needed is not None else "%d bytes free" % free
        message = "no space left on device: %s needs room on the filesystem at %s (for %s): %s" % (
            doing, mount, path, need)
        super().__init__(message + (" (%s)" % detail if detail else ""))

    @classmethod
    def check(cls, needs: Mapping[str, int], doing: str) -> None:
        """Raise DiskFull unless every filesystem has room for ``needs`` ({path: bytes})."""
        short = shortfall(needs)
        if short is not None:
            raise cls(short[0], doing, needed=short[1])

    @classmethod
    def from_error(cls, exc: BaseException, doing: str, path: Optional[str] = None) -> Optional["DiskFull"]:
        """``exc`` as a DiskFull when it is a full disk (ENOSPC, EDQUOT), else None."""
        if isinstance(exc, DiskFull):
            return exc
        if is_disk_full(exc):
            return cls(str(getattr(exc, "filename", None) or path or "."), doing)
        return None


@dataclass
class Change:
    changed: bool
    name: str
    version: Optional[str]
    previous: Optional[str] = None
    message: str = ""


_fsync_dir = fsync_dir


def _write_file(path: str, data: bytes, mode: int = 0o640) -> None:
    write_point("stage %s" % os.path.basename(path))
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, mode)


def _same_key(stored: Dict[str, Any], new: Dict[str, Any]) -> bool:
    """Two slots for one artifact and one device key are equivalent (wrapping is randomised)."""
    return all(stored.get(k) == new.get(k) for k in ("artifact_id", "key_id", "type"))


def _copy_file(src: str, dst: str) -> None:
    write_point("stage %s" % os.path.basename(dst))
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
        #: What ``sweep``/``recover`` removed through this object (``<name>/<entry>``), for the caller to report.
        self.swept: List[str] = []

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

    def pointers(self, name: str) -> Tuple[Optional[str], Optional[str]]:
        """(active, previous): from the pointer record, else from the two symlinks of a store an
        older runtime wrote. A pointer that is unset, or names no complete version, reads as None."""
        directory = self._dir(name)
        try:
            text = os.readlink(os.path.join(directory, RECORD))
        except FileNotFoundError:
            pair = (_readlink(os.path.join(directory, ACTIVE)), _readlink(os.path.join(directory, PREVIOUS)))
        except OSError as exc:
            raise StoreError("reading the pointer record of %s (%s): %s"
                             % (name, os.path.join(directory, RECORD), exc.strerror)) from None
        else:
            try:
                record = json.loads(text)
                pair = (record.get(ACTIVE), record.get(PREVIOUS))
            except (ValueError, AttributeError):
                raise StoreError("the pointer record of %s (%s) is not ours: %r; inspect it and remove it"
                                 % (name, os.path.join(directory, RECORD), text)) from None
        return self._complete(name, pair[0]), self._complete(name, pair[1])

    def pointer(self, name: str, which: str = ACTIVE) -> Optional[str]:
        """The version a pointer (``active`` or ``previous``) names, or None when it is unset or dangling."""
        if which not in (ACTIVE, PREVIOUS):
            raise ValueError("pointer %r is not one of %s, %s" % (which, ACTIVE, PREVIOUS))
        return self.pointers(name)[0 if which == ACTIVE else 1]

    def _complete(self, name: str, version: Any) -> Optional[str]:
        try:
            check_name("version", version)
        except (ManifestError, ValueError):
            return None
        return version if os.path.isfile(os.path.join(self._dir(name), version, "manifest.json")) else None

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
            slot: Dict[str, Any] = json.load(f)
        return slot

    def details(self, name: str, version: str) -> Dict[str, Any]:
        """What a controller compares before sending anything: identity, signature, key slot."""
        manifest = self.manifest(name, version)
        info: Dict[str, Any] = {"sha256": manifest.sha256, "size": manifest.size, "signed": False,
                                "runtime": manifest.runtime, "precision": manifest.precision}
        if self.is_artifact(name, version):
            from edgeai_runtime.format.artifact import read_header
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

    def status(self) -> List[Dict[str, Any]]:
        """Every model's entry (``entry``): what ``model list`` prints and ``edgeai_runtime.device.plan`` reads."""
        return [self.entry(n) for n in self.names()]

    def entry(self, name: str) -> Dict[str, Any]:
        """One model's versions, pointers and each version's ``details`` (all empty for a model not held)."""
        versions = self.versions(name)
        active, previous = self.pointers(name) if versions else (None, None)
        return {"name": name, "versions": versions, "active": active, "previous": previous,
                "installed": {v: self.details(name, v) for v in versions}}

    def serving(self) -> Dict[str, Optional[str]]:
        """{name: active version}: what the service serves (or will, once it starts)."""
        return {n: self.active(n) for n in self.names()}

    def space_needed(self, manifest: Manifest, files: Optional[Mapping[str, bytes]], artifact: Optional[str] = None,
                     keyslot: Optional[Dict[str, Any]] = None) -> int:
        """Bytes an install of ``manifest`` puts on the store's filesystem (0 when it is installed):
        every file rounded up to whole blocks, the version's directory, and the pointer record."""
        if os.path.isdir(self._version_dir(manifest.name, manifest.version)):
            return 0
        block = space(self.models_dir)[1]
        sizes = [os.path.getsize(artifact) if artifact else manifest.size, len(manifest.to_json().encode()),
                 len(json.dumps(keyslot or {}, sort_keys=True).encode())]
        sizes += [len(data) for data in (files or {}).values()]
        return sum(blocks(n, block) for n in sizes) + 2 * block

    def check_space(self, manifest: Manifest, files: Optional[Mapping[str, bytes]], artifact: Optional[str] = None,
                    keyslot: Optional[Dict[str, Any]] = None) -> None:
        """Refuse (DiskFull) an install the store's filesystem has no room for, before anything is written."""
        DiskFull.check({self.models_dir: self.space_needed(manifest, files, artifact, keyslot)},
                       "installing %s %s" % (manifest.name, manifest.version))

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
            self.check_space(manifest, files)
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
            self.check_space(manifest, files, path, keyslot)

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

    def activate(self, name: str, version: str, prune: bool = True) -> Change:
        """Point ``active`` at version; the version it replaces becomes ``previous`` (both in one
        step). ``prune``: then remove versions beyond ``keep`` (an OTA transaction prunes only at
        its commit, so that its undo finds every version it may put back)."""
        with self._locked():
            self.manifest(name, version)  # refuses a version that is not installed
            current, previous = self.pointers(name)
            if current == version:
                return Change(False, name, version, previous, "already active")
            self._write_pointers(name, version, current if current is not None else previous)
            if prune:
                self._prune(name)
        return Change(True, name, version, current, "activated")

    def prune(self, name: str) -> List[str]:
        """Remove the versions beyond ``keep`` (never the active or previous one); returns them."""
        with self._locked():
            return self._prune(name)

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
            for version in (active, previous):
                if version is not None:
                    self.manifest(name, version)  # refuses a version that is not installed
            legacy = any(os.path.islink(os.path.join(self._dir(name), w)) for w in (ACTIVE, PREVIOUS))
            if self.pointers(name) != (active, previous) or legacy:
                self._write_pointers(name, active, previous)

    def remove(self, name: str, version: str) -> Change:
        with self._locked():
            if version not in self.versions(name):
                return Change(False, name, version, message="not installed")
            active, previous = self.pointers(name)
            if version == active:
                raise StoreError("removing %s %s: it is the active version" % (name, version))
            if version == previous:
                self._write_pointers(name, active, None)
            self._remove_version(name, version)
        return Change(True, name, version, message="removed")

    def recover(self) -> List[str]:
        """Clean up after a crash: ``sweep``, waiting for the lock. Returns what was removed."""
        return self.sweep(wait=True)

    def sweep(self, wait: bool = False) -> List[str]:
        """Remove what killed writers left: staging directories (``.staging-*``: a version being
        written or removed), pointer temporaries (``.ptr-*``) and temp files (``.tmp-*``) in version
        directories. Every writer holds the store lock while it has such things, so whoever holds
        the lock next may remove them all; without ``wait`` a busy lock (a live writer) skips the
        sweep. Returns what was removed (``<name>/<entry>``) and adds it to ``swept``."""
        removed: List[str] = []
        if not os.path.isdir(self.models_dir):
            return removed
        with self._locked(wait=wait) as held:
            if not held:
                return removed
            for name in self.names():
                directory = self._dir(name)
                for entry in sorted(os.listdir(directory)):
                    path = os.path.join(directory, entry)
                    if entry.startswith(_LEFTOVER_PREFIXES):
                        write_point("sweep %s/%s" % (name, entry))
                        if os.path.isdir(path) and not os.path.islink(path):
                            shutil.rmtree(path, ignore_errors=True)
                        else:
                            with contextlib.suppress(FileNotFoundError):
                                os.unlink(path)
                        removed.append(os.path.join(name, entry))
                    elif not entry.startswith(".") and os.path.isdir(path) and not os.path.islink(path):
                        for inner in sorted(os.listdir(path)):
                            if inner.startswith(".tmp-"):
                                write_point("sweep %s/%s/%s" % (name, entry, inner))
                                with contextlib.suppress(FileNotFoundError):
                                    os.unlink(os.path.join(path, inner))
                                removed.append(os.path.join(name, entry, inner))
            if removed:
                fsync_dir(self.models_dir)
        self.swept.extend(removed)
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
                     reserved: Tuple[str, ...]) -> Dict[str, bytes]:
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

    def _stage(self, manifest: Manifest, write_model: Callable[[str], Any], files: Mapping[str, bytes]) -> None:
        name, version = manifest.name, manifest.version
        if version in _POINTERS:
            raise StoreError("installing %s %s: %s is a name the store reserves" % (name, version, version))
        write_point("stage %s %s (staging directory)" % (name, version))
        os.makedirs(self._dir(name), exist_ok=True)
        staging = tempfile.mkdtemp(prefix="%s%d-" % (_STAGING_PREFIX, os.getpid()), dir=self._dir(name))
        try:
            os.chmod(staging, 0o750)
            write_model(staging)
            for fname, data in files.items():
                _write_file(os.path.join(staging, fname), data)
            # The manifest last: a version directory is complete when it has one.
            _write_file(os.path.join(staging, "manifest.json"), manifest.to_json().encode())
            _fsync_dir(staging)
            write_point("stage %s %s (rename into place)" % (name, version))
            os.rename(staging, self._version_dir(name, version))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(self._dir(name))

    def _dir(self, name: str) -> str:
        return os.path.join(self.models_dir, check_name("model name", name))

    def _version_dir(self, name: str, version: str) -> str:
        return os.path.join(self._dir(name), check_name("version", version))

    def _write_pointers(self, name: str, active: Optional[str], previous: Optional[str]) -> None:
        """Switch the pair in one step (the lock held): a new record symlink, renamed over the old one.
        Its target is the JSON, kept short so that it lives in the inode (no data block)."""
        directory = self._dir(name)
        tmp = os.path.join(directory, ".ptr-%d" % os.getpid())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        write_point("pointers %s (new record: active %s, previous %s)" % (name, active, previous))
        os.symlink(json.dumps({ACTIVE: active, PREVIOUS: previous}, separators=(",", ":"), sort_keys=True), tmp)
        write_point("pointers %s (rename the record into place)" % name)
        os.replace(tmp, os.path.join(directory, RECORD))
        _fsync_dir(directory)
        legacy = [w for w in (ACTIVE, PREVIOUS) if os.path.islink(os.path.join(directory, w))]
        for which in legacy:  # an older runtime's pointers: the record has replaced them
            write_point("pointers %s (remove the old %s symlink)" % (name, which))
            os.unlink(os.path.join(directory, which))
        if legacy:
            _fsync_dir(directory)

    def _prune(self, name: str) -> List[str]:
        active, previous = self.pointers(name)
        others = [v for v in self.versions(name) if v not in (active, previous)]
        budget = max(self.keep - (1 if previous else 0), 0)
        doomed = others[:max(len(others) - budget, 0)]
        for version in doomed:
            self._remove_version(name, version)
        return doomed

    def _remove_version(self, name: str, version: str) -> None:
        # Rename first so that a crash never leaves a half-deleted directory under its version name.
        doomed = os.path.join(self._dir(name), "%s%d-removed-%s" % (_STAGING_PREFIX, os.getpid(), version))
        write_point("remove %s %s (rename out of place)" % (name, version))
        os.rename(self._version_dir(name, version), doomed)
        write_point("remove %s %s (delete)" % (name, version))
        shutil.rmtree(doomed, ignore_errors=True)

    @contextlib.contextmanager
    def _locked(self, wait: bool = True) -> Iterator[bool]:
        """Hold the store lock; yields False (without it) when ``wait`` is off and another process has it.
        A full disk inside is raised as DiskFull."""
        with contextlib.ExitStack() as stack:
            try:
                os.makedirs(self.models_dir, exist_ok=True)
                held = stack.enter_context(exclusive_lock(os.path.join(self.models_dir, ".lock"), wait))
            except OSError as exc:
                raise DiskFull.from_error(exc, "opening the model store", self.models_dir) or StoreError(
                    "opening the model store at %s: %s" % (self.models_dir, exc.strerror)) from None
            try:
                yield held
            except OSError as exc:
                full = DiskFull.from_error(exc, "writing to the model store", self.models_dir)
                if full is None:
                    raise
                raise full from None


def _readlink(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def open_store(config: Any) -> ModelStore:
    """The store as a RuntimeConfig describes it, swept of what dead writers left (``store.swept``).
    A sweep that cannot run (a live writer holds the lock, or no write access) is skipped."""
    store = ModelStore(config.root, keep=config.keep_versions, require_signed=config.require_signed,
                       hardware_class=config.hardware_class)
    with contextlib.suppress(OSError, StoreError):
        store.sweep()
    return store
