# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Argument specs of the controller-side action plugins, shared with their documentation modules. Private."""

from __future__ import annotations

from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import KEYSLOT_INTERNAL_SPEC

#: Options of every action plugin that packs artifacts (documented by the _attributes.packing fragment),
#: and where the device runtime lives (_attributes.device_runtime).
_PACKING = dict(
    passphrase=dict(type='str', no_log=True),
    cipher=dict(type='str', default='auto', choices=['auto', 'aes-256-gcm', 'chacha20-poly1305']),
    chunk_mib=dict(type='int', default=4, choices=[1, 2, 3, 4]),
    public_key=dict(type='str'),
)
_DEVICE = dict(
    root=dict(type='path', default='/opt/edgeai'),
    user=dict(type='str', default='edgeai'),
)

FLEET_KEYS_SPEC = dict(
    keys_dir=dict(type='path', required=True),
    passphrase=dict(type='str', no_log=True),
)

MODEL_ARTIFACT_SPEC = dict(
    state=dict(type='str', default='present', choices=['present', 'rekeyed']),
    src=dict(type='path'),
    keys_dir=dict(type='path', required=True),
    artifact_dir=dict(type='path', required=True),
    activate=dict(type='bool', default=False),
    force=dict(type='bool', default=False),
    **_PACKING, **_DEVICE
)
MODEL_ARTIFACT_REQUIRED_IF = [('state', 'present', ('src',))]


#: edgeai.fleet.model: the controller's options (the action plugin packs, wraps and sends) ...
MODEL_CONTROLLER_OPTIONS = ('src', 'keys_dir', 'passphrase', 'artifact_dir', 'cipher', 'chunk_mib', 'public_key',
                            'delta')
#: ... and all that a user may set, the device's (what the module on the target gets) included.
MODEL_SPEC = dict(
    state=dict(type='str', default='active', choices=['present', 'active', 'absent', 'rolled_back']),
    src=dict(type='path'),
    name=dict(type='str'),
    version=dict(type='str'),
    reason=dict(type='str'),
    force=dict(type='bool', default=False),
    watch=dict(type='float', default=10.0),
    max_error_rate=dict(type='float', default=0.05),
    min_requests=dict(type='int', default=20),
    latency_p95_ms=dict(type='float'),
    keys_dir=dict(type='path'),
    artifact_dir=dict(type='path'),
    delta=dict(type='bool', default=True),
    **_PACKING, **_DEVICE
)
#: What only the action plugin sets, after the transfer: internal options, with a leading underscore and
#: undocumented (as ansible-core's copy module has _original_basename, which its template action sets). The
#: action plugin validates the task's arguments against MODEL_SPEC alone, so a task cannot set these; the module
#: on the target accepts MODEL_DEVICE_SPEC. The key slot comes as KEYSLOT_INTERNAL_SPEC's two options (only the
#: wrapped data key no_log). No defaults: validate-modules compares them with the documentation; the module
#: reads a missing one as nothing sent.
MODEL_INTERNAL_SPEC = dict(
    _artifact=dict(type='path'),
    _delta_file=dict(type='path'),
    _files=dict(type='dict'),
    _stage_seconds=dict(type='float'),
    _bytes_transferred=dict(type='int'),
    **KEYSLOT_INTERNAL_SPEC
)
MODEL_DEVICE_SPEC = dict(MODEL_SPEC, **MODEL_INTERNAL_SPEC)


def controller_only(module_class, spec, name, **kwargs):
    """The module half of an action plugin: it only explains that it runs on the controller."""
    module = module_class(argument_spec=spec, supports_check_mode=True, **kwargs)
    module.fail_json(msg='edgeai.fleet.%s runs on the controller through its action plugin; it cannot run as a '
                         'module on a target' % name)


#: The soak's limits: edgeai.fleet.device_rollout runs it on the device, edgeai.fleet.rollout keeps it in the ledger.
SOAK_SPEC = dict(
    seconds=dict(type='float', default=60),
    p95_ms=dict(type='float', default=100),
    max_error_rate=dict(type='float', default=0.05),
    max_restarts=dict(type='int', default=0),
    min_requests=dict(type='int', default=20),
    interval=dict(type='float', default=5),
)

#: edgeai.fleet.rollout (the controller's ledger of a staged rollout; roles/rollout drives it).
ROLLOUT_STATES = ['planned', 'wave_started', 'device', 'gated', 'reported', 'finished']
ROLLOUT_SPEC = dict(
    state=dict(type='str', required=True, choices=ROLLOUT_STATES),
    rollout_dir=dict(type='path', default='~/.local/state/edgeai-fleet/rollouts'),
    src=dict(type='path'),
    rollout=dict(type='str'),
    action=dict(type='str', default='', choices=['', 'resume', 'restart', 'rollback']),
    waves=dict(type='raw'),
    thresholds=dict(type='dict', options=dict(
        wave_max_failure_pct=dict(type='float', default=20),
        wave_min_finished=dict(type='int', default=1),
        total_max_failure_pct=dict(type='float', default=10),
        unreachable_is_failure=dict(type='bool', default=True),
    )),
    soak=dict(type='dict', options=SOAK_SPEC),
    wave=dict(type='str'),
    device_state=dict(type='str', choices=['pending', 'deferred', 'transferring', 'installing', 'soaking',
                                           'succeeded', 'failed', 'rolled_back', 'unreachable']),
    fields=dict(type='dict', default={}),
    hosts=dict(type='list', elements='str'),
)
ROLLOUT_REQUIRED_IF = [('state', 'planned', ('src',)), ('state', 'wave_started', ('rollout', 'wave')),
                       ('state', 'gated', ('rollout', 'wave')), ('state', 'device', ('rollout', 'device_state')),
                       ('state', 'reported', ('rollout',)),
                       ('state', 'finished', ('rollout',))]
