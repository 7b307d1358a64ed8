"""Unit-test set-up: make this checkout importable as ``ansible_collections.edgeai.fleet``.

The repository root is the collection root. The committed link
``.collections/ansible_collections/edgeai/fleet -> ../../..`` gives it the
import path Ansible expects, so ``.collections`` goes on ``sys.path`` (first,
so that no other copy of the collection wins). ``ansible_collections`` is a
namespace package, so collections installed in the venv stay importable too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COLLECTIONS = REPO / '.collections'
FIXTURES = Path(__file__).resolve().parent / 'fixtures'

if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))


@pytest.fixture
def hardware_fixture():
    """Return the path of a fixture tree under tests/unit/fixtures/hardware/ by case name."""
    def get(case):
        path = FIXTURES / 'hardware' / case
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
