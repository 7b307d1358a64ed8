"""deploy.yml through ansible_runner.run(), the way AWX runs a job (docs/awx.md, section 3).

The private data directory holds real copies, not links: ``project/`` is the checkout's files as a
git checkout has them (what AWX syncs), and ``inventory/`` is a copy of inventories/sim with the test's
container added to its ``generic`` group. ``env/envvars`` names the podman settings. ANSIBLE_CONFIG is
not set, so ansible-playbook reads ``project/ansible.cfg`` from its working directory, as in AWX.

The sim inventory's controller-side paths must then resolve inside ``project/``: the fleet keys and the
packed artifacts are created in ``project/.state``. The only thing not copied is the wheelhouse, a
download cache: ``project/.state/wheelhouse`` links to the checkout's, so that no run downloads wheels
again. The demo models are copied.

Results are read from the job events, as AWX reads them (with ansible-core 2.19 the runner's fact
cache is empty; the facts come from the device_facts event).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import DEMO_RELEASE, REPO, WAIT_READY, podman

ansible_runner = pytest.importorskip('ansible_runner')

MODEL_TASK = 'Install and activate the bootstrap models'


def copy_project(dest):
    """The checkout's files, tracked or new but not ignored: what a git checkout of it would hold."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split('\0')
    for name in filter(None, listed):
        src = REPO / name
        if not (src.exists() or src.is_symlink()):  # deleted in the working tree, not yet committed
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name, follow_symlinks=False)  # the .collections link stays a relative link


def copy_inventory(dest, host):
    shutil.copytree(REPO / 'inventories' / 'sim', dest)
    hosts = yaml.safe_load((dest / 'hosts.yml').read_text())
    generic = hosts['all']['children']['edgeai_devices']['children']['generic']['hosts']
    generic[host] = {'sim_arch': 'amd64', 'sim_evidence': 'generic'}
    (dest / 'hosts.yml').write_text(yaml.safe_dump(hosts, sort_keys=False))


@pytest.fixture
def private_data_dir(tmp_path, make_device, monkeypatch):
    if not (DEMO_RELEASE / 'onnxruntime-fp32' / 'manifest.json').exists():
        pytest.skip('needs the demo models (scripts/build-demo-models.py, run by scripts/test.sh)')
    host = make_device('generic')
    pdd = tmp_path / 'runner'
    project = pdd / 'project'
    copy_project(project)
    state = project / '.state'
    state.mkdir()
    shutil.copytree(DEMO_RELEASE, state / 'demo-models' / DEMO_RELEASE.name)
    (REPO / '.state' / 'wheelhouse').mkdir(parents=True, exist_ok=True)
    (state / 'wheelhouse').symlink_to(REPO / '.state' / 'wheelhouse')
    copy_inventory(pdd / 'inventory', host)
    (pdd / 'env').mkdir()
    (pdd / 'env' / 'envvars').write_text(yaml.safe_dump(
        {'CONTAINERS_CONF': str(project / 'scripts' / 'containers.conf')}))
    # ansible-runner hands its own environment to ansible-playbook; AWX sets no ANSIBLE_CONFIG.
    monkeypatch.delenv('ANSIBLE_CONFIG', raising=False)
    return pdd, host


def test_deploy_through_ansible_runner(private_data_dir):
    pdd, host = private_data_dir
    project_state = pdd / 'project' / '.state'

    run = ansible_runner.run(private_data_dir=str(pdd), playbook='deploy.yml', limit=host, quiet=True, timeout=900)
    events = list(run.events)
    failed = [(e['event_data'].get('task'), e['event_data'].get('res', {}).get('msg'))
              for e in events if e['event'] in ('runner_on_failed', 'runner_on_unreachable')]
    assert (run.status, run.rc) == ('successful', 0), (failed, run.stdout.read()[-4000:])
    assert failed == []

    ok = [e['event_data'] for e in events if e['event'] == 'runner_on_ok' and e['event_data'].get('host') == host]
    by_task = {}
    for data in ok:
        by_task.setdefault(data['task'], []).append(data['res'])
    [facts] = [res['ansible_facts']['edgeai'] for res in by_task['Read the device\'s hardware class, accelerators and runtimes']]
    assert facts['hardware_class'] == 'generic'

    [models] = [res for task, results in by_task.items() if task.startswith(MODEL_TASK) for res in results]
    assert models['changed'] is True
    artifacts = [item['artifact'] for item in models['results']]
    assert artifacts and all(path.startswith(str(project_state / 'artifacts') + os.sep) for path in artifacts), artifacts
    # The fleet keys are the project's too. Paths relative to inventory_dir (inventory/../../.state) would
    # have pointed next to the private data directory.
    assert (project_state / 'fleet-keys').is_dir() and any((project_state / 'fleet-keys').iterdir())
    assert not (pdd.parent / '.state').exists()

    ready = podman('exec', host, '/usr/bin/python3', '-c', WAIT_READY % 'digits', check=False)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    # What the runner ran: ansible-playbook in project/, on the copied inventory, with no ANSIBLE_CONFIG.
    command = json.loads((Path(run.config.artifact_dir) / 'command').read_text())
    assert command['cwd'] == str(pdd / 'project')
    assert command['command'][command['command'].index('-i') + 1] == str(pdd / 'inventory')
    assert 'ANSIBLE_CONFIG' not in command['env']
    assert command['env']['CONTAINERS_CONF'] == str(pdd / 'project' / 'scripts' / 'containers.conf')  # env/envvars

    # The staged rollout as an AWX job template runs it: playbooks/rollout.yml on the same device, a new release.
    # No traffic reaches this device, so the soak judges no requests (min_requests 0); a short soak and watch.
    releases = project_state / 'demo-models'
    subprocess.run(['python3', str(REPO / 'scripts' / 'build-demo-models.py'), str(releases), '--version', '1.1.0'],
                   check=True, capture_output=True)
    ledgers = pdd / 'ledgers'
    rollout = ansible_runner.run(private_data_dir=str(pdd), playbook='playbooks/rollout.yml', limit=host, quiet=True,
                                 timeout=900, extravars={
                                     'rollout_release': str(releases / 'digits-1.1.0'), 'rollout_soak': 3,
                                     'rollout_soak_interval': 1, 'rollout_soak_min_requests': 0, 'rollout_watch': 1,
                                     'rollout_dir': str(ledgers)})
    events = list(rollout.events)
    failed = [(e['event_data'].get('task'), e['event_data'].get('res', {}).get('msg'))
              for e in events if e['event'] in ('runner_on_failed', 'runner_on_unreachable')]
    assert (rollout.status, rollout.rc) == ('successful', 0), (failed, rollout.stdout.read()[-4000:])
    results = {}
    for event in events:
        if event['event'] == 'runner_on_ok':
            results.setdefault(event['event_data']['task'], []).append(event['event_data']['res'])
    [planned] = results['Plan the rollout - check the input, rebuild the ledger from the devices, choose the waves '
                        'still to run']
    assert [w['hosts'] for w in planned['waves']] == [[host]] and planned['blocked'] is None
    [update] = results['Update the model (stage, verify, load, gate, activate, watch, commit)']
    assert update['changed'] and (update['previous_version'], update['active_version']) == ('1.0.0', '1.1.0')
    [soaked] = results['Soak the new version under the device\'s real traffic']
    assert soaked['soak']['passed'] and soaked['soak']['restarts'] == 0 and soaked['soak']['seconds'] >= 3
    [closed] = results['Close the ledger']
    assert closed['ledger']['status'] == 'succeeded' and closed['ledger']['devices'][host]['state'] == 'succeeded'
    on_disk = json.loads((ledgers / 'digits-1.1.0' / 'ledger.json').read_text())
    assert on_disk['devices'][host]['version_before'] == '1.0.0'
    assert [h['state'] for h in on_disk['devices'][host]['history']] == [
        'transferring', 'installing', 'soaking', 'succeeded']
