# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The device runtime's CLI (edgeai-runtime) as the modules call it: one method per command. Private.

This is the only place in the modules that builds ``edgeai-runtime`` argv (the commands and flags are
those of device_runtime/src/edgeai_runtime/cli.py). Every command runs as the service user, prints one
JSON object, and fails the module when it reports a failure, with a message naming the command and
the runtime's ``msg`` (and its ``reason`` code passed on); ``ota_apply`` can instead return the failed
object (``fail_module=False``), which edgeai.fleet.model reports as the update's result.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import tempfile

from ansible_collections.edgeai.fleet.plugins.module_utils._keyslot import keyslot_json

#: Names of the artifact and the delta in a staging directory (gate files keep the names the manifest gives them).
STAGED_ARTIFACT = 'model.eaf'
STAGED_DELTA = 'model.eafd'


def runtime_exe(root):
    return os.path.join(root, 'venv', 'bin', 'edgeai-runtime')


def readable_copies(module, root, user, files):
    """Copies of ``files`` (name -> path) the service user can read, in a private directory under
    <root>/cache: what Ansible transferred sits in the connection user's own temporary directory."""
    try:
        staging = tempfile.mkdtemp(prefix='incoming-', dir=os.path.join(root, 'cache'))
        owner = pwd.getpwnam(user) if os.geteuid() == 0 and user != 'root' else None
        for name, path in files.items():
            shutil.copyfile(path, os.path.join(staging, name))
            if owner is not None:
                os.chown(os.path.join(staging, name), owner.pw_uid, owner.pw_gid)
        if owner is not None:
            os.chown(staging, owner.pw_uid, owner.pw_gid)
    except (OSError, KeyError) as exc:
        names = ', '.join(sorted(files))
        module.fail_json(msg='staging %s for the service user %s under %s/cache: %s' % (names, user, root, exc))
    return staging


class RuntimeClient(object):
    """``edgeai-runtime --root ROOT ...`` for ``module``, run as ``user``.

    Runs as ``user`` (through runuser when the module runs as root), so that what the runtime creates
    (keys, model versions) belongs to the service account. Paths given to the methods are paths on the
    device; the artifact, delta and gate files of an install are first copied where the service user
    can read them (``readable_copies``) and removed afterwards. A key slot (a dict, as the runtime's
    ``keys.wrap()`` makes it) goes to the runtime on stdin (``--keyslot -``), never on the command line.
    """

    def __init__(self, module, root, user):
        self.module = module
        self.root = root
        self.user = user

    # -- model store ---------------------------------------------------------------------------------

    def model_list(self):
        """``model list``: the stored models, the device key, trusted signers, cipher, features, profile."""
        return self._run(('model', 'list'))

    def model_install(self, artifact, keyslot, files=None, force=False):
        """``model install --artifact A --keyslot - [--file NAME=PATH ...] [--force]``: store a signed
        artifact (path on the device) with its gate files (name -> path), without activating it."""
        with self._staged(files, artifact=artifact) as staged:
            args = staged + (['--force'] if force else [])
            return self._run(('model', 'install'), args, stdin=keyslot_json(keyslot))

    def model_rekey(self, name, version, keyslot):
        """``model rekey NAME VERSION --keyslot -``: replace a stored version's key slot."""
        return self._run(('model', 'rekey'), [name, version, '--keyslot', '-'], stdin=keyslot_json(keyslot))

    def model_remove(self, name, version):
        """``model remove NAME VERSION``: remove a stored version (never the active one)."""
        return self._run(('model', 'remove'), [name, version])

    def artifact_verify(self, path):
        """``artifact verify PATH``: the artifact's header (signature, class, runtime version, digest)."""
        return self._run(('artifact', 'verify'), [path])

    # -- OTA -----------------------------------------------------------------------------------------

    def ota_apply(self, artifact=None, delta=None, installed=None, keyslot=None, files=None, force=False,
                  watch=None, max_error_rate=None, min_requests=None, latency_p95_ms=None, stage_seconds=None,
                  bytes_transferred=None, fail_module=True):
        """``ota apply``: one OTA transaction (verify, load, gate, activate, watch, commit; rollback on failure).

        The source is a signed ``artifact`` and/or a ``delta`` (paths on the device, with ``keyslot`` and
        gate ``files``), or ``installed``, a (name, version) the store holds. The policy flags (``watch``,
        ``max_error_rate``, ``min_requests``, ``latency_p95_ms``) and what the transfer cost
        (``stage_seconds``, ``bytes_transferred``) are passed when not None; the runtime's defaults apply
        otherwise. With ``fail_module=False`` a failed update comes back as the runtime's failed JSON object
        (``failed``, ``msg``, ``reason``, ``phase``, ``outcome``) instead of failing the module.
        """
        policy = []
        for flag, value in (('--watch', watch), ('--max-error-rate', max_error_rate), ('--min-requests', min_requests),
                            ('--stage-seconds', stage_seconds), ('--bytes-transferred', bytes_transferred),
                            ('--latency-p95-ms', latency_p95_ms)):
            if value is not None:
                policy += [flag, str(value)]
        policy += ['--force'] if force else []
        if installed is not None:
            if artifact or delta or keyslot or files:
                self.module.fail_json(msg='edgeai-runtime ota apply: --installed takes no artifact, delta, key slot '
                                          'or files')
            name, version = installed
            return self._run(('ota', 'apply'), ['--installed', name, version] + policy, fail_module=fail_module)
        if not (artifact or delta):
            self.module.fail_json(msg='edgeai-runtime ota apply needs an artifact, a delta or an installed version')
        with self._staged(files, artifact=artifact, delta=delta) as staged:
            return self._run(('ota', 'apply'), staged + policy, stdin=keyslot_json(keyslot), fail_module=fail_module)

    def ota_plan(self, name, version=None, state='active', sha256=None, key_id=None, current_key=False):
        """``ota plan NAME [VERSION] --state S [--sha256 X] [--key-id K | --current-key]``: what the device
        would do for the wanted state (``would_change``, ``steps``, ``reason``, ``send``); changes nothing."""
        if key_id and current_key:
            self.module.fail_json(msg='edgeai-runtime ota plan takes --key-id or --current-key, not both')
        args = [name] + ([version] if version else []) + ['--state', state]
        args += ['--sha256', sha256] if sha256 else []
        args += ['--key-id', key_id] if key_id else []
        args += ['--current-key'] if current_key else []
        return self._run(('ota', 'plan'), args)

    def ota_rollback(self, name, version=None, reason=None):
        """``ota rollback NAME [--version V] [--reason R]``: serve the previous (or a kept) version again."""
        args = [name] + (['--version', version] if version else []) + (['--reason', reason] if reason else [])
        return self._run(('ota', 'rollback'), args)

    def ota_history(self, name=None):
        """``ota history [--name N]``: the deployment history, newest first."""
        return self._run(('ota', 'history'), ['--name', name] if name else [])

    # -- the device key pair -------------------------------------------------------------------------

    def keys_show(self):
        """``keys show``: the current key pair's public half, every key id, the preferred cipher."""
        return self._run(('keys', 'show'))

    def keys_ensure(self, key_type='x25519'):
        """``keys ensure --type T``: create a key pair when the device has none."""
        return self._run(('keys', 'ensure'), ['--type', key_type])

    def keys_rotate(self, key_type='x25519'):
        """``keys rotate --type T``: create a new key pair and make it current."""
        return self._run(('keys', 'rotate'), ['--type', key_type])

    def keys_retire(self, dry_run=False):
        """``keys retire [--dry-run]``: remove the pairs no installed model's key slot needs."""
        return self._run(('keys', 'retire'), ['--dry-run'] if dry_run else [])

    # -- telemetry -----------------------------------------------------------------------------------

    def telemetry_collect(self):
        """``telemetry collect``: one telemetry sample (``telemetry``), read-only (no ``--textfile``)."""
        return self._run(('telemetry', 'collect'))

    # -- staged rollouts (the device's side) ---------------------------------------------------------

    def rollout_status(self, rollout, name, version):
        """``rollout status``: this device's marks for the rollout, what serves, the committed update."""
        return self._run(('rollout', 'status'), ['--rollout', rollout, '--name', name, '--version', version])

    def rollout_mark(self, rollout, attempt, name, version, mark, from_version=None, reason=None, details='{}'):
        """``rollout mark``: record what the rollout did or found on the device."""
        args = ['--rollout', rollout, '--attempt', str(attempt), '--name', name, '--version', version, '--mark', mark,
                '--details', details]
        args += (['--from-version', from_version] if from_version else []) + (['--reason', reason] if reason else [])
        return self._run(('rollout', 'mark'), args)

    def rollout_soak(self, rollout, attempt, name, version, limits, from_version=None):
        """``rollout soak``: watch the serving version under real traffic, record the verdict."""
        args = ['--rollout', rollout, '--attempt', str(attempt), '--name', name, '--version', version]
        args += ['--from-version', from_version] if from_version else []
        for option in ('seconds', 'p95_ms', 'max_error_rate', 'max_restarts', 'min_requests', 'interval'):
            args += ['--' + option.replace('_', '-'), str(limits[option])]
        return self._run(('rollout', 'soak'), args)

    def rollout_ready(self, windows, hook=None, hook_timeout=30.0, max_wait=600.0, interval=15.0, check=False,
                      fail_module=True):
        """``rollout ready``: may the device be updated now (its maintenance windows, then its defer hook)."""
        args = ['--windows', json.dumps(windows or []), '--hook-timeout', str(hook_timeout), '--max-wait',
                str(max_wait), '--interval', str(interval)]
        args += (['--hook', hook] if hook else []) + (['--check'] if check else [])
        return self._run(('rollout', 'ready'), args, fail_module=fail_module)

    # -- running it ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _staged(self, files, artifact=None, delta=None):
        """Readable copies of the artifact, the delta and the gate files; yields their ``--artifact``,
        ``--delta``, ``--keyslot -`` and ``--file`` arguments, and removes the copies afterwards."""
        files = dict(files or {})
        named = dict(files)
        if artifact:
            named[STAGED_ARTIFACT] = artifact
        if delta:
            named[STAGED_DELTA] = delta
        staging = readable_copies(self.module, self.root, self.user, named)
        try:
            args = ['--artifact', os.path.join(staging, STAGED_ARTIFACT)] if artifact else []
            args += ['--delta', os.path.join(staging, STAGED_DELTA)] if delta else []
            args += ['--keyslot', '-']
            args += ['--file=%s=%s' % (fname, os.path.join(staging, fname)) for fname in sorted(files)]
            yield args
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def argv(self, command, args=()):
        """The full argv of ``edgeai-runtime --root ROOT COMMAND ARGS``, through runuser when needed."""
        argv = [runtime_exe(self.root), '--root', self.root] + list(command) + list(args)
        if self.user and os.geteuid() == 0 and self.user != 'root':
            argv = ['runuser', '-u', self.user, '--'] + argv
        return argv

    def _run(self, command, args=(), stdin=None, fail_module=True):
        """Run one command and return its JSON object. Fails the module when there is no JSON object, and,
        with ``fail_module``, when the object reports a failure (``failed: true``)."""
        what = 'edgeai-runtime %s' % ' '.join(command)
        exe = runtime_exe(self.root)
        if not os.access(exe, os.X_OK):
            self.module.fail_json(msg="the device runtime is not installed at %s; apply the "
                                      "edgeai.fleet.inference_service role first" % exe)
        rc, out, err = self.module.run_command(self.argv(command, args), data=stdin)
        lines = [line for line in (out or '').splitlines() if line.strip()]
        try:
            result = json.loads(lines[-1]) if lines else None
        except ValueError:
            result = None
        if not isinstance(result, dict) or (rc != 0 and not result.get('failed')):
            self.module.fail_json(msg='%s failed: %s' % (what, (err or out or 'exit status %d' % rc).strip()), rc=rc)
        if fail_module and result.get('failed'):
            self.module.fail_json(msg='%s failed: %s' % (what, result.get('msg')), reason=result.get('reason'))
        return result
