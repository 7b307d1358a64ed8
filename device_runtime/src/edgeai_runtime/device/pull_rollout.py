"""A pull-mode device following a staged rollout (docs/rollout.md, "Pull mode, device side").

The controller's rollout puts a ``rollout`` block in the entries of the update documents of the devices of a
started wave (edgeai_runtime.format.updates). For such an entry the agent (edgeai_runtime.device.agent) does what
the push rollout's role does over SSH, with the same marks in the deployment history
(edgeai_runtime.device.rollout.MARKS, plus ``installing``):

* ``update``: mark ``installing``; install the entry's version through the OTA installer as always; mark
  ``failed`` when that failed (the installer put the version before back), else ``installed``; soak it
  (edgeai_runtime.device.rollout.Soak, the block's limits); mark ``soaked`` or ``soak_failed``; after a failed soak,
  roll back to the version before (Updater.rollback, verified serving) and mark ``rolled_back`` (cause ``failed``).
* ``rollback``: bring the model to the entry's version (the version before the rollout) and mark ``rolled_back``
  (cause ``breach``, with the block's reason).

What is left to do is read from the marks of the rollout's attempt every time (:func:`next_step`, by the same
reasoning as the controller's ledger), so a run killed anywhere goes on from there in the next one, and a finished
attempt is left alone. Each finished attempt is reported once, as one outbox record of kind ``rollout``
(:func:`rollout_record`), which the controller's gate reads; what was reported is kept in
``state/pull-rollouts.json``.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from edgeai_runtime.device import rollout
from edgeai_runtime.device.client import ServiceClient
from edgeai_runtime.device.ota import Updater
from edgeai_runtime.device.outbox import queue_where_configured
from edgeai_runtime.device.plan import PlanRefused, Want
from edgeai_runtime.format.updates import rollout_version
from edgeai_runtime.fsutil import write_atomic

log = logging.getLogger(__name__)

#: The marks after which an attempt's update has its verdict (a ``soak_failed`` one still has its rollback to do).
VERDICTS = ("soaked", "soak_failed", "rolled_back", "failed")
#: Failures of the install that say nothing about the version: the next run tries again, no verdict is marked.
RETRIED = ("not_downloaded",)
RECORD_KIND = "rollout"


@dataclass(frozen=True)
class Step:
    """What is left to do for one attempt: ``install``, ``went_in`` (an update a killed run made: mark it),
    ``soak``, ``roll_back`` (``cause``: failed or breach) or ``done``."""
    do: str
    cause: Optional[str] = None


def next_step(marks: Sequence[Mapping[str, Any]], action: str, version: str, serving: Optional[str],
              committed: Optional[Mapping[str, Any]]) -> Step:
    """The next step of one attempt from its ``marks`` (oldest first), what serves, and the newest committed update
    to ``version`` (the rollout's). Pure."""
    names = [m["mark"] for m in marks]
    if "rolled_back" in names or "failed" in names or (action == "update" and "soaked" in names):
        return Step("done")
    if "soak_failed" in names:  # its own soak failed: roll back (a rollback action finds it so too)
        return Step("roll_back", "failed")
    if action == "rollback":
        return Step("roll_back", "breach")
    last = marks[-1] if marks else None
    if last is not None and last["mark"] == "installed":
        return Step("soak")
    if last is not None and last["mark"] == "installing" and serving == version \
            and ((committed or {}).get("finished") or 0) >= last["time"]:
        return Step("went_in")  # killed between its update and its mark
    return Step("install")


def record_state(marks: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """The finished attempt's state for the record: ``succeeded``, ``failed`` (the update or its own soak failed;
    rolled back) or ``rolled_back`` (the fleet was rolled back); None while it is not finished."""
    for mark in reversed(marks):
        if mark["mark"] == "soaked":
            return "succeeded"
        if mark["mark"] == "failed":
            return "failed"
        if mark["mark"] == "rolled_back":
            return "rolled_back" if (mark.get("details") or {}).get("cause") == "breach" else "failed"
    return None


def rollout_record(block: Mapping[str, Any], name: str, marks: Sequence[Mapping[str, Any]],
                   serving: Optional[str]) -> Dict[str, Any]:
    """The ``rollout`` record of a finished attempt (its ``marks``), what the controller's gate reads. Pure."""
    state = record_state(marks)
    final = next(m for m in reversed(marks) if m["mark"] in VERDICTS)
    soaks = [m.get("details") for m in marks if m["mark"] in ("soaked", "soak_failed")]
    updated = state == "succeeded" and any(m["mark"] == "installed" and (m.get("details") or {}).get("updated")
                                           for m in marks)
    return {"rollout": block["id"], "attempt": block["attempt"], "action": block["action"], "name": name,
            "version": rollout_version(block, name), "state": state,
            "version_before": next((m.get("from_version") for m in marks if m.get("from_version")), None),
            "version_after": serving, "updated": updated, "reason": final.get("reason"),
            "soak": soaks[-1] if soaks else None, "time": final["time"]}


class Reported:
    """The attempts already reported (``state/pull-rollouts.json``), so that each is reported once."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "pull-rollouts.json")

    def _load(self) -> Dict[str, Any]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data: Dict[str, Any] = json.load(f)
                return data
        except (OSError, ValueError):
            return {}

    @staticmethod
    def key(block: Mapping[str, Any]) -> str:
        return "%s#%d#%s" % (block["id"], block["attempt"], block["action"])

    def has(self, block: Mapping[str, Any]) -> bool:
        return self.key(block) in self._load().get("reported", {})

    def add(self, block: Mapping[str, Any], seq: Optional[int]) -> None:
        data = self._load()
        reported = dict(data.get("reported") or {})
        reported[self.key(block)] = {"seq": seq, "time": time.time()}
        keep = sorted(reported, key=lambda k: reported[k]["time"])[-500:]  # the newest 500 attempts
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        write_atomic(self.path, json.dumps({"reported": {k: reported[k] for k in keep}}, sort_keys=True).encode(),
                     0o640)


class Follower:
    """Follows the rollout block of one update document entry (see the module's docstring). ``install(entry)`` is
    the agent's own path for an entry (download, then the OTA installer); it returns the agent's model result."""

    def __init__(self, updater: Updater, client: ServiceClient, install: Callable[[Dict[str, Any]], Dict[str, Any]],
                 soak: Optional[rollout.Soak] = None) -> None:
        self.updater = updater
        self.history = updater.history
        self.store = updater.store
        self.client = client
        self.install = install
        self.soak = soak or rollout.Soak(client)
        self.reported = Reported(updater.state_dir)
        self._written: List[str] = []  # the marks written by the current follow()

    def follow(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        """Do what is left of the entry's rollout attempt and report it once finished. The result is the agent's
        per-model result, with ``rollout``: id, attempt, action, ``state`` (the record's, or ``in_progress``),
        ``marks`` (written in this run), ``soak`` (this run's verdict), ``report`` (the record queued, or why not)."""
        block, name = entry["rollout"], entry["name"]
        version = rollout_version(block, name)
        done: Dict[str, Any] = {"name": name, "version": entry["version"], "changed": False, "outcome": "unchanged"}
        written: List[str] = []
        self._written = written
        verdict: Optional[Dict[str, Any]] = None
        for _step in range(len(rollout.MARKS) + 2):  # every step writes a mark, or returns: a bound, not a limit
            report = rollout.status(self.history, self.store, self.client, block["id"], name, version)
            marks = [m for m in report["marks"] if m["attempt"] == block["attempt"]]
            serving = report["serving"] or report["active"]
            step = next_step(marks, block["action"], version, serving, report["committed"])
            if step.do == "done":
                break
            before = next((m.get("from_version") for m in marks if m.get("from_version")), report["active"])
            if step.do == "install":
                result = self._install(entry, block, version, before, marks)
                done.update({k: v for k, v in result.items() if k != "rollout"})
                if result.get("retry"):  # nothing to say of the version yet: the next run goes on
                    done.update(changed=bool(written) or bool(result.get("changed")), failed=True)
                    done.pop("retry", None)
                    return dict(done, rollout=self._outcome(block, "in_progress", written, verdict, None))
            elif step.do == "went_in":
                self._mark(block, name, version, before, "installed", None, {"updated": True, "resumed": True})
            elif step.do == "soak":
                verdict = self.soak.run(name, version, rollout.SoakLimits(**block["soak"]))
                self._mark(block, name, version, before, "soaked" if verdict["passed"] else "soak_failed",
                           "; ".join(verdict["reasons"]) or None, verdict)
            else:
                failure = self._roll_back(entry, block, version, before, step.cause or "breach", marks)
                if failure is not None:
                    done.update(failure, changed=bool(written), failed=True)
                    return dict(done, rollout=self._outcome(block, "in_progress", written, verdict, None))
        else:
            raise RuntimeError("rollout %s attempt %d of %s: no verdict after %s" % (
                block["id"], block["attempt"], name, ", ".join(written)))
        state = record_state(marks)
        queued = self._report(block, name, marks, serving)
        done["changed"] = bool(written) or bool(done.get("changed"))
        if written and state == "failed":
            done.update(failed=True, msg="%s %s: rollout %s attempt %d failed: %s" % (
                name, version, block["id"], block["attempt"], rollout_record(block, name, marks, serving)["reason"]))
        return dict(done, rollout=self._outcome(block, state, written, verdict, queued))

    # -- the steps -----------------------------------------------------------------------------------------------

    def _install(self, entry: Dict[str, Any], block: Mapping[str, Any], version: str, before: Optional[str],
                 marks: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
        name = entry["name"]
        if not marks or marks[-1]["mark"] != "installing":  # a retried install keeps its first mark
            self._mark(block, name, version, self.store.active(name), "installing", None, {})
        result = self.install(entry)
        if result.get("failed"):
            if result.get("outcome") in RETRIED or result.get("reason_code") == "update_in_progress" \
                    or result.get("reason") == "update_in_progress":
                return dict(result, retry=True)
            self._mark(block, name, version, before, "failed", str(result.get("msg") or "the update failed"),
                       {"outcome": result.get("outcome"), "phase": result.get("phase")})
            return result
        updated = bool(result.get("changed")) and result.get("outcome") == "committed"
        self._mark(block, name, version, result.get("previous_version", before), "installed", None,
                   {"updated": updated})
        return result

    def _roll_back(self, entry: Dict[str, Any], block: Mapping[str, Any], version: str, before: Optional[str],
                   cause: str, marks: Sequence[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        """Serve the version before again, verified, then mark ``rolled_back``. None, or the failure (no mark: the
        next run tries again)."""
        name = entry["name"]
        if block["action"] == "rollback":
            target: Optional[str] = entry["version"]
            why = str(block["reason"])
        else:
            target = before if before != version else None
            why = "soak failed: %s" % (next((m.get("reason") for m in reversed(marks) if m["mark"] == "soak_failed"),
                                            None) or "see the soak")
        if target is None:  # nothing else ran before it: it keeps serving (as the push rollout does)
            self._mark(block, name, version, before, "rolled_back", "%s; %s: kept serving it" % (
                why, "it served before the rollout" if before else "nothing ran before it"),
                {"cause": cause, "changed": False})
            return None
        try:
            changed = self._serve(entry, target, "rollout %s attempt %d: %s" % (block["id"], block["attempt"], why))
        except Exception as exc:  # noqa: BLE001 - any failure: no mark, the next run tries again
            return {"outcome": "rollback_failed", "msg": "%s: rolling back to %s for rollout %s attempt %d: %s"
                    % (name, target, block["id"], block["attempt"], exc), "active_version": self.store.active(name)}
        self._mark(block, name, version, target, "rolled_back", why, {"cause": cause, "changed": changed})
        return None

    def _serve(self, entry: Dict[str, Any], target: str, why: str) -> bool:
        """Have the service serve ``target``, verified: the installer's rollback when the store holds it, else the
        entry's own install (a rollback's entry is the version before, forced). Whether anything changed."""
        name = entry["name"]
        if target == entry["version"]:
            try:
                decided = self.updater.plan(Want(name, target, "active", sha256=entry.get("model_sha256")))
            except PlanRefused as exc:
                raise RuntimeError(str(exc)) from None
            if decided["reason"] in ("missing", "stale_key"):  # not held (or not for this key): the entry's artifact
                result = self.install(entry)
                if result.get("failed"):
                    raise RuntimeError(str(result.get("msg")))
                return bool(result.get("changed"))
        return bool(self.updater.rollback(name, target, reason=why).get("changed"))

    def _mark(self, block: Mapping[str, Any], name: str, version: str, from_version: Optional[str], mark: str,
              reason: Optional[str], details: Mapping[str, Any]) -> None:
        self.history.mark_rollout(block["id"], block["attempt"], name, version, from_version, mark,
                                  reason[:2000] if reason else None, details)
        self._written.append(mark)

    # -- the report ----------------------------------------------------------------------------------------------

    def _report(self, block: Mapping[str, Any], name: str, marks: Sequence[Mapping[str, Any]],
                serving: Optional[str]) -> Dict[str, Any]:
        """Queue the finished attempt's record once (where telemetry is configured). A failure is a warning: the
        record is tried again by the next run, and nothing else waits for it."""
        if self.reported.has(block):
            return {"queued": False, "why": "reported before"}
        record = rollout_record(block, name, marks, serving)
        try:
            seq = queue_where_configured(self.updater.config.root, RECORD_KIND, record)
        except Exception as exc:  # noqa: BLE001 - the verdict stands in the marks; the next run reports it
            log.warning("the outcome %s of rollout %s attempt %d (%s) is marked in the history but not queued for "
                        "the broker (the next agent run tries again): %s", record["state"], block["id"],
                        block["attempt"], name, exc)
            return {"queued": False, "why": str(exc)}
        try:
            self.reported.add(block, seq)
        except OSError as exc:  # queued; the next run queues it again (at least once), which receivers drop
            log.warning("the outcome of rollout %s attempt %d (%s) is queued, but %s could not note it (the next "
                        "agent run queues it again): %s", block["id"], block["attempt"], name, self.reported.path, exc)
        if seq is None:
            return {"queued": False, "why": "no telemetry configured (etc/telemetry.json)"}
        return {"queued": True, "seq": seq, "record": record}

    @staticmethod
    def _outcome(block: Mapping[str, Any], state: Optional[str], written: List[str],
                 verdict: Optional[Dict[str, Any]], report: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        return {"id": block["id"], "attempt": block["attempt"], "action": block["action"],
                "state": state or "in_progress", "marks": written, "soak": verdict, "report": report}
