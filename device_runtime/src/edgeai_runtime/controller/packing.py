"""Packing a model into an artifact (the controller side). The format: docs/artifact-format.md and
edgeai_runtime.format.artifact, which the device opens and verifies with."""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

from cryptography.hazmat.primitives.asymmetric import ed25519

from edgeai_runtime import __version__
from edgeai_runtime.fsutil import atomic_output
from edgeai_runtime.format.artifact import (CIPHERS, DEFAULT_CHUNK, FORMAT, FORMAT_VERSION, MAGIC, MAX_CHUNK, MIN_CHUNK,
                                            PREAMBLE, SIGNATURE_BYTES, TAG_BYTES, ZERO_HEX, ChunkHasher, Envelope,
                                            Hasher, aead_into, canonical, key_commitment, read_exact)
from edgeai_runtime.format.keys import DATA_KEY_BYTES, ArtifactError, key_id, key_type
from edgeai_runtime.format.manifest import Manifest, ManifestError


@dataclass(frozen=True)
class Packed:
    path: str
    header: Dict[str, Any]
    data_key: bytes
    seconds: float

    @property
    def artifact_id(self) -> str:
        return str(self.header["artifact_id"])


def pack(model_path: str, out_path: str, manifest_fields: Mapping[str, Any], signing_key: ed25519.Ed25519PrivateKey,
         cipher: str = "aes-256-gcm", chunk_size: int = DEFAULT_CHUNK, data_key: Optional[bytes] = None,
         created: Optional[str] = None) -> Packed:
    """Encrypt and sign ``model_path`` into ``out_path`` (written beside, then renamed into place).

    ``manifest_fields`` are the manifest's fields but for sha256 and size, which are measured here.
    One pass over the model; the header's digests are filled in at the end (they have a fixed
    length, so the header keeps its size).
    """
    started = time.perf_counter()
    if cipher not in CIPHERS:
        raise ArtifactError("bad_format", "cipher %r is not one of %s" % (cipher, ", ".join(CIPHERS)))
    if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
        raise ArtifactError("bad_format", "chunk size %d is outside %d-%d bytes" % (chunk_size, MIN_CHUNK, MAX_CHUNK))
    if key_type(signing_key) != "ed25519":
        raise ArtifactError("bad_key", "the signing key must be Ed25519, not %s" % key_type(signing_key))
    data_key = data_key or secrets.token_bytes(DATA_KEY_BYTES)
    size = os.path.getsize(model_path)
    if size <= 0:
        raise ArtifactError("bad_format", "model %s is empty" % model_path)
    artifact_id = secrets.token_hex(16)
    envelope = Envelope(artifact_id, cipher, chunk_size, -(-size // chunk_size), secrets.token_bytes(8),
                        key_commitment(data_key, artifact_id), size)
    fields = dict(manifest_fields)
    fields.update(sha256=ZERO_HEX, size=size,
                  created=created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  min_runtime_version=fields.get("min_runtime_version") or __version__)
    try:
        manifest = Manifest.from_dict(fields)
    except ManifestError as exc:
        raise ArtifactError("bad_manifest", "manifest: %s" % exc) from None
    manifest_doc = manifest.to_dict()
    payload: Dict[str, object] = {"size": envelope.payload_size, "chunks_sha256": ZERO_HEX}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "artifact_id": artifact_id,
              "signer": key_id(signing_key), "manifest": manifest_doc, "envelope": envelope.to_dict(),
              "payload": payload}
    provisional = canonical(header)
    aead = CIPHERS[cipher](data_key)
    plain_hash, cipher_hash = Hasher(chunk_size), ChunkHasher(chunk_size + TAG_BYTES, envelope.chunks)
    try:
        with open(model_path, "rb") as src, atomic_output(out_path) as out:
            out.write(PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(provisional)) + provisional
                      + b"\0" * SIGNATURE_BYTES)
            for index in range(envelope.chunks):
                want = envelope.plain_len(index)
                plain = plain_hash.take()
                view = memoryview(plain)[:want]
                if read_exact(src, view) != want:
                    raise ArtifactError("io", "model %s changed size while being packed" % model_path)
                sealed = cipher_hash.take()
                sealed_view = memoryview(sealed)[:want + TAG_BYTES]
                if aead_into(aead):
                    aead.encrypt_into(envelope.nonce(index), view, envelope.aad(index), sealed_view)
                else:
                    sealed_view[:] = aead.encrypt(envelope.nonce(index), bytes(view), envelope.aad(index))
                out.write(sealed_view)
                plain_hash.feed(index, view, plain)
                cipher_hash.feed(index, sealed_view, sealed)
            if src.read(1):
                raise ArtifactError("io", "model %s grew while being packed" % model_path)
            manifest_doc["sha256"] = plain_hash.hexdigest()
            payload["chunks_sha256"] = cipher_hash.hexdigest()
            final = canonical(header)
            assert len(final) == len(provisional), "header length changed while filling in digests"
            preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(final))
            out.seek(0)
            out.write(preamble + final + signing_key.sign(preamble + final))
    finally:
        plain_hash.close()
        cipher_hash.close()
    return Packed(out_path, header, data_key, time.perf_counter() - started)
