"""Unit tests for plugins/module_utils/_runtimes.py: finding inference runtimes by package metadata."""
from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from ansible_collections.edgeai.fleet.plugins.module_utils import _runtimes

DPKG_FORMAT = '${Package}\t${Version}\t${db:Status-Abbrev}\n'

# What `dpkg-query -W -f '${Package}\t${Version}\t${db:Status-Abbrev}\n' <names>` prints on a
# JetPack 4.6.1 Jetson Nano that also has the Coral runtime: db:Status-Abbrev is three characters
# (desired action, package status, error flag), so an installed package reads 'ii ' with a
# trailing space. 'un' is a name dpkg knows but that is not installed (no version), 'rc' a
# package that was removed with its configuration files left behind (version still printed).
# Names dpkg has never heard of go to stderr ("dpkg-query: no packages found matching ...")
# and make it exit 1.
JETSON_DPKG_OUTPUT = (
    'libedgetpu1-max\t\tun \n'
    'libedgetpu1-std:arm64\t16.0\tii \n'
    'libnvinfer8\t8.2.1-1+cuda10.2\tii \n'
    'python3-libnvinfer\t8.2.1-1+cuda10.2\tii \n'
    'python3-tflite-runtime\t2.5.0.post1\trc \n'
    'tensorrt\t8.2.1.8-1+cuda10.2\tii \n'
)
JETSON_DPKG_STDERR = 'dpkg-query: no packages found matching libnvinfer10\n'


def subprocess_run_command(args):
    """A stand-in for AnsibleModule.run_command: (rc, stdout, stderr); a missing program gives rc 127."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except OSError as e:
        return 127, '', str(e)
    return proc.returncode, proc.stdout, proc.stderr


# --- dpkg -----------------------------------------------------------------------------------

def test_parse_dpkg_query():
    assert _runtimes.parse_dpkg_query(JETSON_DPKG_OUTPUT) == {
        'libedgetpu1-std': '16.0',
        'libnvinfer8': '8.2.1-1+cuda10.2',
        'python3-libnvinfer': '8.2.1-1+cuda10.2',
        'tensorrt': '8.2.1.8-1+cuda10.2',
    }


@pytest.mark.parametrize('line', [
    'libedgetpu1-max\t\tun ',                   # known, not installed
    'python3-tflite-runtime\t2.5.0.post1\trc ',  # removed, config files left
    'libnvinfer8\t8.2.1-1+cuda10.2\tpn ',       # purged
    'libnvinfer8\t8.2.1-1+cuda10.2',            # not the three-column format
    'dpkg-query: no packages found matching libnvinfer10',
    '',
])
def test_parse_dpkg_query_ignores_rows_not_installed(line):
    assert _runtimes.parse_dpkg_query(line + '\n') == {}


def test_parse_dpkg_query_keeps_held_packages():
    assert _runtimes.parse_dpkg_query('libnvinfer8\t8.2.1-1+cuda10.2\thi \n') == {'libnvinfer8': '8.2.1-1+cuda10.2'}


def test_debian_versions_uses_output_even_when_dpkg_query_exits_1():
    calls = []

    def run_command(args):
        calls.append(args)
        return 1, JETSON_DPKG_OUTPUT, JETSON_DPKG_STDERR

    found = _runtimes.debian_versions(run_command, '/usr/bin/dpkg-query')
    assert found['tensorrt'] == '8.2.1.8-1+cuda10.2'
    assert found['libedgetpu1-std'] == '16.0'
    assert calls == [['/usr/bin/dpkg-query', '-W', '-f', DPKG_FORMAT] + _runtimes.all_debian_packages()]
    assert set(_runtimes.all_debian_packages()) == {
        'libedgetpu1-std', 'libedgetpu1-max', 'tensorrt', 'libnvinfer10', 'libnvinfer8',
        'python3-libnvinfer', 'python3-tflite-runtime'}


def test_debian_versions_without_dpkg_query():
    def run_command(args):
        raise AssertionError('nothing must run without dpkg-query')
    assert _runtimes.debian_versions(run_command, None) == {}


@pytest.mark.skipif(not shutil.which('dpkg-query'), reason='needs dpkg-query (a Debian-family host)')
def test_debian_versions_real_dpkg_query(monkeypatch):
    """The real dpkg-query, with a package that is installed wherever dpkg-query is, and one that is nowhere."""
    monkeypatch.setattr(_runtimes, 'DEBIAN_PACKAGES', {'dpkg_itself': ('edgeai-no-such-package', 'dpkg')})
    version = subprocess.run(['dpkg-query', '-W', '-f', '${Version}', 'dpkg'],
                             capture_output=True, text=True, check=True).stdout
    found = _runtimes.debian_versions(subprocess_run_command, shutil.which('dpkg-query'))
    assert found == {'dpkg': version}
    assert _runtimes.collect([('dpkg', found)]) == {
        'dpkg_itself': {'version': version, 'package': 'dpkg', 'source': 'dpkg'}}


# --- collect --------------------------------------------------------------------------------

def test_collect_precedence_venv_system_dpkg():
    sources = [
        ('venv', {'onnxruntime-gpu': '1.20.1', 'edgeai-device-runtime': '0.3.0'}),
        ('system', {'onnxruntime': '1.16.3', 'tflite-runtime': '2.14.0'}),
        ('dpkg', {'python3-tflite-runtime': '2.5.0.post1', 'tensorrt': '8.2.1.8-1+cuda10.2',
                  'libnvinfer8': '8.2.1-1+cuda10.2', 'libedgetpu1-std': '16.0'}),
    ]
    assert _runtimes.collect(sources) == {
        'onnxruntime': {'version': '1.20.1', 'package': 'onnxruntime-gpu', 'source': 'venv'},
        'device_runtime': {'version': '0.3.0', 'package': 'edgeai-device-runtime', 'source': 'venv'},
        'tflite_runtime': {'version': '2.14.0', 'package': 'tflite-runtime', 'source': 'system'},
        'tensorrt': {'version': '8.2.1.8-1+cuda10.2', 'package': 'tensorrt', 'source': 'dpkg'},
        'edgetpu': {'version': '16.0', 'package': 'libedgetpu1-std', 'source': 'dpkg'},
    }


def test_collect_order_of_sources_decides():
    venv = ('venv', {'onnxruntime': '1.20.1'})
    system = ('system', {'onnxruntime': '1.16.3'})
    assert _runtimes.collect([venv, system])['onnxruntime']['source'] == 'venv'
    assert _runtimes.collect([system, venv])['onnxruntime']['source'] == 'system'


def test_collect_prefers_the_first_package_listed_within_a_source():
    found = {'onnxruntime-gpu': '1.20.1', 'onnxruntime': '1.19.0'}
    assert _runtimes.collect([('venv', found)])['onnxruntime']['package'] == 'onnxruntime'
    dpkg = {'python3-libnvinfer': '8.5.2-1+cuda11.4', 'libnvinfer8': '8.5.2-1+cuda11.4'}
    assert _runtimes.collect([('dpkg', dpkg)])['tensorrt']['package'] == 'libnvinfer8'


def test_collect_matches_each_source_against_its_own_table():
    # A Debian package name reported by a Python probe, or a distribution name by dpkg, means nothing.
    assert _runtimes.collect([('system', {'libedgetpu1-std': '16.0'}), ('dpkg', {'onnxruntime': '1.0'})]) == {}
    assert _runtimes.collect([]) == {}


# --- python_versions, run for real ------------------------------------------------------------

def test_python_versions_real_interpreter(monkeypatch):
    monkeypatch.setattr(_runtimes, 'PYTHON_DISTRIBUTIONS',
                        {'test_runner': ('edgeai-no-such-distribution', 'pytest'), 'absent': ('edgeai-nope',)})
    found, error = _runtimes.python_versions(subprocess_run_command, sys.executable)
    assert error is None
    assert found == {'pytest': pytest.__version__}
    assert _runtimes.collect([('system', found)]) == {
        'test_runner': {'version': pytest.__version__, 'package': 'pytest', 'source': 'system'}}


def test_python_versions_default_table_real_interpreter():
    found, error = _runtimes.python_versions(subprocess_run_command, sys.executable)
    assert error is None
    assert set(found) <= set(_runtimes.all_distributions())


def test_python_versions_missing_interpreter(tmp_path):
    python = str(tmp_path / 'venv' / 'bin' / 'python')
    found, error = _runtimes.python_versions(subprocess_run_command, python)
    assert found == {}
    assert error.startswith('probing %s failed (rc=127): ' % python)
    assert 'No such file or directory' in error


def test_python_versions_failing_interpreter():
    found, error = _runtimes.python_versions(subprocess_run_command, shutil.which('false') or '/bin/false')
    assert found == {}
    assert 'failed (rc=1)' in error


def test_python_versions_interpreter_raising(tmp_path):
    python = tmp_path / 'python'
    python.write_text('#!/bin/sh\necho "Traceback (most recent call last):" >&2\n'
                      'echo "ModuleNotFoundError: No module named \'importlib_metadata\'" >&2\nexit 1\n')
    python.chmod(0o755)
    found, error = _runtimes.python_versions(subprocess_run_command, str(python))
    assert found == {}
    assert error == ("probing %s failed (rc=1): Traceback (most recent call last):\n"
                     "ModuleNotFoundError: No module named 'importlib_metadata'" % python)


def test_python_versions_not_json():
    # echo is no Python: it prints its arguments back, which is not JSON.
    found, error = _runtimes.python_versions(subprocess_run_command, shutil.which('echo') or '/bin/echo')
    assert found == {}
    assert 'printed no JSON' in error


def test_python_versions_takes_the_last_line():
    def run_command(args):
        return 0, 'WARNING: sitecustomize said something\n{"onnxruntime": "1.20.1"}\n', ''
    assert _runtimes.python_versions(run_command, '/opt/edgeai/venv/bin/python') == ({'onnxruntime': '1.20.1'}, None)


def test_python_versions_empty_output():
    found, error = _runtimes.python_versions(lambda args: (0, '', ''), '/usr/bin/python3')
    assert (found, error) == ({}, "probing /usr/bin/python3 printed no JSON: ''")


def test_python_versions_error_is_trimmed():
    long_err = 'x' * 1000 + 'END'
    found, error = _runtimes.python_versions(lambda args: (2, '', long_err), '/usr/bin/python3')
    assert error == 'probing /usr/bin/python3 failed (rc=2): ' + long_err[-300:]
