"""Pull mode (edgeai_runtime.device.agent): a registry written by the publisher, served over HTTPS on
127.0.0.1 by a small file server that honours Range and can cut connections, and the device agent
installing from it through the same OTA installer as push mode. The fault rows: the network cut
mid-download (resumed), an invalid TLS certificate (refused), a corrupted download, a forged or
replayed update document."""
from __future__ import annotations

import json
import os

import pytest

from edgeai_runtime.format import keys
from edgeai_runtime.device.config import load_config
from edgeai_runtime.device.ota import Policy
from edgeai_runtime.controller.publish import publish
from edgeai_runtime.device.agent import Agent, Downloader, RegistryError
from support import artifacts, modelgen
from support.https_files import Registry
from support.pki import make_ca, make_server_cert, write_pem
from support.service import runtime


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = make_ca("edgeai test CA")
    key, cert = make_server_cert(ca_key, ca_cert)
    rogue_key, rogue_ca = make_ca("someone else's CA")
    bad_key, bad_cert = make_server_cert(rogue_key, rogue_ca)
    wrong_host_key, wrong_host_cert = make_server_cert(ca_key, ca_cert, san_ip="10.0.0.7")
    return {"ca": write_pem(d / "ca.pem", ca_cert),
            "good": (write_pem(d / "good.pem", cert), write_pem(d / "good.key", key)),
            "untrusted": (write_pem(d / "bad.pem", bad_cert), write_pem(d / "bad.key", bad_key)),
            "wrong_host": (write_pem(d / "wh.pem", wrong_host_cert), write_pem(d / "wh.key", wrong_host_key))}


def publish_v2(device, registry_dir, sequence=10, version="2.0.0", seed=3):
    path, packed, files = device.pack(version, model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=seed)))
    file_paths = {}
    for name, data in files.items():
        (device.art_dir / name).write_bytes(data)
        file_paths[name] = str(device.art_dir / name)
    pem = device.ring.current().public_pem
    publish(str(registry_dir), device.signer, [{"artifact": path, "files": file_paths}],
            {device.ring.current_id(): pem}, lambda artifact_path, pem: artifacts.slot_for(packed, device.ring),
            sequence=sequence)
    return path


def serve(tmp_path, pki, kind="good"):
    cert, key = pki[kind]
    return Registry(str(tmp_path / "registry"), cert, key)


def agent(device, url, pki, retries=5):
    return Agent(load_config(str(device.root)), Downloader(url, pki["ca"], retries=retries, backoff_s=0.05),
                 Policy(watch_s=0.4, interval_s=0.1))


def artifact_requests(registry):
    return [r for r in registry.requests if r[0].endswith(".eaf")]


def test_pull_update_through_the_cli_then_nothing_to_do(device, tmp_path, pki):
    publish_v2(device, tmp_path / "registry")
    registry = serve(tmp_path, pki)
    try:
        args = ["agent", "--once", "--registry", registry.url, "--ca-file", pki["ca"], "--watch", "0.4"]
        first = runtime(device.root, *args)
        assert first.returncode == 0, first.stdout + first.stderr
        [model] = json.loads(first.stdout.strip().splitlines()[-1])["models"]
        assert model["changed"] and model["outcome"] == "committed" and model["active_version"] == "2.0.0"
        assert model["bytes_transferred"] > 0 and set(model["timings"]) >= {"stage", "verify", "gate", "watch"}
        assert device.serving() == "2.0.0"
        row = device.history()[0]
        want = ("pull", "committed", model["bytes_transferred"])
        assert (row["mode"], row["outcome"], row["bytes_transferred"]) == want
        before = len(registry.requests)
        second = runtime(device.root, *args)
        assert second.returncode == 0 and not json.loads(second.stdout.strip().splitlines()[-1])["changed"]
        doc = "updates/%s.json" % device.ring.current_id()
        assert [r[0] for r in registry.requests[before:]] == [doc, doc + ".sig"]
        assert not os.listdir(device.root / "cache" / "downloads")
    finally:
        registry.close()


def test_network_cut_mid_download_resumes(device, tmp_path, pki):
    path = publish_v2(device, tmp_path / "registry")
    size = os.path.getsize(path)
    registry = serve(tmp_path, pki)
    try:
        rel = "artifacts/" + os.path.basename(path)
        registry.cut[rel] = size * 2 // 5
        result = agent(device, registry.url, pki).run_once()
        assert not result["failed"], result
        assert artifact_requests(registry) == [(rel, None), (rel, "bytes=%d-" % (size * 2 // 5))]
        files = sum(os.path.getsize(device.art_dir / n) for n in ("golden.npz", "validation.npz"))
        assert result["models"][0]["bytes_transferred"] == size + files  # nothing fetched twice
        assert device.serving() == "2.0.0"
    finally:
        registry.close()


def test_download_resumes_in_the_next_run(device, tmp_path, pki):
    """One attempt per run: the cut run fails, keeps the partial file and changes nothing; the next
    run asks only for the rest."""
    path = publish_v2(device, tmp_path / "registry")
    size = os.path.getsize(path)
    registry = serve(tmp_path, pki)
    try:
        rel = "artifacts/" + os.path.basename(path)
        registry.cut[rel] = size // 3
        first = agent(device, registry.url, pki, retries=1).run_once()
        assert first["failed"] and first["models"][0]["reason"] == "network"
        assert "the next run resumes" in first["msg"]
        device.assert_previous_serves()
        second = agent(device, registry.url, pki, retries=1).run_once()
        assert not second["failed"], second["msg"]
        assert artifact_requests(registry)[-1] == (rel, "bytes=%d-" % (size // 3))
        assert device.serving() == "2.0.0"
    finally:
        registry.close()


@pytest.mark.parametrize("kind, needle", [("untrusted", "certificate verify failed"),
                                          ("wrong_host", "match")])
def test_invalid_tls_certificate_is_refused(device, tmp_path, pki, kind, needle):
    publish_v2(device, tmp_path / "registry")
    registry = serve(tmp_path, pki, kind)
    try:
        with pytest.raises(RegistryError) as exc:
            agent(device, registry.url, pki).run_once()
        assert exc.value.reason == "tls" and needle in str(exc.value), str(exc.value)
        assert registry.requests == []  # the handshake failed: no request was ever sent
        device.assert_previous_serves()
        cli = runtime(device.root, "agent", "--once", "--registry", registry.url, "--ca-file", pki["ca"])
        assert cli.returncode == 1 and json.loads(cli.stdout)["reason"] == "tls"
    finally:
        registry.close()


def test_plain_http_is_refused(device):
    with pytest.raises(RegistryError, match="must be https"):
        Downloader("http://127.0.0.1:9/")


def test_corrupted_download_is_refused(device, tmp_path, pki):
    path = publish_v2(device, tmp_path / "registry")
    served = tmp_path / "registry" / "artifacts" / os.path.basename(path)
    data = bytearray(served.read_bytes())
    data[len(data) // 2] ^= 1
    served.write_bytes(bytes(data))
    registry = serve(tmp_path, pki)
    try:
        result = agent(device, registry.url, pki).run_once()
        assert result["failed"] and result["models"][0]["reason"] == "checksum"
        assert "the signed update document says" in result["msg"]
        device.assert_previous_serves()
        assert not [n for n in os.listdir(device.root / "cache" / "downloads") if n.endswith(".part")]
    finally:
        registry.close()


def test_forged_and_replayed_update_documents_are_refused(device, tmp_path, pki, signer):
    publish_v2(device, tmp_path / "registry", sequence=20)
    doc_path = tmp_path / "registry" / "updates" / ("%s.json" % device.ring.current_id())
    registry = serve(tmp_path, pki)
    try:
        genuine = doc_path.read_bytes()
        doc_path.write_bytes(genuine.replace(b'"force":false', b'"force":true '))
        with pytest.raises(RegistryError) as exc:
            agent(device, registry.url, pki).run_once()
        assert exc.value.reason == "signature"
        doc_path.write_bytes(genuine)
        assert not agent(device, registry.url, pki).run_once()["failed"]
        # An older document, genuinely signed: refused as a replay.
        publish_v2(device, tmp_path / "registry", sequence=19, version="3.0.0", seed=4)
        with pytest.raises(RegistryError) as exc:
            agent(device, registry.url, pki).run_once()
        assert exc.value.reason == "replay" and "older than the 20 already applied" in str(exc.value)
        assert device.serving() == "2.0.0"
    finally:
        registry.close()


def test_publish_refuses_a_key_under_another_devices_id(device, tmp_path):
    stranger = keys.public_pem(keys.generate("x25519").public_key())
    with pytest.raises(keys.ArtifactError, match="has key id"):
        publish(str(tmp_path / "r"), device.signer, [], {device.ring.current_id(): stranger}, lambda a, p: {})


def test_publishing_the_same_again_changes_nothing(device, tmp_path):
    registry = tmp_path / "registry"
    path, packed, files = device.pack("2.0.0", model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=3)))
    for name, data in files.items():
        (device.art_dir / name).write_bytes(data)
    release = [{"artifact": path, "files": {n: str(device.art_dir / n) for n in files}}]
    devices = {device.ring.current_id(): device.ring.current().public_pem}

    def wrap(artifact_path, pem):
        return artifacts.slot_for(packed, device.ring)

    first = publish(str(registry), device.signer, release, devices, wrap, sequence=1)
    again = publish(str(registry), device.signer, release, devices, wrap, sequence=2)
    assert first["changed"] and not again["changed"] and again["documents"] == []
    doc = json.loads((registry / "updates" / ("%s.json" % device.ring.current_id())).read_text())
    assert doc["sequence"] == 1
