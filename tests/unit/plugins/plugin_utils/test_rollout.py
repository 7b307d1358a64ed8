"""The staged rollout's ledger and decisions (plugins/plugin_utils/_rollout.py): the device states rebuilt from the
devices' own marks, the plan a re-run gets (resume without re-deploying, breach needs an explicit action), the
gates (per wave with a minimum, cumulative, unreachable), and the ledger file's atomic writes under a lock."""
from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from ansible_collections.edgeai.fleet.plugins.plugin_utils import _rollout as r

RELEASE = {'name': 'digits', 'version': '1.1.0', 'src': '/srv/releases/digits-1.1.0'}
THRESHOLDS = {'wave_max_failure_pct': 20, 'wave_min_finished': 1, 'total_max_failure_pct': 10,
              'unreachable_is_failure': True}
SOAK = {'seconds': 60, 'p95_ms': 100, 'max_error_rate': 0.05, 'max_restarts': 0, 'min_requests': 20, 'interval': 5}
WAVES = {'a': (0, 'canary'), 'b': (1, 'wave1'), 'c': (1, 'wave1'), 'd': (3, 'wave3')}


def mark(kind, attempt=1, t=100.0, from_version='1.0.0', reason=None, **details):
    return {'mark': kind, 'attempt': attempt, 'time': t, 'from_version': from_version, 'reason': reason,
            'details': details}


def report(serving='1.0.0', marks=(), committed=None, variant='/srv/releases/digits-1.1.0/onnxruntime-fp32'):
    return {'serving': serving, 'active': serving, 'marks': list(marks), 'committed': committed, 'variant': variant,
            'class': 'generic'}


def fresh(reports=None, cached=None, action='', waves=None):
    reports = reports or {h: report() for h in WAVES}
    return r.plan(cached, reports, waves or WAVES, RELEASE, THRESHOLDS, SOAK, action, now=1000.0)


@pytest.mark.parametrize('marks, serving, committed, expected', [
    ([], '1.0.0', None, ('pending', False)),
    ([], '1.1.0', None, ('pending', False)),  # served it before this rollout: soaked, never counted as updated
    ([mark('installing')], '1.0.0', None, ('pending', False)),  # the update did not go in
    ([mark('installing', t=100)], '1.1.0', {'finished': 150.0}, ('soaking', True)),  # it went in, its mark did not
    ([mark('installing', t=100)], '1.1.0', {'finished': 50.0}, ('pending', False)),  # an older update of 1.1.0
    ([mark('installing'), mark('installed', updated=True)], '1.1.0', None, ('soaking', True)),
    ([mark('installing'), mark('installed', updated=True), mark('soaked')], '1.1.0', None, ('succeeded', True)),
    ([mark('installing'), mark('installed', updated=True), mark('soaked')], '1.0.0', None, ('pending', False)),
    ([mark('installed', updated=True), mark('soak_failed', reason='p95')], '1.1.0', None, ('failed', True)),
    ([mark('installing'), mark('failed', reason='gate')], '1.0.0', None, ('failed', False)),
    ([mark('installed', updated=True), mark('rolled_back', cause='failed')], '1.0.0', None, ('failed', False)),
    ([mark('installed', updated=True), mark('rolled_back', reason='breach!', cause='breach')], '1.0.0', None,
     ('rolled_back', False)),
    ([mark('deferred', reason='outside its window')], '1.0.0', None, ('deferred', False)),
])
def test_a_device_state_comes_from_its_own_marks(marks, serving, committed, expected):
    found = r.state_from_marks(report(serving, marks, committed), '1.1.0', 1)
    assert (found['state'], found['updated']) == expected


def test_marks_of_an_earlier_attempt_do_not_count():
    marks = [mark('installed', attempt=1, updated=True), mark('soaked', attempt=1)]
    found = r.state_from_marks(report('1.1.0', marks), '1.1.0', 2)
    assert (found['state'], found['updated']) == ('pending', False)


def test_a_failed_soak_not_yet_rolled_back_needs_its_rollback():
    found = r.state_from_marks(report('1.1.0', [mark('installed', updated=True), mark('soak_failed')]), '1.1.0', 1)
    assert found['needs_rollback'] and found['version_before'] == '1.0.0'
    done = r.state_from_marks(report('1.0.0', [mark('installed', updated=True), mark('soak_failed')]), '1.1.0', 1)
    assert not done['needs_rollback']


def test_a_first_plan_runs_every_wave_in_order():
    ledger, todo = fresh()
    expected = [('canary', ['a']), ('wave1', ['b', 'c']), ('wave3', ['d'])]
    assert [(w['name'], w['hosts']) for w in todo['waves']] == expected
    assert todo['blocked'] is None and todo['rollback'] == [] and todo['attempt'] == 1
    assert ledger['id'] == 'digits-1.1.0' and ledger['status'] == 'running'
    assert {h: e['state'] for h, e in ledger['devices'].items()} == dict.fromkeys('abcd', 'pending')
    assert ledger['devices']['b']['version_before'] == '1.0.0'


def test_a_rerun_skips_finished_devices_even_without_the_ledger_file():
    """The canary and b finished in the first run (their marks say so); the controller lost the file."""
    done = [mark('installing'), mark('installed', updated=True), mark('soaked')]
    reports = {'a': report('1.1.0', done), 'b': report('1.1.0', done), 'c': report(), 'd': report()}
    ledger, todo = fresh(reports)
    assert [(w['name'], w['hosts']) for w in todo['waves']] == [('wave1', ['c']), ('wave3', ['d'])]
    assert ledger['devices']['a']['state'] == 'succeeded' and ledger['devices']['a']['updated']
    assert ledger['devices']['a']['version_before'] == '1.0.0'


def test_a_device_killed_mid_update_is_soaked_not_redeployed():
    reports = dict((h, report()) for h in 'bcd')
    reports['a'] = report('1.1.0', [mark('installing', t=100)], committed={'finished': 120.0})
    ledger, todo = fresh(reports)
    assert ledger['devices']['a']['state'] == 'soaking'
    assert todo['waves'][0] == {'name': 'canary', 'index': 0, 'hosts': ['a']}  # to soak: the model task is a no-op


def test_an_unreachable_device_keeps_what_the_ledger_file_says():
    ledger, _todo = fresh()
    r.record(ledger, 'a', 'succeeded', now=1001.0)
    reports = {h: report() for h in 'bcd'}
    reports['a'] = {'unreachable': True, 'msg': 'ssh: timed out'}
    again, todo = fresh(reports, cached=ledger)
    assert again['devices']['a']['state'] == 'succeeded'
    assert [w['name'] for w in todo['waves']] == ['wave1', 'wave3']


def test_a_complete_rollout_has_nothing_left_to_do():
    done = [mark('installing'), mark('installed', updated=True), mark('soaked')]
    ledger, todo = fresh({h: report('1.1.0', done) for h in WAVES})
    assert todo['waves'] == [] and ledger['status'] == 'succeeded'


def test_a_breached_rollout_needs_resume_or_restart():
    breach = [mark('installing'), mark('installed', updated=True),
              mark('rolled_back', reason='wave canary: 1 of 1 finished devices failed', cause='breach')]
    reports = {'a': report('1.0.0', breach), 'b': report(), 'c': report(), 'd': report()}
    ledger, todo = fresh(reports)
    assert todo['waves'] == [] and ledger['status'] == 'breached'
    assert 'breached (attempt 1): wave canary: 1 of 1' in todo['blocked'] and 'rollout_action=resume' in todo['blocked']

    for action in ('resume', 'restart'):
        ledger, todo = fresh(reports, action=action)
        assert todo['blocked'] is None and todo['attempt'] == 2 and ledger['attempt'] == 2
        assert [w['name'] for w in todo['waves']] == ['canary', 'wave1', 'wave3']
        assert ledger['devices']['a']['state'] == 'pending' and ledger['devices']['a']['version_before'] == '1.0.0'
    # resume keeps the ledger's events; restart starts them over
    cached, _todo = fresh(reports)
    cached['events'].append({'kind': 'wave_started', 'wave': 'canary', 'time': 1.0})
    assert any(e['kind'] == 'resume' for e in fresh(reports, cached=cached, action='resume')[0]['events'])
    assert fresh(reports, cached=cached, action='restart')[0]['events'] == []


def test_marks_of_a_new_attempt_decide():
    """After a resume (attempt 2) the canary went in and soaked again: the old breach no longer counts."""
    marks = [mark('installed', updated=True), mark('rolled_back', reason='x', cause='breach'),
             mark('installing', attempt=2, t=200), mark('installed', attempt=2, t=210, updated=True),
             mark('soaked', attempt=2, t=300)]
    reports = {'a': report('1.1.0', marks), 'b': report(), 'c': report(), 'd': report()}
    ledger, todo = fresh(reports)
    assert todo['blocked'] is None and todo['attempt'] == 2
    assert ledger['devices']['a']['state'] == 'succeeded'


def test_a_breach_left_half_rolled_back_finishes_its_rollback():
    breach = [mark('installed', updated=True), mark('rolled_back', reason='wave wave1: ...', cause='breach')]
    still = [mark('installed', updated=True), mark('soaked')]
    reports = {'a': report('1.1.0', still), 'b': report('1.0.0', breach), 'c': report(), 'd': report()}
    _ledger, todo = fresh(reports)
    assert todo['blocked'] and todo['rollback'] == ['a']


@pytest.mark.parametrize('bad, message', [
    (dict(wave_max_failure_pct=120), 'wave_max_failure_pct must be a percentage within 0-100'),
    (dict(total_max_failure_pct=-1), 'total_max_failure_pct must be a percentage within 0-100'),
    (dict(wave_min_finished=0), 'wave_min_finished must be an integer of 1 or more'),
])
def test_bad_thresholds_fail_before_anything(bad, message):
    with pytest.raises(r.RolloutError, match=message):
        r.plan(None, {h: report() for h in WAVES}, WAVES, RELEASE, dict(THRESHOLDS, **bad), SOAK, '')


def test_a_release_without_a_variant_for_some_devices_fails_naming_them():
    reports = {h: report() for h in WAVES}
    reports['b'] = dict(report(variant=None), variant_error='no variant fits jetson_nano (tensorrt fp16)')
    reports['d'] = dict(report(variant=None), variant_error='no variant fits coral (edgetpu int8)')
    with pytest.raises(r.RolloutError) as exc:
        fresh(reports)
    assert str(exc.value) == ('the release /srv/releases/digits-1.1.0 has no variant for b, d: b: no variant fits '
                              'jetson_nano (tensorrt fp16); d: no variant fits coral (edgetpu int8)')


def test_a_bad_action_is_refused():
    with pytest.raises(r.RolloutError, match='rollout_action must be one of'):
        fresh(action='again')


def run_wave(ledger, wave, states):
    r.start_wave(ledger, wave, now=1001.0)
    for host, state in states.items():
        r.record(ledger, host, 'transferring', now=1002.0)
        r.record(ledger, host, 'soaking', now=1010.0, stage_seconds=2.5, updated=True, version_after='1.1.0')
        r.record(ledger, host, state, now=1070.0, reason='' if state == 'succeeded' else 'soak failed: p95')
    return r.gate(ledger, wave, now=1071.0)


def test_a_failed_canary_breaches_and_stops_the_later_waves():
    ledger, _todo = fresh()
    gated = run_wave(ledger, 'canary', {'a': 'failed'})
    assert gated['breached'] and gated['reason'] == 'wave canary: 1 of 1 finished devices failed (100% > 20%)'
    assert ledger['status'] == 'breached' and ledger['breach']['wave'] == 'canary'
    assert [w['status'] for w in ledger['waves']] == ['breached', 'stopped', 'stopped']
    history = [h['state'] for h in ledger['devices']['a']['history']]
    assert history == ['transferring', 'installing', 'soaking', 'failed']
    assert ledger['devices']['a']['history'][1]['time'] == 1004.5


def test_a_breach_rolls_back_every_updated_device_of_every_started_wave():
    ledger, _todo = fresh()
    assert not run_wave(ledger, 'canary', {'a': 'succeeded'})['breached']
    gated = run_wave(ledger, 'wave1', {'b': 'succeeded', 'c': 'failed'})
    assert gated['breached'] and gated['reason'].startswith('wave wave1: 1 of 2 finished devices failed (50% > 20%)')
    assert gated['rollback'] == ['a', 'b']  # c failed: its own rollback already ran
    assert ledger['devices']['d']['state'] == 'pending'


def test_the_wave_minimum_defers_the_wave_threshold_but_not_the_cumulative_one():
    thresholds = dict(THRESHOLDS, wave_min_finished=3, total_max_failure_pct=60)
    ledger, _todo = r.plan(None, {h: report() for h in WAVES}, WAVES, RELEASE, thresholds, SOAK, '', now=1000.0)
    assert not run_wave(ledger, 'canary', {'a': 'succeeded'})['breached']
    assert not run_wave(ledger, 'wave1', {'b': 'failed', 'c': 'succeeded'})['breached']  # 2 finished < 3
    thresholds = dict(THRESHOLDS, wave_min_finished=3, total_max_failure_pct=30)
    ledger, _todo = r.plan(None, {h: report() for h in WAVES}, WAVES, RELEASE, thresholds, SOAK, '', now=1000.0)
    run_wave(ledger, 'canary', {'a': 'succeeded'})
    gated = run_wave(ledger, 'wave1', {'b': 'failed', 'c': 'succeeded'})
    assert gated['breached'] and gated['reason'].startswith('the rollout: 1 of 3 finished devices failed (33% > 30% '
                                                            'cumulative), after wave wave1')


def test_unreachable_devices_count_as_failures_unless_told_otherwise():
    ledger, _todo = fresh()
    r.start_wave(ledger, 'canary', now=1001.0)
    gated = r.gate(ledger, 'canary', lost=['a'], now=1002.0)
    assert gated['breached'] and ledger['devices']['a']['state'] == 'unreachable'
    assert ledger['devices']['a']['reason'] == 'unreachable during wave canary (was pending)'
    lenient = dict(THRESHOLDS, unreachable_is_failure=False)
    ledger, _todo = r.plan(None, {h: report() for h in WAVES}, WAVES, RELEASE, lenient, SOAK, '', now=1000.0)
    r.start_wave(ledger, 'canary', now=1001.0)
    assert not r.gate(ledger, 'canary', lost=['a'], now=1002.0)['breached']


def test_finish_says_how_it_ended():
    ledger, _todo = fresh()
    run_wave(ledger, 'canary', {'a': 'failed'})
    assert r.finish(ledger, now=2000.0)['status'] == 'rolled_back'
    ledger, _todo = fresh()
    run_wave(ledger, 'canary', {'a': 'succeeded'})
    assert r.finish(ledger, now=2000.0)['status'] == 'incomplete'  # b, c and d never started
    assert r.summary(ledger) == {'succeeded': 1, 'pending': 3}
    run_wave(ledger, 'wave1', {'b': 'succeeded', 'c': 'succeeded'})
    run_wave(ledger, 'wave3', {'d': 'succeeded'})
    assert r.finish(ledger, now=2000.0)['status'] == 'succeeded'


def test_windows_that_cannot_be_used_fail_the_plan_naming_the_devices():
    reports = {h: report() for h in WAVES}
    reports['c'] = dict(report(), window_error="maintenance window 1: the cron expression '61 2 * * *' does not parse")
    reports['a'] = dict(report(), window_error="maintenance window 1: unknown time zone 'Mars/Base'")
    with pytest.raises(r.RolloutError) as exc:
        fresh(reports)
    assert str(exc.value) == ("the maintenance windows of a, c cannot be used: a: maintenance window 1: unknown time "
                              "zone 'Mars/Base'; c: maintenance window 1: the cron expression '61 2 * * *' does not "
                              "parse")


def defer(ledger, wave, host, reason='outside its maintenance window'):
    r.record(ledger, host, 'deferred', now=1003.0, reason=reason)


def test_a_deferred_canary_holds_the_later_waves_and_a_rerun_takes_it():
    ledger, _todo = fresh()
    r.start_wave(ledger, 'canary', now=1001.0)
    defer(ledger, 'canary', 'a')
    gated = r.gate(ledger, 'canary', now=1004.0)
    assert not gated['breached'] and gated['deferred'] == ['a']
    assert gated['held'].startswith('wave canary: 0 of 1 devices finished (1 deferred: a), fewer than '
                                    'wave_min_finished 1')
    assert [w['status'] for w in ledger['waves']] == ['held', 'waiting', 'waiting']
    assert r.finish(ledger, now=1005.0)['status'] == 'incomplete'
    # The next run: the device's own marks say deferred; the canary is the first wave still to run.
    reports = {h: report() for h in WAVES}
    reports['a'] = report(marks=[mark('deferred', reason='outside its maintenance window')])
    again, todo = fresh(reports, cached=ledger)
    assert [(w['name'], w['hosts']) for w in todo['waves']] == [('canary', ['a']), ('wave1', ['b', 'c']),
                                                                ('wave3', ['d'])]
    assert again['devices']['a']['state'] == 'deferred' and todo['blocked'] is None


def test_a_deferred_device_does_not_hold_a_wave_that_proved_itself():
    ledger, _todo = fresh()
    run_wave(ledger, 'canary', {'a': 'succeeded'})
    r.start_wave(ledger, 'wave1', now=1001.0)
    defer(ledger, 'wave1', 'b')
    r.record(ledger, 'c', 'succeeded', now=1070.0)
    gated = r.gate(ledger, 'wave1', now=1071.0)
    assert not gated['breached'] and gated['held'] is None and gated['deferred'] == ['b']
    assert ledger['waves'][1]['status'] == 'passed' and ledger['waves'][2]['status'] == 'pending'


def test_a_device_whose_hook_never_said_yes_counts_as_a_failure():
    ledger, _todo = fresh()
    r.start_wave(ledger, 'canary', now=1001.0)
    r.record(ledger, 'a', 'failed', now=1600.0, reason='deferred past the cap: the defer hook said not now 40 times')
    gated = r.gate(ledger, 'canary', now=1601.0)
    assert gated['breached'] and gated['rollback'] == []  # nothing went in


def test_unknown_states_and_hosts_are_refused():
    ledger, _todo = fresh()
    with pytest.raises(r.RolloutError, match="unknown device state 'done'"):
        r.record(ledger, 'a', 'done')
    with pytest.raises(r.RolloutError, match='zz is not part of the rollout digits-1.1.0'):
        r.record(ledger, 'zz', 'failed')
    with pytest.raises(r.RolloutError, match="has no wave 'wave9'"):
        r.gate(ledger, 'wave9')


def _writer(path, host, rounds):
    ledger_file = r.LedgerFile(path, 'digits-1.1.0')
    for _i in range(rounds):
        with ledger_file.locked():
            ledger = ledger_file.read()
            r.record(ledger, host, 'soaking')
            ledger_file.write(ledger)


def test_the_file_takes_concurrent_writers_without_losing_one(tmp_path):
    """Every fork of ansible-playbook writes its host's entry: read-modify-write under the flock loses none."""
    ledger_file = r.LedgerFile(str(tmp_path), 'digits-1.1.0')
    ledger, _todo = fresh()
    with ledger_file.locked():
        ledger_file.write(ledger)
    procs = [multiprocessing.Process(target=_writer, args=(str(tmp_path), h, 25)) for h in WAVES]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    final = ledger_file.read()
    assert {h: len(e['history']) for h, e in final['devices'].items()} == dict.fromkeys(WAVES, 25)
    assert [p for p in os.listdir(ledger_file.dir) if p.startswith('.ledger.')] == []  # no temp file left


def test_a_ledger_that_is_not_one_is_refused_with_a_way_out(tmp_path):
    ledger_file = r.LedgerFile(str(tmp_path), 'digits-1.1.0')
    os.makedirs(ledger_file.dir)
    with open(ledger_file.path, 'w', encoding='utf-8') as f:
        json.dump({'format': 99}, f)
    with pytest.raises(r.RolloutError, match='is not a format 1 ledger; move it away to rebuild it from the devices'):
        ledger_file.read()
    with open(ledger_file.path, 'w', encoding='utf-8') as f:
        f.write('{half')
    with pytest.raises(r.RolloutError, match='reading the ledger'):
        ledger_file.read()
    assert r.LedgerFile(str(tmp_path), 'other-1').read() is None
    ledger_file.archive(1234.0)
    assert os.path.exists(os.path.join(ledger_file.dir, 'ledger.1234.json'))


def test_a_fleet_rollback_on_request_returns_every_device_the_rollout_updated():
    done = [mark('installing'), mark('installed', updated=True), mark('soaked')]
    already = [mark('installed', updated=False), mark('soaked')]  # served 1.1.0 before: not the rollout's doing
    reports = {'a': report('1.1.0', done), 'b': report('1.1.0', done), 'c': report('1.1.0', already), 'd': report()}
    ledger, todo = fresh(reports, action='rollback')
    assert todo['rollback'] == ['a', 'b'] and todo['waves'] == [] and todo['blocked'] is None
    assert todo['abort'] == 'rolled back on request (rollout_action=rollback)'
    assert ledger['status'] == 'breached' and ledger['events'][-1]['kind'] == 'rollback'
    assert r.finish(ledger, now=2000.0)['status'] == 'rolled_back'


def verdict(state, device, action='update', version_after='1.1.0', updated=True, reason=None, t=1050.0):
    return {'device_id': device, 'boot_id': 'b', 'seq': 1, 'kind': 'rollout', 'time': t,
            'data': {'rollout': 'digits-1.1.0', 'attempt': 1, 'action': action, 'state': state, 'version': '1.1.0',
                     'version_before': '1.0.0', 'version_after': version_after, 'updated': updated,
                     'reason': reason, 'soak': {'passed': state == 'succeeded', 'p95_ms': 7.5}, 'time': t}}


def collected(action='update', seconds=30.0, **verdicts):
    return {'action': action, 'seconds': seconds, 'verdicts': verdicts,
            'missing': sorted(k for k, v in verdicts.items() if v is None)}


def test_pull_verdicts_from_the_broker_become_the_devices_states():
    ledger, _todo = fresh()
    r.start_wave(ledger, 'wave1', now=1001.0)
    r.record(ledger, 'b', 'transferring', now=1002.0, mode='pull')
    r.record(ledger, 'c', 'transferring', now=1002.0, mode='pull')
    states = r.record_outcomes(ledger, {'b': 'cam-b', 'c': 'cam-c'},
                               collected(**{'cam-b': verdict('succeeded', 'cam-b')}), now=1100.0)
    assert states == {'b': 'succeeded', 'c': 'unreachable'}
    b, c = ledger['devices']['b'], ledger['devices']['c']
    assert (b['version_after'], b['updated'], b['soak']['p95_ms'], b['history'][-1]['time']) == ('1.1.0', True, 7.5,
                                                                                                 1050.0)
    assert c['reason'] == 'no update verdict from cam-c through the broker within 30 s (its agent did not report)'
    gated = r.gate(ledger, 'wave1', now=1101.0)
    # c may have taken the update without reporting it: the fleet rollback is published to it as well.
    assert gated['breached'] and gated['rollback'] == ['b', 'c']


def test_a_pull_device_that_failed_its_own_soak_is_a_failure_not_updated():
    ledger, _todo = fresh()
    r.record(ledger, 'a', 'transferring', now=1002.0, mode='pull')
    states = r.record_outcomes(ledger, {'a': 'cam-a'}, collected(**{'cam-a': verdict(
        'failed', 'cam-a', version_after='1.0.0', updated=False, reason='soak failed: p95 latency 250 ms')}),
        now=1100.0)
    assert states == {'a': 'failed'}
    assert (ledger['devices']['a']['version_after'], ledger['devices']['a']['updated']) == ('1.0.0', False)
    assert 'p95 latency' in ledger['devices']['a']['reason']


def test_pull_rollback_verdicts_and_the_devices_that_did_not_confirm():
    ledger, _todo = fresh()
    for host, state in (('a', 'succeeded'), ('b', 'failed'), ('c', 'succeeded')):
        r.record(ledger, host, state, now=1010.0, mode='pull', updated=state == 'succeeded')
    rolled = verdict('rolled_back', 'cam-a', action='rollback', version_after='1.0.0', updated=False, t=1200.0)
    own = verdict('rolled_back', 'cam-b', action='rollback', version_after='1.0.0', updated=False, t=1200.0)
    states = r.record_outcomes(ledger, {'a': 'cam-a', 'b': 'cam-b', 'c': 'cam-c'},
                               collected('rollback', 60.0, **{'cam-a': rolled, 'cam-b': own}), now=1300.0)
    assert states == {'a': 'rolled_back', 'b': 'failed', 'c': 'succeeded'}
    assert ledger['devices']['a']['updated'] is False and ledger['devices']['a']['version_after'] == '1.0.0'
    assert ledger['devices']['c']['reason'] == ('succeeded; the rollback was published, no rollback verdict from '
                                                'cam-c through the broker within 60 s')


def test_a_verdict_in_a_state_the_ledger_does_not_know_is_refused():
    ledger, _todo = fresh()
    with pytest.raises(r.RolloutError, match=r"a \(cam-a\) reported the state 'installed'"):
        r.record_outcomes(ledger, {'a': 'cam-a'}, collected(**{'cam-a': verdict('installed', 'cam-a')}))
    with pytest.raises(r.RolloutError, match='zz is not part of the rollout digits-1.1.0'):
        r.record_outcomes(ledger, {'zz': 'cam-z'}, collected())
