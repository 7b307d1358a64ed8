#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: device_layout
short_description: Lay out the on-device directories of edgeai.fleet in one round trip
version_added: 0.4.0
description:
  - Makes sure every directory of the on-device layout (by default below C(/opt/edgeai)) exists with its owner, group
    and mode, in one module run instead of one per directory.
  - Used by the role C(edgeai.fleet.provision); the layout itself is the role's C(__provision_layout).
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
attributes:
  check_mode:
    support: full
    details: Reports what would be created or changed; an owner or group that does not exist yet (created by an
      earlier task that check mode skipped) counts as a change instead of an error.
  diff_mode:
    support: full
  idempotent:
    support: full
options:
  root:
    description: The directory the layout's paths are relative to. It is created too (as the entry with path C("")).
    type: path
    required: true
  directories:
    description: The directories, in creation order (parents first).
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Path relative to O(root); C("") is O(root) itself.
        type: str
        required: true
      owner:
        description: Owning user.
        type: str
        required: true
      group:
        description: Owning group.
        type: str
        required: true
      mode:
        description: Mode as an octal string, for example C("0750").
        type: str
        required: true
"""

EXAMPLES = r"""
- name: Lay out /opt/edgeai
  edgeai.fleet.device_layout:
    root: /opt/edgeai
    directories:
      - {path: "", owner: root, group: root, mode: "0755"}
      - {path: models, owner: edgeai, group: edgeai, mode: "0750"}
"""

RETURN = r"""
changed_paths:
  description: The directories that were (or in check mode would be) created or changed, and how.
  returned: always
  type: list
  elements: dict
  sample: [{path: /opt/edgeai/models, created: true}]
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._owners import describe, numeric_id


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type='path', required=True),
            directories=dict(type='list', elements='dict', required=True, options=dict(
                path=dict(type='str', required=True),
                owner=dict(type='str', required=True),
                group=dict(type='str', required=True),
                mode=dict(type='str', required=True),
            )),
        ),
        supports_check_mode=True,
    )
    root = module.params['root']
    changed_paths, before, after = [], [], []
    for entry in module.params['directories']:
        path = os.path.normpath(os.path.join(root, entry['path'])) if entry['path'] else root
        try:
            mode = int(entry['mode'], 8)
        except ValueError:
            module.fail_json(msg='laying out %s: mode %r is not an octal number' % (path, entry['mode']))
        uid, gid = numeric_id('user', entry['owner']), numeric_id('group', entry['group'])
        if (uid is None or gid is None) and not module.check_mode:
            module.fail_json(msg='laying out %s: %s %s does not exist'
                             % (path, 'user' if uid is None else 'group', entry['owner'] if uid is None else
                                entry['group']))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            module.fail_json(msg='laying out %s: %s' % (path, exc.strerror))
        if st is not None and not os.path.isdir(path):
            module.fail_json(msg='laying out %s: it exists and is not a directory' % path)
        change = {}
        if st is None:
            change['created'] = True
        else:
            if (uid, gid) != (st.st_uid, st.st_gid):
                change['owner'] = '%s:%s' % (entry['owner'], entry['group'])
            if st.st_mode & 0o7777 != mode:
                change['mode'] = entry['mode']
        if not change:
            continue
        changed_paths.append(dict(change, path=path))
        before.append('%s %s' % (path, describe(st)))
        after.append('%s %s:%s %s' % (path, entry['owner'], entry['group'], entry['mode']))
        if module.check_mode:
            continue
        try:
            if st is None:
                os.mkdir(path, mode)
            os.chown(path, uid, gid)
            os.chmod(path, mode)  # after chown, which may clear setuid/setgid bits; and mkdir applies the umask
        except OSError as exc:
            module.fail_json(msg='laying out %s: %s' % (path, exc.strerror), changed_paths=changed_paths,
                             changed=True)
    result = dict(changed=bool(changed_paths), changed_paths=changed_paths)
    if module._diff:
        result['diff'] = dict(before='\n'.join(before) + '\n' if before else '',
                              after='\n'.join(after) + '\n' if after else '')
    module.exit_json(**result)


if __name__ == '__main__':
    main()
