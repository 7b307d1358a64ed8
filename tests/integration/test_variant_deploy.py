"""One release, two variants, two hosts: deploy.yml with forks from an empty artifact directory.

Real podman containers (amd64: a generic box and a device whose evidence says Raspberry Pi, so its
profile runs LiteRT), real ansible-playbook runs with --forks 2. The demo release digits 1.0.0
holds an ONNX fp32 and an int8 .tflite build; the forks pack both at once into one artifact
directory (the race that broke the demo: both builds mapped to one artifact file). Three runs:
changed, then not changed, then not changed, and each host serves its own variant.
"""
from __future__ import annotations

import json

import pytest

from conftest import DEMO_RELEASE, REPO, WAIT_READY, device_json, podman, write_inventory

DEPLOY = REPO / 'deploy.yml'
INSTALL_TASK = 'Install and activate the bootstrap models'


def serving(host):
    """What the service on the device reports it serves (KServe v2 model metadata)."""
    out = podman('exec', host, '/usr/bin/python3', '-c',
                 'import urllib.request; print(urllib.request.urlopen('
                 '"http://127.0.0.1:8080/v2/models/digits", timeout=10).read().decode())').stdout
    return json.loads(out)


PLATFORM = {'onnxruntime': 'onnxruntime_onnx', 'tflite': 'tensorflow_lite'}


def install_items(run, host):
    return [r for n, r in run.tasks(host) if INSTALL_TASK in n][0]['results']


def test_each_host_gets_its_variant_packed_once_and_reruns_change_nothing(make_device, run_playbook, tmp_path):
    if not (DEMO_RELEASE / 'tflite-int8' / 'manifest.json').exists():
        pytest.skip('needs the demo models (scripts/build-demo-models.py, run by scripts/test.sh)')
    generic, pi = make_device('generic'), make_device('raspberry_pi', arch='amd64')
    artifacts = tmp_path / 'artifacts'
    common = dict(edgeai_fleet_keys_dir=str(tmp_path / 'fleet-keys'), inference_service_artifact_dir=str(artifacts),
                  inference_service_wheelhouse_cache=str(REPO / '.state' / 'wheelhouse'))
    hosts = {generic: {'group': 'generic'}, pi: {'group': 'raspberry_pi'}}
    inventory = write_inventory(tmp_path / 'inventory.json', dict((h, dict(v)) for h, v in hosts.items()),
                                inference_service_models=[{'src': str(DEMO_RELEASE)}], **common)
    want = {generic: ('onnxruntime-fp32', 'onnxruntime'), pi: ('tflite-int8', 'tflite')}

    for attempt in range(3):
        run = run_playbook(DEPLOY, inventory, '--forks', '2')
        assert run.rc == 0, (attempt, run.failures(generic), run.failures(pi))
        for host in (generic, pi):
            [item] = install_items(run, host)
            assert item['variant'] == str(DEMO_RELEASE / want[host][0]), item
            if attempt == 0:
                assert item['changed'] and item['sent'], item
            else:
                assert not item['changed'] and not item['sent'], item
                assert run.changed(host) == 0, [n for n, r in run.tasks(host) if r.get('changed')]

    # One artifact per variant in the shared directory, packed once across all three runs.
    packed = sorted(p.name for p in artifacts.glob('*.eaf'))
    assert len(packed) == 2 and packed[0].startswith('digits-1.0.0-onnxruntime-fp32-'), packed
    assert packed[1].startswith('digits-1.0.0-tflite-int8-'), packed
    for host, (variant, runtime) in want.items():
        ready = podman('exec', host, '/usr/bin/python3', '-c', WAIT_READY % 'digits', check=False)
        assert ready.returncode == 0, ready.stdout + ready.stderr
        manifest = json.loads((DEMO_RELEASE / variant / 'manifest.json').read_text())
        [model] = device_json(host, 'model', 'list')['models']
        details = model['installed']['1.0.0']
        assert model['active'] == '1.0.0' and details['signed']
        assert (details['sha256'], details['runtime']) == (manifest['sha256'], runtime)
        assert serving(host)['platform'] == PLATFORM[runtime], serving(host)

    # A release without a build for the Pi: that host alone fails, naming its class and the offer,
    # before anything changes on it; the generic host is left as it is.
    only_onnx = tmp_path / 'digits-1.0.0-onnx-only'
    only_onnx.mkdir()
    (only_onnx / 'onnxruntime-fp32').symlink_to(DEMO_RELEASE / 'onnxruntime-fp32')
    inventory = write_inventory(tmp_path / 'inventory-onnx.json', dict((h, dict(v)) for h, v in hosts.items()),
                                inference_service_models=[{'src': str(only_onnx)}], **common)
    run = run_playbook(DEPLOY, inventory, '--forks', '2')
    assert run.rc != 0 and run.failures(generic) == [] and run.changed(generic) == 0
    assert run.changed(pi) == 0
    [item] = install_items(run, pi)
    assert item['failed'], item
    assert pi in item['msg'] and 'raspberry_pi (runtime tflite, precision int8)' in item['msg'], item['msg']
    assert 'onnxruntime-fp32 (onnxruntime/fp32 for any class)' in item['msg'], item['msg']
    [model] = device_json(pi, 'model', 'list')['models']
    assert model['active'] == '1.0.0' and model['installed']['1.0.0']['runtime'] == 'tflite'
