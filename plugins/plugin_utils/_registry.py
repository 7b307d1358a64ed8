# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The device registry the fleet inventory reads: its document shapes (a list of entries, or
``{"devices": [...]}``; CSV rows) and the check of each entry. Pure; the plugin does the I/O. Private.

An entry: ``id`` and ``class`` (required), ``site``, ``labels`` (a mapping; in CSV ``k=v;k2=v2``),
``address``, and ``vars`` (a mapping of extra host variables; not in CSV).
"""

from __future__ import annotations

import csv
import io
import re
import typing as t
from dataclasses import dataclass, field

from ansible_collections.edgeai.fleet.plugins.module_utils._hardware import HARDWARE_CLASSES

ENTRY_KEYS = ('id', 'class', 'site', 'labels', 'address', 'vars')
CSV_COLUMNS = ('id', 'class', 'site', 'labels', 'address')
# Host variables the inventory sets itself; an entry's vars may not set them.
RESERVED_VARS = ('edgeai_device_id', 'edgeai_registry_class', 'edgeai_site', 'edgeai_labels', 'edgeai_wave',
                 'edgeai_wave_name', 'edgeai_wave_plan')
# A name usable as an inventory host and in host patterns: no spaces, ':', ',', '[', '!', '&', '*', ...
_HOSTNAME = re.compile(r'^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})$')


def kind(value: t.Any) -> str:
    """What a registry value is, in YAML/JSON words (for messages)."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'boolean'
    if isinstance(value, (int, float)):
        return 'number'
    if isinstance(value, str):
        return 'string'
    if isinstance(value, t.Mapping):
        return 'mapping'
    if isinstance(value, t.Sequence):
        return 'list'
    return type(value).__name__


class RegistryError(ValueError):
    """A registry document or entry that cannot be used; the message names the entry and the cause."""


@dataclass(frozen=True)
class Device:
    """One checked registry entry."""

    device_id: str
    hardware_class: str
    site: t.Optional[str] = None
    address: t.Optional[str] = None
    labels: t.Dict[str, str] = field(default_factory=dict)
    variables: t.Dict[str, t.Any] = field(default_factory=dict)


def entries_of(document: t.Any) -> t.List[t.Any]:
    """The entry list of a registry document: the document itself when it is a list, else its ``devices``."""
    if isinstance(document, t.Mapping):
        unknown = sorted(str(key) for key in document if key != 'devices')
        if unknown:
            raise RegistryError('the registry is a mapping with keys %s; expected a list of devices or '
                                '{"devices": [...]}' % ', '.join(unknown))
        if 'devices' not in document:
            raise RegistryError('the registry has no "devices" list')
        document = document['devices']
    if document is None:
        return []
    if isinstance(document, (str, bytes)) or not isinstance(document, t.Sequence):
        raise RegistryError('the registry holds a %s; expected a list of devices or {"devices": [...]}'
                            % kind(document))
    return list(document)


def parse_csv(text: str) -> t.List[t.Dict[str, t.Any]]:
    """Registry entries from CSV text with a header row (columns: id, class, site, labels, address).

    Empty cells are left out; ``labels`` becomes a mapping."""
    reader = csv.DictReader(io.StringIO(text))
    columns = [name.strip() for name in reader.fieldnames or []]
    unknown = [name for name in columns if name not in CSV_COLUMNS]
    if unknown:
        raise RegistryError('CSV header: unknown column%s %s (known: %s)'
                            % ('s' if len(unknown) > 1 else '', ', '.join(unknown), ', '.join(CSV_COLUMNS)))
    if 'id' not in columns or 'class' not in columns:
        raise RegistryError('CSV header: the columns id and class are required, found %s'
                            % (', '.join(columns) or 'none'))
    entries: t.List[t.Dict[str, t.Any]] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            raise RegistryError('CSV line %d: more cells than header columns' % line)
        entry: t.Dict[str, t.Any] = {}
        for name, cell in zip(columns, row.values()):
            value = (cell or '').strip()
            if value:
                entry[name] = parse_labels(value, 'CSV line %d' % line) if name == 'labels' else value
        if entry:
            entries.append(entry)
    return entries


def parse_labels(text: str, where: str) -> t.Dict[str, str]:
    """``"k=v;k2=v2"`` as a mapping."""
    labels: t.Dict[str, str] = {}
    for item in text.split(';'):
        if not item.strip():
            continue
        key, sep, value = item.partition('=')
        if not sep or not key.strip():
            raise RegistryError('%s: label %r is not key=value' % (where, item.strip()))
        labels[key.strip()] = value.strip()
    return labels


def devices_from(entries: t.Sequence[t.Any]) -> t.List[Device]:
    """Check every entry; raise RegistryError naming the first bad one (by position and id)."""
    devices: t.List[Device] = []
    seen: t.Dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        device = device_from(entry, number)
        if device.device_id in seen:
            raise RegistryError('entry %d (%s): duplicate id, entry %d has it too'
                                % (number, device.device_id, seen[device.device_id]))
        seen[device.device_id] = number
        devices.append(device)
    return devices


def device_from(entry: t.Any, number: int) -> Device:
    """Check one entry (``number`` counts from 1, for messages) and return it as a Device."""
    if not isinstance(entry, t.Mapping):
        raise RegistryError('entry %d: expected a mapping with id and class, got a %s' % (number, kind(entry)))
    device_id = entry.get('id')
    if device_id is None or device_id == '':
        raise RegistryError('entry %d: no id' % number)
    if not isinstance(device_id, str):
        raise RegistryError('entry %d: id %r is a %s, not a string (quote it)' % (number, device_id, kind(device_id)))
    where = 'entry %d (%s)' % (number, device_id)
    if not _HOSTNAME.match(device_id):
        raise RegistryError('%s: the id is not a valid inventory host name (letters, digits, ".", "_" and "-", '
                            'starting with a letter or digit)' % where)
    unknown = sorted(str(key) for key in entry if key not in ENTRY_KEYS)
    if unknown:
        raise RegistryError('%s: unknown key%s %s (known: %s)'
                            % (where, 's' if len(unknown) > 1 else '', ', '.join(unknown), ', '.join(ENTRY_KEYS)))
    hardware_class = entry.get('class')
    if hardware_class is None or hardware_class == '':
        raise RegistryError('%s: no class (one of %s)' % (where, ', '.join(HARDWARE_CLASSES)))
    if hardware_class not in HARDWARE_CLASSES:
        raise RegistryError('%s: unknown class %r (known: %s)' % (where, hardware_class, ', '.join(HARDWARE_CLASSES)))
    address = _optional_text(entry.get('address'), where, 'address')
    variables = _variables(entry.get('vars'), where)
    if address is not None and 'ansible_host' in variables:
        raise RegistryError('%s: both address and vars.ansible_host are set; keep one' % where)
    return Device(device_id=device_id, hardware_class=hardware_class,
                  site=_optional_text(entry.get('site'), where, 'site'), address=address,
                  labels=_labels(entry.get('labels'), where), variables=variables)


def _optional_text(value: t.Any, where: str, name: str) -> t.Optional[str]:
    if value is None or value == '':
        return None
    if not isinstance(value, str):
        raise RegistryError('%s: %s %r is a %s, not a string' % (where, name, value, kind(value)))
    return value


def _labels(value: t.Any, where: str) -> t.Dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        return parse_labels(value, where)
    if not isinstance(value, t.Mapping):
        raise RegistryError('%s: labels must be a mapping, not a %s' % (where, kind(value)))
    labels: t.Dict[str, str] = {}
    for key, label in value.items():
        if not isinstance(key, str) or not key:
            raise RegistryError('%s: label name %r is not a string' % (where, key))
        labels[key] = _label_value(label, where, key)
    return labels


def _label_value(value: t.Any, where: str, key: str) -> str:
    """Label values are strings; YAML numbers and booleans become their text ("1", "true")."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (str, int, float)):
        return str(value)
    raise RegistryError('%s: label %s has a %s value; labels are strings' % (where, key, kind(value)))


def _variables(value: t.Any, where: str) -> t.Dict[str, t.Any]:
    if value is None:
        return {}
    if not isinstance(value, t.Mapping):
        raise RegistryError('%s: vars must be a mapping, not a %s' % (where, kind(value)))
    for name in value:
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError('%s: vars key %r is not a valid variable name' % (where, name))
        if name in RESERVED_VARS:
            raise RegistryError('%s: vars may not set %s, which the inventory sets from the entry' % (where, name))
    return dict(value)
