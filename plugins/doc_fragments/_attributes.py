# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment(object):
    """Attribute documentation shared by this collection's modules. Private: may change without notice."""

    # Every module: the attributes themselves are filled in by the variants below or by the module.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    description: Can run in check mode and return a changed status prediction without modifying the target.
  diff_mode:
    description: Returns details on what has changed (or possibly needs changing in check mode), when in diff mode.
  idempotent:
    description: Running the module twice with the same options on an unchanged target reports no change the second time.
"""

    # Modules that only read.
    FACTS = r"""
options: {}
attributes:
  check_mode:
    support: full
    details: This action does not modify state.
  diff_mode:
    support: none
    details: This action does not modify state.
  idempotent:
    support: full
    details: This action does not modify state.
"""

    # Modules that return ansible_facts.
    FACTS_MODULE = r"""
options: {}
attributes:
  facts:
    description: Action returns an C(ansible_facts) dictionary that will update existing host facts.
    support: full
"""

    # Modules that run the device runtime on the target: where it lives and as whom it runs.
    DEVICE_RUNTIME = r"""
options:
  root:
    description: Root of the device layout (as laid out by the C(edgeai.fleet.provision) role).
    type: path
    default: /opt/edgeai
  user:
    description: Service account the device runtime runs as, and which owns what it creates.
    type: str
    default: edgeai
"""

    # Modules whose action plugin packs artifacts with the fleet keys (edgeai.fleet.model, model_artifact).
    PACKING = r"""
options:
  passphrase:
    description: Passphrase of the fleet's private keys, if they are encrypted.
    type: str
  cipher:
    description:
      - Payload cipher. C(auto) takes the device's preference (C(chacha20-poly1305) on CPUs without AES
        instructions, such as the Raspberry Pi 4), else C(aes-256-gcm).
    type: str
    choices: [auto, aes-256-gcm, chacha20-poly1305]
    default: auto
  chunk_mib:
    description: Payload chunk size in MiB.
    type: int
    choices: [1, 2, 3, 4]
    default: 4
"""
