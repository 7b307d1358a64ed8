"""The collection as users get it: galaxy build/install, ansible-doc, the playbook by FQCN, setup re-runs."""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile

from conftest import REPO


def run(argv, **env):
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, **env))


def test_galaxy_build_installs_and_every_plugin_renders(tmp_path):
    build = run(['ansible-galaxy', 'collection', 'build', '--output-path', str(tmp_path)])
    assert build.returncode == 0, build.stderr
    [tarball] = tmp_path.glob('edgeai-fleet-*.tar.gz')
    names = tarfile.open(tarball).getnames()
    assert 'plugins/modules/device_facts.py' in names and 'roles/provision/tasks/main.yml' in names
    assert not [n for n in names if n.startswith(('.collections', '.venv', 'molecule/', 'tests/output', '.state'))]

    dest = tmp_path / 'installed'
    # Only the installed copy: no ansible.cfg pointing back at the checkout.
    (tmp_path / 'ansible.cfg').write_text('[defaults]\n')
    env = {'ANSIBLE_COLLECTIONS_PATH': str(dest), 'ANSIBLE_CONFIG': str(tmp_path / 'ansible.cfg')}
    install = run(['ansible-galaxy', 'collection', 'install', str(tarball), '-p', str(dest)], **env)
    assert install.returncode == 0, install.stderr
    assert (dest / 'ansible_collections/edgeai/fleet/MANIFEST.json').is_file(), install.stdout

    listed = run(['ansible-doc', '-l', 'edgeai.fleet', '-j'], **env)
    assert listed.returncode == 0, listed.stderr
    modules = sorted(json.loads(listed.stdout))
    assert modules == ['edgeai.fleet.' + m for m in ('device_facts', 'device_files', 'device_key', 'device_layout',
                                                     'device_rollout', 'device_venv', 'fleet_keys', 'model',
                                                     'model_artifact', 'model_store', 'rollout', 'telemetry_facts')]
    for name in modules:
        doc = run(['ansible-doc', name], **env)
        assert doc.returncode == 0 and 'EXAMPLES' in doc.stdout and not doc.stderr.strip(), doc.stderr
    inventory = run(['ansible-doc', '-t', 'inventory', 'edgeai.fleet.fleet'], **env)
    assert inventory.returncode == 0 and 'EXAMPLES' in inventory.stdout and not inventory.stderr.strip(), \
        inventory.stderr
    role = run(['ansible-doc', '-t', 'role', 'edgeai.fleet.provision'], **env)
    assert role.returncode == 0 and 'provision_profile_overrides' in role.stdout, role.stderr

    syntax = run(['ansible-playbook', 'edgeai.fleet.deploy', '--syntax-check', '-i', 'inventories/factory'], **env)
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_checkout_finds_the_collection_without_galaxy():
    """ansible.cfg's collections_path link makes a plain checkout work."""
    for playbook in ('deploy.yml', 'edgeai.fleet.deploy'):
        for inventory in ('inventories/factory', 'inventories/sim'):
            syntax = run(['ansible-playbook', playbook, '--syntax-check', '-i', inventory],
                         ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'))
            assert syntax.returncode == 0, (playbook, inventory, syntax.stdout + syntax.stderr)


def test_setup_twice_changes_nothing_the_second_time():
    """scripts/test.sh ran setup already; this run must find everything in place."""
    setup = run(['bash', 'scripts/setup.sh'])
    assert setup.returncode == 0, setup.stderr
    out = setup.stdout + setup.stderr
    for action in ('apt-get install', 'creating', 'debootstrap', 'built '):
        assert action not in out, out
    # The target image for each architecture and the MQTT broker's image, each found and kept.
    up_to_date = re.findall(r'image localhost/(edgeai-[a-z]+):(?:([a-z0-9]+)-)?[0-9a-f]{12} is up to date', out)
    assert sorted(up_to_date) == [('edgeai-broker', ''), ('edgeai-target', 'amd64'), ('edgeai-target', 'arm64')], out
