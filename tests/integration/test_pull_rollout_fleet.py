"""Staged rollouts in pull mode on a small real fleet (tests/support/pull_fleet.py): two generic amd64 devices on
an --internal podman network, pulling from a registry container over HTTPS, reporting through the fleet's
broker (TLS, the fleet CA), which the controller's reader (edgeai_runtime.controller.outcomes) reaches on
127.0.0.1 through the broker's published port.

The fleet is built once for the module (``pull_fleet``); the tests share its containers, in file order."""
from __future__ import annotations

import json
import shutil
import time

import pytest

from conftest import DEMO_RELEASE, NAME_PREFIX, REPO, WAIT_READY, podman, run_ansible_playbook, start_device, write_inventory
from support.pull_fleet import READER_TOPIC, start_pull_fleet

#: The soak of the rollout block: short, and judged on what little traffic there is (min_requests 0).
SOAK = {"seconds": 5, "p95_ms": 100, "max_error_rate": 0.05, "max_restarts": 0, "min_requests": 0, "interval_s": 1}


@pytest.fixture(scope='module')
def pull_fleet(tmp_path_factory):
    """The fleet (tests/support/pull_fleet.PullFleet): ``inventory``, ``registry_dir``, ``broker``
    (127.0.0.1:PORT), ``reader_ca`` / ``reader_cert`` / ``reader_key``, ``keys_dir``, ``artifact_dir``, ``hosts``
    and ``device_ids``, and ``collect`` (the devices' outcome records as the reader gets them from the broker)
    and ``device_rollout`` (a device's own marks). Removed at the module's end, also after a failure."""
    if not (DEMO_RELEASE / 'onnxruntime-fp32' / 'manifest.json').exists():
        pytest.skip('needs the demo models (scripts/build-demo-models.py, run by scripts/test.sh)')
    fleet = start_pull_fleet(tmp_path_factory.mktemp('pull-fleet'), start_device=start_device,
                             write_inventory=write_inventory, run_playbook=run_ansible_playbook,
                             wait_ready=WAIT_READY, prefix=NAME_PREFIX)
    print('pull_fleet: deploy %.0f s, start %.0f s' % (fleet.timings['deploy'], fleet.timings['start']))
    try:
        yield fleet
    finally:
        fleet.close()


def release_of(version, tmp_path):
    """digits ``version``, a release directory of variants: the demo models' own when built, else a copy of
    1.0.0's variants under that version."""
    built = DEMO_RELEASE.parent / ('digits-%s' % version)
    variants = sorted(p for p in built.glob('*/manifest.json')) if built.is_dir() else []
    if variants and all(json.loads(p.read_text())['version'] == version for p in variants):
        return built
    dest = tmp_path / ('digits-%s' % version)
    for variant in DEMO_RELEASE.iterdir():
        if (variant / 'manifest.json').is_file():
            shutil.copytree(variant, dest / variant.name)
            manifest = json.loads((dest / variant.name / 'manifest.json').read_text())
            manifest['version'] = version
            (dest / variant.name / 'manifest.json').write_text(json.dumps(manifest))
    return dest


def test_agents_report_rollout_verdicts_through_the_broker(pull_fleet, tmp_path):
    fleet = pull_fleet
    rollout = {"id": "digits-1.1.0", "attempt": 1, "action": "update", "soak": SOAK}
    for host in fleet.hosts:
        assert fleet.serving(host) == '1.0.0', host
        # The agent polls every 5 s: its timer may be late by 1 s, not systemd's default minute.
        timer = podman('exec', host, 'systemctl', 'show', '-p', 'AccuracyUSec', '--value', 'edgeai-agent.timer')
        assert timer.stdout.strip() == '1s', timer.stdout

    # 1. The reader's session exists before anything is published (a device drops a record once the broker has it).
    session = 'digits-1.1.0-%s' % fleet.broker_port
    registered = fleet.register(session)
    assert registered['rc'] == 0, registered
    assert registered['changed'] is True and registered['session_present'] is False, registered
    assert registered['topic'] == READER_TOPIC and registered['broker'] == fleet.broker, registered

    # 2. Publish digits 1.1.0 for both devices, each entry with the rollout block.
    published_at = time.time()
    published = fleet.publish([release_of('1.1.0', tmp_path)], rollout=rollout)
    assert published['rc'] == 0, published
    assert published['refused'] == {} and sorted(published['variants']) == sorted(fleet.hosts), published
    for host in fleet.hosts:
        key_id = fleet.device_json(host, 'keys', 'show')['current']['key_id']
        doc = json.loads((fleet.registry_dir / 'updates' / ('%s.json' % key_id)).read_text())
        assert [(m['name'], m['version'], m.get('rollout')) for m in doc['models']] == [('digits', '1.1.0', rollout)]

    # 3. The agents' timers take it, soak it and report; the reader collects both verdicts from the broker.
    started = time.monotonic()
    collected = fleet.collect(session, 'digits-1.1.0', 1, 'update', timeout=240)
    seconds = time.monotonic() - started
    print('collect: %.0f s' % seconds)
    assert collected['rc'] == 0, collected
    assert collected['complete'] is True and collected['missing'] == [], '%s\n%s' % (
        json.dumps(collected, indent=1)[-4000:], fleet.diagnose())
    assert collected['ignored']['topic_mismatch'] == 0 and collected['mismatched'] == [], collected
    for host in fleet.hosts:
        envelope = collected['by_host'][host]
        device_id = fleet.device_ids[host]
        assert envelope['device_id'] == device_id and envelope['kind'] == 'rollout', envelope
        verdict = envelope['data']
        assert verdict['rollout'] == 'digits-1.1.0' and verdict['attempt'] == 1 and verdict['action'] == 'update'
        assert verdict['name'] == 'digits' and verdict['version'] == '1.1.0', verdict
        assert verdict['state'] == 'succeeded', verdict
        assert (verdict['version_before'], verdict['version_after'], verdict['updated']) == ('1.0.0', '1.1.0', True)
        assert verdict['reason'] is None, verdict
        assert verdict['soak']['passed'] is True and verdict['soak']['reasons'] == [], verdict['soak']
        print('%s: verdict %.1f s after the publication' % (host, verdict['time'] - published_at))
    # What the broker gave the reader: the rollout records of this fleet's devices only (the ACL: nothing else).
    spooled = fleet.spooled(session)
    assert spooled and sorted({line['topic'] for line in spooled}) == sorted(
        'edgeai/%s/rollout' % fleet.device_ids[h] for h in fleet.hosts), spooled

    # 4. On the devices: 1.1.0 serves, it came by pull, and the marks are the rollout's, reported once.
    for host in fleet.hosts:
        assert fleet.serving(host) == '1.1.0', host
        history = fleet.device_json(host, 'ota', 'history', '--name', 'digits')['history']
        assert (history[0]['version'], history[0]['mode'], history[0]['outcome']) == ('1.1.0', 'pull', 'committed')
        mine = fleet.device_rollout(host, 'digits-1.1.0')
        assert [m['mark'] for m in mine['marks']] == ['installing', 'installed', 'soaked'], mine['marks']
        assert list(mine['reported']) == ['digits-1.1.0#1#update'], mine['reported']
        seq = collected['by_host'][host]['seq']
        assert mine['reported']['digits-1.1.0#1#update']['seq'] == seq, (mine['reported'], seq)

    # 5. A second collect has it all in the spool already: it does not connect.
    again = fleet.collect(session, 'digits-1.1.0', 1, 'update', timeout=30)
    assert again['rc'] == 0 and again['complete'] is True and again['connected'] is False, again
    assert {d: v['seq'] for d, v in again['verdicts'].items()} == {
        d: v['seq'] for d, v in collected['verdicts'].items()}


#: Digits requests to the device's own service, about 5 a second, until the container goes (as
#: molecule/rollout/files/traffic.py, which a camera stands in for).
TRAFFIC = r'''
import json, time, urllib.request
body = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [8.0] * 64}]}).encode()
while True:
    try:
        urllib.request.urlopen(urllib.request.Request("http://127.0.0.1:8080/v2/models/digits/infer", data=body,
                               headers={"Content-Type": "application/json"}), timeout=10).read()
    except OSError:
        pass
    time.sleep(0.2)
'''


def test_rollout_yml_in_pull_mode_breaches_in_a_wave_rolls_the_fleet_back_and_resumes(pull_fleet, tmp_path):
    """playbooks/rollout.yml with every host in rollout_mode pull: the waves publish documents with the rollout
    block, the gate counts the verdicts the agents report through the broker, and a breach publishes the fleet
    rollback. Run 1: traffic on the canary only, so the canary passes its soak and wave1's device fails it (too
    few requests): wave1 breaches and both go back to what they served. Run 2 (resume), traffic on both: green."""
    fleet = pull_fleet
    canary, other = fleet.hosts
    before = {host: fleet.serving(host) for host in fleet.hosts}
    assert set(before.values()) == {'1.1.0'}, before  # what the first test left (it rolled 1.1.0 out by pull)
    ledgers = tmp_path / 'ledgers'
    settings = {
        'rollout_release': str(release_of('1.2.0', tmp_path)),
        'rollout_waves': 'canary=%s|100' % fleet.device_ids[canary],
        'rollout_soak': 8, 'rollout_soak_interval': 1, 'rollout_soak_min_requests': 10, 'rollout_watch': 1,
        'rollout_dir': str(ledgers), 'rollout_pull_timeout': 240,
        'rollout_pull_registry_dir': str(fleet.registry_dir), 'rollout_pull_broker': fleet.broker,
        'rollout_pull_ca': fleet.reader_ca, 'rollout_pull_cert': fleet.reader_cert,
        'rollout_pull_key': fleet.reader_key}
    playbook = REPO / 'playbooks' / 'rollout.yml'
    podman('exec', '-d', canary, '/usr/bin/python3', '-c', TRAFFIC)

    started = time.monotonic()
    first = run_ansible_playbook(playbook, fleet.inventory, '-e', json.dumps(settings))
    print('rollout.yml, run 1 (breach): %.0f s' % (time.monotonic() - started))
    ledger = json.loads((ledgers / 'digits-1.2.0' / 'ledger.json').read_text())
    states = {host: ledger['devices'][host]['state'] for host in fleet.hosts}
    assert first.rc != 0, 'run 1 did not fail although wave1 breached: %s' % states
    assert ledger['breach'] and ledger['breach']['wave'] == 'wave1', (ledger['breach'], fleet.diagnose())
    assert states[canary] == 'rolled_back', (ledger['devices'][canary], fleet.diagnose())
    assert states[other] in ('failed', 'rolled_back'), ledger['devices'][other]
    assert 'requests' in ledger['devices'][other]['reason'], ledger['devices'][other]  # too few: no traffic
    assert {ledger['devices'][h]['mode'] for h in fleet.hosts} == {'pull'}
    for host in fleet.hosts:  # the fleet rollback: each is back on what it served before the rollout
        assert fleet.serving(host) == '1.1.0', (host, fleet.diagnose([host]))
    rollback = fleet.device_rollout(canary, 'digits-1.2.0')
    assert 'digits-1.2.0#1#rollback' in rollback['reported'], rollback['reported']

    # Run 2: the cause is gone (traffic on both); resume starts attempt 2 and goes green.
    podman('exec', '-d', other, '/usr/bin/python3', '-c', TRAFFIC)
    started = time.monotonic()
    second = run_ansible_playbook(playbook, fleet.inventory, '-e', json.dumps(dict(settings, rollout_action='resume')))
    print('rollout.yml, run 2 (resume): %.0f s' % (time.monotonic() - started))
    ledger = json.loads((ledgers / 'digits-1.2.0' / 'ledger.json').read_text())
    assert second.rc == 0, ({h: second.failures(h) for h in fleet.hosts}, ledger['devices'], fleet.diagnose())
    assert ledger['attempt'] == 2 and ledger['status'] == 'succeeded', (ledger['attempt'], ledger['status'])
    assert {h: ledger['devices'][h]['state'] for h in fleet.hosts} == dict.fromkeys(fleet.hosts, 'succeeded')
    for host in fleet.hosts:
        assert fleet.serving(host) == '1.2.0', host
        history = fleet.device_json(host, 'ota', 'history', '--name', 'digits')['history']
        assert (history[0]['version'], history[0]['mode']) == ('1.2.0', 'pull'), history[:2]
