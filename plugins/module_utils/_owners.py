# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Owners and modes of the on-device layout's paths, for the modules that lay it out. Private."""

from __future__ import annotations

import grp
import pwd


def numeric_id(kind, name):
    """The numeric id of a user (kind 'user') or group name, or of a number given as a string; None if unknown."""
    try:
        return (pwd.getpwnam if kind == 'user' else grp.getgrnam)(name)[2]
    except KeyError:
        return int(name) if name.isdigit() else None


def name_of(kind, number):
    """The name of a user (kind 'user') or group id; the number itself when it has none."""
    try:
        return (pwd.getpwuid if kind == 'user' else grp.getgrgid)(number)[0]
    except KeyError:
        return str(number)


def describe(st):
    """'owner:group 0mode' of an os.stat result, or 'absent' for None."""
    if st is None:
        return 'absent'
    return '%s:%s %04o' % (name_of('user', st.st_uid), name_of('group', st.st_gid), st.st_mode & 0o7777)
