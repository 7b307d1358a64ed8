#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: model
short_description: Put a model version on an edge device, health-gated, with automatic rollback (OTA)
version_added: 0.3.0
description:
  - Updates a device's model the way the device agent does, through the device runtime's one OTA installer
    (C(edgeai-runtime ota)), so push and pull behave alike.
  - C(state=active) runs every phase on the device, each timed - stage (the transfer, done by the action plugin
    only when the device lacks the artifact), verify (signature, checksums, key slot, gate files), load beside
    the serving version, gate (readiness, golden samples, accuracy at least the manifest's threshold, p95 latency
    within the budget), activate, watch (for O(watch) seconds - no service restart, no backend error rate over
    O(max_error_rate)), commit. Any failure puts the previous version back, verifies that it serves, records why
    in the device's history, and fails the task with that reason.
  - C(state=present) sends, verifies and stores the version without activating it.
  - C(state=absent) removes a stored version; the active version cannot be removed.
  - C(state=rolled_back) serves the previous version again (or O(version), which must be kept), verifies that it
    serves, and records O(reason).
  - The deployment history of the model is returned as the fact C(edgeai_model_history).
  - An action plugin runs on the controller. It packs the model into a signed artifact (once per model), wraps its
    data key for the host, and transfers it only when the device does not hold it already.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.device_runtime
  - edgeai.fleet._attributes.packing
  - edgeai.fleet._attributes.facts_module
attributes:
  action:
    support: full
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on
      the controller.
  check_mode:
    support: full
    details: Nothing is sent or changed; the result says what would change (C(changed)) and, with diff, how.
  diff_mode:
    support: full
  idempotent:
    support: full
    details: A version that is active, serving and answering is left alone, and nothing is transferred.
options:
  state:
    description: What the device should end up with.
    type: str
    choices: [present, active, absent, rolled_back]
    default: active
  src:
    description:
      - Controller directory holding the model and its C(manifest.json) (and the gate files it names); or a release
        directory whose subdirectories are such directories, one per variant (build) of the same model version.
      - From a release, the host gets the variant that fits the class profile its device runtime reports (runtime,
        precision, the manifest's C(hardware_classes)); a host no variant fits fails before anything changes. See
        C(docs/ota.md), "Releases with variants".
      - Required with C(state=present) and C(state=active).
    type: path
  name:
    description: Model name. Required with C(state=absent) and C(state=rolled_back).
    type: str
  version:
    description:
      - With C(state=absent), the version to remove (required).
      - With C(state=rolled_back), the kept version to serve; by default the previous one.
    type: str
  reason:
    description: Why the rollback is done (C(state=rolled_back)); recorded in the device's history.
    type: str
  force:
    description: Allow a version older than the active one.
    type: bool
    default: false
  watch:
    description: Seconds to watch the new version after the switch before committing (0 to skip).
    type: float
    default: 10
  max_error_rate:
    description: Highest share of requests that may fail in the backend during the watch.
    type: float
    default: 0.05
  min_requests:
    description: Requests the watch must see before the error rate counts.
    type: int
    default: 20
  latency_p95_ms:
    description: Budget for the p95 of one-row inference latency, checked by the gate; by default the manifest's
      C(validation.latency_p95_ms) (no latency check when neither sets one).
    type: float
  keys_dir:
    description: Controller directory of the fleet's signing and escrow keys (see M(edgeai.fleet.fleet_keys)).
    type: path
  artifact_dir:
    description: Controller directory where packed artifacts are kept (one per variant and cipher).
    type: path
  public_key:
    description: The device's public key (PEM); by default the key the device's store reports, else the fact
      C(edgeai_device_key) gathered by M(edgeai.fleet.device_key).
    type: str
  delta:
    description:
      - Send a binary delta instead of the whole artifact when the device serves an earlier version of the model
        that is still in O(artifact_dir) - a zstd patch against that version's plaintext, rebuilt on the device into
        the very artifact packed here and checked against its signed digests (see C(docs/ota.md)).
      - A delta is made only when it saves at least half the bytes. When the device cannot use it (corrupt in
        transit, base no longer held), the full artifact is sent instead; the result says why.
    type: bool
    default: true
notes:
  - The device runtime must be installed (role C(edgeai.fleet.inference_service)) and the device must hold its key
    pair (role C(edgeai.fleet.device_keys)).
seealso:
  - module: edgeai.fleet.model_artifact
  - module: edgeai.fleet.model_store
"""

EXAMPLES = r"""
- name: Roll digits 2.0.0 out, watched for 30 s after the switch
  edgeai.fleet.model:
    src: models/digits-2.0.0
    keys_dir: "{{ edgeai_fleet_keys_dir }}"
    artifact_dir: "{{ edgeai_artifact_dir }}"
    watch: 30
  register: update

- name: Serve the previous version again
  edgeai.fleet.model:
    state: rolled_back
    name: digits
    reason: "camera line 3 reports misreads"

- name: Stage a version without switching to it
  edgeai.fleet.model:
    state: present
    src: models/digits-2.1.0
    keys_dir: "{{ edgeai_fleet_keys_dir }}"
    artifact_dir: "{{ edgeai_artifact_dir }}"
"""

RETURN = r"""
name:
  description: The model.
  returned: always
  type: str
version:
  description: The version the task was about.
  returned: always
  type: str
variant:
  description: The controller directory of the variant this host got (I(src) itself unless I(src) is a release).
  returned: with state=present and state=active
  type: str
previous_version:
  description: The version that was active before the task.
  returned: always
  type: str
active_version:
  description: The version active after the task.
  returned: always
  type: str
outcome:
  description: C(committed), C(unchanged), C(installed), C(removed), C(rolled_back) (automatic, after a failed
    check), C(refused) (failed before the switch), C(manual_rollback).
  returned: always
  type: str
reason:
  description: Why an update did not go through (phase and cause).
  returned: on failure
  type: str
bytes_transferred:
  description: Bytes the action plugin sent to the device (0 when it held the artifact already).
  returned: always
  type: int
delta:
  description: How the delta went, when one was sent - C(used), C(base_version), C(bytes) sent, C(full_bytes) (the
    artifact's size), C(bytes_saved), C(rebuild_s); or C(used=false) and C(fallback_reason) when the full artifact
    had to follow.
  returned: when a delta was sent
  type: dict
timings:
  description: Seconds per phase (stage, verify, load, gate, activate, watch, commit; rollback).
  returned: always
  type: dict
ansible_facts:
  description: Facts set on the host.
  returned: always
  type: complex
  contains:
    edgeai_model_history:
      description: The model's deployment history on the device, newest first (version, from_version, started,
        finished, duration_s, outcome, phase, reason, bytes_transferred, timings).
      type: list
      elements: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import MODEL_DEVICE_SPEC
from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import keyslot_from_internal
from ansible_collections.edgeai.fleet.plugins.module_utils._runtime_client import RuntimeClient


def main():
    # MODEL_DEVICE_SPEC: the documented options and the internal ones (_artifact, _delta_file, _keyslot and
    # _keyslot_wrapped, _files, _stage_seconds, _bytes_transferred) that only the action plugin sets.
    module = AnsibleModule(argument_spec=MODEL_DEVICE_SPEC, supports_check_mode=True,
                           required_if=[('state', 'absent', ('name', 'version')),
                                        ('state', 'rolled_back', ('name',))])
    p = module.params
    # What the action plugin sent: nothing when the device held the version already.
    p = dict(p, _files=p['_files'] or {}, _stage_seconds=p['_stage_seconds'] or 0.0,
             _bytes_transferred=p['_bytes_transferred'] or 0)
    client = RuntimeClient(module, p['root'], p['user'])

    models = client.model_list().get('models', [])
    name = p['name']
    version = p['version']
    sent = p['_artifact'] or p['_delta_file']
    if p['state'] in ('present', 'active'):
        if sent and not (name and version):
            header = client.artifact_verify(p['_artifact'])
            name, version = header['manifest']['name'], header['manifest']['version']
        elif not (name and version):
            module.fail_json(msg='state=%s needs src (through the action plugin), or name and version of a stored '
                                 'version' % p['state'])
    model = next((m for m in models if m['name'] == name), {})
    active = model.get('active')
    result = dict(changed=False, name=name, version=version, previous_version=active, active_version=active,
                  bytes_transferred=p['_bytes_transferred'], timings=dict(stage=p['_stage_seconds']))

    if module.check_mode:  # the runtime's one rule of "anything to do" (edgeai_runtime.device.plan) says
        planned = client.ota_plan(name, version, state=p['state'], current_key=p['state'] in ('present', 'active'))
        result.update(changed=planned['would_change'], outcome='would change' if planned['would_change'] else 'unchanged',
                      version=planned['version'], active_version=planned['active_after'],
                      plan={k: planned[k] for k in ('steps', 'reason', 'send', 'msg')})
        if module._diff:
            result['diff'] = active_diff(name, active, planned['active_after'])
        module.exit_json(**finish(client, result, name))

    if p['state'] == 'absent':
        done = client.model_remove(name, version)
        result.update(changed=done['changed'], outcome='removed' if done['changed'] else 'unchanged')
    elif p['state'] == 'rolled_back':
        done = client.ota_rollback(name, version=version, reason=p['reason'])
        result.update(changed=done['changed'], version=done['version'], active_version=done['active_version'],
                      outcome='manual_rollback' if done['changed'] else 'unchanged', timings=done['timings'])
    elif p['state'] == 'present' and not sent:
        result.update(outcome='unchanged')  # the action plugin found it stored already
    else:
        done = apply(client, p, keyslot_from_internal(p), name, version)
        result.update(changed=bool(done.get('changed')), outcome=done.get('outcome'),
                      active_version=done.get('active_version', active))
        if p['state'] == 'active':
            result['timings'].update(done.get('timings') or {})
            result['timings']['stage'] = round(p['_stage_seconds'] + (done.get('delta') or {}).get('rebuild_s', 0), 4)
        if done.get('delta'):
            result['delta'] = done['delta']
        if done.get('outcome') == 'delta_failed':
            module.fail_json(msg=done.get('msg'), delta_failed=True, **result)
        if done.get('failed'):
            result.update(reason=done.get('reason'), phase=done.get('phase'))
            module.fail_json(msg=done.get('msg'), **finish(client, result, name))
    if module._diff:
        result['diff'] = active_diff(name, active, result['active_version'])
    module.exit_json(**finish(client, result, name))


def active_diff(name, before, after):
    """The diff of a run, check mode or not: which version of the model is active."""
    return dict(before='%s: active %s\n' % (name, before), after='%s: active %s\n' % (name, after))


def apply(client, p, slot, name, version):
    """state=present: install only; state=active: the OTA transaction. Returns the runtime's JSON, failed or not
    (an update that failed and rolled back is this module's result, not an error of the runtime call)."""
    policy = dict(force=p['force'], watch=p['watch'], max_error_rate=p['max_error_rate'],
                  min_requests=p['min_requests'], latency_p95_ms=p['latency_p95_ms'],
                  stage_seconds=p['_stage_seconds'], bytes_transferred=p['_bytes_transferred'], fail_module=False)
    if p['_delta_file']:
        # On outcome delta_failed nothing changed; the runtime's result says why in delta (used false,
        # fallback_reason), and the action plugin sends the artifact.
        return client.ota_apply(delta=p['_delta_file'], keyslot=slot, files=p['_files'], **policy)
    if p['_artifact']:
        if p['state'] == 'present':
            done = client.model_install(p['_artifact'], slot, p['_files'], force=p['force'])
            return dict(done, outcome='installed' if done.get('changed') else 'unchanged')
        return client.ota_apply(artifact=p['_artifact'], keyslot=slot, files=p['_files'], **policy)
    return client.ota_apply(installed=(name, version), **policy)


def finish(client, result, name):
    """Add the model's history on the device as a fact."""
    if name:
        result['ansible_facts'] = dict(edgeai_model_history=client.ota_history(name).get('history', []))
    return result


if __name__ == '__main__':
    main()
