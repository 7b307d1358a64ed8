"""The device's one telemetry collector: psutil for CPU, memory, filesystems, network and the service's
process; device.sensors for the kernel's sensor files; the service's ``GET /v2/models/stats`` for inference;
the store and the OTA history for what serves and how the last update ended.

``Collector.sample()`` returns one JSON-able dict (docs/telemetry.md, "Metrics and facts"), every value in
base units; whatever cannot be read is None, never an exception. The same sample feeds the service's
/metrics and node_exporter's textfile directory (device.exposition), the Ansible facts
(edgeai.fleet.telemetry_facts) and the outbox (the telemetry daemon).

Inside the service, the stats and the process come from the service itself (``stats`` and ``process``);
from the command line they come from the running service, found by the address it announced
(device.client).
"""
from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Optional

import psutil

from edgeai_runtime.device import sensors
from edgeai_runtime.device.client import ServiceClient, ServiceDown, ServiceError, announced
from edgeai_runtime.device.config import RuntimeConfig, TelemetryConfig
from edgeai_runtime.device.journal import History, HistoryError
from edgeai_runtime.device.outbox import Outbox, OutboxError, summary
from edgeai_runtime.device.store import ModelStore, StoreError
from edgeai_runtime.fsutil import mount_point

Sample = Dict[str, Any]
SCHEMA_VERSION = 1
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
#: Filesystem types that hold no device data (psutil.disk_partitions(all=False) already leaves most out).
_VIRTUAL_FS = frozenset(("squashfs", "overlay", "tmpfs", "devtmpfs", "ramfs", "iso9660"))


def _psutil_value(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except (psutil.Error, OSError, ValueError, NotImplementedError, AttributeError):
        return None


class Collector:
    """Samples the device; keeps only the previous CPU times (for the use ratio between two samples)."""

    def __init__(self, config: TelemetryConfig, runtime: RuntimeConfig,
                 stats: Optional[Callable[[], Optional[Dict[str, Any]]]] = None,
                 process: Optional[psutil.Process] = None) -> None:
        self.config = config
        self.runtime = runtime
        self.view = sensors.SysView(config.evidence_root)
        self._stats = stats
        self._process = process
        self._cpu_before: Optional[Any] = None
        self._cpu_at: Optional[float] = None
        self._store = ModelStore(runtime.root, keep=runtime.keep_versions, hardware_class=runtime.hardware_class)
        self._history = History(os.path.join(runtime.root, "state", "history.sqlite"))
        # One outbox handle for every sample: its connection is opened once, at the first status read
        # of an outbox that exists, instead of once per sample.
        self._outbox = Outbox.from_config(config, timeout=2.0)

    def sample(self) -> Sample:
        return {
            "schema": SCHEMA_VERSION,
            "device_id": self.config.device_id,
            "hardware_class": self.runtime.hardware_class,
            "time": round(time.time(), 3),
            "boot_id": _boot_id(),
            "uptime_seconds": _psutil_value(lambda: round(time.time() - psutil.boot_time(), 3)),
            "cpu": self.cpu(),
            "memory": self.memory(),
            "filesystems": self.filesystems(),
            "network": self.network(),
            "sensors": sensors.read_all(self.view),
            "service": self.service(),
            "inference": self.inference(),
            "models": self.models(),
            "ota": self.ota(),
            "outbox": self.outbox(),
        }

    # -- psutil ----------------------------------------------------------------------------

    def cpu(self) -> Dict[str, Any]:
        """Use ratio since the previous sample of this collector (the first: since boot), frequency, count."""
        times = _psutil_value(psutil.cpu_times)
        now = time.monotonic()
        use = window = None
        if times is not None:
            before = self._cpu_before
            busy, total = _busy_total(times)
            if before is not None:
                busy_before, total_before = _busy_total(before)
                busy, total = busy - busy_before, total - total_before
            if total > 0:
                use = round(min(1.0, max(0.0, busy / total)), 4)
            window = round(now - self._cpu_at, 3) if self._cpu_at is not None else None
            self._cpu_before, self._cpu_at = times, now
        freq = _psutil_value(psutil.cpu_freq)
        load = _psutil_value(os.getloadavg)
        return {"count": psutil.cpu_count(), "use_ratio": use, "use_window_seconds": window,
                "frequency_hertz": round(freq.current * 1e6) if freq and freq.current else None,
                "frequency_max_hertz": round(freq.max * 1e6) if freq and freq.max else None,
                "load1": round(load[0], 3) if load else None}

    def memory(self) -> Dict[str, Any]:
        vm = _psutil_value(psutil.virtual_memory)
        swap = _psutil_value(psutil.swap_memory)
        return {"total_bytes": vm.total if vm else None, "available_bytes": vm.available if vm else None,
                "used_ratio": round(1 - vm.available / vm.total, 4) if vm and vm.total else None,
                "swap_total_bytes": swap.total if swap else None, "swap_used_bytes": swap.used if swap else None}

    def filesystems(self) -> List[Dict[str, Any]]:
        """The mounted device filesystems (each device once, at its shortest mount point), and always the one
        holding the device root."""
        wanted: Dict[str, Any] = {}
        devices = set()
        parts = _psutil_value(lambda: psutil.disk_partitions(all=False)) or []
        for part in sorted(parts, key=lambda p: len(p.mountpoint)):  # a bind mount's source is listed once
            if part.fstype not in _VIRTUAL_FS and part.device not in devices:
                devices.add(part.device)
                wanted[part.mountpoint] = part
        root_mount = _psutil_value(lambda: mount_point(self.runtime.root))
        found = []
        for mountpoint in sorted(set(wanted) | ({root_mount} if root_mount else set())):
            usage = _psutil_value(lambda: psutil.disk_usage(mountpoint))
            part = wanted.get(mountpoint)
            found.append({"mountpoint": mountpoint, "device": part.device if part else None,
                          "fstype": part.fstype if part else None,
                          "size_bytes": usage.total if usage else None, "free_bytes": usage.free if usage else None,
                          "avail_bytes": _avail(mountpoint), "device_root": mountpoint == root_mount})
        return found

    def network(self) -> List[Dict[str, Any]]:
        counters = _psutil_value(lambda: psutil.net_io_counters(pernic=True)) or {}
        return [{"interface": name, "receive_bytes": c.bytes_recv, "transmit_bytes": c.bytes_sent,
                 "receive_packets": c.packets_recv, "transmit_packets": c.packets_sent,
                 "receive_errors": c.errin, "transmit_errors": c.errout,
                 "receive_drop": c.dropin, "transmit_drop": c.dropout}
                for name, c in sorted(counters.items()) if name != "lo"]

    # -- the service -----------------------------------------------------------------------

    def _service_process(self) -> Optional[psutil.Process]:
        if self._process is not None:
            return self._process
        address, _why = announced(self.runtime.root)
        if address is None:
            return None
        try:
            return psutil.Process(address.pid)
        except psutil.Error:  # gone since it was announced
            return None

    def service(self) -> Dict[str, Any]:
        """The inference service's process: running, pid, CPU seconds, resident bytes, open file descriptors."""
        process = self._service_process()
        if process is None:
            return {"running": False, "pid": None, "cpu_seconds": None, "resident_bytes": None, "open_fds": None,
                    "started": None}
        with process.oneshot():
            times = _psutil_value(process.cpu_times)
            memory = _psutil_value(process.memory_info)
            return {"running": True, "pid": process.pid,
                    "cpu_seconds": round(times.user + times.system, 3) if times else None,
                    "resident_bytes": memory.rss if memory else None,
                    "open_fds": _psutil_value(process.num_fds),
                    "started": _psutil_value(lambda: round(process.create_time(), 3))}

    def inference(self) -> Optional[List[Dict[str, Any]]]:
        """Per model and version: requests, errors, p50/p95 seconds over the service's window, and the
        totals since the service started. None when no service answers."""
        stats = self._stats() if self._stats is not None else self._stats_from_service()
        if stats is None:
            return None
        window = stats.get("window_seconds")
        found = []
        for entry in stats.get("model_stats") or []:
            recent = entry.get("window") or {}
            totals = entry.get("inference_stats") or {}
            found.append({"model": entry.get("name"), "version": entry.get("version"), "window_seconds": window,
                          "requests": recent.get("requests"), "errors": recent.get("errors"),
                          "latency_p50_seconds": recent.get("latency_p50_seconds"),
                          "latency_p95_seconds": recent.get("latency_p95_seconds"),
                          "requests_total": _count(totals, "success") + _count(totals, "fail"),
                          "errors_total": _count(totals, "fail"), "success_total": _count(totals, "success"),
                          "success_seconds_total": _count(totals, "success", "ns") / 1e9})
        return found

    def _stats_from_service(self) -> Optional[Dict[str, Any]]:
        try:
            answer = ServiceClient(self.runtime, timeout=5).call("GET", "/v2/models/stats", timeout=5)
        except (ServiceDown, ServiceError):
            return None
        return answer if isinstance(answer.get("model_stats"), list) else None

    def outbox(self) -> Optional[Dict[str, Any]]:
        """The outbox's backlog (records, bytes, oldest age) and what it evicted or refused, per kind;
        None when it cannot be read. It reads only: a device without an outbox reports it empty."""
        try:
            return summary(self._outbox.status())
        except OutboxError:  # locked past the timeout, or unreadable: null, as any sensor
            return None

    # -- the store and the OTA history -----------------------------------------------------

    def models(self) -> Optional[List[Dict[str, Any]]]:
        """Every stored model's active and previous versions; None when the store cannot be read."""
        try:
            return [dict(zip(("active", "previous"), self._store.pointers(name)), name=name)
                    for name in self._store.names()]
        except (OSError, StoreError, ValueError):
            return None

    def ota(self) -> Dict[str, Any]:
        """The newest deployment history row: model, version, outcome, reason, phase, when it finished."""
        try:
            rows = self._history.rows(limit=1)
        except (HistoryError, StoreError, OSError):
            return {"last": None, "readable": False}
        if not rows:
            return {"last": None, "readable": True}
        row = rows[0]
        return {"readable": True, "last": {key: row.get(key) for key in (
            "name", "version", "from_version", "outcome", "reason", "phase", "started", "finished", "duration_s")}}


def _count(totals: Dict[str, Any], which: str, field: str = "count") -> int:
    value = (totals.get(which) or {}).get(field)
    return int(value) if isinstance(value, (int, float)) else 0


def _busy_total(times: Any) -> "tuple[float, float]":
    # guest time is counted in user time already (as psutil.cpu_percent does, it is taken out once).
    total = float(sum(times)) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _avail(mountpoint: str) -> Optional[int]:
    """Bytes free to an unprivileged user (psutil's ``free`` counts root's reserve too)."""
    try:
        st = os.statvfs(mountpoint)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _boot_id() -> Optional[str]:
    """The kernel's boot id (always the real one: it is no sensor, and a simulated evidence root has none)."""
    try:
        with open(_BOOT_ID, encoding="ascii") as f:
            return f.read().strip() or None
    except OSError:
        return None
