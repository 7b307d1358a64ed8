"""deploy.yml against fresh simulated devices: check mode, idempotence, diff and bad input.

Real podman containers from the target image, real ansible-playbook runs.
"""
from __future__ import annotations

import json

from conftest import REPO, podman, write_inventory

DEPLOY = REPO / 'deploy.yml'
KNOWN = 'jetson_nano, jetson_orin, raspberry_pi, coral, generic'


def device_has(host, *test_args):
    return podman('exec', host, 'test', *test_args, check=False).returncode == 0


def read_profile(host):
    return json.loads(podman('exec', host, 'cat', '/opt/edgeai/etc/profile.json').stdout)


def test_check_run_check_run(make_device, run_playbook, tmp_path):
    """community.crypto's pattern: check, run, check, run -> changed, changed, not changed, not changed."""
    host = make_device('generic')
    inventory = write_inventory(tmp_path / 'inventory.json', {host: {'group': 'generic'}})

    check1 = run_playbook(DEPLOY, inventory, '--check')
    assert check1.rc == 0, check1.failures(host)
    assert check1.changed(host) > 0
    # Check mode wrote nothing.
    assert not device_has(host, '-e', '/opt/edgeai')
    assert podman('exec', host, 'getent', 'passwd', 'edgeai', check=False).returncode != 0

    run1 = run_playbook(DEPLOY, inventory)
    assert run1.rc == 0, run1.failures(host)
    assert run1.changed(host) > 0
    assert read_profile(host)['runtime'] == 'onnxruntime'

    check2 = run_playbook(DEPLOY, inventory, '--check')
    assert check2.rc == 0 and check2.changed(host) == 0, [n for n, r in check2.tasks(host) if r.get('changed')]
    run2 = run_playbook(DEPLOY, inventory)
    assert run2.rc == 0 and run2.changed(host) == 0, [n for n, r in run2.tasks(host) if r.get('changed')]


def test_profile_override_diff_is_honest(make_device, run_playbook, tmp_path):
    host = make_device('raspberry_pi', arch='amd64')  # the class comes from the evidence, not the CPU
    inventory = write_inventory(tmp_path / 'inventory.json', {host: {'group': 'raspberry_pi'}})
    assert run_playbook(DEPLOY, inventory).rc == 0
    assert read_profile(host)['max_batch_size'] == 1

    override = json.dumps({'provision_profile_overrides': {'max_batch_size': 2}})
    check = run_playbook(DEPLOY, inventory, '--check', '--diff', '-e', override)
    assert check.rc == 0 and check.changed(host) == 1
    [(name, result)] = [(n, r) for n, r in check.tasks(host) if r.get('changed')]
    assert 'profile.json' in name
    diff = result['diff'][0] if isinstance(result['diff'], list) else result['diff']
    assert '"max_batch_size": 1' in diff['before'] and '"max_batch_size": 2' in diff['after']
    assert read_profile(host)['max_batch_size'] == 1, 'check mode changed the device'

    run = run_playbook(DEPLOY, inventory, '-e', override)
    assert run.rc == 0 and run.changed(host) == 1
    assert read_profile(host)['max_batch_size'] == 2


def test_unknown_class_fails_before_any_change(make_device, run_playbook, tmp_path):
    host = make_device('generic')
    inventory = write_inventory(tmp_path / 'inventory.json',
                                {host: {'group': 'generic', 'edgeai_hardware_class': 'jetson_tx9'}})
    run = run_playbook(DEPLOY, inventory)
    assert run.rc != 0
    [(task, msg)] = run.failures(host)
    assert 'jetson_tx9' in msg and KNOWN in msg, msg
    assert run.changed(host) == 0
    assert not device_has(host, '-e', '/opt/edgeai')


def test_invalid_profile_override_fails_before_any_change(make_device, run_playbook, tmp_path):
    host = make_device('generic')
    inventory = write_inventory(tmp_path / 'inventory.json',
                                {host: {'group': 'generic', 'provision_profile_overrides': {'precision': 'fp8'}}})
    run = run_playbook(DEPLOY, inventory)
    assert run.rc != 0
    [(task, msg)] = run.failures(host)
    assert 'fp8' in msg and 'precision' in msg, msg
    assert not device_has(host, '-e', '/opt/edgeai')


def test_unreachable_host_fails_alone(make_device, run_playbook, tmp_path):
    host = make_device('generic')
    missing = 'edgeai-it-not-started'
    inventory = write_inventory(tmp_path / 'inventory.json',
                                {host: {'group': 'generic'}, missing: {'group': 'coral'}})
    run = run_playbook(DEPLOY, inventory)
    assert run.rc != 0
    assert run.stats[missing]['unreachable'] == 1 or run.stats[missing]['failures'] == 1
    assert run.stats[host]['failures'] == 0 and run.stats[host]['unreachable'] == 0
    assert run.changed(host) > 0
    assert read_profile(host)['hardware_class'] == 'generic'
