"""plugins/plugin_utils/_fleet_report.py: report.json's summary and report.html's content, escaping and
self-containment, on ledgers that follow the ledger contract (tests/support/ledgers.py)."""
from __future__ import annotations

import copy
import importlib.util
import json
import sys

import pytest

from ansible_collections.edgeai.fleet.plugins.plugin_utils import _fleet_report
from ansible_collections.edgeai.fleet.plugins.plugin_utils._fleet_report import (
    STATES, ReportError, progress, render_html, render_json,
)
from support import ledgers
from support.report_dom import ReportDom, web_addresses

FIXTURES = {'succeeded': ledgers.succeeded, 'breached': ledgers.breached,
            'deferred_unreachable': ledgers.deferred_unreachable, 'no_soak': ledgers.no_soak}


@pytest.fixture(params=sorted(FIXTURES))
def ledger(request):
    return FIXTURES[request.param]()


def dom(ledger):
    return ReportDom(render_html(ledger))


# report.json ---------------------------------------------------------------------------------------------------

def test_json_is_the_ledger_untouched_plus_a_summary(ledger):
    before = copy.deepcopy(ledger)
    report = render_json(ledger)
    assert ledger == before
    assert {key: value for key, value in report.items() if key != 'summary'} == ledger
    assert json.loads(json.dumps(report)) == report
    summary = report['summary']
    assert summary['devices'] == len(ledger['devices']) == sum(summary['states'].values())
    assert set(STATES) <= set(summary['states'])
    assert [wave['name'] for wave in summary['waves']] == [wave['name'] for wave in ledger['waves']]
    assert sum(sum(wave['states'].values()) for wave in summary['waves']) == len(ledger['devices'])


def test_json_summary_of_a_succeeded_rollout():
    summary = render_json(ledgers.succeeded())['summary']
    assert summary['status'] == 'succeeded' and summary['breach'] is None
    assert summary['states'] == dict.fromkeys(STATES, 0) | {'succeeded': 5}
    assert summary['duration'] == 240.0 and summary['updated_devices'] == 5
    assert [(wave['name'], wave['hosts'], wave['states'], wave['duration']) for wave in summary['waves']] == [
        ('canary', 1, {'succeeded': 1}, 75.0), ('wave1', 2, {'succeeded': 2}, 76.0),
        ('wave2', 2, {'succeeded': 2}, 76.0)]


def test_json_summary_of_a_breached_rollout():
    summary = render_json(ledgers.breached())['summary']
    assert summary['status'] == 'rolled_back'
    assert summary['breach'] == {'wave': 'wave1', 'reason': ledgers.BREACH_REASON, 'time': ledgers.START + 150}
    assert {state: n for state, n in summary['states'].items() if n} == {'rolled_back': 3, 'failed': 1, 'pending': 1}
    assert summary['updated_devices'] == 3
    assert [(wave['name'], wave['status'], wave['states'], wave['duration']) for wave in summary['waves']] == [
        ('canary', 'passed', {'rolled_back': 1}, 75.0), ('wave1', 'breached', {'failed': 1, 'rolled_back': 2}, 70.0),
        ('wave2', 'stopped', {'pending': 1}, None)]


def test_json_summary_of_deferred_and_unreachable_devices():
    summary = render_json(ledgers.deferred_unreachable())['summary']
    counted = {state: n for state, n in summary['states'].items() if n}
    assert counted == {'succeeded': 2, 'deferred': 1, 'unreachable': 1}
    assert summary['waves'][1]['states'] == {'deferred': 1, 'unreachable': 1, 'succeeded': 1}


def test_json_summary_of_a_running_rollout_has_no_finished_wave():
    summary = render_json(ledgers.no_soak())['summary']
    assert summary['status'] == 'running' and summary['duration'] == 7.0
    assert [wave['duration'] for wave in summary['waves']] == [None, None]
    assert summary['states']['installing'] == 1 and summary['states']['pending'] == 2


def test_a_state_outside_the_contract_is_counted_under_its_own_name():
    ledger = ledgers.no_soak()
    ledger['devices']['pi-02']['state'] = 'quarantined'
    assert render_json(ledger)['summary']['states']['quarantined'] == 1
    assert dom(ledger).devices['pi-02']['attrs']['data-state'] == 'quarantined'


@pytest.mark.parametrize('mangle, message', [
    (lambda ledger: ['not', 'a', 'ledger'], 'the ledger is a list, not a JSON object'),
    (lambda ledger: ledger | {'format': 2}, 'the ledger has format 2; this report reads format 1'),
    (lambda ledger: ledger | {'devices': ['cam-01']}, 'the ledger\'s "devices" is not an object of devices'),
    (lambda ledger: ledger | {'waves': {'canary': {}}}, 'the ledger\'s "waves" is not a list of objects'),
    (lambda ledger: ledger | {'devices': {'cam-09': 'succeeded'}}, 'device cam-09 in the ledger is a str'),
    (lambda ledger: ledger | {'devices': {'cam-09': {'history': {}}}}, 'device cam-09 in the ledger has a "history"'),
    (lambda ledger: ledger | {'devices': {'cam-09': {'soak': [1]}}}, 'device cam-09 in the ledger has a "soak"'),
])
def test_a_malformed_ledger_is_a_report_error_naming_what_is_wrong(mangle, message):
    broken = mangle(ledgers.succeeded())
    for render in (render_json, render_html):
        with pytest.raises(ReportError, match='^' + message.replace('(', r'\(')):
            render(broken)


# report.html ---------------------------------------------------------------------------------------------------

def test_html_is_self_contained(ledger):
    page = render_html(ledger)
    assert web_addresses(page) == set()
    assert 'http://www.w3.org/2000/svg' in page or not ledger['devices']
    elements = ReportDom(page).elements
    assert {tag for tag, _attrs in elements} & {'script', 'link', 'iframe', 'img', 'object', 'embed', 'base'} == set()
    assert [(tag, name) for tag, attrs in elements for name in attrs
            if name in ('src', 'href', 'xlink:href', 'srcset', 'action', 'data') or name.startswith('on')] == []
    assert '@import' not in page and 'url(' not in page and '@font-face' not in page


def test_html_shows_every_wave_with_its_hosts_status_start_and_finish():
    report = dom(ledgers.breached())
    assert list(report.waves) == ['canary', 'wave1', 'wave2']
    assert report.waves['wave1']['cells'] == ['1', 'wave1', 'breached', 'cam-02, cam-03, cam-04',
                                              '2026-12-02 04:31:04 UTC', '2026-12-02 04:32:14 UTC', '1 min 10 s',
                                              'failed 1 rolled_back 2']
    assert report.waves['wave2']['cells'][2:7] == ['stopped', 'cam-05', '-', '-', '-']


def test_html_shows_each_device_state_versions_and_reason():
    ledger = ledgers.breached()
    report = dom(ledger)
    assert sorted(report.devices) == sorted(ledger['devices'])
    header = ['device', 'wave', 'class', 'variant', 'state', 'before', 'after', 'changed', 'p95', 'requests',
              'errors', 'restarts', 'reason']
    rows = {name: dict(zip(header, row['cells'])) for name, row in report.devices.items()}
    assert rows['cam-02'] == {'device': 'cam-02', 'wave': 'wave1', 'class': 'generic', 'variant': 'onnxruntime-fp32',
                              'state': 'rolled_back', 'before': '1.0.0', 'after': '1.0.0', 'changed': 'yes',
                              'p95': '182.5', 'requests': '512', 'errors': '0', 'restarts': '0',
                              'reason': 'soak: p95 182.5 ms > 100 ms'}
    assert rows['cam-03']['reason'] == ledgers.HOSTILE_REASON
    assert rows['cam-05']['state'] == 'pending' and rows['cam-05']['p95'] == '-' and rows['cam-05']['reason'] == ''
    assert all(report.devices[name]['attrs']['data-state'] == device['state']
               for name, device in ledger['devices'].items())
    assert report.ids['rollout-status'] == 'rolled_back'
    assert report.ids['breach'] == 'wave1 at 2026-12-02 04:32:14 UTC: %s' % ledgers.BREACH_REASON


def test_html_versions_before_and_after_of_a_new_device():
    report = dom(ledgers.no_soak())
    assert report.devices['pi-03']['cells'][5:7] == ['-', '-']
    assert report.devices['pi-01']['cells'][5:7] == ['1.0.0', '1.0.0']


def test_html_soak_reasons_that_differ_from_the_reason_are_listed():
    ledger = ledgers.succeeded()
    ledger['devices']['cam-02'].update(state='failed', reason='soak failed')
    ledger['devices']['cam-02']['soak'].update(passed=False, reasons=['p95 130 ms > 100 ms', 'restarts 2 > 0'])
    cells = dom(ledger).devices['cam-02']['cells']
    assert cells[-1] == 'soak failed p95 130 ms > 100 ms restarts 2 > 0'


def test_html_escapes_what_devices_report():
    ledger = ledgers.breached()
    hostile_name = '<img src=x onerror=alert(1)>&co'
    ledger['devices'][hostile_name] = ledger['devices'].pop('cam-02')
    ledger['waves'][1]['hosts'][0] = hostile_name
    ledger['devices']['cam-01']['class'] = '"><svg onload=alert(2)>'
    page = render_html(ledger)
    for raw in (ledgers.HOSTILE_REASON, '<script', '<img', '<b>bold', '<svg onload'):
        assert raw not in page
    assert 'agent said: &lt;script&gt;alert(' in page and '&lt;/script&gt; &amp; &lt;b&gt;bold' in page
    report = ReportDom(page)
    assert report.devices[hostile_name]['cells'][0] == hostile_name            # shown as text
    assert hostile_name in report.charts['chart-latency'].texts               # and in the chart, as text
    assert report.devices['cam-01']['cells'][2] == '"><svg onload=alert(2)>'
    assert not [attrs for _tag, attrs in report.elements if any(name.startswith('on') for name in attrs)]


def test_html_charts_of_a_succeeded_rollout():
    report = dom(ledgers.succeeded())
    assert set(report.charts) == {'chart-latency', 'chart-samples', 'chart-progress'}
    for chart in report.charts.values():
        assert 'pygal-chart' in chart.classes and 'series' in chart.classes and 'svg' in chart.tags
    latency = report.charts['chart-latency']
    assert 'Soak p95 latency per device (ms), limit 100 ms' in latency.texts
    assert {'cam-01', 'cam-02', 'cam-03', 'cam-04', 'cam-05', '41.5', '52.25'} <= set(latency.texts)
    samples = report.charts['chart-samples']
    assert {'cam-01', 'cam-05', 'p95 limit (100 ms)', 'seconds into the soak'} <= set(samples.texts)
    progress_chart = report.charts['chart-progress']
    assert {'succeeded', 'failed', 'rolled back', 'in progress'} <= set(progress_chart.texts)
    assert 'unreachable' not in progress_chart.texts


def test_html_latency_bars_say_which_soak_failed():
    page = render_html(ledgers.breached())
    latency = page[page.index('id="chart-latency"'):page.index('id="chart-samples"')]
    assert latency.count('#d62728') >= 1 and latency.count('#2ca02c') >= 2   # cam-02 red; cam-01, cam-04 green


def test_html_without_soak_results_says_so_and_still_charts_progress():
    report = dom(ledgers.no_soak())
    assert set(report.charts) == {'chart-progress'}
    assert report.ids['no-latency'] == 'No device has a soak result yet.'
    assert report.ids['no-samples'] == 'No soak samples in this ledger.'


def test_html_of_a_ledger_without_devices_or_history():
    ledger = ledgers.no_soak()
    ledger['devices'] = {}
    report = dom(ledger)
    assert report.charts == {} and report.devices == {}
    assert report.ids['no-progress'] == 'No device has a timed history yet.'
    assert list(report.waves) == ['canary', 'wave1']


def test_html_charts_unreachable_and_deferred_devices():
    texts = set(dom(ledgers.deferred_unreachable()).charts['chart-progress'].texts)
    assert {'unreachable', 'deferred', 'succeeded'} <= texts


def test_html_with_only_the_required_keys():
    report = dom({'format': 1, 'devices': {'d1': {'state': 'pending'}}})
    assert report.devices['d1']['cells'][:5] == ['d1', '-', '-', '-', 'pending']
    assert report.ids['rollout-status'] == '-'


# progress over time ----------------------------------------------------------------------------------------

def test_progress_steps_from_each_device_history():
    ledger = ledgers.ledger('rolled_back', [], {
        'a': ledgers.device(0, 'rolled_back', steps=[('transferring', 0), ('succeeded', 10), ('rolled_back', 30)]),
        'b': ledgers.device(0, 'failed', steps=[('transferring', 5), ('failed', 20)]),
    }, updated=40)
    series = progress(ledger)
    assert list(series) == ['in progress', 'succeeded', 'failed', 'rolled back']
    assert series['in progress'] == [(0.0, 0), (0.0, 0), (0.0, 1), (5.0, 1), (5.0, 2), (10.0, 2), (10.0, 1),
                                     (20.0, 1), (20.0, 0), (30.0, 0), (30.0, 0), (40.0, 0)]
    assert series['succeeded'][-4:] == [(20.0, 1), (30.0, 1), (30.0, 0), (40.0, 0)]
    assert series['failed'][-1] == (40.0, 1) and series['rolled back'][-1] == (40.0, 1)


def test_progress_final_counts_match_the_device_states(ledger):
    series = progress(ledger)
    states = render_json(ledger)['summary']['states']
    assert series['succeeded'][-1][1] == states['succeeded']
    assert series['failed'][-1][1] == states['failed']
    assert series['rolled back'][-1][1] == states['rolled_back']


# without pygal ---------------------------------------------------------------------------------------------

def test_without_pygal_json_renders_and_html_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pygal', None)       # import pygal raises ImportError
    monkeypatch.setitem(sys.modules, 'pygal.style', None)
    spec = importlib.util.spec_from_file_location('fleet_report_without_pygal', _fleet_report.__file__)
    without = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(without)
    assert without.HAS_PYGAL is False
    assert without.render_json(ledgers.succeeded())['summary']['states']['succeeded'] == 5
    with pytest.raises(without.ReportError, match='needs the Python library pygal on the controller'):
        without.render_html(ledgers.succeeded())
