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

Here is the transaction itself; its bookkeeping (journal, lock, history) is
edgeai_runtime.device.journal, the health check of the activate phase, the watch and the undo is
edgeai_runtime.device.health, and rebuilding an artifact from a delta is edgeai_runtime.device.rebuild.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.device.client import ServiceClient, ServiceDown, ServiceError
from edgeai_runtime.device.config import RuntimeConfig
from edgeai_runtime.device.health import Health
from edgeai_runtime.device.journal import History, HistoryError, Journal, Tx
from edgeai_runtime.device.plan import PlanRefused, Want, plan
from edgeai_runtime.device.rebuild import rebuild
from edgeai_runtime.format.artifact import read_header as artifact_header
from edgeai_runtime.device.store import DiskFull, ModelStore, StoreError, open_store

log = logging.getLogger(__name__)

PHASES = ("stage", "verify", "load", "gate", "activate", "watch", "commit")
#: Phases after which the service may be serving the new version: a failure there needs a switch back.
SWITCHED = ("activate", "watch", "commit")
#: Room one transaction's bookkeeping takes on the state filesystem, at most: the journal (written
#: atomically, so two copies at a time) and the history row (SQLite's rollback journal, a new page).
BOOKKEEPING_BYTES = 64 * 1024


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


class Updater:
    """Runs update transactions against the store and, when it is up, the running service."""

    def __init__(self, config: RuntimeConfig, store: Optional[ModelStore] = None,
                 client: Optional[ServiceClient] = None, restart_grace_s: float = 60.0) -> None:
        self.config = config
        self._expect_service = False
        self.store = store or open_store(config)
        self.client = client or ServiceClient(config)
        self.state_dir = os.path.join(config.root, "state")
        self.history = History(os.path.join(self.state_dir, "history.sqlite"), on_outcome=self._report)
        self.journal = Journal(self.state_dir)
        self.health = Health(self.client, self.store, self.config, restart_grace_s)
        self._reported = 0  # how much of store.swept _recover has reported

    def _report(self, row: Dict[str, Any]) -> None:
        """Queue an ended transaction's history row for the fleet's broker (the outbox's ``ota`` kind),
        where telemetry is configured (``etc/telemetry.json``). Never fails the update: a failure is logged."""
        try:
            from edgeai_runtime.device.outbox import queue_where_configured
            queue_where_configured(self.config.root, "ota", row)
        except Exception as exc:  # noqa: BLE001 - the outcome stands in the history; only its report is lost
            log.warning("the outcome %s of %s %s (transaction %s) is recorded in the history but not queued for "
                        "the broker: %s", row.get("outcome"), row.get("name"), row.get("version"), row.get("txid"),
                        exc)

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
        with self.journal.lock():
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
            tx = Tx(uuid.uuid4().hex, name, version, active, self.store.pointer(name, "previous"),
                    version in self.store.versions(name), mode, time.time() - stage_s,
                    timings={"stage": round(stage_s, 4)}, bytes_transferred=bytes_transferred,
                    bytes_saved=bytes_saved)
            try:  # nothing is written before the room for all of it is known to be there
                self._check_space(tx, art.manifest, artifact, keyslot, files)
                self.journal.write(tx, "verify")  # the journal first: recovery finds any transaction that left a trace
            except (OSError, StoreError) as exc:
                tx.phase = "verify"
                raise self._failed(tx, result, exc, undo=False) from None
            try:
                self.history.begin(tx.txid, name, version, active, mode, tx.started)
                self._run(tx, art, artifact, keyslot, files, policy)
                self.journal.write(tx, "commit")  # the commit point
            except Exception as exc:  # every failure ends in the previous state, with the reason recorded
                raise self._failed(tx, result, exc) from None
            return self._committed(tx, result)

    def _failed(self, tx: Tx, result: Dict[str, Any], exc: BaseException, undo: bool = True) -> UpdateFailed:
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

    def _committed(self, tx: Tx, result: Dict[str, Any]) -> Dict[str, Any]:
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

    def _record(self, tx: Tx, outcome: str, reason: Optional[str], journal_written: bool) -> List[str]:
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
            if outcome != "committed" and not self.journal.keep_outcome(tx, outcome, reason):
                return ["%s; the journal could not keep the outcome either, so this transaction is not recorded"
                        % problem]
            return ["%s; %s keeps the outcome and the next run records it" % (problem, self.journal.path)]
        if journal_written:
            try:
                self.journal.clear()
            except OSError as exc:
                return ["removing the journal %s failed (the next run removes it): %s"
                        % (self.journal.path, _describe(exc))]
        return []

    def _active_after(self, name: str) -> Optional[str]:
        try:
            return self.store.active(name)
        except StoreError:
            return None

    def _check_space(self, tx: Tx, manifest: Any, artifact: str, keyslot: Dict[str, Any],
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
                info = rebuild(self.store, delta, keyslot, rebuilt)
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
        serving = self.health.ok(want.name, active) if want.state == "active" and active is not None \
            and active == want.version else None
        return plan([entry], want, serving=serving)

    def apply_delta_or_full(self, delta: Union[None, str, Callable[[], str]], full: Callable[[], str],
                            keyslot: Dict[str, Any],
                            files: Optional[Mapping[str, bytes]] = None, policy: Policy = Policy(),
                            mode: str = "push", stage_s: float = 0.0, bytes_transferred: int = 0,
                            progress: Optional[Callable[[], Tuple[float, int]]] = None) -> Dict[str, Any]:
        """The delta when there is one; when it gives no artifact (nothing changed), the full artifact
        that ``full()`` returns (a path given along, or downloaded now), with ``delta`` saying why. The
        one fallback from a delta to its artifact: the CLI and the pull agent use it, and a controller
        that sent a delta alone reads the same ``delta`` record from the DeltaFailed result.
        ``delta`` is a path, or a callable that fetches it: an EdgeAIError from it (a download that
        failed or did not check out) falls back like a delta that does not apply.
        ``progress()``, when given, says (stage seconds, bytes transferred) so far, asked just before
        each attempt, so that a download inside ``full()`` counts; else the two values given count."""
        def staged() -> Tuple[float, int]:
            return progress() if progress is not None else (stage_s, bytes_transferred)

        fallback: Optional[Dict[str, Any]] = None
        if delta is not None:
            try:
                path = delta() if callable(delta) else delta
            except EdgeAIError as exc:  # nothing changed: the full artifact instead
                fallback = {"used": False, "fallback_reason": "%s: %s" % (exc.reason, exc)}
            else:
                try:
                    return self.apply_delta(path, keyslot, files, policy, mode, *staged())
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
        with self.journal.lock():
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
            if active == target and self.health.ok(name, target):
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
                tx = Tx(uuid.uuid4().hex, name, target, active, None, True, "manual",
                        time.time() - timings["rollback"], "rollback", timings)
                problem = "writing the history row failed: %s" % _describe(exc)
                kept = self.journal.keep_outcome(tx, "manual_rollback", why)
                warning = "%s; %s" % (problem, "%s keeps it and the next run records it" % self.journal.path
                                      if kept else "this rollback is not recorded")
                done.update(bookkeeping_failed=warning, warnings=[warning])
            return done

    def recover(self) -> List[Dict[str, Any]]:
        """Roll back a transaction a killed installer left behind. Returns what was done."""
        with self.journal.lock():
            return self._recover()

    # -- phases ----------------------------------------------------------------------------

    def _run(self, tx: Tx, art: Any, artifact: str, keyslot: Dict[str, Any],
             files: Optional[Mapping[str, bytes]], policy: Policy) -> None:
        with self._phase(tx, "verify"):
            self.store.install_artifact(artifact, keyslot, files, force=policy.force)
        service = self._expect_service = self.client.up()
        body = {"version": tx.version, "latency_p95_ms": policy.latency_p95_ms}
        self.journal.write(tx, "load")
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
        self.journal.write(tx, "activate")
        with self._phase(tx, "activate"):
            if service:
                identity = self.health.identity()
                self.client.call("POST", "/v2/admin/models/%s/activate" % tx.name, dict(body, prune=False))
                self._verify_serves(tx.name, tx.version)
            else:
                self.store.activate(tx.name, tx.version, prune=False)
        self.journal.write(tx, "watch")
        with self._phase(tx, "watch"):
            if service and policy.watch_s > 0:
                self.health.watch(tx.name, tx.version, policy, identity)

    def _verify_serves(self, name: str, version: str) -> None:
        self.health.check(name, version, self._service_up())

    # -- undo ------------------------------------------------------------------------------

    def _undo(self, tx: Tx) -> str:
        """Put the device back as it was before ``tx``; the outcome for the history."""
        switched = tx.phase in SWITCHED
        if tx.from_version is not None:
            self._switch_to(tx.name, tx.from_version, prune=False)
        self.store.restore_pointers(tx.name, tx.from_version, tx.from_previous)
        self._discard(tx)
        if tx.from_version is not None and switched:
            self._verify_serves(tx.name, tx.from_version)
        return "rolled_back" if switched else "refused"

    def _discard(self, tx: Tx) -> None:
        """Unload the failed version and, when this transaction installed it, remove it from the store."""
        if self.client.up():
            with contextlib.suppress(ServiceError):
                self.client.call("POST", "/v2/admin/models/%s/discard" % tx.name, {"version": tx.version})
        if not tx.had_version and tx.version in self.store.versions(tx.name) and \
                self.store.active(tx.name) != tx.version:
            self.store.remove(tx.name, tx.version)

    def _service_up(self) -> bool:
        """Is the service there? One that was up for this transaction gets time to come back from a restart."""
        return self.client.wait_up(self.health.restart_grace_s) if self._expect_service else self.client.up()

    def _switch_to(self, name: str, version: str, prune: bool = True) -> None:
        if self._service_up():
            self.client.call("POST", "/v2/admin/models/%s/activate" % name, {"version": version, "prune": prune})
        else:
            self.store.activate(name, version, prune=prune)

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
        data = self.journal.read()
        if data is None:
            self.history.sweep("interrupted before its journal was written; nothing was changed")
            return done
        tx = Tx.from_dict(data)
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

    def _write_row(self, tx: Tx, outcome: str, phase: Optional[str], reason: Optional[str]) -> None:
        """The history row of a transaction the journal describes (written whole if it has none), then
        the journal goes."""
        self.history.finish(tx.txid, outcome, phase, reason, tx.timings, tx.bytes_transferred, tx.bytes_saved,
                            row=tx.row())
        self.journal.clear()

    def repair(self) -> List[Dict[str, Any]]:
        """The light part of recovery, for commands that only read (``ota history``): when no update
        runs, write the history row of a transaction that ended but could not record itself. A
        transaction that needs undoing is left to the next update or ``ota recover``."""
        if not os.path.isdir(self.state_dir):  # no update ever ran here: nothing to repair, nothing to create
            return []
        try:
            with self.journal.lock():
                data = self.journal.read()
                tx = Tx.from_dict(data) if data is not None else None
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
        removed += self.journal.sweep()
        return removed

    # -- phases ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _phase(self, tx: Tx, phase: str) -> Iterator[None]:
        tx.phase = phase
        started = time.monotonic()
        try:
            yield
        finally:
            tx.timings[phase] = round(time.monotonic() - started, 4)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ServiceDown):
        return str(exc)
    full = DiskFull.from_error(exc, "the update")
    if full is not None:
        return str(full)
    return str(exc) or type(exc).__name__


def _undo_words(outcome: str, reason: str, tx: Optional[Tx], active: Optional[str] = None) -> str:
    previous = tx.from_version if tx is not None else active
    if outcome == "rollback_failed":
        return "failed, and so did putting the previous state back: %s" % reason
    if outcome == "rolled_back":
        return "was rolled back to %s: %s" % (previous, reason)
    return "was refused; %s: %s" % ("%s still serves" % previous if previous else "nothing changed", reason)
