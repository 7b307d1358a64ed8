"""Real inference requests to a device's service from a background thread, as a camera would send them: the
traffic a rollout's soak judges."""
from __future__ import annotations

import contextlib
import threading
import time

import httpx
import numpy as np


@contextlib.contextmanager
def traffic(device, version=None, every_s=0.01):
    """Requests to the digits model of ``device`` (support.ota_device.Device) until the block ends; to
    ``version`` when given, else to what serves."""
    x = device.digits.X_test[:1].astype(np.float32)
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": x.ravel().tolist()}]}
    path = "/v2/models/digits/versions/%s/infer" % version if version else "/v2/models/digits/infer"
    stop = threading.Event()

    def send():
        while not stop.is_set():
            try:
                httpx.post(device.base + path, json=body, timeout=30)
            except httpx.TransportError:  # the service restarting
                pass
            time.sleep(every_s)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join()
