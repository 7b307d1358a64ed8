"""The fault double of the rollout scenario: an accelerator that is slow, or fails, on real traffic.

Hardware faults cannot be made in a container, so the inference service of every simulated device imports this
(its unit's drop-in puts this directory on PYTHONPATH). It does nothing until /etc/edgeai-fault.json names a
version: {"version": "1.1.0", "latency_ms": 250} makes every real request to that version that much slower,
{"version": "1.1.0", "error": true} makes it fail in the backend. Requests of zeros (the OTA installer's probes)
and the gate (which calls the backend directly) are left alone, so the update goes in and the soak finds the fault.
"""
import json
import os
import time

FAULT_FILE = "/etc/edgeai-fault.json"


def _fault(version):
    try:
        with open(FAULT_FILE, encoding="utf-8") as f:
            fault = json.load(f)
    except (OSError, ValueError):
        return {}
    return fault if fault.get("version") == version else {}


def _install():
    from edgeai_runtime.service import serving  # pylint: disable=import-outside-toplevel
    original = serving.LoadedModel.infer

    def infer(self, inputs):
        fault = _fault(self.manifest.version) if any(v.any() for v in inputs.values()) else {}
        if fault.get("error"):
            raise RuntimeError("accelerator fault (the rollout scenario's double, %s)" % FAULT_FILE)
        if fault.get("latency_ms"):
            time.sleep(fault["latency_ms"] / 1000.0)
        return original(self, inputs)

    serving.LoadedModel.infer = infer


if os.environ.get("EDGEAI_FAULT_DOUBLE") == "1":  # the service's drop-in sets it; nothing else is touched
    _install()
