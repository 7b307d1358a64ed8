# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""edgeai.fleet.rollout: the staged rollout's ledger on the controller (plugin_utils/_rollout.py decides; this
plugin reads the play's hosts and their reports, and keeps the file). Runs on the controller only."""

from __future__ import annotations

import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import ROLLOUT_REQUIRED_IF, ROLLOUT_SPEC
from ansible_collections.edgeai.fleet.plugins.plugin_utils import _rollout, _waves
from ansible_collections.edgeai.fleet.plugins.plugin_utils._device_runtime import publisher
from ansible_collections.edgeai.fleet.plugins.plugin_utils._transfer import release_named

#: Where the role registers each host's edgeai.fleet.device_rollout report (state=query, src=the release).
REPORT_VAR = 'rollout_device_report'


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        validation, args = self.validate_argument_spec(argument_spec=ROLLOUT_SPEC, required_if=ROLLOUT_REQUIRED_IF)
        del validation
        try:
            if args['state'] == 'planned':
                result.update(self._planned(args, task_vars))
            else:
                result.update(self._step(args, task_vars))
        except (_rollout.RolloutError, _waves.WavePlanError) as exc:
            raise AnsibleActionFail(str(exc))
        # The ledger is the controller's bookkeeping of the rollout, not managed state: nothing on a device changes
        # here, so the task never reports a change (the device tasks around it do).
        result['changed'] = False
        return result

    # -- planned: validate, rebuild from the devices' reports, decide what runs ----------------------------------

    def _planned(self, args, task_vars):
        self._check_strategy()
        info = release_named(publisher(), args['src'])[1]
        hosts = list(task_vars.get('ansible_play_hosts_all') or [])
        hostvars = task_vars.get('hostvars') or {}
        waves = self._waves(args['waves'], hosts, hostvars)
        reports = {h: self._report(h, hostvars) for h in hosts}
        ledger_file = _rollout.LedgerFile(args['rollout_dir'], _rollout.rollout_id(info['name'], info['version']))
        thresholds = args['thresholds'] or ROLLOUT_DEFAULTS['thresholds']
        soak = args['soak'] or ROLLOUT_DEFAULTS['soak']
        if self._task.check_mode:
            ledger, todo = _rollout.plan(ledger_file.read(), reports, waves, info, thresholds, soak, args['action'])
        else:
            with ledger_file.locked():
                ledger, todo = _rollout.plan(ledger_file.read(), reports, waves, info, thresholds, soak,
                                             args['action'])
                if args['action'] == 'restart':
                    ledger_file.archive(time.time())
                ledger_file.write(ledger)
        return dict(rollout=ledger['id'], attempt=todo['attempt'], rollout_dir=ledger_file.dir, ledger=ledger,
                    waves=todo['waves'], rollback=todo['rollback'], blocked=todo['blocked'], abort=todo['abort'],
                    summary=_rollout.summary(ledger), release=info)

    def _check_strategy(self):
        """The waves, gates and ledger steps run once for the play between the devices' tasks (run_once). Strategies
        that let every host run ahead on its own (free, host_pinned, mitogen_free) ignore run_once: every host
        would plan and gate alone, and nothing would be staged. Refused before anything changes."""
        play = self._task.get_play()
        strategy = str(getattr(play, 'strategy', None) or 'linear')
        if strategy.rsplit('.', maxsplit=1)[-1] in ('free', 'host_pinned', 'mitogen_free', 'mitogen_host_pinned'):
            raise _rollout.RolloutError(
                'the rollout needs a strategy that keeps the hosts together (linear, or mitogen_linear); the play '
                'runs with %s, under which run_once is ignored and the waves would not be staged' % strategy)

    @staticmethod
    def _report(host, hostvars):
        found = (hostvars.get(host) or {}).get(REPORT_VAR)
        if not found:
            return {'unreachable': True, 'msg': 'no report (the device did not answer)'}
        if found.get('unreachable') or found.get('failed'):
            return {'unreachable': True, 'msg': found.get('msg', '')}
        return found

    @staticmethod
    def _waves(override, hosts, hostvars):
        """{host: (wave index, wave name)}: the override plan applied to the hosts' device ids, else the waves the
        inventory (edgeai.fleet.fleet) gave each host, else the default plan."""
        ids = {h: str((hostvars.get(h) or {}).get('edgeai_device_id') or h) for h in hosts}
        given = {h: (hostvars.get(h) or {}).get('edgeai_wave') for h in hosts}
        if override in (None, '', {}) and all(v is not None for v in given.values()) and hosts:
            return {h: (int(given[h]), _waves.wave_name(int(given[h]))) for h in hosts}
        if override in (None, '', {}) and any(v is not None for v in given.values()):
            missing = sorted(h for h, v in given.items() if v is None)
            raise _rollout.RolloutError('%s have no edgeai_wave while other hosts do: put every host of the play in '
                                        'the fleet inventory, or pass rollout_waves' % ', '.join(missing))
        plan = _waves.parse_wave_plan(override) if override not in (None, '', {}) else _waves.default_plan()
        unknown = _waves.unknown_canaries(ids.values(), plan)
        if unknown:
            raise _rollout.RolloutError('the canary list names devices that are not in this play: %s'
                                        % ', '.join(sorted(unknown)))
        by_id = _waves.assign_waves(ids.values(), plan)
        return {h: (by_id[ids[h]], _waves.wave_name(by_id[ids[h]])) for h in hosts}

    # -- the steps of the run -----------------------------------------------------------------------------------

    def _step(self, args, task_vars):
        ledger_file = _rollout.LedgerFile(args['rollout_dir'], args['rollout'])
        host = task_vars.get('inventory_hostname', '?')
        if self._task.check_mode:  # nothing is written; a check run has no failures to gate on
            return dict(rollout=args['rollout'], rollout_dir=ledger_file.dir, ledger=ledger_file.read(),
                        breached=False, reason=None, rollback=[])
        extra = {}
        with ledger_file.locked():
            ledger = ledger_file.read()
            if ledger is None:
                raise _rollout.RolloutError('there is no ledger %s: the play must plan the rollout first '
                                            '(state=planned)' % ledger_file.path)
            if args['state'] == 'wave_started':
                _rollout.start_wave(ledger, args['wave'])
            elif args['state'] == 'device':
                for each in args['hosts'] or [host]:  # hosts: pull-mode devices, recorded from the controller
                    extra['device'] = _rollout.record(ledger, each, args['device_state'], **dict(args['fields']))
            elif args['state'] == 'reported':
                fields = args['fields']
                if not isinstance(fields.get('devices'), dict) or not isinstance(fields.get('outcomes'), dict):
                    raise _rollout.RolloutError('state=reported needs fields.devices ({host: device id}) and '
                                                'fields.outcomes (the result of outcomes collect)')
                extra['states'] = _rollout.record_outcomes(
                    ledger, fields['devices'], fields['outcomes'], refused=fields.get('refused') or {})
            elif args['state'] == 'gated':
                extra.update(_rollout.gate(ledger, args['wave'], lost=args['fields'].get('lost') or ()))
            else:
                _rollout.finish(ledger)
            ledger_file.write(ledger)
        return dict(extra, rollout=ledger['id'], rollout_dir=ledger_file.dir, ledger=ledger,
                    summary=_rollout.summary(ledger))


ROLLOUT_DEFAULTS = {
    'thresholds': {k: v['default'] for k, v in ROLLOUT_SPEC['thresholds']['options'].items()},
    'soak': {k: v['default'] for k, v in ROLLOUT_SPEC['soak']['options'].items()},
}
