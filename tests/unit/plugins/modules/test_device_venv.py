"""Unit tests for plugins/modules/device_venv.py: the real main() in-process. A stand-in interpreter (a shell
script) records the argv it is run with and lays out what ``python -m venv`` would, so the tests need no real
venv: check, run, check, run -> changed, changed, not changed, not changed; then the setting flips.
"""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.edgeai.fleet.plugins.modules import device_venv

# What python -m venv [--system-site-packages] DIR leaves behind, as far as the module looks.
FAKE_PYTHON = '''#!/bin/sh
echo "$@" >> "$(dirname "$0")/argv.log"
for last; do :; done
mkdir -p "$last/bin" && touch "$last/bin/python"
case " $* " in *" --system-site-packages "*) system=true ;; *) system=false ;; esac
printf 'home = /usr/bin\\ninclude-system-site-packages = %s\\nversion = 3.11.2\\n' "$system" > "$last/pyvenv.cfg"
'''


@pytest.fixture
def python(tmp_path):
    path = tmp_path / 'bin' / 'python3'
    path.parent.mkdir()
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


@pytest.fixture
def run_module(set_module_args, capsys, tmp_path):
    def run(check_mode=False, diff=False, **args):
        os.makedirs(str(tmp_path / 'tmp'), exist_ok=True)
        args.update(_ansible_check_mode=check_mode, _ansible_diff=diff, _ansible_tmpdir=str(tmp_path / 'tmp'))
        set_module_args(args)
        with pytest.raises(SystemExit) as exit_info:
            device_venv.main()
        return exit_info.value.code, json.loads(capsys.readouterr().out)
    return run


def test_check_run_check_run_then_the_setting_flips(run_module, python, tmp_path):
    venv = tmp_path / 'venv'
    venv.mkdir()  # the layout creates the directory, empty
    args = dict(path=str(venv), python=str(python), system_site_packages=False)
    rc, check1 = run_module(check_mode=True, diff=True, **args)
    assert rc == 0 and check1['changed'] and check1['created'] and 'diff' in check1
    assert not (python.parent / 'argv.log').exists(), 'check mode ran the interpreter'

    rc, run1 = run_module(**args)
    assert rc == 0 and run1['changed'] and run1['created'] and not run1['config_changed']
    assert (python.parent / 'argv.log').read_text() == '-m venv %s\n' % venv

    rc, check2 = run_module(check_mode=True, **args)
    assert rc == 0 and not check2['changed']
    rc, run2 = run_module(**args)
    assert rc == 0 and not run2['changed']

    flipped = dict(args, system_site_packages=True)
    rc, check3 = run_module(check_mode=True, diff=True, **flipped)
    assert rc == 0 and check3['changed'] and check3['config_changed'] and not check3['created']
    assert 'include-system-site-packages = true' in check3['diff']['after']
    assert 'include-system-site-packages = false' in (venv / 'pyvenv.cfg').read_text()
    rc, run3 = run_module(**flipped)
    assert rc == 0 and run3['changed'] and run3['config_changed']
    assert (venv / 'pyvenv.cfg').read_text() == 'home = /usr/bin\ninclude-system-site-packages = true\nversion = 3.11.2\n'
    rc, run4 = run_module(**flipped)
    assert rc == 0 and not run4['changed']
    assert len((python.parent / 'argv.log').read_text().splitlines()) == 1, 'an existing venv was recreated'


def test_system_site_packages_is_passed_on_creation_and_a_missing_line_appended(run_module, python, tmp_path):
    venv = tmp_path / 'jetson-venv'
    rc, run = run_module(path=str(venv), python=str(python), system_site_packages=True)
    assert rc == 0 and run['created']
    assert (python.parent / 'argv.log').read_text() == '-m venv --system-site-packages %s\n' % venv
    (venv / 'pyvenv.cfg').write_text('home = /usr/bin\nversion = 3.11.2')
    rc, run = run_module(path=str(venv), python=str(python), system_site_packages=True)
    assert rc == 0 and run['config_changed']
    assert (venv / 'pyvenv.cfg').read_text() == 'home = /usr/bin\nversion = 3.11.2\ninclude-system-site-packages = true\n'


def test_a_failing_interpreter_fails_naming_venv_and_cause(run_module, tmp_path):
    bad = tmp_path / 'python-broken'
    bad.write_text('#!/bin/sh\necho "No module named venv" >&2\nexit 1\n')
    bad.chmod(0o755)
    rc, result = run_module(path=str(tmp_path / 'v'), python=str(bad))
    assert rc == 1 and str(tmp_path / 'v') in result['msg'] and 'No module named venv' in result['msg'], result
