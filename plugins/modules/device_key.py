#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: device_key
short_description: Create, rotate and retire an edge device's own key pair, and return its public half as facts
version_added: 0.2.0
description:
  - Each device holds its own key pair (X25519, or RSA for RSA-OAEP), generated on the device by the device runtime
    (C(edgeai-runtime keys)). The private half is written mode 0600, owned by the service user, and never leaves
    the device; this module never reads or returns it.
  - The controller wraps each model artifact's data key for the public half, which this module returns as the fact
    C(edgeai_device_key).
  - Rotation creates a new pair and makes it current; older pairs stay until I(retire_unused) removes those that
    no installed model's key slot needs any more, so a rotation never strands an installed model.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.device_runtime
  - edgeai.fleet._attributes.facts_module
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the current key id before and after.
  idempotent:
    support: partial
    details: Idempotent unless I(rotate=true), which creates a new key pair on every run by design.
options:
  type:
    description: Key type of a key pair created by this module. Existing pairs are kept whatever their type.
    type: str
    choices: [x25519, rsa]
    default: x25519
  rotate:
    description: Create a new key pair and make it current, even when one exists.
    type: bool
    default: false
  retire_unused:
    description:
      - Remove every key pair that is not current and that no installed model version's key slot needs.
    type: bool
    default: false
requirements:
  - The device runtime, installed by the C(edgeai.fleet.inference_service) role.
seealso:
  - module: edgeai.fleet.model_artifact
"""

EXAMPLES = r"""
- name: Make sure the device has its key pair
  edgeai.fleet.device_key:

- name: Rotate the device key (then re-wrap data keys, then retire the old pair; see playbooks/rotate_keys.yml)
  edgeai.fleet.device_key:
    rotate: true
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to ansible_facts.
  returned: always
  type: dict
  contains:
    edgeai_device_key:
      description: The current key pair's public half; null in check mode when none exists yet.
      type: dict
      contains:
        key_id:
          description: First 128 bits of the SHA-256 of the DER public key, hex.
          type: str
        type:
          description: C(x25519) or C(rsa).
          type: str
        public_key:
          description: The public key, PEM.
          type: str
        preferred_cipher:
          description: C(aes-256-gcm) where the CPU has AES instructions, else C(chacha20-poly1305).
          type: str
        profile:
          description:
            - The device's class profile as its runtime reads it (C(hardware_class), C(runtime), C(precision)), which
              a release's variant is chosen by (C(playbooks/publish.yml)). Absent where the device runtime is too old
              to report it.
          type: dict
key_ids:
  description: Ids of every key pair the device holds.
  returned: always
  type: list
  elements: str
retired:
  description: Ids of the key pairs removed by I(retire_unused).
  returned: when I(retire_unused=true)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._runtime_client import RuntimeClient


def main():
    module = AnsibleModule(
        argument_spec=dict(
            type=dict(type='str', default='x25519', choices=['x25519', 'rsa']),
            rotate=dict(type='bool', default=False),
            retire_unused=dict(type='bool', default=False),
            root=dict(type='path', default='/opt/edgeai'),
            user=dict(type='str', default='edgeai'),
        ),
        supports_check_mode=True,
    )
    p = module.params
    client = RuntimeClient(module, p['root'], p['user'])

    before = client.keys_show()
    before_id = (before.get('current') or {}).get('key_id')
    result = dict(changed=False, key_ids=before.get('key_ids', []))
    if module.check_mode:
        after = before
        if p['rotate'] or before_id is None:
            result['changed'] = True
        if p['retire_unused']:
            preview = client.keys_retire(dry_run=True)
            result['retired'] = preview.get('retired', [])
            result['changed'] = result['changed'] or bool(result['retired'])
    else:
        after = client.keys_rotate(p['type']) if p['rotate'] else client.keys_ensure(p['type'])
        result['changed'] = bool(after.get('changed'))
        if p['retire_unused']:
            retired = client.keys_retire()
            result['retired'] = retired.get('retired', [])
            result['changed'] = result['changed'] or bool(result['retired'])
            after = retired
        result['key_ids'] = after.get('key_ids', [])
    current = after.get('current')
    if current is not None:
        current = dict(current, preferred_cipher=after.get('preferred_cipher'))
        if after.get('profile'):
            current['profile'] = after['profile']
    after_id = (current or {}).get('key_id') if not (module.check_mode and p['rotate']) else '(new key)'
    if module._diff:
        result['diff'] = dict(before='current key: %s\n' % before_id, after='current key: %s\n' % after_id)
    result['ansible_facts'] = dict(edgeai_device_key=current)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
