# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""edgeai.fleet.model on the controller: pack the model into a signed artifact (once), wrap its
data key for the host, send it only when the device lacks it (timed: the OTA's stage phase), then
run the module on the device, which runs the OTA transaction."""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.edgeai.fleet.plugins.module_utils._controller_args import (
    MODEL_CONTROLLER_OPTIONS, MODEL_SPEC)
from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import keyslot_internal_args
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
        validation, args = self.validate_argument_spec(
            argument_spec=MODEL_SPEC,
            required_if=[('state', 'present', ('src', 'keys_dir', 'artifact_dir')),
                         ('state', 'active', ('src', 'keys_dir', 'artifact_dir')),
                         ('state', 'absent', ('name', 'version')),
                         ('state', 'rolled_back', ('name',))])
        del validation
        host = task_vars.get('inventory_hostname', '?')
        device_args = {k: v for k, v in args.items() if k not in MODEL_CONTROLLER_OPTIONS}
        if args['state'] in ('present', 'active'):
            device_args, remote_dir = self._stage(args, device_args, task_vars, host, result)
        else:
            remote_dir = None
        try:
            done = self._execute_module(module_name='edgeai.fleet.model', module_args=device_args,
                                        task_vars=task_vars)
            if done.get('delta_failed'):  # the device changed nothing: send the whole artifact after all
                done = self._full_after_delta(device_args, remote_dir, done, task_vars, host)
        finally:
            if remote_dir:
                remove_remote_dir(self, remote_dir)
        result.update(done)
        if done.get('failed'):
            result['msg'] = '%s: %s' % (host, done.get('msg'))
        return result

    def _stage(self, args, device_args, task_vars, host, result):
        """Send what the plan (edgeai_runtime.device.plan, which the device asks too) says the device needs:
        the artifact, or only a key slot for its current key, or nothing. Returns the module's
        arguments and the remote directory to remove afterwards."""
        pub = publisher()
        model_dir, fleet, status, model, stored, decided = device_view(self, pub, args, task_vars, host, args['state'])
        name, version = model_dir.fields['name'], model_dir.fields['version']
        device_args.update(name=name, version=version)
        result.update(variant=model_dir.path, plan={k: decided[k] for k in ('steps', 'reason', 'send')})
        common = dict(root=args['root'], user=args['user'])
        public_key, cipher = device_public_key(args, task_vars, host, status)
        if decided['send'] == 'nothing' or self._task.check_mode:
            return device_args, None  # the device holds it (or, in check mode, the module predicts)

        try:
            if decided['send'] == 'keyslot':  # wrap the artifact the device holds, not a newer packing of it
                path, packed, artifact_id = artifact_for(pub, args['artifact_dir'], stored['artifact_id']), False, \
                    stored['artifact_id']
            else:
                path, header, packed = pub.ensure_artifact(model_dir, args['artifact_dir'], fleet, cipher,
                                                           args['chunk_mib'] << 20)
                artifact_id = header['artifact_id']
            slot = pub.wrap_for(path, fleet, public_key, artifact_id)
        except (pub.ArtifactError, OSError) as exc:
            raise AnsibleActionFail('%s: packing %s %s: %s' % (host, name, version, exc))
        except AnsibleActionFail as exc:
            raise AnsibleActionFail('%s: re-wrapping %s %s: %s' % (host, name, version, exc.message))
        result.update(artifact=path, artifact_id=slot['artifact_id'], packed=packed)
        if decided['send'] == 'keyslot':  # same model, slot for an old device key: re-key in place, send nothing
            run_store(self, dict(common, state='rekeyed', name=name, version=version, keyslot=slot), task_vars, host)
            return device_args, None
        wanted = args['delta'] and args['state'] == 'active' and 'delta' in (status.get('features') or [])
        delta = self._delta(pub, args, model, path, fleet) if wanted else None
        if delta is not None:
            result['delta'] = delta
        payload = delta['path'] if delta and delta.get('path') else path
        remote_dir = transfer_dir(self)
        try:
            remote, sent, seconds = send(self, remote_dir, dict(model_dir.files, **{os.path.basename(payload): payload}))
        except Exception:
            remove_remote_dir(self, remote_dir)
            raise
        # The module's internal options (MODEL_INTERNAL_SPEC): only this plugin sets them.
        device_args.update({'_delta_file' if payload != path else '_artifact': remote[os.path.basename(payload)]})
        device_args.update(keyslot_internal_args(slot), _files={f: remote[f] for f in model_dir.files},
                           _stage_seconds=round(seconds, 4), _bytes_transferred=sent)
        self._full_artifact = path
        return device_args, remote_dir

    def _delta(self, pub, args, model, path, fleet):
        """A delta from the version the device serves, when that version's artifact is still in
        artifact_dir and the delta is worth it; else None, or the reason there is none (the
        artifact goes instead: a delta is an optimisation, never a reason to fail)."""
        active = model.get('active')
        base = model.get('installed', {}).get(active) or {}
        if not (base.get('signed') and base.get('artifact_id')):
            return None
        try:
            base_path = artifact_for(pub, args['artifact_dir'], base['artifact_id'])
        except AnsibleActionFail:
            return dict(made=False, reason='the artifact of %s %s is no longer in %s'
                        % (model.get('name'), active, args['artifact_dir']))
        try:
            delta_path, facts = pub.ensure_delta(base_path, path, fleet)
        except (pub.ArtifactError, OSError) as exc:  # e.g. no zstandard here, or v1 signed by a retired key
            return dict(made=False, reason='no delta from %s %s: %s' % (model.get('name'), active, exc))
        return dict(facts, path=delta_path) if delta_path else facts

    def _full_after_delta(self, device_args, remote_dir, failed, task_vars, host):
        """The device could not use the delta (it said why and changed nothing): send the artifact."""
        try:
            remote, sent, seconds = send(self, remote_dir, {os.path.basename(self._full_artifact): self._full_artifact})
        except Exception as exc:
            raise AnsibleActionFail('%s: sending %s after the delta failed (%s): %s'
                                    % (host, self._full_artifact, failed.get('msg'), exc))
        args = dict(device_args, _delta_file=None, _artifact=remote[os.path.basename(self._full_artifact)],
                    _stage_seconds=round(device_args['_stage_seconds'] + seconds, 4),
                    _bytes_transferred=device_args['_bytes_transferred'] + sent)
        done = self._execute_module(module_name='edgeai.fleet.model', module_args=args, task_vars=task_vars)
        done['delta'] = failed['delta']  # the device runtime's record of why the delta gave no artifact
        return done
