# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pack a model into a signed artifact on the controller, wrap its data key for the host, send
only what the device lacks, and install it there (edgeai.fleet.model_store)."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import (
    MODEL_ARTIFACT_REQUIRED_IF, MODEL_ARTIFACT_SPEC)
from ansible_collections.edgeai.fleet.plugins.plugin_utils._device_runtime import publisher
from ansible_collections.edgeai.fleet.plugins.plugin_utils._transfer import (
    artifact_for, device_public_key, device_view, remove_remote_dir, run_store, send,
    transfer_dir)


class ActionModule(ActionBase):

    TRANSFERS_FILES = True
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        result = super(ActionModule, self).run(tmp, task_vars)
        del tmp
        validation, args = self.validate_argument_spec(argument_spec=MODEL_ARTIFACT_SPEC,
                                                       required_if=MODEL_ARTIFACT_REQUIRED_IF)
        del validation
        host = task_vars.get('inventory_hostname', '?')
        pub = publisher()
        if args['state'] == 'rekeyed':
            public_key, cipher = device_public_key(args, task_vars, host)
            return self._rekey_all(pub, args, public_key, task_vars, host, result)
        wanted = 'active' if args['activate'] else 'present'
        model_dir, fleet, status, _entry, stored, decided = device_view(self, pub, args, task_vars, host, wanted)
        public_key, cipher = device_public_key(args, task_vars, host, status)
        name, version = model_dir.fields['name'], model_dir.fields['version']
        common = dict(root=args['root'], user=args['user'])
        result.update(name=name, version=version, cipher=cipher, sent=False, variant=model_dir.path,
                      plan={k: decided[k] for k in ('steps', 'reason', 'send')})
        if not decided['changed']:
            result.update(changed=False, msg='%s %s is installed and wrapped for the current device key'
                                             % (name, version), artifact_id=stored.get('artifact_id'))
            return result
        if self._task.check_mode:
            result.update(changed=True, msg=decided['msg'])
            return result

        if decided['send'] == 'nothing':  # held and wrapped for the current device key: only the switch
            done = self._run_store(dict(common, state='activated', name=name, version=version), task_vars, host)
            result.update(changed=done['changed'], activation=done.get('activation'), msg=done.get('msg'))
            return result

        try:
            if decided['send'] == 'artifact':
                path, header, packed = pub.ensure_artifact(model_dir, args['artifact_dir'], fleet, cipher,
                                                           args['chunk_mib'] << 20)
                artifact_id = header['artifact_id']
            else:  # wrap the artifact the device already holds, not a newer packing of the same model
                path, packed, artifact_id = self._artifact_for(pub, args['artifact_dir'], stored['artifact_id']), \
                    False, stored['artifact_id']
            slot = pub.wrap_for(path, fleet, public_key, artifact_id)
        except (pub.ArtifactError, OSError) as exc:
            raise AnsibleActionFail('%s: packing %s %s: %s' % (host, name, version, exc))
        result.update(artifact=path, artifact_id=slot['artifact_id'], packed=packed)

        if decided['send'] != 'artifact':
            if 'rekey' in decided['steps']:
                done = self._run_store(dict(common, state='rekeyed', name=name, version=version, keyslot=slot),
                                       task_vars, host)
                result.update(changed=done['changed'], msg=done.get('msg'))
            if 'activate' in decided['steps']:
                done = self._run_store(dict(common, state='activated', name=name, version=version), task_vars, host)
                result.update(changed=result.get('changed') or done['changed'], activation=done.get('activation'),
                              msg=done.get('msg'))
            return result

        remote_dir = transfer_dir(self)
        try:
            remote = send(self, remote_dir, dict(model_dir.files, **{os.path.basename(path): path}))[0]
            done = self._run_store(dict(common, state='installed', artifact=remote[os.path.basename(path)],
                                        keyslot=slot, files={f: remote[f] for f in model_dir.files},
                                        activate=args['activate'], force=args['force']), task_vars, host)
        finally:
            remove_remote_dir(self, remote_dir)
        result.update(changed=done['changed'], sent=True, msg=done.get('msg'), models=done.get('models'))
        if 'activation' in done:
            result['activation'] = done['activation']
        if 'diff' in done:
            result['diff'] = done['diff']
        return result

    def _rekey_all(self, pub, args, public_key, task_vars, host, result):
        """Re-wrap every installed artifact whose key slot is not for the device's current key."""
        common = dict(root=args['root'], user=args['user'])
        status = self._run_store(dict(common, state='status'), task_vars, host)
        current = status.get('device_key_id')
        if current is None:
            raise AnsibleActionFail('%s holds no device key pair: run edgeai.fleet.device_key first' % host)
        if pub.keys.key_id(pub.keys.load_public(public_key)) != current:
            raise AnsibleActionFail('%s: the public key given is not the device\'s current key %s; gather it with '
                                    'edgeai.fleet.device_key first' % (host, current))
        stale = [(m['name'], v, d) for m in status['models'] for v, d in sorted(m.get('installed', {}).items())
                 if d.get('signed') and d.get('key_id') != current]
        result.update(changed=bool(stale), rekeyed=['%s %s' % (n, v) for n, v, d in stale], device_key_id=current)
        if not stale or self._task.check_mode:
            return result
        fleet = pub.FleetKeys(args['keys_dir'], args['passphrase'])
        for name, version, details in stale:
            try:
                path = self._artifact_for(pub, args['artifact_dir'], details['artifact_id'])
                slot = pub.wrap_for(path, fleet, public_key, details['artifact_id'])
            except (pub.ArtifactError, OSError) as exc:
                raise AnsibleActionFail('%s: re-wrapping %s %s: %s' % (host, name, version, exc))
            except AnsibleActionFail as exc:
                raise AnsibleActionFail('%s: re-wrapping %s %s: %s' % (host, name, version, exc.message))
            self._run_store(dict(common, state='rekeyed', name=name, version=version, keyslot=slot), task_vars, host)
        return result

    def _run_store(self, module_args, task_vars, host):
        return run_store(self, module_args, task_vars, host)

    @staticmethod
    def _artifact_for(pub, artifact_dir, artifact_id):
        return artifact_for(pub, artifact_dir, artifact_id)
