#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: device_venv
short_description: Create the device runtime's Python venv and keep its view of system packages, in one round trip
version_added: 0.4.0
description:
  - Creates a Python virtual environment with C(python -m venv) where O(path) holds no C(bin/python) yet, and keeps
    the C(include-system-site-packages) line of its C(pyvenv.cfg) as O(system_site_packages) says.
  - One module run where M(ansible.builtin.command) (with C(creates)) and M(ansible.builtin.lineinfile) took two.
  - Used by the role C(edgeai.fleet.provision). An existing venv is never recreated; what is installed in it is
    left alone.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
attributes:
  check_mode:
    support: full
    details: Reports that a missing venv would be created (its C(pyvenv.cfg) is then not checked), or that the
      C(include-system-site-packages) line would change.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  path:
    description: The venv's directory. It may exist already (empty, as C(edgeai.fleet.provision)'s layout creates it).
    type: path
    required: true
  python:
    description: The interpreter the venv is created from.
    type: path
    default: /usr/bin/python3
  system_site_packages:
    description: Whether the venv sees the system's site packages (JetPack ships TensorRT's bindings as Debian
      packages).
    type: bool
    default: false
seealso:
  - module: edgeai.fleet.device_layout
"""

EXAMPLES = r"""
- name: Create the device runtime venv
  edgeai.fleet.device_venv:
    path: /opt/edgeai/venv
    python: /usr/bin/python3
    system_site_packages: false
"""

RETURN = r"""
created:
  description: Whether the venv was (or in check mode would be) created.
  returned: always
  type: bool
config_changed:
  description: Whether the C(include-system-site-packages) line of C(pyvenv.cfg) was (or would be) changed.
  returned: always
  type: bool
"""

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

SETTING = re.compile(r'^include-system-site-packages\s*=.*$', re.M)


def wanted_config(current, system_site_packages):
    """pyvenv.cfg's text with the include-system-site-packages line as wanted: the last such line replaced
    (as lineinfile does with regexp), or the line appended when there is none."""
    line = 'include-system-site-packages = %s' % str(system_site_packages).lower()
    matches = list(SETTING.finditer(current))
    if matches:
        last = matches[-1]
        return current[:last.start()] + line + current[last.end():]
    return current + ('' if current.endswith('\n') or not current else '\n') + line + '\n'


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type='path', required=True),
            python=dict(type='path', default='/usr/bin/python3'),
            system_site_packages=dict(type='bool', default=False),
        ),
        supports_check_mode=True,
    )
    path, python, system = module.params['path'], module.params['python'], module.params['system_site_packages']
    result = dict(changed=False, created=False, config_changed=False)
    diff = dict(before='', after='', before_header=os.path.join(path, 'pyvenv.cfg'),
                after_header=os.path.join(path, 'pyvenv.cfg'))
    if not os.path.exists(os.path.join(path, 'bin', 'python')):
        result.update(changed=True, created=True)
        diff.update(before_header='%s (absent)' % path, after_header='%s (a venv from %s)' % (path, python))
        if module.check_mode:
            if module._diff:
                result['diff'] = diff
            module.exit_json(**result)
        argv = [python, '-m', 'venv'] + (['--system-site-packages'] if system else []) + [path]
        rc, out, err = module.run_command(argv)
        if rc != 0:
            module.fail_json(msg='creating the venv %s with %s: %s' % (path, python, (err or out).strip()),
                             rc=rc, changed=os.path.exists(os.path.join(path, 'bin', 'python')))
    cfg = os.path.join(path, 'pyvenv.cfg')
    try:
        with open(cfg, encoding='utf-8') as f:
            current = f.read()
    except OSError as exc:
        module.fail_json(msg='reading %s: %s' % (cfg, exc.strerror), **result)
    wanted = wanted_config(current, system)
    if wanted != current:
        result.update(changed=True, config_changed=True)
        if not result['created']:
            diff.update(before=current, after=wanted)
        if not module.check_mode:
            fd, tmp = tempfile.mkstemp(dir=module.tmpdir)
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                f.write(wanted)
            module.atomic_move(tmp, cfg)
    if module._diff and result['changed']:
        result['diff'] = diff
    module.exit_json(**result)


if __name__ == '__main__':
    main()
