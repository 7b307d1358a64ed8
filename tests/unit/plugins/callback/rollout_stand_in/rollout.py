# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Test-only stand-in for the edgeai.fleet.rollout action plugin (the callback tests put this folder on
ANSIBLE_ACTION_PLUGINS): it returns what the rollout returns on every call, {"rollout_dir", "ledger"}, with
the ledger read from ``ledger_file`` (JSON) or given as ``ledger``; ``fail: true`` fails the task the way a
breached rollout does, ledger included."""

from __future__ import annotations

import json

from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    """Returns a ledger as edgeai.fleet.rollout does; changes nothing."""

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = self._task.args
        if 'ledger_file' in args:
            with open(args['ledger_file'], encoding='utf-8') as stream:
                ledger = json.load(stream)
        else:
            ledger = args.get('ledger')
        result.update(changed=False, rollout_dir=args['rollout_dir'], ledger=ledger)
        if args.get('fail'):
            result.update(failed=True, msg='rollout breached (stand-in)')
        return result
