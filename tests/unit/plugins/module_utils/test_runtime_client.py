"""Unit tests for plugins/module_utils/_runtime_client.py: the argv of each edgeai-runtime command.

The client runs inside a real AnsibleModule (its fail_json really exits, with the JSON Ansible would
get), on a real device root under tmp_path: the staging copies are really made under <root>/cache and
removed. Only ``module.run_command`` is replaced, by a recorder that keeps each argv and stdin and
answers with canned JSON: the device runtime is not installed as ``edgeai-runtime`` on this machine's
PATH for the unit tests (tests/unit/plugins/modules/test_keyslot_no_log.py runs the real one where this
venv has it). ``<root>/venv/bin/edgeai-runtime`` is an executable stub, only so that the client's check
that the runtime is installed passes; it is never run.
"""
from __future__ import annotations

import json
import os

import pytest

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import keyslot_json
from ansible_collections.edgeai.fleet.plugins.module_utils._runtime_client import RuntimeClient

SLOT = dict(type='x25519', key_id='ab' * 16, artifact_id='cd' * 16, ephemeral='ZXBoZW1lcmFs',
            wrapped='c2VjcmV0LWRhdGEta2V5')


class Recorder(object):
    """A stand-in for AnsibleModule.run_command: records (argv, stdin) and answers with canned output."""

    def __init__(self, answer=None, rc=0, err='', inspect=None):
        self.calls = []
        self.answer = {'changed': False} if answer is None else answer
        self.rc, self.err, self.inspect = rc, err, inspect

    def __call__(self, argv, data=None):
        self.calls.append((list(argv), data))
        if self.inspect:
            self.inspect(argv)
        out = self.answer if isinstance(self.answer, str) else 'swept nothing\n' + json.dumps(self.answer) + '\n'
        return self.rc, out, self.err

    @property
    def argv(self):
        assert len(self.calls) == 1, self.calls
        return self.calls[0][0]

    @property
    def stdin(self):
        return self.calls[0][1]


@pytest.fixture
def root(tmp_path):
    """A device root with the runtime's place taken by an executable stub, and its cache directory."""
    exe = tmp_path / 'edgeai' / 'venv' / 'bin' / 'edgeai-runtime'
    exe.parent.mkdir(parents=True)
    exe.write_text('#!/bin/sh\necho "the unit tests never run this" >&2\nexit 2\n')
    exe.chmod(0o755)
    (tmp_path / 'edgeai' / 'cache').mkdir()
    return str(tmp_path / 'edgeai')


@pytest.fixture
def client(set_module_args, root):
    """A client whose module's run_command is a Recorder; ``client.recorder`` is it (replaceable)."""
    set_module_args({})
    module = AnsibleModule(argument_spec={})
    made = RuntimeClient(module, root, 'root')

    def answer(**kwargs):
        made.recorder = Recorder(**kwargs)
        module.run_command = made.recorder
        return made.recorder
    made.answer = answer
    answer()
    return made


@pytest.fixture
def failing(capsys):
    """Run a call that must fail the module; returns the module's failed result."""
    def run(call, *args, **kwargs):
        with pytest.raises(SystemExit) as exit_info:
            call(*args, **kwargs)
        assert exit_info.value.code == 1
        result = json.loads(capsys.readouterr().out)
        assert result['failed'] is True
        return result
    return run


def cli(root, *args):
    return [os.path.join(root, 'venv', 'bin', 'edgeai-runtime'), '--root', root] + list(args)


@pytest.mark.parametrize('call, argv', [
    (lambda c: c.model_list(), ['model', 'list']),
    (lambda c: c.model_remove('digits', '1.0.0'), ['model', 'remove', 'digits', '1.0.0']),
    (lambda c: c.artifact_verify('/tmp/a.eaf'), ['artifact', 'verify', '/tmp/a.eaf']),
    (lambda c: c.ota_plan('digits', '2.0.0', state='active', current_key=True),
     ['ota', 'plan', 'digits', '2.0.0', '--state', 'active', '--current-key']),
    (lambda c: c.ota_plan('digits', state='rolled_back'), ['ota', 'plan', 'digits', '--state', 'rolled_back']),
    (lambda c: c.ota_plan('digits', '2.0.0', state='present', sha256='f' * 64, key_id='ab' * 16),
     ['ota', 'plan', 'digits', '2.0.0', '--state', 'present', '--sha256', 'f' * 64, '--key-id', 'ab' * 16]),
    (lambda c: c.ota_rollback('digits'), ['ota', 'rollback', 'digits']),
    (lambda c: c.ota_rollback('digits', version='1.0.0', reason='misreads on line 3'),
     ['ota', 'rollback', 'digits', '--version', '1.0.0', '--reason', 'misreads on line 3']),
    (lambda c: c.ota_history('digits'), ['ota', 'history', '--name', 'digits']),
    (lambda c: c.ota_history(), ['ota', 'history']),
    (lambda c: c.ota_apply(installed=('digits', '1.0.0'), watch=0),
     ['ota', 'apply', '--installed', 'digits', '1.0.0', '--watch', '0']),
    (lambda c: c.ota_apply(installed=('digits', '1.0.0'), force=True, watch=30.0, max_error_rate=0.1,
                           min_requests=5, latency_p95_ms=12.5, stage_seconds=0.0, bytes_transferred=0),
     ['ota', 'apply', '--installed', 'digits', '1.0.0', '--watch', '30.0', '--max-error-rate', '0.1',
      '--min-requests', '5', '--stage-seconds', '0.0', '--bytes-transferred', '0', '--latency-p95-ms', '12.5',
      '--force']),
    (lambda c: c.keys_show(), ['keys', 'show']),
    (lambda c: c.keys_ensure('rsa'), ['keys', 'ensure', '--type', 'rsa']),
    (lambda c: c.keys_rotate('x25519'), ['keys', 'rotate', '--type', 'x25519']),
    (lambda c: c.keys_retire(), ['keys', 'retire']),
    (lambda c: c.keys_retire(dry_run=True), ['keys', 'retire', '--dry-run']),
], ids=lambda v: ' '.join(v) if isinstance(v, list) else 'call')
def test_argv(client, root, call, argv):
    call(client)
    assert client.recorder.argv == cli(root, *argv)
    assert client.recorder.stdin is None


def test_the_key_slot_goes_on_stdin_never_on_the_command_line(client, root):
    client.model_rekey('digits', '1.0.0', SLOT)
    assert client.recorder.argv == cli(root, 'model', 'rekey', 'digits', '1.0.0', '--keyslot', '-')
    assert json.loads(client.recorder.stdin) == SLOT
    assert client.recorder.stdin == keyslot_json(SLOT)


def test_a_slot_without_ephemeral_sends_no_none(client):
    client.model_rekey('digits', '1.0.0', dict(SLOT, type='rsa-oaep-sha256', ephemeral=None))
    assert 'ephemeral' not in json.loads(client.recorder.stdin)


def staged_files(tmp_path):
    (tmp_path / 'in').mkdir()
    for name, data in (('a.eaf', b'artifact'), ('a.eafd', b'delta'), ('golden.npz', b'golden'),
                       ('labels.txt', b'labels')):
        (tmp_path / 'in' / name).write_bytes(data)
    return {name: str(tmp_path / 'in' / name) for name in ('a.eaf', 'a.eafd', 'golden.npz', 'labels.txt')}


def test_model_install_stages_readable_copies_and_removes_them(client, root, tmp_path):
    given = staged_files(tmp_path)
    seen = {}

    def inspect(argv):  # while the runtime runs, the copies are there
        staging = os.path.dirname(argv[argv.index('--artifact') + 1])
        seen.update(staging=staging, files=sorted(os.listdir(staging)))
        with open(os.path.join(staging, 'model.eaf'), 'rb') as f:
            seen['artifact'] = f.read()

    client.answer(answer={'changed': True, 'name': 'digits', 'version': '1.0.0', 'msg': 'installed'}, inspect=inspect)
    done = client.model_install(given['a.eaf'], SLOT, {'labels.txt': given['labels.txt'],
                                                       'golden.npz': given['golden.npz']}, force=True)
    assert done == {'changed': True, 'name': 'digits', 'version': '1.0.0', 'msg': 'installed'}
    staging = seen['staging']
    assert os.path.dirname(staging) == os.path.join(root, 'cache')
    assert client.recorder.argv == cli(root, 'model', 'install', '--artifact', os.path.join(staging, 'model.eaf'),
                                       '--keyslot', '-', '--file=golden.npz=%s/golden.npz' % staging,
                                       '--file=labels.txt=%s/labels.txt' % staging, '--force')
    assert seen['files'] == ['golden.npz', 'labels.txt', 'model.eaf'] and seen['artifact'] == b'artifact'
    assert json.loads(client.recorder.stdin) == SLOT
    assert SLOT['wrapped'] not in ' '.join(client.recorder.argv)
    assert not os.path.exists(staging), 'the staging copies were left behind'


def test_ota_apply_of_a_delta_with_the_update_policy(client, root, tmp_path):
    given = staged_files(tmp_path)
    client.ota_apply(delta=given['a.eafd'], keyslot=SLOT, files={'golden.npz': given['golden.npz']}, watch=10.0,
                     max_error_rate=0.05, min_requests=20, stage_seconds=1.25, bytes_transferred=4096)
    argv = client.recorder.argv
    staging = os.path.dirname(argv[argv.index('--delta') + 1])
    assert argv == cli(root, 'ota', 'apply', '--delta', os.path.join(staging, 'model.eafd'), '--keyslot', '-',
                       '--file=golden.npz=%s/golden.npz' % staging, '--watch', '10.0', '--max-error-rate', '0.05',
                       '--min-requests', '20', '--stage-seconds', '1.25', '--bytes-transferred', '4096')
    assert json.loads(client.recorder.stdin) == SLOT
    assert not os.path.exists(staging)


def test_ota_apply_of_an_artifact_without_a_watch(client, root, tmp_path):
    given = staged_files(tmp_path)
    client.ota_apply(artifact=given['a.eaf'], keyslot=SLOT, force=True, watch=0)
    argv = client.recorder.argv
    staging = os.path.dirname(argv[argv.index('--artifact') + 1])
    assert argv == cli(root, 'ota', 'apply', '--artifact', os.path.join(staging, 'model.eaf'), '--keyslot', '-',
                       '--watch', '0', '--force')
    assert json.loads(client.recorder.stdin) == SLOT


def test_a_failed_runtime_json_fails_the_module_naming_the_command_and_passing_reason(client, failing):
    client.answer(answer={'failed': True, 'msg': 'the key slot belongs to artifact 0123',
                          'reason': 'keyslot_other_artifact'}, rc=1)
    result = failing(client.model_rekey, 'digits', '1.0.0', SLOT)
    assert result['msg'] == 'edgeai-runtime model rekey failed: the key slot belongs to artifact 0123'
    assert result['reason'] == 'keyslot_other_artifact'


def test_a_refused_plan_fails_naming_ota_plan(client, failing):
    client.answer(answer={'failed': True, 'msg': 'digits 9.9.9 is not held', 'reason': 'not_held'}, rc=1)
    result = failing(client.ota_plan, 'digits', '9.9.9', state='rolled_back')
    assert result['msg'] == 'edgeai-runtime ota plan failed: digits 9.9.9 is not held'
    assert result['reason'] == 'not_held'


def test_a_failed_update_can_come_back_as_the_result(client):
    """edgeai.fleet.model reports an update that failed and rolled back (UpdateFailed) as its own result."""
    failed = {'failed': True, 'msg': 'gate: accuracy 0.41 below 0.9', 'reason': 'gate_accuracy', 'phase': 'gate',
              'outcome': 'rolled_back', 'changed': False}
    client.answer(answer=failed, rc=1)
    assert client.ota_apply(installed=('digits', '2.0.0'), fail_module=False) == failed


def test_a_failed_update_fails_the_module_by_default(client, failing):
    client.answer(answer={'failed': True, 'msg': 'gate: accuracy 0.41 below 0.9', 'reason': 'gate_accuracy'}, rc=1)
    result = failing(client.ota_apply, installed=('digits', '2.0.0'), watch=0)
    assert result['msg'] == 'edgeai-runtime ota apply failed: gate: accuracy 0.41 below 0.9'
    assert result['reason'] == 'gate_accuracy'


def test_output_that_is_not_json_fails_with_the_command_and_what_it_said(client, failing):
    client.answer(answer='Traceback (most recent call last):\n  ...\nImportError: no module named onnxruntime\n',
                  rc=1, err='ImportError: no module named onnxruntime\n')
    result = failing(client.model_list)
    assert result['msg'] == 'edgeai-runtime model list failed: ImportError: no module named onnxruntime'
    assert result['rc'] == 1


def test_no_output_at_all_fails_with_the_exit_status(client, failing):
    client.answer(answer='', rc=2)
    result = failing(client.keys_show)
    assert result['msg'] == 'edgeai-runtime keys show failed: exit status 2'


def test_a_non_zero_exit_without_a_failure_in_the_json_fails(client, failing):
    client.answer(answer={'changed': True}, rc=1, err='killed while writing')
    result = failing(client.keys_rotate)
    assert result['msg'] == 'edgeai-runtime keys rotate failed: killed while writing'


def test_a_device_without_the_runtime_fails_clearly(client, root, failing):
    os.remove(os.path.join(root, 'venv', 'bin', 'edgeai-runtime'))
    result = failing(client.model_list)
    assert 'the device runtime is not installed at %s/venv/bin/edgeai-runtime' % root in result['msg']
    assert client.recorder.calls == []


def test_contradictory_arguments_fail_before_running_anything(client, failing, tmp_path):
    result = failing(client.ota_plan, 'digits', '1.0.0', key_id='ab' * 16, current_key=True)
    assert 'not both' in result['msg']
    result = failing(client.ota_apply, installed=('digits', '1.0.0'), artifact=str(tmp_path / 'a.eaf'))
    assert '--installed takes no artifact' in result['msg']
    result = failing(client.ota_apply)
    assert 'needs an artifact, a delta or an installed version' in result['msg']
    assert client.recorder.calls == []


@pytest.mark.skipif(os.geteuid() != 0, reason='runuser is used only when the module runs as root')
def test_as_root_it_runs_as_the_service_user(client, root):
    client.user = 'edgeai'
    client.model_list()
    assert client.recorder.argv == ['runuser', '-u', 'edgeai', '--'] + cli(root, 'model', 'list')
