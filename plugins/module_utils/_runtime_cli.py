# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run the device runtime's CLI (edgeai-runtime) from a module, as the service user. Private."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile


def runtime_exe(root):
    return os.path.join(root, 'venv', 'bin', 'edgeai-runtime')


def runtime_result(module, root, user, args, stdin=None):
    """Run ``edgeai-runtime --root ROOT ARGS`` as ``user`` and return its JSON object, a failed one
    (``failed: true``, ``msg``) included; fail the module only when there is no JSON object at all.

    Runs as ``user`` (through runuser when the module runs as root), so that what the runtime
    creates (keys, model versions) belongs to the service account.
    """
    exe = runtime_exe(root)
    if not os.access(exe, os.X_OK):
        module.fail_json(msg="the device runtime is not installed at %s; apply the edgeai.fleet.inference_service "
                             "role first" % exe)
    argv = [exe, '--root', root] + list(args)
    if user and os.geteuid() == 0 and user != 'root':
        argv = ['runuser', '-u', user, '--'] + argv
    rc, out, err = module.run_command(argv, data=stdin)
    lines = [line for line in (out or '').splitlines() if line.strip()]
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if not isinstance(result, dict) or (rc != 0 and not result.get('failed')):
        module.fail_json(msg='%s failed: %s' % (_what(args), (err or out or 'exit status %d' % rc).strip()), rc=rc)
    return result


def run_runtime(module, root, user, args, stdin=None):
    """``runtime_result`` that fails the module when the runtime reports a failure."""
    result = runtime_result(module, root, user, args, stdin=stdin)
    if result.get('failed'):
        module.fail_json(msg='%s failed: %s' % (_what(args), result.get('msg')), reason=result.get('reason'))
    return result


def _what(args):
    return 'edgeai-runtime %s' % ' '.join(a for a in args[:2] if not a.startswith('-'))


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
