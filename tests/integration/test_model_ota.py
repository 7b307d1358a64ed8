"""edgeai.fleet.model (push-mode OTA) on a real simulated device (podman container, network: none):
an update goes through its phases and serves; a re-run sends and changes nothing; check mode and
rollback are honest; a version that fails its accuracy gate is refused with the host and the reason,
and the previous version keeps serving; the history is a fact."""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml
from edgeai_runtime.format import artifact
from edgeai_runtime.controller import deltas, publisher
from edgeai_runtime.format.keys import key_id

from conftest import DEMO_MODEL, REPO, device_json, version_of

DEPLOY = REPO / 'deploy.yml'

PLAY = [{'hosts': 'edgeai_devices', 'gather_facts': False, 'tasks': [{
    'name': 'model task',
    'edgeai.fleet.model': '{{ model_args }}',
    'register': 'out',
}, {
    'name': 'history fact',
    'ansible.builtin.debug': {'var': 'edgeai_model_history'},
}]}]


def model_task(run_playbook, tmp_path, inventory, label, *extra, **args):
    playbook = tmp_path / ('%s.yml' % label)
    playbook.write_text(yaml.safe_dump(PLAY))
    extra_vars = tmp_path / ('%s-vars.json' % label)
    extra_vars.write_text(json.dumps({'model_args': args}))
    return run_playbook(playbook, inventory, '-e', '@%s' % extra_vars, *extra)


def result_of(run, host):
    return [r for n, r in run.tasks(host) if n == 'model task'][0]


def test_push_ota_update_rerun_check_rollback_and_refusal(deployed, run_playbook, tmp_path):
    host, inventory, common = deployed
    keys = dict(keys_dir=common['edgeai_fleet_keys_dir'], artifact_dir=common['inference_service_artifact_dir'])
    v1 = json.loads((DEMO_MODEL / 'manifest.json').read_text())['version']
    v2 = version_of(DEMO_MODEL, tmp_path / 'v2', '2.0.0')

    # 1. The update: every phase timed, the new version serves, the history is a fact.
    run = model_task(run_playbook, tmp_path, inventory, 'update', src=str(v2), watch=2, **keys)
    assert run.rc == 0, run.failures(host)
    done = result_of(run, host)
    assert done['changed'] and done['outcome'] == 'committed'
    assert (done['previous_version'], done['active_version']) == (v1, '2.0.0')
    assert done['bytes_transferred'] > 0
    # v1's artifact is in artifact_dir and v2 shares its bytes: a delta went instead of the artifact.
    sent = done['delta']
    assert sent['used'] and sent['base_version'] == v1, sent
    assert sent['bytes'] <= 0.2 * sent['full_bytes'], sent
    gate_files = sum(f.stat().st_size for f in v2.iterdir() if f.name != 'manifest.json'
                     and f.name != json.loads((v2 / 'manifest.json').read_text())['model_file'])
    assert done['bytes_transferred'] == sent['bytes'] + gate_files  # the delta went, not the artifact
    assert set(done['timings']) >= {'stage', 'verify', 'load', 'gate', 'activate', 'watch', 'commit'}
    history = done['ansible_facts']['edgeai_model_history']
    assert history[0]['version'] == '2.0.0' and history[0]['outcome'] == 'committed'
    assert device_json(host, 'model', 'list')['models'][0]['active'] == '2.0.0'

    # 2. The same again: nothing sent, nothing changed.
    again = model_task(run_playbook, tmp_path, inventory, 'again', src=str(v2), watch=2, **keys)
    assert again.rc == 0 and again.changed(host) == 0, again.failures(host)
    assert result_of(again, host)['bytes_transferred'] == 0

    # 3. Check mode predicts a rollback and changes nothing.
    check = model_task(run_playbook, tmp_path, inventory, 'check', '--check', '--diff', state='rolled_back',
                       name='digits')
    predicted = result_of(check, host)
    assert check.rc == 0 and predicted['changed'] and 'active %s' % v1 in predicted['diff']['after']
    assert device_json(host, 'model', 'list')['models'][0]['active'] == '2.0.0'

    # 4. The rollback itself, with its reason in the history.
    back = model_task(run_playbook, tmp_path, inventory, 'back', state='rolled_back', name='digits',
                      reason='line 3 misreads')
    rolled = result_of(back, host)
    assert back.rc == 0 and rolled['changed'] and rolled['active_version'] == v1
    assert rolled['ansible_facts']['edgeai_model_history'][0]['reason'] == 'line 3 misreads'
    assert device_json(host, 'model', 'list')['models'][0]['active'] == v1

    # 5. A version whose accuracy is below its own threshold: refused, named, and v1 still serves.
    v3 = version_of(DEMO_MODEL, tmp_path / 'v3', '3.0.0', accuracy_threshold=0.9999)
    bad = model_task(run_playbook, tmp_path, inventory, 'bad', src=str(v3), watch=1, **keys)
    failed = result_of(bad, host)
    assert bad.rc != 0 and failed['failed']
    assert failed['msg'].startswith(host + ': ') and 'below the threshold 0.9999' in failed['msg']
    assert failed['outcome'] == 'refused' and failed['phase'] == 'gate' and not failed['changed']
    assert failed['ansible_facts']['edgeai_model_history'][0]['outcome'] == 'refused'
    listed = device_json(host, 'model', 'list')['models'][0]
    assert listed['active'] == v1 and '3.0.0' not in listed['versions']

    # 6. A delta the device cannot use (signed and intact, but patching into other bytes: a controller
    #    bug): the device refuses it and changes nothing, the full artifact follows, and the update goes
    #    through.
    v4 = version_of(DEMO_MODEL, tmp_path / 'v4', '4.0.0')
    fleet = publisher.FleetKeys(keys['keys_dir'])
    target = publisher.ensure_artifact(publisher.ModelDir.read(str(v4)), keys['artifact_dir'], fleet)[0]
    # Artifact files are named after the variant's identity (name-version-runtime-precision-sha16-cipher).
    [base_path] = [str(p) for p in Path(keys['artifact_dir']).glob('digits-%s-onnxruntime-fp32-*-aes.eaf' % v1)]
    delta_path, _facts = publisher.ensure_delta(base_path, target, fleet)
    trusted = {key_id(fleet.signing): fleet.signing.public_key()}
    base = artifact.Artifact.open(base_path, trusted)
    base_model = base.decrypt(publisher._escrow_data_key(base_path, base.artifact_id, fleet))
    wrong = bytearray(base_model)
    wrong[-10] ^= 1
    target_id = artifact.read_header(target)['artifact_id']
    assert deltas.make(base_model, base.manifest.to_dict(), target, publisher._escrow_data_key(target, target_id, fleet),
                       fleet.signing, delta_path, target_model=bytes(wrong))
    fallback = model_task(run_playbook, tmp_path, inventory, 'fallback', src=str(v4), watch=1, **keys)
    assert fallback.rc == 0, fallback.failures(host)
    done = result_of(fallback, host)
    assert done['outcome'] == 'committed' and done['active_version'] == '4.0.0'
    assert not done['delta']['used'] and 'delta_result' in done['delta']['fallback_reason'], done['delta']
    assert done['bytes_transferred'] > os.path.getsize(target)
    assert [r['outcome'] for r in done['ansible_facts']['edgeai_model_history']][:1] == ['committed']

    # 7. Remove the version no longer used.
    gone = model_task(run_playbook, tmp_path, inventory, 'gone', state='absent', name='digits', version='2.0.0')
    assert gone.rc == 0 and result_of(gone, host)['changed']
    assert '2.0.0' not in device_json(host, 'model', 'list')['models'][0]['versions']


OTA = REPO / 'playbooks' / 'ota.yml'
ROLLBACK = REPO / 'playbooks' / 'rollback.yml'


def test_ota_and_rollback_playbooks(deployed, run_playbook, tmp_path):
    """playbooks/ota.yml (role model_deploy) rolls a version out and changes nothing when run again;
    a version that fails its gate fails the host with the reason after the rollback handler ran;
    playbooks/rollback.yml serves the previous version again."""
    host, inventory, common = deployed
    v1 = json.loads((DEMO_MODEL / 'manifest.json').read_text())['version']
    v2 = version_of(DEMO_MODEL, tmp_path / 'v2', '2.0.0')
    v3 = version_of(DEMO_MODEL, tmp_path / 'v3', '3.0.0', accuracy_threshold=0.9999)

    def ota(src, *extra):
        extra_vars = tmp_path / ('ota-%s.json' % src.name)
        extra_vars.write_text(json.dumps({'ota_models': [{'src': str(src)}], 'model_deploy_watch': 1}))
        return run_playbook(OTA, inventory, '-e', '@%s' % extra_vars, *extra)

    first = ota(v2)
    assert first.rc == 0, first.failures(host)
    assert device_json(host, 'model', 'list')['models'][0]['active'] == '2.0.0'
    again = ota(v2)
    assert again.rc == 0 and again.changed(host) == 0, [n for n, r in again.tasks(host) if r.get('changed')]

    bad = ota(v3)
    assert bad.rc != 0
    failures = bad.failures(host)
    assert failures and failures[-1][0].endswith('Fail the host with the reason'), failures
    assert 'rolled back' in failures[-1][1] and 'below the threshold 0.9999' in failures[-1][1]
    handler = [r for n, r in bad.tasks(host) if n.endswith('Roll back to the versions that served before the rollout')]
    assert handler, 'the rollback handler did not run'
    assert device_json(host, 'model', 'list')['models'][0]['active'] == '2.0.0'

    back = run_playbook(ROLLBACK, inventory, '-e', json.dumps({'model': 'digits', 'reason': 'playbook test'}))
    assert back.rc == 0, back.failures(host)
    assert device_json(host, 'model', 'list')['models'][0]['active'] == v1
    history = device_json(host, 'ota', 'history', '--name', 'digits')['history']
    assert history[0]['outcome'] == 'manual_rollback' and history[0]['reason'] == 'playbook test'
    assert [row['outcome'] for row in history].count('refused') == 1
