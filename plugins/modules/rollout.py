#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: rollout
short_description: Keep the ledger of a staged model rollout on the controller, and take its decisions
version_added: 0.6.0
description:
  - The engine of the C(edgeai.fleet.rollout) role (C(playbooks/rollout.yml)); most users run the role, not this
    module. It runs on the controller only (an action plugin) and changes no device.
  - The ledger is C(<rollout_dir>/<model>-<version>/ledger.json), written atomically under a lock. Each device's
    state in it is one of C(pending), C(deferred), C(transferring), C(installing), C(soaking), C(succeeded),
    C(failed), C(rolled_back), C(unreachable). The file is a cache of the devices' own marks
    (M(edgeai.fleet.device_rollout)).
  - C(state=planned) checks the input (the thresholds are percentages within 0-100, the wave plan adds up, every
    device has a variant of the release - else it fails before any change, naming the devices), rebuilds every
    reachable device's state from the report M(edgeai.fleet.device_rollout) registered on it as
    C(rollout_device_report), and returns the waves still to run. Devices that finished are not in them. A rollout
    that breached returns C(blocked) unless I(action) is C(resume) or C(restart), which begin a new attempt.
  - The waves are those of the C(edgeai.fleet.fleet) inventory (each host's C(edgeai_wave)), or I(waves) applied to
    the hosts' C(edgeai_device_id) by the same stable hash. Empty waves are skipped.
  - C(state=wave_started), C(state=device) (one host's new state), C(state=gated) (after a wave - did it breach?)
    and C(state=finished) move the rollout along.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.soak
attributes:
  check_mode:
    support: full
    details: In check mode the ledger is read and planned but never written; C(state=gated) reports no breach.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Each step adds to the ledger's history. The module never reports C(changed), since the ledger is
      bookkeeping on the controller; the device tasks around it report what changed on the devices.
  action:
    description: Runs on the controller as an action plugin.
    support: full
options:
  state:
    description: The step.
    type: str
    required: true
    choices: [planned, wave_started, device, gated, reported, finished]
  rollout_dir:
    description: The controller directory of the ledgers. Point it at shared storage under AWX, or let each job
      rebuild the ledger from the devices.
    type: path
    default: ~/.local/state/edgeai-fleet/rollouts
  src:
    description: Controller path of the release, with C(state=planned).
    type: path
  rollout:
    description: The rollout's id (C(<model>-<version>), as C(state=planned) returns it), for the other states.
    type: str
  action:
    description: With C(state=planned) - C(resume) after a breach begins a new attempt with the ledger's history
      kept, C(restart) begins one with the ledger archived (C(ledger.<time>.json)), C(rollback) stops the rollout
      and returns every device it updated in I(rollback) (the fleet rollback; a later run needs C(resume) or
      C(restart)).
    type: str
    choices: ['', resume, restart, rollback]
    default: ''
  waves:
    description:
      - A wave plan instead of the inventory's, with C(state=planned) - a dict with C(canary) (device ids) and one of
        C(percentages) (cumulative, ending at 100), C(counts), C(exponential) (C(start), C(factor)); or its string
        form C(10,50,100), C(count:2,5), C(exp:1,2), optionally after C(canary=id1;id2|).
    type: raw
  thresholds:
    description: When a rollout breaches, with C(state=planned).
    type: dict
    suboptions:
      wave_max_failure_pct:
        description: A wave breaches when more than this % of its finished devices failed.
        type: float
        default: 20
      wave_min_finished:
        description: Finished devices a wave needs before its failure % counts (and the rollout's).
        type: int
        default: 1
      total_max_failure_pct:
        description: The rollout breaches when more than this % of all its finished devices failed.
        type: float
        default: 10
      unreachable_is_failure:
        description: Count unreachable devices as failures.
        type: bool
        default: true
  wave:
    description: The wave, with C(state=wave_started) and C(state=gated).
    type: str
  device_state:
    description: The host's new state, with C(state=device).
    type: str
    choices: [pending, deferred, transferring, installing, soaking, succeeded, failed, rolled_back, unreachable]
  fields:
    description:
      - With C(state=device) - ledger fields of the host (C(reason), C(version_before), C(version_after), C(updated),
        C(soak); C(stage_seconds) splits C(transferring) from C(installing)).
      - With C(state=gated) - C(lost), the wave's hosts that left the play (unreachable).
      - With C(state=reported) - C(devices) (pull-mode hosts whose documents were published, each with its device
        id) and C(outcomes) (what C(python -m edgeai_runtime.controller.outcomes collect) printed); each verdict
        becomes the host's state, a missing update verdict makes it C(unreachable).
    type: dict
    default: {}
  hosts:
    description: With C(state=device) - the hosts to record (pull-mode devices, recorded from the controller)
      instead of the task's host.
    type: list
    elements: str
notes:
  - The callback plugin C(edgeai.fleet.fleet_report) renders the ledger these tasks return as JSON and HTML.
seealso:
  - module: edgeai.fleet.device_rollout
  - module: edgeai.fleet.model
"""

EXAMPLES = r"""
# The edgeai.fleet.rollout role runs these; see roles/rollout/tasks.
- name: Plan the rollout
  edgeai.fleet.rollout:
    state: planned
    src: /srv/releases/digits-1.1.0
    thresholds:
      wave_max_failure_pct: 20
      total_max_failure_pct: 10
  run_once: true
  register: plan

- name: Show the waves still to run
  ansible.builtin.debug:
    msg: "{{ plan.waves | map(attribute='name') | list }}"
  run_once: true
"""

RETURN = r"""
rollout:
  description: The rollout's id.
  returned: always
  type: str
  sample: digits-1.1.0
rollout_dir:
  description: The directory of this rollout's ledger (and of the fleet report).
  returned: always
  type: str
ledger:
  description: The ledger (format, id, attempt, release, status, started, updated, thresholds, soak, waves, breach,
    devices, events); see the collection's docs/rollout.md.
  returned: always
  type: dict
summary:
  description: Devices per state.
  returned: always
  type: dict
  sample: {succeeded: 5, failed: 1}
attempt:
  description: The attempt this run belongs to.
  returned: with state=planned
  type: int
waves:
  description: The waves still to run, in order - name, index and the hosts that have not finished.
  returned: with state=planned
  type: list
  elements: dict
rollback:
  description: Hosts to roll back before anything else (an earlier run stopped before it finished that).
  returned: with state=planned
  type: list
  elements: str
blocked:
  description: Why the rollout cannot go on (it breached; re-run with action resume or restart), or null.
  returned: with state=planned
  type: str
abort:
  description: With I(action=rollback), why the rollout stops (every device it updated is in I(rollback)); else null.
  returned: with state=planned
  type: str
release:
  description: The release's name, version and path.
  returned: with state=planned
  type: dict
breached:
  description: Whether the wave (or the rollout so far) passed a failure threshold.
  returned: with state=gated
  type: bool
reason:
  description: The breach, in words.
  returned: with state=gated
  type: str
states:
  description: The state each reported host got ({host - state}).
  returned: with state=reported
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import (
    ROLLOUT_REQUIRED_IF, ROLLOUT_SPEC, controller_only)


def main():
    controller_only(AnsibleModule, ROLLOUT_SPEC, 'rollout', required_if=ROLLOUT_REQUIRED_IF)


if __name__ == '__main__':
    main()
