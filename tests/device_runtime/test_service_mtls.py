"""mTLS of the inference service (RuntimeConfig tls_*): a real service process on 127.0.0.1 with a fleet CA's
certificate; a client without a certificate, or with another CA's, is refused in the handshake; one with a
fleet certificate is served, and so are the device's own clients (device.client), with the device's identity."""
from __future__ import annotations

import ssl
import subprocess
import sys
import time

import httpx
import pytest

from edgeai_runtime.device.client import ServiceClient
from edgeai_runtime.device.config import ConfigError, RuntimeConfig, load_config
from support.pki import make_ca, make_server_cert, write_pem
from support.service import free_port, write_config


def client_context(ca_file, cert=None):
    context = ssl.create_default_context(cafile=ca_file)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


@pytest.fixture
def pki(tmp_path):
    """The fleet CA, the device's certificate (server and client), a fleet client's and an impostor's."""
    tls = tmp_path / "tls"
    tls.mkdir()
    fleet_key, fleet_ca = make_ca("edgeai.fleet device CA")
    other_key, other_ca = make_ca("some other CA")
    files = {"ca": write_pem(tls / "ca.crt", fleet_ca)}
    for name, (ca_key, ca_cert) in {"device": (fleet_key, fleet_ca), "fleet_client": (fleet_key, fleet_ca),
                                    "impostor": (other_key, other_ca)}.items():
        key, cert = make_server_cert(ca_key, ca_cert)
        files[name] = (write_pem(tls / (name + ".crt"), cert), write_pem(tls / (name + ".key"), key))
    return files


@pytest.fixture
def mtls_service(tmp_path, pki):
    root = tmp_path / "root"
    root.mkdir()
    port = free_port()
    write_config(root, port=port, tls_cert_file=pki["device"][0], tls_key_file=pki["device"][1],
                 tls_client_ca_file=pki["ca"])
    log = open(tmp_path / "service.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "edgeai_runtime.cli", "--root", str(root), "serve"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = "https://127.0.0.1:%d" % port
    fleet = client_context(pki["ca"], pki["fleet_client"])
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(base + "/v2/health/live", verify=fleet, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the mTLS service never answered:\n" + (tmp_path / "service.log").read_text())
        time.sleep(0.2)
    yield root, base
    proc.terminate()
    proc.wait(timeout=30)


def test_fleet_certificate_served_others_refused(mtls_service, pki):
    root, base = mtls_service
    served = httpx.get(base + "/v2/health/ready", verify=client_context(pki["ca"], pki["fleet_client"]), timeout=5)
    assert served.status_code in (200, 503)  # served: ready or not (no model), the service answered
    assert httpx.get(base + "/v2", verify=client_context(pki["ca"], pki["fleet_client"]), timeout=5).status_code == 200
    # No client certificate, or one from another CA: the handshake fails, no HTTP answer comes.
    for cert in (None, pki["impostor"]):
        with pytest.raises(httpx.TransportError):
            httpx.get(base + "/v2", verify=client_context(pki["ca"], cert), timeout=5)
    # Plain HTTP on the port gets no answer either.
    with pytest.raises(httpx.TransportError):
        httpx.get(base.replace("https", "http") + "/v2", timeout=5)
    # The device's own clients (the CLI, the OTA installer) speak mTLS with the device's certificate.
    config = load_config(str(root))
    assert config.tls
    client = ServiceClient(config, timeout=5)
    assert client.up()
    assert client.call("GET", "/v2")["name"]
    # A client not told about TLS gets no answer: the service is not also reachable in plain HTTP.
    plain = ServiceClient(RuntimeConfig(root=str(root)), timeout=5)
    assert not plain.up()


def test_tls_settings_all_or_none(tmp_path, pki):
    with pytest.raises(ConfigError, match="tls_client_ca_file, tls_key_file are unset"):
        RuntimeConfig(tls_cert_file=pki["device"][0]).check()
    missing = str(tmp_path / "nope.crt")
    with pytest.raises(ConfigError, match="tls_client_ca_file %s is not a file" % missing):
        RuntimeConfig(tls_cert_file=pki["device"][0], tls_key_file=pki["device"][1],
                      tls_client_ca_file=missing).check()
    assert not RuntimeConfig().check().tls
