"""Unit tests for plugins/modules/device_facts.py, running the real main() in-process.

Arguments go in through ansible.module_utils.basic._ANSIBLE_ARGS (the set_module_args fixture
in tests/unit/conftest.py); the module ends with SystemExit and prints its result as JSON.
"""
from __future__ import annotations

import json
import platform
import shutil
import sys

import pytest

from ansible_collections.edgeai.fleet.plugins.module_utils import _hardware
from ansible_collections.edgeai.fleet.plugins.module_utils import _runtimes
from ansible_collections.edgeai.fleet.plugins.modules import device_facts

CLASSES = 'jetson_nano, jetson_orin, raspberry_pi, coral, generic'


@pytest.fixture
def run_module(set_module_args, capsys):
    """Run device_facts.main() with the given arguments; returns (exit code, result dict)."""
    def run(**args):
        set_module_args(args)
        with pytest.raises(SystemExit) as exit_info:
            device_facts.main()
        out = capsys.readouterr().out
        return exit_info.value.code, json.loads(out)
    return run


@pytest.fixture
def pytest_as_runtime(monkeypatch):
    """Make the probes look for distributions and packages that are certainly on the test host."""
    monkeypatch.setattr(_runtimes, 'PYTHON_DISTRIBUTIONS', {'test_runner': ('pytest',)})
    monkeypatch.setattr(_runtimes, 'DEBIAN_PACKAGES', {'dpkg_itself': ('dpkg',)})


def test_facts_from_evidence_root(run_module, hardware_fixture, tmp_path, pytest_as_runtime):
    rc, result = run_module(evidence_root=hardware_fixture('raspberry_pi_4_bookworm'),
                            venv=str(tmp_path / 'no-venv'))
    assert rc == 0
    assert result['changed'] is False
    assert 'failed' not in result
    facts = result['ansible_facts']['edgeai']
    assert facts['hardware_class'] == 'raspberry_pi'
    assert facts['detected_class'] == 'raspberry_pi'
    assert facts['class_source'] == 'detected'
    assert facts['class_evidence'] == "device-tree model 'Raspberry Pi 4 Model B Rev 1.4'"
    assert facts['model'] == 'Raspberry Pi 4 Model B Rev 1.4'
    assert facts['compatible'] == ['raspberrypi,4-model-b', 'brcm,bcm2711']
    assert facts['accelerators'] == []
    # Memory, CPUs, /etc and the machine are the real host's, not the fixture's.
    real = _hardware.HostView('/')
    assert facts['memory_bytes'] == _hardware.memory_bytes(real)
    assert facts['memory_bytes'] != 3884400 * 1024
    assert facts['cpu_count'] == _hardware.cpu_count(real)
    assert facts['os'] == _hardware.os_release(real)
    assert facts['l4t_version'] == _hardware.l4t_version(real)
    # The venv does not exist: only the system Python (this interpreter) and dpkg are asked.
    assert facts['warnings'] == []
    assert facts['runtimes']['test_runner'] == {'version': pytest.__version__, 'package': 'pytest', 'source': 'system'}
    if shutil.which('dpkg-query'):
        assert facts['runtimes']['dpkg_itself']['source'] == 'dpkg'
    else:
        assert 'dpkg_itself' not in facts['runtimes']
    assert set(facts) == {
        'hardware_class', 'detected_class', 'class_source', 'class_evidence', 'model', 'compatible', 'machine',
        'arch', 'cpu_count', 'memory_bytes', 'accelerators', 'os', 'l4t_version', 'jetpack_version',
        'runtimes', 'warnings', 'python'}
    assert facts['python']['version'] == platform.python_version()
    assert facts['python']['libc'] == (platform.libc_ver()[0] or None)


def test_default_runtime_table(run_module, hardware_fixture, tmp_path):
    rc, result = run_module(evidence_root=hardware_fixture('x86_vm_generic'), venv=str(tmp_path / 'no-venv'))
    assert rc == 0
    facts = result['ansible_facts']['edgeai']
    assert facts['hardware_class'] == 'generic'
    assert facts['model'] == 'QEMU Standard PC (Q35 + ICH9, 2009)'
    assert facts['warnings'] == []
    assert isinstance(facts['runtimes'], dict)


def test_inventory_override(run_module, hardware_fixture, tmp_path):
    rc, result = run_module(evidence_root=hardware_fixture('jetson_nano_jp461'), hardware_class='coral',
                            venv=str(tmp_path / 'no-venv'))
    assert rc == 0
    facts = result['ansible_facts']['edgeai']
    assert (facts['hardware_class'], facts['detected_class'], facts['class_source']) == \
        ('coral', 'jetson_nano', 'inventory')
    assert facts['accelerators'] == [{'kind': 'tegra_igpu', 'soc': 'tegra210'}]


def test_check_mode(run_module, hardware_fixture, tmp_path):
    rc, result = run_module(evidence_root=hardware_fixture('coral_usb_rpi4_runtime'),
                            venv=str(tmp_path / 'no-venv'), _ansible_check_mode=True)
    assert rc == 0
    assert result['changed'] is False
    assert result['ansible_facts']['edgeai']['hardware_class'] == 'coral'


def make_venv_python(venv, body):
    python = venv / 'bin' / 'python'
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\n' + body + '\n')
    python.chmod(0o755)
    return python


def test_venv_comes_before_system(run_module, hardware_fixture, tmp_path, pytest_as_runtime):
    # A venv whose python is this interpreter under another name: pytest is found there first.
    venv = tmp_path / 'venv'
    make_venv_python(venv, 'exec %s "$@"' % sys.executable)
    rc, result = run_module(evidence_root=hardware_fixture('x86_vm_generic'), venv=str(venv))
    assert rc == 0
    facts = result['ansible_facts']['edgeai']
    assert facts['warnings'] == []
    assert facts['runtimes']['test_runner'] == {'version': pytest.__version__, 'package': 'pytest', 'source': 'venv'}


def test_broken_venv_python_is_a_warning(run_module, hardware_fixture, tmp_path, pytest_as_runtime):
    venv = tmp_path / 'venv'
    python = make_venv_python(venv, 'echo "python: error while loading shared libraries" >&2; exit 127')
    rc, result = run_module(evidence_root=hardware_fixture('x86_vm_generic'), venv=str(venv))
    assert rc == 0
    assert 'failed' not in result
    facts = result['ansible_facts']['edgeai']
    assert facts['warnings'] == [
        'probing %s failed (rc=127): python: error while loading shared libraries' % python]
    assert facts['runtimes']['test_runner']['source'] == 'system'


def test_unknown_hardware_class_fails(run_module, hardware_fixture, tmp_path):
    rc, result = run_module(evidence_root=hardware_fixture('x86_vm_generic'), hardware_class='jetson_xavier',
                            venv=str(tmp_path / 'no-venv'))
    assert rc == 1
    assert result['failed'] is True
    assert 'ansible_facts' not in result
    assert 'hardware_class' in result['msg']
    assert 'jetson_xavier' in result['msg']
    assert CLASSES in result['msg']


def test_missing_evidence_root_fails(run_module, tmp_path):
    missing = str(tmp_path / 'no-such-evidence')
    rc, result = run_module(evidence_root=missing, venv=str(tmp_path / 'no-venv'))
    assert rc == 1
    assert result['failed'] is True
    assert result['msg'] == 'reading hardware evidence: evidence_root %s is not a directory' % missing
    assert 'ansible_facts' not in result


def test_evidence_root_that_is_a_file_fails(run_module, tmp_path):
    path = tmp_path / 'evidence.tar'
    path.write_text('')
    rc, result = run_module(evidence_root=str(path), venv=str(tmp_path / 'no-venv'))
    assert rc == 1
    assert 'is not a directory' in result['msg']
