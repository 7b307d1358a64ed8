"""Sending the outbox to the fleet's MQTT broker (paho-mqtt, MQTT 5, QoS 1 over TLS with the device's
certificate). docs/telemetry.md, "Sync over MQTT", says what it guarantees.

- Topic ``<prefix>/<device id>/<kind>``; client id = device id; clean start, no broker-side session
  (the outbox is the device's state).
- Bounded batches: ``sync_batch`` records are read from the outbox (nothing more is in memory),
  published, and each is deleted only after its PUBACK says success. A PUBACK with a failure reason
  code (MQTT 5; mosquitto answers 0x87 "not authorized" when the ACL denies the topic) leaves the
  record queued, marked and counted, and holds that kind back for ``backoff_max_s`` (other kinds go
  on): refusals are configuration problems, and deleting the record would lose it.
- Connecting, and a connection that fails or drops (mid-batch included), are retried with
  exponential backoff with full jitter (delay = uniform(0, min(backoff_max_s, backoff_initial_s *
  2 ** attempt))). The records of a batch that were not acknowledged are sent again on the next
  connection (at least once; the receiver deduplicates by device_id, boot_id, seq).
- The TLS files are read at each connection, so a rotated certificate is picked up without a restart.
"""
from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from edgeai_runtime.device.config import TelemetryConfig
from edgeai_runtime.device.outbox import Outbox, OutboxError, Record
from edgeai_runtime.format.errors import EdgeAIError

log = logging.getLogger(__name__)


class SyncFailed(EdgeAIError, ConnectionError):
    """The broker could not be reached, refused the connection, or dropped it; retried with backoff.
    ``reason``: ``tls`` (the device's TLS files or the handshake), ``connect`` (no connection or a
    refused CONNACK), ``dropped`` (the connection went mid-batch), ``ack_timeout`` (PUBACKs did not come)."""

    default_reason = "sync"


class Backoff:
    """Exponential backoff with full jitter and a cap (the AWS architecture blog's "full jitter")."""

    def __init__(self, initial_s: float, cap_s: float, rng: Optional[random.Random] = None) -> None:
        self.initial_s, self.cap_s = initial_s, cap_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self) -> float:
        return min(self.cap_s, self.initial_s * 2.0 ** min(self.attempt, 60))

    def next(self) -> float:
        """The delay before the next attempt (and count this one)."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class BatchResult:
    delivered: int = 0      # acknowledged with success and deleted
    refused: int = 0        # acknowledged with a failure reason code: kept, marked
    sent: int = 0           # published in this batch


def _no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """Small packets (PUBLISH, CONNECT) go at once: without TCP_NODELAY, Nagle's algorithm holds each
    one back until the previous is acknowledged, which the peer delays (40 ms on Linux)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class _Connection:
    """One paho client and its network thread, for one connection; the PUBACKs it collects."""

    def __init__(self, config: TelemetryConfig, max_inflight: int) -> None:
        self.config = config
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.device_id,
                                  protocol=mqtt.MQTTv5)
        self.max_inflight = max_inflight
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.enable_logger(logging.getLogger(__name__ + ".paho"))
        self.cond = threading.Condition()
        self.connack: Optional[ReasonCode] = None
        self.dropped: Optional[str] = None
        self.acks: Dict[int, ReasonCode] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_socket_open = _no_delay

    # callbacks run in paho's network thread
    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, props: Any) -> None:
        receive_max = getattr(props, "ReceiveMaximum", None)
        if isinstance(receive_max, int) and receive_max > 0:  # the broker's limit on QoS 1 messages in flight
            client.max_inflight_messages_set(min(self.max_inflight, receive_max))
        with self.cond:
            self.connack = reason
            self.cond.notify_all()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self.cond:
            self.dropped = str(reason)
            self.cond.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        with self.cond:
            self.acks[mid] = reason
            self.cond.notify_all()

    def open(self, timeout: float) -> None:
        config = self.config
        where = "%s:%d" % (config.mqtt_host, config.mqtt_port)
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=config.tls_file("ca"))
            context.load_cert_chain(config.tls_file("cert"), config.tls_file("key"))
        except (OSError, ssl.SSLError) as exc:
            raise SyncFailed("the device's TLS files (%s, %s, %s) cannot be used: %s"
                             % (config.tls_file("ca"), config.tls_file("cert"), config.tls_file("key"), exc),
                             "tls") from None
        self.client.tls_set_context(context)
        self.client.connect_timeout = timeout
        try:
            self.client.connect(str(config.mqtt_host), config.mqtt_port, keepalive=config.mqtt_keepalive_s,
                                clean_start=True)
        except ssl.SSLError as exc:
            raise SyncFailed("TLS with the broker %s failed: %s" % (where, exc), "tls") from None
        except (OSError, ValueError) as exc:
            raise SyncFailed("cannot connect to the broker %s: %s" % (where, exc), "connect") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.connack is None and self.dropped is None and time.monotonic() < deadline:
                self.cond.wait(max(0.0, deadline - time.monotonic()))
            connack, dropped = self.connack, self.dropped
        if connack is not None and not connack.is_failure:
            return
        self.close()
        if connack is not None:
            raise SyncFailed("the broker %s refused the connection: %s (0x%02x)" % (where, connack, connack.value),
                             "connect")
        raise SyncFailed("the broker %s closed the connection before accepting it (%s): a client certificate it "
                         "does not trust (revoked, another CA), or not a TLS MQTT listener"
                         % (where, dropped or "no answer within %ss" % timeout), "tls")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


class MqttSync:
    """Sends what ``outbox`` holds to the broker that ``config`` names, batch by batch."""

    def __init__(self, config: TelemetryConfig, outbox: Outbox, ack_timeout_s: Optional[float] = None,
                 rng: Optional[random.Random] = None) -> None:
        if not config.mqtt_host:
            raise ValueError("no mqtt_host configured: records are kept in the outbox, not sent")
        self.config, self.outbox = config, outbox
        self.ack_timeout_s = ack_timeout_s or float(config.mqtt_keepalive_s)
        self.connect_timeout_s = 10.0
        self.backoff = Backoff(config.backoff_initial_s, config.backoff_max_s, rng)
        self.held: Dict[str, float] = {}  # kind -> monotonic time until which the broker's refusal holds it back
        self.conn: Optional[_Connection] = None
        self.on_puback: Optional[Any] = None  # test hook: called with the seqs a PUBACK acknowledged, before the delete

    def topic(self, kind: str) -> str:
        return "%s/%s/%s" % (self.config.mqtt_topic_prefix, self.config.device_id, kind)

    # -- the connection ------------------------------------------------------------------------

    def connect(self) -> None:
        if self.conn is not None and self.conn.dropped is None:
            return
        self.close()
        conn = _Connection(self.config, self.config.sync_batch)
        conn.open(self.connect_timeout_s)
        self.conn = conn
        log.info("mqtt sync: connected to %s:%d as %s", self.config.mqtt_host, self.config.mqtt_port,
                 self.config.device_id)

    def close(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    # -- batches -------------------------------------------------------------------------------

    def _skipped(self) -> List[str]:
        now = time.monotonic()
        for kind in [k for k, until in self.held.items() if until <= now]:
            del self.held[kind]
        return sorted(self.held)

    def publish_batch(self, stop: Optional[threading.Event] = None) -> BatchResult:
        """Publish up to ``sync_batch`` records, wait for their PUBACKs, delete the acknowledged ones.
        Raises SyncFailed when the connection fails on the way (what was acknowledged is deleted first)."""
        self.connect()
        conn = self.conn
        assert conn is not None
        records = self.outbox.pending(self.config.sync_batch, skip_kinds=self._skipped())
        result = BatchResult()
        if not records:
            return result
        by_mid: Dict[int, Record] = {}
        failure: Optional[SyncFailed] = None
        with conn.cond:
            conn.acks.clear()
        for record in records:
            info = conn.client.publish(self.topic(record.kind), record.message, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                failure = SyncFailed("publishing to %s failed: %s"
                                     % (self.topic(record.kind), mqtt.error_string(info.rc)), "dropped")
                break
            by_mid[info.mid] = record
            result.sent += 1
        acked = self._wait_acks(conn, by_mid, stop)
        delivered = [by_mid[mid].seq for mid, reason in acked.items() if not reason.is_failure]
        refused: Dict[str, List[Tuple[int, ReasonCode]]] = {}
        for mid, reason in acked.items():
            if reason.is_failure:
                refused.setdefault(by_mid[mid].kind, []).append((by_mid[mid].seq, reason))
        if delivered and self.on_puback is not None:
            self.on_puback(delivered)
        result.delivered = self.outbox.delete(delivered)
        for kind, refusals in refused.items():
            self._refused(kind, refusals)
            result.refused += len(refusals)
        if failure is None and len(acked) < len(by_mid):
            failure = self._why_unacked(conn, len(by_mid) - len(acked))
        if failure is not None:
            self.close()
            raise failure
        return result

    def _wait_acks(self, conn: _Connection, by_mid: Dict[int, Record],
                   stop: Optional[threading.Event]) -> Dict[int, ReasonCode]:
        """The PUBACKs of ``by_mid`` that came before the connection dropped or ``ack_timeout_s`` passed
        without one (on ``stop``: at most 2 s more)."""
        last_progress = time.monotonic()
        seen = 0
        with conn.cond:
            while True:
                got = sum(1 for mid in by_mid if mid in conn.acks)
                if got == len(by_mid) or conn.dropped is not None:
                    break
                now = time.monotonic()
                if got > seen:
                    seen, last_progress = got, now
                limit = min(self.ack_timeout_s, 2.0) if stop is not None and stop.is_set() else self.ack_timeout_s
                if now - last_progress >= limit:
                    break
                conn.cond.wait(min(0.5, limit - (now - last_progress)))
            return {mid: conn.acks[mid] for mid in by_mid if mid in conn.acks}

    def _why_unacked(self, conn: _Connection, missing: int) -> SyncFailed:
        where = "%s:%d" % (self.config.mqtt_host, self.config.mqtt_port)
        if conn.dropped is not None:
            return SyncFailed("the broker %s dropped the connection mid-batch (%s); %d records without PUBACK stay "
                              "queued and are sent again" % (where, conn.dropped, missing), "dropped")
        return SyncFailed("no PUBACK from the broker %s for %d records within %ss; they stay queued"
                          % (where, missing, self.ack_timeout_s), "ack_timeout")

    def _refused(self, kind: str, refusals: List[Tuple[int, ReasonCode]]) -> None:
        reason = refusals[0][1]
        why = "%s (0x%02x)" % (reason, reason.value)
        self.outbox.refused([refusal[0] for refusal in refusals], kind, why)
        self.held[kind] = time.monotonic() + self.config.backoff_max_s
        log.error("mqtt sync: the broker refused %d %s records on %s: %s; they stay queued, and %s records are "
                  "tried again in %ss (a certificate or ACL that does not fit this device id?)",
                  len(refusals), kind, self.topic(kind), why, kind, self.config.backoff_max_s)

    def drain(self, stop: Optional[threading.Event] = None) -> BatchResult:
        """Batches until the outbox has nothing more to send now (or ``stop``)."""
        total = BatchResult()
        while stop is None or not stop.is_set():
            done = self.publish_batch(stop)
            total.delivered += done.delivered
            total.refused += done.refused
            total.sent += done.sent
            if done.sent == 0:
                break
            if done.delivered:
                self.backoff.reset()
        return total

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event, wake: Optional[threading.Event] = None, poll_s: float = 1.0) -> None:
        """Send until ``stop``: drain, then look again every ``poll_s`` (or at once on ``wake``); a failure
        waits a backoff delay and reconnects. Never raises for the broker's sake."""
        failures = 0
        while not stop.is_set():
            try:
                self.drain(stop)
                if failures:
                    log.info("mqtt sync: the broker %s:%d takes records again", self.config.mqtt_host,
                             self.config.mqtt_port)
                failures = 0
                self.backoff.reset()
            except (SyncFailed, OutboxError) as exc:
                failures += 1
                self.close()
                delay = self.backoff.next()
                log.warning("mqtt sync: %s; retrying in %.1f s (attempt %d)", exc, delay, failures)
                stop.wait(delay)
                continue
            if wake is not None:
                if wake.wait(poll_s):
                    wake.clear()
            else:
                stop.wait(poll_s)
        self.close()
