"""Unit tests for plugins/module_utils/_hardware.py: hardware-class detection.

The fixture trees under tests/unit/fixtures/hardware/<case>/ hold the files a
real device shows, at their real paths, with the strings that hardware really
reports. tests/unit/fixtures/hardware/README.md says where each string comes from.
"""
from __future__ import annotations

import os
import platform
import shutil

import pytest

from ansible_collections.edgeai.fleet.plugins.module_utils import _hardware
from ansible_collections.edgeai.fleet.plugins.module_utils._hardware import HostView

KIB = 1024

UBUNTU_1804 = {'id': 'ubuntu', 'version_id': '18.04', 'pretty_name': 'Ubuntu 18.04.6 LTS'}
UBUNTU_2004 = {'id': 'ubuntu', 'version_id': '20.04', 'pretty_name': 'Ubuntu 20.04.6 LTS'}
UBUNTU_2204 = {'id': 'ubuntu', 'version_id': '22.04', 'pretty_name': 'Ubuntu 22.04.4 LTS'}
BOOKWORM = {'id': 'debian', 'version_id': '12', 'pretty_name': 'Debian GNU/Linux 12 (bookworm)'}
MENDEL = {'id': 'mendel', 'version_id': None, 'pretty_name': 'Mendel GNU/Linux 5 (Eagle)'}

NANO_COMPATIBLE = ['nvidia,p3449-0000-b00+p3448-0000-b00', 'nvidia,jetson-nano', 'nvidia,tegra210']

# case -> what probe() must report for it. 'accelerators' is the exact list, except where
# 'accelerator_kinds' is given instead (see test_agx_orin_r35_igpu_soc_is_the_soc).
CASES = {
    'jetson_nano_jp461': dict(
        machine='aarch64', arch='arm64', hardware_class='jetson_nano',
        evidence='device-tree compatible nvidia,tegra210',
        model='NVIDIA Jetson Nano Developer Kit', compatible=NANO_COMPATIBLE,
        accelerators=[{'kind': 'tegra_igpu', 'soc': 'tegra210'}],
        l4t='32.7.1', jetpack='4.6.1', cpu_count=4, memory_bytes=4058596 * KIB, os=UBUNTU_1804),
    'jetson_agx_orin_jp512': dict(
        machine='aarch64', arch='arm64', hardware_class='jetson_orin',
        evidence='device-tree compatible nvidia,tegra234',
        model='Jetson AGX Orin Developer Kit',
        compatible=['nvidia,p3737-0000+p3701-0000', 'nvidia,tegra234', 'nvidia,tegra23x'],
        # The NVIDIA PCIe root port (10de:229e, class 0x060400) is no dGPU.
        accelerator_kinds=['tegra_igpu'],
        l4t='35.4.1', jetpack='5.1.2', cpu_count=8, memory_bytes=30623468 * KIB, os=UBUNTU_2004),
    'jetson_orin_nano_jp60': dict(
        machine='aarch64', arch='arm64', hardware_class='jetson_orin',
        evidence='device-tree compatible nvidia,tegra234',
        model='NVIDIA Jetson Orin Nano Developer Kit',
        compatible=['nvidia,p3768-0000+p3767-0005', 'nvidia,p3767-0005', 'nvidia,tegra234'],
        accelerators=[{'kind': 'tegra_igpu', 'soc': 'tegra234'}],
        l4t='36.3.0', jetpack='6.0', cpu_count=6, memory_bytes=7802148 * KIB, os=UBUNTU_2204),
    'raspberry_pi_4_bookworm': dict(
        machine='aarch64', arch='arm64', hardware_class='raspberry_pi',
        evidence="device-tree model 'Raspberry Pi 4 Model B Rev 1.4'",
        model='Raspberry Pi 4 Model B Rev 1.4', compatible=['raspberrypi,4-model-b', 'brcm,bcm2711'],
        accelerators=[], l4t=None, jetpack=None, cpu_count=4, memory_bytes=3884400 * KIB, os=BOOKWORM),
    'raspberry_pi_5_bookworm': dict(
        machine='aarch64', arch='arm64', hardware_class='raspberry_pi',
        evidence="device-tree model 'Raspberry Pi 5 Model B Rev 1.0'",
        model='Raspberry Pi 5 Model B Rev 1.0', compatible=['raspberrypi,5-model-b', 'brcm,bcm2712'],
        accelerators=[], l4t=None, jetpack=None, cpu_count=4, memory_bytes=8245136 * KIB, os=BOOKWORM),
    'coral_usb_rpi4_dfu': dict(
        machine='aarch64', arch='arm64', hardware_class='coral', evidence='Edge TPU 1a6e:089a',
        model='Raspberry Pi 4 Model B Rev 1.5', compatible=['raspberrypi,4-model-b', 'brcm,bcm2711'],
        accelerators=[{'kind': 'edgetpu_usb', 'usb_id': '1a6e:089a', 'firmware_loaded': False}],
        l4t=None, jetpack=None, cpu_count=4, memory_bytes=3884400 * KIB, os=BOOKWORM),
    'coral_usb_rpi4_runtime': dict(
        machine='aarch64', arch='arm64', hardware_class='coral', evidence='Edge TPU 18d1:9302',
        model='Raspberry Pi 4 Model B Rev 1.5', compatible=['raspberrypi,4-model-b', 'brcm,bcm2711'],
        accelerators=[{'kind': 'edgetpu_usb', 'usb_id': '18d1:9302', 'firmware_loaded': True}],
        l4t=None, jetpack=None, cpu_count=4, memory_bytes=3884400 * KIB, os=BOOKWORM),
    'coral_m2_amd64': dict(
        machine='x86_64', arch='amd64', hardware_class='coral', evidence='Edge TPU 1ac1:089a',
        model='Intel(R) Client Systems NUC8i5BEH', compatible=[],
        # PCI id and /dev/apex_0 are the same card: listed once. The Intel iGPU (display class) is no dGPU.
        accelerators=[{'kind': 'edgetpu_pcie', 'pci_slot': '0000:03:00.0', 'pci_id': '1ac1:089a'}],
        l4t=None, jetpack=None, cpu_count=8, memory_bytes=16231720 * KIB, os=UBUNTU_2204),
    'coral_dev_board': dict(
        machine='aarch64', arch='arm64', hardware_class='coral', evidence='Edge TPU 1ac1:089a',
        model='Freescale i.MX8MQ Phanbell', compatible=['fsl,imx8mq-phanbell', 'fsl,imx8mq'],
        accelerators=[{'kind': 'edgetpu_pcie', 'pci_slot': '0001:01:00.0', 'pci_id': '1ac1:089a'}],
        l4t=None, jetpack=None, cpu_count=4, memory_bytes=1008640 * KIB, os=MENDEL),
    'amd64_nvidia_dgpu': dict(
        machine='x86_64', arch='amd64', hardware_class='generic', evidence='no class-specific evidence found',
        model='Dell Inc. Precision 3660', compatible=[],
        # The GPU's HDMI audio function (10de:228e, class 0x040300) is not a second GPU.
        accelerators=[{'kind': 'nvidia_dgpu', 'pci_slot': '0000:01:00.0', 'pci_id': '10de:2504'}],
        l4t=None, jetpack=None, cpu_count=16, memory_bytes=32585036 * KIB, os=UBUNTU_2204),
    'x86_vm_generic': dict(
        machine='x86_64', arch='amd64', hardware_class='generic', evidence='no class-specific evidence found',
        model='QEMU Standard PC (Q35 + ICH9, 2009)', compatible=[],
        accelerators=[], l4t=None, jetpack=None, cpu_count=2, memory_bytes=4013216 * KIB, os=BOOKWORM),
    'rockchip_rock5b': dict(
        machine='aarch64', arch='arm64', hardware_class='generic', evidence='no class-specific evidence found',
        model='Radxa ROCK 5B', compatible=['radxa,rock-5b', 'rockchip,rk3588'],
        accelerators=[], l4t=None, jetpack=None, cpu_count=8, memory_bytes=16111856 * KIB, os=BOOKWORM),
    'jetson_nano_garbled_release': dict(
        machine='aarch64', arch='arm64', hardware_class='jetson_nano',
        evidence='device-tree compatible nvidia,tegra210',
        model='NVIDIA Jetson Nano Developer Kit', compatible=NANO_COMPATIBLE,
        accelerators=[{'kind': 'tegra_igpu', 'soc': 'tegra210'}],
        l4t=None, jetpack=None, cpu_count=4, memory_bytes=4058596 * KIB, os=UBUNTU_1804),
}


def write(root, path, data):
    full = os.path.join(str(root), path.lstrip('/'))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, 'wb') as f:
        f.write(data.encode() if isinstance(data, str) else data)


@pytest.mark.parametrize('case', sorted(CASES))
def test_probe_fixture(case, hardware_fixture):
    want = CASES[case]
    facts = _hardware.probe(HostView(hardware_fixture(case)), machine=want['machine'])

    assert facts['hardware_class'] == want['hardware_class']
    assert facts['detected_class'] == want['hardware_class']
    assert facts['class_source'] == 'detected'
    assert facts['class_evidence'] == want['evidence']
    assert facts['model'] == want['model']
    assert facts['compatible'] == want['compatible']
    assert facts['machine'] == want['machine']
    assert facts['arch'] == want['arch']
    if 'accelerators' in want:
        assert facts['accelerators'] == want['accelerators']
    else:
        assert [a['kind'] for a in facts['accelerators']] == want['accelerator_kinds']
    assert facts['l4t_version'] == want['l4t']
    assert facts['jetpack_version'] == want['jetpack']
    assert facts['cpu_count'] == want['cpu_count']
    assert facts['memory_bytes'] == want['memory_bytes']
    assert facts['os'] == want['os']


def test_every_fixture_tree_has_a_case(hardware_fixture):
    base = os.path.dirname(hardware_fixture('x86_vm_generic'))
    trees = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
    assert trees == sorted(CASES)


def test_every_class_is_covered_by_a_fixture():
    assert {c['hardware_class'] for c in CASES.values()} == set(_hardware.HARDWARE_CLASSES)


def test_agx_orin_r35_igpu_soc_is_the_soc(hardware_fixture):
    facts = _hardware.probe(HostView(hardware_fixture('jetson_agx_orin_jp512')), machine='aarch64')
    assert facts['accelerators'] == [{'kind': 'tegra_igpu', 'soc': 'tegra234'}]


# --- reading the evidence -----------------------------------------------------------------

def test_device_tree_compatible_is_split_on_nul(hardware_fixture):
    path = os.path.join(hardware_fixture('jetson_nano_jp461'), 'proc/device-tree/compatible')
    with open(path, 'rb') as f:
        raw = f.read()
    assert raw.endswith(b'\x00') and raw.count(b'\x00') == 3, 'fixture must be NUL-separated and NUL-terminated'
    model, compatible = _hardware.device_tree(HostView(hardware_fixture('jetson_nano_jp461')))
    assert model == 'NVIDIA Jetson Nano Developer Kit'
    assert compatible == NANO_COMPATIBLE


def test_device_tree_falls_back_to_sys_firmware(tmp_path):
    write(tmp_path, '/sys/firmware/devicetree/base/model', 'Raspberry Pi 4 Model B Rev 1.4\0')
    write(tmp_path, '/sys/firmware/devicetree/base/compatible', 'raspberrypi,4-model-b\0brcm,bcm2711\0')
    assert _hardware.device_tree(HostView(str(tmp_path))) == (
        'Raspberry Pi 4 Model B Rev 1.4', ['raspberrypi,4-model-b', 'brcm,bcm2711'])
    facts = _hardware.probe(HostView(str(tmp_path)), machine='aarch64')
    assert facts['hardware_class'] == 'raspberry_pi'


def test_usb_devices_skip_interfaces(hardware_fixture):
    # 1-1:1.0 and 2-1:1.0 are interface directories without idVendor/idProduct.
    found = _hardware.usb_devices(HostView(hardware_fixture('coral_usb_rpi4_runtime')))
    assert sorted(found) == [('18d1', '9302'), ('1d6b', '0002'), ('1d6b', '0003'), ('2109', '3431')]


def test_pci_devices_read_vendor_device_class(hardware_fixture):
    found = _hardware.pci_devices(HostView(hardware_fixture('amd64_nvidia_dgpu')))
    assert found == [('0000:01:00.0', '0x10de', '0x2504', '0x030000'),
                     ('0000:01:00.1', '0x10de', '0x228e', '0x040300')]


@pytest.mark.parametrize('text, l4t, jetpack', [
    ('# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, '
     'DATE: Sat Feb 19 17:05:08 UTC 2022\n', '32.7.1', '4.6.1'),
    ('# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, '
     'DATE: Tue Aug  1 19:57:35 UTC 2023\n# KERNEL_VARIANT: oot\n', '35.4.1', '5.1.2'),
    ('# R35 (release), REVISION: 1.0, GCID: 31250864, BOARD: t186ref\n', '35.1.0', '5.0.2'),
    ('# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic\n', '36.3.0', '6.0'),
    # A release the table does not know: the L4T version is still reported, JetPack is not.
    ('# R32 (release), REVISION: 5.1, GCID: 27362550, BOARD: t210ref\n', '32.5.1', None),
    ('', None, None),
    ('R32.7.1\n', None, None),
    ('# R32 (release), REVISION: \n', None, None),
    (b'# R3\xff\xfe\x00 (rel\x85ase), REVI\xc3SION: x.y\n', None, None),
])
def test_l4t_version(tmp_path, text, l4t, jetpack):
    write(tmp_path, '/etc/nv_tegra_release', text)
    view = HostView(str(tmp_path))
    assert _hardware.l4t_version(view) == l4t
    assert _hardware.probe(view, machine='aarch64')['jetpack_version'] == jetpack


def test_unreadable_nv_tegra_release_does_not_crash(tmp_path, hardware_fixture):
    # A path that cannot be opened as a file (root ignores file modes, so a directory stands in).
    root = tmp_path / 'root'
    shutil.copytree(hardware_fixture('jetson_nano_jp461'), str(root))
    os.remove(str(root / 'etc' / 'nv_tegra_release'))
    os.mkdir(str(root / 'etc' / 'nv_tegra_release'))
    facts = _hardware.probe(HostView(str(root)), machine='aarch64')
    assert facts['l4t_version'] is None
    assert facts['jetpack_version'] is None
    assert facts['hardware_class'] == 'jetson_nano'
    assert facts['accelerators'] == [{'kind': 'tegra_igpu', 'soc': 'tegra210'}]


@pytest.mark.parametrize('root', ['empty', 'missing'])
def test_empty_or_missing_root_is_generic(tmp_path, root):
    path = tmp_path if root == 'empty' else tmp_path / 'does-not-exist'
    facts = _hardware.probe(HostView(str(path)), machine='x86_64')
    assert facts['hardware_class'] == 'generic'
    assert facts['class_evidence'] == 'no class-specific evidence found'
    assert facts['model'] is None
    assert facts['compatible'] == []
    assert facts['accelerators'] == []
    assert facts['l4t_version'] is None and facts['jetpack_version'] is None
    assert facts['memory_bytes'] is None
    assert facts['cpu_count'] == os.cpu_count()
    assert facts['os'] == {'id': None, 'version_id': None, 'pretty_name': None}


# --- classification rules -------------------------------------------------------------------

@pytest.mark.parametrize('release, hw_class, evidence', [
    ('# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref\n', 'jetson_orin',
     'L4T 35.4.1 (Orin-generation release)'),
    ('# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic\n', 'jetson_orin',
     'L4T 36.3.0 (Orin-generation release)'),
    ('# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref\n', 'jetson_nano',
     'L4T 32.7.1 (Nano-generation release)'),
])
def test_l4t_release_alone_decides_the_jetson_class(tmp_path, release, hw_class, evidence):
    """No device tree to read (as in a container): /etc/nv_tegra_release still says Jetson."""
    write(tmp_path, '/etc/nv_tegra_release', release)
    facts = _hardware.probe(HostView(str(tmp_path)), machine='aarch64')
    assert (facts['hardware_class'], facts['class_evidence']) == (hw_class, evidence)
    assert facts['accelerators'] == [{'kind': 'tegra_igpu', 'soc': None}]


@pytest.mark.parametrize('model, hw_class', [
    ('NVIDIA Jetson Orin Nano Developer Kit', 'jetson_orin'),   # 'nano' in it, but an Orin
    ('NVIDIA Jetson Orin NX Engineering Reference Developer Kit', 'jetson_orin'),
    ('NVIDIA Jetson Nano Developer Kit', 'jetson_nano'),
    ('NVIDIA Jetson Nano 2GB Developer Kit', 'jetson_nano'),
])
def test_jetson_model_without_soc_compatible(model, hw_class):
    assert _hardware.classify(model, [], None, []) == (hw_class, 'device-tree model %r' % model)


def test_compatible_wins_over_model():
    assert _hardware.classify('NVIDIA Jetson Nano Developer Kit', ['nvidia,tegra234'], None, [])[0] == 'jetson_orin'


def test_jetson_wins_over_an_edge_tpu(tmp_path, hardware_fixture):
    root = tmp_path / 'root'
    shutil.copytree(hardware_fixture('jetson_orin_nano_jp60'), str(root))
    write(root, '/sys/bus/usb/devices/2-1/idVendor', '18d1\n')
    write(root, '/sys/bus/usb/devices/2-1/idProduct', '9302\n')
    facts = _hardware.probe(HostView(str(root)), machine='aarch64')
    assert facts['hardware_class'] == 'jetson_orin'
    assert facts['accelerators'] == [
        {'kind': 'tegra_igpu', 'soc': 'tegra234'},
        {'kind': 'edgetpu_usb', 'usb_id': '18d1:9302', 'firmware_loaded': True}]


def test_edge_tpu_wins_over_the_raspberry_pi_it_is_plugged_into(hardware_fixture):
    facts = _hardware.probe(HostView(hardware_fixture('coral_usb_rpi4_runtime')), machine='aarch64')
    assert facts['model'].startswith('Raspberry Pi 4')
    assert facts['hardware_class'] == 'coral'


def test_coral_dev_board_by_device_tree_alone(tmp_path, hardware_fixture):
    """The apex driver not bound and no PCI entry: the Phanbell model still names the board."""
    root = tmp_path / 'root'
    shutil.copytree(hardware_fixture('coral_dev_board'), str(root))
    shutil.rmtree(str(root / 'sys' / 'bus' / 'pci'))
    shutil.rmtree(str(root / 'dev'))
    facts = _hardware.probe(HostView(str(root)), machine='aarch64')
    assert facts['hardware_class'] == 'coral'
    assert facts['class_evidence'] == "Coral Dev Board device-tree model 'Freescale i.MX8MQ Phanbell'"
    assert facts['accelerators'] == []
    # The compatible string alone is enough too.
    assert _hardware.classify(None, ['fsl,imx8mq-phanbell', 'fsl,imx8mq'], None, [])[0] == 'coral'


def test_apex_device_node_without_pci_entry(tmp_path):
    write(tmp_path, '/dev/apex_0', '')
    facts = _hardware.probe(HostView(str(tmp_path)), machine='x86_64')
    assert facts['accelerators'] == [{'kind': 'edgetpu_pcie', 'device': '/dev/apex_0'}]
    assert (facts['hardware_class'], facts['class_evidence']) == ('coral', 'Edge TPU /dev/apex_0')


def test_nvidia_3d_controller_is_a_dgpu(tmp_path):
    # Data-center GPUs without a display output report PCI class 0x0302 (3D controller).
    for name, value in (('vendor', '0x10de'), ('device', '0x20b1'), ('class', '0x030200')):
        write(tmp_path, '/sys/bus/pci/devices/0000:17:00.0/' + name, value + '\n')
    facts = _hardware.probe(HostView(str(tmp_path)), machine='x86_64')
    assert facts['accelerators'] == [{'kind': 'nvidia_dgpu', 'pci_slot': '0000:17:00.0', 'pci_id': '10de:20b1'}]
    assert facts['hardware_class'] == 'generic'


def test_no_dgpu_reported_on_a_tegra(tmp_path, hardware_fixture):
    """An NVIDIA display-class PCI function on a Tegra board is not reported as a dGPU (the code's own rule)."""
    root = tmp_path / 'root'
    shutil.copytree(hardware_fixture('jetson_agx_orin_jp512'), str(root))
    for name, value in (('vendor', '0x10de'), ('device', '0x2504'), ('class', '0x030000')):
        write(root, '/sys/bus/pci/devices/0005:01:00.0/' + name, value + '\n')
    facts = _hardware.probe(HostView(str(root)), machine='aarch64')
    assert [a['kind'] for a in facts['accelerators']] == ['tegra_igpu']
    # Without the Tegra compatible the same function is a dGPU.
    os.remove(str(root / 'proc' / 'device-tree' / 'compatible'))
    os.remove(str(root / 'etc' / 'nv_tegra_release'))
    os.remove(str(root / 'proc' / 'device-tree' / 'model'))
    facts = _hardware.probe(HostView(str(root)), machine='aarch64')
    assert facts['accelerators'] == [{'kind': 'nvidia_dgpu', 'pci_slot': '0005:01:00.0', 'pci_id': '10de:2504'}]


def test_unknown_usb_and_pci_devices_are_not_accelerators(tmp_path):
    write(tmp_path, '/sys/bus/usb/devices/1-1/idVendor', '18d1\n')      # Google, but not the Edge TPU
    write(tmp_path, '/sys/bus/usb/devices/1-1/idProduct', '4ee7\n')
    write(tmp_path, '/sys/bus/pci/devices/0000:03:00.0/vendor', '0x1ac1\n')
    write(tmp_path, '/sys/bus/pci/devices/0000:03:00.0/device', '0x1234\n')
    assert _hardware.probe(HostView(str(tmp_path)), machine='x86_64')['accelerators'] == []


# --- cpu, memory, os, arch ------------------------------------------------------------------

@pytest.mark.parametrize('online, count', [
    ('0-3\n', 4), ('0-3,6\n', 5), ('0\n', 1), ('0-1,4-7\n', 6), ('0-11', 12),
])
def test_cpu_count(tmp_path, online, count):
    write(tmp_path, '/sys/devices/system/cpu/online', online)
    assert _hardware.cpu_count(HostView(str(tmp_path))) == count


@pytest.mark.parametrize('online', [None, '', 'garbage\n', '3-\n'])
def test_cpu_count_falls_back_to_os_cpu_count(tmp_path, online):
    if online is not None:
        write(tmp_path, '/sys/devices/system/cpu/online', online)
    assert _hardware.cpu_count(HostView(str(tmp_path))) == os.cpu_count()


@pytest.mark.parametrize('meminfo, expected', [
    ('MemTotal:        4058596 kB\nMemFree:  1 kB\n', 4058596 * KIB),
    ('MemFree:          812345 kB\nMemTotal:        7802148 kB\n', 7802148 * KIB),
    ('MemFree:          812345 kB\n', None),
    ('MemTotal:\n', None),
])
def test_memory_bytes(tmp_path, meminfo, expected):
    write(tmp_path, '/proc/meminfo', meminfo)
    assert _hardware.memory_bytes(HostView(str(tmp_path))) == expected


def test_os_release_falls_back_to_usr_lib(tmp_path):
    write(tmp_path, '/usr/lib/os-release', "ID=debian\nVERSION_ID='12'\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n")
    assert _hardware.os_release(HostView(str(tmp_path))) == BOOKWORM


@pytest.mark.parametrize('machine, arch', [
    ('x86_64', 'amd64'), ('AMD64', 'amd64'), ('aarch64', 'arm64'), ('arm64', 'arm64'),
    ('armv7l', 'armhf'), ('armv6l', 'armhf'), ('riscv64', 'riscv64'),
])
def test_arch_mapping(tmp_path, machine, arch):
    facts = _hardware.probe(HostView(str(tmp_path)), machine=machine)
    assert (facts['machine'], facts['arch']) == (machine, arch)


def test_machine_defaults_to_platform_machine(tmp_path):
    assert _hardware.probe(HostView(str(tmp_path)))['machine'] == platform.machine()


# --- inventory override ---------------------------------------------------------------------

@pytest.mark.parametrize('override', _hardware.HARDWARE_CLASSES)
def test_apply_override(hardware_fixture, override):
    facts = _hardware.probe(HostView(hardware_fixture('jetson_nano_jp461')), machine='aarch64')
    overridden = _hardware.apply_override(facts, override)
    assert overridden['hardware_class'] == override
    assert overridden['detected_class'] == 'jetson_nano'
    assert overridden['class_source'] == 'inventory'
    assert overridden['class_evidence'] == facts['class_evidence']
    # The detected facts are left as they were.
    assert (facts['hardware_class'], facts['class_source']) == ('jetson_nano', 'detected')


@pytest.mark.parametrize('bad', ['jetson_xavier', 'Jetson_Nano', '', None])
def test_apply_override_unknown_class(bad):
    with pytest.raises(ValueError) as err:
        _hardware.apply_override({'hardware_class': 'generic'}, bad)
    message = str(err.value)
    assert repr(bad) in message
    assert 'known classes: jetson_nano, jetson_orin, raspberry_pi, coral, generic' in message


# --- HostView and evidence_root -------------------------------------------------------------

def test_hostview_paths(tmp_path):
    view = HostView(str(tmp_path / 'root'), str(tmp_path / 'evidence'))
    assert view.path('/proc/meminfo') == str(tmp_path / 'root' / 'proc' / 'meminfo')
    assert view.path('/proc/device-tree/model', evidence=True) == str(tmp_path / 'evidence' / 'proc' / 'device-tree' / 'model')
    plain = HostView(str(tmp_path / 'root'))
    assert plain.path('/dev/apex_0', evidence=True) == str(tmp_path / 'root' / 'dev' / 'apex_0')
    assert HostView(None).path('/etc/os-release') == '/etc/os-release'
    assert HostView().root == '/'


def test_hostview_read(tmp_path):
    write(tmp_path, '/a', b'  one\x00two\x00\n')
    write(tmp_path, '/bad', b'\xff\xfe ok')
    os.mkdir(str(tmp_path / 'dir'))
    view = HostView(str(tmp_path))
    assert view.read('/a') == 'one\ntwo'
    assert view.read('/bad') == '\ufffd\ufffd ok'
    assert view.read('/missing') is None
    assert view.read('/dir') is None
    assert view.listdir('/missing') == []


def test_evidence_root(tmp_path, hardware_fixture):
    """Hardware evidence comes from below evidence_root; memory, CPUs and /etc from root.

    The root is made to contradict the evidence tree everywhere, so each fact shows where it was read.
    """
    root = tmp_path / 'root'
    write(root, '/proc/meminfo', 'MemTotal:        1000000 kB\n')
    write(root, '/sys/devices/system/cpu/online', '0-2\n')
    write(root, '/etc/os-release', 'ID=fedora\nVERSION_ID=40\nPRETTY_NAME="Fedora Linux 40"\n')
    write(root, '/etc/nv_tegra_release', '# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref\n')
    # Decoy hardware evidence in the root, which must not be read.
    write(root, '/proc/device-tree/model', 'Raspberry Pi 4 Model B Rev 1.4\0')
    write(root, '/proc/device-tree/compatible', 'raspberrypi,4-model-b\0brcm,bcm2711\0')
    write(root, '/sys/bus/usb/devices/2-1/idVendor', '18d1\n')
    write(root, '/sys/bus/usb/devices/2-1/idProduct', '9302\n')
    write(root, '/dev/apex_0', '')

    evidence = hardware_fixture('jetson_orin_nano_jp60')   # has its own meminfo, os-release and R36.3.0 release
    facts = _hardware.probe(HostView(str(root), evidence), machine='aarch64')

    assert facts['hardware_class'] == 'jetson_orin'
    assert facts['class_evidence'] == 'device-tree compatible nvidia,tegra234'
    assert facts['model'] == 'NVIDIA Jetson Orin Nano Developer Kit'
    assert facts['accelerators'] == [{'kind': 'tegra_igpu', 'soc': 'tegra234'}]
    assert facts['memory_bytes'] == 1000000 * KIB
    assert facts['cpu_count'] == 3
    assert facts['os'] == {'id': 'fedora', 'version_id': '40', 'pretty_name': 'Fedora Linux 40'}
    assert facts['l4t_version'] == '32.7.1'
    assert facts['jetpack_version'] == '4.6.1'


def test_evidence_root_dmi(tmp_path, hardware_fixture):
    root = tmp_path / 'root'
    write(root, '/sys/class/dmi/id/sys_vendor', 'QEMU\n')
    write(root, '/sys/class/dmi/id/product_name', 'Standard PC (Q35 + ICH9, 2009)\n')
    facts = _hardware.probe(HostView(str(root), hardware_fixture('amd64_nvidia_dgpu')), machine='x86_64')
    assert facts['model'] == 'Dell Inc. Precision 3660'
    assert [a['kind'] for a in facts['accelerators']] == ['nvidia_dgpu']
    assert facts['memory_bytes'] is None
