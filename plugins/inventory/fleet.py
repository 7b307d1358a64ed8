# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: fleet
short_description: Edge AI devices from a device registry, grouped by class, site and rollout wave
version_added: 0.6.0
description:
  - Reads a device registry (a YAML or CSV file, or an HTTP(S) endpoint returning JSON) and adds one
    host per device.
  - Each device is in the group of its hardware class (C(jetson_nano), C(jetson_orin), C(raspberry_pi),
    C(coral), C(generic); all five are children of C(edgeai_devices)), in C(site_<site>) when the entry
    has a site, and in the group of its rollout wave, C(rollout_canary), C(rollout_wave1), C(rollout_wave2), ...
    (see O(waves)). Waves nobody is in have no group.
  - Hosts are added in wave order, then by id, so a pattern such as C(rollout_canary:rollout_wave1) lists
    them wave by wave.
  - "Host variables: C(ansible_host) (the entry's address), C(edgeai_device_id), C(edgeai_registry_class),
    C(edgeai_site) (null without a site), C(edgeai_labels) (a mapping of strings), C(edgeai_wave) (the wave
    index, 0 for the canary), C(edgeai_wave_name), C(edgeai_wave_plan) (the checked plan, the same on every
    host), C(edgeai_hardware_class) when O(pin_class) is set, and every key of the entry's C(vars)."
  - Everything read from the registry is marked unsafe, so a value containing C({{) is never templated.
  - Any bad entry fails the whole source, with the entry named (its position and id); an unknown class, a
    duplicate id, a missing id or class, an id that is not a valid host name or an unknown key are errors.
  - With O(cache) on, the registry as read is cached; groups, compose and keyed_groups are applied again
    on every run from the cached data, so changing them needs no refresh. Use C(--flush-cache) (or
    O(cache=false)) after changing the registry or O(registry).
  - The configuration file name must end with C(fleet.yml) or C(fleet.yaml).
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin; it marks the file as this plugin's configuration.
    type: str
    required: true
    choices: [edgeai.fleet.fleet]
  registry:
    description:
      - Where the device registry is.
      - A path to a file, relative to the directory of this configuration file unless absolute.
        A name ending in C(.csv) is read as CSV with a header row and the columns C(id), C(class), C(site),
        C(labels) (C(key=value;key2=value2)) and C(address); C(.yml), C(.yaml) and C(.json) files as YAML
        (vault-encrypted files work).
      - Or an C(http://) or C(https://) URL that answers a GET with JSON.
      - "The document is a list of entries, or a mapping C({devices: [...]}). Each entry has C(id) and C(class)
        (required), and optionally C(site), C(labels) (a mapping), C(address) (becomes C(ansible_host)) and
        C(vars) (extra host variables)."
    type: str
    required: true
  token:
    description:
      - Bearer token sent as C(Authorization) to an HTTP(S) registry. It never appears in errors or logs,
        and is not sent on along a redirect.
      - Without it, no C(Authorization) header is sent.
    type: str
    env:
      - name: EDGEAI_FLEET_REGISTRY_TOKEN
  validate_certs:
    description: Verify the TLS certificate of an C(https://) registry.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for an HTTP(S) registry to answer.
    type: int
    default: 30
  waves:
    description:
      - The rollout wave plan; devices are placed by a stable hash of their id (sha256), so the placement
        is the same on every run and every controller.
      - "A mapping with C(canary) (a list of device ids, wave 0; ids not in the registry are warned about)
        and one of C(percentages) (cumulative percentages of the other devices, strictly increasing, ending
        at 100; a device keeps its wave as the fleet grows), C(counts) (sizes of the waves after the canary;
        whoever is left forms a last wave) or C(exponential) (C({start: S, factor: F}); waves of S, S*F,
        S*F*F, ... devices). With counts and exponential a device keeps its wave only while the devices
        sorted before it stay the same."
      - Or the same as a string, C(10,50,100), C(count:2,5) or C(exp:1,2), optionally prefixed with the
        canary list, C(canary=nano-a01;rpi-b01|10,50,100).
      - Without a canary list, the first non-empty wave serves as the canary.
    type: raw
    default:
      canary: []
      percentages: [10, 50, 100]
  pin_class:
    description:
      - Also set C(edgeai_hardware_class) to the registry's class, which pins the class in
        M(edgeai.fleet.device_facts) and the roles instead of detecting it.
      - An entry's C(vars) can pin single devices instead.
    type: bool
    default: false
notes:
  - Redirects of an HTTP(S) registry are followed for GET only, without the token.
seealso:
  - module: edgeai.fleet.device_facts
"""

EXAMPLES = r"""
# fleet.yml: devices from a YAML file next to this one, a canary list, then 10 %, 50 % and the
# rest of the fleet.
plugin: edgeai.fleet.fleet
registry: registry.yml
waves:
  canary: [nano-a01, rpi-b01]
  percentages: [10, 50, 100]
keyed_groups:
  # line_1, line_2, ... from the devices' "line" label (devices without one are left out).
  - key: edgeai_labels.line
    prefix: line

---
# From the fleet's registry service; the token comes from EDGEAI_FLEET_REGISTRY_TOKEN.
# Cached for an hour; groups and compose are applied again on every run.
plugin: edgeai.fleet.fleet
registry: https://registry.example.com/api/v1/devices
waves: "canary=orin-a01|count:5,50"
cache: true
cache_plugin: ansible.builtin.jsonfile
cache_connection: ~/.cache/edgeai-fleet-inventory
cache_timeout: 3600
groups:
  cameras: "edgeai_labels.role | default('') == 'camera'"
compose:
  ansible_port: 2222 if edgeai_site == 'plant_b' else 22

---
# A CSV export with columns id,class,site,labels,address; the class from the registry is trusted.
plugin: edgeai.fleet.fleet
registry: /srv/cmdb/edge-devices.csv
pin_class: true
waves: exp:1,2
"""

import copy
import http.client
import json
import os
import typing as t
import urllib.error
from urllib.parse import urlsplit, urlunsplit

from ansible.errors import AnsibleError, AnsibleParserError
from ansible.module_utils.common.text.converters import to_native, to_text
from ansible.module_utils.urls import open_url
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable
from ansible.utils.unsafe_proxy import wrap_var as make_unsafe

from ansible_collections.edgeai.fleet.plugins.module_utils._hardware import HARDWARE_CLASSES
from ansible_collections.edgeai.fleet.plugins.plugin_utils._registry import (
    Device, RegistryError, devices_from, entries_of, parse_csv)
from ansible_collections.edgeai.fleet.plugins.plugin_utils._waves import (
    WavePlanError, assign_waves, parse_wave_plan, unknown_canaries, wave_members, wave_name)

ALL_DEVICES = 'edgeai_devices'
_YAML_SUFFIXES = ('.yml', '.yaml', '.json')


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """Hosts and groups from the device registry; see DOCUMENTATION."""

    NAME = 'edgeai.fleet.fleet'

    def verify_file(self, path):
        return super().verify_file(path) and path.endswith(('fleet.yml', 'fleet.yaml'))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        try:
            plan = parse_wave_plan(self.get_option('waves'))
        except WavePlanError as err:
            raise AnsibleParserError('reading the fleet inventory %s: option waves: %s' % (path, err)) from None
        entries = self._registry_entries(path, cache)
        try:
            self._populate(devices_from(make_unsafe(entries_of(entries))), plan)
        except RegistryError as err:
            raise AnsibleParserError('reading the device registry %s: %s' % (self._registry_name(), err)) from None

    def _registry_entries(self, path: str, cache: bool) -> t.List[t.Any]:
        """The registry's entries as read (the raw data the cache holds): from the cache when it is on
        and this run may use it, else from the registry (and then into the cache when it is on)."""
        cache_key = self.get_cache_key(path)
        use_cache = bool(self.get_option('cache'))
        if use_cache and cache:
            try:
                return self._cache[cache_key]
            except KeyError:
                pass
        entries = self._read_registry(os.path.dirname(path))
        if use_cache:
            self._cache[cache_key] = entries
        return entries

    def _registry_name(self) -> str:
        """The registry's location as it may be shown: a URL without credentials."""
        location = self.get_option('registry')
        if not _is_url(location):
            return location
        parts = urlsplit(location)
        netloc = parts.hostname or ''
        if parts.port:
            netloc += ':%d' % parts.port
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ''))

    def _read_registry(self, config_dir: str) -> t.List[t.Any]:
        location = self.get_option('registry')
        try:
            if _is_url(location):
                document = self._fetch(location)
            else:
                document = self._read_file(_resolve(location, config_dir))
            return entries_of(document)
        except RegistryError as err:
            message = 'reading the device registry %s: %s' % (self._registry_name(), err)
            raise AnsibleParserError(self._redact(message)) from None

    def _read_file(self, path: str) -> t.Any:
        if path.endswith('.csv'):
            try:
                with open(path, encoding='utf-8-sig', newline='') as stream:
                    text = stream.read()
            except (OSError, UnicodeDecodeError) as err:
                raise RegistryError('cannot read %s: %s' % (path, to_native(err))) from None
            return parse_csv(text)
        if not path.endswith(_YAML_SUFFIXES):
            raise RegistryError('cannot tell the format of %s: name it *.csv, or *.yml, *.yaml or *.json' % path)
        if not os.path.isfile(path):
            raise RegistryError('no such file %s' % path)
        try:
            return self.loader.load_from_file(path, cache='none')
        except AnsibleError as err:
            raise RegistryError('cannot read %s: %s' % (path, to_native(err.message))) from None

    def _fetch(self, url: str) -> t.Any:
        headers = {'Accept': 'application/json'}
        token = self.get_option('token')
        if token:
            headers['Authorization'] = 'Bearer %s' % token
        self.display.vvv('edgeai.fleet.fleet: reading the device registry from %s' % self._registry_name())
        try:
            response = open_url(url, method='GET', headers=headers, validate_certs=self.get_option('validate_certs'),
                                timeout=self.get_option('timeout'), http_agent='edgeai.fleet-inventory',
                                follow_redirects='safe', unredirected_headers=['Authorization'], use_netrc=False)
            body = response.read()
        except urllib.error.HTTPError as err:
            raise RegistryError('HTTP %s %s' % (err.code, self._redact(to_text(err.reason)))) from None
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as err:
            raise RegistryError('cannot reach it: %s' % self._redact(to_native(getattr(err, 'reason', err)))) from None
        try:
            return json.loads(to_text(body, errors='surrogate_or_strict'))
        except ValueError as err:
            raise RegistryError('the answer is not JSON: %s' % to_native(err)) from None

    def _redact(self, message: str) -> str:
        token = self.get_option('token')
        return message.replace(token, '********') if token else message

    def _populate(self, devices: t.List[Device], plan: t.Dict[str, t.Any]) -> None:
        assignment = assign_waves([device.device_id for device in devices], plan)
        missing = unknown_canaries(list(assignment), plan)
        if missing:
            self.display.warning('edgeai.fleet.fleet: canary device%s %s not in the registry %s'
                                 % ('s' if len(missing) > 1 else '', ', '.join(missing), self._registry_name()))
        # Groups first, in a stable order (classes, sites by name, waves in order); then the hosts.
        self.inventory.add_group(ALL_DEVICES)
        for hardware_class in HARDWARE_CLASSES:
            self.inventory.add_group(hardware_class)
            self.inventory.add_child(ALL_DEVICES, hardware_class)
        for site in sorted({device.site for device in devices if device.site is not None}):
            self.inventory.add_group(self._site_group(site))
        for index, _members in wave_members(assignment):
            self.inventory.add_group(_wave_group(index))
        # Every device's variables before any host is added: a bad entry leaves the inventory untouched.
        ordered = sorted(devices, key=lambda device: (assignment[device.device_id], device.device_id))
        planned = [(device, assignment[device.device_id],
                    _host_vars(device, assignment[device.device_id], plan, self.get_option('pin_class')))
                   for device in ordered]
        strict = self.get_option('strict')
        for device, wave, host_vars in planned:
            self._add_device(device, wave, host_vars)
            host = device.device_id
            hostvars = self.inventory.get_host(host).get_vars()
            self._set_composite_vars(self.get_option('compose'), hostvars, host, strict=strict)
            self._add_host_to_composed_groups(self.get_option('groups'), hostvars, host, strict=strict)
            self._add_host_to_keyed_groups(self.get_option('keyed_groups'), hostvars, host, strict=strict)

    def _add_device(self, device: Device, wave: int, host_vars: t.Dict[str, t.Any]) -> None:
        host = device.device_id
        self.inventory.add_host(host, group=device.hardware_class)
        if device.site is not None:
            self.inventory.add_child(self._site_group(device.site), host)
        self.inventory.add_child(_wave_group(wave), host)
        for name, value in host_vars.items():
            self.inventory.set_variable(host, name, value)

    def _site_group(self, site: str) -> str:
        return self._sanitize_group_name('site_%s' % site)


def _wave_group(index: int) -> str:
    return 'rollout_%s' % wave_name(index)


def _host_vars(device: Device, wave: int, plan: t.Dict[str, t.Any], pin_class: bool) -> t.Dict[str, t.Any]:
    """The variables of a device's host: the inventory's own, then the entry's vars."""
    host_vars: t.Dict[str, t.Any] = {
        'edgeai_device_id': device.device_id,
        'edgeai_registry_class': device.hardware_class,
        'edgeai_site': device.site,
        'edgeai_labels': dict(device.labels),
        'edgeai_wave': wave,
        'edgeai_wave_name': wave_name(wave),
        'edgeai_wave_plan': copy.deepcopy(plan),
    }
    if device.address is not None:
        host_vars['ansible_host'] = device.address
    if pin_class:
        pinned = device.variables.get('edgeai_hardware_class', device.hardware_class)
        if pinned != device.hardware_class:
            raise RegistryError('%s: vars.edgeai_hardware_class %s contradicts its class %s (pin_class is on)'
                                % (device.device_id, pinned, device.hardware_class))
        host_vars['edgeai_hardware_class'] = device.hardware_class
    host_vars.update(device.variables)
    return host_vars


def _is_url(location: str) -> bool:
    return location.lower().startswith(('http://', 'https://'))


def _resolve(location: str, config_dir: str) -> str:
    path = os.path.expanduser(location)
    return path if os.path.isabs(path) else os.path.join(config_dir, path)
