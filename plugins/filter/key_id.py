# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.edgeai.fleet.plugins.plugin_utils._device_runtime import publisher


def key_id(pem):
    """The artifact format's id of a PEM public key."""
    keys = publisher().keys
    try:
        return keys.key_id(keys.load_public(pem))
    except keys.ArtifactError as exc:
        raise AnsibleFilterError('key_id: %s' % exc)


class FilterModule(object):
    def filters(self):
        return {'key_id': key_id}
