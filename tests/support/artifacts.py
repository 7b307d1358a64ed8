"""Signed artifacts for tests: a fleet signing key, devices that trust it, and packed digits models."""
from __future__ import annotations

import hashlib
import os
from typing import Dict, Tuple

from edgeai_runtime.controller import packing
from edgeai_runtime.format import artifact, keys
from edgeai_runtime.format.keys import DeviceKeyring

from . import digits_store


def trust(root: str, signer) -> str:
    """Make a device root trust ``signer``, as the device_keys role does."""
    signers = os.path.join(root, "etc", "signers")
    os.makedirs(signers, exist_ok=True)
    path = os.path.join(signers, "%s.pub" % keys.key_id(signer))
    with open(path, "w", encoding="ascii") as f:
        f.write(keys.public_pem(signer))
    return path


def device(root: str, signer, key_type: str = "x25519") -> DeviceKeyring:
    """A device root that trusts ``signer`` and holds its own key pair."""
    trust(root, signer)
    ring = DeviceKeyring(root)
    if ring.current() is None:
        ring.create(key_type)
    return ring


def pack_digits(out_dir: str, version: str, model: bytes, digits, signer, runtime: str = "onnxruntime",
                cipher: str = "aes-256-gcm", **manifest_kwargs) -> Tuple[str, packing.Packed, Dict[str, bytes]]:
    """Pack a digits model with its gate files named in the signed manifest."""
    manifest, files = digits_store.digits_manifest(version, model, digits, runtime=runtime, **manifest_kwargs)
    fields = manifest.to_dict()
    for key in ("sha256", "size", "created", "min_runtime_version"):
        fields.pop(key)
    fields["files"] = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    src = os.path.join(out_dir, "%s-%s.model" % (manifest.name, version))
    with open(src, "wb") as f:
        f.write(model)
    out = os.path.join(out_dir, "%s-%s.eaf" % (manifest.name, version))
    packed = packing.pack(src, out, fields, signer, cipher=cipher, chunk_size=artifact.MIN_CHUNK)
    os.unlink(src)
    return out, packed, files


def slot_for(packed: packing.Packed, ring: DeviceKeyring) -> dict:
    return keys.wrap(packed.data_key, keys.load_public(ring.current().public_pem), packed.artifact_id)


def flip(path, offset):
    """Flip the lowest bit of one byte of a file (a corrupt byte)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
