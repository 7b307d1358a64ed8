"""The controller's reader of the rollout outcomes that pull-mode devices report through their outbox and
the fleet's MQTT broker (docs/rollout.md, "Pull mode: reading the outcomes").

    python -m edgeai_runtime.controller.outcomes register --broker HOST:PORT --ca F --cert F --key F
                  --session NAME --spool FILE [--prefix P] [--session-expiry S] [--timeout S]
    python -m edgeai_runtime.controller.outcomes collect  (the same) --rollout ID --attempt N
                  [--action update|rollback] --device D [--device D ...] [--timeout S]

- One persistent MQTT 5 session per rollout: the client id is ``edgeai-outcomes-<session>``, clean start
  off, a session expiry (7 days by default), TLS with the fleet CA and the reader's certificate. It
  subscribes ``<prefix>/+/rollout`` at QoS 1. ``register`` makes the session and its subscription exist
  before a wave is published (a device deletes a record once the broker acknowledges it, subscribers or
  not); between two connections the broker keeps what arrives for it.
- Every message given to the reader is appended to the spool (JSON lines) and fsynced before its PUBACK
  goes (paho's manual acknowledgement): the broker never sends an acknowledged message again, so the
  spool is the reader's state, and a collect reads it first.
- Delivery is at least once: records are deduplicated by (device_id, boot_id, seq). A record on another
  device's topic than its own ``device_id`` is not taken, and is reported.
- Every broker error is an OutcomesError naming the broker and the cause; connecting is retried with
  backoff, within a deadline.

Prints one JSON object; exit status 1 when the broker or the spool failed (``failed: true``, ``msg``,
``reason``). Devices without a verdict are data (``missing``), not a failure.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import re
import ssl
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgeai_runtime import fsutil
from edgeai_runtime.device.mqtt_sync import Backoff
from edgeai_runtime.format.errors import EdgeAIError

CLIENT_ID_PREFIX = "edgeai-outcomes-"
DEFAULT_PREFIX = "edgeai"
DEFAULT_SESSION_EXPIRY_S = 7 * 86400
ACTIONS = ("update", "rollback")
STATES = ("succeeded", "failed", "rolled_back")
IGNORED = ("malformed", "topic_mismatch", "other_rollout", "unlisted_device")
#: Connections the broker closes before its CONNACK (how a refused client certificate looks on TLS 1.3)
#: tried before giving up, deadline or not.
MAX_CLOSED_BEFORE_CONNACK = 3
#: CONNACK reason codes that may pass (server unavailable, busy, quota, connection rate): retried.
RETRIED_CONNACK = (0x88, 0x89, 0x97, 0x9F)
#: At most this many records on the wrong topic are listed (all are counted).
MISMATCHED_LISTED = 20
_SESSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class OutcomesError(EdgeAIError, ConnectionError):
    """Reading the outcomes failed. ``reason``: ``tls`` (the reader's TLS files, the broker's certificate,
    or the broker refusing the reader's), ``connect`` (the broker unreachable, or gone before the
    deadline), ``refused`` (a CONNACK refusing the reader), ``subscribe`` (a refused subscription),
    ``spool`` (the spool cannot be read or written), ``busy`` (another reader holds the spool),
    ``usage`` (arguments that do not fit). ``result``: what a collect had read before it failed."""

    default_reason = "outcomes"


class _Retry(Exception):
    """A connection attempt that failed in a way that may pass; ``closed``: the broker closed the
    connection before its CONNACK (the reason is then ``tls``: most likely the reader's certificate)."""

    def __init__(self, cause: str, closed: bool = False) -> None:
        super().__init__(cause)
        self.closed = closed
        self.reason = "tls" if closed else "connect"


# -- what is read: settings, the expected outcomes, the pure tally --------------------------------

@dataclass(frozen=True)
class ReaderSettings:
    """The broker, the reader's TLS files and its session."""

    host: str
    port: int
    ca: str
    cert: str
    key: str
    session: str
    prefix: str = DEFAULT_PREFIX
    session_expiry_s: int = DEFAULT_SESSION_EXPIRY_S
    keepalive_s: int = 30
    #: how long a collect keeps trying to make its first connection (within its own timeout)
    connect_window_s: float = 30.0

    def check(self) -> "ReaderSettings":
        if not _SESSION.match(self.session):
            raise OutcomesError("session name %r: use 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                                "or digit" % self.session, "usage")
        parts = self.prefix.split("/")
        if not self.prefix or any(not p or "+" in p or "#" in p for p in parts):
            raise OutcomesError("topic prefix %r: levels without '+' or '#', no empty level" % self.prefix, "usage")
        if not 0 < self.port < 65536 or not self.host:
            raise OutcomesError("broker %s: a host and a port 1-65535" % self.broker, "usage")
        if self.session_expiry_s < 1:
            raise OutcomesError("session expiry %d s: at least 1 s (0 ends the session at each disconnect)"
                                % self.session_expiry_s, "usage")
        return self

    @property
    def client_id(self) -> str:
        return CLIENT_ID_PREFIX + self.session

    @property
    def topic(self) -> str:
        return "%s/+/rollout" % self.prefix

    @property
    def broker(self) -> str:
        return "[%s]:%d" % (self.host, self.port) if ":" in self.host else "%s:%d" % (self.host, self.port)


@dataclass(frozen=True)
class Expected:
    """The verdicts a collect waits for: one per device, of this rollout, attempt and action."""

    rollout: str
    attempt: int
    action: str
    devices: Tuple[str, ...]

    def check(self) -> "Expected":
        if not self.rollout:
            raise OutcomesError("collect: give the rollout (--rollout NAME-VERSION)", "usage")
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise OutcomesError("collect: the attempt is a number from 1, not %r" % (self.attempt,), "usage")
        if self.action not in ACTIONS:
            raise OutcomesError("collect: the action is %s, not %r" % (" or ".join(ACTIONS), self.action), "usage")
        if not self.devices:
            raise OutcomesError("collect: give the devices whose verdicts to wait for (--device ID)", "usage")
        return self


def topic_device(prefix: str, topic: str) -> Optional[str]:
    """The device id level of ``<prefix>/<device id>/rollout``; None for any other topic."""
    head, tail = prefix + "/", "/rollout"
    if not topic.startswith(head) or not topic.endswith(tail):
        return None
    device = topic[len(head):-len(tail)]
    return device if device and "/" not in device else None


def _envelope(payload: str) -> Optional[Dict[str, Any]]:
    """The outbox's message (device_id, boot_id, seq, kind, time, data), or None when it is not one."""
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    ids_ok = isinstance(body.get("device_id"), str) and isinstance(body.get("boot_id"), str) \
        and isinstance(body.get("seq"), int) and not isinstance(body.get("seq"), bool)
    time_ok = isinstance(body.get("time"), (int, float)) and not isinstance(body.get("time"), bool)
    return body if ids_ok and time_ok and isinstance(body.get("data"), dict) else None


def _newer(record: Mapping[str, Any], than: Optional[Mapping[str, Any]]) -> bool:
    return than is None or (record["time"], record["seq"]) >= (than["time"], than["seq"])


@dataclass
class Tally:
    """What the spooled messages say about one (rollout, attempt, action): fed each spool line once, in
    order (pure logic: no I/O)."""

    expected: Expected
    prefix: str
    records: int = 0
    duplicates: int = 0
    verdicts: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    ignored: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(IGNORED, 0))
    mismatched: List[Dict[str, Any]] = field(default_factory=list)
    seen: Set[Tuple[str, str, int]] = field(default_factory=set)

    def add(self, line: Mapping[str, Any]) -> str:
        """Take one spool line; returns what it was: ``verdict``, ``duplicate`` or one of IGNORED."""
        self.records += 1
        topic, payload = line.get("topic"), line.get("payload")
        body = _envelope(payload) if isinstance(payload, str) else None
        if body is None or not isinstance(topic, str):
            return self._ignore("malformed")
        if topic_device(self.prefix, topic) != body["device_id"]:
            if len(self.mismatched) < MISMATCHED_LISTED:
                self.mismatched.append({"topic": topic, "device_id": body["device_id"], "seq": body["seq"]})
            return self._ignore("topic_mismatch")  # before the dedup: it must not shadow the device's own record
        key = (body["device_id"], body["boot_id"], body["seq"])
        if key in self.seen:
            self.duplicates += 1
            return "duplicate"
        self.seen.add(key)
        return self._classify(body)

    def _classify(self, body: Dict[str, Any]) -> str:
        data, expected = body["data"], self.expected
        if body.get("kind") != "rollout":
            return self._ignore("malformed")
        attempt = data.get("attempt")
        if data.get("rollout") != expected.rollout or data.get("action") != expected.action \
                or isinstance(attempt, bool) or attempt != expected.attempt:
            return self._ignore("other_rollout")
        if data.get("state") not in STATES:
            return self._ignore("malformed")
        device = body["device_id"]
        if device not in expected.devices:
            return self._ignore("unlisted_device")
        if _newer(body, self.verdicts.get(device)):
            self.verdicts[device] = body
        return "verdict"

    def _ignore(self, why: str) -> str:
        self.ignored[why] += 1
        return why

    @property
    def missing(self) -> List[str]:
        return sorted(set(self.expected.devices) - set(self.verdicts))

    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> Dict[str, Any]:
        return {"rollout": self.expected.rollout, "attempt": self.expected.attempt, "action": self.expected.action,
                "complete": self.complete(), "verdicts": dict(sorted(self.verdicts.items())),
                "missing": self.missing, "records": self.records, "unique": len(self.seen),
                "duplicates": self.duplicates, "ignored": dict(self.ignored), "mismatched": list(self.mismatched)}


# -- the spool ------------------------------------------------------------------------------------

class Spool:
    """The JSON lines file every message given to the reader is appended to, fsynced line by line, held
    under an flock (``<spool>.lock``) by one reader at a time."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.fd = -1
        self.lock_fd = -1

    def open(self) -> "Spool":
        directory = os.path.dirname(self.path)
        try:
            os.makedirs(directory, exist_ok=True)
            self.lock_fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            busy = self.lock_fd != -1 and exc.errno in (errno.EAGAIN, errno.EACCES)
            self.close()
            if busy:
                raise OutcomesError("opening the spool %s: another reader holds it (%s.lock)"
                                    % (self.path, self.path), "busy") from None
            raise OutcomesError("opening the spool %s: %s" % (self.path, exc.strerror or exc), "spool") from None
        try:
            created = not os.path.exists(self.path)
            self.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            if created:
                fsutil.fsync_dir(directory)
            self._end_line()
        except OSError as exc:
            self.close()
            raise OutcomesError("opening the spool %s: %s" % (self.path, exc.strerror or exc), "spool") from None
        return self

    def _end_line(self) -> None:
        """A line torn by a crash (its message was never acknowledged, so the broker sends it again) is
        ended, so that the next line starts on its own."""
        size = os.fstat(self.fd).st_size
        if size and os.pread(self.fd, 1, size - 1) != b"\n":
            os.write(self.fd, b"\n")
            os.fsync(self.fd)

    def lines(self) -> Iterator[Dict[str, Any]]:
        """The spooled lines; one that does not parse (a torn line) as ``{}``."""
        try:
            with open(self.path, "rb") as f:
                for raw in f:
                    if raw.strip():
                        yield _spool_line(raw)
        except OSError as exc:
            raise OutcomesError("reading the spool %s: %s" % (self.path, exc.strerror or exc), "spool") from None

    def append(self, line: Mapping[str, Any]) -> None:
        data = (json.dumps(line, sort_keys=True, separators=(",", ":")) + "\n").encode()
        written = os.write(self.fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, "short write (%d of %d bytes)" % (written, len(data)))
        os.fsync(self.fd)

    def close(self) -> None:
        for fd in (self.fd, self.lock_fd):
            if fd != -1:
                os.close(fd)
        self.fd = self.lock_fd = -1

    def __enter__(self) -> "Spool":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _spool_line(raw: bytes) -> Dict[str, Any]:
    try:
        line = json.loads(raw)
    except ValueError:
        return {}
    return line if isinstance(line, dict) else {}


def message_line(message: mqtt.MQTTMessage) -> Dict[str, Any]:
    """A message as the spool keeps it."""
    return {"topic": message.topic, "payload": bytes(message.payload).decode("utf-8", "replace"),
            "dup": bool(message.dup), "received": round(time.time(), 6)}


# -- one connection -------------------------------------------------------------------------------

class _Link:
    """One connection of the reader's session, driven from the calling thread (``client.loop``): every
    message is spooled, then handed to ``on_line``, then acknowledged."""

    def __init__(self, settings: ReaderSettings, spool: Spool, on_line: Callable[[Dict[str, Any]], object]) -> None:
        self.settings, self.spool, self.on_line = settings, spool, on_line
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                                  protocol=mqtt.MQTTv5, manual_ack=True)
        self.connack: Optional[ReasonCode] = None
        self.session_present = False
        self.suback: Optional[List[ReasonCode]] = None
        self.lost: Optional[str] = None
        self.socket_error = ""
        self.failure: Optional[OutcomesError] = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_log = self._on_log

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags, reason: ReasonCode, _p: Any) -> None:
        self.connack, self.session_present = reason, bool(flags.session_present)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: List[ReasonCode], _p: Any) -> None:
        self.suback = list(reasons)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        self.lost = str(reason)

    def _on_log(self, _c: mqtt.Client, _u: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR and "socket" in text:
            self.socket_error = text

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if self.failure is not None:
            return  # not acknowledged: the broker sends it again to the next connection
        line = message_line(message)
        try:
            self.spool.append(line)
        except OSError as exc:
            self.failure = OutcomesError("keeping a message from %s in the spool %s: %s"
                                         % (message.topic, self.spool.path, exc.strerror or exc), "spool")
            return
        self.on_line(line)
        client.ack(message.mid, message.qos)  # only now: the line is on the disk

    def _tls(self) -> ssl.SSLContext:
        settings = self.settings
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ca)
            context.load_cert_chain(settings.cert, settings.key)
        except (OSError, ssl.SSLError) as exc:
            raise OutcomesError("the reader's TLS files (%s, %s, %s) cannot be used: %s"
                                % (settings.ca, settings.cert, settings.key, exc), "tls") from None
        return context

    def open(self, until: float) -> None:
        """Connect and subscribe by ``until`` (monotonic). OutcomesError when that cannot succeed, _Retry
        when it may on another try."""
        settings = self.settings
        self.client.tls_set_context(self._tls())
        self.client.connect_timeout = max(0.1, min(10.0, until - time.monotonic()))
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho leaves __init__ untyped
        props.SessionExpiryInterval = settings.session_expiry_s
        try:
            self.client.connect(settings.host, settings.port, keepalive=settings.keepalive_s, clean_start=False,
                                properties=props)
        except ssl.SSLCertVerificationError as exc:
            raise OutcomesError("the broker's certificate is not trusted with %s: %s"
                                % (settings.ca, exc.verify_message or exc), "tls") from None
        except ssl.SSLError as exc:
            raise OutcomesError("the TLS handshake failed: %s" % exc, "tls") from None
        except (OSError, ValueError) as exc:
            raise _Retry("cannot connect: %s" % exc) from None
        connack = self._connack(until)
        if connack.is_failure:
            cause = "the broker refused the reader (client id %s): %s (0x%02x)" % (
                settings.client_id, connack, connack.value)
            if connack.value in RETRIED_CONNACK:
                raise _Retry(cause)
            raise OutcomesError(cause, "refused")
        self.client.subscribe(settings.topic, options=SubscribeOptions(qos=1))
        self._wait(lambda: self.suback is not None, until, "the SUBACK")
        refused = [r for r in self.suback or [] if r.is_failure or r.value < 1]
        if refused:
            raise OutcomesError("the broker refused the subscription to %s at QoS 1: %s (0x%02x): the reader's "
                                "certificate needs read access to it in the broker's ACL"
                                % (settings.topic, refused[0], refused[0].value), "subscribe")

    def _connack(self, until: float) -> ReasonCode:
        while self.connack is None:
            if self.lost is not None:
                raise _Retry("the broker closed the connection before its CONNACK (%s): a client certificate it "
                             "does not trust (another CA's, revoked or expired), or not a TLS MQTT listener"
                             % (self.socket_error or self.lost), closed=True)
            self._step(until, "a CONNACK")
        return self.connack

    def _wait(self, done: Callable[[], bool], until: float, what: str) -> None:
        while not done():
            if self.lost is not None:
                raise _Retry("the broker closed the connection before %s (%s)" % (what, self.socket_error or self.lost))
            self._step(until, what)

    def _step(self, until: float, what: str) -> None:
        if self.failure is not None:
            raise self.failure
        if time.monotonic() >= until:
            raise _Retry("no %s within the time left" % what)
        self.pump(until)

    def pump(self, until: float, step: float = 0.1) -> None:
        """Read and write for a moment (at most ``step`` seconds, and not past ``until``)."""
        wait = max(0.0, min(step, until - time.monotonic()))
        if self.client.loop(wait) != mqtt.MQTT_ERR_SUCCESS and self.lost is None:
            self.lost = self.socket_error or "the connection was lost"

    def close(self) -> None:
        """DISCONNECT after the acknowledgements still queued (a session expiry was set at CONNECT, so the
        session stays)."""
        if self.lost is None:
            self.client.disconnect()
            deadline = time.monotonic() + 1.0
            while self.lost is None and time.monotonic() < deadline:
                self.pump(deadline)


# -- the reader -----------------------------------------------------------------------------------

class OutcomeReader:
    """The session of one rollout on the broker, and the spool of what it was given."""

    def __init__(self, settings: ReaderSettings, spool_path: str) -> None:
        self.settings = settings.check()
        self.spool_path = spool_path

    def _describe(self) -> Dict[str, Any]:
        settings = self.settings
        return {"broker": settings.broker, "client_id": settings.client_id, "session": settings.session,
                "topic": settings.topic, "spool": os.path.abspath(self.spool_path)}

    def _failed(self, doing: str, exc: OutcomesError) -> OutcomesError:
        where = "" if exc.reason in ("spool", "busy") else " on the broker %s" % self.settings.broker
        return OutcomesError("%s%s: %s" % (doing, where, exc), exc.reason, exc.result)

    def _connect(self, spool: Spool, on_line: Callable[[Dict[str, Any]], object], until: float) -> _Link:
        """A connected, subscribed link, retried with backoff until ``until``."""
        backoff = Backoff(0.2, 2.0)
        closed, tries, started = 0, 0, time.monotonic()
        while True:
            link = _Link(self.settings, spool, on_line)
            tries += 1
            try:
                link.open(until)
                return link
            except _Retry as exc:
                link.close()
                last, closed = exc, closed + exc.closed
            except OutcomesError:
                link.close()
                raise
            left = until - time.monotonic()
            if closed >= MAX_CLOSED_BEFORE_CONNACK or left < 0.1:
                raise OutcomesError("%s (%d tries in %.1f s)" % (last, tries, time.monotonic() - started),
                                    last.reason)
            time.sleep(min(backoff.next(), left - 0.1))

    def register(self, timeout_s: float = 10.0) -> Dict[str, Any]:
        """Make sure the session and its subscription exist (idempotent). ``changed``: the broker did not
        have the session. What the broker gives meanwhile is spooled, as by a collect."""
        until = time.monotonic() + timeout_s
        received: List[Dict[str, Any]] = []
        try:
            with Spool(self.spool_path) as spool:
                link = self._connect(spool, received.append, until)  # what was queued is spooled meanwhile
                link.close()
        except OutcomesError as exc:
            raise self._failed("registering the session %s" % self.settings.client_id, exc) from None
        return dict(self._describe(), changed=not link.session_present, session_present=link.session_present,
                    session_expiry_s=self.settings.session_expiry_s, received=len(received))

    def collect(self, rollout: str, attempt: int, devices: Sequence[str], timeout_s: float,
                action: str = "update") -> Dict[str, Any]:
        """The verdicts of ``devices`` for (rollout, attempt, action): from the spool, then from the broker
        until each device has one or ``timeout_s`` passes. OutcomesError (with the tally so far as its
        ``result``) when the broker cannot be reached or is lost and cannot be reached again in time."""
        started = time.monotonic()
        deadline = started + timeout_s
        expected = Expected(rollout, attempt, action, tuple(dict.fromkeys(devices))).check()
        if timeout_s <= 0:
            raise OutcomesError("collect: the timeout is a number of seconds above 0, not %r" % (timeout_s,), "usage")
        tally = Tally(expected, self.settings.prefix)
        run = _Run(started)
        try:
            with Spool(self.spool_path) as spool:
                for line in spool.lines():
                    tally.add(line)
                if not tally.complete():
                    self._receive(spool, tally, run, deadline)
        except OutcomesError as exc:
            exc.result = self._collected(tally, run)
            raise self._failed("collecting the outcomes of %s attempt %d" % (rollout, attempt), exc) from None
        return self._collected(tally, run)

    def _receive(self, spool: Spool, tally: Tally, run: "_Run", deadline: float) -> None:
        def take(line: Dict[str, Any]) -> None:
            run.received += 1
            tally.add(line)

        link = self._connect(spool, take, min(deadline, run.started + self.settings.connect_window_s))
        run.connected(link)
        try:
            while not tally.complete() and time.monotonic() < deadline:
                link.pump(deadline)
                if link.failure is not None:
                    raise link.failure
                if link.lost is not None:
                    run.drop(link)
                    link = self._connect(spool, take, deadline)
                    run.connected(link)
        finally:
            link.close()

    def _collected(self, tally: Tally, run: "_Run") -> Dict[str, Any]:
        result = dict(self._describe(), **tally.summary())
        result.update(changed=run.received > 0, received=run.received, session_present=run.session_present,
                      connected=run.session_present is not None, reconnects=run.reconnects,
                      warnings=list(run.warnings), seconds=round(time.monotonic() - run.started, 3))
        return result


@dataclass
class _Run:
    """What one collect met on the broker."""

    started: float
    received: int = 0
    reconnects: int = 0
    session_present: Optional[bool] = None
    warnings: List[str] = field(default_factory=list)

    def connected(self, link: _Link) -> None:
        if self.session_present is None:
            self.session_present = link.session_present
        if not link.session_present:
            self.warnings.append("the broker had no session for %s: what devices sent while it had none is lost "
                                 "(register before a wave; the session expired, or the broker lost it: no "
                                 "persistence)" % link.settings.client_id)

    def drop(self, link: _Link) -> None:
        self.reconnects += 1
        self.warnings.append("the connection was lost (%s) and made again" % (link.socket_error or link.lost))


# -- CLI ------------------------------------------------------------------------------------------

def parse_broker(text: str) -> Tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT``, or a bare host (port 8883)."""
    match = re.match(r"^\[([^\]]+)\](?::(\d+))?$", text) or re.match(r"^([^:\[\]]+)(?::(\d+))?$", text)
    if not match:
        raise OutcomesError("broker %r: give HOST:PORT" % text, "usage")
    return match.group(1), int(match.group(2) or 8883)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m edgeai_runtime.controller.outcomes",
                                     description="read the rollout outcomes that pull-mode devices report over MQTT")
    sub = parser.add_subparsers(dest="command", required=True)
    register = sub.add_parser("register", help="make sure the rollout's session and subscription exist on the broker")
    collect = sub.add_parser("collect", help="the devices' verdicts for a rollout attempt, waiting up to --timeout")
    for command in (register, collect):
        command.add_argument("--broker", required=True, help="HOST:PORT of the fleet's MQTT broker (TLS)")
        command.add_argument("--ca", required=True, help="the fleet CA (PEM) that signed the broker's certificate")
        command.add_argument("--cert", required=True, help="the reader's client certificate (PEM)")
        command.add_argument("--key", required=True, help="the reader's private key (PEM)")
        command.add_argument("--prefix", default=DEFAULT_PREFIX, help="topic prefix (default %(default)s)")
        command.add_argument("--session", required=True, help="the session's name (client id edgeai-outcomes-NAME)")
        command.add_argument("--spool", required=True, help="JSON lines file every message received is kept in")
        command.add_argument("--session-expiry", type=int, default=DEFAULT_SESSION_EXPIRY_S,
                             help="seconds the broker keeps the session while no reader is connected")
    register.add_argument("--timeout", type=float, default=10.0, help="seconds to get the session (default 10)")
    collect.add_argument("--rollout", required=True, help="the rollout's id, NAME-VERSION")
    collect.add_argument("--attempt", type=int, required=True)
    collect.add_argument("--action", choices=ACTIONS, default="update")
    collect.add_argument("--device", action="append", required=True, help="a device to wait for (repeatable)")
    collect.add_argument("--timeout", type=float, default=60.0, help="seconds to wait in all (default 60)")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        host, port = parse_broker(args.broker)
        reader = OutcomeReader(ReaderSettings(host, port, args.ca, args.cert, args.key, args.session, args.prefix,
                                              args.session_expiry), args.spool)
        if args.command == "register":
            result = reader.register(args.timeout)
        else:
            result = reader.collect(args.rollout, args.attempt, args.device, args.timeout, args.action)
    except OutcomesError as exc:
        out = dict(exc.result, failed=True, msg=str(exc), reason=exc.reason)
        out.setdefault("changed", False)
        print(json.dumps(out, sort_keys=True))
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
