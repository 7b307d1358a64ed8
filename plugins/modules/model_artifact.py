#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: model_artifact
short_description: Pack a model into a signed, encrypted artifact and install it on an edge device
version_added: 0.2.0
description:
  - On the controller, packs the model directory I(src) (C(manifest.json), the model file, its gate data files)
    into a signed artifact (Ed25519 over the manifest; AES-256-GCM or ChaCha20-Poly1305 in chunks; see
    C(docs/artifact-format.md)). The artifact is packed once per variant (name, version, runtime, precision, model
    sha256) and cipher, and reused for every host.
  - Wraps the artifact's random data key for the host's own public key (fact C(edgeai_device_key) from
    M(edgeai.fleet.device_key)). A leaked device key exposes only what was wrapped for that device.
  - Asks the device what it holds first. An artifact already installed with the same model is not sent again;
    when only its key slot is for an older device key, only a new slot is sent (key rotation).
  - Otherwise sends the artifact and the gate files, and installs them with M(edgeai.fleet.model_store), which
    verifies everything before writing and never decrypts the model to disk.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.device_runtime
  - edgeai.fleet._attributes.packing
attributes:
  check_mode:
    support: full
    details: Nothing is packed or sent in check mode; the device's answer decides the predicted change.
  diff_mode:
    support: full
  idempotent:
    support: full
  action:
    description: Runs on the controller as an action plugin, and runs M(edgeai.fleet.model_store) on the target.
    support: full
options:
  state:
    description:
      - C(present) packs I(src) when needed and makes sure the device holds it, wrapped for its current key.
      - C(rekeyed) re-wraps the data key of every artifact installed on the device whose key slot is for an
        older device key, and sends only the new slots (key rotation; see C(playbooks/rotate_keys.yml)). The
        artifacts are found by id in I(artifact_dir).
    type: str
    choices: [present, rekeyed]
    default: present
  src:
    description:
      - Controller directory with C(manifest.json), the model file it names and its gate files; or a release
        directory whose subdirectories are such directories, one per variant (build) of the same model version.
      - From a release, the host gets the variant that fits the class profile its device runtime reports (runtime,
        precision, the manifest's C(hardware_classes)); a host no variant fits fails before anything changes. See
        C(docs/ota.md), "Releases with variants".
      - Required with C(state=present).
    type: path
  keys_dir:
    description: Controller directory of the fleet keys (M(edgeai.fleet.fleet_keys)).
    type: path
    required: true
  artifact_dir:
    description: Controller directory where packed artifacts and their escrow key slots are kept.
    type: path
    required: true
  public_key:
    description: The device's public key (PEM). Defaults to the C(edgeai_device_key) fact.
    type: str
  activate:
    description: Make the version serve after installing it (load, warm up, gate, switch blue-green).
    type: bool
    default: false
  force:
    description: Allow installing a version older than the active one.
    type: bool
    default: false
seealso:
  - module: edgeai.fleet.fleet_keys
  - module: edgeai.fleet.device_key
  - module: edgeai.fleet.model_store
"""

EXAMPLES = r"""
- name: Deploy the digits model, signed and encrypted for this device
  edgeai.fleet.model_artifact:
    src: files/models/digits
    keys_dir: "{{ fleet_keys_dir }}"
    passphrase: "{{ vault_fleet_key_passphrase }}"
    artifact_dir: "{{ playbook_dir }}/.artifacts"
    activate: true
"""

RETURN = r"""
rekeyed:
  description: The C(name version) of every installed model whose key slot was (or in check mode would be) re-wrapped.
  returned: with state=rekeyed
  type: list
  elements: str
variant:
  description: The controller directory of the variant this host got (I(src) itself unless I(src) is a release).
  returned: with state=present
  type: str
name:
  description: Model name.
  returned: with state=present
  type: str
version:
  description: Model version.
  returned: with state=present
  type: str
cipher:
  description: The payload cipher used for this host.
  returned: with state=present
  type: str
sent:
  description: Whether the artifact was transferred to the device.
  returned: with state=present
  type: bool
artifact:
  description: Controller path of the artifact.
  returned: when something was sent or re-keyed
  type: str
artifact_id:
  description: Id of the artifact installed on the device.
  returned: when installed
  type: str
activation:
  description: What the switch reported (gate results), when I(activate=true) changed the serving version.
  returned: when activated
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import (
    MODEL_ARTIFACT_REQUIRED_IF, MODEL_ARTIFACT_SPEC, controller_only)


def main():
    controller_only(AnsibleModule, MODEL_ARTIFACT_SPEC, 'model_artifact', required_if=MODEL_ARTIFACT_REQUIRED_IF)


if __name__ == '__main__':
    main()
