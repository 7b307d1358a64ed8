# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Hardware-class detection for edge AI devices.

Private to this collection: the API may change without notice.

Everything here reads files only, so it runs on a bare device that has nothing
but a Python interpreter, before the device runtime is installed. Paths are read
through a :class:`HostView`, which lets tests and the simulated fleet point the
kernel interfaces (/proc, /sys, /dev) at a fixture tree, since a container
cannot fake those paths.
"""

from __future__ import annotations

import os
import platform
import re

# The hardware classes this collection knows, in the order they are tried.
HARDWARE_CLASSES = ('jetson_nano', 'jetson_orin', 'raspberry_pi', 'coral', 'generic')

# Edge TPU USB accelerator ids, from the udev rules that ship with libedgetpu
# (99-edgetpu-accelerator.rules): Global Unichip before the firmware is loaded,
# Google once it runs.
EDGETPU_USB_IDS = (('1a6e', '089a'), ('18d1', '9302'))
# Coral M.2 / Mini PCIe accelerator: Global Unichip Corp. PCI id, driven by the gasket/apex driver.
EDGETPU_PCI_ID = ('0x1ac1', '0x089a')
NVIDIA_PCI_VENDOR = '0x10de'
# PCI display controller classes: VGA (0x0300xx) and 3D controller (0x0302xx).
PCI_DISPLAY_CLASSES = ('0x0300', '0x0302')

# L4T release -> JetPack release, from NVIDIA's JetPack archive pages.
JETPACK_BY_L4T = {
    '32.6.1': '4.6',
    '32.7.1': '4.6.1',
    '32.7.2': '4.6.2',
    '32.7.3': '4.6.3',
    '32.7.4': '4.6.4',
    '32.7.5': '4.6.5',
    '32.7.6': '4.6.6',
    '35.1.0': '5.0.2',
    '35.2.1': '5.1',
    '35.3.1': '5.1.1',
    '35.4.1': '5.1.2',
    '35.5.0': '5.1.3',
    '35.6.0': '5.1.4',
    '36.2.0': '6.0 DP',
    '36.3.0': '6.0',
    '36.4.0': '6.1',
    '36.4.3': '6.2',
    '36.4.4': '6.2.1',
}

# Tegra SoCs by their device-tree compatible string.
TEGRA_SOC_CLASS = {
    'nvidia,tegra210': 'jetson_nano',   # Jetson Nano, TX1
    'nvidia,tegra234': 'jetson_orin',   # Jetson AGX Orin, Orin NX, Orin Nano
}

_L4T_RE = re.compile(r'#\s*R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)\.(\d+)')

ARCH_ALIASES = {
    'x86_64': 'amd64',
    'amd64': 'amd64',
    'aarch64': 'arm64',
    'arm64': 'arm64',
    'armv7l': 'armhf',
    'armv6l': 'armhf',
}


class HostView(object):
    """Read-only view of a host's files.

    ``root`` stands for ``/`` (tests point it at a fixture tree).
    ``evidence_root``, when set, replaces ``root`` for the hardware evidence
    under the kernel interfaces /proc, /sys and /dev (device tree, USB and PCI
    ids, device nodes): containers cannot fake those, so the simulated fleet
    mounts a fixture tree and names it here. Memory, CPUs, /etc and the rest
    are still read from ``root``.
    """

    def __init__(self, root='/', evidence_root=None):
        self.root = root or '/'
        self.evidence_root = evidence_root

    def path(self, path, evidence=False):
        base = self.evidence_root if (evidence and self.evidence_root) else self.root
        return os.path.join(base, path.lstrip('/'))

    def read(self, path, evidence=False):
        """Return the file's text with NULs turned into newlines and the ends stripped, or None."""
        try:
            with open(self.path(path, evidence), 'rb') as f:
                data = f.read(65536)
        except (IOError, OSError):
            return None
        return data.replace(b'\x00', b'\n').decode('utf-8', 'replace').strip()

    def evidence(self, path):
        """Read a piece of hardware evidence (below the evidence root when one is set)."""
        return self.read(path, evidence=True)

    def listdir(self, path, evidence=True):
        try:
            return sorted(os.listdir(self.path(path, evidence)))
        except (IOError, OSError):
            return []


def device_tree(view):
    """Return (model, [compatible...]) from the device tree, or (None, [])."""
    model = view.evidence('/proc/device-tree/model') or view.evidence('/sys/firmware/devicetree/base/model')
    compatible = (view.evidence('/proc/device-tree/compatible')
                  or view.evidence('/sys/firmware/devicetree/base/compatible'))
    return model, [c for c in (compatible or '').split('\n') if c]


def l4t_version(view):
    """Parse /etc/nv_tegra_release ('# R32 (release), REVISION: 7.1, ...') into '32.7.1'."""
    text = view.read('/etc/nv_tegra_release')
    if not text:
        return None
    match = _L4T_RE.search(text)
    if not match:
        return None
    return '%s.%s.%s' % match.groups()


def usb_devices(view):
    """Return [(vendor, product)] for the USB devices under /sys/bus/usb/devices."""
    found = []
    for entry in view.listdir('/sys/bus/usb/devices'):
        base = '/sys/bus/usb/devices/%s/' % entry
        vendor = view.evidence(base + 'idVendor')
        product = view.evidence(base + 'idProduct')
        if vendor and product:
            found.append((vendor.lower(), product.lower()))
    return found


def pci_devices(view):
    """Return [(slot, vendor, device, class)] for the PCI devices under /sys/bus/pci/devices."""
    found = []
    for slot in view.listdir('/sys/bus/pci/devices'):
        base = '/sys/bus/pci/devices/%s/' % slot
        vendor = view.evidence(base + 'vendor')
        if vendor:
            found.append((slot, vendor.lower(), (view.evidence(base + 'device') or '').lower(),
                          (view.evidence(base + 'class') or '').lower()))
    return found


def accelerators(view, compatible, l4t):
    """List the inference accelerators present; an empty list means none."""
    found = []
    tegra = [c for c in compatible if c.startswith('nvidia,tegra')]
    if tegra or l4t:
        # A known SoC name wins over family wildcards such as L4T R35's trailing 'nvidia,tegra23x';
        # otherwise the most specific (first) Tegra entry.
        soc = ([c for c in tegra if c in TEGRA_SOC_CLASS] or tegra or [None])[0]
        found.append({'kind': 'tegra_igpu', 'soc': soc.split(',', 1)[1] if soc else None})
    for slot, vendor, device, pci_class in pci_devices(view):
        if vendor == NVIDIA_PCI_VENDOR and pci_class.startswith(PCI_DISPLAY_CLASSES) and not tegra:
            found.append({'kind': 'nvidia_dgpu', 'pci_slot': slot, 'pci_id': '%s:%s' % (vendor[2:], device[2:])})
        elif (vendor, device) == EDGETPU_PCI_ID:
            found.append({'kind': 'edgetpu_pcie', 'pci_slot': slot, 'pci_id': '1ac1:089a'})
    apex = [d for d in view.listdir('/dev') if d.startswith('apex_')]
    if apex and not any(a['kind'] == 'edgetpu_pcie' for a in found):
        found.append({'kind': 'edgetpu_pcie', 'device': '/dev/' + apex[0]})
    for vendor, product in usb_devices(view):
        if (vendor, product) in EDGETPU_USB_IDS:
            found.append({'kind': 'edgetpu_usb', 'usb_id': '%s:%s' % (vendor, product),
                          'firmware_loaded': vendor == '18d1'})
    return found


def classify(model, compatible, l4t, accels):
    """Decide the hardware class. Returns (class, evidence sentence).

    Jetson evidence wins over an Edge TPU (the Tegra GPU is the stronger
    accelerator); an Edge TPU wins over the board it is plugged into, since it
    decides the runtime; anything unrecognised is ``generic``.
    """
    for compat in compatible:
        if compat in TEGRA_SOC_CLASS:
            return TEGRA_SOC_CLASS[compat], 'device-tree compatible %s' % compat
    model_lower = (model or '').lower()
    if 'jetson' in model_lower or l4t:
        if 'nano' in model_lower and 'orin' not in model_lower:
            return 'jetson_nano', 'device-tree model %r' % model
        if 'orin' in model_lower:
            return 'jetson_orin', 'device-tree model %r' % model
        if l4t and l4t.startswith(('35.', '36.')):
            return 'jetson_orin', 'L4T %s (Orin-generation release)' % l4t
        if l4t and l4t.startswith('32.'):
            return 'jetson_nano', 'L4T %s (Nano-generation release)' % l4t
    edgetpu = [a for a in accels if a['kind'].startswith('edgetpu_')]
    if edgetpu:
        return 'coral', 'Edge TPU %s' % (edgetpu[0].get('usb_id') or edgetpu[0].get('pci_id') or edgetpu[0].get('device'))
    if 'phanbell' in model_lower or 'fsl,imx8mq-phanbell' in compatible:
        return 'coral', 'Coral Dev Board device-tree model %r' % model
    if model_lower.startswith('raspberry pi') or any(c.startswith('raspberrypi,') for c in compatible):
        return 'raspberry_pi', 'device-tree model %r' % model
    return 'generic', 'no class-specific evidence found'


def os_release(view):
    """Return id, version_id and pretty_name from /etc/os-release."""
    info = {}
    for line in (view.read('/etc/os-release') or view.read('/usr/lib/os-release') or '').splitlines():
        key, sep, value = line.partition('=')
        if sep:
            info[key.strip()] = value.strip().strip('"\'')
    return {'id': info.get('ID'), 'version_id': info.get('VERSION_ID'), 'pretty_name': info.get('PRETTY_NAME')}


def memory_bytes(view):
    for line in (view.read('/proc/meminfo') or '').splitlines():
        if line.startswith('MemTotal:'):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) * 1024
    return None


def cpu_count(view):
    """Count online CPUs from /sys/devices/system/cpu/online ('0-3,6')."""
    online = view.read('/sys/devices/system/cpu/online')
    count = 0
    for part in (online or '').split(','):
        low, sep, high = part.partition('-')
        if low.isdigit() and (not sep or high.isdigit()):
            count += (int(high) - int(low) + 1) if sep else 1
    return count or os.cpu_count()


def dmi_model(view):
    vendor = view.evidence('/sys/class/dmi/id/sys_vendor')
    product = view.evidence('/sys/class/dmi/id/product_name')
    model = ' '.join(p for p in (vendor, product) if p)
    return model or None


def probe(view, machine=None):
    """Return the hardware facts of the host behind ``view`` (everything but runtimes)."""
    machine = machine or platform.machine()
    model, compatible = device_tree(view)
    l4t = l4t_version(view)
    accels = accelerators(view, compatible, l4t)
    hw_class, evidence = classify(model, compatible, l4t, accels)
    return {
        'hardware_class': hw_class,
        'detected_class': hw_class,
        'class_source': 'detected',
        'class_evidence': evidence,
        'model': model or dmi_model(view),
        'compatible': compatible,
        'machine': machine,
        'arch': ARCH_ALIASES.get(machine.lower(), machine.lower()),
        'cpu_count': cpu_count(view),
        'memory_bytes': memory_bytes(view),
        'accelerators': accels,
        'os': os_release(view),
        'l4t_version': l4t,
        'jetpack_version': JETPACK_BY_L4T.get(l4t) if l4t else None,
    }


def apply_override(facts, hardware_class):
    """Apply an inventory override of the class, keeping what was detected."""
    if hardware_class not in HARDWARE_CLASSES:
        raise ValueError('unknown hardware class %r; known classes: %s'
                         % (hardware_class, ', '.join(HARDWARE_CLASSES)))
    facts = dict(facts)
    facts['hardware_class'] = hardware_class
    facts['class_source'] = 'inventory'
    return facts
