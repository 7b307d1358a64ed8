"""The fleet's subscriber in the offline scenario, run in its own container on the scenario's network
(paho-mqtt from the controller's venv on PYTHONPATH; it is pure Python).

Each run resumes one persistent MQTT v5 session (a fixed client id, clean start off, a session expiry of a
day): the broker keeps what arrives for it while no run is connected. It subscribes to edgeai/# at QoS 1,
appends every message it is given to --received (one JSON line each, duplicates included, written before
paho acknowledges it), and stops

- after --idle seconds without a message (registration, draining), or
- with --expect-device/--expect-boot/--expect-last-seq, once every sequence number 1..last-seq of that
  device and boot is in --received (or --timeout passes).

It prints one JSON line: what this run received, and, with --expect-*, the report over everything ever
received: records, duplicates before deduplication, unique ids (device id, boot id, seq), those among
1..last-seq, the missing sequence numbers and those past last-seq (sent since), messages on the wrong topic.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from typing import Any, Dict, List

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

CLIENT_ID = "offline-scenario-subscriber"
SESSION_EXPIRY_S = 86400
CONNECT_RETRY_S = 30.0


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.failed = ""
        self.received = 0
        self.last_message = time.monotonic()
        self.seen = set()  # (device_id, boot_id, seq) of the device expected, this run and earlier ones
        self.out = open(args.received, "a", encoding="utf-8")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key)
        self.client.on_connect = self.on_connect
        self.client.on_subscribe = self.on_subscribe
        self.client.on_message = self.on_message
        self.client.on_disconnect = self.on_disconnect

    def on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self.failed = "the broker refused the subscriber: %s" % reason
            self.subscribed.set()
            return
        self.session_present = bool(flags.session_present)
        client.subscribe(self.args.topic, qos=1)

    def on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: List[Any], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            self.failed = "the broker refused the subscription to %s: %s" % (self.args.topic, reasons)
        self.subscribed.set()

    def on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not self.subscribed.is_set():
            self.failed = self.failed or "the broker closed the subscriber's connection: %s" % reason
            self.subscribed.set()

    def on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        line = {"topic": message.topic, "dup": bool(message.dup), "at": time.time(),
                "payload": message.payload.decode("utf-8", "replace")}
        with self.lock:  # kept on disk before paho sends the PUBACK (after this callback returns)
            self.out.write(json.dumps(line) + "\n")
            self.out.flush()
            os.fsync(self.out.fileno())
            self.received += 1
            self.last_message = time.monotonic()
            key = record_id(line)
            if key is not None:
                self.seen.add(key)

    def connect(self, props: Properties) -> List[str]:
        """Connect, retrying for CONNECT_RETRY_S: aardvark-dns answers nothing for a moment while podman
        reconfigures the network (a container connected or disconnected). The errors met on the way."""
        errors: List[str] = []
        deadline = time.monotonic() + CONNECT_RETRY_S
        while True:
            try:
                self.client.connect(self.args.host, self.args.port, keepalive=30, clean_start=False, properties=props)
                return errors
            except OSError as exc:  # socket.gaierror included
                errors.append("%s: %s" % (type(exc).__name__, exc))
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def run(self) -> Dict[str, Any]:
        args = self.args
        expected = None
        if args.expect_last_seq is not None:
            expected = {(args.expect_device, args.expect_boot, seq) for seq in range(1, args.expect_last_seq + 1)}
            self.seen = {k for k in (record_id(line) for line in read_received(args.received)) if k is not None}
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        started = time.monotonic()
        connect_errors = self.connect(props)
        self.client.loop_start()
        try:
            if not self.subscribed.wait(30) or self.failed:
                return {"failed": True, "msg": self.failed or "no SUBACK from %s within 30 s" % args.host}
            self.last_message = time.monotonic()
            while time.monotonic() - started < args.timeout:
                with self.lock:
                    if expected is not None and expected <= self.seen:
                        break
                    if expected is None and time.monotonic() - self.last_message >= args.idle:
                        break
                time.sleep(0.1)
            time.sleep(0.2)  # the last PUBACKs go out before the disconnect
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.out.close()
        result: Dict[str, Any] = {"failed": False, "received_now": self.received, "connect_errors": connect_errors,
                                  "session_present": getattr(self, "session_present", False),
                                  "seconds": round(time.monotonic() - started, 3)}
        if expected is not None:
            result.update(report(read_received(args.received), args.expect_device, args.expect_boot,
                                 args.expect_last_seq, args.topic.split("/")[0]))
        return result


def record_id(line: Dict[str, Any]) -> Any:
    try:
        body = json.loads(line["payload"])
        return body["device_id"], body["boot_id"], int(body["seq"])
    except (ValueError, KeyError, TypeError):
        return None


def read_received(path: str) -> List[Dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def report(lines: List[Dict[str, Any]], device: str, boot: str, last_seq: int, prefix: str) -> Dict[str, Any]:
    """Everything received for ``device`` in ``boot`` against the sequence numbers 1..last_seq it assigned."""
    ids = Counter()
    kinds: Counter = Counter()
    wrong_topic, unreadable, redelivered = [], 0, 0
    for line in lines:
        key = record_id(line)
        if key is None:
            unreadable += 1
            continue
        body = json.loads(line["payload"])
        if key[0] != device or key[1] != boot:
            continue
        ids[key] += 1
        redelivered += line["dup"]
        if ids[key] == 1:
            kinds[body.get("kind")] += 1
        if line["topic"] != "%s/%s/%s" % (prefix, device, body.get("kind")):
            wrong_topic.append(line["topic"])
    seqs = {k[2] for k in ids}
    return {"records": sum(ids.values()), "unique": len(ids), "duplicates": sum(ids.values()) - len(ids),
            "unique_through_last_seq": len([s for s in seqs if 1 <= s <= last_seq]),
            "redelivered_by_broker": redelivered, "by_kind": dict(kinds),
            "missing": sorted(set(range(1, last_seq + 1)) - seqs),
            "beyond_last_seq": sorted(s for s in seqs if s > last_seq),
            "duplicated_seqs": sorted(k[2] for k, n in ids.items() if n > 1),
            "wrong_topic": wrong_topic[:10], "unreadable": unreadable}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--topic", default="edgeai/#")
    parser.add_argument("--received", required=True, help="JSON lines file every message is appended to")
    parser.add_argument("--idle", type=float, default=2.0, help="stop after this many seconds without a message")
    parser.add_argument("--timeout", type=float, default=120.0, help="stop after this many seconds in any case")
    parser.add_argument("--expect-device")
    parser.add_argument("--expect-boot")
    parser.add_argument("--expect-last-seq", type=int)
    args = parser.parse_args()
    print(json.dumps(Session(args).run()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
