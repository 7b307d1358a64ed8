"""Making deltas between model versions (the controller side). The format and the device's reader:
edgeai_runtime.format.delta, and docs/artifact-format.md, "Delta files"."""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from cryptography.hazmat.primitives.asymmetric import ed25519

from edgeai_runtime.fsutil import atomic_output
from edgeai_runtime.format import artifact
from edgeai_runtime.format.artifact import CIPHERS, PREAMBLE, SIGNATURE_BYTES, TAG_BYTES, canonical
from edgeai_runtime.format.delta import (ALGORITHM, FORMAT, FORMAT_VERSION, MAGIC, MAX_WINDOW_LOG, ZERO, aad, patch_key,
                                         zstd_module)
from edgeai_runtime.format.keys import ArtifactError, key_id

#: A delta whose sealed patch is above this share of the full artifact is not worth shipping.
WORTH_SHIPPING = 0.5


def window_log(base_size: int, target_size: int) -> int:
    return max(20, (base_size + target_size).bit_length())


def compression_parameters(base_size: int, target_size: int) -> Any:
    """Parameters that find matches anywhere in the base: a window over base and target, and hash
    and chain tables about as large as the base (zstd's default tables for a level index only a
    few MiB, so most of a large base would be out of reach: 8% saved instead of 99.7% on a 50 MB
    model whose last layer changed; see bench/bench_ota.py)."""
    zstd = zstd_module()
    tables = min(27, max(16, base_size.bit_length() - 1))
    return zstd.ZstdCompressionParameters(window_log=window_log(base_size, target_size), hash_log=tables,
                                          chain_log=tables, search_log=3, min_match=5,
                                          strategy=zstd.STRATEGY_LAZY, write_content_size=True,
                                          write_checksum=False, threads=0)


@dataclass
class Made:
    """What ``make`` wrote: the delta, how big it is against the full artifact, how long it took."""
    path: str
    header: Dict[str, Any]
    size: int
    full_size: int
    seconds: float

    @property
    def bytes_saved(self) -> int:
        return self.full_size - self.size


def make(base_model: bytes, base_manifest: Mapping[str, Any], target_path: str, data_key: bytes,
         signing_key: ed25519.Ed25519PrivateKey, out_path: str,
         target_model: Optional[bytes] = None) -> Optional[Made]:
    """Write a delta from the base plaintext to the artifact at ``target_path`` (whose data key is
    ``data_key``). Returns None, writing nothing, when it would not save at least half the bytes or
    base and target are too large for a window a 32-bit device decodes."""
    started = time.perf_counter()
    target = artifact.Artifact.open(target_path, {key_id(signing_key.public_key()): signing_key.public_key()})
    target.check_key(data_key)
    tm = target.manifest
    if base_manifest.get("name") != tm.name:
        raise ArtifactError("bad_manifest", "a delta joins versions of one model: base is %s, target %s"
                            % (base_manifest.get("name"), tm.name))
    if hashlib.sha256(base_model).hexdigest() != base_manifest.get("sha256"):
        raise ArtifactError("model_checksum", "the base model does not match its manifest's sha256")
    if window_log(len(base_model), tm.size) > MAX_WINDOW_LOG:
        return None
    model = target_model if target_model is not None else target.decrypt(data_key)
    zstd = zstd_module()
    params = compression_parameters(len(base_model), tm.size)
    dictionary = zstd.ZstdCompressionDict(base_model, dict_type=zstd.DICT_TYPE_RAWCONTENT)
    patch = zstd.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(model)
    full_size = os.path.getsize(target_path)
    with open(target_path, "rb") as f:
        head = f.read(target.payload_offset)
    delta_id = secrets.token_hex(16)
    nonce = secrets.token_bytes(12)
    patch_doc: Dict[str, object] = {"algorithm": ALGORITHM, "window_log": params.window_log, "size": len(patch),
                                    "nonce": nonce.hex(), "sealed_sha256": ZERO}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "delta_id": delta_id,
              "signer": key_id(signing_key),
              "base": {"name": tm.name, "version": base_manifest.get("version"), "sha256": base_manifest["sha256"],
                       "size": len(base_model)},
              "target": {"artifact_id": target.artifact_id, "name": tm.name, "version": tm.version,
                         "sha256": tm.sha256, "size": tm.size, "head_size": len(head),
                         "head_sha256": hashlib.sha256(head).hexdigest(), "artifact_size": full_size,
                         "artifact_sha256": artifact.sha256_file(target_path)},
              "patch": patch_doc}
    preamble_len = PREAMBLE.size
    sealed_size = len(patch) + TAG_BYTES
    total = preamble_len + len(canonical(header)) + SIGNATURE_BYTES + len(head) + sealed_size
    if total > WORTH_SHIPPING * full_size:
        return None
    sealed = CIPHERS[target.envelope.cipher](patch_key(data_key, delta_id)).encrypt(
        nonce, patch, aad(delta_id, base_manifest["sha256"], target.artifact_id))
    patch_doc["sealed_sha256"] = hashlib.sha256(sealed).hexdigest()
    body = canonical(header)
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(body))
    with atomic_output(out_path) as out:
        out.write(preamble + body + signing_key.sign(preamble + body))
        out.write(head)
        out.write(sealed)
    return Made(out_path, header, os.path.getsize(out_path), full_size, time.perf_counter() - started)
