"""The key slot's ids show in failure messages; its wrapped data key stays hidden (no_log).

edgeai.fleet.model and edgeai.fleet.model_store run in-process (their real main()) against the real
device runtime, in a device root under tmp_path: ``<root>/venv/bin/edgeai-runtime`` is this venv's
console script, and the modules run it as the current user (``user=root`` keeps them from switching).
The runtime refuses the slots below with messages that name the artifact and the key ids; before the
key slot's options were declared, the whole slot was no_log and those ids came out as ``********``.
edgeai.fleet.model gets the slot as its action plugin passes it: the internal ``_keyslot`` (the ids) and
``_keyslot_wrapped`` (the wrapped data key, no_log).
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import keyslot_internal_args
from ansible_collections.edgeai.fleet.plugins.modules import model, model_store

edgeai_runtime = pytest.importorskip('edgeai_runtime')
from edgeai_runtime.format import keys  # noqa: E402  (after the skip: the device runtime is optional here)
from edgeai_runtime.device.store import ModelStore  # noqa: E402
from support import artifacts, modelgen  # noqa: E402

MASK = '********'
OTHER_ARTIFACT = '0123456789abcdef' * 2


@pytest.fixture(scope='module')
def packed(tmp_path_factory):
    """A signed digits artifact, its gate files on disk, and the fleet key that signed it."""
    out = tmp_path_factory.mktemp('controller')
    signer = keys.generate('ed25519')
    digits = modelgen.train_digits_mlp(seed=0)
    path, packed, files = artifacts.pack_digits(str(out), '1.0.0', modelgen.digits_onnx(digits), digits, signer)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return dict(path=path, packed=packed, files={name: str(out / name) for name in files}, signer=signer)


def device_root(root, signer, key_type='x25519'):
    """A device root trusting the fleet key, holding its own key pair and this venv's runtime."""
    exe = shutil.which('edgeai-runtime', path=os.path.dirname(sys.executable))
    if not exe:
        pytest.skip('the device runtime is not installed in this venv (scripts/setup.sh)')
    ring = artifacts.device(str(root), signer, key_type=key_type)
    (root / 'venv' / 'bin').mkdir(parents=True)
    (root / 'cache').mkdir()
    os.symlink(exe, root / 'venv' / 'bin' / 'edgeai-runtime')
    return str(root), ring


@pytest.fixture
def device(tmp_path, packed):
    return device_root(tmp_path / 'device', packed['signer'])


@pytest.fixture
def run_module(set_module_args, capsys):
    """Run a module's main(); returns (exit code, raw stdout, result)."""
    def run(module, **args):
        set_module_args(args)
        with pytest.raises(SystemExit) as exit_info:
            module.main()
        out = capsys.readouterr().out
        return exit_info.value.code, out, json.loads(out)
    return run


def install_args(module, root, packed, slot):
    if module is model_store:
        return dict(root=root, user='root', state='installed', artifact=packed['path'], keyslot=slot,
                    files=packed['files'])
    # edgeai.fleet.model's key slot is internal (its action plugin sets it): the ids, and the wrapped key alone
    return dict(root=root, user='root', state='present', _artifact=packed['path'], _files=packed['files'],
                **keyslot_internal_args(slot))


def assert_secret_masked(out, result, slot, module=model_store):
    assert slot['wrapped'] not in out
    args = result['invocation']['module_args']
    if module is model_store:
        echoed, wrapped = args['keyslot'], args['keyslot']['wrapped']
    else:
        echoed, wrapped = args['_keyslot'], args['_keyslot_wrapped']
    assert wrapped in (MASK, 'VALUE_SPECIFIED_IN_NO_LOG_PARAMETER')
    assert echoed['artifact_id'] == slot['artifact_id']
    assert echoed['key_id'] == slot['key_id']


@pytest.mark.parametrize('module', [model_store, model], ids=['model_store', 'model'])
def test_slot_of_another_artifact_names_both_ids(module, run_module, device, packed):
    root, ring = device
    slot = keys.wrap(packed['packed'].data_key, keys.load_public(ring.current().public_pem), OTHER_ARTIFACT)
    rc, out, result = run_module(module, **install_args(module, root, packed, slot))
    assert rc == 1 and result['failed']
    assert OTHER_ARTIFACT in result['msg'] and packed['packed'].artifact_id in result['msg'], result['msg']
    assert MASK not in result['msg']
    assert_secret_masked(out, result, slot, module)


@pytest.mark.parametrize('module', [model_store, model], ids=['model_store', 'model'])
def test_slot_for_a_key_the_device_lacks_names_the_key(module, run_module, device, packed):
    root, ring = device
    other = keys.generate('x25519')
    slot = keys.wrap(packed['packed'].data_key, other.public_key(), packed['packed'].artifact_id)
    rc, out, result = run_module(module, **install_args(module, root, packed, slot))
    assert rc == 1 and result['failed']
    assert 'holds no private key %s' % slot['key_id'] in result['msg'], result['msg']
    assert ring.current_id() in result['msg']
    assert MASK not in result['msg']
    assert_secret_masked(out, result, slot, module)


def test_a_good_slot_still_installs(run_module, tmp_path, packed):
    """The declared options pass a real slot through as it is: an RSA slot has no ``ephemeral``, and the
    None that the argument spec fills in for it does not reach the device."""
    root, ring = device_root(tmp_path / 'rsa-device', packed['signer'], key_type='rsa')
    slot = artifacts.slot_for(packed['packed'], ring)
    assert 'ephemeral' not in slot
    rc, out, result = run_module(model_store, **install_args(model_store, root, packed, slot))
    assert rc == 0, result.get('msg')
    assert result['changed'] is True
    assert ModelStore(root).keyslot('digits', '1.0.0') == slot
    assert_secret_masked(out, result, slot)
