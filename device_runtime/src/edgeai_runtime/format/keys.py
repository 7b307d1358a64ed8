"""Keys of the artifact format: key ids, key files, key slots and the device keyring.

Three kinds of key pair, all from ``cryptography``:

- the fleet **signing** key (Ed25519): stays on the controller; devices hold its public half;
- the controller's **escrow** key (X25519): every artifact's data key is also wrapped for it,
  so the controller can wrap an existing artifact for new or re-keyed devices without
  re-encrypting it;
- each **device** key (X25519, or RSA for devices that want RSA-OAEP): generated on the
  device, its private half never leaves it.

A *key slot* is one artifact's 32-byte data key wrapped for one recipient public key:

- ``x25519``: a sealed box. An ephemeral X25519 key agrees a secret with the recipient;
  HKDF-SHA256 (salt = ephemeral public || recipient public) turns it into a one-use
  AES-256-GCM key that encrypts the data key, with the artifact id as associated data.
- ``rsa-oaep-sha256``: RSA-OAEP with SHA-256 and MGF1-SHA-256, the artifact id as label.

Either way a slot opens only with the recipient's private key and only for its artifact.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.fsutil import write_atomic

DATA_KEY_BYTES = 32
DEVICE_KEY_TYPES = ("x25519", "rsa")
SLOT_TYPES = {"x25519": "x25519", "rsa": "rsa-oaep-sha256"}
RSA_BITS = 3072
_HKDF_INFO = b"edgeai.fleet keyslot v1"
_KEY_ID_RE = re.compile(r"^[0-9a-f]{32}$")

PublicKey = Union[ed25519.Ed25519PublicKey, x25519.X25519PublicKey, rsa.RSAPublicKey]
PrivateKey = Union[ed25519.Ed25519PrivateKey, x25519.X25519PrivateKey, rsa.RSAPrivateKey]
_PUBLIC_KEY_CLASSES = (ed25519.Ed25519PublicKey, x25519.X25519PublicKey, rsa.RSAPublicKey)
_PRIVATE_KEY_CLASSES = (ed25519.Ed25519PrivateKey, x25519.X25519PrivateKey, rsa.RSAPrivateKey)


class ArtifactError(EdgeAIError, ValueError):
    """An artifact, key or key slot is refused.

    ``reason`` is a stable code (docs/artifact-format.md lists them); ``str()`` says what and why.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message, reason)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: Any, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (TypeError, ValueError):
        raise ArtifactError("bad_keyslot", "%s is not valid base64" % what) from None


def public_bytes(key: PublicKey) -> bytes:
    """DER SubjectPublicKeyInfo: the one encoding key ids are computed over."""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _public_half(key: Union[PublicKey, PrivateKey]) -> PublicKey:
    """A public key as it is; a private key's public half."""
    return key.public_key() if isinstance(key, _PRIVATE_KEY_CLASSES) else key


def key_id(key: Union[PublicKey, PrivateKey]) -> str:
    """128-bit fingerprint of a public key (of a private key's public half)."""
    return hashlib.sha256(public_bytes(_public_half(key))).hexdigest()[:32]


def _unsupported(key: object) -> ArtifactError:
    return ArtifactError("bad_key", "unsupported key type %s" % type(key).__name__)


def key_type(key: object) -> str:
    """``ed25519``, ``x25519`` or ``rsa`` for a key of those types (public or private); any other
    object is refused (ArtifactError ``bad_key``)."""
    if isinstance(key, (ed25519.Ed25519PublicKey, ed25519.Ed25519PrivateKey)):
        return "ed25519"
    if isinstance(key, (x25519.X25519PublicKey, x25519.X25519PrivateKey)):
        return "x25519"
    if isinstance(key, (rsa.RSAPublicKey, rsa.RSAPrivateKey)):
        return "rsa"
    raise _unsupported(key)


def public_pem(key: Union[PublicKey, PrivateKey]) -> str:
    return _public_half(key).public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def private_pem(key: PrivateKey, passphrase: Optional[bytes] = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(passphrase) if passphrase
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def generate(kind: str) -> PrivateKey:
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind == "x25519":
        return x25519.X25519PrivateKey.generate()
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise ArtifactError("bad_key", "key type %r is not one of ed25519, x25519, rsa" % kind)


def load_public(pem: Union[str, bytes], what: str = "public key") -> PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ArtifactError("bad_key", "%s is not a PEM public key: %s" % (what, exc)) from None
    if not isinstance(key, _PUBLIC_KEY_CLASSES):
        raise _unsupported(key)
    return key


def load_private(path: str, passphrase: Optional[bytes] = None) -> PrivateKey:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ArtifactError("key_unreadable", "reading private key %s: %s" % (path, exc.strerror)) from None
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError:
        raise ArtifactError("key_passphrase", "private key %s is encrypted: a passphrase is needed" % path) from None
    except ValueError:
        raise ArtifactError("bad_key", "private key %s is not a PEM private key, or the passphrase is wrong"
                            % path) from None
    if not isinstance(key, _PRIVATE_KEY_CLASSES):
        raise _unsupported(key)
    return key


def write_private(path: str, key: PrivateKey, passphrase: Optional[bytes] = None,
                  uid: int = -1, gid: int = -1) -> None:
    """Write a private key 0600 from the first byte (never world-readable, not even briefly)."""
    write_atomic(path, private_pem(key, passphrase), 0o600, uid, gid)


# -- key slots ---------------------------------------------------------------------------------

def _slot_kek(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral + recipient, info=_HKDF_INFO).derive(shared)


def wrap(data_key: bytes, recipient: PublicKey, artifact_id: str) -> Dict[str, str]:
    """A key slot: ``data_key`` wrapped for ``recipient``, bound to ``artifact_id``."""
    if len(data_key) != DATA_KEY_BYTES:
        raise ArtifactError("bad_key", "a data key is %d bytes" % DATA_KEY_BYTES)
    kind = key_type(recipient)
    slot = {"type": SLOT_TYPES.get(kind, kind), "key_id": key_id(recipient), "artifact_id": artifact_id}
    if isinstance(recipient, x25519.X25519PublicKey):
        ephemeral = x25519.X25519PrivateKey.generate()
        eph_pub = ephemeral.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        rcpt_pub = recipient.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kek = _slot_kek(ephemeral.exchange(recipient), eph_pub, rcpt_pub)
        # The KEK is used exactly once, so a fixed nonce is safe.
        slot["ephemeral"] = b64(eph_pub)
        slot["wrapped"] = b64(AESGCM(kek).encrypt(b"\0" * 12, data_key, artifact_id.encode()))
    elif isinstance(recipient, rsa.RSAPublicKey):
        slot["wrapped"] = b64(recipient.encrypt(data_key, _oaep(artifact_id)))
    else:
        raise ArtifactError("bad_key", "an %s key cannot receive a wrapped data key (use x25519 or rsa)" % kind)
    return slot


def unwrap(slot: Dict[str, Any], private: PrivateKey, artifact_id: str) -> bytes:
    """Open a key slot; raises ArtifactError('wrong_device_key') when this key cannot open it."""
    if not isinstance(slot, dict) or slot.get("type") not in SLOT_TYPES.values():
        raise ArtifactError("bad_keyslot", "key slot type %r is not one of %s"
                            % (slot.get("type") if isinstance(slot, dict) else slot, ", ".join(SLOT_TYPES.values())))
    if slot.get("artifact_id") != artifact_id:
        raise ArtifactError("keyslot_other_artifact", "the key slot belongs to artifact %s, not %s"
                            % (slot.get("artifact_id"), artifact_id))
    mine = key_id(private)
    if slot.get("key_id") != mine:
        raise ArtifactError("wrong_device_key", "the key slot is wrapped for key %s, this key is %s"
                            % (slot.get("key_id"), mine))
    wrapped = unb64(slot.get("wrapped"), "keyslot.wrapped")
    try:
        if slot["type"] == "x25519" and isinstance(private, x25519.X25519PrivateKey):
            eph_pub = unb64(slot.get("ephemeral"), "keyslot.ephemeral")
            rcpt_pub = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            kek = _slot_kek(private.exchange(x25519.X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, rcpt_pub)
            data_key = AESGCM(kek).decrypt(b"\0" * 12, wrapped, artifact_id.encode())
        elif slot["type"] == "rsa-oaep-sha256" and isinstance(private, rsa.RSAPrivateKey):
            data_key = private.decrypt(wrapped, _oaep(artifact_id))
        else:
            raise ArtifactError("wrong_device_key", "a %s key slot cannot be opened with an %s key"
                                % (slot["type"], key_type(private)))
    except (InvalidTag, ValueError):
        raise ArtifactError("wrong_device_key", "the key slot for key %s does not open with that key "
                            "(corrupt slot, or a different key with the same id)" % mine) from None
    if len(data_key) != DATA_KEY_BYTES:
        raise ArtifactError("bad_keyslot", "the key slot holds %d bytes, not a %d-byte data key"
                            % (len(data_key), DATA_KEY_BYTES))
    return data_key


def _oaep(label: str) -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(),
                        label=label.encode())


# -- the device keyring ------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    type: str
    public_pem: str

    def to_dict(self) -> Dict[str, str]:
        return {"key_id": self.key_id, "type": self.type, "public_key": self.public_pem}


class DeviceKeyring:
    """The device's own key pairs, in ``<root>/keys``::

        device-<key id>.key   private half, 0600, owned by the service user
        device-<key id>.pub   public half, 0644
        current               the key id new artifacts are wrapped for

    Older pairs stay until ``retire`` removes them, so artifacts wrapped for a key that
    is being rotated out keep loading until they have been re-wrapped.
    """

    def __init__(self, root: str) -> None:
        self.dir = os.path.join(root, "keys")

    def ids(self) -> List[str]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = [n[len("device-"):-len(".key")] for n in names if n.startswith("device-") and n.endswith(".key")]
        return sorted(i for i in found if _KEY_ID_RE.match(i))

    def current_id(self) -> Optional[str]:
        try:
            with open(os.path.join(self.dir, "current"), encoding="ascii") as f:
                value = f.read().strip()
        except FileNotFoundError:
            return None
        return value if value in self.ids() else None

    def info(self, kid: str) -> KeyInfo:
        with open(self._path(kid, ".pub"), encoding="ascii") as f:
            pem = f.read()
        return KeyInfo(kid, key_type(load_public(pem)), pem)

    def current(self) -> Optional[KeyInfo]:
        kid = self.current_id()
        return self.info(kid) if kid else None

    def private(self, kid: str) -> PrivateKey:
        if kid not in self.ids():
            raise ArtifactError("wrong_device_key", "this device holds no private key %s (it holds %s)"
                                % (kid, ", ".join(self.ids()) or "none"))
        return load_private(self._path(kid, ".key"))

    def create(self, kind: str = "x25519", uid: int = -1, gid: int = -1) -> KeyInfo:
        """A new key pair, made current."""
        if kind not in DEVICE_KEY_TYPES:
            raise ArtifactError("bad_key", "device key type %r is not one of %s" % (kind, ", ".join(DEVICE_KEY_TYPES)))
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        key = generate(kind)
        kid = key_id(key)
        write_private(self._path(kid, ".key"), key, uid=uid, gid=gid)
        write_atomic(self._path(kid, ".pub"), public_pem(key).encode(), 0o644, uid, gid)
        write_atomic(os.path.join(self.dir, "current"), (kid + "\n").encode(), 0o644, uid, gid)
        return self.info(kid)

    def retire(self, keep: List[str]) -> List[str]:
        """Remove every key pair except the current one and those in ``keep``; returns the removed ids."""
        current = self.current_id()
        removed = []
        for kid in self.ids():
            if kid == current or kid in keep:
                continue
            for suffix in (".key", ".pub"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(kid, suffix))
            removed.append(kid)
        return removed

    def open_slot(self, slot: Dict[str, Any], artifact_id: str) -> bytes:
        kid = slot.get("key_id") if isinstance(slot, dict) else None
        return unwrap(slot, self.private(str(kid)), artifact_id)

    def _path(self, kid: str, suffix: str) -> str:
        if not _KEY_ID_RE.match(kid or ""):
            raise ArtifactError("bad_key", "%r is not a key id" % kid)
        return os.path.join(self.dir, "device-%s%s" % (kid, suffix))
