#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: telemetry_facts
short_description: Return an edge device's health and model versions as C(ansible_facts.edgeai_telemetry)
version_added: 0.5.0
description:
  - Runs the device runtime's telemetry collector (C(edgeai-runtime telemetry collect)) as the service user and returns
    its sample under C(ansible_facts.edgeai_telemetry).
  - The sample holds CPU, memory, filesystems, network counters, the kernel's sensors (thermal zones, hwmon, batteries
    and mains, Raspberry Pi throttling, Jetson INA3221 power rails), the inference service's process, per model and
    version inference statistics over the service's window, the active model versions and the last OTA outcome.
  - Every value is in base units (seconds, bytes, degrees Celsius, volts, amperes, watts, joules, ratios 0-1).
    A sensor the device does not have is null; the module never fails because of one.
  - The fields and units are listed in the collection's C(docs/telemetry.md), section "Metrics and facts".
  - Only reads; it changes nothing on the device.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.facts
  - edgeai.fleet._attributes.facts_module
  - edgeai.fleet._attributes.device_runtime
notes:
  - Sensors are read below the C(evidence_root) of C(<root>/etc/telemetry.json) (default C(/)); the simulated fleet
    points it at the class's evidence tree.
  - Inference statistics and the service's process are null while the inference service is not running.
seealso:
  - module: edgeai.fleet.device_facts
"""

EXAMPLES = r"""
- name: Read the device's health
  edgeai.fleet.telemetry_facts:

- name: Warn about a hot or throttled device
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }}: {{ item.type }} at {{ item.celsius }} C"
  loop: "{{ ansible_facts.edgeai_telemetry.sensors.thermal_zones | default([], true) }}"
  when: item.celsius is not none and item.celsius > 80

- name: Show what serves
  ansible.builtin.debug:
    msg: "{{ ansible_facts.edgeai_telemetry.models | items2dict(key_name='name', value_name='active') }}"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    edgeai_telemetry:
      description: One telemetry sample of the device.
      returned: always
      type: complex
      contains:
        schema:
          description: The version of this shape.
          type: int
          returned: always
          sample: 1
        device_id:
          description: The device id of the telemetry settings (the certificate CN and MQTT topic level).
          type: str
          returned: always
          sample: jetson-07
        hardware_class:
          description: The class profile's hardware class.
          type: str
          returned: always
          sample: jetson_orin
        time:
          description: When the sample was taken, Unix time in seconds.
          type: float
          returned: always
        boot_id:
          description: The kernel's boot id (C(/proc/sys/kernel/random/boot_id)).
          type: str
          returned: always
        uptime_seconds:
          description: Seconds since boot.
          type: float
          returned: always
        cpu:
          description: C(count), C(use_ratio) (0-1, since the previous sample of the same collector, or since boot),
            C(use_window_seconds), C(frequency_hertz), C(frequency_max_hertz), C(load1).
          type: dict
          returned: always
        memory:
          description: C(total_bytes), C(available_bytes), C(used_ratio), C(swap_total_bytes), C(swap_used_bytes).
          type: dict
          returned: always
        filesystems:
          description: Each device filesystem once, with C(mountpoint), C(device), C(fstype), C(size_bytes),
            C(free_bytes), C(avail_bytes) and C(device_root) (true for the one holding the device root).
          type: list
          elements: dict
          returned: always
        network:
          description: Counters per interface but loopback (C(receive_bytes), C(transmit_bytes), packets, errors,
            drops), since boot.
          type: list
          elements: dict
          returned: always
        sensors:
          description:
            - C(thermal_zones), C(hwmon), C(power_supplies), C(rpi_throttled) and C(jetson_rails); each null when the
              device has no such sensors.
            - C(rpi_throttled) has C(now) and C(since_boot), each with C(under_voltage), C(arm_frequency_capped),
              C(throttled) and C(soft_temp_limit).
          type: dict
          returned: always
        service:
          description: The inference service's process; C(running), C(pid), C(cpu_seconds), C(resident_bytes),
            C(open_fds), C(started).
          type: dict
          returned: always
        inference:
          description: Per model and version, C(requests), C(errors), C(latency_p50_seconds) and
            C(latency_p95_seconds) over C(window_seconds), and C(requests_total), C(errors_total) since the service
            started; null when the service is not running.
          type: list
          elements: dict
          returned: always
        models:
          description: Every stored model with its C(active) and C(previous) versions.
          type: list
          elements: dict
          returned: always
          sample: [{name: digits, active: 2.0.0, previous: 1.0.0}]
        ota:
          description: C(last), the newest deployment history row (C(name), C(version), C(from_version), C(outcome),
            C(reason), C(phase), C(started), C(finished), C(duration_s)) or null; C(readable), false when the history
            could not be read.
          type: dict
          returned: always
          sample: {readable: true, last: {name: digits, version: 2.0.0, outcome: committed, reason: null}}
        outbox:
          description: The telemetry outbox's backlog (C(records), C(bytes), C(max_bytes), C(oldest_age_s)) and, per
            kind, the records it evicted under its byte cap (C(evicted_records)) and refused (C(refused_records)),
            and C(delivered_records) the broker acknowledged; null when the outbox cannot be read.
          type: dict
          returned: always
          sample: {records: 3, bytes: 6144, max_bytes: 67108864, oldest_age_s: 120.5, delivered_records: 812,
                   evicted_records: {ota: 0, rollout: 0, telemetry: 0, inference: 0},
                   refused_records: {ota: 0, rollout: 0, telemetry: 0, inference: 0}}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils._runtime_client import RuntimeClient


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type='path', default='/opt/edgeai'),
            user=dict(type='str', default='edgeai'),
        ),
        supports_check_mode=True,
    )
    result = RuntimeClient(module, module.params['root'], module.params['user']).telemetry_collect()
    module.exit_json(changed=False, ansible_facts={'edgeai_telemetry': result.get('telemetry')})


if __name__ == '__main__':
    main()
