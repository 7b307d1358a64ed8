"""The pull-mode registry's layout and its update document, which the controller writes
(edgeai_runtime.controller.publish) and the device agent reads (edgeai_runtime.device.agent).
See also docs/ota.md.

    <registry>/updates/<device key id>.json        the update document for one device
    <registry>/updates/<device key id>.json.sig    its Ed25519 signature (64 raw bytes), fleet signing key
    <registry>/artifacts/<variant identity>-<cipher>.eaf             signed artifacts, shared by the devices
                                                                     that get that variant
    <registry>/artifacts/<variant identity>-<cipher>.files/<file>    their gate files

The update document::

    {"format": "edgeai.fleet/updates", "format_version": 1, "device": "<key id>", "sequence": 7,
     "issued": "2026-11-23T12:00:00Z",
     "models": [{"name": "digits", "version": "2.0.0", "model_sha256": "<the plaintext model's sha256>",
                 "force": false,
                 "artifact": {"path": "artifacts/digits-2.0.0-aes.eaf", "sha256": "...", "size": 123},
                 "files": {"golden.npz": {"path": "...", "sha256": "...", "size": 45}},
                 "deltas": [{"path": "artifacts/digits-2.0.0-aes.from-1.0.0.eafd", "sha256": "...", "size": 9,
                             "base_version": "1.0.0", "base_sha256": "<the base model's sha256>"}],
                 "keyslot": {...the data key wrapped for this device...},
                 "rollout": {...optional: see below...}}]}

An entry may carry a ``rollout`` block: the device follows a staged rollout's wave
(edgeai_runtime.device.pull_rollout; docs/rollout.md, "Pull mode, device side")::

    {"id": "digits-2.0.0", "attempt": 1, "action": "update",
     "soak": {"seconds": 300, "p95_ms": 100, "max_error_rate": 0.05, "max_restarts": 0, "min_requests": 20,
              "interval_s": 5}}
    {"id": "digits-2.0.0", "attempt": 1, "action": "rollback", "reason": "wave 1 breached: ..."}

``id`` is the rollout's (``<name>-<version>`` of the version rolled out: for ``update`` the entry's own,
for ``rollback`` the one rolled back from, while the entry names the version before). ``soak`` is
required for ``update`` (``seconds`` in it; the other limits default as in the push rollout), ``reason``
for ``rollback``. Agents older than the block ignore it (they read the keys they know) and install the
entry's version without soak, marks or report.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Tuple

from edgeai_runtime.format.errors import EdgeAIError

DOC_FORMAT = "edgeai.fleet/updates"
DOC_VERSION = 1

ROLLOUT_ACTIONS = ("update", "rollback")
ROLLOUT_KEYS = ("id", "attempt", "action", "soak", "reason")
#: The soak's limits: field -> (integer only, the rule, for the message).
SOAK_FIELDS: Dict[str, Tuple[bool, str]] = {
    "seconds": (False, "0 or more"), "p95_ms": (False, "positive"), "max_error_rate": (False, "within 0-1"),
    "max_restarts": (True, "0 or more"), "min_requests": (True, "0 or more"), "interval_s": (False, "positive")}


class RolloutBlockError(EdgeAIError, ValueError):
    """An entry's ``rollout`` block (or a soak's limits) that does not check; ``str()`` names the field."""

    default_reason = "bad_rollout"


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes the document's signature covers (sorted keys, no spaces)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if integer else isinstance(value, (int, float))


def _fits(value: float, rule: str) -> bool:
    return {"0 or more": value >= 0, "positive": value > 0, "within 0-1": 0 <= value <= 1}[rule]


def soak_problems(limits: Mapping[str, Any]) -> List[Tuple[str, str]]:
    """The soak limits' fields that do not check, as (field, message): the one rule for the limits, which the
    soak (edgeai_runtime.device.rollout.SoakLimits) and the update document both ask. Unknown fields are
    problems; missing ones are not (they have defaults)."""
    problems = [(key, "%s is not a soak limit (limits: %s)" % (key, ", ".join(SOAK_FIELDS)))
                for key in sorted(limits) if key not in SOAK_FIELDS]
    for key, (integer, rule) in SOAK_FIELDS.items():
        if key not in limits:
            continue
        value = limits[key]
        if not _number(value, integer):
            problems.append((key, "%s must be %s, got %r" % (key, "an integer" if integer else "a number", value)))
        elif not _fits(value, rule):
            shown = "interval" if key == "interval_s" else key
            problems.append((key, "%s must be %s, got %s" % (shown, rule, value)))
    return problems


def rollout_version(block: Mapping[str, Any], name: str) -> str:
    """The version a (checked) rollout block rolls out: its id is ``<name>-<version>``."""
    return str(block["id"])[len(name) + 1:]


def check_rollout(block: Any, name: str, version: str) -> Dict[str, Any]:
    """An entry's ``rollout`` block, checked against the entry it is in (``name``, ``version``); returned
    as given. Raises RolloutBlockError naming the first field that does not check."""
    if not isinstance(block, dict):
        raise RolloutBlockError("rollout must be an object, got %s" % type(block).__name__)
    unknown = sorted(set(block) - set(ROLLOUT_KEYS))
    if unknown:
        raise RolloutBlockError("rollout.%s is not a field of the rollout block (fields: %s)"
                                % (unknown[0], ", ".join(ROLLOUT_KEYS)))
    ident, attempt, action = block.get("id"), block.get("attempt"), block.get("action")
    prefix = "%s-" % name
    if not isinstance(ident, str) or not ident.startswith(prefix) or len(ident) == len(prefix):
        raise RolloutBlockError("rollout.id must be \"%s<version>\", got %r" % (prefix, ident))
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise RolloutBlockError("rollout.attempt must be an integer of 1 or more, got %r" % (attempt,))
    if action not in ROLLOUT_ACTIONS:
        raise RolloutBlockError("rollout.action must be one of %s, got %r" % (", ".join(ROLLOUT_ACTIONS), action))
    target = rollout_version(block, name)
    if action == "update" and target != version:
        raise RolloutBlockError("rollout.id %s is not this entry's version (%s %s): an update rolls out the entry's "
                                "own version" % (ident, name, version))
    if action == "rollback" and target == version:
        raise RolloutBlockError("rollout.id %s names the entry's own version: a rollback's entry is the version "
                                "before" % ident)
    soak = block.get("soak")
    if action == "update" or soak is not None:
        if not isinstance(soak, dict):
            raise RolloutBlockError("rollout.soak must be an object of soak limits, got %r" % (soak,))
        if "seconds" not in soak:
            raise RolloutBlockError("rollout.soak.seconds is missing")
        problems = soak_problems(soak)
        if problems:
            raise RolloutBlockError("rollout.soak.%s: %s" % problems[0])
    reason = block.get("reason")
    if (action == "rollback" or reason is not None) and (not isinstance(reason, str) or not reason.strip()):
        raise RolloutBlockError("rollout.reason must be a non-empty string (why the fleet is rolled back), got %r"
                                % (reason,))
    return block
