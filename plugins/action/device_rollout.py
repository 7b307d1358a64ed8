# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""edgeai.fleet.device_rollout on the controller: with ``src`` (the release, a controller path), read it, ask the
device's store for its class profile and active version, choose the variant that fits, and then run the module,
which reads the device's rollout marks. Everything else goes straight to the module."""

from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgeai.fleet.plugins.plugin_utils._device_runtime import publisher
from ansible_collections.edgeai.fleet.plugins.plugin_utils._transfer import release_named, run_store


class ActionModule(ActionBase):

    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        args = dict(self._task.args)
        host = task_vars.get('inventory_hostname', '?')
        src = args.pop('src', None)
        if src:
            if args.get('state', 'query') != 'query':
                raise AnsibleActionFail('%s: src goes with state=query only' % host)
            result.update(self._release_view(src, args, task_vars, host))
        done = self._execute_module(module_name='edgeai.fleet.device_rollout', module_args=args, task_vars=task_vars)
        result.update(done)
        if done.get('failed'):
            result['msg'] = '%s: %s' % (host, done.get('msg'))
        return result

    def _release_view(self, src, args, task_vars, host):
        """name, version, the variant for this device (or why none fits), its class and active version."""
        pub = publisher()
        release, named = release_named(pub, src, host)
        name, version = named['name'], named['version']
        args.update(name=name, version=version)
        common = {k: args[k] for k in ('root', 'user') if k in args}
        status = run_store(self, dict(common, state='status'), task_vars, host)
        profile = status.get('profile') or {}
        view = dict(release=named, variant=None,
                    **{'class': profile.get('hardware_class')})
        try:
            view['variant'] = release.select(profile).path if profile else None
            if not profile:
                view['variant_error'] = 'the device runtime reports no class profile'
        except pub.ArtifactError as exc:
            view['variant_error'] = str(exc)
        return view
