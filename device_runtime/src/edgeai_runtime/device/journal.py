"""The OTA installer's bookkeeping: the journal of the transaction in flight (``state/ota.json``,
written atomically at each phase, under the lock ``state/ota.lock``) and the deployment history
(``state/history.sqlite``). See edgeai_runtime.device.ota for what the installer does with them."""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from edgeai_runtime import fsutil
from edgeai_runtime.device.store import DiskFull, StoreError
from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.fsutil import write_atomic

#: Below this much free space a failing SQLite write is taken for a full disk.
_HISTORY_ROOM = 32 * 1024

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

#: What a staged rollout (the controller's edgeai.fleet.rollout) recorded about this device: one row per mark,
#: newest last. The controller's ledger is a cache; these rows, with the deployments above, are the truth it is
#: rebuilt from (edgeai_runtime.device.rollout).
_ROLLOUT_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_marks (
    rollout TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    from_version TEXT,
    mark TEXT NOT NULL,
    reason TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_marks_by_rollout ON rollout_marks (rollout, attempt, time);
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

    def __init__(self, path: str, on_outcome: Optional[Callable[[Dict[str, Any]], None]] = None) -> None:
        self.path = path
        #: Called with each ended row, once it is committed (the OTA installer reports it to the outbox).
        self.on_outcome = on_outcome

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
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "deployments" not in tables:
                db.executescript(_SCHEMA)
            if "rollout_marks" not in tables:  # a history an older runtime made
                db.executescript(_ROLLOUT_SCHEMA)
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
            if done.rowcount != 1 and row is not None:
                db.execute("INSERT INTO deployments (txid, name, version, from_version, mode, started, finished,"
                           " duration_s, outcome, phase, reason, timings, bytes_transferred, bytes_saved)"
                           " VALUES (?, ?, ?, ?, ?, ?, ?, round(? - ?, 4), ?, ?, ?, ?, ?, ?)",
                           (txid,) + tuple(row) + (now, now, row[4]) + values)
            elif done.rowcount != 1:
                return False
            ended = self._row(db, txid) if self.on_outcome is not None else None
        if ended is not None and self.on_outcome is not None:
            self.on_outcome(ended)
        return True

    @staticmethod
    def _row(db: sqlite3.Connection, txid: str) -> Optional[Dict[str, Any]]:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT * FROM deployments WHERE txid = ?", (txid,)).fetchone()
        db.row_factory = None
        if found is None:
            return None
        item = dict(found)
        item["timings"] = json.loads(item["timings"] or "{}")
        return item

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

    def mark_rollout(self, rollout: str, attempt: int, name: str, version: str, from_version: Optional[str],
                     mark: str, reason: Optional[str], details: Mapping[str, Any]) -> Dict[str, Any]:
        """Record what a staged rollout did or found here (see edgeai_runtime.device.rollout.MARKS)."""
        row = dict(rollout=rollout, attempt=attempt, name=name, version=version, from_version=from_version,
                   mark=mark, reason=reason, details=dict(details), time=time.time())
        fsutil.write_point("history: rollout mark (%s)" % mark)
        with self._db("recording the rollout mark %s in the history" % mark) as db:
            db.execute("INSERT INTO rollout_marks (rollout, attempt, name, version, from_version, mark, reason,"
                       " details, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (rollout, attempt, name, version, from_version, mark, reason,
                        json.dumps(row["details"], sort_keys=True), row["time"]))
        return row

    def rollout_marks(self, rollout: str) -> List[Dict[str, Any]]:
        """Every mark of ``rollout`` (all attempts), oldest first."""
        if not os.path.exists(self.path):
            return []
        with self._db("reading the rollout marks") as db:
            db.row_factory = sqlite3.Row
            found = db.execute("SELECT * FROM rollout_marks WHERE rollout = ? ORDER BY time, rowid",
                               (rollout,)).fetchall()
        return [dict(dict(row), details=json.loads(row["details"] or "{}")) for row in found]

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


@dataclass
class Tx:
    """One update transaction, as the journal keeps it."""

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
    def from_dict(cls, data: Dict[str, Any]) -> "Tx":
        return cls(data["txid"], data["name"], data["version"], data.get("from_version"), data.get("from_previous"),
                   bool(data.get("had_version")), data.get("mode", "push"), float(data.get("started", 0)),
                   data.get("phase", "stage"), dict(data.get("timings") or {}), int(data.get("bytes_transferred", 0)),
                   int(data.get("bytes_saved", 0)), data.get("outcome"), data.get("reason"))

    def row(self) -> Tuple[str, str, Optional[str], str, float]:
        """What History.finish needs to write the row whole when its ``begin`` never happened."""
        return self.name, self.version, self.from_version, self.mode, self.started


class Journal:
    """The journal of the transaction in flight, and the lock that allows one at a time."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, "ota.json")

    def write(self, tx: Tx, phase: str) -> None:
        """Record that ``tx`` enters ``phase`` (atomically: a reader sees the old or the new journal)."""
        tx.phase = phase
        try:
            os.makedirs(self.state_dir, exist_ok=True)
            write_atomic(self.path, json.dumps(tx.to_dict(), sort_keys=True).encode(), 0o640,
                         label="journal phase %s%s" % (phase, " (%s)" % tx.outcome if tx.outcome else ""))
        except OSError as exc:
            full = DiskFull.from_error(exc, "writing the OTA journal (phase %s)" % phase, self.path)
            if full is None:
                raise
            raise full from None

    def read(self) -> Optional[Dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                journal: Dict[str, Any] = json.load(f)
                return journal
        except FileNotFoundError:
            return None
        except ValueError:  # write_atomic renames a complete file into place, so this is not ours to read
            raise StoreError("the OTA journal %s is unreadable; inspect it and remove it" % self.path) from None

    def clear(self) -> None:
        if not os.path.exists(self.path):
            return
        fsutil.write_point("journal: remove")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fsutil.fsync_dir(self.state_dir)

    def keep_outcome(self, tx: Tx, outcome: str, reason: Optional[str]) -> bool:
        """Keep an ended transaction's outcome in its journal, so that the next run records it as it
        was (not as an installer that died). On a full disk, the old journal's room is reused."""
        tx.outcome, tx.reason = outcome, reason
        try:
            self.write(tx, tx.phase)
            return True
        except (OSError, StoreError):
            pass
        try:  # the undo is done: the journal may go for a moment, to free its block for the new one
            self.clear()
            self.write(tx, tx.phase)
            return True
        except (OSError, StoreError):
            return False

    def sweep(self) -> List[str]:
        """Remove the temp files of journal writes that a killed installer left (``state/.tmp-*``;
        call with the lock held). Returns them, relative to the device root."""
        removed = []
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

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One transaction at a time; a second installer is refused at once, not queued."""
        os.makedirs(self.state_dir, exist_ok=True)
        lock = os.path.join(self.state_dir, "ota.lock")
        with fsutil.exclusive_lock(lock, wait=False) as held:
            if not held:
                raise StoreError("another model update is running on this device (%s is locked)" % lock,
                                 reason="update_in_progress")
            yield
