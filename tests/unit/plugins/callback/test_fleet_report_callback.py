"""plugins/callback/fleet_report.py in real ansible-playbook runs (localhost, connection local) and one
ansible-runner run. The rollout is played by rollout_stand_in/rollout.py, an action plugin that returns
{"rollout_dir", "ledger"} the way edgeai.fleet.rollout does."""
from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import ledgers

REPO = Path(__file__).resolve().parents[4]
STAND_IN = Path(__file__).resolve().parent / 'rollout_stand_in'


def write_ledger(path: Path, ledger) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ledger))
    return path


def playbook(tmp_path: Path, tasks, **play) -> Path:
    path = tmp_path / 'rollout.yml'
    path.write_text(yaml.safe_dump([{'name': 'Roll out', 'hosts': 'localhost', 'gather_facts': False, **play,
                                     'tasks': tasks}], sort_keys=False))
    return path


def environment(tmp_path: Path, action_plugins: Path = STAND_IN, **extra) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_HOME=str(tmp_path / 'ansible-home'),
               ANSIBLE_ACTION_PLUGINS=str(action_plugins), ANSIBLE_CALLBACKS_ENABLED='edgeai.fleet.fleet_report',
               ANSIBLE_NOCOLOR='1', ANSIBLE_STDOUT_CALLBACK='ansible.builtin.default')
    for name in ('EDGEAI_FLEET_REPORT_DIR', 'EDGEAI_FLEET_REPORT_ACTIONS'):
        env.pop(name, None)
    env.update(extra)
    return env


def run(tmp_path: Path, tasks, play=None, **env):
    book = playbook(tmp_path, tasks, **(play or {}))
    return subprocess.run(['ansible-playbook', '-i', 'localhost,', '-c', 'local', str(book)],
                          cwd=tmp_path, env=environment(tmp_path, **env), capture_output=True, text=True,
                          timeout=300, check=False)


def report(directory: Path) -> dict:
    return json.loads((directory / 'report.json').read_text())


def test_reports_of_each_rollout_from_its_last_result_and_its_ledger_file(tmp_path):
    """Three rollout directories: one known only from results (the last one counts, a failed task's too), one
    whose ledger.json disagrees with its result (the file wins), one from a task that is no rollout."""
    by_results, by_file, other = tmp_path / 'rollouts' / 'a', tmp_path / 'rollouts' / 'b', tmp_path / 'other'
    running = ledgers.no_soak()
    breached = write_ledger(tmp_path / 'in' / 'breached.json', ledgers.breached())
    write_ledger(tmp_path / 'in' / 'running.json', running)
    write_ledger(by_file / 'ledger.json', ledgers.succeeded())
    other_plugins = tmp_path / 'other-plugins'
    other_plugins.mkdir()
    shutil.copy(STAND_IN / 'rollout.py', other_plugins / 'not_a_rollout.py')
    proc = run(tmp_path, [
        {'name': 'Start', 'rollout': {'rollout_dir': str(by_results),
                                      'ledger_file': str(tmp_path / 'in' / 'running.json')}},
        {'name': 'Breach', 'rollout': {'rollout_dir': str(by_results), 'ledger_file': str(breached), 'fail': True},
         'ignore_errors': True},
        {'name': 'Second rollout', 'rollout': {'rollout_dir': str(by_file), 'ledger': running}},
        {'name': 'Something else', 'not_a_rollout': {'rollout_dir': str(other), 'ledger': running}},
    ], ANSIBLE_ACTION_PLUGINS='%s:%s' % (STAND_IN, other_plugins))
    assert proc.returncode == 0, proc.stdout + proc.stderr

    first = report(by_results)
    assert first['status'] == 'rolled_back'
    assert first['summary']['breach']['reason'] == ledgers.BREACH_REASON
    assert first['summary']['states']['rolled_back'] == 3
    assert first['devices'] == ledgers.breached()['devices']
    page = (by_results / 'report.html').read_text()
    assert page.startswith('<!DOCTYPE html>') and html.escape(ledgers.BREACH_REASON) in page

    second = report(by_file)
    assert second['status'] == 'succeeded' and second['summary']['states']['succeeded'] == 5
    assert (by_file / 'report.html').exists()
    assert not other.exists()
    assert not list(tmp_path.rglob('.report.*.tmp'))
    for directory in (by_results, by_file):  # on stderr: stdout is the stdout callback's
        assert 'edgeai.fleet.fleet_report: rollout %s: wrote %s' % (directory, directory / 'report.json') in proc.stderr


def test_under_the_json_stdout_callback_stdout_stays_one_json_document(tmp_path):
    """ANSIBLE_STDOUT_CALLBACK=json, as scripts and the integration tests read a run: the callback's notice
    goes to stderr, and stdout parses as one JSON document with nothing after it."""
    directory = tmp_path / 'rollouts' / 'a'
    task = {'name': 'Roll out', 'rollout': {'rollout_dir': str(directory), 'ledger': ledgers.succeeded()}}
    proc = run(tmp_path, [task], ANSIBLE_STDOUT_CALLBACK='ansible.builtin.json')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)['stats']['localhost']['ok'] == 1
    assert 'edgeai.fleet.fleet_report: rollout %s: wrote' % directory in proc.stderr
    assert (directory / 'report.json').exists()


def test_configured_action_names_and_report_dir(tmp_path):
    """EDGEAI_FLEET_REPORT_ACTIONS replaces the default names; a name matches the action as resolved (the task
    says staged_push, the play's collections keyword resolves it to fixture.rollouts.staged_push).
    EDGEAI_FLEET_REPORT_DIR moves the reports."""
    collections = tmp_path / 'collections'
    plugins = collections / 'ansible_collections' / 'fixture' / 'rollouts' / 'plugins' / 'action'
    plugins.mkdir(parents=True)
    shutil.copy(STAND_IN / 'rollout.py', plugins / 'staged_push.py')
    rollout_dir = tmp_path / 'rollouts' / 'digits-1.1.0'
    ledger = write_ledger(tmp_path / 'in' / 'ledger.json', ledgers.deferred_unreachable())
    reports = tmp_path / 'reports'
    proc = run(tmp_path, [{'name': 'Push', 'staged_push': {'rollout_dir': str(rollout_dir),
                                                           'ledger_file': str(ledger)}},
                          {'name': 'Not configured', 'rollout': {'rollout_dir': str(tmp_path / 'x'),
                                                                 'ledger_file': str(ledger)}}],
               play={'collections': ['fixture.rollouts']},
               ANSIBLE_COLLECTIONS_PATH=os.pathsep.join([str(collections), str(REPO / '.collections')]),
               EDGEAI_FLEET_REPORT_ACTIONS='other, fixture.rollouts.staged_push', EDGEAI_FLEET_REPORT_DIR=str(reports))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = reports / 'digits-1.1.0'
    summary = report(written)['summary']
    assert summary['states']['deferred'] == 1 and summary['states']['unreachable'] == 1
    page = (written / 'report.html').read_text()
    assert 'device busy: maintenance window not open' in page
    assert not (rollout_dir / 'report.json').exists()
    assert not (tmp_path / 'x').exists() and not (reports / 'x').exists()


def test_a_malformed_ledger_is_a_warning_never_a_failed_run(tmp_path):
    bad_file = tmp_path / 'rollouts' / 'bad-file'
    (bad_file).mkdir(parents=True)
    (bad_file / 'ledger.json').write_text('{"format": 1, "devices": ')   # cut short by a crash
    not_a_ledger, wrong_devices = tmp_path / 'rollouts' / 'string', tmp_path / 'rollouts' / 'list'
    fallback = tmp_path / 'rollouts' / 'fallback'
    write_ledger(fallback / 'ledger.json', ledgers.succeeded())
    (fallback / 'ledger.json').write_text('not json')
    proc = run(tmp_path, [
        {'name': 'No ledger at all', 'rollout': {'rollout_dir': str(bad_file)}},
        {'name': 'A string', 'rollout': {'rollout_dir': str(not_a_ledger), 'ledger': 'nonsense'}},
        {'name': 'Devices as a list', 'rollout': {'rollout_dir': str(wrong_devices),
                                                  'ledger': {'format': 1, 'devices': ['a', 'b']}}},
        {'name': 'Not a path', 'rollout': {'rollout_dir': 42, 'ledger': {'format': 1}}},
        {'name': 'Unreadable file, good result', 'rollout': {'rollout_dir': str(fallback),
                                                             'ledger': ledgers.no_soak()}},
    ])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = ' '.join((proc.stdout + proc.stderr).split())   # warnings wrap
    assert 'Traceback' not in output
    assert 'writing the report of rollout %s: reading %s' % (bad_file, bad_file / 'ledger.json') in output
    assert 'writing the report of rollout %s: the ledger is a str, not a JSON object' % not_a_ledger in output
    assert ('writing the report of rollout %s: the ledger\'s "devices" is not an object of devices'
            % wrong_devices) in output
    assert 'returned a rollout_dir that is not a path (42)' in output
    assert 'reading %s' % (fallback / 'ledger.json') in output
    for directory in (bad_file, not_a_ledger, wrong_devices):
        assert not (directory / 'report.json').exists() and not (directory / 'report.html').exists()
    assert report(fallback)['status'] == 'running'


def test_under_ansible_runner(tmp_path):
    """The way AWX runs it: ansible_runner.run(), the callback enabled through env/envvars."""
    ansible_runner = pytest.importorskip('ansible_runner')
    rollout_dir = tmp_path / 'rollouts' / 'digits-1.1.0'
    ledger = write_ledger(tmp_path / 'in' / 'ledger.json', ledgers.breached())
    pdd = tmp_path / 'runner'
    (pdd / 'project').mkdir(parents=True)
    (pdd / 'env').mkdir()
    playbook(pdd / 'project', [{'name': 'Roll out', 'rollout': {'rollout_dir': str(rollout_dir),
                                                                'ledger_file': str(ledger)}}])
    env = environment(tmp_path)
    (pdd / 'env' / 'envvars').write_text(yaml.safe_dump(
        {name: env[name] for name in ('ANSIBLE_CONFIG', 'ANSIBLE_HOME', 'ANSIBLE_ACTION_PLUGINS',
                                      'ANSIBLE_CALLBACKS_ENABLED')}))
    result = ansible_runner.run(private_data_dir=str(pdd), playbook='rollout.yml', inventory='localhost,',
                                cmdline='-c local', quiet=True, timeout=300)
    assert (result.status, result.rc) == ('successful', 0), result.stdout.read()
    assert report(rollout_dir)['summary']['breach']['wave'] == 'wave1'
    assert 'cam-03' in (rollout_dir / 'report.html').read_text()
    # What the callback displayed reached the job's events, as everything on the display does.
    told = [event.get('stdout', '') for event in result.events]
    assert any('edgeai.fleet.fleet_report: rollout %s: wrote' % rollout_dir in line for line in told)


def test_without_pygal_report_json_is_written_and_a_warning_says_why(tmp_path):
    """A controller without pygal: `import pygal` fails (a package of that name that raises ImportError
    comes first on PYTHONPATH); the run still succeeds, with report.json and a warning."""
    hidden = tmp_path / 'hide-pygal' / 'pygal'
    hidden.mkdir(parents=True)
    (hidden / '__init__.py').write_text('raise ImportError("pygal is not installed (hidden by the test)")\n')
    rollout_dir = tmp_path / 'rollouts' / 'digits-1.1.0'
    ledger = write_ledger(tmp_path / 'in' / 'ledger.json', ledgers.succeeded())
    path = os.pathsep.join(filter(None, [str(hidden.parent), os.environ.get('PYTHONPATH')]))
    proc = run(tmp_path, [{'name': 'Roll out', 'rollout': {'rollout_dir': str(rollout_dir),
                                                           'ledger_file': str(ledger)}}], PYTHONPATH=path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    output = ' '.join((proc.stdout + proc.stderr).split())
    assert ('edgeai.fleet.fleet_report: rendering report.html needs the Python library pygal on the controller '
            '(pip install pygal; it is in meta/ee-requirements.txt); only report.json is written') in output
    assert report(rollout_dir)['summary']['states']['succeeded'] == 5
    assert not (rollout_dir / 'report.html').exists()
