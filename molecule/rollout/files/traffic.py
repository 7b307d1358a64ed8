"""Real traffic for a simulated device: digits inference requests to the service on 127.0.0.1, about 5 a second,
as a camera would send them (run by edgeai-traffic.service, installed by prepare.yml). Standard library only."""
import json
import time
import urllib.error
import urllib.request

URL = "http://127.0.0.1:8080/v2/models/digits/infer"
# One 8x8 digit (a zero), scaled like the training data (0-16).
ZERO = [0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0, 0, 4, 12, 0, 0, 8, 8, 0,
        0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0, 0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0]
BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                               "data": [float(v) for v in ZERO]}]}).encode()

while True:
    request = urllib.request.Request(URL, data=BODY, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()
    except (urllib.error.URLError, OSError):
        pass  # the service restarting, or the fault double failing it: the service counts it
    time.sleep(0.2)
