"""The pull-mode model registry: static files that any web server or object store can host, written
by the controller (``publish``) and read by the device agent (``Agent``). See also docs/ota.md.

    <registry>/updates/<device key id>.json        the update document for one device
    <registry>/updates/<device key id>.json.sig    its Ed25519 signature (64 raw bytes), fleet signing key
    <registry>/artifacts/<name>-<version>-<cipher>.eaf             signed artifacts, shared by every device
    <registry>/artifacts/<name>-<version>-<cipher>.files/<file>    their gate files

The update document::

    {"format": "edgeai.fleet/updates", "format_version": 1, "device": "<key id>", "sequence": 7,
     "issued": "2026-11-23T12:00:00Z",
     "models": [{"name": "digits", "version": "2.0.0", "model_sha256": "<the plaintext model's sha256>",
                 "force": false,
                 "artifact": {"path": "artifacts/digits-2.0.0-aes.eaf", "sha256": "...", "size": 123},
                 "files": {"golden.npz": {"path": "...", "sha256": "...", "size": 45}},
                 "deltas": [{"path": "artifacts/digits-2.0.0-aes.from-1.0.0.eafd", "sha256": "...", "size": 9,
                             "base_version": "1.0.0", "base_sha256": "<the base model's sha256>"}],
                 "keyslot": {...the data key wrapped for this device...}}]}

The agent fetches ``updates/<its key id>.json`` over HTTPS (certificate verified), checks the
signature against the device's trusted signers and that ``sequence`` never goes back (no replay of
an old document), downloads what it lacks with resume (HTTP Range) into ``<root>/cache/downloads``,
checks each file's sha256, and installs through the same OTA installer as push mode. When the
device holds the base of one of the entry's deltas (edgeai_runtime.delta), it fetches that delta
instead of the artifact; a delta that does not give the artifact changes nothing, and the agent
then fetches the artifact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from cryptography.exceptions import InvalidSignature

from .errors import EdgeAIError
from .artifact import read_header, sha256_file
from .keys import ArtifactError, key_id, load_public, write_atomic
from .ota import Policy, UpdateFailed, Updater
from .plan import PlanRefused, Want, plan

DOC_FORMAT = "edgeai.fleet/updates"
DOC_VERSION = 1
BLOCK = 1 << 20


class RegistryError(EdgeAIError, RuntimeError):
    """A registry or download failure; ``reason`` is one of tls, http, network, signature, replay,
    checksum, format."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason)


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


# -- controller side ------------------------------------------------------------------------

def publish(registry: str, signing_key: Any, releases: List[Dict[str, Any]], devices: Mapping[str, str],
            wrap: Callable[[str, str], Dict[str, Any]], sequence: Optional[int] = None) -> Dict[str, Any]:
    """Write the registry: each release's artifact and gate files (copied once), and for every
    device (key id -> public key PEM) a signed update document with its own key slots.

    ``releases``: [{"artifact": path, "files": {name: path}, "force": bool, "deltas": [{"path": delta file,
    "base_version": v, "base_sha256": sha}]}]; ``wrap(artifact, pem)``
    returns the artifact's key slot for one device. ``sequence`` defaults to the time in seconds,
    so a later publication always supersedes an earlier one. A device whose document would say the
    same (same models, versions, artifacts and files, key slots for the same key) keeps its
    document: publishing again changes nothing."""
    sequence = int(time.time()) if sequence is None else sequence
    os.makedirs(os.path.join(registry, "artifacts"), exist_ok=True)
    os.makedirs(os.path.join(registry, "updates"), exist_ok=True)
    entries = []
    copied = False
    for release in releases:
        header = read_header(release["artifact"])
        base = os.path.basename(release["artifact"])
        artifact_rel = "artifacts/" + base
        copied |= _copy_if_changed(release["artifact"], os.path.join(registry, artifact_rel))
        files = {}
        for name, path in sorted((release.get("files") or {}).items()):
            rel = "artifacts/%s.files/%s" % (base[:-len(".eaf")] if base.endswith(".eaf") else base, name)
            copied |= _copy_if_changed(path, os.path.join(registry, rel))
            files[name] = {"path": rel, "sha256": sha256_file(path), "size": os.path.getsize(path)}
        deltas = []
        for delta in release.get("deltas") or []:
            rel = "artifacts/" + os.path.basename(delta["path"])
            copied |= _copy_if_changed(delta["path"], os.path.join(registry, rel))
            deltas.append({"path": rel, "sha256": sha256_file(delta["path"]), "size": os.path.getsize(delta["path"]),
                           "base_version": delta["base_version"], "base_sha256": delta["base_sha256"]})
        entries.append({"name": header["manifest"]["name"], "version": header["manifest"]["version"],
                        "model_sha256": header["manifest"]["sha256"],
                        "force": bool(release.get("force")), "source": release["artifact"],
                        "artifact": {"path": artifact_rel, "sha256": sha256_file(release["artifact"]),
                                     "size": os.path.getsize(release["artifact"])}, "files": files,
                        **({"deltas": deltas} if deltas else {})})
    written = []
    for device, pem in sorted(devices.items()):
        if key_id(load_public(pem)) != device:
            raise ArtifactError("bad_key", "the public key given for device %s has key id %s"
                                % (device, key_id(load_public(pem))))
        path = os.path.join(registry, "updates", device + ".json")
        wanted = [{k: v for k, v in e.items() if k != "source"} for e in entries]
        if _same_document(path, wanted, device):
            continue
        models = [dict(w, keyslot=wrap(e["source"], pem)) for w, e in zip(wanted, entries)]
        doc = {"format": DOC_FORMAT, "format_version": DOC_VERSION, "device": device, "sequence": sequence,
               "issued": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": models}
        body = _canonical(doc)
        write_atomic(path + ".sig", signing_key.sign(body), 0o644)  # signature first: a reader never pairs
        write_atomic(path, body, 0o644)                              # a new document with an old signature
        written.append(path)
    return {"changed": copied or bool(written), "registry": registry, "sequence": sequence, "documents": written,
            "models": ["%s %s" % (e["name"], e["version"]) for e in entries]}


def _same_document(path: str, wanted: List[Dict[str, Any]], device: str) -> bool:
    """Does the document at ``path`` already say ``wanted`` to ``device`` (key slots aside, which
    differ at every wrap but open to the same data key)?"""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return False
    have = [{k: v for k, v in m.items() if k != "keyslot"} for m in doc.get("models", [])]
    slots_for_device = all((m.get("keyslot") or {}).get("key_id") == device for m in doc.get("models", []))
    return doc.get("device") == device and have == wanted and slots_for_device


def _copy_if_changed(src: str, dst: str) -> bool:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.exists(dst) and os.path.getsize(dst) == os.path.getsize(src) and sha256_file(dst) == sha256_file(src):
        return False
    tmp = dst + ".partial"
    shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)
    return True


# -- device side ----------------------------------------------------------------------------

class Downloader:
    """HTTPS GETs with certificate verification, and resumable downloads (HTTP Range)."""

    def __init__(self, base_url: str, ca_file: Optional[str] = None, timeout: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.5) -> None:
        if urllib.parse.urlsplit(base_url).scheme != "https":
            raise RegistryError("format", "the registry URL must be https:// (got %s)" % base_url)
        self.base_url = base_url.rstrip("/") + "/"
        self.context = ssl.create_default_context(cafile=ca_file)
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.requests: List[Tuple[str, Optional[str]]] = []  # (path, Range header) of every request sent

    def url(self, path: str) -> str:
        return urllib.parse.urljoin(self.base_url, path)

    def get(self, path: str, limit: int = 4 << 20) -> bytes:
        """A small file, whole (the update document and its signature), retried on network errors."""
        for attempt in range(self.retries):
            try:
                with self._open(path, None) as response:
                    data = response.read(limit + 1)
                if len(data) > limit:
                    raise RegistryError("format", "%s is over %d bytes" % (self.url(path), limit))
                return data
            except _Retry as exc:
                self._pause(attempt, exc)
        raise RegistryError("network", "GET %s failed %d times" % (self.url(path), self.retries))

    def fetch(self, path: str, dest: str, size: int, sha256: str) -> int:
        """Download ``path`` to ``dest``, resuming ``dest + '.part'`` where an earlier attempt (or run)
        stopped; check size and sha256, then rename into place. Returns the bytes received now."""
        if os.path.exists(dest) and os.path.getsize(dest) == size and sha256_file(dest) == sha256:
            return 0
        part = dest + ".part"
        received = 0
        for attempt in range(self.retries):
            have = os.path.getsize(part) if os.path.exists(part) else 0
            if have > size:
                os.unlink(part)
                have = 0
            if have == size:
                break
            try:
                with self._open(path, "bytes=%d-" % have if have else None) as response:
                    if have and response.status != 206:  # the server sent it all again: start over
                        have = 0
                    with open(part, "r+b" if have else "wb") as out:
                        out.seek(have)
                        out.truncate()
                        while True:
                            block = response.read(BLOCK)
                            if not block:
                                break
                            out.write(block)
                            received += len(block)
                        out.flush()
                        os.fsync(out.fileno())
                if os.path.getsize(part) < size:
                    raise _Retry("the connection closed after %d of %d bytes" % (os.path.getsize(part), size))
                break
            except _Retry as exc:
                self._pause(attempt, exc)
        else:
            got = os.path.getsize(part) if os.path.exists(part) else 0
            raise RegistryError("network", "downloading %s: %d of %d bytes after %d attempts; the next run resumes"
                                % (self.url(path), got, size, self.retries))
        digest = sha256_file(part)
        if os.path.getsize(part) != size or digest != sha256:
            os.unlink(part)
            raise RegistryError("checksum", "%s: sha256 %s (%d bytes), the signed update document says %s (%d bytes)"
                                % (self.url(path), digest, os.path.getsize(part) if os.path.exists(part) else 0,
                                   sha256, size))
        os.replace(part, dest)
        return received

    @contextlib.contextmanager
    def _open(self, path: str, byte_range: Optional[str]):
        request = urllib.request.Request(self.url(path), headers={"Range": byte_range} if byte_range else {})
        self.requests.append((path, byte_range))
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout, context=self.context)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise _Retry("HTTP %d" % exc.code) from None
            raise RegistryError("http", "GET %s: HTTP %d %s" % (self.url(path), exc.code, exc.reason)) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):  # an invalid certificate is never retried or ignored
                raise RegistryError("tls", "GET %s: TLS verification failed: %s" % (self.url(path), exc.reason)) \
                    from None
            raise _Retry(str(exc.reason)) from None
        except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:
            raise _Retry(str(exc) or type(exc).__name__) from None
        try:
            yield response
        except (ConnectionError, TimeoutError, http.client.HTTPException) as exc:
            raise _Retry(str(exc) or type(exc).__name__) from None
        finally:
            response.close()

    def _pause(self, attempt: int, exc: Exception) -> None:
        if attempt + 1 < self.retries:
            time.sleep(self.backoff_s * (2 ** attempt))


class _Retry(Exception):
    """A network failure worth another attempt."""


class Agent:
    """One poll of the registry: fetch and check this device's update document, then bring every
    model in it to its version through the OTA installer (mode ``pull``)."""

    def __init__(self, config: Any, downloader: Downloader, policy: Optional[Policy] = None) -> None:
        self.config = config
        self.downloader = downloader
        self.updater = Updater(config)
        self.store = self.updater.store
        self.policy = policy or Policy()
        self.state_path = os.path.join(config.root, "state", "agent.json")
        self.downloads = os.path.join(config.root, "cache", "downloads")

    def run_once(self) -> Dict[str, Any]:
        device = self.store.keyring.current_id()
        if device is None:
            raise RegistryError("format", "this device has no key pair yet (edgeai-runtime keys ensure)")
        doc = self._document(device)
        results = []
        for entry in doc["models"]:
            results.append(self._bring(entry))
        self._save_state({"sequence": doc["sequence"], "checked": time.time()})
        failed = [r for r in results if r.get("failed")]
        return {"changed": any(r.get("changed") for r in results), "failed": bool(failed), "device": device,
                "sequence": doc["sequence"], "models": results,
                "msg": "; ".join(r["msg"] for r in failed) if failed else None}

    def _document(self, device: str) -> Dict[str, Any]:
        path = "updates/%s.json" % device
        body = self.downloader.get(path)
        signature = self.downloader.get(path + ".sig", limit=64)
        trusted = self.store.trusted_signers()
        for signer in trusted.values():
            try:
                signer.verify(signature, body)
                break
            except InvalidSignature:
                continue
        else:
            raise RegistryError("signature", "%s is not signed by a signer this device trusts (%s)"
                                % (self.downloader.url(path), ", ".join(sorted(trusted)) or "none"))
        try:
            doc = json.loads(body)
        except ValueError:
            raise RegistryError("format", "%s is not JSON" % self.downloader.url(path)) from None
        if doc.get("format") != DOC_FORMAT or doc.get("format_version") != DOC_VERSION or doc.get("device") != device \
                or not isinstance(doc.get("sequence"), int) or not isinstance(doc.get("models"), list):
            raise RegistryError("format", "%s is not an update document for device %s"
                                % (self.downloader.url(path), device))
        last = self._load_state().get("sequence", -1)
        if doc["sequence"] < last:
            raise RegistryError("replay", "%s has sequence %d, older than the %d already applied (a replayed "
                                "document)" % (self.downloader.url(path), doc["sequence"], last))
        return doc

    def _bring(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        name, version = entry["name"], entry["version"]
        try:  # the one rule of "anything to do" (edgeai_runtime.plan); older documents carry no model sha256
            decided = plan([self.store.entry(name)], Want(name, version, "active", sha256=entry.get("model_sha256")))
        except PlanRefused as exc:
            return {"name": name, "version": version, "changed": False, "failed": True, "outcome": "refused",
                    "reason": exc.reason, "msg": "%s %s: %s" % (name, version, exc), "bytes_transferred": 0}
        if not decided["changed"]:
            return {"name": name, "version": version, "changed": False, "outcome": "unchanged"}
        os.makedirs(self.downloads, exist_ok=True)
        started = time.monotonic()
        received = [0]
        local = {fname: os.path.join(self.downloads, spec["sha256"]) for fname, spec in entry.get("files", {}).items()}
        policy = dataclasses.replace(self.policy, force=bool(entry.get("force")))
        fallback: Optional[Dict[str, Any]] = None

        def fetch(spec: Dict[str, Any], dest: str) -> str:
            received[0] += self.downloader.fetch(spec["path"], dest, spec["size"], spec["sha256"])
            return dest

        def progress() -> Tuple[float, int]:  # the stage phase is the downloads
            return time.monotonic() - started, received[0]

        try:
            files = {}
            for fname, spec in sorted(entry.get("files", {}).items()):
                with open(fetch(spec, local[fname]), "rb") as f:
                    files[fname] = f.read()
            delta, delta_path = self._usable_delta(name, entry), None
            if delta is not None:
                local["delta"] = os.path.join(self.downloads, delta["sha256"] + ".eafd")
                try:
                    delta_path = fetch(delta, local["delta"])
                except RegistryError as exc:  # nothing changed: the full artifact instead, as when it does not apply
                    fallback = {"used": False, "fallback_reason": "%s: %s" % (exc.reason, exc)}
            local["artifact"] = os.path.join(self.downloads, entry["artifact"]["sha256"] + ".eaf")

            def full() -> str:  # downloaded only when there is no delta, or it gives no artifact
                return fetch(entry["artifact"], local["artifact"])

            result = self._clean(self.updater.apply_delta_or_full(delta_path, full, entry["keyslot"], files,
                                                                  policy, "pull", progress=progress), local)
        except RegistryError as exc:
            return {"name": name, "version": version, "changed": False, "failed": True, "outcome": "not_downloaded",
                    "reason": exc.reason, "msg": "%s %s: %s" % (name, version, exc), "bytes_transferred": received[0]}
        except UpdateFailed as exc:
            return dict(exc.result, failed=True, msg=str(exc), **({"delta": fallback} if fallback else {}))
        except Exception as exc:  # a store refusal before the transaction: report it, go on with the others
            return {"name": name, "version": version, "changed": False, "failed": True, "outcome": "refused",
                    "msg": "%s %s: %s" % (name, version, exc), "bytes_transferred": received[0]}
        return dict(result, delta=fallback) if fallback else result

    def _usable_delta(self, name: str, entry: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The entry's delta whose base this device holds (its serving version's first)."""
        try:
            versions, active = self.store.versions(name), self.store.active(name)
        except Exception:  # noqa: BLE001 - an unreadable store entry: the artifact, as without deltas
            return None
        usable = [(v != active, d) for d in entry.get("deltas") or [] if isinstance(d, dict)
                  for v in versions if self.store.holds(name, v, str(d.get("base_sha256")))]
        return min(usable, key=lambda pair: pair[0])[1] if usable else None

    @staticmethod
    def _clean(result: Dict[str, Any], local: Dict[str, str]) -> Dict[str, Any]:
        """The update went through: its downloads go."""
        for path in local.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return result

    def _load_state(self) -> Dict[str, Any]:
        try:
            with open(self.state_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: Dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        write_atomic(self.state_path, json.dumps(state, sort_keys=True).encode(), 0o640)
