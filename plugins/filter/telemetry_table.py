# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""One row per device from edgeai.fleet.telemetry_facts' samples, and the same rows as CSV
(playbooks/telemetry.yml). The columns are a summary for a spreadsheet; the JSON file keeps the
whole sample."""

from __future__ import annotations

import csv
import io

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.collections import is_string

COLUMNS = (
    'host', 'reachable', 'device_id', 'hardware_class', 'time', 'uptime_seconds',
    'cpu_count', 'cpu_use_ratio', 'load1', 'memory_used_ratio', 'memory_available_bytes',
    'root_fs_avail_bytes', 'temperature_max_celsius', 'power_watts', 'throttled_now', 'throttled_since_boot',
    'service_running', 'service_resident_bytes', 'service_cpu_seconds', 'service_open_fds',
    'models', 'inference_requests', 'inference_errors', 'latency_p95_seconds_max',
    'ota_last_version', 'ota_last_outcome', 'ota_last_reason',
)


def _get(value, *path):
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _values(items, key):
    return [item[key] for item in items or [] if isinstance(item, dict) and isinstance(item.get(key), (int, float))]


def _flags(bits):
    """The names of the Raspberry Pi throttling bits that are set, or None without the firmware's file."""
    if not isinstance(bits, dict):
        return None
    return ' '.join(sorted(name for name, on in bits.items() if on)) or 'none'


def telemetry_row(sample, host=None):
    """One device's sample, flattened to COLUMNS. A missing or failed sample gives reachable false."""
    if sample is not None and not isinstance(sample, dict):
        raise AnsibleFilterError('telemetry_row: a sample must be a dict (edgeai_telemetry), not %s'
                                 % type(sample).__name__)
    row = dict.fromkeys(COLUMNS)
    row['host'] = host
    row['reachable'] = bool(sample)
    if not sample:
        return row
    sensors = sample.get('sensors') or {}
    temps = _values(sensors.get('thermal_zones'), 'celsius')
    temps += [reading['celsius'] for chip in sensors.get('hwmon') or [] for reading in chip.get('sensors') or []
              if isinstance(reading.get('celsius'), (int, float))]
    watts = _values(sensors.get('jetson_rails'), 'power_watts')
    device_root = [fs for fs in sample.get('filesystems') or [] if fs.get('device_root')]
    inference = sample.get('inference') or []
    p95 = _values(inference, 'latency_p95_seconds')
    row.update({
        'device_id': sample.get('device_id'), 'hardware_class': sample.get('hardware_class'),
        'time': sample.get('time'), 'uptime_seconds': sample.get('uptime_seconds'),
        'cpu_count': _get(sample, 'cpu', 'count'), 'cpu_use_ratio': _get(sample, 'cpu', 'use_ratio'),
        'load1': _get(sample, 'cpu', 'load1'),
        'memory_used_ratio': _get(sample, 'memory', 'used_ratio'),
        'memory_available_bytes': _get(sample, 'memory', 'available_bytes'),
        'root_fs_avail_bytes': device_root[0].get('avail_bytes') if device_root else None,
        'temperature_max_celsius': max(temps) if temps else None,
        # The rails overlap (VDD_IN feeds the others): the input rail is the board's draw.
        'power_watts': watts[0] if watts else None,
        'throttled_now': _flags(_get(sensors, 'rpi_throttled', 'now')),
        'throttled_since_boot': _flags(_get(sensors, 'rpi_throttled', 'since_boot')),
        'service_running': _get(sample, 'service', 'running'),
        'service_resident_bytes': _get(sample, 'service', 'resident_bytes'),
        'service_cpu_seconds': _get(sample, 'service', 'cpu_seconds'),
        'service_open_fds': _get(sample, 'service', 'open_fds'),
        'models': ' '.join('%s=%s' % (m.get('name'), m.get('active')) for m in sample.get('models') or []),
        'inference_requests': sum(_values(inference, 'requests')) if inference else None,
        'inference_errors': sum(_values(inference, 'errors')) if inference else None,
        'latency_p95_seconds_max': max(p95) if p95 else None,
        'ota_last_version': _get(sample, 'ota', 'last', 'version'),
        'ota_last_outcome': _get(sample, 'ota', 'last', 'outcome'),
        'ota_last_reason': _get(sample, 'ota', 'last', 'reason'),
    })
    return row


def telemetry_table(samples):
    """``{host: sample or None}`` to a list of rows, sorted by host."""
    if not isinstance(samples, dict):
        raise AnsibleFilterError('telemetry_table: expected a dict of host -> edgeai_telemetry, not %s'
                                 % type(samples).__name__)
    return [telemetry_row(samples[host], host) for host in sorted(samples)]


def _cell(value):
    if value is None:
        return ''
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if is_string(value) or isinstance(value, (int, float)):
        return value
    raise AnsibleFilterError('telemetry_csv: a cell must be a scalar, not %s' % type(value).__name__)


def telemetry_csv(samples):
    """The rows of telemetry_table as CSV text (RFC 4180 quoting, a header line, \\n line ends)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(COLUMNS)
    for row in telemetry_table(samples):
        writer.writerow([_cell(row[column]) for column in COLUMNS])
    return out.getvalue()


class FilterModule(object):
    def filters(self):
        return {'telemetry_table': telemetry_table, 'telemetry_csv': telemetry_csv}
