"""Unit tests for plugins/modules/telemetry_facts.py: its real main() in-process, against the real device runtime.

``<root>/venv/bin/edgeai-runtime`` is this venv's console script (as in test_keyslot_no_log.py), run as the
current user (``user=root`` keeps the module from switching). The device root's telemetry settings point the
sensors at a simulated class's evidence tree (sim/evidence), as the simulated fleet does.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.edgeai.fleet.plugins.modules import telemetry_facts

pytest.importorskip('edgeai_runtime')

EVIDENCE = Path(__file__).resolve().parents[4] / 'sim' / 'evidence'
SAMPLE_KEYS = {'schema', 'device_id', 'hardware_class', 'time', 'boot_id', 'uptime_seconds', 'cpu', 'memory',
               'filesystems', 'network', 'sensors', 'service', 'inference', 'models', 'ota', 'outbox'}


@pytest.fixture
def run_module(set_module_args, capsys):
    def run(**args):
        set_module_args(args)
        with pytest.raises(SystemExit) as exit_info:
            telemetry_facts.main()
        return exit_info.value.code, json.loads(capsys.readouterr().out)
    return run


@pytest.fixture
def device(tmp_path):
    """A device root with this venv's runtime and telemetry settings for a simulated Raspberry Pi."""
    exe = shutil.which('edgeai-runtime', path=os.path.dirname(sys.executable))
    if not exe:
        pytest.skip('the device runtime is not installed in this venv (scripts/setup.sh)')
    root = tmp_path / 'device'
    (root / 'venv' / 'bin').mkdir(parents=True)
    (root / 'etc').mkdir()
    os.symlink(exe, root / 'venv' / 'bin' / 'edgeai-runtime')
    (root / 'etc' / 'telemetry.json').write_text(json.dumps(
        {'device_id': 'pi-3', 'evidence_root': str(EVIDENCE / 'raspberry_pi')}))
    (root / 'etc' / 'profile.json').write_text(json.dumps({'hardware_class': 'raspberry_pi'}))
    return root


@pytest.mark.parametrize('check_mode', [False, True], ids=['run', 'check'])
def test_facts_from_the_runtime(run_module, device, check_mode):
    args = dict(root=str(device), user='root')
    if check_mode:
        args['_ansible_check_mode'] = True
    rc, result = run_module(**args)
    assert rc == 0, result
    assert result['changed'] is False and 'failed' not in result
    facts = result['ansible_facts']['edgeai_telemetry']
    assert set(facts) == SAMPLE_KEYS
    assert facts['device_id'] == 'pi-3' and facts['hardware_class'] == 'raspberry_pi'
    throttled = facts['sensors']['rpi_throttled']
    assert throttled['raw'] == 0x50000 and throttled['since_boot']['under_voltage'] is True
    assert facts['sensors']['thermal_zones'][0]['type'] == 'cpu-thermal'
    assert facts['sensors']['jetson_rails'] is None  # absent on a Pi: null, not an error
    assert facts['service']['running'] is False and facts['inference'] is None
    assert facts['models'] == [] and facts['ota'] == {'last': None, 'readable': True}


def test_a_runtime_failure_fails_the_module_with_its_reason(run_module, device):
    (device / 'etc' / 'telemetry.json').write_text('{"interval_s": 0}')
    rc, result = run_module(root=str(device), user='root')
    assert rc == 1 and result['failed'] is True
    assert result['msg'].startswith('edgeai-runtime telemetry collect failed: interval_s must be a positive number')
    assert result['reason'] == 'bad_config'


def test_no_runtime_installed(run_module, tmp_path):
    rc, result = run_module(root=str(tmp_path), user='root')
    assert rc == 1
    assert result['msg'] == ('the device runtime is not installed at %s/venv/bin/edgeai-runtime; apply the '
                             'edgeai.fleet.inference_service role first' % tmp_path)


def test_documented_fields_are_the_sample_fields():
    returned = yaml.safe_load(telemetry_facts.RETURN)['ansible_facts']['contains']['edgeai_telemetry']['contains']
    assert set(returned) == SAMPLE_KEYS
    documented = yaml.safe_load(telemetry_facts.DOCUMENTATION)
    assert set(documented.get('options') or {}) == set()  # root and user come from the device_runtime fragment
