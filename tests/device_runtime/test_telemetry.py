"""The telemetry collector (device.sensors, device.telemetry) on real fixture trees: each simulated class's
sysfs strings (sim/evidence/<class>), a laptop's batteries and coretemp, an absent and a malformed tree.

Hardware sensors are out of reach here, so the kernel files are fixture trees read through SysView; psutil,
the store, the OTA history (real SQLite) and the device root are real.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeai_runtime.device import sensors
from edgeai_runtime.device.config import RuntimeConfig, TelemetryConfig
from edgeai_runtime.device.journal import History
from edgeai_runtime.device.outbox import Outbox
from edgeai_runtime.device.exposition import TEXTFILE_NAME, render, write_textfile
from edgeai_runtime.device.telemetry import Collector
from edgeai_runtime.service.stats import InferenceStats
from support.digits_store import serving_store
from support.service import runtime, start_service, write_config

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
               "filesystems", "network", "sensors", "service", "inference", "models", "ota", "outbox"}


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
    assert sample["outbox"]["records"] == 0 and sample["outbox"]["evicted_records"] == {
        "ota": 0, "rollout": 0, "telemetry": 0, "inference": 0}
    assert not (device_root / "outbox").exists()  # reading the status creates no outbox
    with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
        assert sample["boot_id"] == f.read().strip()


def test_the_outbox_backlog_and_its_evictions_are_in_the_sample_and_the_series(device_root):
    config = TelemetryConfig(root=str(device_root), device_id="dev-1", outbox_max_bytes=1024 ** 2)
    outbox = Outbox.from_config(config)
    big = {"blob": "x" * 100_000}
    for _record in range(12):  # 1.2 MB of inference results into a 1 MiB cap: the oldest are evicted
        outbox.enqueue("inference", big)
    outbox.enqueue("ota", {"outcome": "succeeded"})
    sample = Collector(config, RuntimeConfig(root=str(device_root))).sample()
    status = outbox.status()
    assert sample["outbox"]["records"] == status["records"] and 0 < status["records"] < 13
    evicted = 13 - status["records"]
    assert sample["outbox"]["evicted_records"] == {"ota": 0, "rollout": 0, "telemetry": 0, "inference": evicted}
    series = {(m.name, s.name, tuple(sorted(s.labels.items()))): s.value
              for m in text_string_to_metric_families(render(sample).decode()) for s in m.samples}
    assert series[("edgeai_outbox_records", "edgeai_outbox_records", ())] == status["records"]
    assert series[("edgeai_outbox_evicted_records", "edgeai_outbox_evicted_records_total",
                   (("kind", "inference"),))] == evicted
    assert series[("edgeai_outbox_bytes", "edgeai_outbox_bytes", ())] <= 1024 ** 2


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
                                    "requests_total": 10, "errors_total": 1, "success_total": 9,
                                    "success_seconds_total": 1e-9}]


# -- the window (service/stats.py) ------------------------------------------------------------------------------

def test_window_percentiles_and_expiry():
    now = [1000.0]
    stats = InferenceStats(window_s=60.0, max_samples=1000, clock=lambda: now[0])
    for ms in range(1, 101):  # 1..100 ms
        stats.record("digits", "1.0.0", ms / 1000.0, True)
    stats.record("digits", "1.0.0", 0.5, False)
    entry = stats.snapshot()["model_stats"][0]
    assert entry["window"]["requests"] == 101 and entry["window"]["errors"] == 1
    assert entry["window"]["latency_p50_seconds"] == pytest.approx(0.050)  # nearest rank: the 50th of 100
    assert entry["window"]["latency_p95_seconds"] == pytest.approx(0.095)
    assert entry["inference_count"] == 100 and entry["inference_stats"]["fail"] == {"count": 1, "ns": 500000000}
    now[0] += 30
    stats.record("digits", "1.0.0", 0.2, True)
    narrow = stats.snapshot(window_s=10.0)  # a soak's window: only what came since it began
    assert narrow["window_seconds"] == 10.0
    assert narrow["model_stats"][0]["window"]["requests"] == 1
    assert narrow["model_stats"][0]["window"]["latency_p95_seconds"] == pytest.approx(0.2)
    for bad in (0.0, -1.0, 61.0):
        with pytest.raises(ValueError, match="the window must be within 0-60 seconds"):
            stats.snapshot(window_s=bad)
    now[0] += 61  # the window has passed; the totals stay
    entry = stats.snapshot()["model_stats"][0]
    assert entry["window"]["requests"] == 0 and entry["window"]["latency_p95_seconds"] is None
    assert entry["inference_count"] == 101


def test_window_is_bounded_and_forgets_unloaded_versions():
    stats = InferenceStats(window_s=60.0, max_samples=10)
    for _request in range(25):
        stats.record("digits", "1.0.0", 0.001, True)
    stats.track("digits", "2.0.0")
    snap = {e["version"]: e for e in stats.snapshot()["model_stats"]}
    assert snap["1.0.0"]["window"]["requests"] == 10 and snap["1.0.0"]["window"]["truncated"] is True
    assert snap["1.0.0"]["inference_count"] == 25
    assert snap["2.0.0"]["window"] == {"requests": 0, "errors": 0, "latency_p50_seconds": None,
                                       "latency_p95_seconds": None, "covered_seconds": 0.0, "truncated": False}
    stats.retain([("digits", "2.0.0")])
    assert [e["version"] for e in stats.snapshot()["model_stats"]] == ["2.0.0"]


# -- the outputs: the service's /metrics and /v2/models/stats, the textfile --------------------------------------

def promtool_check(data: bytes) -> None:
    """``promtool check metrics`` (Debian's prometheus package): the exposition parses and passes its lint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt install prometheus)")
    done = subprocess.run([promtool, "check", "metrics"], input=data, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()


def test_promtool_refuses_what_it_should():
    """The check can fail: a counter without _total and a gauge named like a summary's count are lint errors."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed")
    bad = b"# HELP edgeai_x_count x\n# TYPE edgeai_x_count gauge\nedgeai_x_count 1\n"
    assert subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True, check=False).returncode != 0


@dataclass
class Served:
    client: httpx.Client
    root: Path
    proc: subprocess.Popen


@pytest.fixture(scope="module")
def served(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("device")
    serving_store(root, digits)
    write_config(root, hardware_class="jetson_orin")
    (root / "etc" / "telemetry.json").write_text(json.dumps(
        {"device_id": "orin-7", "evidence_root": str(EVIDENCE / "jetson_orin"), "stats_window_s": 120}))
    proc, base = start_service(root)
    with httpx.Client(base_url=base, timeout=30) as client:
        yield Served(client, root, proc)
    proc.terminate()
    proc.wait(timeout=30)


def infer(client, x):
    return client.post("/v2/models/digits/infer", json={"inputs": [
        {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]})


def test_models_stats_counts_the_window(served, digits):
    for row in digits.X_test[:12]:
        assert infer(served.client, row.reshape(1, 64).astype("float32")).status_code == 200
    assert infer(served.client, np.zeros((1, 63), dtype="float32")).status_code == 400  # wrong shape
    answer = served.client.get("/v2/models/stats")
    assert answer.status_code == 200
    body = answer.json()
    assert body["window_seconds"] == 120
    entry = next(e for e in body["model_stats"] if (e["name"], e["version"]) == ("digits", "1.0.0"))
    assert entry["inference_count"] >= 12 and entry["inference_stats"]["fail"]["count"] >= 1
    window = entry["window"]
    assert window["requests"] >= 13 and window["errors"] >= 1
    assert 0 < window["latency_p50_seconds"] <= window["latency_p95_seconds"] < 10
    assert entry["last_inference"] > 0
    narrow = served.client.get("/v2/models/stats", params={"window": "60"}).json()
    assert narrow["window_seconds"] == 60
    for bad in ("0", "121", "soon"):
        refused = served.client.get("/v2/models/stats", params={"window": bad})
        assert refused.status_code == 400 and refused.json()["error"].startswith("window: "), refused.text


def test_metrics_carry_the_telemetry_and_pass_promtool(served, digits):
    assert infer(served.client, digits.X_test[:1].astype("float32")).status_code == 200
    answer = served.client.get("/metrics")
    assert answer.status_code == 200
    promtool_check(answer.content)
    text = answer.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    # node_exporter's names, from the Orin's evidence tree
    zones = {s.labels["type"]: s.value for s in families["node_thermal_zone_temp"].samples}
    assert zones["cpu-thermal"] == pytest.approx(45.5) and zones["tj-thermal"] == pytest.approx(45.5)
    assert any(s.labels == {"chip": "hwmon1", "sensor": "in1"} for s in families["node_hwmon_in_volts"].samples)
    rails = {s.labels["rail"]: s.value for s in families["edgeai_jetson_rail_power_watts"].samples}
    assert rails["VDD_IN"] == pytest.approx(5.072 * 1.136)
    assert families["edgeai_device_info"].samples[0].labels == {"device_id": "orin-7", "hardware_class": "jetson_orin"}
    assert families["edgeai_service_up"].samples[0].value == 1
    assert families["edgeai_service_resident_memory_bytes"].samples[0].value > 10 * 1024 ** 2
    latency = [s for s in families["edgeai_inference_latency_seconds"].samples if s.labels["model"] == "digits"]
    assert {s.labels.get("quantile") for s in latency if s.name == "edgeai_inference_latency_seconds"} == {"0.5", "0.95"}
    assert next(s.value for s in latency if s.name == "edgeai_inference_latency_seconds_count") >= 1
    versions = [s.labels for s in families["edgeai_model_version_info"].samples]
    assert {"model": "digits", "version": "1.0.0", "role": "active"} in versions
    # what was there before stays
    assert "edge_ai_inferences" in families and "edge_ai_inference_duration_seconds" in families


def test_a_scrape_is_cheap(served):
    """Sampling on each scrape (there is no timer): the scrape stays in the milliseconds."""
    served.client.get("/metrics")
    took = []
    for _scrape in range(20):
        started = time.perf_counter()
        assert served.client.get("/metrics").status_code == 200
        took.append(time.perf_counter() - started)
    took.sort()
    assert took[len(took) // 2] < 0.25, "median scrape %.1f ms" % (took[len(took) // 2] * 1000)


def test_stats_are_token_guarded_and_bad_telemetry_settings_never_stop_the_service(tmp_path):
    root = tmp_path / "device"
    (root / "models").mkdir(parents=True)
    write_config(root, token="s3cret")
    (root / "etc" / "telemetry.json").write_text('{"stats_window_s": -1}')
    proc, base = _start_unready(root)
    try:
        assert httpx.get(base + "/v2/models/stats", timeout=10).status_code == 401
        answer = httpx.get(base + "/v2/models/stats", headers={"authorization": "Bearer s3cret"}, timeout=10)
        assert answer.status_code == 200
        assert answer.json() == {"window_seconds": 300.0, "max_samples": 4096, "model_stats": []}
        assert httpx.get(base + "/metrics", headers={"authorization": "Bearer s3cret"}, timeout=10).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert "telemetry settings ignored, using the defaults" in (root / "service.log").read_text()


def _start_unready(root):
    """A service with no model (never ready): wait until it is live instead."""
    config = json.loads((root / "etc" / "runtime.json").read_text())
    log = open(root / "service.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "edgeai_runtime.cli", "--root", str(root), "serve"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = "http://127.0.0.1:%d" % config["port"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(base + "/v2/health/live", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail("service never came up:\n" + (root / "service.log").read_text())


def test_textfile_has_only_the_edge_series_and_passes_promtool(tmp_path, device_root):
    sample = collector(device_root, EVIDENCE / "raspberry_pi").sample()
    tmp_path = tmp_path / "textfile"
    tmp_path.mkdir()
    assert write_textfile(str(tmp_path), sample) is True
    data = (tmp_path / TEXTFILE_NAME).read_bytes()
    promtool_check(data)
    names = {f.name for f in text_string_to_metric_families(data.decode())}
    assert names and not [n for n in names if n.startswith("node_")], names
    assert "edgeai_rpi_throttled" in names and "edgeai_cpu_use_ratio" in names
    assert write_textfile(str(tmp_path), sample) is False  # the same sample: the file is left alone
    assert [p.name for p in tmp_path.iterdir()] == [TEXTFILE_NAME]  # no temp file left behind


def test_every_class_renders_valid_exposition(evidence, device_root):
    for cls in ("raspberry_pi", "coral", "jetson_nano", "jetson_orin", "generic"):
        promtool_check(render(collector(device_root, evidence / cls).sample()))
    promtool_check(render(collector(device_root, LAPTOP).sample()))


# -- the command line --------------------------------------------------------------------------------------------

def test_cli_collect_finds_the_running_service(served, digits, tmp_path):
    assert infer(served.client, digits.X_test[:1].astype("float32")).status_code == 200
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    done = runtime(served.root, "telemetry", "collect", "--textfile", str(textfile))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["changed"] is True
    sample = result["telemetry"]
    assert set(sample) == SAMPLE_KEYS and sample["device_id"] == "orin-7"
    service = sample["service"]
    assert service["running"] is True and service["pid"] == served.proc.pid
    assert service["cpu_seconds"] > 0 and service["resident_bytes"] > 10 * 1024 ** 2 and service["open_fds"] > 3
    entry = next(e for e in sample["inference"] if e["model"] == "digits")
    assert entry["version"] == "1.0.0" and entry["requests"] >= 1 and entry["window_seconds"] == 120
    assert sample["models"] == [{"name": "digits", "active": "1.0.0", "previous": None}]
    assert sample["sensors"]["jetson_rails"][0]["rail"] == "VDD_IN"
    promtool_check((textfile / TEXTFILE_NAME).read_bytes())


def test_cli_collect_without_a_service_and_a_bad_textfile_dir(device_root, tmp_path):
    done = runtime(device_root, "telemetry", "collect")
    assert done.returncode == 0, done.stderr
    sample = json.loads(done.stdout.splitlines()[-1])["telemetry"]
    assert sample["service"]["running"] is False and sample["inference"] is None
    done = runtime(device_root, "telemetry", "collect", "--textfile", str(tmp_path / "missing"))
    assert done.returncode == 1
    failure = json.loads(done.stdout.splitlines()[-1])
    assert failure["failed"] is True and failure["reason"] == "textfile_failed"
    assert str(tmp_path / "missing") in failure["msg"] and "No such file or directory" in failure["msg"]
