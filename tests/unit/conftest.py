"""Unit-test set-up: make this checkout importable as ``ansible_collections.edgeai.fleet``.

The repository root is the collection root. The committed link
``.collections/ansible_collections/edgeai/fleet -> ../../..`` gives it the
import path Ansible expects, so ``.collections`` goes on ``sys.path`` (first,
so that no other copy of the collection wins). ``ansible_collections`` is a
namespace package, so collections installed in the venv stay importable too.
Ansible's collection loader is installed over the same path before any test imports the
collection, so that the plugin loader finds our plugins by name too (``edgeai.fleet.fleet``).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from ansible.plugins.loader import init_plugin_loader

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / '.collections'
FIXTURES = Path(__file__).resolve().parent / 'fixtures'

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))

init_plugin_loader([str(COLLECTIONS)])


@pytest.fixture(scope='session')
def hardware_fixtures(tmp_path_factory):
    """A copy of tests/unit/fixtures/hardware with the real sysfs names restored.

    sysfs names such as PCI slots (0000:01:00.0) and USB interfaces (1-1:1.0) contain ':',
    which a collection may not ship (ansible-test sanity refuses it, for Windows). The
    committed trees spell it '%3A'; this copy turns it back into ':'.
    """
    dest = tmp_path_factory.mktemp('hardware') / 'hardware'
    shutil.copytree(FIXTURES / 'hardware', dest)
    for root, dirs, files in os.walk(dest, topdown=False):
        for name in dirs + files:
            if '%3A' in name:
                os.rename(os.path.join(root, name), os.path.join(root, name.replace('%3A', ':')))
    return dest


@pytest.fixture
def hardware_fixture(hardware_fixtures):
    """Return the path of a fixture tree by case name (from the restored copy)."""
    def get(case):
        path = hardware_fixtures / case
        assert path.is_dir(), 'no fixture tree %s' % path
        return str(path)
    return get


@pytest.fixture
def set_module_args(monkeypatch):
    """Hand module arguments to the next AnsibleModule, the way the controller does.

    ansible-core 2.19 also needs a serialization profile next to _ANSIBLE_ARGS
    (ansible.module_utils.testing.patch_module_args uses 'legacy').
    """
    from ansible.module_utils import basic

    def set_args(args):
        monkeypatch.setattr(basic, '_ANSIBLE_ARGS', json.dumps({'ANSIBLE_MODULE_ARGS': args}).encode())
        monkeypatch.setattr(basic, '_ANSIBLE_PROFILE', 'legacy', raising=False)
    return set_args
