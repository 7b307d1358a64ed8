"""The execution environment files as ansible-builder reads them, turned into build contexts.

``execution-environment.yml`` (the root) defines the image: ubi9, ansible-core, ansible-runner, this
collection from a tarball in ``.build/ee/``, the requirements in ``meta/``. ``meta/execution-environment.yml``
is what the collection adds to any EE that installs it; ansible-builder reads it from the installed
collection, with its paths relative to the collection's root. ``ansible-builder create`` only writes a
context, so these run with no container engine on PATH and every proxy at a closed loopback port.
"""
from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

REPO = Path(__file__).resolve().parents[2]
ROOT_EE = REPO / 'execution-environment.yml'
META_EE = REPO / 'meta' / 'execution-environment.yml'
VERSION = yaml.safe_load((REPO / 'galaxy.yml').read_text())['version']
TARBALL = 'edgeai-fleet-%s.tar.gz' % VERSION


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """Runs a tool of this venv with the venv alone on PATH (no podman, no docker), every proxy at a loopback
    port that is bound but not listening (a connection is refused), an empty ansible.cfg and an empty ANSIBLE_HOME:
    no ANSIBLE_* setting of the caller (scripts/test.sh's ANSIBLE_HOME holds the copy of this collection that
    Molecule installed, and ansible-galaxy would find it there and install nothing)."""
    home = tmp_path_factory.mktemp('ansible-home')
    config = tmp_path_factory.mktemp('config') / 'ansible.cfg'
    config.write_text('[defaults]\n')
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    proxy = 'http://127.0.0.1:%d' % sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith('_proxy') and not k.startswith('ANSIBLE_')}
    env.update(PATH=str(Path(sys.executable).parent), HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy,
               https_proxy=proxy, ANSIBLE_CONFIG=str(config), ANSIBLE_HOME=str(home))

    def tool(argv, cwd=REPO):
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)

    yield tool
    sock.close()


def requirement_lines(path: Path) -> list[str]:
    """The lines of a pip or bindep file that name something: no comments, no blank lines."""
    lines = (line.split('#', 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def known_hosts_line() -> str:
    """A known_hosts entry in the real format, for a documentation address."""
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    blob = b''.join(len(part).to_bytes(4, 'big') + part for part in (b'ssh-ed25519', raw))
    return '192.0.2.11 ssh-ed25519 %s\n' % base64.b64encode(blob).decode()


@pytest.fixture(scope='module')
def tarball(tmp_path_factory, run):
    out = tmp_path_factory.mktemp('collection')
    build = run(['ansible-galaxy', 'collection', 'build', '--output-path', str(out)])
    assert build.returncode == 0, build.stdout + build.stderr
    return out / TARBALL


@pytest.fixture(scope='module')
def root_context(tmp_path_factory, tarball, run):
    """The root definition, unchanged, in a scratch checkout with the files it names and its two site inputs
    in .build/ee/ (so the test writes nothing into this checkout)."""
    checkout = tmp_path_factory.mktemp('checkout')
    shutil.copy(ROOT_EE, checkout)
    shutil.copytree(REPO / 'meta', checkout / 'meta')
    site = checkout / '.build' / 'ee'
    site.mkdir(parents=True)
    shutil.copy(tarball, site)
    (site / 'ssh_known_hosts').write_text(known_hosts_line())
    context = checkout / 'context'
    create = run(['ansible-builder', 'create', '-f', str(checkout / ROOT_EE.name), '-c', str(context),
                  '--output-filename', 'Containerfile'], cwd=checkout)
    assert create.returncode == 0, create.stdout + create.stderr
    assert 'No matches' not in create.stdout + create.stderr, create.stdout + create.stderr
    return context


@pytest.fixture(scope='module')
def installed(tmp_path_factory, tarball, run):
    """The collection installed from the tarball (its own files only: --no-deps, nothing fetched)."""
    dest = tmp_path_factory.mktemp('installed')
    install = run(['ansible-galaxy', 'collection', 'install', '--no-deps', str(tarball), '-p', str(dest)])
    assert install.returncode == 0, install.stdout + install.stderr
    return dest


@pytest.fixture(scope='module')
def meta_context(tmp_path_factory, installed, run):
    """meta/execution-environment.yml of the installed collection, placed at the collection's root, where its
    relative paths point (as for ansible-builder's introspection)."""
    root = installed / 'ansible_collections' / 'edgeai' / 'fleet'
    definition = root / 'execution-environment.yml'
    shutil.copy(root / 'meta' / 'execution-environment.yml', definition)
    context = tmp_path_factory.mktemp('meta-context')
    create = run(['ansible-builder', 'create', '-f', str(definition), '-c', str(context),
                  '--output-filename', 'Containerfile'], cwd=root)
    assert create.returncode == 0, create.stdout + create.stderr
    return context


def pinned(name: str) -> str:
    """The version requirements-dev.txt pins for a package (the project's own toolchain)."""
    match = re.search(r'^%s==(\S+)' % re.escape(name), (REPO / 'requirements-dev.txt').read_text(), re.M)
    assert match, '%s is not pinned in requirements-dev.txt' % name
    return match.group(1)


def test_root_definition_names_the_tarball_galaxy_yml_builds():
    definition = yaml.safe_load(ROOT_EE.read_text())
    assert definition['version'] == 3
    [collection] = definition['dependencies']['galaxy']['collections']
    assert collection == {'name': '/build/collections/' + TARBALL, 'type': 'file'}
    assert {'src': '.build/ee/' + TARBALL, 'dest': 'collections'} in definition['additional_build_files']


def test_root_context_installs_the_collection_and_its_requirements(root_context, tarball):
    containerfile = (root_context / 'Containerfile').read_text()
    build = root_context / '_build'
    # The base image and interpreter that docs/awx.md describes, and the project's ansible-core and runner.
    assert 'ARG EE_BASE_IMAGE="docker.io/redhat/ubi9:latest"' in containerfile
    assert 'ARG PYCMD="/usr/bin/python3.12"' in containerfile
    assert 'ARG ANSIBLE_INSTALL_REFS="ansible-core==%s ansible-runner==%s"' % (
        pinned('ansible-core'), pinned('ansible-runner')) in containerfile
    # The collection: the tarball in the context, named by the galaxy requirements the galaxy stage installs.
    assert (build / 'collections' / TARBALL).read_bytes() == tarball.read_bytes()
    assert yaml.safe_load((build / 'requirements.yml').read_text()) == {
        'collections': [{'name': '/build/collections/' + TARBALL, 'type': 'file'}]}
    assert 'COPY _build /build' in containerfile
    assert re.search(r'^RUN .*ansible-galaxy collection install .*-r requirements\.yml', containerfile, re.M)
    # Our Python and system requirements, unchanged, fed to the introspection that assembles and installs them.
    assert (build / 'requirements.txt').read_text() == (REPO / 'meta' / 'ee-requirements.txt').read_text()
    assert (build / 'bindep.txt').read_text() == (REPO / 'meta' / 'ee-bindep.txt').read_text()
    assert re.search(r'^RUN .*introspect\.py introspect --user-pip=requirements\.txt --user-bindep=bindep\.txt',
                     containerfile, re.M)
    assert 'RUN /output/scripts/install-from-bindep' in containerfile
    # The site's host keys, where OpenSSH looks for them.
    assert (build / 'configs' / 'ssh_known_hosts').read_text().startswith('192.0.2.11 ssh-ed25519 ')
    assert 'COPY _build/configs/ssh_known_hosts /etc/ssh/ssh_known_hosts' in containerfile


def test_meta_definition_gives_the_same_requirements(meta_context, root_context):
    """What the collection adds to an EE (meta/) and what the root definition installs are the same files."""
    for name in ('requirements.txt', 'bindep.txt'):
        assert (meta_context / '_build' / name).read_text() == (root_context / '_build' / name).read_text(), name
    containerfile = (meta_context / 'Containerfile').read_text()
    assert re.search(r'^RUN .*introspect\.py introspect --user-pip=requirements\.txt --user-bindep=bindep\.txt',
                     containerfile, re.M)
    assert 'RUN /output/scripts/install-from-bindep' in containerfile


def test_introspection_of_the_installed_collection_finds_our_requirements(installed, run):
    """ansible-builder's introspection (what the image build runs on the installed collections) reads
    meta/execution-environment.yml, and the files it names are in the collection as built."""
    introspect = run(['ansible-builder', 'introspect', str(installed)])
    assert introspect.returncode == 0, introspect.stdout + introspect.stderr
    found = yaml.safe_load(introspect.stdout.split('---', 1)[1])
    tag = '  # from collection edgeai.fleet'
    assert found['python'] == [line + tag for line in requirement_lines(REPO / 'meta' / 'ee-requirements.txt')]
    assert found['system'] == [line + tag for line in requirement_lines(REPO / 'meta' / 'ee-bindep.txt')]
    assert META_EE.read_text() == (installed / 'ansible_collections/edgeai/fleet/meta/execution-environment.yml'
                                   ).read_text()
