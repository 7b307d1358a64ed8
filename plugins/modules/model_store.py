#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: model_store
short_description: Query an edge device's model store, install a signed artifact already on the device, or re-key one
version_added: 0.2.0
description:
  - A thin wrapper around the device runtime's C(edgeai-runtime model) commands, run as the service user.
  - C(state=status) reports every stored model version with its identity (model sha256, artifact id, payload chunk-list sha256,
    signer, the device key its key slot is wrapped for) and the device's current key id. It changes nothing.
  - C(state=installed) verifies and stores a signed artifact (C(.eaf)) that is already on the device. It checks the signature by a
    trusted fleet key, hardware class, runtime version, key slot, every chunk and both digests, and the gate files.
    Nothing is written unless all of that passes; the model is never decrypted to disk.
  - C(state=rekeyed) replaces an installed artifact's key slot with one for another device key (key rotation).
  - C(state=activated) loads, warms up and gates an installed version and makes it serve (blue-green, through the
    running service when it is up).
  - Every activation (C(state=activated), and C(state=installed) with O(activate=true)) runs through the device's
    OTA installer (C(edgeai-runtime ota apply)), as M(edgeai.fleet.model) does, so that it has the journal, the gate,
    a history row and the automatic rollback; without a watch period (use M(edgeai.fleet.model) for a watched
    update).
  - Most playbooks use M(edgeai.fleet.model_artifact), which packs on the controller, sends only what the device
    lacks, and calls this module.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.device_runtime
attributes:
  check_mode:
    support: full
    details: With C(state=installed), check mode verifies the artifact's signature and reports a change when the
      model is not installed; with C(state=rekeyed) when the slot is for another key.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  state:
    description: What to do.
    type: str
    choices: [status, installed, rekeyed, activated]
    default: status
  artifact:
    description: Path of the signed artifact on the device. Required with C(state=installed).
    type: path
  keyslot:
    description:
      - The artifact's data key wrapped for this device (from M(edgeai.fleet.model_artifact) or C(edgeai-artifact wrap)).
      - Required with C(state=installed) and C(state=rekeyed).
    type: dict
    suboptions:
      type:
        description: The slot's kind, C(x25519) (a sealed box) or C(rsa-oaep-sha256).
        type: str
      key_id:
        description: The id of the device key the data key is wrapped for. Shown in messages.
        type: str
      artifact_id:
        description: The id of the artifact the slot belongs to. Shown in messages.
        type: str
      ephemeral:
        description: For C(x25519), the sender's one-use public key (base64).
        type: str
      wrapped:
        description: The wrapped data key (base64). The only field hidden from logs and results.
        type: str
  files:
    description: Gate data files on the device, by the name the manifest gives them.
    type: dict
    default: {}
  name:
    description: Model name. Required with C(state=rekeyed) and C(state=activated).
    type: str
  version:
    description: Model version. Required with C(state=rekeyed) and C(state=activated).
    type: str
  activate:
    description: Install and activate in one OTA transaction (C(edgeai-runtime ota apply)) - load, warm up and gate
      the version and make it serve (blue-green).
    type: bool
    default: false
  force:
    description: Allow installing a version older than the active one.
    type: bool
    default: false
seealso:
  - module: edgeai.fleet.model_artifact
  - module: edgeai.fleet.device_key
"""

EXAMPLES = r"""
- name: What does the device hold?
  edgeai.fleet.model_store:
  register: store

- name: Install an artifact copied to the device earlier
  edgeai.fleet.model_store:
    state: installed
    artifact: /opt/edgeai/cache/incoming/digits-1.0.0-aes.eaf
    keyslot: "{{ slot }}"
    files:
      golden.npz: /opt/edgeai/cache/incoming/golden.npz
"""

RETURN = r"""
models:
  description: Every stored model, from C(edgeai-runtime model list).
  returned: always
  type: list
  elements: dict
device_key_id:
  description: The device's current key id, or null when it has no key pair yet.
  returned: always
  type: str
device_public_key:
  description: The public half (PEM) of the device's current key pair, or null when it has none.
  returned: always
  type: str
trusted_signers:
  description: Key ids of the artifact signing keys the device trusts.
  returned: always
  type: list
  elements: str
preferred_cipher:
  description: The payload cipher the device prefers (ChaCha20-Poly1305 where the CPU lacks AES instructions); null
    from device runtimes older than 0.1.0's delta support.
  returned: always
  type: str
features:
  description: What the device runtime supports beyond the base (C(delta)); empty for older runtimes.
  returned: always
  type: list
  elements: str
profile:
  description: The device's class profile as its runtime reads it (C(hardware_class), C(runtime), C(precision));
    the controller chooses model variants by it. Null from older device runtimes.
  returned: always
  type: dict
msg:
  description: What the runtime did.
  returned: when state is not status
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import KEYSLOT_SPEC
from ansible_collections.edgeai.fleet.plugins.module_utils._runtime_client import RuntimeClient


def summary(models):
    return ''.join('%s: active %s, installed %s\n' % (m['name'], m.get('active'), ', '.join(m.get('versions', [])))
                   for m in models)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='status', choices=['status', 'installed', 'rekeyed', 'activated']),
            artifact=dict(type='path'),
            keyslot=KEYSLOT_SPEC,
            files=dict(type='dict', default={}),
            name=dict(type='str'),
            version=dict(type='str'),
            activate=dict(type='bool', default=False),
            force=dict(type='bool', default=False),
            root=dict(type='path', default='/opt/edgeai'),
            user=dict(type='str', default='edgeai'),
        ),
        required_if=[('state', 'installed', ('artifact', 'keyslot')),
                     ('state', 'rekeyed', ('name', 'version', 'keyslot')),
                     ('state', 'activated', ('name', 'version'))],
        supports_check_mode=True,
    )
    p = module.params
    client = RuntimeClient(module, p['root'], p['user'])

    listed = client.model_list()
    before = listed.get('models', [])
    result = dict(changed=False, models=before, device_key_id=listed.get('device_key_id'),
                  device_public_key=listed.get('device_public_key'), trusted_signers=listed.get('trusted_signers', []),
                  preferred_cipher=listed.get('preferred_cipher'), features=listed.get('features', []),
                  profile=listed.get('profile'))
    if p['state'] == 'status':
        module.exit_json(**result)

    name, version = p['name'], p['version']
    if p['state'] == 'installed' and module.check_mode:
        header = client.artifact_verify(p['artifact'])  # signature, class, runtime version, payload digest
        name, version = header['manifest']['name'], header['manifest']['version']
    if module.check_mode:  # the runtime's one rule of "anything to do" (edgeai_runtime.device.plan) says
        wanted = 'active' if p['state'] == 'activated' or (p['state'] == 'installed' and p['activate']) else 'present'
        planned = client.ota_plan(name, version, state=wanted,
                                  sha256=header['manifest']['sha256'] if p['state'] == 'installed' else None,
                                  key_id=(p['keyslot'] or {}).get('key_id') if p['state'] != 'activated' else None)
        result.update(changed=planned['would_change'], msg=planned['msg'],
                      plan={k: planned[k] for k in ('steps', 'reason', 'send')})
        module.exit_json(**result)

    if p['state'] == 'installed' and p['activate']:
        done = ota(client.ota_apply(artifact=p['artifact'], keyslot=p['keyslot'], files=p['files'], force=p['force'],
                                    watch=0))
    elif p['state'] == 'installed':
        done = client.model_install(p['artifact'], p['keyslot'], p['files'], force=p['force'])
    elif p['state'] == 'rekeyed':
        done = client.model_rekey(name, version, p['keyslot'])
    else:
        done = ota(client.ota_apply(installed=(name, version), watch=0))
    after = client.model_list().get('models', [])
    name, version = done.get('name', name), done.get('version', version)
    result.update(changed=bool(done.get('changed')), models=after, msg=done.get('msg'), name=name, version=version)
    if 'activation' in done:
        result['activation'] = done['activation']
    if module._diff:
        result['diff'] = dict(before=summary(before), after=summary(after))
    module.exit_json(**result)


def ota(done):
    """An activation through the OTA installer (journal, gate, history, rollback on failure), without a watch."""
    activation = {k: done.get(k) for k in ('changed', 'outcome', 'previous_version', 'active_version', 'timings')}
    return dict(done, activation=dict(activation, via='ota'),
                msg='%s %s: %s' % (done.get('name'), done.get('version'), done.get('outcome')))


if __name__ == '__main__':
    main()
