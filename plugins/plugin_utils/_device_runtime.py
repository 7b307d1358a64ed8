# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Import the device runtime's artifact code on the controller. Private.

The artifact format is implemented once, in device_runtime/ (shipped inside this collection).
An installed edgeai-device-runtime is used when there is one; otherwise the copy beside these
plugins. It needs ``cryptography``, which ansible-core already depends on, and for delta updates
``zstandard`` (without it, whole artifacts are sent).
"""

from __future__ import annotations

import importlib
import os
import sys

from ansible.errors import AnsibleError

_SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'device_runtime', 'src'))


def publisher():
    """The edgeai_runtime.controller.publisher module."""
    return _runtime_module('controller.publisher')


def plan():
    """The edgeai_runtime.device.plan module: the one rule of "anything to do", which the device asks too."""
    return _runtime_module('device.plan')


def _runtime_module(name):
    try:
        return importlib.import_module('edgeai_runtime.' + name)
    except ImportError as first:
        if os.path.isdir(_SRC) and _SRC not in sys.path:
            sys.path.append(_SRC)
            try:
                return importlib.import_module('edgeai_runtime.' + name)
            except ImportError as second:
                first = second
        raise AnsibleError('edgeai.fleet needs the device runtime package and cryptography on the controller '
                           '(%s); install it with: pip install %s' % (first, os.path.dirname(_SRC)))
