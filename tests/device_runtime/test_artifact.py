"""The artifact format (edgeai_runtime.format.artifact, keys): round trips with both ciphers and both key
types, and every tampering refused with its own reason. Real cryptography, real files, real
onnxruntime/LiteRT loading the decrypted bytes."""
from __future__ import annotations

import hashlib
import json
import os
import struct

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag

from edgeai_runtime.controller import packing
from edgeai_runtime.format import artifact, keys
from edgeai_runtime.format.artifact import Artifact, ArtifactError
from edgeai_runtime.format.keys import DeviceKeyring
from support.artifacts import flip

MiB = 1 << 20
FIELDS = {"name": "m", "version": "1.0.0", "runtime": "onnxruntime", "precision": "fp32",
          "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
          "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]}


@pytest.fixture(scope="module")
def trusted(signer):
    return {keys.key_id(signer): signer.public_key()}


@pytest.fixture
def model_file(tmp_path):
    """3.5 MiB of random bytes: with 1 MiB chunks, three full chunks and a short last one."""
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(3 * MiB + MiB // 2))
    return path


def packed(tmp_path, model_file, signer, cipher="aes-256-gcm", **fields):
    out = tmp_path / "m.eaf"
    result = packing.pack(str(model_file), str(out), dict(FIELDS, **fields), signer, cipher=cipher, chunk_size=MiB)
    return out, result


def reason(excinfo) -> str:
    return excinfo.value.reason


@pytest.mark.parametrize("cipher", sorted(artifact.CIPHERS))
@pytest.mark.parametrize("device_key_type", ["x25519", "rsa"])
def test_round_trip(tmp_path, model_file, signer, trusted, cipher, device_key_type):
    out, result = packed(tmp_path, model_file, signer, cipher)
    device = keys.generate(device_key_type)
    slot = keys.wrap(result.data_key, device.public_key(), result.artifact_id)
    assert slot["type"] == keys.SLOT_TYPES[device_key_type]
    assert result.data_key.hex() not in json.dumps(slot)

    art = Artifact.open(str(out), trusted)
    header = art.header
    assert header["envelope"]["cipher"] == cipher and header["envelope"]["chunks"] == 4
    assert art.manifest.size == model_file.stat().st_size
    assert art.verify_payload() == header["payload"]["chunks_sha256"]
    data_key = keys.unwrap(slot, device, art.artifact_id)
    art.check(data_key)
    model = art.decrypt(data_key)
    assert isinstance(model, bytes) and model == model_file.read_bytes()
    # The plaintext is nowhere in the artifact.
    assert model[:4096] not in out.read_bytes()


def test_pack_is_one_pass_and_records_the_manifest(tmp_path, model_file, signer):
    out, result = packed(tmp_path, model_file, signer, hardware_classes=["generic"])
    manifest = result.header["manifest"]
    assert manifest["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert manifest["hardware_classes"] == ["generic"] and manifest["created"].endswith("Z")
    assert manifest["min_runtime_version"]
    payload = out.read_bytes()[-result.header["payload"]["size"]:]
    # payload.chunks_sha256, computed here from the spec (docs/artifact-format.md), not with the module's code.
    sealed = MiB + 16
    outer = hashlib.sha256(b"edgeai.fleet payload chunks v1\0")
    for start in range(0, len(payload), sealed):
        outer.update(hashlib.sha256(payload[start:start + sealed]).digest())
    assert result.header["payload"]["chunks_sha256"] == outer.hexdigest()
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]


def test_real_models_load_from_decrypted_bytes(tmp_path, signer, trusted, digits, digits_onnx, digits_tflite):
    from edgeai_runtime.service.backends import BackendOptions, create_backend
    device = keys.generate("x25519")
    for runtime, blob in (("onnxruntime", digits_onnx), ("tflite", digits_tflite)):
        src = tmp_path / runtime
        src.write_bytes(blob)
        out = tmp_path / (runtime + ".eaf")
        fields = dict(FIELDS, runtime=runtime, inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, 64]}],
                      outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}])
        result = packing.pack(str(src), str(out), fields, signer, cipher="chacha20-poly1305")
        slot = keys.wrap(result.data_key, device.public_key(), result.artifact_id)
        art = Artifact.open(str(out), trusted)
        backend = create_backend(runtime, art.decrypt(keys.unwrap(slot, device, art.artifact_id)), BackendOptions())
        try:
            x = digits.X_test[:1].astype(np.float32)
            got = backend.infer({"input": x})["probabilities"]
            assert int(np.argmax(got)) == int(digits.model.predict(digits.X_test[:1])[0])
        finally:
            backend.close()


# -- tampering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [0, 2, 3])
def test_flipped_byte_in_any_chunk(tmp_path, model_file, signer, trusted, chunk):
    out, result = packed(tmp_path, model_file, signer)
    art = Artifact.open(str(out), trusted)
    flip(out, art.payload_offset + chunk * (MiB + 16) + 1234)
    for payload_digest in (True, False):  # the tags alone catch it, as the store's load path relies on
        with pytest.raises(ArtifactError) as exc:
            art.decrypt(result.data_key, payload_digest=payload_digest)
        assert reason(exc) == "chunk_tampered" and "chunk %d of 4" % chunk in str(exc.value)
    with pytest.raises(ArtifactError) as exc:
        art.verify_payload()  # without the data key: the signed payload digest catches it
    assert reason(exc) == "payload_checksum"


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_parallel_decrypt_names_the_first_bad_chunk(tmp_path, model_file, signer, trusted, monkeypatch, workers):
    """decrypt and verify_payload work on chunks in parallel; with two bad chunks the error is the
    lower one's, whatever the thread count, and the model comes back whole when nothing is bad."""
    monkeypatch.setattr(artifact, "hash_workers", lambda: workers)
    out, result = packed(tmp_path, model_file, signer)
    art = Artifact.open(str(out), trusted)
    assert art.decrypt(result.data_key) == model_file.read_bytes()
    assert art.verify_payload() == result.header["payload"]["chunks_sha256"]
    flip(out, art.payload_offset + 3 * (MiB + 16) + 7)
    flip(out, art.payload_offset + 1 * (MiB + 16) + 7)
    for payload_digest in (True, False):
        with pytest.raises(ArtifactError) as exc:
            art.decrypt(result.data_key, payload_digest=payload_digest)
        assert reason(exc) == "chunk_tampered" and "chunk 1 of 4" in str(exc.value)


def test_swapped_chunks(tmp_path, model_file, signer, trusted):
    out, result = packed(tmp_path, model_file, signer)
    art = Artifact.open(str(out), trusted)
    data = bytearray(out.read_bytes())
    size = MiB + 16
    first, second = art.payload_offset + size, art.payload_offset + 2 * size
    data[first:first + size], data[second:second + size] = data[second:second + size], data[first:first + size]
    out.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted).decrypt(result.data_key)
    assert reason(exc) == "chunk_reordered" and "chunk 1 holds chunk 2's data" in str(exc.value)


@pytest.mark.parametrize("cut", [1, 16, MiB // 2 + 16])
def test_truncation(tmp_path, model_file, signer, trusted, cut):
    out, _result = packed(tmp_path, model_file, signer)
    os.truncate(out, out.stat().st_size - cut)
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted)
    assert reason(exc) == "truncated"


def test_dropping_the_final_chunk_is_caught_by_the_final_flag(tmp_path, model_file, signer, trusted):
    """Even a reader that took the size from elsewhere sees a non-final chunk posing as the last."""
    out, result = packed(tmp_path, model_file, signer)
    art = Artifact.open(str(out), trusted)
    env = art.envelope
    sealed = out.read_bytes()[art.payload_offset + 2 * (MiB + 16):art.payload_offset + 3 * (MiB + 16)]
    aead = artifact.CIPHERS[env.cipher](result.data_key)
    aead.decrypt(env.nonce(2), sealed, env.aad(2))  # authentic as chunk 2 of 4 (not final)
    forged = env.digest + struct.pack(">QB", 2, 1)  # the same chunk claimed as the final one
    with pytest.raises(InvalidTag):
        aead.decrypt(env.nonce(2), sealed, forged)


def test_trailing_data(tmp_path, model_file, signer, trusted):
    out, _result = packed(tmp_path, model_file, signer)
    with open(out, "ab") as f:
        f.write(b"extra")
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted)
    assert reason(exc) == "trailing_data"


def test_edited_manifest(tmp_path, model_file, signer, trusted):
    out, _result = packed(tmp_path, model_file, signer)
    data = out.read_bytes()
    edited = data.replace(b'"version":"1.0.0"', b'"version":"9.0.0"', 1)
    assert edited != data
    out.write_bytes(edited)
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted)
    assert reason(exc) == "manifest_tampered" and "edited after signing" in str(exc.value)


def test_wrong_signing_key(tmp_path, model_file, trusted):
    rogue = keys.generate("ed25519")
    out, _result = packed(tmp_path, model_file, rogue)
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted)
    assert reason(exc) == "untrusted_signer" and keys.key_id(rogue) in str(exc.value)


def test_signature_by_another_key_claiming_a_trusted_id(tmp_path, model_file, signer, trusted):
    out, _result = packed(tmp_path, model_file, signer)
    art = Artifact.open(str(out), trusted)
    data = bytearray(out.read_bytes())
    rogue = keys.generate("ed25519")
    sig_at = art.payload_offset - artifact.SIGNATURE_BYTES
    data[sig_at:art.payload_offset] = rogue.sign(bytes(data[:sig_at]))
    out.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted)
    assert reason(exc) == "manifest_tampered"


@pytest.mark.parametrize("device_key_type", ["x25519", "rsa"])
def test_wrong_device_key(tmp_path, model_file, signer, trusted, device_key_type):
    out, result = packed(tmp_path, model_file, signer)
    mine, other = keys.generate(device_key_type), keys.generate(device_key_type)
    slot = keys.wrap(result.data_key, mine.public_key(), result.artifact_id)
    with pytest.raises(ArtifactError) as exc:
        keys.unwrap(slot, other, result.artifact_id)
    assert reason(exc) == "wrong_device_key"
    # A slot re-labelled with the other key's id still does not open.
    forged = dict(slot, key_id=keys.key_id(other))
    with pytest.raises(ArtifactError) as exc:
        keys.unwrap(forged, other, result.artifact_id)
    assert reason(exc) == "wrong_device_key"
    # A slot moved to another artifact does not open either.
    with pytest.raises(ArtifactError) as exc:
        keys.unwrap(slot, mine, "0" * 32)
    assert reason(exc) == "keyslot_other_artifact"


def test_wrong_data_key(tmp_path, model_file, signer, trusted):
    out, _result = packed(tmp_path, model_file, signer)
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted).decrypt(os.urandom(32))
    assert reason(exc) == "wrong_data_key"


def test_not_an_artifact_and_newer_format(tmp_path, model_file, signer, trusted):
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(model_file), trusted)
    assert reason(exc) == "not_an_artifact"
    out, _result = packed(tmp_path, model_file, signer)
    data = bytearray(out.read_bytes())
    data[8:10] = struct.pack(">H", 2)
    out.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as exc:
        Artifact.open(str(out), trusted)
    assert reason(exc) == "format_version"


def test_compatibility_checks(tmp_path, model_file, signer, trusted):
    out, _result = packed(tmp_path, model_file, signer, hardware_classes=["jetson_orin"],
                          min_runtime_version="99.0")
    art = Artifact.open(str(out), trusted)
    with pytest.raises(ArtifactError) as exc:
        art.check_compatible("raspberry_pi", runtime_version="99.0")
    assert reason(exc) == "hardware_class"
    with pytest.raises(ArtifactError) as exc:
        art.check_compatible("jetson_orin", runtime_version="0.1.0")
    assert reason(exc) == "runtime_too_old" and "99.0" in str(exc.value)
    art.check_compatible("jetson_orin", runtime_version="99.0.1")


def test_pack_refuses_bad_input(tmp_path, model_file, signer):
    with pytest.raises(ArtifactError, match="chunk size"):
        packing.pack(str(model_file), str(tmp_path / "a.eaf"), FIELDS, signer, chunk_size=4096)
    with pytest.raises(ArtifactError, match="cipher"):
        packing.pack(str(model_file), str(tmp_path / "a.eaf"), FIELDS, signer, cipher="des")
    with pytest.raises(ArtifactError, match="must be Ed25519"):
        packing.pack(str(model_file), str(tmp_path / "a.eaf"), FIELDS, keys.generate("x25519"))
    with pytest.raises(ArtifactError, match="runtime"):
        packing.pack(str(model_file), str(tmp_path / "a.eaf"), dict(FIELDS, runtime="caffe"), signer)
    assert not list(tmp_path.glob("a.eaf*"))  # nothing half-written left behind


def test_default_cipher_follows_the_cpu(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu sse2 aes avx2\n")
    pi4 = tmp_path / "pi4"
    pi4.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\n")
    orin = tmp_path / "orin"
    orin.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n")
    assert artifact.default_cipher(str(x86)) == "aes-256-gcm"
    assert artifact.default_cipher(str(pi4)) == "chacha20-poly1305"
    assert artifact.default_cipher(str(orin)) == "aes-256-gcm"


# -- the device keyring ------------------------------------------------------------------------

def test_keyring_create_rotate_retire(tmp_path):
    ring = DeviceKeyring(str(tmp_path))
    assert ring.current() is None
    first = ring.create("x25519")
    assert ring.current_id() == first.key_id
    key_file = tmp_path / "keys" / ("device-%s.key" % first.key_id)
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "keys").stat().st_mode & 0o777) == "0o700"
    slot = keys.wrap(b"k" * 32, keys.load_public(first.public_pem), "a" * 32)
    second = ring.create("rsa")
    assert ring.current_id() == second.key_id and ring.ids() == sorted([first.key_id, second.key_id])
    assert ring.open_slot(slot, "a" * 32) == b"k" * 32  # the old key still opens old slots
    assert ring.retire(keep=[]) == [first.key_id]
    with pytest.raises(ArtifactError) as exc:
        ring.open_slot(slot, "a" * 32)
    assert reason(exc) == "wrong_device_key" and "holds no private key" in str(exc.value)
