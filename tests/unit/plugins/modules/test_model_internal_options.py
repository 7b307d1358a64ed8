"""edgeai.fleet.model's internal options: what only its action plugin sets (after the transfer) has a leading
underscore, is not in the user documentation, and cannot be set from a task (the action plugin validates the
task's arguments against the user options alone)."""
from __future__ import annotations

import yaml

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import (
    MODEL_DEVICE_SPEC, MODEL_INTERNAL_SPEC, MODEL_SPEC)
from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import keyslot_from_internal, keyslot_internal_args
from ansible_collections.edgeai.fleet.plugins.modules import model

INTERNAL = {'_artifact', '_delta_file', '_keyslot', '_keyslot_wrapped', '_files', '_stage_seconds',
            '_bytes_transferred'}


def test_internal_options_are_the_underscored_ones_and_undocumented():
    documented = set(yaml.safe_load(model.DOCUMENTATION)['options'])
    assert set(MODEL_INTERNAL_SPEC) == INTERNAL
    assert set(MODEL_DEVICE_SPEC) == set(MODEL_SPEC) | INTERNAL
    assert not documented & (INTERNAL | {k.lstrip('_') for k in INTERNAL}), 'an internal option is documented'
    assert not [k for k in MODEL_SPEC if k.startswith('_')], 'a task could set an internal option'
    for user_option in ('name', 'version', 'force', 'watch', 'delta', 'reason'):
        assert user_option in documented and user_option in MODEL_SPEC


def test_only_the_wrapped_data_key_of_the_slot_is_no_log():
    assert [k for k, v in MODEL_DEVICE_SPEC.items() if v.get('no_log')] == ['passphrase', '_keyslot_wrapped']
    assert MODEL_DEVICE_SPEC['_keyslot']['no_log'] is False


def test_the_slot_splits_and_joins_again():
    slot = dict(type='x25519', key_id='ab' * 16, artifact_id='cd' * 16, ephemeral='ZXBo', wrapped='c2Vj')
    args = keyslot_internal_args(slot)
    assert args == dict(_keyslot={k: v for k, v in slot.items() if k != 'wrapped'}, _keyslot_wrapped='c2Vj')
    assert keyslot_from_internal(dict(args, _artifact='/tmp/a.eaf')) == slot
    assert keyslot_from_internal(dict(_keyslot=None, _keyslot_wrapped=None)) is None
