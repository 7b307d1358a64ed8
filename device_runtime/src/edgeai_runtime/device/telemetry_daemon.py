"""The telemetry daemon (``edgeai-runtime telemetry run``, the unit edgeai-telemetry.service): every
``interval_s`` one sample is queued in the outbox as a ``telemetry`` record (and handed to the
textfile hook, when there is one), while a second thread sends the outbox to the broker
(edgeai_runtime.device.mqtt_sync) continuously. SIGTERM or SIGINT ends it cleanly: the sample in
hand is queued, the batch in flight waits briefly for its PUBACKs, the connection is closed.

A failing sample, a refused record or an unreachable broker is logged and never ends the daemon.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, Dict, Optional

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.mqtt_sync import MqttSync
from edgeai_runtime.device.outbox import Outbox, OutboxError, summary

log = logging.getLogger(__name__)

Sample = Callable[[], Dict[str, Any]]
Textfile = Callable[[Dict[str, Any]], Any]


def run(config: TelemetryConfig, sample: Sample, textfile: Optional[Textfile] = None,
        stop: Optional[threading.Event] = None) -> int:
    """Run until ``stop`` is set (or SIGTERM / SIGINT, when called in the main thread). Returns 0.

    ``sample`` makes one telemetry sample (edgeai_runtime.device.telemetry.Collector.sample); the record
    gets ``outbox`` (outbox.summary) beside it unless the sample has one. ``textfile`` is called with
    each sample (e.g. the node_exporter textfile writer)."""
    stop = stop or threading.Event()
    wake = threading.Event()
    restore = _on_signals(stop, wake)
    outbox = Outbox.from_config(config)
    sender: Optional[threading.Thread] = None
    sync: Optional[MqttSync] = None
    if config.mqtt_host:
        sync = MqttSync(config, Outbox.from_config(config))
        sender = threading.Thread(target=sync.run, args=(stop, wake), name="edgeai-telemetry-sync", daemon=True)
        sender.start()
    else:
        log.warning("telemetry: no mqtt_host in %s/etc/telemetry.json: records are kept in %s (up to %d bytes), "
                    "not sent", config.root, config.outbox_path, config.outbox_max_bytes)
    log.info("telemetry: a sample every %ss into %s", config.interval_s, config.outbox_path)
    try:
        next_at = time.monotonic()
        while not stop.is_set():
            _tick(config, outbox, sample, textfile)
            wake.set()
            next_at += config.interval_s
            now = time.monotonic()
            if next_at < now:  # a slow sample: the next one starts now, not in a burst of the missed ones
                next_at = now
            stop.wait(next_at - now)
    finally:
        stop.set()
        wake.set()
        if sender is not None:
            sender.join(timeout=config.mqtt_keepalive_s + 5)
        outbox.close()
        if sync is not None:
            sync.outbox.close()
        restore()
        log.info("telemetry: stopped")
    return 0


def _tick(config: TelemetryConfig, outbox: Outbox, sample: Sample, textfile: Optional[Textfile]) -> None:
    try:
        data = sample()
    except Exception:  # noqa: BLE001 - the next interval tries again
        log.exception("telemetry: taking a sample failed")
        return
    record = dict(data)
    if "outbox" not in record:
        try:
            record["outbox"] = summary(outbox.status())
        except OutboxError as exc:
            log.warning("telemetry: reading the outbox's status failed: %s", exc)
    try:
        outbox.enqueue("telemetry", record)
    except OutboxError as exc:  # refused (disk, cap) or failed: logged by the outbox too
        log.warning("telemetry: the sample was not queued: %s", exc)
    if textfile is not None:
        try:
            textfile(data)
        except Exception:  # noqa: BLE001 - the textfile is one output of several
            log.exception("telemetry: writing the textfile failed")


def _on_signals(stop: threading.Event, wake: threading.Event) -> Callable[[], None]:
    """SIGTERM and SIGINT set ``stop`` (only the main thread may install handlers). Returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(_signum: int, _frame: Optional[FrameType]) -> None:
        stop.set()
        wake.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return restore
