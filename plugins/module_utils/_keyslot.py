# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The key slot option of the modules that hand a wrapped data key to the device runtime. Private."""

from __future__ import annotations

import json

#: A key slot as the device runtime's ``keys.wrap()`` makes it. Only the wrapped data key is secret, so only it
#: is no_log: the ids and the type say what the slot is for, and the runtime's failures name them ("the key
#: slot belongs to artifact ...", "this device holds no private key ..."). A whole-dict no_log would mask those
#: ids in every message. ``ephemeral`` is the sender's one-use X25519 public key. The runtime checks the values.
KEYSLOT_OPTIONS = dict(
    type=dict(type='str'),
    key_id=dict(type='str', no_log=False),
    artifact_id=dict(type='str'),
    ephemeral=dict(type='str', no_log=False),
    wrapped=dict(type='str', no_log=True),
)

#: The option itself (``keyslot``), for an argument_spec.
KEYSLOT_SPEC = dict(type='dict', no_log=False, options=KEYSLOT_OPTIONS)

#: The same slot as two internal options, for a module whose action plugin alone sets it (edgeai.fleet.model):
#: the slot without its secret, and the wrapped data key alone, no_log. Internal options are undocumented, and
#: validate-modules would want the suboptions of an undocumented dict documented; a flat pair needs no
#: suboptions and still hides only the wrapped data key.
KEYSLOT_INTERNAL_SPEC = dict(
    _keyslot=dict(type='dict', no_log=False),
    _keyslot_wrapped=dict(type='str', no_log=True),
)


def keyslot_internal_args(slot):
    """``slot`` as the arguments of KEYSLOT_INTERNAL_SPEC (what the action plugin passes)."""
    return dict(_keyslot={k: v for k, v in slot.items() if k != 'wrapped'}, _keyslot_wrapped=slot.get('wrapped'))


def keyslot_from_internal(params):
    """The slot back from KEYSLOT_INTERNAL_SPEC's parameters; None when none was given."""
    if not params.get('_keyslot'):
        return None
    return dict(params['_keyslot'], wrapped=params.get('_keyslot_wrapped'))


def keyslot_json(slot):
    """The slot as the runtime reads it on stdin (``--keyslot -``): the fields it has, without those the
    argument spec filled in as None (an RSA slot has no ``ephemeral``)."""
    return json.dumps({k: v for k, v in (slot or {}).items() if v is not None}, sort_keys=True)
