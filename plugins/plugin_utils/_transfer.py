# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the artifact-sending action plugins share: the device's store as it stands, the packed
artifact with a given id, and sending files to the target. Private."""

from __future__ import annotations

import os
import time

from ansible.errors import AnsibleActionFail
from ansible.utils.display import Display

from ansible_collections.edgeai.fleet.plugins.plugin_utils._device_runtime import plan


def run_store(action, module_args, task_vars, host):
    """Run edgeai.fleet.model_store on the target; fail the task with the host named."""
    done = action._execute_module(module_name='edgeai.fleet.model_store', module_args=module_args,
                                  task_vars=task_vars)
    if done.get('failed'):
        raise AnsibleActionFail('%s: %s' % (host, done.get('msg')), result=dict(reason=done.get('reason')))
    return done


def transfer_dir(action):
    """The remote directory to send files into: the task's own, if an earlier module run of the task made one
    (a second one would replace it as the connection's tmpdir, and the first would be left on the device)."""
    return action._connection._shell.tmpdir or action._make_tmp_path()


def remove_remote_dir(action, remote_dir):
    """Remove the remote directory the transfer used, always: it held the artifact and its key slot, which are
    not kept even under ANSIBLE_KEEP_REMOTE_FILES. What ActionBase._remove_tmp_path(force=True) does, through
    the connection's own shell and command runner, so that connection plugins which replace _remove_tmp_path
    (mitogen's, without the force argument) remove it too."""
    done = action._low_level_execute_command(action._connection._shell.remove(remote_dir, recurse=True),
                                             sudoable=False)
    if done.get('rc', 0) != 0:  # a warning: this runs in finally blocks, and must not hide the failure before it
        Display().warning('removing the transfer directory %s on the device: %s'
                          % (remote_dir, (done.get('stderr') or done.get('stdout') or '').strip()))
    elif action._connection._shell.tmpdir == remote_dir:
        # Gone: a later module run of this task makes a directory of its own (and removes it), as after
        # _remove_tmp_path, instead of writing into this path again and leaving it behind.
        action._connection._shell.tmpdir = None


def artifact_for(pub, artifact_dir, artifact_id):
    """The packed artifact with this id in artifact_dir."""
    for entry in sorted(os.listdir(artifact_dir)):
        if entry.endswith('.eaf'):
            candidate = os.path.join(artifact_dir, entry)
            if pub.artifact.read_header(candidate).get('artifact_id') == artifact_id:
                return candidate
    raise AnsibleActionFail('the device holds artifact %s, which is no longer in %s: its key slot cannot be '
                            're-wrapped; install a new version instead' % (artifact_id, artifact_dir))


def send(action, remote_dir, files):
    """Transfer ``files`` (name -> controller path) into ``remote_dir`` on the target.
    Returns (name -> remote path, bytes sent, seconds)."""
    started = time.monotonic()
    remote, sent = {}, 0
    for fname, local in files.items():
        remote[fname] = action._connection._shell.join_path(remote_dir, fname)
        action._transfer_file(local, remote[fname])
        sent += os.path.getsize(local)
    action._fixup_perms2([remote_dir] + list(remote.values()), remote_user=None)
    return remote, sent, time.monotonic() - started


def device_public_key(args, task_vars, host, status=None):
    """The host's public key (the option, else what the device's store reports now, else the
    edgeai_device_key fact) and its preferred cipher (the store's report first, then the fact's)."""
    device_key = task_vars.get('edgeai_device_key') or {}
    status = status or {}
    public_key = args['public_key'] or status.get('device_public_key') or device_key.get('public_key')
    if not public_key:
        raise AnsibleActionFail('%s has no device public key: run edgeai.fleet.device_key (role '
                                'edgeai.fleet.device_keys) first, or pass public_key' % host)
    cipher = args['cipher']
    if cipher == 'auto':
        cipher = status.get('preferred_cipher') or device_key.get('preferred_cipher') or 'aes-256-gcm'
    return public_key, cipher


def read_release(pub, args, host):
    """The release at args['src'] (a model directory, or a directory of variants) and the fleet
    keys, or a task failure naming the host."""
    try:
        return pub.Release.read(args['src']), pub.FleetKeys(args['keys_dir'], args['passphrase'])
    except (pub.ArtifactError, OSError) as exc:
        raise AnsibleActionFail('%s: %s' % (host, exc), result=dict(reason=getattr(exc, 'reason', None)))


def release_named(pub, src, host=None):
    """The release at ``src`` alone (no keys needed) and what it is, {name, version, src}; a task failure naming
    the host, when given, otherwise."""
    try:
        release = pub.Release.read(src)
    except (pub.ArtifactError, OSError) as exc:
        raise AnsibleActionFail('%sreading the release %s: %s' % ('%s: ' % host if host else '', src, exc))
    fields = release.variants[0].fields
    return release, dict(name=fields['name'], version=fields['version'], src=release.path)


def store_status(action, args, task_vars, host):
    return run_store(action, dict(root=args['root'], user=args['user'], state='status'), task_vars, host)


def choose_variant(pub, release, status, host):
    """The variant of the release that fits the device's class profile, as its store reports it."""
    profile = status.get('profile')
    if not profile:
        if len(release.variants) == 1:
            return release.variants[0]  # a device runtime too old to report its profile: nothing to choose
        raise AnsibleActionFail('%s: the device runtime reports no class profile, so none of the %d variants in %s '
                                'can be chosen for it; deploy edgeai.fleet.inference_service first'
                                % (host, len(release.variants), release.path))
    try:
        return release.select(profile)
    except pub.ArtifactError as exc:
        raise AnsibleActionFail('%s: %s: %s' % (host, release.path, exc), result=dict(reason=exc.reason))


def device_view(action, pub, args, task_vars, host, state):
    """Everything the artifact-sending action plugins decide on: the variant of args['src'] this
    device gets, the fleet keys, the store's status, the model's entry there, this version's
    details (None when the device lacks it) and the plan for ``state`` (present or active): what
    edgeai_runtime.device.plan, the rule the device asks too, says the device would do and what it needs
    sent. Refuses a different build installed under the same version, and a device without a key pair."""
    release, fleet = read_release(pub, args, host)
    status = store_status(action, args, task_vars, host)
    model_dir = choose_variant(pub, release, status, host)
    name, version = model_dir.fields['name'], model_dir.fields['version']
    if status.get('device_key_id') is None:
        raise AnsibleActionFail('%s holds no device key pair: run edgeai.fleet.device_key first' % host)
    rule = plan()
    try:
        decided = rule.plan(status['models'], rule.Want(name, version, state, sha256=model_dir.sha256,
                                                        key_id=status['device_key_id']))
    except rule.PlanRefused as exc:
        raise AnsibleActionFail('%s: %s (the variant chosen for this device: %s)' % (host, exc, model_dir.path),
                                result=dict(reason=exc.reason))
    model = rule.entry_of(status['models'], name)
    return model_dir, fleet, status, model, model.get('installed', {}).get(version), decided
