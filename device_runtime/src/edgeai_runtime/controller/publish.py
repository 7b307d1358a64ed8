"""Publishing the pull-mode registry (the controller side): the artifacts, their gate files and
deltas, and a signed update document per device. The layout and the document:
edgeai_runtime.format.updates; the device reads it with edgeai_runtime.device.agent."""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from edgeai_runtime.fsutil import read_json_or_none, write_atomic
from edgeai_runtime.format.artifact import read_header, sha256_file
from edgeai_runtime.format.keys import ArtifactError, key_id, load_public
from edgeai_runtime.format.updates import DOC_FORMAT, DOC_VERSION, RolloutBlockError, canonical, check_rollout


def publish(registry: str, signing_key: Any, releases: List[Dict[str, Any]], devices: Mapping[str, str],
            wrap: Callable[[str, str], Dict[str, Any]], sequence: Optional[int] = None,
            per_device: Optional[Mapping[str, List[Dict[str, Any]]]] = None,
            keep_before: Optional[str] = None) -> Dict[str, Any]:
    """Write the registry: each release's artifact and gate files (copied once), and for every
    device (key id -> public key PEM) a signed update document with its own key slots.

    ``releases``: [{"artifact": path, "files": {name: path}, "force": bool, "deltas": [{"path": delta file,
    "base_version": v, "base_sha256": sha}], "rollout": {...}}]; ``rollout`` (optional) is copied into the
    release's entry as its rollout block (edgeai_runtime.format.updates; checked first: a bad block fails the
    publication, naming the release, before anything is written); ``per_device`` (key id -> releases) gives a device
    releases of its own instead (the variants that fit it); ``wrap(artifact, pem)``
    returns the artifact's key slot for one device. ``sequence`` defaults to the time in seconds,
    so a later publication always supersedes an earlier one. A device whose document would say the
    same (same models, versions, artifacts and files, rollout blocks, key slots for the same key) keeps
    its document: publishing again changes nothing. ``keep_before`` (a directory): before a device's document is
    first replaced by one carrying a rollout block, the document it had is kept there (``<key id>.json``, once per
    rollout: a later publication of the same rollout keeps the first), for publish_rollback."""
    sequence = int(time.time()) if sequence is None else sequence
    per_device = per_device or {}
    everything = list(releases) + [r for device in sorted(per_device) for r in per_device[device]]
    for release in everything:
        _check_rollout_of(release)
    os.makedirs(os.path.join(registry, "artifacts"), exist_ok=True)
    os.makedirs(os.path.join(registry, "updates"), exist_ok=True)
    entries: Dict[str, Dict[str, Any]] = {}
    copied = False
    for release in everything:
        if release["artifact"] not in entries:
            entries[release["artifact"]], did_copy = _entry(registry, release)
            copied |= did_copy
    written = []
    for device, pem in sorted(devices.items()):
        if key_id(load_public(pem)) != device:
            raise ArtifactError("bad_key", "the public key given for device %s has key id %s"
                                % (device, key_id(load_public(pem))))
        path = os.path.join(registry, "updates", device + ".json")
        theirs = per_device.get(device, releases)
        mine = [entries[r["artifact"]] for r in theirs]
        wanted = [dict({k: v for k, v in e.items() if k != "source"},
                       **({"rollout": dict(r["rollout"])} if r.get("rollout") is not None else {}))
                  for r, e in zip(theirs, mine)]
        if _same_document(path, wanted, device):
            continue
        if keep_before is not None:
            _keep_before(path, keep_before, device, [w["rollout"]["id"] for w in wanted if "rollout" in w])
        models = [dict(w, keyslot=wrap(e["source"], pem)) for w, e in zip(wanted, mine)]
        doc = {"format": DOC_FORMAT, "format_version": DOC_VERSION, "device": device, "sequence": sequence,
               "issued": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": models}
        body = canonical(doc)
        write_atomic(path + ".sig", signing_key.sign(body), 0o644)  # signature first: a reader never pairs
        write_atomic(path, body, 0o644)                              # a new document with an old signature
        written.append(path)
    return {"changed": copied or bool(written), "registry": registry, "sequence": sequence, "documents": written,
            "models": list(dict.fromkeys("%s %s" % (e["name"], e["version"]) for e in entries.values()))}


def _keep_before(path: str, keep_dir: str, device: str, rollout_ids: List[str]) -> None:
    """Keep the document at ``path`` in ``keep_dir`` unless one is kept already, or it carries one of these
    rollouts already (it is not from before them)."""
    kept = os.path.join(keep_dir, device + ".json")
    if not rollout_ids or os.path.exists(kept) or not os.path.exists(path):
        return
    with open(path, "rb") as f:
        body = f.read()
    try:
        models = json.loads(body).get("models") or []
    except ValueError:
        return  # a torn or foreign document is nothing to go back to
    if any((m.get("rollout") or {}).get("id") in rollout_ids for m in models):
        return
    os.makedirs(keep_dir, exist_ok=True)
    write_atomic(kept, body, 0o644)


def publish_rollback(registry: str, signing_key: Any, devices: Mapping[str, str], rollout: Mapping[str, Any],
                     keep_dir: str, wrap: Callable[[str, str], Dict[str, Any]],
                     sequence: Optional[int] = None) -> Dict[str, Any]:
    """The fleet rollback in pull mode: each device's document goes back to the entry it had before the rollout
    (as ``keep_before`` kept it), carrying ``rollout`` (a block of action ``rollback``: id, attempt, reason), its
    key slot wrapped again for the device's key. The other models of its current document stay. ``devices``: key
    id -> public key PEM. A device without a kept document, or whose current document does not carry the rollout,
    is not written and is listed in ``refused`` with the reason. Publishing the same rollback again changes
    nothing."""
    sequence = int(time.time()) if sequence is None else sequence
    refused: Dict[str, str] = {}
    written: List[str] = []
    for device, pem in sorted(devices.items()):
        path = os.path.join(registry, "updates", device + ".json")
        current = _read_json(path)
        models = list((current or {}).get("models") or [])
        index = next((i for i, m in enumerate(models) if (m.get("rollout") or {}).get("id") == rollout["id"]), None)
        if index is None:
            refused[device] = "its update document %s carries no rollout %s: nothing was published to roll back" % (
                path, rollout["id"])
            continue
        name = models[index]["name"]
        before = next((m for m in (_read_json(os.path.join(keep_dir, device + ".json")) or {}).get("models") or []
                       if m.get("name") == name), None)
        if before is None:
            refused[device] = ("no update document from before the rollout %s is kept in %s (the device had none "
                               "for %s): roll it back over SSH" % (rollout["id"], keep_dir, name))
            continue
        # Forced: the version before is older, and the device must take it whether or not its store still holds it.
        entry = dict({k: v for k, v in before.items() if k not in ("keyslot", "rollout")}, force=True,
                     rollout=dict(rollout))
        try:
            check_rollout(entry["rollout"], name, entry["version"])
        except RolloutBlockError as exc:
            refused[device] = "the rollback of %s cannot be published: %s" % (rollout["id"], exc)
            continue
        wanted = [{k: v for k, v in m.items() if k != "keyslot"} for m in models]
        wanted[index] = entry
        if _same_document(path, wanted, device):
            continue
        models[index] = dict(entry, keyslot=wrap(os.path.join(registry, entry["artifact"]["path"]), pem))
        doc = {"format": DOC_FORMAT, "format_version": DOC_VERSION, "device": device,
               "sequence": max(sequence, int((current or {}).get("sequence") or 0) + 1),
               "issued": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": models}
        body = canonical(doc)
        write_atomic(path + ".sig", signing_key.sign(body), 0o644)
        write_atomic(path, body, 0o644)
        written.append(path)
    return {"changed": bool(written), "registry": registry, "documents": written, "refused": refused}


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    found = read_json_or_none(path)
    return found if isinstance(found, dict) else None


def _check_rollout_of(release: Mapping[str, Any]) -> None:
    """Refuse a release whose rollout block the devices would refuse (the same check as theirs)."""
    if release.get("rollout") is None:
        return
    manifest = read_header(release["artifact"])["manifest"]
    try:
        check_rollout(release["rollout"], manifest["name"], manifest["version"])
    except RolloutBlockError as exc:
        raise RolloutBlockError("publishing %s %s (%s): %s"
                                % (manifest["name"], manifest["version"], release["artifact"], exc)) from None


def _entry(registry: str, release: Dict[str, Any]) -> Tuple[Dict[str, Any], bool]:
    """One release's entry of the update document, its files copied into the registry; and
    whether anything had to be copied."""
    header = read_header(release["artifact"])
    base = os.path.basename(release["artifact"])
    artifact_rel = "artifacts/" + base
    copied = _copy_if_changed(release["artifact"], os.path.join(registry, artifact_rel))
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
    entry = {"name": header["manifest"]["name"], "version": header["manifest"]["version"],
             "model_sha256": header["manifest"]["sha256"],
             "force": bool(release.get("force")), "source": release["artifact"],
             "artifact": {"path": artifact_rel, "sha256": sha256_file(release["artifact"]),
                          "size": os.path.getsize(release["artifact"])}, "files": files,
             **({"deltas": deltas} if deltas else {})}
    return entry, copied


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
