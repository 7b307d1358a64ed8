"""Every collection the shipped content uses is ansible-core's, ours, or listed in galaxy.yml.

A user who installs the tarball with plain ansible-core gets only what galaxy.yml's dependencies
pull in: a role task, playbook, lookup, filter, test or plugin import of any other collection is a
missing-module error there. The simulated fleet's playbook alone may use containers.podman; it is
test-only and documented so in galaxy.yml and README.md.
"""
from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CORE = {'ansible.builtin', 'ansible.legacy', 'edgeai.fleet'}
TEST_ONLY = {'playbooks/sim_fleet.yml': {'containers.podman'}}

FQCN = r'([a-z0-9_]+\.[a-z0-9_]+)\.[a-z0-9_]+'
IN_TEMPLATES = [re.compile(r'''\b(?:lookup|query|q)\(\s*['"]''' + FQCN),  # lookups
                re.compile(r'\|\s*' + FQCN),                                  # filters
                re.compile(r'\bis\s+(?:not\s+)?' + FQCN)]                     # tests
PLUGIN_IMPORT = re.compile(r'\bansible_collections\.([a-z0-9_]+)\.([a-z0-9_]+)\b')


def collections_in_yaml(node):
    """Collections named by task actions and in templated strings. A task is a dict with a name (ansible-lint
    requires one), and its action a key such as ``ns.coll.module``; other keys with dots (podman labels) are not."""
    if isinstance(node, list):
        for item in node:
            yield from collections_in_yaml(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if 'name' in node and isinstance(key, str) and re.fullmatch(FQCN, key):
                yield re.fullmatch(FQCN, key).group(1)
            yield from collections_in_yaml(value)
    elif isinstance(node, str):
        for pattern in IN_TEMPLATES:
            yield from (m.group(1) for m in pattern.finditer(node))


def used_collections():
    used = {}
    for path in [REPO / 'deploy.yml', *sorted((REPO / 'roles').rglob('*.yml')),
                 *sorted((REPO / 'playbooks').rglob('*.yml'))]:
        for doc in yaml.safe_load_all(path.read_text()):
            for name in collections_in_yaml(doc):
                used.setdefault(name, set()).add(str(path.relative_to(REPO)))
    for path in sorted((REPO / 'plugins').rglob('*.py')):
        for match in PLUGIN_IMPORT.finditer(path.read_text()):
            used.setdefault('%s.%s' % match.groups(), set()).add(str(path.relative_to(REPO)))
    return used


def test_the_scan_sees_collections_it_should():
    assert 'containers.podman' in used_collections()  # playbooks/sim_fleet.yml
    assert set(collections_in_yaml([{'name': 't', 'community.general.archive': {'path': 'x'}},
                                    "{{ lookup('community.crypto.x', y) }} {{ a | ansible.utils.ipaddr }}"])) == \
        {'community.general', 'community.crypto', 'ansible.utils'}


def test_shipped_content_needs_only_the_declared_collections():
    declared = set((yaml.safe_load((REPO / 'galaxy.yml').read_text()).get('dependencies') or {}))
    undeclared = {}
    for name, paths in used_collections().items():
        paths = {p for p in paths if name not in TEST_ONLY.get(p, set())}
        if paths and name not in CORE | declared:
            undeclared[name] = sorted(paths)
    assert undeclared == {}, 'list these in galaxy.yml dependencies, or stop using them: %s' % undeclared
