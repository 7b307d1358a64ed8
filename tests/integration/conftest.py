"""Integration fixtures: fresh podman containers of the target images, and ansible-playbook runs.

These tests start their own containers (network: none, reached through the
containers.podman.podman connection) and remove them afterwards. They need the
images that scripts/setup.sh builds; scripts/test.sh exports their names as
EDGEAI_IMAGE_AMD64 / EDGEAI_IMAGE_ARM64.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PODMAN = shutil.which('podman')


DEMO_RELEASE = REPO / '.state' / 'demo-models' / 'digits-1.0.0'
DEMO_MODEL = DEMO_RELEASE / 'onnxruntime-fp32'

# Waits, inside a device, until the service says a model is ready.
WAIT_READY = r'''
import time, urllib.request
for attempt in range(120):
    try:
        with urllib.request.urlopen("http://127.0.0.1:8080/v2/models/%s/ready", timeout=2) as r:
            if r.status == 200:
                raise SystemExit(0)
    except OSError:
        pass
    time.sleep(1)
raise SystemExit("not ready after 120 s")
'''


def podman(*args, check=True, **kwargs):
    return subprocess.run([PODMAN, *args], check=check, capture_output=True, text=True, **kwargs)


def _image(arch):
    image = os.environ.get('EDGEAI_IMAGE_%s' % arch.upper())
    if not PODMAN or not image:
        pytest.skip('needs podman and EDGEAI_IMAGE_%s (run through scripts/test.sh)' % arch.upper())
    return image


# Containers (and networks) the tests start are named with this prefix and a random suffix.
NAME_PREFIX = os.environ.get('EDGEAI_IT_PREFIX', 'edgeai-it-')


def start_device(hardware_class, arch='amd64', network='none'):
    """A fresh simulated device (systemd, the class's sim evidence mounted); returns its container name,
    which is also its host name. ``network``: none, or a podman network the test created."""
    name = '%s%s-%s' % (NAME_PREFIX, hardware_class.replace('_', '-'), uuid.uuid4().hex[:8])
    podman('run', '-d', '--name', name, '--hostname', name, '--network', network, '--systemd', 'always',
           '--arch', arch, '--label', 'org.edgeai.test=integration',
           '-v', '%s/sim/evidence/%s:/var/lib/edgeai-sim:ro' % (REPO, hardware_class),
           _image(arch), '/sbin/init')
    return name


def remove_containers(names):
    for name in names:
        podman('rm', '-f', '-t', '0', name, check=False)


@pytest.fixture
def make_device(tmp_path):
    """Start fresh simulated devices; returns a function (hardware_class, arch='amd64') -> container name."""
    started = []

    def start(hardware_class, arch='amd64', network='none'):
        started.append(start_device(hardware_class, arch, network))
        return started[-1]

    yield start
    remove_containers(started)


def write_inventory(path, hosts, **group_vars):
    """A YAML inventory: hosts is {name: {hardware_class: ..., vars...}}, grouped as the sim inventory is."""
    children = {}
    for name, host_vars in hosts.items():
        group = host_vars.pop('group')
        children.setdefault(group, {'hosts': {}})['hosts'][name] = host_vars
    gv = {'ansible_connection': 'containers.podman.podman', 'ansible_python_interpreter': '/usr/bin/python3',
          'edgeai_evidence_root': '/var/lib/edgeai-sim'}
    gv.update(group_vars)
    inventory = {'all': {'children': {'edgeai_devices': {'children': children, 'vars': gv}}}}
    path.write_text(json.dumps(inventory))
    return path


class PlaybookRun(object):
    def __init__(self, proc):
        self.proc = proc
        self.rc = proc.returncode
        try:
            # The JSON callback prints one object starting with a line that is just "{"; with -vvv
            # the connection's debug lines (which hold braces too) come first.
            start = re.search(r'^\{$', proc.stdout, re.M)
            self.result = json.loads(proc.stdout[start.start() if start else proc.stdout.index('{'):])
        except ValueError:
            raise AssertionError('ansible-playbook printed no JSON (rc=%s):\n%s\n%s'
                                 % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
        self.stats = self.result['stats']

    def changed(self, host):
        return self.stats[host]['changed']

    def tasks(self, host):
        """[(task name, host result)] for every task that ran on host."""
        return [(t['task']['name'], t['hosts'][host]) for play in self.result['plays']
                for t in play['tasks'] if host in t['hosts']]

    def failures(self, host):
        """[(task name, message)] of the failed tasks on host; a loop's message joins its failed items'."""
        return [(name, '; '.join(i.get('msg', '') for i in r['results'] if i.get('failed')) if r.get('results')
                 else r.get('msg')) for name, r in self.tasks(host) if r.get('failed') or r.get('unreachable')]


def run_ansible_playbook(playbook, inventory, *args):
    """Run ansible-playbook with the JSON callback; returns a PlaybookRun."""
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK='ansible.posix.json', ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'),
               ANSIBLE_NOCOLOR='1')
    proc = subprocess.run(['ansible-playbook', '-i', str(inventory), str(playbook), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    return PlaybookRun(proc)


@pytest.fixture
def run_playbook():
    """Run ansible-playbook with the JSON callback; returns a PlaybookRun."""
    return run_ansible_playbook


def device_json(host, *args):
    out = podman('exec', host, 'runuser', '-u', 'edgeai', '--', '/opt/edgeai/venv/bin/edgeai-runtime', *args).stdout
    return json.loads(out.strip().splitlines()[-1])


def version_of(src, dest, version, **validation):
    """A copy of the demo model directory under another version (and gate settings)."""
    shutil.copytree(src, dest)
    manifest = json.loads((dest / 'manifest.json').read_text())
    manifest['version'] = version
    manifest.setdefault('validation', {}).update(validation)
    (dest / 'manifest.json').write_text(json.dumps(manifest))
    return dest


@pytest.fixture
def deployed(make_device, run_playbook, tmp_path):
    if not (DEMO_MODEL / 'manifest.json').exists():
        pytest.skip('needs the demo models (scripts/build-demo-models.py, run by scripts/test.sh)')
    host = make_device('generic')
    common = dict(edgeai_fleet_keys_dir=str(tmp_path / 'fleet-keys'),
                  inference_service_artifact_dir=str(tmp_path / 'artifacts'))
    inventory = write_inventory(tmp_path / 'inventory.json', {host: {'group': 'generic'}},
                                inference_service_wheelhouse_cache=str(REPO / '.state' / 'wheelhouse'),
                                inference_service_models=[{'src': str(DEMO_MODEL)}], **common)
    run = run_playbook(REPO / 'deploy.yml', inventory)
    assert run.rc == 0, run.failures(host)
    ready = podman('exec', host, '/usr/bin/python3', '-c', WAIT_READY % 'digits', check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    return host, inventory, common
