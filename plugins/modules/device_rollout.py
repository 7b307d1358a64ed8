#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: device_rollout
short_description: The device's side of a staged rollout - its rollout marks, and the soak of a new version
version_added: 0.6.0
description:
  - Every device keeps what a staged rollout (the C(edgeai.fleet.rollout) role) did or found on it, as marks in its
    deployment history (C(edgeai-runtime rollout)). The controller's ledger is a cache of them and is rebuilt from
    them when it is lost.
  - C(state=query) reads the marks of a rollout, the version the service serves and the newest committed update to
    the rollout's version. With I(src), the release on the controller, it also says which variant of the release
    fits the device's class profile, or why none does.
  - C(state=ready) asks whether the device may be updated now, and changes nothing. Outside all of its
    I(windows) it is deferred at once. Inside one, its I(defer_hook) is run (as I(user)) until the hook says go,
    the window closes (deferred), or I(defer_max_wait) passes (failed). The verdict is C(ready.verdict).
  - C(state=marked) records one mark. C(state=soaked) watches the serving version for I(soak.seconds) under the
    device's real traffic and records the verdict (C(soaked) or C(soak_failed)); the task does not fail on a failed
    soak, its C(soak.passed) says.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.soak
  - edgeai.fleet._attributes.device_runtime
attributes:
  check_mode:
    support: full
    details: C(state=query) only reads. C(state=ready) changes nothing; in check mode it reads the windows and does
      not run the hook. In check mode C(state=marked) and C(state=soaked) write nothing and do not
      wait; they report C(changed=true), the mark they would record.
  diff_mode:
    support: none
  idempotent:
    support: partial
    details: C(state=query) and C(state=ready) change nothing. Every C(state=marked) and C(state=soaked) adds a mark, by design (the
      marks are a log).
options:
  state:
    description: Read the marks, ask whether now is a good time, record a mark, or soak and record the verdict.
    type: str
    choices: [query, ready, marked, soaked]
    default: query
  src:
    description:
      - Controller path of the release (a model directory, or a directory of variants), with C(state=query).
        The release gives I(name) and I(version), and the variant for this device is chosen from its class profile.
    type: path
  name:
    description: The model. Required unless I(src) gives it.
    type: str
  version:
    description: The release's version. Required unless I(src) gives it.
    type: str
  rollout:
    description: The rollout's id. Default C(<name>-<version>).
    type: str
  attempt:
    description: The rollout's attempt (a resume or restart after a breach begins a new one). Required to record.
    type: int
  mark:
    description: The mark to record, with C(state=marked).
    type: str
    choices: [installing, installed, rolled_back, deferred, failed]
  from_version:
    description: The version that served before the rollout.
    type: str
  reason:
    description: Why (a failure, a deferral, a rollback).
    type: str
  details:
    description: Kept with the mark (for instance C(updated), or a rollback's C(cause)).
    type: dict
    default: {}
  windows:
    description:
      - The device's maintenance windows, with C(state=ready) and C(state=query) (which reports C(window) and
        changes nothing). One mapping, or a list of them; none means always open.
      - C(cron) is a five-field cron expression. Each time it matches, a window opens for C(duration), given in
        seconds or as a string such as C(90m) or C(2h). C(timezone) is an IANA zone and defaults to C(UTC).
    type: raw
  defer_hook:
    description:
      - Absolute path of an executable on the device, with C(state=ready). It runs with no arguments as I(user).
      - Exit 0 means go ahead and exit 75 (C(EX_TEMPFAIL)) means not now. Any other exit, a hook that cannot run,
        or one past I(defer_hook_timeout) fails the device.
    type: path
  defer_hook_timeout:
    description: Seconds one run of the defer hook may take.
    type: float
    default: 30
  defer_max_wait:
    description: The deferral's cap, in seconds. The device fails once its hook has said not now for this long.
    type: float
    default: 600
  defer_interval:
    description: Seconds between two runs of the defer hook.
    type: float
    default: 15
requirements:
  - The device runtime, installed by the C(edgeai.fleet.inference_service) role.
seealso:
  - module: edgeai.fleet.rollout
  - module: edgeai.fleet.model
"""

EXAMPLES = r"""
- name: What this device did in the rollout of a release
  edgeai.fleet.device_rollout:
    src: /srv/releases/digits-1.1.0
  register: report

- name: Soak the new version for 5 minutes under real traffic
  edgeai.fleet.device_rollout:
    state: soaked
    name: digits
    version: 1.1.0
    attempt: 1
    from_version: 1.0.0
    soak:
      seconds: 300
      p95_ms: 100
      max_error_rate: 0.05
  register: soaked

- name: Say so
  ansible.builtin.debug:
    msg: "{{ soaked.soak.passed | ternary('healthy', soaked.soak.reasons | join('; ')) }}"
"""

RETURN = r"""
ready:
  description:
    - What C(state=ready) found. C(verdict) is C(go), C(deferred) or C(failed), with a C(reason).
    - It also holds C(waited_s), C(asked) (how many times the hook ran) and C(hook) (its last answer, exit and output).
    - C(window) holds C(open), C(opens) and C(closes), in epoch seconds.
  returned: with state=ready
  type: dict
window:
  description: With state=query and I(windows), the windows' state now (open, opens, closes).
  returned: with state=query and windows, when they parse
  type: dict
window_error:
  description: Why the I(windows) cannot be used (state=query reports it; the rollout's plan fails on it).
  returned: with state=query and windows, when they do not parse
  type: str
rollout:
  description: The rollout's id.
  returned: always
  type: str
  sample: digits-1.1.0
marks:
  description: The device's marks of the rollout, oldest first (rollout, attempt, name, version, from_version, mark,
    reason, details, time).
  returned: with state=query
  type: list
  elements: dict
serving:
  description: The version of I(name) the inference service serves (null when it does not answer).
  returned: with state=query
  type: str
active:
  description: The store's active version of I(name).
  returned: with state=query
  type: str
committed:
  description: The newest committed update of I(name) to I(version) (from_version, finished, ...), or null.
  returned: with state=query
  type: dict
variant:
  description: The controller directory of the release's variant for this device; null when none fits.
  returned: with state=query and src
  type: str
variant_error:
  description: Why no variant of the release fits the device.
  returned: with state=query and src, when no variant fits
  type: str
class:
  description: The device's hardware class, from its class profile.
  returned: with state=query and src
  type: str
mark:
  description: The mark recorded (or, in check mode, that would be).
  returned: with state=marked and state=soaked
  type: dict
soak:
  description: The soak's verdict - passed, reasons, seconds, requests, errors, error_rate, p95_ms (the worst
    sample), restarts, limits, samples (t, p95_ms, requests, errors, restarts).
  returned: with state=soaked, except in check mode
  type: dict
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import SOAK_SPEC
from ansible_collections.edgeai.fleet.plugins.module_utils._runtime_client import RuntimeClient


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type='str', default='query', choices=['query', 'ready', 'marked', 'soaked']),
            src=dict(type='path'),
            name=dict(type='str'),
            version=dict(type='str'),
            rollout=dict(type='str'),
            attempt=dict(type='int'),
            mark=dict(type='str', choices=['installing', 'installed', 'rolled_back', 'deferred', 'failed']),
            from_version=dict(type='str'),
            reason=dict(type='str'),
            details=dict(type='dict', default={}),
            soak=dict(type='dict', options=SOAK_SPEC),
            windows=dict(type='raw'),
            defer_hook=dict(type='path'),
            defer_hook_timeout=dict(type='float', default=30.0),
            defer_max_wait=dict(type='float', default=600.0),
            defer_interval=dict(type='float', default=15.0),
            root=dict(type='path', default='/opt/edgeai'),
            user=dict(type='str', default='edgeai'),
        ),
        required_if=[('state', 'marked', ('attempt', 'mark')), ('state', 'soaked', ('attempt', 'soak'))],
        supports_check_mode=True,
    )
    p = module.params
    if not (p['name'] and p['version']):
        module.fail_json(msg='device_rollout needs name and version (or src, through its action plugin)')
    rollout = p['rollout'] or '%s-%s' % (p['name'], p['version'])
    client = RuntimeClient(module, p['root'], p['user'])
    if p['state'] == 'query':
        found = client.rollout_status(rollout, p['name'], p['version'])
        result = {k: found.get(k) for k in ('rollout', 'marks', 'serving', 'service_up', 'active', 'committed')}
        if p['windows']:
            window = client.rollout_ready(p['windows'], check=True, fail_module=False)
            if window.get('failed'):
                result['window_error'] = window.get('msg')
            else:
                result['window'] = window['ready']['window']
        module.exit_json(changed=False, **result)
    if p['state'] == 'ready':
        done = client.rollout_ready(p['windows'], p['defer_hook'], p['defer_hook_timeout'], p['defer_max_wait'],
                                    p['defer_interval'], check=module.check_mode)
        module.exit_json(changed=False, rollout=rollout, ready=done['ready'])
    if module.check_mode:
        would = dict(rollout=rollout, attempt=p['attempt'], name=p['name'], version=p['version'],
                     from_version=p['from_version'], reason=p['reason'],
                     mark=p['mark'] if p['state'] == 'marked' else 'soaked or soak_failed')
        module.exit_json(changed=True, rollout=rollout, mark=would)
    if p['state'] == 'marked':
        done = client.rollout_mark(rollout, p['attempt'], p['name'], p['version'], p['mark'], p['from_version'],
                                   p['reason'], json.dumps(p['details'], sort_keys=True))
        module.exit_json(changed=True, rollout=rollout, mark=done['mark'])
    done = client.rollout_soak(rollout, p['attempt'], p['name'], p['version'], p['soak'], p['from_version'])
    module.exit_json(changed=True, rollout=rollout, mark=done['mark'], soak=done['soak'])


if __name__ == '__main__':
    main()
