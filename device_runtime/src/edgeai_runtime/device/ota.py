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
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime import fsutil
from edgeai_runtime.device.client import ServiceClient, ServiceDown, ServiceError
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.fsutil import write_atomic
from edgeai_runtime.device.plan import PlanRefused, Want, plan
from edgeai_runtime.format.artifact import read_header as artifact_header
from edgeai_runtime.device.store import DiskFull, ModelStore, StoreError, open_store

PHASES = ("stage", "verify", "load", "gate", "activate", "watch", "commit")
#: Phases after which the service may be serving the new version: a failure there needs a switch back.
SWITCHED = ("activate", "watch", "commit")
#: Room one transaction's bookkeeping takes on the state filesystem, at most: the journal (written
#: atomically, so two copies at a time) and the history row (SQLite's rollback journal, a new page).
BOOKKEEPING_BYTES = 64 * 1024
#: Below this much free space a failing SQLite write is taken for a full disk.
_HISTORY_ROOM = 32 * 1024


class UpdateFailed(EdgeAIError, RuntimeError):
    """The update did not go through; the previous state is back. ``str()`` says phase and cause;
    ``result`` what happened (its ``reason_code`` is the cause's code, where it has one)."""

    default_reason = "update_failed"

    def __init__(self, message: str, result: Dict[str, Any]) -> None:
        super().__init__(message, result=result)


class DeltaFailed(EdgeAIError, RuntimeError):
    """A delta could not be turned into its artifact; nothing on the device changed. Whoever has the
    full artifact (or can fetch it) installs that instead."""

    def __init__(self, message: str, reason: str, result: Dict[str, Any]) -> None:
        super().__init__(message, reason, result)


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
            raise ValueError("watch_s >= 0, interval_s > 0, max_error_rate in [0, 1] and min_requests >= 1 "
                             "are required")
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


class HistoryError(EdgeAIError, RuntimeError):
    """The deployment history could not be read or written (a full disk is a DiskFull instead)."""

    default_reason = "history_failed"


class History:
    """The device's deployment history, in SQLite. Outcomes: ``in_progress``, ``committed``,
    ``refused`` (failed before the switch: nothing changed), ``rolled_back`` (failed after it: the
    previous version serves again), ``interrupted`` (the installer died; recovery rolled back),
    ``manual_rollback`` (an operator's rollback).

    The database uses SQLite's rollback journal, not WAL: a WAL reader creates a ``-shm`` file, so
    on a full disk even reading failed ("disk I/O error"); here reading needs no space, and a write
    that finds no room is raised as a DiskFull naming the filesystem. Any other SQLite failure is a
    HistoryError naming the database."""

    def __init__(self, path: str) -> None:
        self.path = path

    @contextlib.contextmanager
    def _db(self, doing: str) -> Iterator[sqlite3.Connection]:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30)
        except (OSError, sqlite3.Error) as exc:
            raise self._failed(exc, doing) from None
        try:
            if db.execute("PRAGMA journal_mode").fetchone()[0] != "delete":
                db.execute("PRAGMA journal_mode=DELETE")  # a database an older runtime made in WAL mode
            db.execute("PRAGMA synchronous=FULL")
            if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'deployments'").fetchone()[0] == 0:
                db.executescript(_SCHEMA)
            with db:
                yield db
        except (OSError, sqlite3.Error) as exc:
            raise self._failed(exc, doing) from None
        finally:
            db.close()

    def _failed(self, exc: BaseException, doing: str) -> Exception:
        full = DiskFull.from_error(exc, doing, self.path)
        if full is not None:
            return full
        try:
            free = fsutil.space(self.path)[0]
        except OSError:
            free = _HISTORY_ROOM
        if free < _HISTORY_ROOM:  # SQLite says "database or disk is full" or "disk I/O error"
            return DiskFull(self.path, doing, detail="sqlite: %s" % exc)
        return HistoryError("%s (%s): %s" % (doing, self.path, exc))

    def begin(self, txid: str, name: str, version: str, from_version: Optional[str], mode: str,
              started: float) -> None:
        fsutil.write_point("history: begin")
        with self._db("recording a deployment in the history") as db:
            db.execute("INSERT INTO deployments (txid, name, version, from_version, mode, started, outcome)"
                       " VALUES (?, ?, ?, ?, ?, ?, 'in_progress')", (txid, name, version, from_version, mode, started))

    def finish(self, txid: str, outcome: str, phase: Optional[str], reason: Optional[str],
               timings: Mapping[str, float], bytes_transferred: int = 0, bytes_saved: int = 0,
               row: Optional[Tuple[str, str, Optional[str], str, float]] = None) -> bool:
        """Close a row. With ``row`` (name, version, from_version, mode, started), a row that is
        missing (its ``begin`` never happened) is written whole. False when there is no row ``txid``."""
        now = time.time()
        fsutil.write_point("history: finish (%s)" % outcome)
        with self._db("recording the outcome %s in the history" % outcome) as db:
            values = (outcome, phase, reason, json.dumps(dict(timings), sort_keys=True), bytes_transferred,
                      bytes_saved)
            done = db.execute("UPDATE deployments SET finished = ?, duration_s = round(? - started, 4), outcome = ?,"
                              " phase = ?, reason = ?, timings = ?, bytes_transferred = ?, bytes_saved = ?"
                              " WHERE txid = ?", (now, now) + values + (txid,))
            if done.rowcount == 1 or row is None:
                return done.rowcount == 1
            db.execute("INSERT INTO deployments (txid, name, version, from_version, mode, started, finished,"
                       " duration_s, outcome, phase, reason, timings, bytes_transferred, bytes_saved)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?, round(? - ?, 4), ?, ?, ?, ?, ?, ?)",
                       (txid,) + tuple(row) + (now, now, row[4]) + values)
            return True

    def sweep(self, reason: str) -> int:
        """Close rows left ``in_progress`` by an installer that died (call with the OTA lock held)."""
        if not os.path.exists(self.path):
            return 0
        now = time.time()
        with self._db("closing interrupted rows of the history") as db:
            if db.execute("SELECT count(*) FROM deployments WHERE outcome = 'in_progress'").fetchone()[0] == 0:
                return 0
            fsutil.write_point("history: sweep")
            return db.execute("UPDATE deployments SET finished = ?, duration_s = round(? - started, 4),"
                              " outcome = 'interrupted', reason = ? WHERE outcome = 'in_progress'",
                              (now, now, reason)).rowcount

    def record(self, name: str, version: str, from_version: Optional[str], mode: str, outcome: str,
               reason: Optional[str], timings: Mapping[str, float], phase: Optional[str] = None,
               bytes_transferred: int = 0) -> str:
        """One finished row at once (manual rollbacks, refusals), in one SQLite transaction."""
        txid = uuid.uuid4().hex
        self.finish(txid, outcome, phase, reason, timings, bytes_transferred,
                    row=(name, version, from_version, mode, time.time() - sum(timings.values())))
        return txid

    def rows(self, name: Optional[str] = None, limit: int = 20) -> List[Dict[str, Any]]:
        if not os.path.exists(self.path):
            return []
        with self._db("reading the history") as db:
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
    bytes_transferred: int = 0
    bytes_saved: int = 0
    #: Set once the transaction has ended (its undo done) but its history row could not be written yet.
    outcome: Optional[str] = None
    reason: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        data = {"txid": self.txid, "name": self.name, "version": self.version, "from_version": self.from_version,
                "from_previous": self.from_previous, "had_version": self.had_version, "mode": self.mode,
                "started": self.started, "phase": self.phase, "timings": self.timings, "pid": os.getpid(),
                "bytes_transferred": self.bytes_transferred, "bytes_saved": self.bytes_saved}
        if self.outcome is not None:
            data.update(outcome=self.outcome, reason=self.reason)
        return data

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "_Tx":
        return cls(data["txid"], data["name"], data["version"], data.get("from_version"), data.get("from_previous"),
                   bool(data.get("had_version")), data.get("mode", "push"), float(data.get("started", 0)),
                   data.get("phase", "stage"), dict(data.get("timings") or {}), int(data.get("bytes_transferred", 0)),
                   int(data.get("bytes_saved", 0)), data.get("outcome"), data.get("reason"))

    def row(self) -> Tuple[str, str, Optional[str], str, float]:
        """What History.finish needs to write the row whole when its ``begin`` never happened."""
        return self.name, self.version, self.from_version, self.mode, self.started


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
        self._reported = 0  # how much of store.swept _recover has reported

    # -- entry points ----------------------------------------------------------------------

    def apply(self, artifact: str, keyslot: Dict[str, Any], files: Optional[Mapping[str, bytes]] = None,
              policy: Policy = Policy(), mode: str = "push", stage_s: float = 0.0, bytes_transferred: int = 0,
              bytes_saved: int = 0) -> Dict[str, Any]:
        """Install ``artifact`` and make it the serving version, through every phase. Returns the
        result (``changed``, versions, ``timings``); raises UpdateFailed with the previous state back.

        The journal's ``commit`` is the commit point. A failure before it puts the previous state
        back; after it the update stands, and a failure of what is left (the history row, removing
        the journal, pruning) is reported in ``bookkeeping_failed`` and ``warnings`` and repaired by
        the next run (the journal stays until the history row is written)."""
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
            try:  # the one rule of "anything to do" (edgeai_runtime.device.plan); the key slot comes with the artifact
                decided = self.plan(Want(name, version, "active", sha256=art.manifest.sha256))
            except PlanRefused as exc:  # another build under this version: refused before anything is written
                raise self._refused_on_arrival(artifact, exc, mode, stage_s, bytes_transferred, recovered) from None
            if not decided["changed"]:
                return dict(result, changed=False, outcome="unchanged", timings={"stage": round(stage_s, 4)})
            tx = _Tx(uuid.uuid4().hex, name, version, active, self.store.pointer(name, "previous"),
                     version in self.store.versions(name), mode, time.time() - stage_s,
                     timings={"stage": round(stage_s, 4)}, bytes_transferred=bytes_transferred,
                     bytes_saved=bytes_saved)
            try:  # nothing is written before the room for all of it is known to be there
                self._check_space(tx, art.manifest, artifact, keyslot, files)
                self._journal(tx, "verify")  # the journal first: recovery finds any transaction that left a trace
            except (OSError, StoreError) as exc:
                tx.phase = "verify"
                raise self._failed(tx, result, exc, undo=False) from None
            try:
                self.history.begin(tx.txid, name, version, active, mode, tx.started)
                self._run(tx, art, artifact, keyslot, files, policy)
                self._journal(tx, "commit")  # the commit point
            except Exception as exc:  # every failure ends in the previous state, with the reason recorded
                raise self._failed(tx, result, exc) from None
            return self._committed(tx, result)

    def _failed(self, tx: _Tx, result: Dict[str, Any], exc: BaseException, undo: bool = True) -> UpdateFailed:
        """Put the device back as it was before ``tx`` (unless nothing was written yet), record why,
        and say what happened."""
        reason = "%s: %s" % (tx.phase, _describe(exc))
        outcome = "refused"
        if undo:
            try:
                outcome = self._undo(tx)
            except Exception as undo_exc:  # say so loudly; the next run starts from a clean journal
                outcome = "rollback_failed"
                reason = "%s; putting %s back failed: %s" % (reason, tx.from_version, _describe(undo_exc))
        warnings = self._record(tx, outcome, reason, journal_written=undo)
        # The device is as it was (changed: false), unless even that failed.
        active = self._active_after(tx.name)
        result.update(changed=outcome == "rollback_failed", outcome=outcome, phase=tx.phase, reason=reason,
                      timings=tx.timings, txid=tx.txid, active_version=active)
        code = getattr(exc, "reason", None)
        if isinstance(code, str):
            result["reason_code"] = code
        if warnings:
            result.update(bookkeeping_failed="; ".join(warnings), warnings=warnings)
        return UpdateFailed("update of %s to %s %s" % (tx.name, tx.version, _undo_words(outcome, reason, tx)), result)

    def _committed(self, tx: _Tx, result: Dict[str, Any]) -> Dict[str, Any]:
        """The update stands (the journal says ``commit``); what is left is bookkeeping, and a failure
        of it does not undo the update: it is reported, and the next run repairs it."""
        started = time.monotonic()
        warnings = []
        try:
            self.store.prune(tx.name)
        except Exception as exc:  # noqa: BLE001 - an old version kept longer is harmless
            warnings.append("removing versions beyond keep_versions failed (the next update retries): %s"
                            % _describe(exc))
        warnings += self._record(tx, "committed", None, journal_written=True)
        tx.timings["commit"] = round(time.monotonic() - started, 4)
        done = dict(result, changed=True, outcome="committed", active_version=self._active_after(tx.name),
                    timings=tx.timings, txid=tx.txid)
        if warnings:
            done.update(bookkeeping_failed="; ".join(warnings), warnings=warnings)
        return done

    def _record(self, tx: _Tx, outcome: str, reason: Optional[str], journal_written: bool) -> List[str]:
        """Write the history row of an ended transaction, then remove its journal. Returns warnings:
        when the row cannot be written, the journal keeps the outcome and the next run writes it."""
        phase = "commit" if outcome == "committed" else tx.phase
        try:
            self.history.finish(tx.txid, outcome, phase, reason, tx.timings, tx.bytes_transferred, tx.bytes_saved,
                                row=tx.row())
        except Exception as exc:  # noqa: BLE001 - the update's own outcome stands; the row is repaired later
            problem = "writing the history row failed: %s" % _describe(exc)
            if not journal_written:
                return ["%s; this refusal is not recorded" % problem]
            if outcome != "committed" and not self._journal_outcome(tx, outcome, reason):
                return ["%s; the journal could not keep the outcome either, so this transaction is not recorded"
                        % problem]
            return ["%s; %s keeps the outcome and the next run records it" % (problem, self.journal_path)]
        if journal_written:
            try:
                self._clear_journal()
            except OSError as exc:
                return ["removing the journal %s failed (the next run removes it): %s"
                        % (self.journal_path, _describe(exc))]
        return []

    def _journal_outcome(self, tx: _Tx, outcome: str, reason: Optional[str]) -> bool:
        """Keep an ended transaction's outcome in its journal, so that the next run records it as it
        was (not as an installer that died). On a full disk, the old journal's room is reused."""
        tx.outcome, tx.reason = outcome, reason
        try:
            self._journal(tx, tx.phase)
            return True
        except (OSError, StoreError):
            pass
        try:  # the undo is done: the journal may go for a moment, to free its block for the new one
            self._clear_journal()
            self._journal(tx, tx.phase)
            return True
        except (OSError, StoreError):
            return False

    def _active_after(self, name: str) -> Optional[str]:
        try:
            return self.store.active(name)
        except StoreError:
            return None

    def _check_space(self, tx: _Tx, manifest: Any, artifact: str, keyslot: Dict[str, Any],
                     files: Optional[Mapping[str, bytes]]) -> None:
        """Refuse, before the journal, an update the disk has no room for: the store's install and the
        transaction's bookkeeping (journal, history), on whichever filesystems they live."""
        needs = {self.store.models_dir: self.store.space_needed(manifest, files, artifact, keyslot),
                 self.state_dir: BOOKKEEPING_BYTES}
        DiskFull.check(needs, "updating %s from %s to %s" % (tx.name, tx.from_version, tx.version) if tx.from_version
                       else "installing %s %s" % (tx.name, tx.version))

    def apply_delta(self, delta: str, keyslot: Dict[str, Any], files: Optional[Mapping[str, bytes]] = None,
                    policy: Policy = Policy(), mode: str = "push", stage_s: float = 0.0,
                    bytes_transferred: int = 0) -> Dict[str, Any]:
        """``apply`` for a delta against a version this device holds (edgeai_runtime.format.delta): the
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
                exc = DiskFull.from_error(exc, "rebuilding the artifact from the delta", rebuilt) or exc
                reason = getattr(exc, "reason", None) or "delta_failed"
                message = "the delta %s gives no artifact (%s): %s" % (os.path.basename(delta), reason, exc)
                raise DeltaFailed(message, reason, {
                    "changed": False, "outcome": "delta_failed", "delta_reason": reason,
                    "bytes_transferred": bytes_transferred,
                    "delta": {"used": False, "fallback_reason": "%s: %s" % (reason, message)}}) from None
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

    def plan(self, want: Want) -> Dict[str, Any]:
        """edgeai_runtime.device.plan for ``want`` on this store, with whether the service serves the active
        version asked only where it decides (state active, the wanted version active)."""
        entry = self.store.entry(want.name)
        active = entry["active"]
        serving = self._serving_ok(want.name, active) if want.state == "active" and active is not None \
            and active == want.version else None
        return plan([entry], want, serving=serving)

    def apply_delta_or_full(self, delta: Optional[str], full: Callable[[], str], keyslot: Dict[str, Any],
                            files: Optional[Mapping[str, bytes]] = None, policy: Policy = Policy(),
                            mode: str = "push", stage_s: float = 0.0, bytes_transferred: int = 0,
                            progress: Optional[Callable[[], Tuple[float, int]]] = None) -> Dict[str, Any]:
        """The delta when there is one; when it gives no artifact (nothing changed), the full artifact
        that ``full()`` returns (a path given along, or downloaded now), with ``delta`` saying why. The
        one fallback from a delta to its artifact: the CLI and the pull agent use it, and a controller
        that sent a delta alone reads the same ``delta`` record from the DeltaFailed result.
        ``progress()``, when given, says (stage seconds, bytes transferred) so far, asked just before
        each attempt, so that a download inside ``full()`` counts; else the two values given count."""
        def staged() -> Tuple[float, int]:
            return progress() if progress is not None else (stage_s, bytes_transferred)

        fallback: Optional[Dict[str, Any]] = None
        if delta is not None:
            try:
                return self.apply_delta(delta, keyslot, files, policy, mode, *staged())
            except DeltaFailed as exc:
                fallback = dict(exc.result["delta"])
        try:
            path = full()
            result = self.apply(path, keyslot, files, policy, mode, *staged())
        except UpdateFailed as exc:
            if fallback is not None:
                exc.result["delta"] = fallback
            raise
        return dict(result, delta=fallback) if fallback is not None else result

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
        active = self._active_after(name) if claimed else None
        result = {"changed": False, "name": name, "version": version, "previous_version": active,
                  "active_version": active, "outcome": "refused", "phase": "stage", "reason": reason,
                  "timings": timings, "bytes_transferred": bytes_transferred, "recovered": recovered}
        try:
            result["txid"] = self.history.record(name, version, active, mode, "refused", reason, timings, "stage",
                                                 bytes_transferred)
        except Exception as history_exc:  # noqa: BLE001 - the refusal stands; say that it is not recorded
            warning = "writing the history row failed: %s; this refusal is not recorded" % _describe(history_exc)
            result.update(bookkeeping_failed=warning, warnings=[warning])
        if isinstance(getattr(exc, "reason", None), str):
            result["reason_code"] = getattr(exc, "reason")
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
            base: Dict[str, Any] = {"name": name, "version": target, "previous_version": active,
                                    "recovered": recovered}
            if active == target and self._serving_ok(name, target):
                return dict(base, changed=False, active_version=target, timings={})
            started = time.monotonic()
            self._switch_to(name, target)
            self._verify_serves(name, target)
            timings = {"rollback": round(time.monotonic() - started, 4)}
            done = dict(base, changed=True, active_version=self._active_after(name), timings=timings)
            why = reason or "operator rollback from %s" % active
            try:
                self.history.record(name, target, active, "manual", "manual_rollback", why, timings)
            except Exception as exc:  # noqa: BLE001 - the rollback stands; the row is written by the next run
                tx = _Tx(uuid.uuid4().hex, name, target, active, None, True, "manual",
                         time.time() - timings["rollback"], "rollback", timings)
                problem = "writing the history row failed: %s" % _describe(exc)
                kept = self._journal_outcome(tx, "manual_rollback", why)
                warning = "%s; %s" % (problem, "%s keeps it and the next run records it" % self.journal_path
                                      if kept else "this rollback is not recorded")
                done.update(bookkeeping_failed=warning, warnings=[warning])
            return done

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
            from edgeai_runtime.service.gate import GateFailed
            from edgeai_runtime.service.serving import ModelManager  # no service: load and gate here, then only move the pointer
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
                self.client.call("POST", "/v2/admin/models/%s/activate" % tx.name, dict(body, prune=False))
                self._verify_serves(tx.name, tx.version)
            else:
                self.store.activate(tx.name, tx.version, prune=False)
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
            self._switch_to(tx.name, tx.from_version, prune=False)
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

    def _switch_to(self, name: str, version: str, prune: bool = True) -> None:
        if self._service_up():
            self.client.call("POST", "/v2/admin/models/%s/activate" % name, {"version": version, "prune": prune})
        else:
            self.store.activate(name, version, prune=prune)

    def _verify_serves(self, name: str, version: str) -> None:
        """The service must serve ``version``, report it ready and answer a probe inference.
        With no service running, the version must load and pass its gate here."""
        if not self._service_up():
            from edgeai_runtime.service.serving import ModelManager
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
        """Sweep what killed writers left, then end the transaction a killed installer left: undo it,
        or, when it had passed its commit point or its undo was done, write the history row it lacks
        (the bookkeeping a full disk kept it from). Returns what was done: one entry per leftover
        removed (``outcome: swept``, ``path`` under the root) and one per transaction."""
        self.store.recover()
        swept = ["models/%s" % path for path in self.store.swept[self._reported:]]
        self._reported = len(self.store.swept)
        done: List[Dict[str, Any]] = [{"outcome": "swept", "path": p} for p in swept + self._sweep_leftovers()]
        data = self._read_journal()
        if data is None:
            self.history.sweep("interrupted before its journal was written; nothing was changed")
            return done
        tx = _Tx.from_dict(data)
        entry = {"txid": tx.txid, "name": tx.name, "version": tx.version}
        if tx.outcome is not None:  # it had ended (undone, or an operator's rollback); only its row was left
            self._write_row(tx, tx.outcome, tx.phase, tx.reason)
            return done + [dict(entry, outcome=tx.outcome, repaired="history")]
        if tx.phase == "commit":  # it had passed every check; only the bookkeeping was left
            with contextlib.suppress(StoreError, OSError):
                self.store.prune(tx.name)
            self._write_row(tx, "committed", "commit", None)
            return done + [dict(entry, outcome="committed")]
        reason = "interrupted in phase %s (installer pid %s died); recovered by pid %d" % (
            tx.phase, data.get("pid"), os.getpid())
        outcome = self._undo(tx)
        self._write_row(tx, "interrupted", tx.phase, "%s; %s" % (reason, outcome.replace("_", " ")))
        self.history.sweep("interrupted; recovered with transaction %s" % tx.txid)
        return done + [dict(entry, outcome="interrupted", undo=outcome, restored=tx.from_version)]

    def _write_row(self, tx: _Tx, outcome: str, phase: Optional[str], reason: Optional[str]) -> None:
        """The history row of a transaction the journal describes (written whole if it has none), then
        the journal goes."""
        self.history.finish(tx.txid, outcome, phase, reason, tx.timings, tx.bytes_transferred, tx.bytes_saved,
                            row=tx.row())
        self._clear_journal()

    def repair(self) -> List[Dict[str, Any]]:
        """The light part of recovery, for commands that only read (``ota history``): when no update
        runs, write the history row of a transaction that ended but could not record itself. A
        transaction that needs undoing is left to the next update or ``ota recover``."""
        if not os.path.isdir(self.state_dir):  # no update ever ran here: nothing to repair, nothing to create
            return []
        try:
            with self._lock():
                data = self._read_journal()
                tx = _Tx.from_dict(data) if data is not None else None
                if tx is not None and (tx.outcome is not None or tx.phase == "commit"):
                    return self._recover()
                return [{"outcome": "swept", "path": p} for p in self._sweep_leftovers()]
        except (StoreError, HistoryError, OSError):  # an update runs (it does this itself), a full disk, no access
            return []

    def _sweep_leftovers(self) -> List[str]:
        """Remove, under the OTA lock, what installers that died left outside the store: artifacts
        rebuilt from deltas (``cache/rebuilt-<pid>``, when that pid is gone) and the journal's temp
        files (``state/.tmp-*``). Returns the paths removed, relative to the root."""
        removed = []
        cache = os.path.join(self.config.root, "cache")
        try:
            entries = sorted(os.listdir(cache))
        except OSError:
            entries = []
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
                removed.append("cache/%s" % entry)
        try:
            entries = sorted(os.listdir(self.state_dir))
        except OSError:
            entries = []
        for entry in entries:
            if entry.startswith(".tmp-"):
                fsutil.write_point("sweep state/%s" % entry)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.state_dir, entry))
                    removed.append("state/%s" % entry)
        return removed

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
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            write_atomic(self.journal_path, json.dumps(tx.to_dict(), sort_keys=True).encode(), 0o640,
                         label="journal phase %s%s" % (phase, " (%s)" % tx.outcome if tx.outcome else ""))
        except OSError as exc:
            full = DiskFull.from_error(exc, "writing the OTA journal (phase %s)" % phase, self.journal_path)
            if full is None:
                raise
            raise full from None

    def _read_journal(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.journal_path, encoding="utf-8") as f:
                journal: Dict[str, Any] = json.load(f)
                return journal
        except FileNotFoundError:
            return None
        except ValueError:  # write_atomic renames a complete file into place, so this is not ours to read
            raise StoreError("the OTA journal %s is unreadable; inspect it and remove it" % self.journal_path) from None

    def _clear_journal(self) -> None:
        if not os.path.exists(self.journal_path):
            return
        fsutil.write_point("journal: remove")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)
        fsutil.fsync_dir(self.state_dir)

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
    full = DiskFull.from_error(exc, "the update")
    if full is not None:
        return str(full)
    return str(exc) or type(exc).__name__


def _undo_words(outcome: str, reason: str, tx: Optional[_Tx], active: Optional[str] = None) -> str:
    previous = tx.from_version if tx is not None else active
    if outcome == "rollback_failed":
        return "failed, and so did putting the previous state back: %s" % reason
    if outcome == "rolled_back":
        return "was rolled back to %s: %s" % (previous, reason)
    return "was refused; %s: %s" % ("%s still serves" % previous if previous else "nothing changed", reason)
