#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: fleet_keys
short_description: Create the fleet's artifact signing key and escrow key on the controller
version_added: 0.2.0
description:
  - Creates, in I(keys_dir) (mode 0700), the fleet's Ed25519 signing key pair (C(signing.key), C(signing.pub)) and
    X25519 escrow key pair (C(escrow.key), C(escrow.pub)), private halves mode 0600. An existing key is never replaced.
  - Every artifact is signed with the signing key; devices trust C(signing.pub) (role C(edgeai.fleet.device_keys)).
    Every artifact's data key is also wrapped for the escrow key, which lets the controller wrap existing artifacts
    for new or re-keyed devices without re-encrypting them.
  - Runs on the controller only (an action plugin); the keys never leave it.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
  action:
    description: Runs on the controller as an action plugin.
    support: full
options:
  keys_dir:
    description: Controller directory holding the fleet keys. Keep it out of the repository and backed up.
    type: path
    required: true
  passphrase:
    description:
      - Encrypts the private keys when they are created, and opens them afterwards. Keep it in a vault.
    type: str
requirements:
  - cryptography on the controller (ansible-core depends on it).
seealso:
  - module: edgeai.fleet.model_artifact
"""

EXAMPLES = r"""
- name: Fleet keys exist
  edgeai.fleet.fleet_keys:
    keys_dir: "{{ lookup('ansible.builtin.env', 'HOME') }}/.config/edgeai-fleet/keys"
    passphrase: "{{ vault_fleet_key_passphrase }}"
  run_once: true
"""

RETURN = r"""
keys_dir:
  description: The keys directory, absolute.
  returned: always
  type: str
signing:
  description: The signing key's id and public half (PEM).
  returned: when the keys exist
  type: dict
escrow:
  description: The escrow key's id and public half (PEM).
  returned: when the keys exist
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import (
    FLEET_KEYS_SPEC, controller_only)


def main():
    controller_only(AnsibleModule, FLEET_KEYS_SPEC, 'fleet_keys')


if __name__ == '__main__':
    main()
