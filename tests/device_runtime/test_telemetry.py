"""The telemetry collector (device.sensors, device.telemetry) on real fixture trees: each simulated class's
sysfs strings (sim/evidence/<class>), a laptop's batteries and coretemp, an absent and a malformed tree.

Hardware sensors are out of reach here, so the kernel files are fixture trees read through SysView; psutil,
the store, the OTA history (real SQLite) and the device root are real.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edgeai_runtime.device import sensors
from edgeai_runtime.device.config import RuntimeConfig, TelemetryConfig
from edgeai_runtime.device.journal import History
from edgeai_runtime.device.telemetry import Collector
from support.digits_store import serving_store

REPO = Path(__file__).resolve().parents[2]
EVIDENCE = REPO / "sim" / "evidence"
LAPTOP = Path(__file__).resolve().parent / "fixtures" / "sensors" / "x86_laptop"
NOT_THROTTLED = {"under_voltage": False, "arm_frequency_capped": False, "throttled": False, "soft_temp_limit": False}


def view(path) -> sensors.SysView:
    return sensors.SysView(str(path))


@pytest.fixture(scope="module")
def restored(tmp_path_factory):
    """A copy of sim/evidence with the real sysfs names (``%3A`` back to ``:``), as on the devices."""
    dest = tmp_path_factory.mktemp("evidence") / "evidence"
    shutil.copytree(EVIDENCE, dest)
    for root, dirs, files in os.walk(dest, topdown=False):
        for name in dirs + files:
            if "%3A" in name:
                os.rename(os.path.join(root, name), os.path.join(root, name.replace("%3A", ":")))
    assert (dest / "raspberry_pi/sys/bus/platform/drivers/raspberrypi-firmware/soc:firmware/get_throttled").is_file()
    return dest


@pytest.fixture(params=["sim", "restored"])
def evidence(request, restored):
    """Both trees: what the simulated devices mount, and the same with the devices' real names."""
    return EVIDENCE if request.param == "sim" else restored


def test_raspberry_pi(evidence):
    found = sensors.read_all(view(evidence / "raspberry_pi"))
    assert found["thermal_zones"] == [{"zone": "thermal_zone0", "type": "cpu-thermal", "celsius": pytest.approx(48.686)}]
    assert [(c["chip"], c["name"]) for c in found["hwmon"]] == [("hwmon0", "cpu_thermal"), ("hwmon1", "rpi_volt")]
    assert found["hwmon"][0]["sensors"] == [{"sensor": "temp1", "kind": "temp", "label": None,
                                             "celsius": pytest.approx(48.686)}]
    assert found["hwmon"][1]["sensors"] == [{"sensor": "in0", "kind": "in", "label": None, "alarms": {"lcrit": True}}]
    # 50000: under-voltage (bit 16) and throttling (bit 18) have occurred since boot; nothing holds now.
    assert found["rpi_throttled"] == {
        "source": "get_throttled", "raw": 0x50000, "now": NOT_THROTTLED,
        "since_boot": dict(NOT_THROTTLED, under_voltage=True, throttled=True)}
    assert found["power_supplies"] is None and found["jetson_rails"] is None


def test_coral_is_a_pi_that_never_throttled(evidence):
    found = sensors.read_all(view(evidence / "coral"))
    assert found["rpi_throttled"] == {"source": "get_throttled", "raw": 0, "now": NOT_THROTTLED,
                                      "since_boot": NOT_THROTTLED}
    assert found["thermal_zones"][0]["celsius"] == pytest.approx(51.121)


def test_pi_without_the_firmware_file_falls_back_to_rpi_volt(tmp_path):
    """Newer kernels deprecate get_throttled; raspberrypi-hwmon's alarm still says under-voltage since boot."""
    shutil.copytree(EVIDENCE / "raspberry_pi", tmp_path / "pi")
    shutil.rmtree(tmp_path / "pi/sys/bus/platform")
    throttled = sensors.read_all(view(tmp_path / "pi"))["rpi_throttled"]
    assert throttled["source"] == "rpi_volt" and throttled["raw"] is None
    assert throttled["now"] == {k: None for k in NOT_THROTTLED}
    assert throttled["since_boot"] == {"under_voltage": True, "arm_frequency_capped": None, "throttled": None,
                                       "soft_temp_limit": None}


def test_jetson_nano(evidence):
    found = sensors.read_all(view(evidence / "jetson_nano"))
    assert [(z["type"], z["celsius"]) for z in found["thermal_zones"]] == [
        ("AO-therm", 42.5), ("CPU-therm", 36.5), ("GPU-therm", 35.0), ("PLL-therm", 34.0), ("PMIC-Die", 100.0),
        ("thermal-fan-est", 35.75)]
    rails = found["jetson_rails"]
    assert [r["rail"] for r in rails] == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]
    assert rails[0] == {"rail": "POM_5V_IN", "source": "ina3221x 6-0040", "voltage_volts": pytest.approx(5.008),
                        "current_amperes": pytest.approx(0.6), "power_watts": pytest.approx(3.004)}
    assert found["hwmon"] is None and found["rpi_throttled"] is None and found["power_supplies"] is None


def test_jetson_orin(evidence):
    found = sensors.read_all(view(evidence / "jetson_orin"))
    assert [z["type"] for z in found["thermal_zones"]] == ["cpu-thermal", "gpu-thermal", "soc0-thermal", "soc1-thermal",
                                                           "soc2-thermal", "tj-thermal"]
    rails = {r["rail"]: r for r in found["jetson_rails"]}
    assert list(rails) == ["VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"]
    assert rails["VDD_IN"]["source"] == "ina3221 1-0040"
    assert rails["VDD_IN"]["voltage_volts"] == pytest.approx(5.072)
    assert rails["VDD_IN"]["current_amperes"] == pytest.approx(1.136)
    assert rails["VDD_IN"]["power_watts"] == pytest.approx(5.072 * 1.136)  # V x I: the hwmon driver has no power
    chip = found["hwmon"][0]
    assert chip["name"] == "ina3221"
    assert {s["sensor"]: s["label"] for s in chip["sensors"]} == {
        "curr1": None, "curr2": None, "curr3": None, "in1": "VDD_IN", "in2": "VDD_CPU_GPU_CV", "in3": "VDD_SOC"}


def test_agx_orin_unconnected_channels_are_skipped(tmp_path):
    base = tmp_path / "sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon2"
    base.mkdir(parents=True)
    for ch, label in ((1, "NC"), (2, "VDDQ_VDD2_1V8AO"), (3, "NC")):
        (base / ("in%d_label" % ch)).write_text(label + "\n")
        (base / ("in%d_input" % ch)).write_text("5000\n")
        (base / ("curr%d_input" % ch)).write_text("200\n")
    assert [r["rail"] for r in sensors.jetson_rails(view(tmp_path))] == ["VDDQ_VDD2_1V8AO"]


def test_generic_vm_has_no_sensors(evidence):
    assert sensors.read_all(view(evidence / "generic")) == {
        "thermal_zones": None, "hwmon": None, "power_supplies": None, "rpi_throttled": None, "jetson_rails": None}


def test_laptop_batteries_mains_and_coretemp():
    found = sensors.read_all(view(LAPTOP))
    supplies = {s["name"]: s for s in found["power_supplies"]}
    assert supplies["AC"] == {"name": "AC", "type": "Mains", "online": False, "present": None, "status": None,
                              "capacity_ratio": None, "voltage_volts": None, "current_amperes": None,
                              "power_watts": None, "energy_joules": None, "energy_full_joules": None}
    battery = supplies["BAT0"]
    assert battery["type"] == "Battery" and battery["status"] == "Discharging" and battery["present"] is True
    assert battery["capacity_ratio"] == pytest.approx(0.87)
    assert battery["energy_joules"] == pytest.approx(43.52 * 3600)  # 43.52 Wh
    assert battery["energy_full_joules"] == pytest.approx(50.02 * 3600)
    assert battery["power_watts"] == pytest.approx(8.446)
    assert battery["voltage_volts"] == pytest.approx(12.135)
    coretemp = next(c for c in found["hwmon"] if c["name"] == "coretemp")
    assert coretemp["chip"] == "hwmon4"
    assert [(s["label"], s["celsius"], s["alarms"]) for s in coretemp["sensors"]] == [
        ("Package id 0", 47.0, {"crit": False}), ("Core 0", 44.0, {"crit": False}), ("Core 1", 46.0, {"crit": False})]
    assert [z["type"] for z in found["thermal_zones"]] == ["acpitz", "x86_pkg_temp"]


def test_absent_root_is_all_null(tmp_path):
    assert set(sensors.read_all(view(tmp_path / "nothing")).values()) == {None}


@pytest.fixture
def malformed(tmp_path):
    """Every family present, every value garbage, or a directory where a file should be (reads fail)."""
    sys = tmp_path / "sys"
    (sys / "class/thermal/thermal_zone0").mkdir(parents=True)
    (sys / "class/thermal/thermal_zone0/temp").write_text("N/A\n")
    (sys / "class/thermal/thermal_zone1/type").mkdir(parents=True)  # a directory: EISDIR on read
    (sys / "class/thermal/thermal_zone1/temp").write_bytes(b"\xff\xfe\n")
    chip = sys / "class/hwmon/hwmon0"
    chip.mkdir(parents=True)
    (chip / "temp1_input").write_text("")
    (chip / "in0_lcrit_alarm").write_text("maybe\n")
    (chip / "fan1_input").write_text("1200\n")
    battery = sys / "class/power_supply/BAT0"
    battery.mkdir(parents=True)
    (battery / "capacity").write_text("150\n")  # out of range: not a ratio
    (battery / "voltage_now").write_text("12000000\n")
    (battery / "current_now").write_text("-1500000\n")  # discharging, signed: power from V x |I|
    firmware = sys / "bus/platform/drivers/raspberrypi-firmware/soc:firmware"
    firmware.mkdir(parents=True)
    (firmware / "get_throttled").write_text("0xzz\n")
    (sys / "bus/platform/drivers/raspberrypi-firmware/bind").write_text("")
    iio = sys / "bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    iio.mkdir(parents=True)
    (iio / "rail_name_0").write_text("POM_5V_IN\n")
    (iio / "in_voltage0_input").write_text("five\n")
    (sys / "bus/i2c/drivers/ina3221x/6-0040/uevent").write_text("DRIVER=ina3221x\n")
    return tmp_path


def test_malformed_values_are_null_and_nothing_raises(malformed):
    found = sensors.read_all(view(malformed))
    assert found["thermal_zones"] == [{"zone": "thermal_zone0", "type": None, "celsius": None},
                                      {"zone": "thermal_zone1", "type": None, "celsius": None}]
    assert found["hwmon"] == [{"chip": "hwmon0", "name": None, "sensors": [
        {"sensor": "fan1", "kind": "fan", "label": None, "rpm": 1200.0},
        {"sensor": "temp1", "kind": "temp", "label": None, "celsius": None},
        {"sensor": "in0", "kind": "in", "label": None, "alarms": {"lcrit": None}}]}]
    battery = found["power_supplies"][0]
    assert battery["capacity_ratio"] is None
    assert battery["power_watts"] == pytest.approx(18.0)
    assert found["rpi_throttled"]["raw"] is None and set(found["rpi_throttled"]["now"].values()) == {None}
    assert found["jetson_rails"] == [{"rail": "POM_5V_IN", "source": "ina3221x 6-0040", "voltage_volts": None,
                                      "current_amperes": None, "power_watts": None}]


def test_decode_throttled_bits():
    decoded = sensors.decode_throttled(0x50005)
    assert decoded["now"] == dict(NOT_THROTTLED, under_voltage=True, throttled=True)
    assert decoded["since_boot"] == dict(NOT_THROTTLED, under_voltage=True, throttled=True)
    assert sensors.decode_throttled(0x80008)["now"]["soft_temp_limit"] is True
    assert sensors.decode_throttled(0x20000)["since_boot"]["arm_frequency_capped"] is True


# -- the collector ---------------------------------------------------------------------------------------------

SAMPLE_KEYS = {"schema", "device_id", "hardware_class", "time", "boot_id", "uptime_seconds", "cpu", "memory",
               "filesystems", "network", "sensors", "service", "inference", "models", "ota"}


@pytest.fixture
def device_root(tmp_path):
    root = tmp_path / "device"
    (root / "etc").mkdir(parents=True)
    return root


def collector(root, evidence="/", **kwargs) -> Collector:
    config = TelemetryConfig(root=str(root), device_id="dev-1", evidence_root=str(evidence))
    return Collector(config, RuntimeConfig(root=str(root), hardware_class="raspberry_pi"), **kwargs)


def test_sample_shape_without_a_service(device_root):
    sample = collector(device_root, EVIDENCE / "raspberry_pi").sample()
    assert set(sample) == SAMPLE_KEYS
    json.dumps(sample, allow_nan=False)  # JSON-able, every value finite
    assert sample["device_id"] == "dev-1" and sample["hardware_class"] == "raspberry_pi"
    assert sample["sensors"]["rpi_throttled"]["raw"] == 0x50000
    cpu = sample["cpu"]
    assert cpu["count"] == os.cpu_count() and 0 <= cpu["use_ratio"] <= 1 and cpu["use_window_seconds"] is None
    memory = sample["memory"]
    assert 0 < memory["available_bytes"] <= memory["total_bytes"] and 0 <= memory["used_ratio"] <= 1
    roots = [fs for fs in sample["filesystems"] if fs["device_root"]]
    assert len(roots) == 1 and roots[0]["size_bytes"] > 0 and 0 <= roots[0]["avail_bytes"] <= roots[0]["size_bytes"]
    assert all(nic["interface"] != "lo" for nic in sample["network"])
    assert sample["service"] == {"running": False, "pid": None, "cpu_seconds": None, "resident_bytes": None,
                                 "open_fds": None, "started": None}
    assert sample["inference"] is None  # no service: not zero requests, unknown
    assert sample["models"] == []
    assert sample["ota"] == {"last": None, "readable": True}
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        assert sample["boot_id"] == f.read().strip()


def test_cpu_use_is_over_the_time_between_samples(device_root):
    made = collector(device_root)
    made.sample()
    second = made.sample()["cpu"]
    assert second["use_window_seconds"] is not None and second["use_window_seconds"] >= 0
    assert second["use_ratio"] is None or 0 <= second["use_ratio"] <= 1


def test_sample_reads_the_store_and_the_last_ota_outcome(device_root, digits):
    store = serving_store(device_root, digits, ("1.0.0", "2.0.0"))
    store.activate("digits", "2.0.0")
    history = History(str(device_root / "state" / "history.sqlite"))
    history.record("digits", "1.0.0", None, "push", "committed", None, {"stage": 0.1})
    history.record("digits", "2.0.0", "1.0.0", "push", "rolled_back", "watch: error rate 0.30 over 0.05",
                   {"stage": 0.1}, phase="watch")
    sample = collector(device_root).sample()
    assert sample["models"] == [{"name": "digits", "active": "2.0.0", "previous": "1.0.0"}]
    last = sample["ota"]["last"]
    assert (last["name"], last["version"], last["outcome"], last["reason"], last["phase"]) == (
        "digits", "2.0.0", "rolled_back", "watch: error rate 0.30 over 0.05", "watch")


def test_unreadable_history_is_reported_not_raised(device_root):
    (device_root / "state").mkdir()
    (device_root / "state" / "history.sqlite").write_bytes(b"this is not a database" * 100)
    assert collector(device_root).sample()["ota"] == {"last": None, "readable": False}


def test_inference_from_an_in_process_source(device_root):
    stats = {"window_seconds": 300.0, "model_stats": [{
        "name": "digits", "version": "1.0.0", "inference_stats": {"success": {"count": 9, "ns": 1}, "fail": {"count": 1, "ns": 1}},
        "window": {"requests": 10, "errors": 1, "latency_p50_seconds": 0.002, "latency_p95_seconds": 0.004}}]}
    sample = collector(device_root, stats=lambda: stats).sample()
    assert sample["inference"] == [{"model": "digits", "version": "1.0.0", "window_seconds": 300.0, "requests": 10,
                                    "errors": 1, "latency_p50_seconds": 0.002, "latency_p95_seconds": 0.004,
                                    "requests_total": 10, "errors_total": 1}]
