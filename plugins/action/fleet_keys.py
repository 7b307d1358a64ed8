# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Create the fleet's signing and escrow keys on the controller (never replacing one)."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import FLEET_KEYS_SPEC
from ansible_collections.edgeai.fleet.plugins.plugin_utils._device_runtime import publisher


class ActionModule(ActionBase):

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        validation, args = self.validate_argument_spec(argument_spec=FLEET_KEYS_SPEC)
        del validation
        pub = publisher()
        fleet = pub.FleetKeys(args['keys_dir'], args['passphrase'])
        try:
            if self._task.check_mode:
                changed = not fleet.exists()
            else:
                changed = fleet.ensure()
            for name in ('signing', 'escrow') if fleet.exists() else ():
                fleet.private(name)  # proves the passphrase opens them
        except (pub.ArtifactError, OSError) as exc:
            raise AnsibleActionFail('fleet keys in %s: %s' % (fleet.dir, exc))
        result.update(fleet.describe(), changed=changed)
        if self._task.diff and changed:
            result['diff'] = dict(before='', after='signing and escrow key pairs in %s\n' % fleet.dir)
        return result
