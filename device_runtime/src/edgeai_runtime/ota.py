"""Over-the-air model updates: one transaction per update, used alike by push (Ansible) and pull
(the device agent). An update ends either with the new version serving and verified, or with the
previous version serving and the reason recorded. Nothing in between.

Phases, each timed:

1. ``stage``     the artifact reaches the device (transfer or download: timed by the caller);
2. ``verify``    signature, hardware class, runtime version, key slot, every chunk, both digests,
                 gate files; then the artifact is stored (encrypted), not yet active;
3. ``load``      the service loads it beside the serving version (blue-green's green);
4. ``gate``      readiness (warm-up), golden samples, accuracy >= the manifest's threshold,
                 p95 one-row latency <= the budget;
5. ``activate``  the service switches; the new version must answer a probe inference;
6. ``watch``     for ``watch_s``: the service must not restart, must keep serving the new
                 version, stay ready, answer probes, and keep its backend error rate under the limit;
7. ``commit``    the transaction is done; the history row says ``committed``.

Any failure restores the pointers as they were, has the service serve the previous version
again (at once: it is still loaded), verifies that it answers, and records why.

Crash safety: a journal (``state/ota.json``, written atomically at each phase) describes the
transaction in flight, and a lock (``state/ota.lock``) allows one at a time. Whoever takes the
lock next (the next update, ``edgeai-runtime ota recover``, the agent, the service at start)
finds a journal left by a killed installer and rolls that transaction back the same way.

History: every transaction is a row in ``state/history.sqlite`` (version, previous version, time,
outcome, duration, phase reached, reason, bytes, per-phase timings), exposed as facts.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from .client import ServiceClient, ServiceDown, ServiceError
from .config import RuntimeConfig
from .keys import write_atomic
from .artifact import read_header as artifact_header
from .store import ModelStore, StoreError, open_store

PHASES = ("stage", "verify", "load", "gate", "activate", "watch", "commit")
#: Phases after which the service may be serving the new version: a failure there needs a switch back.
SWITCHED = ("activate", "watch", "commit")


class UpdateFailed(RuntimeError):
    """The update did not go through; the previous state is back. ``str()`` says phase and cause."""

    def __init__(self, message: str, result: Dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


class DeltaFailed(RuntimeError):
    """A delta could not be turned into its artifact; nothing on the device changed. Whoever has the
    full artifact (or can fetch it) installs that instead."""

    def __init__(self, message: str, reason: str, result: Dict[str, Any]) -> None:
        super().__init__(message)
        self.reason = reason
        self.result = result


@dataclass(frozen=True)
class Policy:
    """How an update is judged. ``latency_p95_ms`` overrides the manifest's budget."""
    watch_s: float = 10.0
    interval_s: float = 1.0
    max_error_rate: float = 0.05
    min_requests: int = 20        # the error rate is judged once the window has seen this many requests
    latency_p95_ms: Optional[float] = None
    force: bool = False

    def check(self) -> "Policy":
        if self.watch_s < 0 or self.interval_s <= 0 or not 0 <= self.max_error_rate <= 1 or self.min_requests < 1:
            raise ValueError("watch_s >= 0, interval_s > 0, max_error_rate in [0, 1] and min_requests >= 1 are required")
        if self.latency_p95_ms is not None and self.latency_p95_ms <= 0:
            raise ValueError("latency_p95_ms must be positive")
        return self


# -- history ---------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments (
    txid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    from_version TEXT,
    mode TEXT NOT NULL,
    started REAL NOT NULL,
    finished REAL,
    duration_s REAL,
    outcome TEXT NOT NULL,
    phase TEXT,
    reason TEXT,
    bytes_transferred INTEGER NOT NULL DEFAULT 0,
    bytes_saved INTEGER NOT NULL DEFAULT 0,
    timings TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS deployments_by_name ON deployments (name, started);
"""


class History:
    """The device's deployment history, in SQLite. Outcomes: ``in_progress``, ``committed``,
    ``refused`` (failed before the switch: nothing changed), ``rolled_back`` (failed after it: the
    previous version serves again), ``interrupted`` (the installer died; recovery rolled back),
    ``manual_rollback`` (an operator's rollback)."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            with db:
                yield db
        finally:
            db.close()

    def begin(self, txid: str, name: str, version: str, from_version: Optional[str], mode: str,
              started: float) -> None:
        with self._db() as db:
            db.execute("INSERT INTO deployments (txid, name, version, from_version, mode, started, outcome)"
                       " VALUES (?, ?, ?, ?, ?, ?, 'in_progress')", (txid, name, version, from_version, mode, started))

    def finish(self, txid: str, outcome: str, phase: Optional[str], reason: Optional[str],
               timings: Mapping[str, float], bytes_transferred: int = 0, bytes_saved: int = 0) -> bool:
        """Close a row; False when there is no row ``txid``."""
        now = time.time()
        with self._db() as db:
            done = db.execute("UPDATE deployments SET finished = ?, duration_s = round(? - started, 4), outcome = ?,"
                              " phase = ?, reason = ?, timings = ?, bytes_transferred = ?, bytes_saved = ?"
                              " WHERE txid = ?", (now, now, outcome, phase, reason,
                                                  json.dumps(dict(timings), sort_keys=True), bytes_transferred,
                                                  bytes_saved, txid))
            return done.rowcount == 1

    def sweep(self, reason: str) -> int:
        """Close rows left ``in_progress`` by an installer that died (call with the OTA lock held)."""
        if not os.path.exists(self.path):
            return 0
        now = time.time()
        with self._db() as db:
            return db.execute("UPDATE deployments SET finished = ?, duration_s = round(? - started, 4),"
                              " outcome = 'interrupted', reason = ? WHERE outcome = 'in_progress'",
                              (now, now, reason)).rowcount

    def record(self, name: str, version: str, from_version: Optional[str], mode: str, outcome: str,
               reason: Optional[str], timings: Mapping[str, float]) -> str:
        """One finished row at once (manual rollbacks)."""
        txid = uuid.uuid4().hex
        self.begin(txid, name, version, from_version, mode, time.time() - sum(timings.values()))
        self.finish(txid, outcome, None, reason, timings)
        return txid

    def rows(self, name: Optional[str] = None, limit: int = 20) -> List[Dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with self._db() as db:
            db.row_factory = sqlite3.Row
            query = "SELECT * FROM deployments %s ORDER BY started DESC, rowid DESC LIMIT ?" % (
                "WHERE name = ?" if name else "")
            found = db.execute(query, ((name, limit) if name else (limit,))).fetchall()
        rows = []
        for row in found:
            item = dict(row)
            item["timings"] = json.loads(item["timings"] or "{}")
            rows.append(item)
        return rows


# -- the transaction -------------------------------------------------------------------------

@dataclass
class _Tx:
    txid: str
    name: str
    version: str
    from_version: Optional[str]
    from_previous: Optional[str]
    had_version: bool
    mode: str
    started: float
    phase: str = "stage"
    timings: Dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return {"txid": self.txid, "name": self.name, "version": self.version, "from_version": self.from_version,
                "from_previous": self.from_previous, "had_version": self.had_version, "mode": self.mode,
                "started": self.started, "phase": self.phase, "timings": self.timings, "pid": os.getpid()}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "_Tx":
        return cls(data["txid"], data["name"], data["version"], data.get("from_version"), data.get("from_previous"),
                   bool(data.get("had_version")), data.get("mode", "push"), float(data.get("started", 0)),
                   data.get("phase", "stage"), dict(data.get("timings") or {}))


class Updater:
    """Runs update transactions against the store and, when it is up, the running service."""

    def __init__(self, config: RuntimeConfig, store: Optional[ModelStore] = None,
                 client: Optional[ServiceClient] = None, restart_grace_s: float = 60.0) -> None:
        self.config = config
        #: How long to wait for a service that was up and stopped answering (its supervisor restarting it).
        self.restart_grace_s = restart_grace_s
        self._expect_service = False
        self.store = store or open_store(config)
        self.client = client or ServiceClient(config)
        self.state_dir = os.path.join(config.root, "state")
        self.history = History(os.path.join(self.state_dir, "history.sqlite"))
        self.journal_path = os.path.join(self.state_dir, "ota.json")

    # -- entry points ----------------------------------------------------------------------

    def apply(self, artifact: str, keyslot: Dict[str, Any], files: Optional[Mapping[str, bytes]] = None,
              policy: Policy = Policy(), mode: str = "push", stage_s: float = 0.0, bytes_transferred: int = 0,
              bytes_saved: int = 0) -> Dict[str, Any]:
        """Install ``artifact`` and make it the serving version, through every phase. Returns the
        result (``changed``, versions, ``timings``); raises UpdateFailed with the previous state back."""
        policy.check()
        with self._lock():
            recovered = self._recover()
            try:
                art = self.store.open_artifact(artifact)  # format, length, signature, class, runtime version
            except StoreError as exc:
                raise self._refused_on_arrival(artifact, exc, mode, stage_s, bytes_transferred, recovered) from None
            name, version = art.manifest.name, art.manifest.version
            active = self.store.active(name)
            result: Dict[str, Any] = {"name": name, "version": version, "previous_version": active,
                                      "active_version": active, "bytes_transferred": bytes_transferred,
                                      "bytes_saved": bytes_saved, "recovered": recovered}
            if active == version and self._serving_ok(name, version) and \
                    self.store.manifest(name, version).sha256 == art.manifest.sha256:
                return dict(result, changed=False, outcome="unchanged", timings={"stage": round(stage_s, 4)})
            tx = _Tx(uuid.uuid4().hex, name, version, active, self.store.pointer(name, "previous"),
                     version in self.store.versions(name), mode, time.time(), timings={"stage": round(stage_s, 4)})
            self._journal(tx, "verify")  # the journal first: recovery finds any transaction that left a trace
            self.history.begin(tx.txid, name, version, active, mode, tx.started - stage_s)
            try:
                self._run(tx, art, artifact, keyslot, files, policy)
            except Exception as exc:  # every failure ends in the previous state, with the reason recorded
                reason = "%s: %s" % (tx.phase, _describe(exc))
                try:
                    outcome = self._undo(tx)
                except Exception as undo_exc:  # say so loudly; the next run starts from a clean journal
                    outcome = "rollback_failed"
                    reason = "%s; putting %s back failed: %s" % (reason, tx.from_version, _describe(undo_exc))
                self.history.finish(tx.txid, outcome, tx.phase, reason, tx.timings, bytes_transferred, bytes_saved)
                self._clear_journal()
                # The device is as it was (changed: false), unless even that failed.
                result.update(changed=outcome == "rollback_failed", outcome=outcome, phase=tx.phase, reason=reason,
                              timings=tx.timings, txid=tx.txid, active_version=self.store.active(name))
                raise UpdateFailed("update of %s to %s %s" % (name, version, _undo_words(outcome, reason, tx)),
                                   result) from None
            self._journal(tx, "commit")
            started = time.monotonic()
            self.history.finish(tx.txid, "committed", "commit", None, tx.timings, bytes_transferred, bytes_saved)
            self._clear_journal()
            tx.timings["commit"] = round(time.monotonic() - started, 4)
            return dict(result, changed=True, outcome="committed", active_version=version, timings=tx.timings,
                        txid=tx.txid)

    def apply_delta(self, delta: str, keyslot: Dict[str, Any], files: Optional[Mapping[str, bytes]] = None,
                    policy: Policy = Policy(), mode: str = "push", stage_s: float = 0.0,
                    bytes_transferred: int = 0) -> Dict[str, Any]:
        """``apply`` for a delta against a version this device holds (edgeai_runtime.delta): the
        artifact is rebuilt (timed as part of ``stage``), checked against its signed digests and
        installed like a full one. Raises DeltaFailed, with nothing changed, when the delta does not
        give its artifact (the caller then sends or fetches the full one)."""
        policy.check()
        cache = os.path.join(self.config.root, "cache")
        os.makedirs(cache, exist_ok=True)
        rebuilt = os.path.join(cache, "rebuilt-%d.eaf" % os.getpid())
        started = time.monotonic()
        try:
            try:
                info = self.store.rebuild_delta(delta, keyslot, rebuilt)
            except Exception as exc:  # noqa: BLE001 - nothing has changed yet: every failure means "send the artifact"
                reason = getattr(exc, "reason", None) or "delta_failed"
                raise DeltaFailed("the delta %s gives no artifact (%s): %s" % (os.path.basename(delta), reason, exc),
                                  reason, {"changed": False, "outcome": "delta_failed", "delta_reason": reason,
                                           "bytes_transferred": bytes_transferred}) from None
            rebuild_s = round(time.monotonic() - started, 4)
            used = dict(info, used=True, rebuild_s=rebuild_s)
            try:
                result = self.apply(rebuilt, keyslot, files, policy, mode, stage_s + rebuild_s, bytes_transferred,
                                    bytes_saved=info["bytes_saved"])
            except UpdateFailed as exc:
                exc.result["delta"] = used
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(rebuilt)
        return dict(result, delta=used)

    def _refused_on_arrival(self, artifact: str, exc: Exception, mode: str, stage_s: float, bytes_transferred: int,
                            recovered: List[Dict[str, Any]]) -> UpdateFailed:
        """The artifact failed before it could be trusted at all: record it under the name and
        version its (unverified) header claims, for the operator; nothing on the device changed."""
        try:
            claimed = artifact_header(artifact).get("manifest") or {}
        except Exception:  # unreadable: the file name is all there is
            claimed = {}
        name = str(claimed.get("name") or os.path.basename(artifact))
        version = str(claimed.get("version") or "unknown")
        reason = "stage: %s" % exc
        timings = {"stage": round(stage_s, 4)}
        txid = uuid.uuid4().hex
        self.history.begin(txid, name, version, self.store.active(name) if claimed else None, mode,
                           time.time() - stage_s)
        self.history.finish(txid, "refused", "stage", reason, timings, bytes_transferred)
        active = self.store.active(name) if claimed else None
        result = {"changed": False, "name": name, "version": version, "previous_version": active,
                  "active_version": active, "outcome": "refused", "phase": "stage", "reason": reason,
                  "timings": timings, "txid": txid, "bytes_transferred": bytes_transferred, "recovered": recovered}
        return UpdateFailed("update of %s to %s %s" % (name, version, _undo_words("refused", reason, None, active)),
                            result)

    def apply_installed(self, name: str, version: str, policy: Policy = Policy(), mode: str = "push") -> Dict[str, Any]:
        """``apply`` for a version the store already holds (installed earlier, e.g. with state=present):
        its own artifact, key slot and gate files."""
        if not self.store.is_artifact(name, version):
            raise StoreError("%s %s is not installed as a signed artifact on this device; send it first"
                             % (name, version))
        manifest = self.store.manifest(name, version)
        files = {}
        for fname in manifest.files:
            with open(self.store.file_path(name, version, fname), "rb") as f:
                files[fname] = f.read()
        return self.apply(self.store.file_path(name, version, "model.eaf"), self.store.keyslot(name, version), files,
                          policy, mode=mode)

    def rollback(self, name: str, version: Optional[str] = None, reason: Optional[str] = None) -> Dict[str, Any]:
        """Serve ``version`` (else the previous one) again, verify that it serves, and record why."""
        with self._lock():
            recovered = self._recover()
            active = self.store.active(name)
            target = version or self.store.pointer(name, "previous")
            if target is None:
                raise StoreError("rolling back %s: no previous version is kept" % name)
            if target not in self.store.versions(name):
                raise StoreError("rolling back %s to %s: that version is not kept (kept: %s)"
                                 % (name, target, ", ".join(self.store.versions(name)) or "none"))
            base = {"name": name, "version": target, "previous_version": active, "recovered": recovered}
            if active == target and self._serving_ok(name, target):
                return dict(base, changed=False, active_version=target, timings={})
            started = time.monotonic()
            self._switch_to(name, target)
            self._verify_serves(name, target)
            timings = {"rollback": round(time.monotonic() - started, 4)}
            self.history.record(name, target, active, "manual", "manual_rollback",
                                reason or "operator rollback from %s" % active, timings)
            return dict(base, changed=True, active_version=target, timings=timings)

    def recover(self) -> List[Dict[str, Any]]:
        """Roll back a transaction a killed installer left behind. Returns what was done."""
        with self._lock():
            return self._recover()

    # -- phases ----------------------------------------------------------------------------

    def _run(self, tx: _Tx, art: Any, artifact: str, keyslot: Dict[str, Any],
             files: Optional[Mapping[str, bytes]], policy: Policy) -> None:
        with self._phase(tx, "verify"):
            self.store.install_artifact(artifact, keyslot, files, force=policy.force)
        service = self._expect_service = self.client.up()
        body = {"version": tx.version, "latency_p95_ms": policy.latency_p95_ms}
        self._journal(tx, "load")
        if service:
            try:
                prepared = self.client.call("POST", "/v2/admin/models/%s/prepare" % tx.name, body)
            except ServiceError as exc:
                tx.phase = exc.data.get("phase") or "load"
                raise
            tx.timings["load"] = prepared.get("load_s", 0.0)
            tx.timings["gate"] = prepared.get("gate_s", 0.0)
        else:
            from .gate import GateFailed
            from .serving import ModelManager  # no service: load and gate here, then only move the pointer
            manager = ModelManager(self.store, self.config)
            try:
                model = manager.load(tx.name, tx.version, policy.latency_p95_ms)
                tx.timings["load"], tx.timings["gate"] = round(model.load_seconds, 4), round(model.gate_seconds, 4)
                model.close_when_idle(0)
            except GateFailed:
                tx.phase = "gate"
                raise
            finally:
                manager.close()
        self._journal(tx, "activate")
        with self._phase(tx, "activate"):
            if service:
                identity = self._identity()
                self.client.call("POST", "/v2/admin/models/%s/activate" % tx.name, body)
                self._verify_serves(tx.name, tx.version)
            else:
                self.store.activate(tx.name, tx.version)
        self._journal(tx, "watch")
        with self._phase(tx, "watch"):
            if service and policy.watch_s > 0:
                self._watch(tx, policy, identity)

    def _watch(self, tx: _Tx, policy: Policy, identity: Dict[str, Any]) -> None:
        """Watch the new version for ``policy.watch_s``; raise at the first sign of trouble. A service
        that stops answering gets ``restart_grace_s`` to come back, and then counts as restarted."""
        base: Optional[Tuple[float, float]] = None
        deadline = time.monotonic() + policy.watch_s
        while True:
            try:
                if base is None:
                    base = self.client.counts(tx.name, tx.version)
                self._watch_once(tx, policy, identity, base)
            except ServiceDown:
                if not self.client.wait_up(self.restart_grace_s):
                    raise RuntimeError("the inference service stopped answering during the watch window and did "
                                       "not come back within %.0f s" % self.restart_grace_s) from None
                continue  # the next round sees the restart
            if time.monotonic() >= deadline:
                return
            time.sleep(min(policy.interval_s, max(deadline - time.monotonic(), 0.0)))

    def _watch_once(self, tx: _Tx, policy: Policy, identity: Dict[str, Any], base: Tuple[float, float]) -> None:
        now = self._identity()
        if now != identity:
            raise RuntimeError("the inference service restarted during the watch window (pid %s started at %s, now "
                               "pid %s started at %s)"
                               % (identity.get("pid"), identity.get("started"), now.get("pid"), now.get("started")))
        serving = self.client.serving(tx.name)
        if serving != tx.version:
            raise RuntimeError("the service serves %s %s, not %s" % (tx.name, serving, tx.version))
        if not self.client.ready(tx.name, tx.version):
            raise RuntimeError("%s %s is not ready" % (tx.name, tx.version))
        self._probe(tx.name, tx.version)
        answered, errors = self.client.counts(tx.name, tx.version)
        seen, failed = answered - base[0] + errors - base[1], errors - base[1]
        if seen >= policy.min_requests and failed / seen > policy.max_error_rate:
            raise RuntimeError("error rate %.3f (%d of %d requests failed in the backend) is over %.3f"
                               % (failed / seen, failed, seen, policy.max_error_rate))

    # -- undo ------------------------------------------------------------------------------

    def _undo(self, tx: _Tx) -> str:
        """Put the device back as it was before ``tx``; the outcome for the history."""
        switched = tx.phase in SWITCHED
        if tx.from_version is not None:
            self._switch_to(tx.name, tx.from_version)
        self.store.restore_pointers(tx.name, tx.from_version, tx.from_previous)
        self._discard(tx)
        if tx.from_version is not None and switched:
            self._verify_serves(tx.name, tx.from_version)
        return "rolled_back" if switched else "refused"

    def _discard(self, tx: _Tx) -> None:
        """Unload the failed version and, when this transaction installed it, remove it from the store."""
        if self.client.up():
            with contextlib.suppress(ServiceError):
                self.client.call("POST", "/v2/admin/models/%s/discard" % tx.name, {"version": tx.version})
        if not tx.had_version and tx.version in self.store.versions(tx.name) and \
                self.store.active(tx.name) != tx.version:
            self.store.remove(tx.name, tx.version)

    def _service_up(self) -> bool:
        """Is the service there? One that was up for this transaction gets time to come back from a restart."""
        return self.client.wait_up(self.restart_grace_s) if self._expect_service else self.client.up()

    def _switch_to(self, name: str, version: str) -> None:
        if self._service_up():
            self.client.call("POST", "/v2/admin/models/%s/activate" % name, {"version": version})
        else:
            self.store.activate(name, version)

    def _verify_serves(self, name: str, version: str) -> None:
        """The service must serve ``version``, report it ready and answer a probe inference.
        With no service running, the version must load and pass its gate here."""
        if not self._service_up():
            from .serving import ModelManager
            manager = ModelManager(self.store, self.config)
            try:
                manager.load(name, version).close_when_idle(0)
            finally:
                manager.close()
            return
        serving = self.client.serving(name)
        if serving != version:
            raise RuntimeError("the service serves %s %s, not %s" % (name, serving, version))
        if not self.client.ready(name, version):
            raise RuntimeError("%s %s is not ready" % (name, version))
        self._probe(name, version)

    def _serving_ok(self, name: str, version: str) -> bool:
        """Is ``version`` in place? With the service up it must serve it and answer; with none
        running, the store's pointer is what the service will serve when it starts."""
        if not self.client.up():
            return self.store.active(name) == version
        try:
            self._verify_serves(name, version)
            return True
        except Exception:  # anything wrong means "not in the wanted state": the caller acts
            return False

    def _probe(self, name: str, version: str) -> None:
        """One inference of zeros shaped like the manifest's inputs, through the HTTP API."""
        manifest = self.store.manifest(name, version)
        inputs = {}
        for tensor in manifest.inputs:
            shape = [1 if d < 0 else d for d in tensor.shape]
            count = 1
            for d in shape:
                count *= d
            inputs[tensor.name] = (tensor.datatype, shape, [False if tensor.datatype == "BOOL" else 0] * count)
        try:
            answer = self.client.infer(name, version, inputs)
        except ServiceError as exc:
            raise RuntimeError("a probe inference on %s %s failed: %s" % (name, version, exc)) from None
        if not answer.get("outputs"):
            raise RuntimeError("a probe inference on %s %s returned no outputs" % (name, version))

    def _identity(self) -> Dict[str, Any]:
        return dict(self.client.status().get("process") or {})

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> List[Dict[str, Any]]:
        self.store.recover()
        self._sweep_rebuilt()
        data = self._read_journal()
        if data is None:
            self.history.sweep("interrupted before its journal was written; nothing was changed")
            return []
        tx = _Tx.from_dict(data)
        reason = "interrupted in phase %s (installer pid %s died); recovered by pid %d" % (
            tx.phase, data.get("pid"), os.getpid())
        if tx.phase == "commit":  # it had passed every check; only the bookkeeping was left
            self.history.finish(tx.txid, "committed", "commit", None, tx.timings)
            self._clear_journal()
            return [{"txid": tx.txid, "name": tx.name, "version": tx.version, "outcome": "committed"}]
        outcome = self._undo(tx)
        if not self.history.finish(tx.txid, "interrupted", tx.phase, "%s; %s" % (reason, outcome.replace("_", " ")),
                                   tx.timings):  # killed between the journal and the history row
            self.history.begin(tx.txid, tx.name, tx.version, tx.from_version, tx.mode, tx.started)
            self.history.finish(tx.txid, "interrupted", tx.phase, "%s; %s" % (reason, outcome.replace("_", " ")),
                                tx.timings)
        self._clear_journal()
        self.history.sweep("interrupted; recovered with transaction %s" % tx.txid)
        return [{"txid": tx.txid, "name": tx.name, "version": tx.version, "outcome": "interrupted",
                 "undo": outcome, "restored": tx.from_version}]

    def _sweep_rebuilt(self) -> None:
        """Remove artifacts rebuilt from deltas by installers that died (``cache/rebuilt-<pid>``)."""
        cache = os.path.join(self.config.root, "cache")
        try:
            entries = os.listdir(cache)
        except OSError:
            return
        for entry in entries:
            pid = entry[len("rebuilt-"):].split(".", 1)[0]
            if not (entry.startswith("rebuilt-") and pid.isdigit()) or int(pid) == os.getpid():
                continue
            try:
                os.kill(int(pid), 0)
                continue  # alive: still rebuilding
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(cache, entry))

    # -- journal and lock ------------------------------------------------------------------

    @contextlib.contextmanager
    def _phase(self, tx: _Tx, phase: str) -> Iterator[None]:
        tx.phase = phase
        started = time.monotonic()
        try:
            yield
        finally:
            tx.timings[phase] = round(time.monotonic() - started, 4)

    def _journal(self, tx: _Tx, phase: str) -> None:
        tx.phase = phase
        os.makedirs(self.state_dir, exist_ok=True)
        write_atomic(self.journal_path, json.dumps(tx.to_dict(), sort_keys=True).encode(), 0o640)

    def _read_journal(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.journal_path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:  # write_atomic renames a complete file into place, so this is not ours to read
            raise StoreError("the OTA journal %s is unreadable; inspect it and remove it" % self.journal_path) from None

    def _clear_journal(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        os.makedirs(self.state_dir, exist_ok=True)
        fd = os.open(os.path.join(self.state_dir, "ota.lock"), os.O_RDWR | os.O_CREAT, 0o640)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise StoreError("another model update is running on this device (%s is locked)"
                                     % os.path.join(self.state_dir, "ota.lock")) from None
                raise
            yield
        finally:
            os.close(fd)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ServiceDown):
        return str(exc)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device (%s)" % (exc.filename or "store")
    return str(exc) or type(exc).__name__


def _undo_words(outcome: str, reason: str, tx: Optional[_Tx], active: Optional[str] = None) -> str:
    previous = tx.from_version if tx is not None else active
    if outcome == "rollback_failed":
        return "failed, and so did putting the previous state back: %s" % reason
    if outcome == "rolled_back":
        return "was rolled back to %s: %s" % (previous, reason)
    return "was refused; %s: %s" % ("%s still serves" % previous if previous else "nothing changed", reason)
