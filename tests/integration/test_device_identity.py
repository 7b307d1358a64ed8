"""roles/device_identity against a real simulated device: the fleet CA on the controller, the key made on
the device, the certificate signed by the controller; four runs, rotation and revocation (the CRL); then the
same certificate against a real mosquitto in a container (the broker proofs of issue 15).

One amd64 device (a podman container from the target image) on a podman network this module creates
(--internal), deployed once by deploy.yml so that its venv holds cryptography (without the identity,
which the role's own runs then give it). Real ansible-playbook runs; certificates read with cryptography.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from conftest import (NAME_PREFIX, PODMAN, REPO, podman, remove_containers, run_ansible_playbook,
                      start_device, write_inventory)
from support.mqtt_broker import SUBSCRIBER, acl_text, broker_config
from support.pki import make_ca, make_cert, write_pem

TLS = '/opt/edgeai/keys/tls'
CRL_TASK = "edgeai.fleet.device_identity : The fleet CA's CRL"
ROLE_PLAY = '''---
- name: The device's TLS identity
  hosts: edgeai_devices
  gather_facts: false
  roles:
    - role: edgeai.fleet.device_identity
'''


def device_file(host, path):
    return podman('exec', host, 'cat', path).stdout.encode()


def device_cert(host):
    return x509.load_pem_x509_certificate(device_file(host, TLS + '/device.crt'))


def crl_entries(ca_dir):
    crl = x509.load_pem_x509_crl((ca_dir / 'crl.pem').read_bytes())
    ca = x509.load_pem_x509_certificate((ca_dir / 'ca.crt').read_bytes())
    assert crl.is_signature_valid(ca.public_key()), 'the CRL is not signed by the fleet CA'
    return {entry.serial_number: entry for entry in crl}


def changed_tasks(run, host):
    return [name for name, result in run.tasks(host) if result.get('changed')]


@pytest.fixture(scope='module')
def network():
    """An internal podman network (no way out), named with the test prefix; removed afterwards."""
    if not PODMAN:
        pytest.skip('needs podman')
    name = '%snet-%s' % (NAME_PREFIX, uuid.uuid4().hex[:8])
    podman('network', 'create', '--internal', name)
    yield name
    podman('network', 'rm', '-f', name, check=False)


@pytest.fixture(scope='module')
def device(network, tmp_path_factory):
    """(host, inventory, ca_dir, run): a deployed device without a TLS identity yet, and a function running the
    role against it with extra arguments."""
    tmp = tmp_path_factory.mktemp('identity')
    host = start_device('generic', network=network)
    try:
        ca_dir = tmp / 'ca'
        inventory = write_inventory(tmp / 'inventory.json', {host: {'group': 'generic'}},
                                    edgeai_fleet_ca_dir=str(ca_dir), inference_service_device_identity=False)
        deployed = run_ansible_playbook(REPO / 'deploy.yml', inventory)
        assert deployed.rc == 0, deployed.failures(host)
        assert podman('exec', host, 'test', '-e', TLS, check=False).returncode != 0
        playbook = tmp / 'identity.yml'
        playbook.write_text(ROLE_PLAY)

        def run(*args):
            return run_ansible_playbook(playbook, inventory, *args)
        yield host, inventory, ca_dir, run
    finally:
        remove_containers([host])


def test_four_runs_then_files(device):
    """check, run, check, run -> changed, changed, not changed, not changed; then what is where."""
    host, _inventory, ca_dir, run = device
    check1 = run('--check')
    assert check1.rc == 0, check1.failures(host)
    assert check1.changed(host) > 0
    assert not ca_dir.exists(), 'check mode created the CA directory'
    assert podman('exec', host, 'test', '-e', TLS, check=False).returncode != 0, 'check mode wrote on the device'

    run1 = run()
    assert run1.rc == 0, run1.failures(host)
    assert run1.changed(host) > 0
    check2 = run('--check')
    assert check2.rc == 0 and check2.changed(host) == 0, changed_tasks(check2, host)
    run2 = run()
    assert run2.rc == 0 and run2.changed(host) == 0, changed_tasks(run2, host)

    # The key was made on the device, is the service user's, 0600, and never reached the controller.
    stat = podman('exec', host, 'stat', '-c', '%U:%G %a', TLS, TLS + '/device.key', TLS + '/device.crt',
                  TLS + '/ca.crt').stdout.split('\n')
    assert stat[:4] == ['edgeai:edgeai 700', 'edgeai:edgeai 600', 'edgeai:edgeai 644', 'edgeai:edgeai 644'], stat
    key = serialization.load_pem_private_key(device_file(host, TLS + '/device.key'), None)
    controller_files = sorted(str(p.relative_to(ca_dir)) for p in ca_dir.rglob('*') if p.is_file())
    assert controller_files == ['ca.crt', 'ca.key', 'crl.pem', 'devices/%s.crt' % host], controller_files
    for path in ca_dir.rglob('*'):
        if path.is_file():
            assert b'PRIVATE KEY' not in path.read_bytes() or path.name == 'ca.key'

    # The certificate: CN = device id = host name, for this key, signed by the fleet CA installed beside it.
    cert = device_cert(host)
    ca = x509.load_pem_x509_certificate((ca_dir / 'ca.crt').read_bytes())
    assert device_file(host, TLS + '/ca.crt').strip() == (ca_dir / 'ca.crt').read_bytes().strip()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == host
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert x509.DNSName(host) in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (ca_dir / 'devices' / ('%s.crt' % host)).read_bytes().strip() == device_file(host, TLS + '/device.crt').strip()
    assert crl_entries(ca_dir) == {}


def test_rotation(device):
    """A rotation: a new key and a new serial on the device; the old certificate is in the CRL (superseded)."""
    host, _inventory, ca_dir, run = device
    old_cert, old_key = device_cert(host), device_file(host, TLS + '/device.key')
    rotated = run('-e', 'device_identity_rotate=true')
    assert rotated.rc == 0, rotated.failures(host)
    new_cert = device_cert(host)
    assert new_cert.serial_number != old_cert.serial_number
    assert device_file(host, TLS + '/device.key') != old_key
    key = serialization.load_pem_private_key(device_file(host, TLS + '/device.key'), None)
    assert new_cert.public_key().public_numbers() == key.public_key().public_numbers()
    entries = crl_entries(ca_dir)
    assert set(entries) == {old_cert.serial_number}, entries
    assert entries[old_cert.serial_number].extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.superseded
    assert [p.name for p in (ca_dir / 'superseded').iterdir()] == ['%s-%d.crt' % (host, old_cert.serial_number)]
    # Without a rotation asked for, nothing changes again.
    again = run()
    assert again.rc == 0 and again.changed(host) == 0, changed_tasks(again, host)
    assert device_cert(host).serial_number == new_cert.serial_number


def test_revocation(device):
    """Revoking the device by id puts its current certificate in the CRL; it gets no new one; a re-run is no change."""
    host, _inventory, ca_dir, run = device
    current = device_cert(host)
    revoke = ['-e', json.dumps({'device_identity_revoked': [host]})]
    revoked = run(*revoke)
    assert revoked.rc == 0, revoked.failures(host)
    assert changed_tasks(revoked, host) == [CRL_TASK], changed_tasks(revoked, host)
    entries = crl_entries(ca_dir)
    assert current.serial_number in entries and len(entries) == 2, entries
    assert entries[current.serial_number].extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.cessation_of_operation
    assert device_cert(host).serial_number == current.serial_number  # not re-issued while revoked
    again = run(*revoke)
    assert again.rc == 0 and again.changed(host) == 0, changed_tasks(again, host)
    # A rotation asked for a revoked device is refused by omission: it gets no certificate.
    rotate = run('-e', json.dumps({'device_identity_revoked': [host], 'device_identity_rotate': True}))
    assert rotate.rc == 0 and rotate.changed(host) == 0, changed_tasks(rotate, host)
    assert device_cert(host).serial_number == current.serial_number


def test_bad_device_id_fails_before_any_change(device):
    host, _inventory, ca_dir, run = device
    before = sorted(p.name for p in ca_dir.rglob('*'))
    bad = run('-e', 'device_identity_device_id=a/b')
    assert bad.rc != 0
    assert any('MQTT topic characters' in (msg or '') for _name, msg in bad.failures(host)), bad.failures(host)
    assert sorted(p.name for p in ca_dir.rglob('*')) == before


# --- The same certificate authenticates the device to the fleet's broker -------------------------------------
# Debian's mosquitto in a container of scripts/build-broker-image.sh's image, on this module's --internal
# network, addressed by its container name; configured by tests/support/mqtt_broker.py. The publishing happens
# inside the device (its venv's paho-mqtt, tests/support/mqtt_probe.py): nothing outside the network reaches it.

BROKER_PORT = 8883
PREFIX = 'edgeai'
PROBE_DIR = '/root/probe'


def broker_image():
    image = subprocess.run(['bash', '-c', '. scripts/lib.sh && broker_image'], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.strip()
    if podman('image', 'exists', image, check=False).returncode != 0:
        pytest.skip('needs the broker image %s (scripts/build-broker-image.sh, run by setup.sh)' % image)
    return image


class ContainerBroker(object):
    """mosquitto in a container: every file it reads in ``directory``, mounted at /mosquitto."""

    def __init__(self, network, directory):
        self.name = '%sbroker-%s' % (NAME_PREFIX, uuid.uuid4().hex[:8])
        self.network, self.dir = network, directory

    def write(self, ca_dir, server_cert, server_key):
        self.dir.mkdir(exist_ok=True)
        shutil.copyfile(ca_dir / 'ca.crt', self.dir / 'ca.crt')
        shutil.copyfile(ca_dir / 'crl.pem', self.dir / 'crl.pem')
        write_pem(self.dir / 'broker.crt', server_cert)
        write_pem(self.dir / 'broker.key', server_key)
        (self.dir / 'acl').write_text(acl_text(PREFIX))
        (self.dir / 'mosquitto.conf').write_text(broker_config(
            port=BROKER_PORT, bind_address=None, cafile='/mosquitto/ca.crt', certfile='/mosquitto/broker.crt',
            keyfile='/mosquitto/broker.key', aclfile='/mosquitto/acl', crlfile='/mosquitto/crl.pem', user='root'))
        for path in self.dir.iterdir():
            path.chmod(0o644)

    def start(self, image):
        podman('run', '-d', '--name', self.name, '--network', self.network, '--label', 'org.edgeai.test=integration',
               '-v', '%s:/mosquitto:ro' % self.dir, image, '/usr/sbin/mosquitto', '-c', '/mosquitto/mosquitto.conf')
        self.wait_running(0)

    def restart(self):
        runs = self.log().count(' running')
        podman('restart', '-t', '5', self.name)
        self.wait_running(runs)

    def log(self):
        out = podman('logs', self.name, check=False)
        return out.stdout + out.stderr

    def wait_running(self, runs_before):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.log().count(' running') > runs_before:
                return
            time.sleep(0.2)
        raise AssertionError('mosquitto in %s did not start:\n%s' % (self.name, self.log()))

    def remove(self):
        podman('rm', '-f', '-t', '0', self.name, check=False)


def probe(host, broker, subscriber, attempts):
    """Run tests/support/mqtt_probe.py in the device: {attempt: result}, [[topic, attempt], ...] received."""
    args = {'host': broker.name, 'port': BROKER_PORT, 'subscriber': subscriber, 'attempts': attempts}
    out = podman('exec', host, '/opt/edgeai/venv/bin/python', PROBE_DIR + '/mqtt_probe.py', json.dumps(args),
                 check=False)
    assert out.returncode == 0, out.stdout + out.stderr + broker.log()
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result['attempts'], [tuple(item) for item in result['received']]


def fleet_files(tmp, name, ca_key, ca_cert, cn):
    """A client's key, certificate and CA file (PEM) in tmp/name/, as the device will see them under PROBE_DIR."""
    where = tmp / name
    where.mkdir()
    key, cert = make_cert(ca_key, ca_cert, cn)
    write_pem(where / 'device.key', key)
    write_pem(where / 'device.crt', cert)
    return {'cert': '%s/%s/device.crt' % (PROBE_DIR, name), 'key': '%s/%s/device.key' % (PROBE_DIR, name)}


def test_broker_accepts_own_certificate_only(device, network, tmp_path):
    """The device's own certificate connects and publishes to its own topic; another device's certificate, none,
    another CA's and a revoked one are refused, and so is publishing to another device's topic."""
    host, _inventory, ca_dir, run = device
    image = broker_image()
    assert run().rc == 0  # not revoked (any more): its certificate is valid again, as the CRL says
    ca_cert = x509.load_pem_x509_certificate((ca_dir / 'ca.crt').read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / 'ca.key').read_bytes(), None)
    assert device_cert(host).serial_number not in crl_entries(ca_dir)

    broker = ContainerBroker(network, tmp_path / 'broker')
    server_key, server_cert = make_cert(ca_key, ca_cert, 'mqtt-broker', dns_names=[broker.name])
    broker.write(ca_dir, server_cert, server_key)
    # The other clients' files: a reader of every topic, another fleet device, and an impostor CA's device.
    files = tmp_path / 'probe'
    files.mkdir()
    shutil.copyfile(REPO / 'tests' / 'support' / 'mqtt_probe.py', files / 'mqtt_probe.py')
    ca = TLS + '/ca.crt'
    subscriber = dict(fleet_files(files, 'subscriber', ca_key, ca_cert, SUBSCRIBER), ca=ca, topic=PREFIX + '/#')
    other = fleet_files(files, 'other', ca_key, ca_cert, 'other-device')
    impostor_key, impostor_ca = make_ca('some other fleet CA')
    impostor = fleet_files(files, 'impostor', impostor_key, impostor_ca, host)
    podman('cp', str(files), '%s:%s' % (host, PROBE_DIR))
    own = {'ca': ca, 'cert': TLS + '/device.crt', 'key': TLS + '/device.key'}
    mine, theirs = '%s/%s/telemetry' % (PREFIX, host), '%s/other-device/telemetry' % PREFIX

    try:
        broker.start(image)
        results, received = probe(host, broker, subscriber, [
            dict(own, name='own', topic=mine),
            dict(own, name='own_to_other_topic', topic=theirs),
            dict(other, ca=ca, name='other_device_cert', topic=mine),
            dict(ca=ca, cert=None, key=None, name='no_cert', topic=mine),
            dict(impostor, ca=ca, name='other_ca', topic=mine),
        ])
        assert results['own']['connected'] and results['own']['puback_reason'] == 0, results['own']
        assert (mine, 'own') in received, received
        # Another device's topic: the ACL (pattern write <prefix>/%u/#, %u = the certificate's CN) refuses it.
        assert results['own_to_other_topic']['connected'], results
        assert results['own_to_other_topic']['puback_reason'] == 135, results  # 0x87 Not authorized
        assert results['other_device_cert']['connected'], results
        assert results['other_device_cert']['puback_reason'] == 135, results
        assert not results['no_cert']['connected'], results
        assert not results['other_ca']['connected'], results
        assert sorted(received) == [(mine, 'own')], received  # nothing else got through
        assert 'other-device' in broker.log()  # it was that device's CN the broker saw, not this one's

        # Revoked: the role lists the device's current certificate in the CRL; the broker, given the new CRL,
        # refuses it while the other fleet devices still connect.
        revoked = run('-e', json.dumps({'device_identity_revoked': [host]}))
        assert revoked.rc == 0, revoked.failures(host)
        assert device_cert(host).serial_number in crl_entries(ca_dir)
        shutil.copyfile(ca_dir / 'crl.pem', broker.dir / 'crl.pem')
        broker.restart()
        results, received = probe(host, broker, subscriber, [
            dict(own, name='revoked', topic=mine),
            dict(other, ca=ca, name='other_device_own_topic', topic=theirs),
        ])
        assert not results['revoked']['connected'], results
        assert results['other_device_own_topic']['puback_reason'] == 0, results
        assert sorted(received) == [(theirs, 'other_device_own_topic')], received
    finally:
        broker.remove()
