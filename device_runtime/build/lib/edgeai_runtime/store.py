"""The on-device model store.

Layout::

    <root>/models/<name>/<version>/manifest.json
    <root>/models/<name>/<version>/<model file>      (plus gate data files)
    <root>/models/<name>/active   -> <version>        (symlink)
    <root>/models/<name>/previous -> <version>        (symlink, the rollback target)

Crash safety: a version is written into a staging directory, fsynced, then renamed
into place in one step; pointers are switched by renaming a new symlink over the
old one. A crash at any moment therefore leaves either the old or the new version
active, never neither, and never a half-written version under its own name.
Mutations hold an exclusive lock on ``<root>/models/.lock``.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional

from .manifest import Manifest, ManifestError, check_name, version_key

ACTIVE = "active"
PREVIOUS = "previous"
_STAGING_PREFIX = ".staging-"
_POINTERS = (ACTIVE, PREVIOUS)


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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ModelStore:
    def __init__(self, root: str, keep: int = 2) -> None:
        """``keep``: how many versions besides the active one are kept for rollback."""
        if keep < 1:
            raise ValueError("keep must be at least 1 so that a rollback target exists")
        self.root = root
        self.models_dir = os.path.join(root, "models")
        self.keep = keep

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

    def read_model(self, name: str, version: str) -> bytes:
        """The model's bytes, checked against the manifest's size and sha256."""
        manifest = self.manifest(name, version)
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
                 "previous": self.pointer(n, PREVIOUS)} for n in self.names()]

    # -- changing --------------------------------------------------------------------------

    def install(self, manifest: Manifest, model: bytes, files: Optional[Mapping[str, bytes]] = None) -> Change:
        """Store a version (not activating it). Installing the same bytes again changes nothing."""
        name, version = manifest.name, manifest.version
        if len(model) != manifest.size:
            raise StoreError("installing %s %s: model is %d bytes, the manifest says %d"
                             % (name, version, len(model), manifest.size))
        if sha256_bytes(model) != manifest.sha256:
            raise StoreError("installing %s %s: model sha256 does not match the manifest" % (name, version))
        files = dict(files or {})
        for fname in files:
            check_name("file name", fname)
            if fname in ("manifest.json", manifest.model_file):
                raise StoreError("installing %s %s: extra file %s clashes with the model" % (name, version, fname))
        with self._locked():
            os.makedirs(self._dir(name), exist_ok=True)
            target = self._version_dir(name, version)
            if os.path.isdir(target):
                try:
                    current = self.manifest(name, version)
                except StoreError:
                    current = None
                if current is not None and current.sha256 == manifest.sha256:
                    return Change(False, name, version, message="already installed")
                raise StoreError("installing %s %s: a different model is installed under this version; "
                                 "remove it first or use a new version" % (name, version))
            staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=self._dir(name))
            try:
                os.chmod(staging, 0o750)
                _write_file(os.path.join(staging, manifest.model_file), model)
                for fname, data in files.items():
                    _write_file(os.path.join(staging, fname), data)
                # The manifest last: a version directory is complete when it has one.
                _write_file(os.path.join(staging, "manifest.json"), manifest.to_json().encode())
                _fsync_dir(staging)
                os.rename(staging, target)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            _fsync_dir(self._dir(name))
        return Change(True, name, version, message="installed")

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
