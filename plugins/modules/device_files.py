#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: device_files
short_description: Write or remove the small text files of edgeai.fleet on a device in one round trip
version_added: 0.4.0
description:
  - Makes sure each listed file has the given content, owner, group and mode, or is absent, in one module run instead
    of one M(ansible.builtin.copy) (two module runs when nothing changes) or M(ansible.builtin.file) per file.
  - Meant for small configuration files whose content is rendered on the controller (settings, systemd units, the
    device profile). Files are replaced atomically. Content is passed as a module argument and shown in diffs, so it
    must not hold secrets; write those with M(ansible.builtin.copy) and C(no_log).
  - The parent directory of every file must exist.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be written or removed; an owner or group that does not exist yet (created by an
      earlier task that check mode skipped) counts as a change instead of an error.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  files:
    description: The files, handled in order.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path of the file on the device.
        type: path
        required: true
      state:
        description: V(file) writes the file; V(absent) removes it (a missing file is no change).
        type: str
        choices: [file, absent]
        default: file
      content:
        description: The file's whole content (text, written as UTF-8). Required with O(files[].state=file).
        type: str
      owner:
        description: Owning user. Required with O(files[].state=file).
        type: str
      group:
        description: Owning group. Required with O(files[].state=file).
        type: str
      mode:
        description: Mode as an octal string, for example C("0640"). Required with O(files[].state=file).
        type: str
seealso:
  - module: edgeai.fleet.device_layout
"""

EXAMPLES = r"""
- name: Write the service settings and unit, and drop a token that is no longer configured
  edgeai.fleet.device_files:
    files:
      - path: /opt/edgeai/etc/runtime.json
        content: "{{ settings | to_nice_json }}\n"
        owner: root
        group: edgeai
        mode: "0640"
      - path: /etc/systemd/system/edgeai-runtime.service
        content: "{{ lookup('ansible.builtin.template', 'edgeai-runtime.service.j2') }}"
        owner: root
        group: root
        mode: "0644"
      - path: /opt/edgeai/etc/token
        state: absent
  register: written
  notify: Restart the inference service
"""

RETURN = r"""
changed_paths:
  description: The files that were (or in check mode would be) written, changed or removed, and how.
  returned: always
  type: list
  elements: dict
  sample: [{path: /opt/edgeai/etc/runtime.json, content: true}, {path: /opt/edgeai/etc/token, removed: true}]
"""

import os
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_bytes, to_text

from ansible_collections.edgeai.fleet.plugins.module_utils._owners import describe, numeric_id

FILE_OPTIONS = dict(
    path=dict(type='path', required=True),
    state=dict(type='str', default='file', choices=['file', 'absent']),
    content=dict(type='str'),
    owner=dict(type='str'),
    group=dict(type='str'),
    mode=dict(type='str'),
)


def read_current(module, path):
    """(lstat or None, content bytes or None) of path; fails on anything but a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        module.fail_json(msg='reading %s: %s' % (path, exc.strerror))
    if not stat.S_ISREG(st.st_mode):
        module.fail_json(msg='writing %s: it exists and is not a regular file' % path)
    try:
        with open(path, 'rb') as f:
            return st, f.read()
    except OSError as exc:
        module.fail_json(msg='reading %s: %s' % (path, exc.strerror))


def text_of(data):
    if data is None:
        return ''
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError:
        return '<binary content, %d bytes>\n' % len(data)


def write(module, path, data, uid, gid, mode):
    """Replace path with data atomically, then set its owner and mode."""
    fd, tmp = tempfile.mkstemp(dir=module.tmpdir)
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    os.chown(path, uid, gid)
    os.chmod(path, mode)  # after chown, which may clear setuid/setgid bits; atomic_move applies the umask


def plan_file(module, entry):
    """(change, diff, action) for one state=file entry; action is None when nothing is to be done."""
    path = entry['path']
    try:
        mode = int(entry['mode'], 8)
    except ValueError:
        module.fail_json(msg='writing %s: mode %r is not an octal number' % (path, entry['mode']))
    uid, gid = numeric_id('user', entry['owner']), numeric_id('group', entry['group'])
    if (uid is None or gid is None) and not module.check_mode:
        module.fail_json(msg='writing %s: %s %s does not exist'
                         % (path, 'user' if uid is None else 'group', entry['owner'] if uid is None else entry['group']))
    if not os.path.isdir(os.path.dirname(path)):
        if not module.check_mode:
            module.fail_json(msg='writing %s: its directory %s does not exist' % (path, os.path.dirname(path)))
    st, current = read_current(module, path)
    data = to_bytes(entry['content'], errors='surrogate_or_strict')
    change = {}
    if st is None:
        change['created'] = True
    else:
        if current != data:
            change['content'] = True
        if (uid, gid) != (st.st_uid, st.st_gid):
            change['owner'] = '%s:%s' % (entry['owner'], entry['group'])
        if st.st_mode & 0o7777 != mode:
            change['mode'] = entry['mode']
    if not change:
        return None, None, None
    diff = dict(before_header='%s (%s)' % (path, describe(st)),
                after_header='%s (%s:%s %s)' % (path, entry['owner'], entry['group'], entry['mode']),
                before=text_of(current), after=to_text(data, errors='surrogate_or_strict'))

    def act():
        if 'created' in change or 'content' in change:
            write(module, path, data, uid, gid, mode)
        else:
            os.chown(path, uid, gid)
            os.chmod(path, mode)
    return change, diff, act


def plan_absent(module, entry):
    path = entry['path']
    st, current = read_current(module, path)
    if st is None:
        return None, None, None
    # As ansible.builtin.file state=absent: the diff names the file, never its content (a removed file may be
    # a secret, such as the service's bearer token).
    diff = dict(before_header='%s (%s)' % (path, describe(st)), after_header='%s (absent)' % path,
                before='a file of %d bytes\n' % len(current), after='')
    return dict(removed=True), diff, lambda: os.unlink(path)


def main():
    module = AnsibleModule(
        argument_spec=dict(files=dict(type='list', elements='dict', required=True, options=FILE_OPTIONS,
                                      required_if=[('state', 'file', ('content', 'owner', 'group', 'mode'))])),
        supports_check_mode=True,
    )
    changed_paths, diffs = [], []
    for entry in module.params['files']:
        path = entry['path']
        if not os.path.isabs(path):
            module.fail_json(msg='writing %s: the path must be absolute' % path)
        change, diff, act = (plan_file if entry['state'] == 'file' else plan_absent)(module, entry)
        if change is None:
            continue
        changed_paths.append(dict(change, path=path))
        diffs.append(diff)
        if module.check_mode:
            continue
        try:
            act()
        except OSError as exc:
            module.fail_json(msg='%s %s: %s' % ('removing' if entry['state'] == 'absent' else 'writing', path,
                                                exc.strerror), changed_paths=changed_paths, changed=True)
    result = dict(changed=bool(changed_paths), changed_paths=changed_paths)
    if module._diff:
        result['diff'] = diffs
    module.exit_json(**result)


if __name__ == '__main__':
    main()
