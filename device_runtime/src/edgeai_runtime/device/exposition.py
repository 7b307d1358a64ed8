"""A telemetry sample (device.telemetry) as Prometheus series: one custom collector for the service's /metrics
and for node_exporter's textfile collector directory (``write_textfile``).

Names: node_exporter's where it has a series for the same thing in the same unit (``node_thermal_zone_temp``,
``node_hwmon_temp_celsius``, ``node_power_supply_online``, ``node_filesystem_avail_bytes``,
``node_network_receive_bytes_total``, ...), ``edgeai_*`` for the rest. The textfile leaves the ``node_*``
series out (``include_node=False``): node_exporter exports those itself, and the same series from two of
its collectors would fail its scrape. docs/telemetry.md lists every series with its unit.

The collector samples when it is collected, that is on a scrape: no timer, nothing done while idle.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Type, TypeVar

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edgeai_runtime.fsutil import write_atomic

Sample = Dict[str, Any]
TEXTFILE_NAME = "edgeai.prom"
_HWMON_SERIES = {"temp": ("node_hwmon_temp_celsius", "celsius", "Hardware monitor for temperature (input)."),
                 "in": ("node_hwmon_in_volts", "volts", "Hardware monitor for voltage (input)."),
                 "curr": ("node_hwmon_curr_amps", "amperes", "Hardware monitor for current (input)."),
                 "power": ("node_hwmon_power_watt", "watts", "Hardware monitor for power (input)."),
                 "fan": ("node_hwmon_fan_rpm", "rpm", "Hardware monitor for fan revolutions per minute (input).")}


_F = TypeVar("_F", GaugeMetricFamily, CounterMetricFamily)


class _Families:
    """Gauges and counters by name, created on first use and yielded in that order."""

    def __init__(self) -> None:
        self._made: Dict[str, Metric] = {}

    def _family(self, kind: Type[_F], name: str, doc: str, labels: Sequence[str]) -> _F:
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = kind(name, doc, labels=list(labels))
        assert isinstance(made, kind)
        return made

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
        return self._family(GaugeMetricFamily, name, doc, labels)

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
        return self._family(CounterMetricFamily, name, doc, labels)

    def set(self, name: str, doc: str, value: Any, labels: Optional[Dict[str, str]] = None) -> None:
        """A gauge sample; a None value (an absent sensor) adds no sample."""
        if isinstance(value, bool):
            value = int(value)
        if value is None or not isinstance(value, (int, float)):
            return
        keys = sorted(labels or {})
        self.gauge(name, doc, keys).add_metric([str((labels or {})[k]) for k in keys], value)

    def latency_summary(self, entry: Dict[str, Any], labels: Dict[str, str]) -> None:
        """``edgeai_inference_latency_seconds``, a summary: the p50 / p95 of the window's successful requests as
        its quantiles (a summary's quantiles are over a sliding window), and as ``_count`` / ``_sum`` the
        successful requests and their seconds since the service started."""
        name = "edgeai_inference_latency_seconds"
        made = self._made.get(name)
        if made is None:
            made = self._made[name] = Metric(name, "Latency of successful inference requests: p50 and p95 over the "
                                             "window, count and sum since the service started.", "summary")
        for quantile, key in (("0.5", "latency_p50_seconds"), ("0.95", "latency_p95_seconds")):
            if isinstance(entry.get(key), (int, float)):
                made.add_sample(name, dict(labels, quantile=quantile), entry[key])
        if isinstance(entry.get("success_total"), int) and isinstance(entry.get("success_seconds_total"), (int, float)):
            made.add_sample(name + "_count", labels, entry["success_total"])
            made.add_sample(name + "_sum", labels, entry["success_seconds_total"])

    def __iter__(self) -> Iterator[Metric]:
        return iter([m for m in self._made.values() if m.samples])


def _node_series(sample: Sample, out: _Families) -> None:
    sensors = sample.get("sensors") or {}
    for zone in sensors.get("thermal_zones") or []:
        number = str(zone.get("zone", "")).replace("thermal_zone", "")
        out.set("node_thermal_zone_temp", "Zone temperature in Celsius", zone.get("celsius"),
                {"zone": number, "type": zone.get("type") or ""})
    for chip in sensors.get("hwmon") or []:
        out.set("node_hwmon_chip_names", "Annotation metric for human-readable chip names", 1,
                {"chip": chip["chip"], "chip_name": chip.get("name") or ""})
        for sensor in chip.get("sensors") or []:
            series = _HWMON_SERIES.get(sensor.get("kind", ""))
            if series is not None:
                out.set(series[0], series[2], sensor.get(series[1]), {"chip": chip["chip"], "sensor": sensor["sensor"]})
            if sensor.get("label"):
                out.set("node_hwmon_sensor_label", "Label for given chip and sensor", 1,
                        {"chip": chip["chip"], "sensor": sensor["sensor"], "label": sensor["label"]})
    for supply in sensors.get("power_supplies") or []:
        labels = {"power_supply": supply["name"]}
        out.set("node_power_supply_online", "online value of /sys/class/power_supply/<power_supply>.",
                supply.get("online"), labels)
        out.set("node_power_supply_voltage_volt", "voltage_now of /sys/class/power_supply/<power_supply>, in volts.",
                supply.get("voltage_volts"), labels)
        out.set("node_power_supply_current_ampere", "current_now of /sys/class/power_supply/<power_supply>, in "
                "amperes.", supply.get("current_amperes"), labels)
        out.set("node_power_supply_power_watt", "power_now of /sys/class/power_supply/<power_supply>, in watts.",
                supply.get("power_watts"), labels)
        out.set("node_power_supply_info", "info of /sys/class/power_supply/<power_supply>.", 1,
                dict(labels, type=supply.get("type") or "", status=supply.get("status") or ""))
    for fs in sample.get("filesystems") or []:
        labels = {"device": fs.get("device") or "", "fstype": fs.get("fstype") or "", "mountpoint": fs["mountpoint"]}
        out.set("node_filesystem_size_bytes", "Filesystem size in bytes.", fs.get("size_bytes"), labels)
        out.set("node_filesystem_free_bytes", "Filesystem free space in bytes.", fs.get("free_bytes"), labels)
        out.set("node_filesystem_avail_bytes", "Filesystem space available to non-root users in bytes.",
                fs.get("avail_bytes"), labels)
    for nic in sample.get("network") or []:
        for field, name in (("receive_bytes", "receive_bytes"), ("transmit_bytes", "transmit_bytes"),
                            ("receive_packets", "receive_packets"), ("transmit_packets", "transmit_packets"),
                            ("receive_errors", "receive_errs"), ("transmit_errors", "transmit_errs"),
                            ("receive_drop", "receive_drop"), ("transmit_drop", "transmit_drop")):
            value = nic.get(field)
            if isinstance(value, int):
                out.counter("node_network_%s" % name, "Network device statistic %s." % name,
                            ["device"]).add_metric([nic["interface"]], value)
    out.set("node_load1", "1m load average.", (sample.get("cpu") or {}).get("load1"))


def _edge_series(sample: Sample, out: _Families) -> None:
    out.set("edgeai_device_info", "The device's identity: its telemetry device id and hardware class.", 1,
            {"device_id": sample.get("device_id") or "", "hardware_class": sample.get("hardware_class") or ""})
    cpu, memory = sample.get("cpu") or {}, sample.get("memory") or {}
    out.set("edgeai_cpus", "Logical CPUs.", cpu.get("count"))
    out.set("edgeai_cpu_use_ratio", "CPU time not idle, 0-1, since the previous sample (first: since boot).",
            cpu.get("use_ratio"))
    out.set("edgeai_cpu_frequency_hertz", "Current CPU frequency, averaged over the CPUs.", cpu.get("frequency_hertz"))
    out.set("edgeai_memory_total_bytes", "Total memory.", memory.get("total_bytes"))
    out.set("edgeai_memory_available_bytes", "Memory available to new processes without swapping.",
            memory.get("available_bytes"))
    out.set("edgeai_memory_used_ratio", "1 - available / total.", memory.get("used_ratio"))
    sensors = sample.get("sensors") or {}
    for supply in sensors.get("power_supplies") or []:
        labels = {"power_supply": supply["name"]}
        out.set("edgeai_power_supply_capacity_ratio", "Battery charge, 0-1 (capacity, which is in percent).",
                supply.get("capacity_ratio"), labels)
        out.set("edgeai_power_supply_energy_joules", "Energy stored now (energy_now).", supply.get("energy_joules"),
                labels)
        out.set("edgeai_power_supply_energy_full_joules", "Energy stored when full (energy_full).",
                supply.get("energy_full_joules"), labels)
    throttled = sensors.get("rpi_throttled")
    if throttled:
        for period in ("now", "since_boot"):
            for condition, flag in sorted((throttled.get(period) or {}).items()):
                out.set("edgeai_rpi_throttled", "Raspberry Pi firmware throttling flags (get_throttled): 1 when "
                        "the condition holds now, or has held since boot.", flag,
                        {"condition": condition, "period": period})
    for rail in sensors.get("jetson_rails") or []:
        labels = {"rail": rail["rail"], "source": rail.get("source") or ""}
        out.set("edgeai_jetson_rail_voltage_volts", "Jetson INA3221 rail bus voltage.", rail.get("voltage_volts"),
                labels)
        out.set("edgeai_jetson_rail_current_amperes", "Jetson INA3221 rail current.", rail.get("current_amperes"),
                labels)
        out.set("edgeai_jetson_rail_power_watts", "Jetson INA3221 rail power.", rail.get("power_watts"), labels)
    _service_series(sample, out)


def _service_series(sample: Sample, out: _Families) -> None:
    service = sample.get("service") or {}
    out.set("edgeai_service_up", "1 when the inference service's process runs.", bool(service.get("running")))
    if isinstance(service.get("cpu_seconds"), (int, float)):
        out.counter("edgeai_service_cpu_seconds", "CPU time of the inference service's process (user + system).",
                    ).add_metric([], service["cpu_seconds"])
    out.set("edgeai_service_resident_memory_bytes", "Resident memory of the inference service's process.",
            service.get("resident_bytes"))
    out.set("edgeai_service_open_fds", "Open file descriptors of the inference service's process.",
            service.get("open_fds"))
    for entry in sample.get("inference") or []:
        labels = {"model": entry["model"], "version": entry["version"]}
        out.set("edgeai_inference_window_seconds", "The window the windowed inference series cover.",
                entry.get("window_seconds"), labels)
        out.set("edgeai_inference_window_requests", "Inference requests answered in the window.",
                entry.get("requests"), labels)
        out.set("edgeai_inference_window_errors", "Inference requests that failed in the window.",
                entry.get("errors"), labels)
        out.latency_summary(entry, labels)
    for model in sample.get("models") or []:
        for role in ("active", "previous"):
            if model.get(role):
                out.set("edgeai_model_version_info", "The model versions the store points at (role active or "
                        "previous).", 1, {"model": model["name"], "version": model[role], "role": role})
    last = (sample.get("ota") or {}).get("last")
    if last:
        out.set("edgeai_ota_last_info", "The newest OTA history row: model, version, outcome and reason.", 1,
                {"model": last.get("name") or "", "version": last.get("version") or "",
                 "outcome": last.get("outcome") or "", "reason": last.get("reason") or ""})
        out.set("edgeai_ota_last_finished_timestamp_seconds", "When the newest OTA history row ended (Unix time).",
                last.get("finished"))
    _outbox_series(sample.get("outbox"), out)
    out.set("edgeai_telemetry_sample_timestamp_seconds", "When this sample was taken (Unix time).", sample.get("time"))


def _outbox_series(outbox: Optional[Dict[str, Any]], out: _Families) -> None:
    """The outbox's backlog, and what it evicted (byte cap), refused (disk, cap, broker) and delivered."""
    if not outbox:
        return
    out.set("edgeai_outbox_records", "Records waiting in the outbox for the broker.", outbox.get("records"))
    out.set("edgeai_outbox_bytes", "Bytes the waiting records take (counted against the cap).", outbox.get("bytes"))
    out.set("edgeai_outbox_max_bytes", "The outbox's byte cap.", outbox.get("max_bytes"))
    out.set("edgeai_outbox_oldest_record_age_seconds", "Age of the oldest waiting record.", outbox.get("oldest_age_s"))
    for name, key, doc in (
            ("edgeai_outbox_evicted_records", "evicted_records",
             "Records evicted to stay under the byte cap (lowest priority, oldest first)."),
            ("edgeai_outbox_refused_records", "refused_records",
             "Records refused: disk low, outbox full, or refused by the broker.")):
        family = out.counter(name, doc, ["kind"])
        for kind, count in sorted((outbox.get(key) or {}).items()):
            family.add_metric([kind], count)
    if isinstance(outbox.get("delivered_records"), int):
        out.counter("edgeai_outbox_delivered_records", "Records the broker acknowledged (PUBACK) and the outbox "
                    "deleted.").add_metric([], outbox["delivered_records"])


def families(sample: Sample, include_node: bool = True) -> List[Metric]:
    """The sample's series (the node_exporter-named ones too, unless ``include_node`` is false)."""
    out = _Families()
    if include_node:
        _node_series(sample, out)
    _edge_series(sample, out)
    return list(out)


class TelemetryCollector:
    """A prometheus_client custom collector: samples through ``sample`` on every collect (a scrape)."""

    def __init__(self, sample: Callable[[], Sample], include_node: bool = True) -> None:
        self._sample = sample
        self.include_node = include_node

    def collect(self) -> Iterable[Metric]:
        return families(self._sample(), self.include_node)

    def describe(self) -> Iterable[Metric]:
        """Nothing: registering must not take a sample (the registry would collect to learn the names)."""
        return []


def render(sample: Sample, include_node: bool = True) -> bytes:
    """The sample in the Prometheus text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TelemetryCollector(lambda: sample, include_node))
    return generate_latest(registry)


def write_textfile(directory: str, sample: Sample) -> bool:
    """Write ``<directory>/edgeai.prom`` for node_exporter's textfile collector, atomically (node_exporter never
    reads half a file); the node_* series are left out. True when the file changed."""
    path = os.path.join(directory, TEXTFILE_NAME)
    data = render(sample, include_node=False)
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    write_atomic(path, data, 0o644, label=TEXTFILE_NAME)
    return True
