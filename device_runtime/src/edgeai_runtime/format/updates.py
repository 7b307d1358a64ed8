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
                 "keyslot": {...the data key wrapped for this device...}}]}

"""
from __future__ import annotations

import json
from typing import Any, Mapping

DOC_FORMAT = "edgeai.fleet/updates"
DOC_VERSION = 1


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes the document's signature covers (sorted keys, no spaces)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
