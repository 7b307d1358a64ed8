"""The device's outbox: records waiting to reach the fleet's broker, kept in SQLite so that they survive
crashes, reboots and days offline (docs/telemetry.md, "The outbox").

- One database, ``<root>/outbox/outbox.sqlite3``, in WAL mode; ``synchronous`` FULL or NORMAL
  (``TelemetryConfig.outbox_synchronous``; what a power cut can lose with each is in the docs).
- Several processes enqueue (the service, the OTA installer, the telemetry daemon); only the daemon
  sends and deletes (edgeai_runtime.device.mqtt_sync). Each write is one ``BEGIN IMMEDIATE``
  transaction, so writers of other processes wait on SQLite's lock (``timeout``), never interleave.
- Every record is the exact message that will be sent: JSON with ``device_id``, ``boot_id`` (the
  kernel's, per boot) and ``seq`` (the outbox's own counter, never reused), so that a receiver can
  drop duplicates by (device_id, boot_id, seq); plus ``kind``, ``time`` and the caller's ``data``.
- Priorities: ``ota`` and ``rollout`` > ``telemetry`` > ``inference``. The sync sends the highest first,
  oldest first within one (kinds of one priority together, in the order they were queued).
- A byte cap (``TelemetryConfig.outbox_max_bytes``; a record counts its message plus
  RECORD_OVERHEAD): a record that does not fit evicts the lowest priority, oldest first, but never a
  record of a higher priority than its own (then it is refused: ``outbox_full``). Evictions are
  counted per kind in the database (``status()["evicted"]``, which the telemetry sample and metrics
  read) and logged.
- Near a full disk the lowest priority is refused first: a record is refused (``disk_low``) when the
  filesystem would keep less than DISK_RESERVE of its priority free, with one log line per process
  when a priority starts being refused (and one when it is taken again). What the disk cannot hold
  at all is refused as ``disk_full``.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

from edgeai_runtime import fsutil
from edgeai_runtime.device.config import TelemetryConfig, load_telemetry_config
from edgeai_runtime.format.errors import EdgeAIError

log = logging.getLogger(__name__)

#: Kinds of record and their priorities: the higher is sent first and evicted last.
#: ``rollout``: a pull-mode device's verdict in a staged rollout (edgeai_runtime.device.pull_rollout), what the
#: controller's gate reads: as important as the OTA outcome it follows.
PRIORITIES: Dict[str, int] = {"ota": 3, "rollout": 3, "telemetry": 2, "inference": 1}
KINDS = tuple(sorted(PRIORITIES, key=lambda k: -PRIORITIES[k]))
#: Bytes a record counts against the cap beside its message (its row, index entry and page share).
RECORD_OVERHEAD = 64
#: The largest message one record may hold.
MAX_MESSAGE_BYTES = 256 * 1024
MiB = 1024 ** 2
#: Free space (bytes) a record of each priority must leave on the outbox's filesystem: inference
#: results are refused first, then telemetry; an OTA outcome only needs room for itself.
DISK_RESERVE: Dict[int, int] = {1: 16 * MiB, 2: 4 * MiB, 3: 64 * 1024}
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
#: SQLite's page size for a new outbox: a 4 KiB page holds one 2 KiB record and wastes the rest
#: (the file grew to 1.8 times the records' bytes); at 16 KiB it stays within 3-8 % of them.
PAGE_SIZE = 16384

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    message BLOB NOT NULL,
    refusals INTEGER NOT NULL DEFAULT 0,
    last_refusal TEXT
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, seq);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('seq', 0), ('bytes', 0);
"""


class OutboxError(EdgeAIError, RuntimeError):
    """The outbox could not be read or written (``str()`` names the database and the cause)."""

    default_reason = "outbox"


class OutboxRefused(OutboxError):
    """A record was not queued. ``reason``: ``disk_low`` (the disk keeps its last room for higher
    priorities), ``disk_full`` (no room at all), ``outbox_full`` (the byte cap is held by records of
    higher priority), ``record_too_large``."""

    default_reason = "outbox_refused"


@dataclass(frozen=True)
class Record:
    """One queued record: ``message`` is what is published, unchanged since it was queued."""

    seq: int
    kind: str
    priority: int
    created: float
    message: bytes
    refusals: int = 0


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    """The kernel's boot id (a new one at each boot); ``unknown`` where there is none."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or "unknown"
    except OSError:
        return "unknown"


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def encode_message(device_id: str, boot_id: str, seq: int, kind: str, created: float, data: Mapping[str, Any]) -> bytes:
    body = {"device_id": device_id, "boot_id": boot_id, "seq": seq, "kind": kind, "time": round(created, 6),
            "data": data}
    try:
        return json.dumps(body, separators=(",", ":"), allow_nan=False, default=str).encode()
    except ValueError:  # a NaN or infinity somewhere (a sensor): null, as an absent value
        return json.dumps(_finite(body), separators=(",", ":"), default=str).encode()


#: Below this much free space a failing SQLite write is taken for a full disk (it may say "disk I/O error").
_ROOM = 64 * 1024


def _is_disk_full(exc: BaseException, path: str) -> bool:
    if fsutil.is_disk_full(exc) or (isinstance(exc, sqlite3.Error) and "full" in str(exc).lower()):
        return True
    try:
        return isinstance(exc, sqlite3.OperationalError) and fsutil.space(path)[0] < _ROOM
    except OSError:
        return False


def summary(status: Dict[str, Any]) -> Dict[str, Any]:
    """What a telemetry record says of the outbox: its backlog and what it had to drop."""
    return {"records": status["records"], "bytes": status["bytes"], "max_bytes": status["max_bytes"],
            "oldest_age_s": status["oldest_age_s"],
            "evicted_records": {k: v["records"] for k, v in status["evicted"].items()},
            "refused_records": {k: sum(v.values()) for k, v in status["refused"].items()},
            "delivered_records": status["delivered"]}


class Outbox:
    """The outbox database at ``path`` (created when first written). Safe to share between threads;
    several processes may each open their own."""

    def __init__(self, path: str, device_id: str, max_bytes: int = 64 * MiB, synchronous: str = "FULL",
                 boot_id: Optional[str] = None, timeout: float = 30.0) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be FULL or NORMAL, not %r" % synchronous)
        self.path, self.device_id, self.max_bytes = path, device_id, max_bytes
        self.synchronous, self.timeout = synchronous, timeout
        self.boot_id = boot_id or read_boot_id()
        self._db: Optional[sqlite3.Connection] = None
        self._lock = threading.Lock()
        self._refusing: Set[int] = set()  # priorities this process is refusing for want of disk (logged once)
        self._evict_logged = 0.0
        self._evicted_unlogged = [0, 0]

    @classmethod
    def from_config(cls, config: TelemetryConfig, timeout: float = 30.0) -> "Outbox":
        return cls(config.outbox_path, config.device_id, config.outbox_max_bytes, config.outbox_synchronous,
                   timeout=timeout)

    # -- the connection --------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA page_size=%d" % PAGE_SIZE)  # a new database only (before WAL): else a no-op
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=%s" % self.synchronous)
                db.execute("PRAGMA journal_size_limit=%d" % (4 * MiB))  # the WAL is truncated back after a checkpoint
                if db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'counters'").fetchone()[0] == 0:
                    db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            except BaseException:
                db.close()
                raise
            self._db = db
        return self._db

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: other processes' writers wait for it)."""
        with self._lock:
            try:
                db = self._connect()
                db.execute("BEGIN IMMEDIATE")
            except (OSError, sqlite3.Error) as exc:
                raise self._failed(exc, doing) from None
            try:
                yield db
                db.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                if isinstance(exc, (OSError, sqlite3.Error)):
                    raise self._failed(exc, doing) from None
                raise

    def _failed(self, exc: BaseException, doing: str) -> OutboxError:
        if _is_disk_full(exc, self.path):
            try:
                free = fsutil.space(self.path)[0]
                where = fsutil.mount_point(self.path)
            except OSError:
                free, where = -1, "?"
            return OutboxRefused("%s: no space left on the filesystem at %s for the outbox %s (%d bytes free): %s"
                                 % (doing, where, self.path, free, exc), "disk_full")
        return OutboxError("%s: the outbox %s failed: %s" % (doing, self.path, exc))

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- queuing ---------------------------------------------------------------------------

    def enqueue(self, kind: str, data: Mapping[str, Any]) -> int:
        """Queue one record; its ``seq`` once it is committed (durably with FULL). Raises OutboxRefused
        when it cannot be queued, OutboxError when the database fails."""
        return self.enqueue_many(kind, [data])[0]

    def enqueue_many(self, kind: str, items: Sequence[Mapping[str, Any]]) -> List[int]:
        """Queue records of one kind in one transaction (one sync to disk for all); their seqs."""
        priority = PRIORITIES.get(kind)
        if priority is None:
            raise OutboxError("unknown record kind %r (kinds: %s)" % (kind, ", ".join(KINDS)), "bad_record")
        if not items:
            return []
        now = time.time()
        doing = "queuing %d %s record%s" % (len(items), kind, "s" if len(items) > 1 else "")
        try:
            return self._insert(doing, kind, priority, items, now)
        except OutboxRefused as exc:  # counted once the refused transaction is rolled back
            if exc.reason in ("disk_low", "outbox_full"):
                self._count_alone("refused_%s_%s" % ("disk" if exc.reason == "disk_low" else "full", kind))
            raise

    def _insert(self, doing: str, kind: str, priority: int, items: Sequence[Mapping[str, Any]],
                now: float) -> List[int]:
        with self._write(doing) as db:
            first = int(db.execute("SELECT value FROM counters WHERE name = 'seq'").fetchone()[0]) + 1
            rows = []
            for offset, data in enumerate(items):
                message = encode_message(self.device_id, self.boot_id, first + offset, kind, now, data)
                if len(message) > MAX_MESSAGE_BYTES:
                    raise OutboxRefused("%s: a message of %d bytes is over the %d bytes a record may hold"
                                        % (doing, len(message), MAX_MESSAGE_BYTES), "record_too_large")
                rows.append((first + offset, priority, kind, now, len(message) + RECORD_OVERHEAD, message))
            size = sum(r[4] for r in rows)
            self._check_disk(priority, kind, size)
            total = int(db.execute("SELECT value FROM counters WHERE name = 'bytes'").fetchone()[0])
            if total + size > self.max_bytes:
                total -= self._evict(db, priority, total + size - self.max_bytes, doing)
            db.executemany("INSERT INTO records (seq, priority, kind, created, size, message)"
                           " VALUES (?, ?, ?, ?, ?, ?)",
                           rows)
            db.execute("UPDATE counters SET value = ? WHERE name = 'seq'", (first + len(rows) - 1,))
            db.execute("UPDATE counters SET value = ? WHERE name = 'bytes'", (total + size,))
        return [r[0] for r in rows]

    def _check_disk(self, priority: int, kind: str, size: int) -> None:
        """Refuse (disk_low) a record that would leave the filesystem with less than its priority's reserve."""
        try:
            free = fsutil.space(self.path)[0]
        except OSError:
            return
        reserve = DISK_RESERVE[priority]
        if free >= reserve + size:
            if priority in self._refusing:
                self._refusing.discard(priority)
                log.warning("outbox %s: taking %s records again (%d bytes free)", self.path, kind, free)
            return
        higher = [k for k in KINDS if PRIORITIES[k] > priority]
        message = ("outbox %s: refusing %s records: %d bytes free on the filesystem at %s, below the %d kept free "
                   "for %s" % (self.path, kind, free, fsutil.mount_point(self.path), reserve,
                               " and ".join(higher) + " records" if higher else "the outbox's own writes"))
        if priority not in self._refusing:
            self._refusing.add(priority)
            log.error("%s", message)
        raise OutboxRefused(message, "disk_low")

    def _evict(self, db: sqlite3.Connection, priority: int, need: int, doing: str) -> int:
        """Delete the lowest priority, oldest first, up to ``priority``, until ``need`` bytes are freed.
        Returns the bytes freed; raises OutboxRefused (outbox_full) when that much is not there to evict."""
        freed, count = 0, 0
        per_kind: Dict[str, List[int]] = {}
        last: Optional[Tuple[int, int]] = None
        for p in sorted(set(PRIORITIES.values())):
            if p > priority or freed >= need:
                break
            for seq, kind, size in db.execute("SELECT seq, kind, size FROM records WHERE priority = ? ORDER BY seq",
                                              (p,)):
                freed += size
                count += 1
                tally = per_kind.setdefault(kind, [0, 0])
                tally[0] += 1
                tally[1] += size
                last = (p, seq)
                if freed >= need:
                    break
        if freed < need or last is None:
            raise OutboxRefused("%s: the outbox %s is full (%d bytes cap) with records of higher priority"
                                % (doing, self.path, self.max_bytes), "outbox_full")
        db.execute("DELETE FROM records WHERE priority < ? OR (priority = ? AND seq <= ?)", (last[0], last[0], last[1]))
        for kind, (records, nbytes) in per_kind.items():
            self._count(db, "evicted_%s" % kind, records)
            self._count(db, "evicted_bytes_%s" % kind, nbytes)
        self._log_eviction(count, freed, per_kind)
        return freed

    def _log_eviction(self, count: int, freed: int, per_kind: Mapping[str, List[int]]) -> None:
        """One warning at the first eviction, then at most one a minute summing up what went since."""
        self._evicted_unlogged[0] += count
        self._evicted_unlogged[1] += freed
        now = time.monotonic()
        if self._evict_logged and now - self._evict_logged < 60:
            return
        log.warning("outbox %s is full (%d bytes cap): evicted %d records (%d bytes), lowest priority and oldest "
                    "first%s (this time: %s)", self.path, self.max_bytes, self._evicted_unlogged[0],
                    self._evicted_unlogged[1], " in the last %ds" % (now - self._evict_logged)
                    if self._evict_logged else "",
                    ", ".join("%d %s" % (v[0], k) for k, v in sorted(per_kind.items())))
        self._evict_logged = now
        self._evicted_unlogged = [0, 0]

    @staticmethod
    def _count(db: sqlite3.Connection, name: str, by: int) -> None:
        """Add to a counter, in ``db``'s transaction."""
        db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                   "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, by))

    def _count_alone(self, name: str) -> None:
        """Add one to a counter in a transaction of its own, best effort (a refusal for want of disk
        is counted when the disk lets it)."""
        with contextlib.suppress(OutboxError):
            with self._write("counting %s" % name) as db:
                self._count(db, name, 1)

    # -- sending (the sync) ------------------------------------------------------------------

    def pending(self, limit: int, skip_kinds: Sequence[str] = (),
                after: Optional[Mapping[int, int]] = None) -> List[Record]:
        """Up to ``limit`` records in the order they are sent: highest priority first, oldest first.
        Only these are read into memory. ``after``: {priority: seq} to start past (records in flight)."""
        out: List[Record] = []
        with self._lock:
            try:
                db = self._connect()
                for p in sorted(set(PRIORITIES.values()), reverse=True):
                    kinds = [k for k in KINDS if PRIORITIES[k] == p and k not in skip_kinds]
                    if len(out) >= limit:
                        break
                    if not kinds:
                        continue
                    rows = db.execute("SELECT seq, kind, priority, created, message, refusals FROM records "
                                      "WHERE priority = ? AND kind IN (%s) AND seq > ? ORDER BY seq LIMIT ?"
                                      % ",".join("?" * len(kinds)),
                                      (p, *kinds, (after or {}).get(p, 0), limit - len(out))).fetchall()
                    out += [Record(int(r[0]), r[1], int(r[2]), float(r[3]), bytes(r[4]), int(r[5])) for r in rows]
            except (OSError, sqlite3.Error) as exc:
                raise self._failed(exc, "reading records to send") from None
        return out

    def delete(self, seqs: Sequence[int]) -> int:
        """Remove delivered records (the broker acknowledged them); the number removed."""
        if not seqs:
            return 0
        removed = 0
        with self._write("removing %d delivered records" % len(seqs)) as db:
            for start in range(0, len(seqs), 500):
                chunk = list(seqs[start:start + 500])
                marks = ",".join("?" * len(chunk))
                size = db.execute("SELECT coalesce(sum(size), 0), count(*) FROM records WHERE seq IN (%s)" % marks,
                                  chunk).fetchone()
                db.execute("DELETE FROM records WHERE seq IN (%s)" % marks, chunk)
                db.execute("UPDATE counters SET value = value - ? WHERE name = 'bytes'", (int(size[0]),))
                removed += int(size[1])
            self._count(db, "delivered", removed)
        return removed

    def refused(self, seqs: Sequence[int], kind: str, why: str) -> None:
        """The broker refused these records (not authorised): they stay queued, marked, and counted."""
        if not seqs:
            return
        with self._write("marking %d refused records" % len(seqs)) as db:
            for start in range(0, len(seqs), 500):
                chunk = list(seqs[start:start + 500])
                db.execute("UPDATE records SET refusals = refusals + 1, last_refusal = ? WHERE seq IN (%s)"
                           % ",".join("?" * len(chunk)), (why, *chunk))
            self._count(db, "broker_refused_%s" % kind, len(seqs))

    # -- what is in it -----------------------------------------------------------------------

    def status(self) -> Dict[str, Any]:
        """Records and bytes per kind, the oldest record's age, evictions and refusals (counted since
        the outbox was made), delivered records. Reads only: a missing outbox is reported empty and
        not created."""
        kinds: Dict[str, Dict[str, Any]] = {k: {"priority": PRIORITIES[k], "records": 0, "bytes": 0,
                                                "oldest_age_s": None} for k in KINDS}
        counters: Dict[str, int] = {}
        exists = os.path.exists(self.path)
        now = time.time()
        if exists:
            with self._lock:
                try:
                    db = self._connect()
                    for kind, records, nbytes, oldest in db.execute(
                            "SELECT kind, count(*), sum(size), min(created) FROM records GROUP BY kind"):
                        if kind in kinds:
                            kinds[kind].update(records=int(records), bytes=int(nbytes),
                                               oldest_age_s=round(max(0.0, now - float(oldest)), 3))
                    counters = {str(n): int(v) for n, v in db.execute("SELECT name, value FROM counters")}
                except (OSError, sqlite3.Error) as exc:
                    raise self._failed(exc, "reading the outbox's status") from None
        ages = [v["oldest_age_s"] for v in kinds.values() if v["oldest_age_s"] is not None]
        return {
            "path": self.path, "exists": exists, "device_id": self.device_id, "boot_id": self.boot_id,
            "synchronous": self.synchronous, "max_bytes": self.max_bytes,
            "records": sum(v["records"] for v in kinds.values()), "bytes": sum(v["bytes"] for v in kinds.values()),
            "oldest_age_s": max(ages) if ages else None, "kinds": kinds,
            "evicted": {k: {"records": counters.get("evicted_%s" % k, 0),
                            "bytes": counters.get("evicted_bytes_%s" % k, 0)} for k in KINDS},
            "refused": {k: {"disk_low": counters.get("refused_disk_%s" % k, 0),
                            "outbox_full": counters.get("refused_full_%s" % k, 0),
                            "broker": counters.get("broker_refused_%s" % k, 0)} for k in KINDS},
            "delivered": counters.get("delivered", 0), "last_seq": counters.get("seq", 0),
        }


def queue_where_configured(root: str, kind: str, data: Mapping[str, Any], timeout: float = 2.0) -> Optional[int]:
    """Queue one record in the device's outbox where telemetry is configured (``<root>/etc/telemetry.json``
    exists; ``timeout`` for the outbox's lock): its seq, or None where it is not configured. Raises what
    reading the configuration or the outbox raises; callers whose own work must not fail on a report (the
    OTA installer's ``ota`` records, the pull agent's ``rollout`` records) catch and log it."""
    if not os.path.exists(os.path.join(root, "etc", "telemetry.json")):
        return None
    with Outbox.from_config(load_telemetry_config(root), timeout=timeout) as outbox:
        return outbox.enqueue(kind, data)
