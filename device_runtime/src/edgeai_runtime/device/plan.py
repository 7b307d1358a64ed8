"""Is there anything to do? The one rule, for every caller.

A device's model store, as ``edgeai-runtime model list`` prints it (the ``models`` entries and the
device's current ``device_key_id``), and what a caller wants (:class:`Want`) go in; a plan comes
out: the steps the device would take (``install``, ``rekey``, ``activate``, ``remove``,
``rollback``; none: nothing to do), ``changed`` (there are steps), a stable ``reason`` code, and
``send``, what the controller has to send first (``artifact``, ``keyslot`` or ``nothing``).

Pure: no I/O, and plain JSON in and out, so that both sides ask the same function. On the device
the OTA installer (``Updater.apply``), the pull agent and ``edgeai-runtime ota apply --check`` /
``ota plan`` (which the ``model`` and ``model_store`` modules run in check mode) call it with the
store read there; on the controller the action plugins of ``edgeai.fleet.model`` and
``edgeai.fleet.model_artifact`` call it with the status the device reported.

Reasons:

==================  ============================================================================
``serving``         the version is active (and, where the caller knows, the service serves it)
``not_serving``     the version is active, but the service does not serve it: activate it again
``installed``       state=present: the version is held, its key slot fits the device key
``held``            state=active: the version is held, not active; it is activated from the store
``stale_key``       the version is held, its key slot is for an older device key: re-key it
``missing``         the device does not hold the version: send the artifact
``removable``       state=absent: the version is held and not active
``absent``          state=absent: the device does not hold the version
``is_active``       state=absent: the version is the active one (refused: roll back first)
``rollback``        state=rolled_back: the target version is held and not active
``no_previous``     state=rolled_back: nothing to roll back to (refused)
``different_build`` another build is held under this version (refused: use a new version)
==================  ============================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from edgeai_runtime.format.errors import EdgeAIError

STATES = ("present", "active", "absent", "rolled_back")


class PlanRefused(EdgeAIError):
    """What is wanted cannot be done on this device; nothing was changed. ``reason`` is one of
    ``different_build``, ``is_active``, ``no_previous``, ``bad_state``."""


@dataclass(frozen=True)
class Want:
    """What the caller wants of one model. ``sha256``: the plaintext model's sha256 (None: any
    build of that version will do). ``key_id``: the device key the key slot must be for (None:
    the key slot is not judged). ``version`` may be None for state=rolled_back (the previous one)."""
    name: str
    version: Optional[str]
    state: str = "active"
    sha256: Optional[str] = None
    key_id: Optional[str] = None


def entry_of(models: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any]:
    """The model's entry in ``model list``'s ``models`` (empty when the device holds none of it)."""
    return next((m for m in models if m.get("name") == name), {})


def plan(models: Sequence[Mapping[str, Any]], want: Want, serving: Optional[bool] = None) -> Dict[str, Any]:
    """The plan for ``want`` on a store whose ``model list`` says ``models``. ``serving``: does the
    running service serve the active version (None: not known; the store's pointer counts).
    Raises :class:`PlanRefused` for what cannot be done."""
    if want.state not in STATES:
        raise PlanRefused("%s: state %r is none of %s" % (want.name, want.state, ", ".join(STATES)), "bad_state")
    entry = entry_of(models, want.name)
    active, previous = entry.get("active"), entry.get("previous")
    installed: Mapping[str, Mapping[str, Any]] = entry.get("installed") or {}
    version = want.version
    if want.state == "rolled_back":
        target = version or previous
        if target is None or target not in installed:
            raise PlanRefused("rolling back %s: %s" % (want.name, "version %s is not held here" % target if target
                                                       else "no previous version is kept"), "no_previous")
        return _plan(want, target, active, ["rollback"] if target != active else [],
                     "rollback" if target != active else "serving", "nothing")
    if version is None:
        raise PlanRefused("%s: state=%s needs a version" % (want.name, want.state), "bad_state")
    held = installed.get(version)
    if held is not None and want.sha256 is not None and held.get("sha256") != want.sha256:
        raise PlanRefused("a different build is held as %s %s (%s/%s, sha256 %s); the one wanted has sha256 %s: use a "
                          "new version" % (want.name, version, held.get("runtime"), held.get("precision"),
                                           held.get("sha256"), want.sha256), "different_build")
    if want.state == "absent":
        if held is None:
            return _plan(want, version, active, [], "absent", "nothing")
        if version == active:
            raise PlanRefused("removing %s %s: it is the active version; roll back or activate another first"
                              % (want.name, version), "is_active")
        return _plan(want, version, active, ["remove"], "removable", "nothing")
    if held is None:
        steps = ["install"] + (["activate"] if want.state == "active" else [])
        return _plan(want, version, active, steps, "missing", "artifact")
    stale = want.key_id is not None and bool(held.get("signed")) and held.get("key_id") != want.key_id
    steps = ["rekey"] if stale else []
    if want.state == "active" and (version != active or serving is False):
        steps.append("activate")
    if stale:
        reason = "stale_key"
    elif want.state == "present":
        reason = "installed"
    elif version != active:
        reason = "held"
    else:
        reason = "serving" if serving is not False else "not_serving"
    return _plan(want, version, active, steps, reason, "keyslot" if stale else "nothing")


def _plan(want: Want, version: str, active: Optional[str], steps: List[str], reason: str,
          send: str) -> Dict[str, Any]:
    after = version if want.state == "active" or "rollback" in steps else active
    return {"changed": bool(steps), "name": want.name, "version": version, "state": want.state, "steps": steps,
            "reason": reason, "send": send, "active_version": active, "active_after": after,
            "msg": _words(want.name, version, steps, reason)}


_VERBS = {"install": "install", "rekey": "re-key", "activate": "activate", "remove": "remove", "rollback": "roll back to"}


def _words(name: str, version: str, steps: Sequence[str], reason: str) -> str:
    if not steps:
        return "%s %s: nothing to do (%s)" % (name, version, reason.replace("_", " "))
    return "would %s %s %s" % (", then ".join(_VERBS[s] for s in steps), name, version)
