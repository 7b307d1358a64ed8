#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: device_facts
short_description: Recognise an edge AI device's hardware class, accelerators and inference runtimes
version_added: 0.1.0
description:
  - Reads the evidence an edge device shows about itself and returns it as facts under C(ansible_facts.edgeai).
  - The hardware class is one of C(jetson_nano), C(jetson_orin), C(raspberry_pi), C(coral) or C(generic).
    It is decided from the device-tree model and compatible strings, C(/etc/nv_tegra_release),
    Edge TPU USB ids (C(1a6e:089a), C(18d1:9302)) and PCIe ids (C(1ac1:089a)) or C(/dev/apex_*).
  - Unknown hardware is reported as C(generic); the module never fails because it does not recognise a board.
  - Inference runtimes are found by their package metadata in the device venv, the system Python and dpkg.
    Nothing is imported, so a TensorRT build that crashes without a GPU driver cannot crash the module.
  - Only reads files and package metadata; it changes nothing on the device.
author:
  - edgeai.fleet contributors (@edgeai)
extends_documentation_fragment:
  - edgeai.fleet._attributes
  - edgeai.fleet._attributes.facts
  - edgeai.fleet._attributes.facts_module
options:
  hardware_class:
    description:
      - Use this hardware class instead of the detected one, for example from the inventory variable
        C(edgeai_hardware_class).
      - The detected class is still returned as C(detected_class), and C(class_source) says C(inventory).
    type: str
    choices: [jetson_nano, jetson_orin, raspberry_pi, coral, generic]
  evidence_root:
    description:
      - Read the hardware evidence under C(/proc), C(/sys) and C(/dev) (device tree, USB and PCI ids,
        device nodes) below this directory instead of C(/).
      - For simulation and tests only. A container cannot fake those kernel paths, so the simulated fleet
        mounts a fixture tree, C(sim/evidence/<class>) in the repository, and names it here.
      - Memory, CPU count, C(/etc/os-release) and C(/etc/nv_tegra_release) are always read from the real root.
    type: path
  venv:
    description:
      - The device runtime's Python virtual environment, searched for runtime packages before the system Python.
      - A missing venv is not an error; only the system is searched then.
    type: path
    default: /opt/edgeai/venv
notes:
  - Targets running JetPack 4 (Ubuntu 18.04, Python 3.6) need a newer interpreter for current ansible-core,
    for example C(ansible_python_interpreter=/usr/bin/python3.8).
"""

EXAMPLES = r"""
- name: Recognise the device
  edgeai.fleet.device_facts:

- name: Recognise the device, letting the inventory pin its class
  edgeai.fleet.device_facts:
    hardware_class: "{{ edgeai_hardware_class | default(omit) }}"

- name: Show what was found
  ansible.builtin.debug:
    msg: "{{ inventory_hostname }} is a {{ ansible_facts.edgeai.hardware_class }} ({{ ansible_facts.edgeai.model }})"
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    edgeai:
      description: What the device is and what it can run.
      returned: always
      type: complex
      contains:
        hardware_class:
          description: The class the rest of the collection uses (the inventory override when given).
          type: str
          returned: always
          sample: jetson_nano
        detected_class:
          description: The class the evidence points to, whatever the inventory says.
          type: str
          returned: always
          sample: jetson_nano
        class_source:
          description: V(detected) or V(inventory).
          type: str
          returned: always
          sample: detected
        class_evidence:
          description: The piece of evidence the detected class was decided on.
          type: str
          returned: always
          sample: device-tree compatible nvidia,tegra210
        model:
          description: The device-tree model string, or the DMI vendor and product name; null when neither exists.
          type: str
          returned: always
          sample: NVIDIA Jetson Nano Developer Kit
        compatible:
          description: The device-tree compatible strings, most specific first.
          type: list
          elements: str
          returned: always
          sample: [nvidia,p3450-0000, nvidia,jetson-nano, nvidia,tegra210]
        machine:
          description: The kernel's machine name.
          type: str
          returned: always
          sample: aarch64
        arch:
          description: The Debian architecture name (V(amd64), V(arm64), V(armhf)).
          type: str
          returned: always
          sample: arm64
        cpu_count:
          description: Online CPUs.
          type: int
          returned: always
          sample: 4
        memory_bytes:
          description: Total memory from C(/proc/meminfo).
          type: int
          returned: always
          sample: 4156002304
        accelerators:
          description:
            - The inference accelerators present; an empty list means none.
            - Each has a C(kind) of V(nvidia_dgpu), V(tegra_igpu), V(edgetpu_usb) or V(edgetpu_pcie), and the ids it was found by.
          type: list
          elements: dict
          returned: always
          sample: [{kind: edgetpu_usb, usb_id: "18d1:9302", firmware_loaded: true}]
        os:
          description: V(id), V(version_id) and V(pretty_name) from C(/etc/os-release).
          type: dict
          returned: always
          sample: {id: ubuntu, version_id: "18.04", pretty_name: Ubuntu 18.04.6 LTS}
        l4t_version:
          description: The Linux for Tegra release from C(/etc/nv_tegra_release); null elsewhere.
          type: str
          returned: always
          sample: 32.7.1
        jetpack_version:
          description: The JetPack release of that L4T release; null when not a Jetson or not in the module's table.
          type: str
          returned: always
          sample: 4.6.1
        runtimes:
          description:
            - The inference runtimes installed, by name (V(onnxruntime), V(litert), V(tflite_runtime), V(tensorrt),
              V(edgetpu), V(device_runtime)), each with its version, package and where it was found
              (V(venv), V(system) or V(dpkg)).
          type: dict
          returned: always
          sample: {onnxruntime: {version: 1.20.1, package: onnxruntime, source: venv}}
        python:
          description: The interpreter the module ran with, and the C library; used to pick wheels for the device.
          type: dict
          returned: always
          sample: {version: 3.11.2, executable: /usr/bin/python3, libc: glibc, libc_version: "2.36"}
        warnings:
          description: Probes that could not run, one line each; the facts they would have added are missing.
          type: list
          elements: str
          returned: always
          sample: []
"""

import os
import platform
import sys

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.edgeai.fleet.plugins.module_utils import _hardware
from ansible_collections.edgeai.fleet.plugins.module_utils import _runtimes


def probe_runtimes(module, venv):
    """Return ({runtime: info}, [warning...]) from the venv, the system Python and dpkg."""
    sources = []
    warnings = []
    venv_python = os.path.join(venv, 'bin', 'python')
    if os.access(venv_python, os.X_OK):
        found, error = _runtimes.python_versions(module.run_command, venv_python)
        sources.append(('venv', found))
        if error:
            warnings.append(error)
    found, error = _runtimes.python_versions(module.run_command, sys.executable)
    sources.append(('system', found))
    if error:
        warnings.append(error)
    sources.append(('dpkg', _runtimes.debian_versions(module.run_command, module.get_bin_path('dpkg-query'))))
    return _runtimes.collect(sources), warnings


def main():
    module = AnsibleModule(
        argument_spec=dict(
            hardware_class=dict(type='str', choices=list(_hardware.HARDWARE_CLASSES)),
            evidence_root=dict(type='path'),
            venv=dict(type='path', default='/opt/edgeai/venv'),
        ),
        supports_check_mode=True,
    )
    evidence_root = module.params['evidence_root']
    if evidence_root and not os.path.isdir(evidence_root):
        module.fail_json(msg='reading hardware evidence: evidence_root %s is not a directory' % evidence_root)

    facts = _hardware.probe(_hardware.HostView('/', evidence_root))
    if module.params['hardware_class']:
        facts = _hardware.apply_override(facts, module.params['hardware_class'])
    facts['runtimes'], facts['warnings'] = probe_runtimes(module, module.params['venv'])
    libc, libc_version = platform.libc_ver()
    facts['python'] = {'version': platform.python_version(), 'executable': sys.executable,
                       'libc': libc or None, 'libc_version': libc_version or None}
    module.exit_json(changed=False, ansible_facts={'edgeai': facts})


if __name__ == '__main__':
    main()
