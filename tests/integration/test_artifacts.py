"""Signed, encrypted model artifacts on a real simulated device (podman container, network: none).

deploy.yml with a model installs it as an artifact; a second run sends nothing; the device's whole
filesystem holds no window of the plaintext model; a -vvv run shows no key material; key rotation
re-wraps the installed model for the new device key and retires the old one while it keeps serving.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from conftest import DEMO_MODEL, REPO, WAIT_READY, device_json, podman, write_inventory

DEPLOY = REPO / 'deploy.yml'
ROTATE = REPO / 'playbooks' / 'rotate_keys.yml'
PASSPHRASE = 'correct horse battery staple 4711'

# Runs inside the device: every regular file outside the kernel's pseudo filesystems and the
# read-only evidence mount, searched for 64-byte windows of the model (one every 509 bytes).
SCAN = r'''
import os, sys
model = sys.stdin.buffer.read()
windows = {model[i:i + 64] for i in range(0, len(model) - 64, 509)}
skip = ("/proc", "/sys", "/dev", "/run", "/var/lib/edgeai-sim")
hits = []
for top, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in skip]
    for name in files:
        path = os.path.join(top, name)
        try:
            if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) > 512 << 20:
                continue
            data = open(path, "rb").read()
        except OSError:
            continue
        if any(w in data for w in windows):
            hits.append(path)
print("\n".join(hits))
'''


def scan_for_plaintext(host, model):
    proc = subprocess.run(['podman', 'exec', '-i', host, '/usr/bin/python3', '-c', SCAN], input=model,
                          capture_output=True, check=True)
    return [line for line in proc.stdout.decode().splitlines() if line]


@pytest.fixture(scope='module')
def demo_model():
    if not (DEMO_MODEL / 'manifest.json').exists():
        pytest.skip('needs the demo models (scripts/build-demo-models.py, run by scripts/test.sh)')
    manifest = json.loads((DEMO_MODEL / 'manifest.json').read_text())
    return manifest, (DEMO_MODEL / manifest['model_file']).read_bytes()


def test_artifact_deploy_no_plaintext_no_key_material_and_rotation(make_device, run_playbook, tmp_path, demo_model):
    manifest, model = demo_model
    host = make_device('generic')
    keys_dir, artifact_dir = tmp_path / 'fleet-keys', tmp_path / 'artifacts'
    inventory = write_inventory(
        tmp_path / 'inventory.json', {host: {'group': 'generic'}},
        edgeai_fleet_keys_dir=str(keys_dir), edgeai_fleet_key_passphrase=PASSPHRASE,
        inference_service_artifact_dir=str(artifact_dir),
        inference_service_wheelhouse_cache=str(REPO / '.state' / 'wheelhouse'),
        inference_service_models=[{'src': str(DEMO_MODEL)}])

    # 1. Deploy at -vvv: the model ends up serving, installed as a signed artifact.
    run1 = run_playbook(DEPLOY, inventory, '-vvv')
    assert run1.rc == 0, run1.failures(host)
    installed = [r for n, r in run1.tasks(host) if 'Install and activate the bootstrap models' in n]
    assert installed and installed[0]['changed'], installed
    item = installed[0]['results'][0]
    assert item['sent'] is True and item['name'] == manifest['name'] and item['activation']['changed']
    status = device_json(host, 'model', 'list')['models']
    details = status[0]['installed'][manifest['version']]
    assert status[0]['active'] == manifest['version'] and details['signed'] and details['cipher'] == 'aes-256-gcm'
    files = podman('exec', host, 'ls', '/opt/edgeai/models/%s/%s' % (manifest['name'], manifest['version'])).stdout
    assert 'model.eaf' in files.split() and manifest['model_file'] not in files.split()

    # 2. No key material in the -vvv output: fleet private keys, the passphrase, the device's
    #    private key, the artifact's data key (hex and base64).
    sys.path.insert(0, str(REPO / 'device_runtime' / 'src'))
    from edgeai_runtime.format import keys
    from edgeai_runtime.controller import publisher
    fleet = publisher.FleetKeys(str(keys_dir), PASSPHRASE)
    artifact = item['artifact']
    with open(artifact + '.keys.json', encoding='utf-8') as f:
        data_key = keys.unwrap(json.load(f)['escrow'], fleet.escrow, item['artifact_id'])
    device_pem = podman('exec', host, 'sh', '-c', 'cat /opt/edgeai/keys/device-*.key').stdout
    assert 'PRIVATE KEY' in device_pem
    secrets = {'passphrase': PASSPHRASE, 'data key hex': data_key.hex(),
               'data key base64': base64.b64encode(data_key).decode(),
               'device private key': pem_body(device_pem)}
    for name in ('signing', 'escrow'):
        secrets['%s private key' % name] = pem_body((keys_dir / (name + '.key')).read_text())
        assert 'ENCRYPTED PRIVATE KEY' in (keys_dir / (name + '.key')).read_text()  # the passphrase is used
    output = run1.proc.stdout + run1.proc.stderr
    assert len(output) > 100000  # really -vvv
    leaked = [name for name, secret in secrets.items() if secret and secret in output]
    assert leaked == []
    # Key files: 0600, owned by their users.
    mode = podman('exec', host, 'sh', '-c', 'stat -c "%a %U" /opt/edgeai/keys/device-*.key').stdout.split()
    assert mode == ['600', 'edgeai']
    assert oct(os.stat(keys_dir / 'signing.key').st_mode & 0o777) == '0o600'

    # 3. Nothing plaintext anywhere on the device's disk; the scan does find a planted copy.
    subprocess.run(['podman', 'exec', '-i', host, 'sh', '-c', 'cat > /var/tmp/planted.bin'], input=model, check=True)
    assert scan_for_plaintext(host, model) == ['/var/tmp/planted.bin']
    podman('exec', host, 'rm', '/var/tmp/planted.bin')
    assert scan_for_plaintext(host, model) == []

    # 4. Run again: nothing sent, nothing changed.
    run2 = run_playbook(DEPLOY, inventory)
    assert run2.rc == 0 and run2.changed(host) == 0, [n for n, r in run2.tasks(host) if r.get('changed')]
    again = [r for n, r in run2.tasks(host) if 'Install and activate the bootstrap models' in n][0]
    assert again['results'][0]['sent'] is False

    # 5. Rotate: check mode changes nothing, then a new device key; the model is re-wrapped, the old key is gone.
    old_key = device_json(host, 'keys', 'show')['current']['key_id']
    check = run_playbook(ROTATE, inventory, '--check')
    assert check.rc == 0, check.failures(host)
    assert device_json(host, 'keys', 'show')['key_ids'] == [old_key]
    rotate = run_playbook(ROTATE, inventory)
    assert rotate.rc == 0, rotate.failures(host)
    rekeyed = [r for n, r in rotate.tasks(host) if 'Re-wrap' in n][0]
    assert rekeyed['changed'] and rekeyed['rekeyed'] == ['%s %s' % (manifest['name'], manifest['version'])]
    shown = device_json(host, 'keys', 'show')
    assert shown['current']['key_id'] != old_key and shown['key_ids'] == [shown['current']['key_id']]
    details = device_json(host, 'model', 'list')['models'][0]['installed'][manifest['version']]
    assert details['key_id'] == shown['current']['key_id']
    # The service loads the re-wrapped model from scratch after a restart.
    podman('exec', host, 'systemctl', 'restart', 'edgeai-runtime')
    ready = podman('exec', host, '/usr/bin/python3', '-c', WAIT_READY % manifest['name'], check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    # And the deploy after rotation still changes nothing (the slot is for the current key).
    run3 = run_playbook(DEPLOY, inventory)
    assert run3.rc == 0 and run3.changed(host) == 0, [n for n, r in run3.tasks(host) if r.get('changed')]


def pem_body(pem):
    """The base64 body of a PEM block, joined (what would show up if it were printed)."""
    lines = [line for line in pem.strip().splitlines() if line and not line.startswith('-----')]
    return ''.join(lines)[:64]
