"""The model artifact: one file, signed with Ed25519, encrypted in chunks. Spec: docs/artifact-format.md.

Layout::

    preamble   16 bytes   magic "EDGEAIMA", format version (u16), flags (u16, 0), header length (u32)
    header     JSON       canonical (sorted keys, no spaces, ASCII): manifest, envelope, payload
    signature  64 bytes   Ed25519 over preamble || header
    payload               chunk 0 .. chunk N-1, each ciphertext || 16-byte tag

The controller packs (edgeai_runtime.controller.packing) and the device opens (``Artifact.open``), verifies
(``verify_payload``) and decrypts straight into memory (``decrypt``), all here, so both
sides share one implementation. Memory: O(chunk) to pack and verify; decrypting holds the
plaintext model (O(model)) plus a few chunk buffers, and never writes plaintext anywhere.
Hashing runs on worker threads (hashlib drops the GIL on large buffers), overlapping
the read and the cipher on the calling thread; the payload's chunks hash in parallel.
"""
from __future__ import annotations

import abc
import contextlib
import hashlib
import hmac
import io
import json
import os
import queue
import struct
import threading
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, Iterator, Mapping, Optional, Protocol, Tuple

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from edgeai_runtime import __version__
from edgeai_runtime.format.keys import DATA_KEY_BYTES, ArtifactError
from edgeai_runtime.format.manifest import Manifest, ManifestError, version_key

MAGIC = b"EDGEAIMA"
FORMAT = "edgeai.fleet/model-artifact"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct(">8sHHI")
SIGNATURE_BYTES = 64
TAG_BYTES = 16
MAX_HEADER_BYTES = 1 << 20
MIN_CHUNK, MAX_CHUNK = 1 << 20, 4 << 20
DEFAULT_CHUNK = 4 << 20
CIPHERS: Dict[str, Callable[[bytes], Any]] = {"aes-256-gcm": AESGCM, "chacha20-poly1305": ChaCha20Poly1305}
SUFFIX = ".eaf"
_ENVELOPE_CONTEXT = b"edgeai.fleet envelope v1\0"
_COMMIT_CONTEXT = b"edgeai.fleet key commitment v1\0"
_PAYLOAD_CONTEXT = b"edgeai.fleet payload chunks v1\0"
ZERO_HEX = "0" * 64

__all__ = ["ArtifactError", "Artifact", "default_cipher", "CIPHERS", "FORMAT_VERSION"]


def default_cipher(cpuinfo: str = "/proc/cpuinfo") -> str:
    """AES-256-GCM where the CPU has AES instructions, ChaCha20-Poly1305 where it has not (Raspberry Pi 4)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return "aes-256-gcm"
    for line in text.splitlines():
        key, _sep, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and "aes" in value.split():
            return "aes-256-gcm"
    return "chacha20-poly1305"


def canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def key_commitment(data_key: bytes, artifact_id: str) -> str:
    """Binds the data key to the signed header: AEADs alone do not commit to their key."""
    return hmac.new(data_key, _COMMIT_CONTEXT + artifact_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Envelope:
    artifact_id: str
    cipher: str
    chunk_size: int
    chunks: int
    nonce_prefix: bytes
    key_commitment: str
    plaintext_size: int

    def to_dict(self) -> Dict[str, Any]:
        return {"cipher": self.cipher, "chunk_size": self.chunk_size, "chunks": self.chunks,
                "nonce_prefix": self.nonce_prefix.hex(), "key_commitment": self.key_commitment,
                "plaintext_size": self.plaintext_size}

    @property
    def digest(self) -> bytes:
        """What every chunk's associated data starts with: fixed before any chunk is encrypted."""
        return hashlib.sha256(_ENVELOPE_CONTEXT + canonical(
            {"artifact_id": self.artifact_id, "format_version": FORMAT_VERSION, "envelope": self.to_dict()})).digest()

    @property
    def payload_size(self) -> int:
        return self.plaintext_size + self.chunks * TAG_BYTES

    def nonce(self, index: int) -> bytes:
        return self.nonce_prefix + struct.pack(">I", index)

    def aad(self, index: int) -> bytes:
        return self.digest + struct.pack(">QB", index, 1 if index == self.chunks - 1 else 0)

    def plain_len(self, index: int) -> int:
        return min(self.chunk_size, self.plaintext_size - index * self.chunk_size)

    @classmethod
    def parse(cls, artifact_id: str, data: Any) -> "Envelope":
        if not isinstance(data, dict):
            raise ArtifactError("bad_format", "envelope must be an object")
        cipher = data.get("cipher")
        if cipher not in CIPHERS:
            raise ArtifactError("bad_format", "cipher %r is not one of %s" % (cipher, ", ".join(CIPHERS)))
        chunk, chunks, size = data.get("chunk_size"), data.get("chunks"), data.get("plaintext_size")
        if not isinstance(chunk, int) or not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise ArtifactError("bad_format", "chunk_size %r is outside %d-%d bytes" % (chunk, MIN_CHUNK, MAX_CHUNK))
        if not isinstance(size, int) or size <= 0 or chunks != -(-size // chunk) or chunks >= 1 << 32:
            raise ArtifactError("bad_format", "chunks %r does not fit plaintext_size %r" % (chunks, size))
        try:
            prefix = bytes.fromhex(data.get("nonce_prefix", ""))
        except (TypeError, ValueError):
            prefix = b""
        if len(prefix) != 8:
            raise ArtifactError("bad_format", "nonce_prefix must be 16 hex digits")
        commitment = data.get("key_commitment")
        if not isinstance(commitment, str) or len(commitment) != 64:
            raise ArtifactError("bad_format", "key_commitment must be 64 hex digits")
        return cls(artifact_id, cipher, chunk, chunks, prefix, commitment, size)


class _Pool(abc.ABC):
    """A pool of reusable chunk buffers and worker threads that consume them (bounded memory).

    ``take`` a buffer, fill it, ``feed`` a view of it with its chunk index; a worker runs
    ``_consume`` on it and puts the buffer back. hashlib drops the GIL on large buffers, so the
    workers run beside the read and the cipher on the calling thread.
    """

    def __init__(self, buffer_size: int, workers: int) -> None:
        self._free: "queue.Queue[bytearray]" = queue.Queue()
        for buf in [bytearray(buffer_size) for i in range(workers + 2)]:
            self._free.put(buf)
        self._work: "queue.Queue[Optional[Tuple[int, memoryview, Optional[bytearray]]]]" = queue.Queue(maxsize=workers)
        self._threads = [threading.Thread(target=self._run, name="artifact-sha256", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def take(self) -> bytearray:
        """A pooled buffer; hand it back through ``feed``."""
        return self._free.get()

    def feed(self, index: int, view: memoryview, pooled: Optional[bytearray] = None) -> None:
        """Consume ``view`` (which must not change until consumed); ``pooled`` goes back to the pool after."""
        self._work.put((index, view, pooled))

    def close(self) -> None:
        """Wait for every fed chunk to be consumed; idempotent."""
        for thread in self._threads:
            if thread.is_alive():
                self._work.put(None)
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            index, view, pooled = item
            self._consume(index, view)
            if pooled is not None:
                self._free.put(pooled)

    @abc.abstractmethod
    def _consume(self, index: int, view: memoryview) -> None:
        """Use one chunk (on a worker thread)."""


class Hasher(_Pool):
    """sha256 of a stream fed in order: one worker (the model's digest, manifest ``sha256``)."""

    def __init__(self, buffer_size: int) -> None:
        self._hash = hashlib.sha256()
        super().__init__(buffer_size, 1)

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()

    def _consume(self, index: int, view: memoryview) -> None:
        self._hash.update(view)


class ChunkHasher(_Pool):
    """The payload digest (``payload.chunks_sha256``): sha256 over the sha256 of each sealed chunk,
    in chunk order. The chunks hash in parallel on ``workers`` threads, so verifying is not held to
    one core's sha256 speed, which is below AES-GCM's on most CPUs (docs/artifact-format.md)."""

    def __init__(self, buffer_size: int, chunks: int, workers: Optional[int] = None) -> None:
        self._digests = [b""] * chunks
        super().__init__(buffer_size, workers or hash_workers())

    def hexdigest(self) -> str:
        self.close()
        return chunk_list_digest(self._digests)

    def _consume(self, index: int, view: memoryview) -> None:
        self._digests[index] = hashlib.sha256(view).digest()


def hash_workers() -> int:
    """Threads that hash payload chunks: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def chunk_list_digest(chunk_digests: "list[bytes]") -> str:
    """``payload.chunks_sha256`` from the sha256 digests of the sealed chunks, in order."""
    outer = hashlib.sha256(_PAYLOAD_CONTEXT)
    for digest in chunk_digests:
        if len(digest) != 32:
            raise ArtifactError("bad_format", "a payload chunk was not hashed")
        outer.update(digest)
    return outer.hexdigest()


def sha256_file(path: str) -> str:
    """sha256 of a whole file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ReadsInto(Protocol):
    """A binary file that reads into a caller's buffer (``open(path, "rb")``, buffered or not)."""

    def readinto(self, buffer: memoryview, /) -> Optional[int]: ...


def read_exact(f: _ReadsInto, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def _new_bytes(size: int) -> Tuple[Any, memoryview]:
    """A new, not yet shared ``bytes`` object and a writable view of its buffer.

    This is what C code does with ``PyBytes_FromStringAndSize(NULL, n)``: fill a fresh bytes
    object before anyone holds it. It lets the model be decrypted straight into the object the
    runtimes take, instead of a bytearray copied into bytes (twice the model in memory).
    Other Python implementations get a bytearray, copied into bytes at the end.
    """
    try:
        import ctypes
        api = ctypes.pythonapi
        api.PyBytes_FromStringAndSize.restype = ctypes.py_object
        api.PyBytes_FromStringAndSize.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
        api.PyBytes_AsString.restype = ctypes.c_void_p
        api.PyBytes_AsString.argtypes = [ctypes.py_object]
        data = api.PyBytes_FromStringAndSize(None, size)
        view = memoryview((ctypes.c_char * size).from_address(api.PyBytes_AsString(data))).cast("B")
        return data, view
    except (ImportError, AttributeError, ValueError):  # pragma: no cover - not CPython
        buf = bytearray(size)
        return buf, memoryview(buf)


def read_signed_head(f: BinaryIO, path: str, magic: bytes, max_header: int,
                     reasons: Tuple[str, str, str]) -> Tuple[bytes, int, bytes, bytes]:
    """Preamble, format version, header bytes and signature at the start of ``f``: the part of an
    artifact or delta its signature covers. ``reasons``: (bad magic, header too long, truncated)."""
    preamble = f.read(PREAMBLE.size)
    if len(preamble) < PREAMBLE.size or preamble[:8] != magic:
        raise ArtifactError(reasons[0], "%s is not an edgeai %s (bad magic)"
                            % (path, "model artifact" if magic == MAGIC else "model delta"))
    _magic, version, _flags, header_len = PREAMBLE.unpack(preamble)
    if header_len > max_header:
        raise ArtifactError(reasons[1], "%s: header length %d is over the %d-byte limit" % (path, header_len, max_header))
    header_bytes = f.read(header_len)
    signature = f.read(SIGNATURE_BYTES)
    if len(header_bytes) != header_len or len(signature) != SIGNATURE_BYTES:
        raise ArtifactError(reasons[2], "%s is truncated inside its header" % path)
    return preamble, version, header_bytes, signature


def _is_hex(value: Any, length: int) -> bool:
    if not isinstance(value, str) or len(value) != length:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def aead_into(aead: Any) -> bool:
    return hasattr(aead, "decrypt_into") and hasattr(aead, "encrypt_into")


# -- opening (device and controller) -----------------------------------------------------------

class Artifact:
    """An artifact whose signature has been checked. Nothing else is trusted until verified."""

    def __init__(self, path: str, header: Dict[str, Any], manifest: Manifest, envelope: Envelope,
                 payload_offset: int) -> None:
        self.path = path
        self.header = header
        self.manifest = manifest
        self.envelope = envelope
        self.payload_offset = payload_offset

    @property
    def artifact_id(self) -> str:
        return self.envelope.artifact_id

    @property
    def payload_digest(self) -> str:
        """``payload.chunks_sha256``: sha256 over the sha256 of each sealed chunk (docs/artifact-format.md)."""
        return str(self.header["payload"]["chunks_sha256"])

    @property
    def signer(self) -> str:
        return str(self.header["signer"])

    @classmethod
    def open(cls, path: str, trusted_signers: Mapping[str, ed25519.Ed25519PublicKey]) -> "Artifact":
        """Read the header and check its signature against ``trusted_signers`` (key id -> public key)."""
        try:
            with open(path, "rb") as f:
                art = cls.from_head(f, path, trusted_signers)
                file_size = os.fstat(f.fileno()).st_size
        except OSError as exc:
            raise ArtifactError("io", "reading artifact %s: %s" % (path, exc.strerror)) from None
        offset, payload_size = art.payload_offset, art.envelope.payload_size
        if file_size < offset + payload_size:
            raise ArtifactError("truncated", "%s is truncated: %d payload bytes of %d (chunks missing)"
                                % (path, file_size - offset, payload_size))
        if file_size > offset + payload_size:
            raise ArtifactError("trailing_data", "%s has %d bytes after the last chunk"
                                % (path, file_size - offset - payload_size))
        return art

    @classmethod
    def from_head(cls, f: BinaryIO, path: str, trusted_signers: Mapping[str, ed25519.Ed25519PublicKey]) -> "Artifact":
        """The artifact whose preamble, header and signature ``f`` starts with (the payload not looked
        at): signature, format, manifest and envelope checked. ``path`` names it in errors."""
        preamble, version, header_bytes, signature = read_signed_head(
            f, path, MAGIC, MAX_HEADER_BYTES, ("not_an_artifact", "bad_format", "truncated"))
        if version != FORMAT_VERSION:
            raise ArtifactError("format_version", "%s is artifact format %d; this runtime (%s) reads %d"
                                % (path, version, __version__, FORMAT_VERSION))
        try:
            header = json.loads(header_bytes)
        except ValueError:
            header = None
        if not isinstance(header, dict):
            raise ArtifactError("manifest_tampered", "%s: the header is not a JSON object (edited or corrupt)" % path)
        signer = header.get("signer")
        public = trusted_signers.get(signer) if isinstance(signer, str) else None
        if public is None:
            raise ArtifactError("untrusted_signer", "%s is signed by key %s, which is not trusted here (trusted: %s)"
                                % (path, signer, ", ".join(sorted(trusted_signers)) or "none"))
        try:
            public.verify(signature, preamble + header_bytes)
        except InvalidSignature:
            raise ArtifactError("manifest_tampered", "%s: the signature does not verify with signer key %s: the "
                                "header was edited after signing" % (path, signer)) from None
        if header.get("format") != FORMAT or header.get("format_version") != FORMAT_VERSION:
            raise ArtifactError("bad_format", "%s: format %r version %r is not %s %d"
                                % (path, header.get("format"), header.get("format_version"), FORMAT, FORMAT_VERSION))
        artifact_id = header.get("artifact_id")
        if not isinstance(artifact_id, str) or len(artifact_id) != 32:
            raise ArtifactError("bad_format", "%s: artifact_id must be 32 hex digits" % path)
        try:
            manifest = Manifest.from_dict(header.get("manifest"))
        except ManifestError as exc:
            raise ArtifactError("bad_manifest", "%s: manifest: %s" % (path, exc)) from None
        envelope = Envelope.parse(artifact_id, header.get("envelope"))
        payload = header.get("payload")
        if not isinstance(payload, dict) or payload.get("size") != envelope.payload_size \
                or envelope.plaintext_size != manifest.size:
            raise ArtifactError("bad_format", "%s: payload size does not match the envelope" % path)
        if not _is_hex(payload.get("chunks_sha256"), 64):
            raise ArtifactError("bad_format", "%s: payload.chunks_sha256 must be 64 hex digits" % path)
        return cls(path, header, manifest, envelope, PREAMBLE.size + len(header_bytes) + SIGNATURE_BYTES)

    def check_compatible(self, hardware_class: Optional[str], runtime_version: str = __version__) -> None:
        """Refuse an artifact this device must not load: another hardware class, or a newer runtime needed."""
        m = self.manifest
        if hardware_class and m.hardware_classes and hardware_class not in m.hardware_classes:
            raise ArtifactError("hardware_class", "%s %s is built for %s, not for this %s device"
                                % (m.name, m.version, ", ".join(m.hardware_classes), hardware_class))
        if m.min_runtime_version and version_key(m.min_runtime_version) > version_key(runtime_version):
            raise ArtifactError("runtime_too_old", "%s %s needs edgeai-device-runtime %s or newer; this is %s"
                                % (m.name, m.version, m.min_runtime_version, runtime_version))

    def check_key(self, data_key: bytes) -> None:
        if len(data_key) != DATA_KEY_BYTES or not hmac.compare_digest(
                key_commitment(data_key, self.artifact_id), self.envelope.key_commitment):
            raise ArtifactError("wrong_data_key", "%s: the data key does not match the artifact's key commitment"
                                % self.path)

    def verify_payload(self) -> str:
        """Hash the payload and compare with the signed digest. O(chunk) memory per worker, no key needed."""
        digests = [b""] * self.envelope.chunks

        def job() -> Callable[[int, memoryview], None]:
            def hash_chunk(index: int, sealed: memoryview) -> None:
                digests[index] = hashlib.sha256(sealed).digest()
            return hash_chunk

        self._each_chunk(job)
        digest = chunk_list_digest(digests)
        self._check_digest("payload", digest, self.payload_digest)
        return digest

    def decrypt(self, data_key: bytes, payload_digest: bool = True) -> bytes:
        """The model, decrypted straight into one ``bytes`` object (the only O(model) allocation;
        ONNX Runtime and LiteRT take ``bytes``, so there is no second copy).

        Always checks the key commitment and every chunk's tag (the associated data binds the
        signed envelope, the chunk's index and the final-chunk flag). With ``payload_digest``
        also the payload digest. The chunks are read, decrypted (and hashed) on ``hash_workers()``
        threads, each into its own place in the model: the cipher, and the page faults of the new
        memory, then use every core.

        The store loads with ``payload_digest=False``: ``check`` verified both digests of that
        very file when it was installed, and the tags under the committed key then pin every
        byte. What the digest adds is protection against someone holding the data key (any
        device it was sent to) forging chunks; on this device such a person would need write
        access to the store, which already means access to the device key.
        """
        self.check_key(data_key)
        env = self.envelope
        digests = [b""] * env.chunks if payload_digest else None
        model, view = _new_bytes(env.plaintext_size)

        def job() -> Callable[[int, memoryview], None]:
            aead = CIPHERS[env.cipher](data_key)  # one per thread

            def open_chunk(index: int, sealed: memoryview) -> None:
                start = index * env.chunk_size
                self._open_chunk(aead, index, sealed, view[start:start + env.plain_len(index)])
                if digests is not None:
                    digests[index] = hashlib.sha256(sealed).digest()
            return open_chunk

        try:
            self._each_chunk(job)
            if digests is not None:
                self._check_digest("payload", chunk_list_digest(digests), self.payload_digest)
        except BaseException:
            view[:] = b"\0" * len(view)  # leave no plaintext behind in freed memory
            raise
        finally:
            view.release()
        return model if isinstance(model, bytes) else bytes(model)

    def check(self, data_key: bytes) -> None:
        """Everything ``decrypt`` checks, plus the model's sha256, keeping nothing: O(chunk) memory.

        The model's sha256 is one stream, so the chunks are read and decrypted in order on this
        thread; the payload digest and the model's sha256 run on worker threads beside it."""
        self.check_key(data_key)
        env = self.envelope
        aead = CIPHERS[env.cipher](data_key)
        plain_hash = Hasher(env.chunk_size)
        cipher_hash = ChunkHasher(env.chunk_size + TAG_BYTES, env.chunks)
        try:
            with self._payload() as f:
                for index in range(env.chunks):
                    want = env.plain_len(index)
                    sealed = cipher_hash.take()
                    sealed_view = memoryview(sealed)[:want + TAG_BYTES]
                    self._fill(f, sealed_view, index)
                    plain = plain_hash.take()
                    plain_view = memoryview(plain)[:want]
                    self._open_chunk(aead, index, sealed_view, plain_view)
                    cipher_hash.feed(index, sealed_view, sealed)
                    plain_hash.feed(index, plain_view, plain)
            self._check_digest("payload", cipher_hash.hexdigest(), self.payload_digest)
            self._check_digest("model", plain_hash.hexdigest(), self.manifest.sha256)
        finally:
            cipher_hash.close()
            plain_hash.close()

    # -- internals ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _payload(self) -> Iterator[io.FileIO]:
        try:
            f = open(self.path, "rb", buffering=0)
        except OSError as exc:
            raise ArtifactError("io", "reading artifact %s: %s" % (self.path, exc.strerror)) from None
        with f:
            f.seek(self.payload_offset)
            yield f

    def _each_chunk(self, job: Callable[[], Callable[[int, memoryview], None]]) -> None:
        """Run a job on every sealed chunk, on ``hash_workers()`` threads that take the chunks in
        order; each thread makes its job with ``job()`` and reads its chunks with pread into its
        own buffer. Stops at the first failure and raises the failure of the lowest chunk (every
        lower chunk had been taken, so that is the first bad chunk in the file)."""
        env = self.envelope
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise ArtifactError("io", "reading artifact %s: %s" % (self.path, exc.strerror)) from None
        lock = threading.Lock()
        taken = [0]
        failures: Dict[int, BaseException] = {}

        def worker() -> None:
            run = job()
            buf = bytearray(env.chunk_size + TAG_BYTES)
            while True:
                with lock:
                    if failures or taken[0] >= env.chunks:
                        return
                    index = taken[0]
                    taken[0] += 1
                try:
                    sealed = memoryview(buf)[:env.plain_len(index) + TAG_BYTES]
                    self._pread(fd, sealed, index)
                    run(index, sealed)
                except BaseException as exc:  # re-raised below, in the calling thread
                    with lock:
                        failures[index] = exc
                    return

        try:
            threads = [threading.Thread(target=worker, name="artifact-chunks", daemon=True)
                       for i in range(min(hash_workers(), env.chunks))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            os.close(fd)
        if failures:
            raise failures[min(failures)]

    def _pread(self, fd: int, view: memoryview, index: int) -> None:
        offset = self.payload_offset + index * (self.envelope.chunk_size + TAG_BYTES)
        got = 0
        while got < len(view):
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[got:]], offset + got)
            else:  # pragma: no cover - no preadv (macOS before 11)
                data = os.pread(fd, len(view) - got, offset + got)
                view[got:got + len(data)] = data
                n = len(data)
            if not n:
                raise ArtifactError("truncated", "%s is truncated in chunk %d of %d"
                                    % (self.path, index, self.envelope.chunks))
            got += n

    def _open_chunk(self, aead: Any, index: int, sealed: memoryview, plain: memoryview) -> None:
        env = self.envelope
        try:
            if aead_into(aead):
                aead.decrypt_into(env.nonce(index), sealed, env.aad(index), plain)
            else:
                plain[:] = aead.decrypt(env.nonce(index), bytes(sealed), env.aad(index))
        except InvalidTag:
            raise self._chunk_error(aead, index, bytes(sealed)) from None

    def _fill(self, f: _ReadsInto, view: memoryview, index: int) -> None:
        if read_exact(f, view) != len(view):
            raise ArtifactError("truncated", "%s is truncated in chunk %d of %d" % (self.path, index, self.envelope.chunks))

    def _chunk_error(self, aead: Any, index: int, sealed: bytes) -> ArtifactError:
        """Tell a moved chunk from a modified one: does it authenticate under another index?"""
        env = self.envelope
        for other in range(env.chunks):
            if other == index or env.plain_len(other) + TAG_BYTES != len(sealed):
                continue
            try:
                aead.decrypt(env.nonce(other), sealed, env.aad(other))
            except InvalidTag:
                continue
            return ArtifactError("chunk_reordered", "%s: chunk %d holds chunk %d's data: chunks were reordered"
                                 % (self.path, index, other))
        return ArtifactError("chunk_tampered", "%s: chunk %d of %d fails authentication: the payload was modified "
                             "or corrupted" % (self.path, index, env.chunks))

    def _check_digest(self, what: str, got: str, want: str) -> None:
        if not hmac.compare_digest(got, want):
            raise ArtifactError("%s_checksum" % what, "%s: %s sha256 is %s, the signed manifest says %s"
                                % (self.path, what, got, want))


def read_header(path: str) -> Dict[str, Any]:
    """The header without checking the signature: for display and for cheap comparisons only."""
    with open(path, "rb") as f:
        preamble = f.read(PREAMBLE.size)
        if len(preamble) < PREAMBLE.size or preamble[:8] != MAGIC:
            raise ArtifactError("not_an_artifact", "%s is not an edgeai model artifact (bad magic)" % path)
        header_len = PREAMBLE.unpack(preamble)[3]
        if header_len > MAX_HEADER_BYTES:
            raise ArtifactError("bad_format", "%s: header length %d is over the limit" % (path, header_len))
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            raise ArtifactError("bad_format", "%s: the header is not JSON" % path) from None
    if not isinstance(header, dict):
        raise ArtifactError("bad_format", "%s: the header is not a JSON object" % path)
    return header
