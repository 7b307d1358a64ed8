"""Run inside a device (its venv's Python, which has paho-mqtt): connect to a broker with given TLS files, publish
at QoS 1, and report what the broker did, as one JSON line on stdout. Used by the container tests of the device
identity (tests/integration/test_device_identity.py), which may reach a broker in a container only from another
container on the test's network.

    python mqtt_probe.py '{"host": ..., "port": ..., "subscriber": {"ca":..,"cert":..,"key":..},
                           "attempts": [{"name":.., "ca":.., "cert":..|null, "key":..|null, "topic":..}]}'

Result: {"attempts": {name: {"connected": bool, "connect_reason": str, "puback_reason": int|null, "error": str}},
         "received": [[topic, attempt name], ...]}: what the subscriber got meanwhile (each attempt publishes
         {"probe": its name}).
"""
from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

WAIT_S = 10.0
RESOLVE_S = 30.0


class Probe:
    def __init__(self, host, port, ca, cert, key):
        self.connected = threading.Event()
        self.finished = threading.Event()
        self.reason = ""
        self.puback = None
        self.messages = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="probe-" + uuid.uuid4().hex[:8],
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def _on_connect(self, _client, _userdata, _flags, reason_code, _properties):
        self.reason = str(reason_code)
        if not reason_code.is_failure:
            self.connected.set()
        else:
            self.finished.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason_code, _properties):
        self.reason = self.reason or "disconnected: %s" % reason_code
        self.finished.set()

    def _on_publish(self, _client, _userdata, _mid, reason_code, _properties):
        self.puback = reason_code.value
        self.finished.set()

    def _on_message(self, _client, _userdata, message):
        try:
            sender = json.loads(message.payload).get("probe")
        except ValueError:
            sender = None
        self.messages.append([message.topic, sender])

    def connect(self):
        """True once the broker accepted the connection (CONNACK success); False when it refused or dropped it."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:  # ssl.SSLError included: refused in the handshake
            self.reason = "%s: %s" % (type(exc).__name__, exc)
            return False
        self.client.loop_start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not self.connected.is_set() and not self.finished.is_set():
            time.sleep(0.05)
        return self.connected.is_set() and not self.finished.is_set()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def attempt(host, port, spec):
    probe = Probe(host, port, spec["ca"], spec.get("cert"), spec.get("key"))
    result = {"connected": probe.connect(), "puback_reason": None}
    if result["connected"]:
        probe.client.publish(spec["topic"], json.dumps({"probe": spec["name"]}), qos=1)
        probe.finished.wait(WAIT_S)
        result["puback_reason"] = probe.puback
    result["connect_reason"] = probe.reason
    probe.close()
    return result


def resolve(host, port):
    """Wait until the broker's name resolves. aardvark-dns answers nothing for a moment while podman reconfigures
    the network (the broker's container restarted, or another one joined); that is not what the probe tests, and
    its refusals (TLS, CONNACK) come only once the name is known."""
    deadline = time.monotonic() + RESOLVE_S
    while True:
        try:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def main():
    args = json.loads(sys.argv[1])
    resolve(args["host"], args["port"])
    sub = args["subscriber"]
    subscriber = Probe(args["host"], args["port"], sub["ca"], sub["cert"], sub["key"])
    if not subscriber.connect():
        print(json.dumps({"error": "the subscriber could not connect: %s" % subscriber.reason}))
        return 1
    subscriber.client.subscribe(sub["topic"], qos=1)
    time.sleep(0.5)
    results = {spec["name"]: attempt(args["host"], args["port"], spec) for spec in args["attempts"]}
    time.sleep(1.0)  # what the broker delivers, it delivers by now
    subscriber.close()
    print(json.dumps({"attempts": results, "received": subscriber.messages}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
