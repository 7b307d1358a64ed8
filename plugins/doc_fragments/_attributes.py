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

    # The soak's limits (edgeai.fleet.device_rollout runs the soak, edgeai.fleet.rollout keeps them in its ledger).
    SOAK = r"""
options:
  soak:
    description:
      - The soak's limits. The device is watched under its real traffic for I(seconds); it fails at the first sample
        at which it does not serve the version, its p95 latency since the soak began is over I(p95_ms), its error
        rate is over I(max_error_rate) (judged from I(min_requests) requests on), or the service restarted more than
        I(max_restarts) times; and at the end when it answered fewer than I(min_requests) requests.
    type: dict
    suboptions:
      seconds:
        description: How long to watch.
        type: float
        default: 60
      p95_ms:
        description: The p95 latency limit, in milliseconds.
        type: float
        default: 100
      max_error_rate:
        description: The highest share (0-1) of failed requests since the soak began.
        type: float
        default: 0.05
      max_restarts:
        description: How many restarts of the inference service are tolerated.
        type: int
        default: 0
      min_requests:
        description: Requests needed to judge latency and errors; fewer at the end fail the soak.
        type: int
        default: 20
      interval:
        description: Seconds between samples.
        type: float
        default: 5
"""
