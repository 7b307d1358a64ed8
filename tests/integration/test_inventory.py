"""inventories/factory as users run it: ansible-inventory and ansible through the edgeai.fleet.fleet plugin
(fleet.yml + registry.yml) with the checkout's ansible.cfg, and the group_vars next to it still applying."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from conftest import REPO

CLASSES = ['jetson_nano', 'jetson_orin', 'raspberry_pi', 'coral', 'generic']
# The waves fleet.yml's plan gives these ids (sha256 placement; a change here means devices moved).
WAVES = {
    'rollout_canary': ['orin-a01', 'rpi-b01'],
    'rollout_wave1': ['coral-b01'],
    'rollout_wave2': ['nano-a01', 'orin-b01', 'rpi-a01'],
    'rollout_wave3': ['coral-b02', 'ipc-a01', 'nano-a02'],
}


def plain(value):
    """``value`` with --list's unsafe markers ({"__ansible_unsafe": text}) replaced by the text."""
    if isinstance(value, dict):
        if list(value) == ['__ansible_unsafe']:
            return value['__ansible_unsafe']
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def run(*argv):
    done = subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg')))
    assert done.returncode == 0, done.stdout + done.stderr
    # No source of the directory fails to parse (registry.yml is skipped, fleet.yml is the plugin's).
    assert 'WARNING' not in done.stderr, done.stderr
    return done.stdout


@pytest.fixture(scope='module')
def listed():
    return json.loads(run('ansible-inventory', '-i', 'inventories/factory', '--list'))


def test_graph_shows_classes_sites_and_waves():
    graph = run('ansible-inventory', '-i', 'inventories/factory', '--graph')
    for group in ['edgeai_devices'] + CLASSES + ['site_plant_a', 'site_plant_b'] + list(WAVES):
        assert '@%s:' % group in graph, graph
    assert '|  |--@jetson_nano:\n  |  |  |--nano-a01\n  |  |  |--nano-a02\n' in graph, graph


def test_groups(listed):
    assert sorted(listed['edgeai_devices']['children']) == sorted(CLASSES)
    assert listed['jetson_nano']['hosts'] == ['nano-a01', 'nano-a02']
    assert sorted(listed['coral']['hosts']) == ['coral-b01', 'coral-b02']
    assert sorted(listed['site_plant_a']['hosts']) == ['ipc-a01', 'nano-a01', 'nano-a02', 'orin-a01', 'rpi-a01']
    assert sorted(listed['site_plant_b']['hosts']) == ['coral-b01', 'coral-b02', 'orin-b01', 'rpi-b01']
    for group, hosts in WAVES.items():
        assert listed[group]['hosts'] == hosts, group
    assert 'rollout_wave4' not in listed
    # The keyed_groups example on the "role" label.
    assert listed['role_camera']['hosts'] == ['nano-a01', 'nano-a02']
    assert listed['role_line_pc']['hosts'] == ['ipc-a01']


def test_group_vars_and_registry_vars(listed):
    hostvars = listed['_meta']['hostvars']
    nano = hostvars['nano-a01']
    # group_vars/jetson_nano.yml, edgeai_devices.yml and site_plant_a.yml by group name.
    assert nano['ansible_python_interpreter'] == '/usr/bin/python3.8'
    assert nano['ansible_user'] == 'edgeadmin' and nano['ansible_become'] is True
    assert nano['ansible_ssh_common_args'] == '-o ProxyJump=edgeadmin@203.0.113.10'
    assert nano['provision_apt_update_cache'] is True
    assert hostvars['coral-b01']['ansible_ssh_common_args'] == '-o ProxyJump=edgeadmin@203.0.113.20'
    assert hostvars['rpi-b01']['ansible_python_interpreter'] == '/usr/bin/python3'
    # From the registry: marked unsafe (never templated), which --list writes as __ansible_unsafe.
    assert nano['ansible_host'] == {'__ansible_unsafe': '192.0.2.11'}
    nano = plain(nano)
    assert nano['ansible_host'] == '192.0.2.11'
    assert nano['edgeai_registry_class'] == 'jetson_nano' and nano['edgeai_site'] == 'plant_a'
    assert nano['edgeai_wave_name'] == 'wave2' and nano['edgeai_wave'] == 2
    assert nano['edgeai_wave_plan'] == {'canary': ['orin-a01', 'rpi-b01'], 'percentages': [25, 60, 100]}
    # coral-b02 pins its class through its entry's vars; nobody else does (pin_class is off).
    assert plain(hostvars['coral-b02']['edgeai_hardware_class']) == 'coral'
    assert [host for host, values in hostvars.items() if 'edgeai_hardware_class' in values] == ['coral-b02']


def test_the_config_file_alone_is_the_same_inventory(listed):
    # As AWX sources it: the file, not the directory; group_vars/ next to it still apply.
    alone = json.loads(run('ansible-inventory', '-i', 'inventories/factory/fleet.yml', '--list'))
    assert alone == listed


def test_a_wave_pattern_lists_hosts_wave_by_wave():
    out = run('ansible', 'rollout_canary:rollout_wave1:rollout_wave2', '-i', 'inventories/factory', '--list-hosts')
    hosts = [line.strip() for line in out.splitlines()[1:] if line.strip()]
    assert hosts == WAVES['rollout_canary'] + WAVES['rollout_wave1'] + WAVES['rollout_wave2'], out
