# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run the device runtime's CLI (edgeai-runtime) from a module, as the service user. Private."""

from __future__ import annotations

import json
import os


def runtime_exe(root):
    return os.path.join(root, 'venv', 'bin', 'edgeai-runtime')


def run_runtime(module, root, user, args, stdin=None):
    """Run ``edgeai-runtime --root ROOT ARGS`` and return its JSON; fail the module on any error.

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
    what = 'edgeai-runtime %s' % ' '.join(a for a in args[:2] if not a.startswith('-'))
    if rc != 0 or not isinstance(result, dict):
        msg = (result or {}).get('msg') if isinstance(result, dict) else None
        module.fail_json(msg='%s failed: %s' % (what, msg or (err or out or 'exit status %d' % rc).strip()),
                         rc=rc, reason=(result or {}).get('reason') if isinstance(result, dict) else None)
    return result
