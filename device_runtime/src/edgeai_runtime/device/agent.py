"""The device's pull agent: it fetches its signed update document from the registry (layout:
edgeai_runtime.format.updates) and installs what it says through the OTA installer.

The agent fetches ``updates/<its key id>.json`` over HTTPS (certificate verified), checks the
signature against the device's trusted signers and that ``sequence`` never goes back (no replay of
an old document), downloads what it lacks with resume (HTTP Range) into ``<root>/cache/downloads``,
checks each file's sha256, and installs through the same OTA installer as push mode. When the
device holds the base of one of the entry's deltas (edgeai_runtime.format.delta), it fetches that delta
instead of the artifact; a delta that does not give the artifact changes nothing, and the agent
then fetches the artifact. An entry with a ``rollout`` block (a staged rollout's wave) is followed by
edgeai_runtime.device.pull_rollout: marks, the install, the soak, a rollback, and one ``rollout`` record.
"""
from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from cryptography.exceptions import InvalidSignature

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.format.artifact import sha256_file
from edgeai_runtime.format.updates import DOC_FORMAT, DOC_VERSION, RolloutBlockError, check_rollout
from edgeai_runtime.fsutil import exclusive_lock, write_atomic
from edgeai_runtime.device.client import ServiceClient
from edgeai_runtime.device.ota import Policy, UpdateFailed, Updater
from edgeai_runtime.device.plan import PlanRefused, Want, plan
from edgeai_runtime.device.pull_rollout import Follower
from edgeai_runtime.device.store import StoreError

BLOCK = 1 << 20


class RegistryError(EdgeAIError, RuntimeError):
    """A registry or download failure; ``reason`` is one of tls, http, network, signature, replay,
    checksum, format."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason)


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
                    data: bytes = response.read(limit + 1)
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
    def _open(self, path: str, byte_range: Optional[str]) -> Iterator[Any]:
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
    model in it to its version through the OTA installer (mode ``pull``), following the rollout of
    those entries that carry one. One run at a time (``state/agent.lock``)."""

    def __init__(self, config: Any, downloader: Downloader, policy: Optional[Policy] = None) -> None:
        self.config = config
        self.downloader = downloader
        self.updater = Updater(config)
        self.store = self.updater.store
        self.policy = policy or Policy()
        self.state_path = os.path.join(config.root, "state", "agent.json")
        self.downloads = os.path.join(config.root, "cache", "downloads")
        self.follower = Follower(self.updater, ServiceClient(config, timeout=60), self._bring)

    def run_once(self) -> Dict[str, Any]:
        """One poll. Each model's result says what happened to it; an entry with a rollout block has
        ``rollout`` (edgeai_runtime.device.pull_rollout.Follower.follow)."""
        lock = os.path.join(os.path.dirname(self.state_path), "agent.lock")
        os.makedirs(os.path.dirname(lock), exist_ok=True)
        with exclusive_lock(lock, wait=False) as held:
            if not held:
                raise StoreError("another agent run is in progress on this device (%s is locked)" % lock,
                                 reason="update_in_progress")
            return self._run_once()

    def _run_once(self) -> Dict[str, Any]:
        device = self.store.keyring.current_id()
        if device is None:
            raise RegistryError("format", "this device has no key pair yet (edgeai-runtime keys ensure)")
        doc = self._document(device)
        results = []
        for entry in doc["models"]:
            results.append(self.follower.follow(entry) if entry.get("rollout") is not None else self._bring(entry))
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
            doc: Dict[str, Any] = json.loads(body)
        except ValueError:
            raise RegistryError("format", "%s is not JSON" % self.downloader.url(path)) from None
        if doc.get("format") != DOC_FORMAT or doc.get("format_version") != DOC_VERSION or doc.get("device") != device \
                or not isinstance(doc.get("sequence"), int) or not isinstance(doc.get("models"), list):
            raise RegistryError("format", "%s is not an update document for device %s"
                                % (self.downloader.url(path), device))
        for index, entry in enumerate(doc["models"]):
            self._check_entry(path, device, index, entry)
        last = self._load_state().get("sequence", -1)
        if doc["sequence"] < last:
            raise RegistryError("replay", "%s has sequence %d, older than the %d already applied (a replayed "
                                "document)" % (self.downloader.url(path), doc["sequence"], last))
        return doc

    def _check_entry(self, path: str, device: str, index: int, entry: Any) -> None:
        """Refuse, before anything is installed, an entry whose rollout block does not check."""
        if not isinstance(entry, dict) or entry.get("rollout") is None:
            return
        try:
            check_rollout(entry["rollout"], str(entry.get("name")), str(entry.get("version")))
        except RolloutBlockError as exc:
            raise RegistryError("format", "%s, the update document for device %s: models[%d] (%s %s): %s"
                                % (self.downloader.url(path), device, index, entry.get("name"),
                                   entry.get("version"), exc)) from None

    def _bring(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        name, version = entry["name"], entry["version"]
        try:  # the one rule of "anything to do" (edgeai_runtime.device.plan); older documents carry no model sha256
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
            delta = self._usable_delta(name, entry)
            local["artifact"] = os.path.join(self.downloads, entry["artifact"]["sha256"] + ".eaf")
            get_delta: Optional[Callable[[], str]] = None
            if delta is not None:
                local["delta"] = os.path.join(self.downloads, delta["sha256"] + ".eafd")

                def get_delta() -> str:  # a download that fails falls back to the artifact, like a bad delta
                    return fetch(delta, local["delta"])

            def full() -> str:  # downloaded only when there is no delta, or it gives no artifact
                return fetch(entry["artifact"], local["artifact"])

            result = self._clean(self.updater.apply_delta_or_full(get_delta, full, entry["keyslot"], files,
                                                                  policy, "pull", progress=progress), local)
        except RegistryError as exc:
            return {"name": name, "version": version, "changed": False, "failed": True, "outcome": "not_downloaded",
                    "reason": exc.reason, "msg": "%s %s: %s" % (name, version, exc), "bytes_transferred": received[0]}
        except UpdateFailed as exc:
            return dict(exc.result, failed=True, msg=str(exc))
        except Exception as exc:  # a store refusal before the transaction: report it, go on with the others
            return {"name": name, "version": version, "changed": False, "failed": True, "outcome": "refused",
                    "msg": "%s %s: %s" % (name, version, exc), "bytes_transferred": received[0],
                    **({"reason_code": exc.reason} if isinstance(exc, EdgeAIError) else {})}
        return result

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
                state: Dict[str, Any] = json.load(f)
                return state
        except (OSError, ValueError):
            return {}

    def _save_state(self, state: Dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
        write_atomic(self.state_path, json.dumps(state, sort_keys=True).encode(), 0o640)
