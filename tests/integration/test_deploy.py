"""deploy.yml against fresh simulated devices: check mode, idempotence, diff and bad input.

Real podman containers from the target image, real ansible-playbook runs. One generic device
(``generic_device``) serves the module's tests in file order: test_check_run_check_run deploys it from
nothing, the later ones start from the device it left (a deploy costs minutes; the bad-input tests need
devices with nothing on them and start their own).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re

import pytest

from conftest import REPO, device_json, podman, remove_containers, start_device, write_inventory

DEPLOY = REPO / 'deploy.yml'
KNOWN = 'jetson_nano, jetson_orin, raspberry_pi, coral, generic'
MARKER = '/opt/edgeai/venv/.edgeai-installed'
PIP = 'Install the device runtime and its runtime packages into the venv'
RECORD = 'Record what the venv was installed from'
PROFILE = 'Write the resolved profile to etc/profile.json under /opt/edgeai'


def device_has(host, *test_args):
    return podman('exec', host, 'test', *test_args, check=False).returncode == 0


def read_profile(host):
    return json.loads(podman('exec', host, 'cat', '/opt/edgeai/etc/profile.json').stdout)


@pytest.fixture(scope='module')
def generic_device():
    host = start_device('generic')
    try:
        yield host
    finally:
        remove_containers([host])


def test_check_run_check_run(generic_device, run_playbook, tmp_path):
    """community.crypto's pattern: check, run, check, run -> changed, changed, not changed, not changed."""
    host = generic_device
    assert not device_has(host, '-e', '/opt/edgeai'), 'the module device is not fresh: this test must run first'
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

    # The venv's install marker records what it was installed from; while it matches, re-runs skip the
    # pushes and pip.
    marker = json.loads(podman('exec', host, 'cat', MARKER).stdout)
    wheel = next((REPO / '.state' / 'home' / '.cache' / 'edgeai-fleet' / 'wheelhouse' / 'dist').glob('*.whl'), None)
    if wheel is not None:  # the default cache under HOME, as scripts/test.sh sets it
        assert marker['wheel_sha256'] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    version = re.search(r'(?m)^version = "([^"]+)"', (REPO / 'device_runtime' / 'pyproject.toml').read_text()).group(1)
    assert marker['requirements'] == ['edgeai-device-runtime==' + version, 'onnxruntime'], marker
    for run in (check2, run2):
        assert task_result(run, host, PIP).get('skipped'), 'pip ran although the marker matched'
    assert not task_result(run1, host, PIP).get('skipped') and task_result(run1, host, PIP)['changed']

    # A marker of other inputs (here: another wheel) installs again: pip runs (in check mode with --dry-run)
    # and the marker is rewritten; check mode predicts that and changes nothing.
    stale = json.dumps(dict(marker, wheel_sha256='0' * 64), indent=4, sort_keys=True) + '\n'
    podman('exec', '-i', host, 'sh', '-c', 'cat > %s' % MARKER, input=stale)
    check3 = run_playbook(DEPLOY, inventory, '--check')
    assert check3.rc == 0, check3.failures(host)
    assert changed_tasks(check3, host) == [RECORD]
    assert not task_result(check3, host, PIP).get('skipped')
    assert podman('exec', host, 'cat', MARKER).stdout == stale, 'check mode rewrote the marker'
    run3 = run_playbook(DEPLOY, inventory)
    assert run3.rc == 0, run3.failures(host)
    assert changed_tasks(run3, host) == [RECORD]
    assert not task_result(run3, host, PIP).get('skipped')
    assert json.loads(podman('exec', host, 'cat', MARKER).stdout) == marker

    # A missing marker (a venv installed before markers, or recreated) installs again too.
    podman('exec', host, 'rm', MARKER)
    run4 = run_playbook(DEPLOY, inventory)
    assert run4.rc == 0 and changed_tasks(run4, host) == [RECORD], run4.failures(host)
    assert json.loads(podman('exec', host, 'cat', MARKER).stdout) == marker


def task_result(run, host, name):
    """The host's result of the one task called name (without its role prefix)."""
    [result] = [r for n, r in run.tasks(host) if n.split(' : ')[-1] == name]
    return result


def changed_tasks(run, host):
    return [n.split(' : ')[-1] for n, r in run.tasks(host) if r.get('changed')]


def test_profile_override_diff_is_honest(generic_device, run_playbook, tmp_path):
    host = generic_device  # deployed by test_check_run_check_run
    inventory = write_inventory(tmp_path / 'inventory.json', {host: {'group': 'generic'}})
    assert read_profile(host)['max_batch_size'] == 8

    override = json.dumps({'provision_profile_overrides': {'max_batch_size': 2}})
    check = run_playbook(DEPLOY, inventory, '--check', '--diff', '-e', override)
    assert check.rc == 0 and check.changed(host) == 1
    [(name, result)] = [(n, r) for n, r in check.tasks(host) if r.get('changed')]
    assert 'profile.json' in name
    diff = result['diff'][0] if isinstance(result['diff'], list) else result['diff']
    assert '"max_batch_size": 8' in diff['before'] and '"max_batch_size": 2' in diff['after']
    assert read_profile(host)['max_batch_size'] == 8, 'check mode changed the device'

    run = run_playbook(DEPLOY, inventory, '-e', override)
    assert run.rc == 0 and run.changed(host) == 1
    assert read_profile(host)['max_batch_size'] == 2

    # Without the override the class default comes back, and only the profile changes.
    back = run_playbook(DEPLOY, inventory)
    assert back.rc == 0 and changed_tasks(back, host) == [PROFILE], changed_tasks(back, host)
    assert read_profile(host)['max_batch_size'] == 8


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


def test_unreachable_host_fails_alone(generic_device, run_playbook, tmp_path):
    host = generic_device  # deployed by test_check_run_check_run, its profile as the class has it
    missing = 'edgeai-it-not-started'
    inventory = write_inventory(tmp_path / 'inventory.json',
                                {host: {'group': 'generic'}, missing: {'group': 'coral'}})
    run = run_playbook(DEPLOY, inventory)
    assert run.rc != 0
    assert run.stats[missing]['unreachable'] == 1 or run.stats[missing]['failures'] == 1
    assert run.stats[host]['failures'] == 0 and run.stats[host]['unreachable'] == 0, run.failures(host)
    assert run.changed(host) == 0, changed_tasks(run, host)  # the whole play ran for it, and found it as it was
    assert task_result(run, host, PIP).get('skipped') and read_profile(host)['hardware_class'] == 'generic'

    # The same fleet through playbooks/telemetry.yml: every targeted host is in both files, the unreachable
    # one as null (JSON) and reachable=false (CSV); the deployed one with its real sample.
    out = tmp_path / 'telemetry'
    tele = run_playbook(REPO / 'playbooks' / 'telemetry.yml', inventory, '-e', 'telemetry_dir=%s' % out)
    assert tele.stats[host]['failures'] == 0 and tele.changed(host) == 0, tele.failures(host)
    assert tele.stats['localhost']['failures'] == 0, tele.failures('localhost')
    samples = json.loads((out / 'fleet-telemetry.json').read_text())
    assert set(samples) == {host, missing} and samples[missing] is None
    sample = samples[host]
    assert sample['device_id'] == host and sample['hardware_class'] == 'generic'
    assert sample['service']['running'] is True and sample['service']['resident_bytes'] > 0
    assert sample['outbox'] is not None and sample['memory']['total_bytes'] > 0
    with open(out / 'fleet-telemetry.csv', newline='', encoding='utf-8') as f:
        rows = {row['host']: row for row in csv.DictReader(f)}
    assert set(rows) == {host, missing}
    assert rows[missing]['reachable'] == 'false' and rows[missing]['cpu_count'] == ''
    assert rows[host]['reachable'] == 'true' and rows[host]['service_running'] == 'true'
    assert int(rows[host]['cpu_count']) == sample['cpu']['count']

    # The telemetry daemon runs, and has queued its first sample (no broker is configured: it is kept).
    assert podman('exec', host, 'systemctl', 'is-active', 'edgeai-telemetry.service', check=False).stdout.strip() \
        == 'active'
    outbox = device_json(host, 'outbox', 'status')['outbox']
    assert outbox['kinds']['telemetry']['records'] >= 1, outbox

    # Plain `setup` shows the device's health and models as the local fact (facts.d/edgeai.fact).
    play = tmp_path / 'setup.yml'
    play.write_text(json.dumps([{'hosts': host, 'gather_facts': False, 'tasks': [
        {'ansible.builtin.setup': {'gather_subset': ['!all', '!min', 'local']}},
        {'ansible.builtin.debug': {'var': 'ansible_local.edgeai'}}]}]))
    setup = run_playbook(play, inventory)
    assert setup.stats[host]['failures'] == 0, setup.failures(host)
    local = setup.tasks(host)[-1][1]['ansible_local.edgeai']
    assert local['device_id'] == host and local['service']['running'] is True and 'models' in local, local
