"""Unit tests for plugins/modules/device_layout.py: the real main() in-process, on a real directory
tree (the tests run as root, as CI does, so ownership is really changed).

The four runs of community.crypto's pattern: check, run, check, run -> changed, changed, not
changed, not changed; then a drifted mode and owner are put back, and bad input fails clearly.
"""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.edgeai.fleet.plugins.modules import device_layout

LAYOUT = [{'path': '', 'owner': 'root', 'group': 'root', 'mode': '0755'},
          {'path': 'etc', 'owner': 'root', 'group': 'nogroup', 'mode': '0750'},
          {'path': 'models', 'owner': 'nobody', 'group': 'nogroup', 'mode': '0700'}]


@pytest.fixture
def run_module(set_module_args, capsys):
    def run(check_mode=False, diff=False, **args):
        args.update(_ansible_check_mode=check_mode, _ansible_diff=diff)
        set_module_args(args)
        with pytest.raises(SystemExit) as exit_info:
            device_layout.main()
        return exit_info.value.code, json.loads(capsys.readouterr().out)
    return run


def stat_of(path):
    st = os.stat(path)
    return st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)


@pytest.mark.skipif(os.geteuid() != 0, reason='changes ownership: runs as root (as CI does)')
def test_check_run_check_run_then_drift(run_module, tmp_path):
    root = str(tmp_path / 'edgeai')
    rc, check1 = run_module(check_mode=True, diff=True, root=root, directories=LAYOUT)
    assert rc == 0 and check1['changed'] and len(check1['changed_paths']) == 3
    assert not os.path.exists(root), 'check mode created the root'
    assert '%s/models nobody:nogroup 0700' % root in check1['diff']['after']

    rc, run1 = run_module(root=root, directories=LAYOUT)
    assert rc == 0 and run1['changed']
    assert stat_of(root + '/models') == (65534, 65534, '0o700')
    assert stat_of(root + '/etc') == (0, 65534, '0o750')

    rc, check2 = run_module(check_mode=True, root=root, directories=LAYOUT)
    assert rc == 0 and not check2['changed'] and check2['changed_paths'] == []
    rc, run2 = run_module(root=root, directories=LAYOUT)
    assert rc == 0 and not run2['changed']

    os.chmod(root + '/etc', 0o777)
    os.chown(root + '/models', 0, 0)
    rc, mended = run_module(diff=True, root=root, directories=LAYOUT)
    assert rc == 0 and mended['changed']
    assert sorted(p['path'] for p in mended['changed_paths']) == [root + '/etc', root + '/models']
    assert '%s/etc root:nogroup 0777' % root in mended['diff']['before']
    assert stat_of(root + '/etc') == (0, 65534, '0o750') and stat_of(root + '/models') == (65534, 65534, '0o700')


def test_an_unknown_owner_fails_naming_path_and_user_but_check_mode_predicts(run_module, tmp_path):
    layout = [{'path': '', 'owner': 'edgeai-no-such-user', 'group': 'root', 'mode': '0755'}]
    root = str(tmp_path / 'r')
    rc, result = run_module(root=root, directories=layout)
    assert rc == 1 and root in result['msg'] and 'edgeai-no-such-user' in result['msg'], result
    assert not os.path.exists(root)
    rc, result = run_module(check_mode=True, root=root, directories=layout)
    assert rc == 0 and result['changed'], result


def test_a_file_in_the_way_and_a_bad_mode_fail_clearly(run_module, tmp_path):
    (tmp_path / 'etc').write_text('not a directory')
    rc, result = run_module(root=str(tmp_path), directories=[dict(LAYOUT[1], owner='root', group='root')])
    assert rc == 1 and 'is not a directory' in result['msg'] and str(tmp_path / 'etc') in result['msg']
    rc, result = run_module(root=str(tmp_path), directories=[dict(LAYOUT[0], mode='rwx')])
    assert rc == 1 and "'rwx' is not an octal number" in result['msg']
