"""Rebuilding an artifact on the device from a delta (the format: edgeai_runtime.format.delta) against
a version the store holds. The OTA installer installs what it gives like any artifact."""
from __future__ import annotations

from typing import Any, Dict

from edgeai_runtime.device.store import ModelStore, StoreError
from edgeai_runtime.format.delta import Delta
from edgeai_runtime.format.keys import ArtifactError


def rebuild(store: ModelStore, path: str, keyslot: Dict[str, Any], out_path: str) -> Dict[str, Any]:
    """Rebuild the artifact a delta (edgeai_runtime.format.delta) carries into ``out_path``, patching the
    version of its model that ``store`` holds whose sha256 is the delta's base. Stores nothing; the rebuilt
    artifact is installed like any other. Raises ArtifactError (reason ``delta_*`` and the like)."""
    delta = Delta.open(path, store.trusted_signers())
    base = delta.base
    held = [v for v in store.versions(base["name"]) if store.holds(base["name"], v, base["sha256"])]
    if not held:
        raise ArtifactError("delta_base_missing", "%s patches %s %s (sha256 %s), which this device does not hold "
                            "(it holds: %s)" % (path, base["name"], base["version"], base["sha256"][:12],
                                                ", ".join(store.versions(base["name"])) or "none"))
    active = store.active(base["name"])
    base_version = active if active is not None and active in held else held[-1]
    try:
        model = store.read_model(base["name"], base_version)
    except StoreError as exc:
        raise ArtifactError("delta_base_missing", "%s: its base %s %s does not load: %s"
                            % (path, base["name"], base_version, exc)) from None
    data_key = store.keyring.open_slot(keyslot, delta.target["artifact_id"])
    delta.rebuild(model, data_key, out_path)
    return {"base_version": base_version, "bytes": delta.size, "full_bytes": delta.target["artifact_size"],
            "bytes_saved": delta.target["artifact_size"] - delta.size}
