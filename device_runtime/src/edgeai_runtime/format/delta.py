"""Binary deltas between model versions. Spec: docs/artifact-format.md, "Delta files".

A delta carries a new version (the target) as a zstd patch against the plaintext of a version the
device already holds (the base): zstd's patch-from mode, with the base as a raw-content
dictionary. The device rebuilds the target artifact byte for byte: it decrypts the base in
memory, applies the patch, checks the target's sha256, and seals the chunks again under the
target's own envelope (same data key, nonces and associated data, hence the same ciphertext).
The rebuilt file must then match the target's signed payload digest, and the installer treats it
like any artifact it received whole. Plaintext is never written to disk.

Layout::

    preamble     16 bytes   magic "EDGEAIMD", format version (u16), flags (u16, 0), header length (u32)
    header       JSON       canonical: format, format_version, delta_id, signer, base, target, patch
    signature    64 bytes   Ed25519 over preamble || header
    target head             the target artifact's preamble, header and signature, verbatim
    sealed patch            the zstd frame sealed with the target's cipher under
                            HKDF-SHA256(data key, info = context || delta_id), nonce ``patch.nonce``,
                            associated data sha256(preamble || header)

Memory on the device: the base and the target plaintext (two models) and the patch; on the
controller zstd's match tables besides (about 8 bytes per base byte, at most 1 GiB).
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
from typing import Any, Dict, Mapping

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeai_runtime.format import artifact
from edgeai_runtime.format.artifact import CIPHERS, PREAMBLE, SIGNATURE_BYTES, TAG_BYTES, Envelope, canonical, chunk_list_digest
from edgeai_runtime.format.keys import ArtifactError
from edgeai_runtime.fsutil import atomic_output

MAGIC = b"EDGEAIMD"
FORMAT = "edgeai.fleet/model-delta"
FORMAT_VERSION = 1
SUFFIX = ".eafd"
ALGORITHM = "zstd-patch-from"
#: zstd's window must reach back over base and target; 2^30 is the most a 32-bit device decodes.
MAX_WINDOW_LOG = 30
_KEY_CONTEXT = b"edgeai.fleet delta patch key v1\0"
ZERO = "0" * 64
_MAX_HEADER = 64 << 10
_MAX_HEAD = (1 << 20) + PREAMBLE.size + SIGNATURE_BYTES


def zstd_module() -> Any:
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency of the package
        raise ArtifactError("delta_unsupported", "deltas need the zstandard package (pip install zstandard)") from None
    return zstandard


def patch_key(data_key: bytes, delta_id: str) -> bytes:
    """The patch's own key: a delta never seals with the data key itself, so its nonces cannot
    collide with the artifact's."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_KEY_CONTEXT + bytes.fromhex(delta_id)).derive(data_key)


class Delta:
    """A delta whose signature has been checked; ``rebuild`` checks everything else."""

    def __init__(self, path: str, header: Dict[str, Any], head: bytes, patch_offset: int,
                 target_artifact: artifact.Artifact) -> None:
        self.path = path
        self.header = header
        self.head = head
        self.patch_offset = patch_offset
        #: The target artifact as its embedded head describes it (its own signature checked).
        self.target_artifact = target_artifact

    @property
    def base(self) -> Dict[str, Any]:
        return dict(self.header["base"])

    @property
    def target(self) -> Dict[str, Any]:
        return dict(self.header["target"])

    @property
    def size(self) -> int:
        return os.path.getsize(self.path)

    @classmethod
    def open(cls, path: str, trusted_signers: Mapping[str, ed25519.Ed25519PublicKey]) -> "Delta":
        try:
            with open(path, "rb") as f:
                preamble, version, body, signature = artifact.read_signed_head(
                    f, path, MAGIC, _MAX_HEADER, ("delta_format", "delta_format", "delta_truncated"))
                if version != FORMAT_VERSION:
                    raise ArtifactError("delta_format", "%s is delta format %d; this runtime reads format %d"
                                        % (path, version, FORMAT_VERSION))
                header = _parse(path, body)
                signer = trusted_signers.get(header["signer"]) if isinstance(header.get("signer"), str) else None
                if signer is None:
                    raise ArtifactError("untrusted_signer", "%s is signed by key %s, which is not trusted here"
                                        % (path, header.get("signer")))
                try:
                    signer.verify(signature, preamble + body)
                except InvalidSignature:
                    raise ArtifactError("delta_tampered", "%s: the signature does not verify with signer key %s"
                                        % (path, header.get("signer"))) from None
                _check_header(path, header)
                target = header["target"]
                head = f.read(target["head_size"])
                patch_offset = f.tell()
                size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise ArtifactError("io", "reading delta %s: %s" % (path, exc.strerror)) from None
        if len(head) != target["head_size"] or size != patch_offset + header["patch"]["size"] + TAG_BYTES:
            raise ArtifactError("delta_truncated", "%s is %d bytes; its header says %d" % (
                path, size, patch_offset - len(head) + target["head_size"] + header["patch"]["size"] + TAG_BYTES))
        if not hmac.compare_digest(hashlib.sha256(head).hexdigest(), target["head_sha256"]):
            raise ArtifactError("delta_checksum", "%s: the target artifact's header does not match the delta's "
                                "signed digest" % path)
        # The embedded head is an artifact header in its own right: signature, format, manifest and
        # envelope; and it must be the target the delta names.
        try:
            art = artifact.Artifact.from_head(io.BytesIO(head), "%s (target head)" % path, trusted_signers)
        except ArtifactError as exc:
            raise ArtifactError("delta_format", str(exc)) from None
        m = art.manifest
        named = (target["artifact_id"], target["name"], target["version"], target["sha256"], target["size"])
        if (art.artifact_id, m.name, m.version, m.sha256, m.size) != named:
            raise ArtifactError("delta_format", "%s: the embedded head is %s %s (artifact %s), not the target the "
                                "delta names" % (path, m.name, m.version, art.artifact_id))
        return cls(path, header, head, patch_offset, art)

    def check_sealed(self) -> bytes:
        """The sealed patch, after checking it against the signed digest."""
        with open(self.path, "rb") as f:
            f.seek(self.patch_offset)
            sealed = f.read()
        if not hmac.compare_digest(hashlib.sha256(sealed).hexdigest(), self.header["patch"]["sealed_sha256"]):
            raise ArtifactError("delta_checksum", "%s: the patch does not match the delta's signed digest (corrupt "
                                "or truncated in transit)" % self.path)
        return sealed

    def rebuild(self, base_model: bytes, data_key: bytes, out_path: str) -> None:
        """Write the target artifact to ``out_path`` from the base plaintext; checks the base, the
        sealed patch, the target's sha256 and the rebuilt payload digest. Nothing is left at
        ``out_path`` on failure."""
        base, target = self.base, self.target
        if len(base_model) != base["size"] or hashlib.sha256(base_model).hexdigest() != base["sha256"]:
            raise ArtifactError("delta_base", "%s patches %s %s (sha256 %s), not the model given"
                                % (self.path, base["name"], base["version"], base["sha256"]))
        self.target_artifact.check_key(data_key)
        envelope = self.target_artifact.envelope
        sealed = self.check_sealed()
        try:
            patch = CIPHERS[envelope.cipher](patch_key(data_key, self.header["delta_id"])).decrypt(
                bytes.fromhex(self.header["patch"]["nonce"]), sealed,
                aad(self.header["delta_id"], self.base["sha256"], self.target["artifact_id"]))
        except InvalidTag:
            raise ArtifactError("delta_tampered", "%s: the patch fails authentication" % self.path) from None
        del sealed
        model = self._apply(base_model, patch)
        del patch
        if len(model) != target["size"] or hashlib.sha256(model).hexdigest() != target["sha256"]:
            raise ArtifactError("delta_result", "%s: the patched model does not match %s %s's sha256"
                                % (self.path, target["name"], target["version"]))
        self._seal(model, data_key, envelope, self.target_artifact.payload_digest, out_path)

    # -- internals ---------------------------------------------------------------------------

    def _apply(self, base_model: bytes, patch: bytes) -> bytes:
        zstd = zstd_module()
        window = self.header["patch"]["window_log"]
        try:  # zstandard sizes its output from the frame header: check that before it allocates
            frame = zstd.get_frame_parameters(patch)
        except zstd.ZstdError as exc:
            raise ArtifactError("delta_patch", "%s: the patch is not a zstd frame: %s" % (self.path, exc)) from None
        if frame.content_size != self.target["size"] or frame.window_size > 1 << window:
            raise ArtifactError("delta_patch", "%s: the patch's frame declares %s bytes in a %d-byte window; the "
                                "target is %d bytes, the window at most %d"
                                % (self.path, frame.content_size, frame.window_size, self.target["size"], 1 << window))
        try:
            dictionary = zstd.ZstdCompressionDict(base_model, dict_type=zstd.DICT_TYPE_RAWCONTENT)
            model: bytes = zstd.ZstdDecompressor(dict_data=dictionary, max_window_size=1 << window).decompress(
                patch, max_output_size=self.target["size"])
            return model
        except zstd.ZstdError as exc:
            raise ArtifactError("delta_patch", "%s: the patch does not apply: %s" % (self.path, exc)) from None

    def _seal(self, model: bytes, data_key: bytes, envelope: Envelope, payload_digest: str, out_path: str) -> None:
        aead = CIPHERS[envelope.cipher](data_key)
        view = memoryview(model)
        digests = []
        try:
            with atomic_output(out_path, 0o640) as out:
                out.write(self.head)
                for index in range(envelope.chunks):
                    start = index * envelope.chunk_size
                    sealed = aead.encrypt(envelope.nonce(index), view[start:start + envelope.plain_len(index)],
                                          envelope.aad(index))
                    digests.append(hashlib.sha256(sealed).digest())
                    out.write(sealed)
                if not hmac.compare_digest(chunk_list_digest(digests), payload_digest):
                    raise ArtifactError("delta_result", "%s: the rebuilt payload does not match artifact %s's signed "
                                        "digest" % (self.path, self.target["artifact_id"]))
        except OSError as exc:
            raise ArtifactError("io", "writing the rebuilt artifact %s: %s" % (out_path, exc.strerror)) from None
        finally:
            view.release()


def aad(delta_id: str, base_sha256: str, artifact_id: str) -> bytes:
    """The patch's associated data: which delta, from which base, to which artifact."""
    return _KEY_CONTEXT + canonical([delta_id, base_sha256, artifact_id])


def _parse(path: str, body: bytes) -> Dict[str, Any]:
    try:
        header = json.loads(body)
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise ArtifactError("delta_tampered", "%s: the header is not a JSON object (edited or corrupt)" % path)
    return header


def _check_header(path: str, header: Dict[str, Any]) -> None:
    """The fields ``rebuild`` relies on, with their types: the header is signed, but by a key that
    may sign a wrong one; a clear refusal beats a KeyError."""
    refused = ArtifactError("delta_format", "%s: the header is not a format %d delta header" % (path, FORMAT_VERSION))
    base, target, patch = header.get("base"), header.get("target"), header.get("patch")
    if not (header.get("format") == FORMAT and header.get("format_version") == FORMAT_VERSION
            and isinstance(base, dict) and isinstance(target, dict) and isinstance(patch, dict)):
        raise refused
    ok = artifact._is_hex(header.get("delta_id"), 32) and patch.get("algorithm") == ALGORITHM
    ok = ok and all(isinstance(v, int) and v > 0 for v in (
        base.get("size"), target.get("size"), target.get("head_size"), target.get("artifact_size"), patch.get("size"),
        patch.get("window_log")))
    ok = ok and all(artifact._is_hex(d.get(k), 64) for d, k in (
        (base, "sha256"), (target, "sha256"), (target, "head_sha256"), (target, "artifact_sha256"),
        (patch, "sealed_sha256")))
    ok = ok and artifact._is_hex(target.get("artifact_id"), 32) and artifact._is_hex(patch.get("nonce"), 24)
    ok = ok and isinstance(base.get("name"), str) and base.get("name") == target.get("name")
    ok = ok and PREAMBLE.size + SIGNATURE_BYTES < target.get("head_size", 0) <= _MAX_HEAD
    ok = ok and patch.get("window_log", 99) <= MAX_WINDOW_LOG
    if not ok:
        raise refused
