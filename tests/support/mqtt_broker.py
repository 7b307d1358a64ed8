"""A real Mosquitto broker for the telemetry tests: its certificates, its configuration and ACL, the
process on 127.0.0.1, and a subscriber that counts what arrives.

- ``BrokerPKI``: a throwaway fleet CA (made with cryptography), the broker's server certificate
  (SAN 127.0.0.1, ``localhost`` and any container names given), device certificates whose CN is the
  device id (= the MQTT user name, through ``use_identity_as_username``), revocation and a CRL.
- ``broker_config`` / ``acl_text`` / ``write_broker_files``: the mosquitto.conf and ACL file, with every
  path an argument, so that a broker in a container (tests of the Ansible side) gets the same
  configuration with the paths it sees inside its container.
- ``Broker``: /usr/sbin/mosquitto on a free port of 127.0.0.1 (start, wait until it listens, stop,
  kill -9, restart on the same port, reload the ACL with SIGHUP).
- ``Subscriber``: an MQTT v5 client with a persistent session (clean_start false, a session expiry),
  reading ``<prefix>/#`` at QoS 1, keeping every message it was given (duplicates included).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support.pki import make_ca, write_pem

MOSQUITTO = "/usr/sbin/mosquitto"
#: The user name (certificate CN) of the fleet's reader: it may read every device's topics, write none.
SUBSCRIBER = "fleet-subscriber"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))


@dataclass(frozen=True)
class Identity:
    """A client's TLS files: ``cn`` is its device id (its MQTT user name)."""

    cn: str
    ca: str
    cert: str
    key: str
    serial: int


class BrokerPKI:
    """A fleet CA in ``directory`` and the certificates it signs. ``foreign()`` makes another CA
    (an impostor's), whose certificates the broker must refuse."""

    def __init__(self, directory: Path, ca_cn: str = "edgeai test fleet CA",
                 server_names: Sequence[str] = ()) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key, self.ca_cert = make_ca(ca_cn)
        self.ca_file = write_pem(self.dir / "ca.crt", self.ca_cert)
        self.revoked: Dict[int, datetime.datetime] = {}
        self.server_names = ("localhost",) + tuple(server_names)
        self.server_cert, self.server_key = self._server()

    def _server(self) -> Tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        names: List[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        names += [x509.DNSName(n) for n in self.server_names]
        cert = (_validity(x509.CertificateBuilder().subject_name(_name("mqtt-broker")).issuer_name(self.ca_cert.subject)
                          .public_key(key.public_key()).serial_number(x509.random_serial_number()))
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        return write_pem(self.dir / "broker.crt", cert), write_pem(self.dir / "broker.key", key)

    def identity(self, cn: str, directory: Optional[Path] = None) -> Identity:
        """A client key and certificate (CN ``cn``) signed by this CA, with the CA beside them
        (the device's ``keys/tls`` layout: device.key, device.crt, ca.crt) in ``directory``."""
        where = Path(directory) if directory is not None else self.dir / "clients" / cn
        where.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        cert = (_validity(x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.ca_cert.subject)
                          .public_key(key.public_key()).serial_number(serial))
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(self.ca_key, hashes.SHA256()))
        key_file = write_pem(where / "device.key", key)
        os.chmod(key_file, 0o600)
        shutil.copyfile(self.ca_file, where / "ca.crt")
        return Identity(cn, str(where / "ca.crt"), write_pem(where / "device.crt", cert), key_file, serial)

    def revoke(self, identity: Identity) -> None:
        self.revoked[identity.serial] = datetime.datetime.now(datetime.timezone.utc)

    def write_crl(self, path: Optional[Path] = None) -> str:
        """The CA's CRL (PEM) listing what ``revoke`` was given (an empty one when nothing was)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.ca_cert.subject)
                   .last_update(now - datetime.timedelta(minutes=5)).next_update(now + datetime.timedelta(days=7)))
        for serial, when in self.revoked.items():
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build())
        crl = builder.sign(self.ca_key, hashes.SHA256())
        from cryptography.hazmat.primitives.serialization import Encoding
        target = Path(path) if path is not None else self.dir / "crl.pem"
        target.write_bytes(crl.public_bytes(Encoding.PEM))
        return str(target)

    @classmethod
    def foreign(cls, directory: Path) -> "BrokerPKI":
        """Another fleet's CA: its certificates are well formed, but not this broker's."""
        return cls(directory, ca_cn="some other fleet CA")


def acl_text(prefix: str = "edgeai", readers: Iterable[str] = (SUBSCRIBER,), device_access: str = "write") -> str:
    """The ACL: each client may write only ``<prefix>/<its user name>/#`` (the user name is the CN of
    its certificate); ``readers`` may read every device's topics. ``device_access`` ``deny`` grants
    the devices nothing (a broker that refuses their publishes)."""
    lines = ["# each device writes only its own topics: %u is the user name, the CN of its certificate"]
    if device_access != "deny":
        lines.append("pattern %s %s/%%u/#" % (device_access, prefix))
    for reader in readers:
        lines += ["", "user %s" % reader, "topic read %s/#" % prefix]
    return "\n".join(lines) + "\n"


def broker_config(*, port: int, cafile: str, certfile: str, keyfile: str, aclfile: str,
                  bind_address: Optional[str] = "127.0.0.1", crlfile: Optional[str] = None,
                  persistence_dir: Optional[str] = None, log_file: Optional[str] = None,
                  user: Optional[str] = None) -> str:
    """mosquitto.conf for one TLS listener that requires a client certificate from the fleet CA, takes
    its CN as the user name, and applies ``aclfile``. Every path is as the broker sees it (in a
    container: inside it). ``bind_address`` None listens on every address (a container's)."""
    lines = ["# written by tests/support/mqtt_broker.py",
             "per_listener_settings false",
             "allow_anonymous false",
             "listener %d%s" % (port, " %s" % bind_address if bind_address else ""),
             "protocol mqtt",
             "cafile %s" % cafile,
             "certfile %s" % certfile,
             "keyfile %s" % keyfile,
             "tls_version tlsv1.2",
             "require_certificate true",
             "use_identity_as_username true"]
    if crlfile:
        lines.append("crlfile %s" % crlfile)
    lines += ["acl_file %s" % aclfile,
              "max_inflight_messages 0",
              "set_tcp_nodelay true",
              "max_queued_messages 0"]
    if persistence_dir:
        lines += ["persistence true", "persistence_location %s/" % persistence_dir.rstrip("/"),
                  "autosave_interval 1"]
    else:
        lines.append("persistence false")
    lines += ["log_dest %s" % ("file %s" % log_file if log_file else "stderr"),
              "log_type error", "log_type warning", "log_type notice", "log_type information",
              "connection_messages true", "log_timestamp true"]
    if user:
        lines.append("user %s" % user)
    return "\n".join(lines) + "\n"


def write_broker_files(directory: Path, pki: BrokerPKI, port: int, prefix: str = "edgeai", crl: bool = False,
                       persistence: bool = False, acl: Optional[str] = None) -> Path:
    """mosquitto.conf, acl and (``crl``) crl.pem in ``directory`` for a broker on 127.0.0.1 that reads them
    where they are. Returns the configuration's path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "acl").write_text(acl if acl is not None else acl_text(prefix))
    persist = directory / "persist"
    if persistence:
        persist.mkdir(exist_ok=True)
    text = broker_config(port=port, cafile=pki.ca_file, certfile=pki.server_cert, keyfile=pki.server_key,
                         aclfile=str(directory / "acl"), crlfile=pki.write_crl(directory / "crl.pem") if crl else None,
                         persistence_dir=str(persist) if persistence else None,
                         log_file=str(directory / "mosquitto.log"),
                         user="root" if os.geteuid() == 0 else None)  # root: keep it (the files are ours)
    conf = directory / "mosquitto.conf"
    conf.write_text(text)
    return conf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """/usr/sbin/mosquitto with ``write_broker_files``' configuration on 127.0.0.1:``port``."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, pki: BrokerPKI, prefix: str = "edgeai", crl: bool = False,
                 persistence: bool = False, port: Optional[int] = None) -> None:
        self.dir, self.pki, self.prefix = Path(directory), pki, prefix
        self.crl, self.persistence = crl, persistence
        self.port = port or free_port()
        self.conf = write_broker_files(self.dir, pki, self.port, prefix, crl, persistence)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def log_file(self) -> Path:
        return self.dir / "mosquitto.log"

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 10.0) -> "Broker":
        if not os.path.exists(MOSQUITTO):
            import pytest
            pytest.skip("%s is not installed (apt install mosquitto)" % MOSQUITTO)
        if self.crl:
            self.pki.write_crl(self.dir / "crl.pem")
        self.conf = write_broker_files(self.dir, self.pki, self.port, self.prefix, self.crl, self.persistence,
                                       acl=(self.dir / "acl").read_text() if (self.dir / "acl").exists() else None)
        mark = len(self.log())
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "mosquitto.stderr", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("mosquitto exited with %s:\n%s%s" % (
                    self.proc.returncode, self.log()[mark:], (self.dir / "mosquitto.stderr").read_text()))
            if " running" in self.log()[mark:] and self._listens():
                return self
            time.sleep(0.02)
        self.kill()
        raise RuntimeError("mosquitto did not listen on %s:%d within %ss:\n%s"
                           % (self.host, self.port, timeout, self.log()[mark:]))

    def _listens(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the broker vanishes mid-whatever, its connections reset."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def restart(self) -> "Broker":
        self.stop()
        return self.start()

    def set_acl(self, text: str) -> None:
        """Replace the ACL and have the running broker reread it (SIGHUP)."""
        (self.dir / "acl").write_text(text)
        if self.proc is not None and self.proc.poll() is None:
            mark = len(self.log())
            self.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 5
            while "Reloading config" not in self.log()[mark:] and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.1)

    def __enter__(self) -> "Broker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def tls_client(identity: Optional[Identity], ca_file: str, client_id: str) -> mqtt.Client:
    """A paho MQTT v5 client with TLS to the test broker (no client certificate when ``identity`` is None)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    if identity is not None:
        context.load_cert_chain(identity.cert, identity.key)
    client.tls_set_context(context)
    return client


def connect_properties(session_expiry: int) -> Optional[mqtt.Properties]:
    if not session_expiry:
        return None
    from paho.mqtt.packettypes import PacketTypes
    props = mqtt.Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = session_expiry
    return props


def try_connect(broker: Broker, identity: Optional[Identity], ca_file: Optional[str] = None,
                timeout: float = 5.0) -> str:
    """Connect once and say how it went: ``connected``, or the refusal (TLS error, CONNACK reason)."""
    client = tls_client(identity, ca_file or broker.pki.ca_file, "probe-%d" % time.monotonic_ns())
    done = threading.Event()
    outcome: List[str] = []

    def on_connect(_c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        outcome.append("connected" if not reason.is_failure else "refused: %s" % reason)
        done.set()

    def on_disconnect(_c: mqtt.Client, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        outcome.append("refused: disconnected before CONNACK (%s)" % reason)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.reconnect_delay_set(timeout, timeout)
    try:
        client.connect(broker.host, broker.port, keepalive=10)
        client.loop_start()
        if not done.wait(timeout):
            outcome.append("no CONNACK within %ss" % timeout)
    except (OSError, ssl.SSLError) as exc:
        outcome.append("refused: %s" % exc)
    finally:
        client.disconnect()
        client.loop_stop()
    return outcome[0] if outcome else "refused: the connection closed before CONNACK"


class Subscriber:
    """Reads ``<prefix>/#`` at QoS 1 with a persistent session (clean_start false, session expiry),
    reconnecting when the broker goes away; ``messages`` holds (topic, payload) of every delivery."""

    def __init__(self, broker: Broker, identity: Identity, client_id: str = "fleet-subscriber-1",
                 topic: Optional[str] = None, session_expiry: int = 3600) -> None:
        self.broker, self.topic = broker, topic or "%s/#" % broker.prefix
        self.messages: List[Tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = tls_client(identity, broker.pki.ca_file, client_id)
        self.session_expiry = session_expiry
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *_args: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.5)

    def _on_connect(self, client: mqtt.Client, _u: object, flags: mqtt.ConnectFlags, reason: mqtt.ReasonCode,
                    _p: object) -> None:
        if not reason.is_failure and not flags.session_present:
            client.subscribe(self.topic, qos=1)
        elif not reason.is_failure:
            self.subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def start(self, timeout: float = 10.0) -> "Subscriber":
        self.client.connect(self.broker.host, self.broker.port, keepalive=10, clean_start=False,
                            properties=connect_properties(self.session_expiry))
        self.client.loop_start()
        if not self.subscribed.wait(timeout):
            raise RuntimeError("the subscriber did not subscribe to %s within %ss:\n%s"
                               % (self.topic, timeout, self.broker.log()[-2000:]))
        return self

    def received(self) -> List[Tuple[str, bytes]]:
        with self.lock:
            return list(self.messages)

    def wait_for(self, count: int, timeout: float = 30.0) -> List[Tuple[str, bytes]]:
        """At least ``count`` messages (waiting up to ``timeout``); what came either way."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received()
            if len(got) >= count:
                return got
            time.sleep(0.02)
        return self.received()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
