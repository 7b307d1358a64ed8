"""Unit tests for plugins/modules/device_files.py: the real main() in-process, on real files (the tests
run as root, as CI does, so ownership is really changed).

The four runs of community.crypto's pattern: check, run, check, run -> changed, changed, not changed,
not changed; then drifted content, mode and owner are put back, a file is removed, and bad input fails
clearly.
"""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.edgeai.fleet.plugins.modules import device_files


@pytest.fixture
def run_module(set_module_args, capsys, tmp_path):
    def run(check_mode=False, diff=False, **args):
        args.update(_ansible_check_mode=check_mode, _ansible_diff=diff, _ansible_tmpdir=str(tmp_path / 'tmp'))
        os.makedirs(str(tmp_path / 'tmp'), exist_ok=True)
        set_module_args(args)
        with pytest.raises(SystemExit) as exit_info:
            device_files.main()
        return exit_info.value.code, json.loads(capsys.readouterr().out)
    return run


def stat_of(path):
    st = os.stat(path)
    return st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)


def files_in(root):
    return [{'path': str(root / 'runtime.json'), 'content': '{"port": 8080}\n', 'owner': 'root', 'group': 'nogroup',
             'mode': '0640'},
            {'path': str(root / 'unit.service'), 'content': '[Unit]\nDescription=x\n', 'owner': 'nobody',
             'group': 'nogroup', 'mode': '0644'},
            {'path': str(root / 'token'), 'state': 'absent'}]


@pytest.mark.skipif(os.geteuid() != 0, reason='changes ownership: runs as root (as CI does)')
def test_check_run_check_run_then_drift_and_removal(run_module, tmp_path):
    root = tmp_path / 'etc'
    root.mkdir()
    files = files_in(root)
    rc, check1 = run_module(check_mode=True, diff=True, files=files)
    assert rc == 0 and check1['changed'] and [p['path'] for p in check1['changed_paths']] == [f['path'] for f in files[:2]]
    assert not (root / 'runtime.json').exists(), 'check mode wrote a file'
    assert check1['diff'][0]['after'] == '{"port": 8080}\n' and check1['diff'][0]['before'] == ''
    assert check1['diff'][1]['after_header'].endswith('(nobody:nogroup 0644)')

    rc, run1 = run_module(files=files)
    assert rc == 0 and run1['changed']
    assert (root / 'runtime.json').read_text() == '{"port": 8080}\n'
    assert stat_of(root / 'runtime.json') == (0, 65534, '0o640')
    assert stat_of(root / 'unit.service') == (65534, 65534, '0o644')

    rc, check2 = run_module(check_mode=True, diff=True, files=files)
    assert rc == 0 and not check2['changed'] and check2['changed_paths'] == [] and check2['diff'] == []
    rc, run2 = run_module(files=files)
    assert rc == 0 and not run2['changed']

    (root / 'runtime.json').write_text('{"port": 9}\n')
    os.chmod(root / 'unit.service', 0o666)
    os.chown(root / 'unit.service', 0, 0)
    (root / 'token').write_text('old\n')
    rc, check3 = run_module(check_mode=True, files=files)
    assert rc == 0 and check3['changed'] and (root / 'token').exists()
    rc, mended = run_module(diff=True, files=files)
    assert rc == 0 and mended['changed']
    assert mended['changed_paths'] == [{'path': files[0]['path'], 'content': True},
                                       {'path': files[1]['path'], 'owner': 'nobody:nogroup', 'mode': '0644'},
                                       {'path': files[2]['path'], 'removed': True}]
    # A removed file's diff names it but never shows its content (the token is a secret).
    assert mended['diff'][0]['before'] == '{"port": 9}\n' and mended['diff'][2]['before'] == 'a file of 4 bytes\n'
    assert 'old' not in json.dumps(mended['diff'])
    assert (root / 'runtime.json').read_text() == '{"port": 8080}\n'
    assert stat_of(root / 'runtime.json') == (0, 65534, '0o640')
    assert stat_of(root / 'unit.service') == (65534, 65534, '0o644')
    assert not (root / 'token').exists()
    rc, run3 = run_module(files=files)
    assert rc == 0 and not run3['changed']


def test_an_unknown_owner_fails_naming_path_and_user_but_check_mode_predicts(run_module, tmp_path):
    entry = {'path': str(tmp_path / 'f'), 'content': 'x', 'owner': 'edgeai-no-such-user', 'group': 'root',
             'mode': '0644'}
    rc, result = run_module(files=[entry])
    assert rc == 1 and str(tmp_path / 'f') in result['msg'] and 'edgeai-no-such-user' in result['msg'], result
    assert not (tmp_path / 'f').exists()
    rc, result = run_module(check_mode=True, files=[entry])
    assert rc == 0 and result['changed'], result


def test_bad_input_fails_clearly(run_module, tmp_path):
    (tmp_path / 'dir').mkdir()
    base = {'content': 'x', 'owner': 'root', 'group': 'root', 'mode': '0644'}
    rc, result = run_module(files=[dict(base, path=str(tmp_path / 'dir'))])
    assert rc == 1 and 'is not a regular file' in result['msg'] and str(tmp_path / 'dir') in result['msg']
    rc, result = run_module(files=[dict(base, path=str(tmp_path / 'missing' / 'f'))])
    assert rc == 1 and 'does not exist' in result['msg'] and str(tmp_path / 'missing') in result['msg']
    rc, result = run_module(files=[dict(base, path=str(tmp_path / 'f'), mode='rw')])
    assert rc == 1 and "'rw' is not an octal number" in result['msg']
    rc, result = run_module(files=[{'path': str(tmp_path / 'f'), 'content': 'x'}])
    assert rc == 1 and 'owner' in result['msg'] and 'state' in result['msg'], result
