"""The device's side of a staged rollout (edgeai_runtime.device.rollout): the soak against a real service on
127.0.0.1 under real traffic, and the rollout marks in the deployment history, through the CLI."""
from __future__ import annotations

import contextlib
import io
import json
import signal
import threading
import time

import pytest

from edgeai_runtime import cli
from edgeai_runtime.device.client import ServiceClient
from edgeai_runtime.device.config import load_config
from edgeai_runtime.device.rollout import Soak, SoakLimits
from support import modelgen
from support.traffic import traffic

QUICK = dict(interval_s=0.2, min_requests=5)


def soak(device, version, **limits):
    return Soak(ServiceClient(load_config(str(device.root)), timeout=30), restart_grace_s=30).run(
        "digits", version, SoakLimits(**dict(QUICK, **limits)))


def updated(device):
    device.apply("2.0.0", model=modelgen.digits_onnx(modelgen.train_digits_mlp(seed=3)))
    return device


def test_a_healthy_version_under_traffic_passes_its_soak(device):
    updated(device)
    with traffic(device):
        verdict = soak(device, "2.0.0", seconds=2.0)
    assert verdict["passed"], verdict
    assert verdict["reasons"] == [] and verdict["restarts"] == 0 and verdict["errors"] == 0
    assert verdict["requests"] >= 5 and 0 < verdict["p95_ms"] < 100
    assert verdict["seconds"] >= 2.0 and len(verdict["samples"]) >= 5
    assert verdict["samples"][-1]["requests"] == verdict["requests"]


def test_latency_over_the_limit_fails_the_soak_at_once(device):
    updated(device)
    with traffic(device):
        verdict = soak(device, "2.0.0", seconds=30.0, p95_ms=0.001)
    assert not verdict["passed"] and verdict["seconds"] < 15
    [reason] = verdict["reasons"]
    assert reason.startswith("p95 latency ") and reason.endswith("is over 0.0 ms")


def test_a_service_restart_fails_the_soak(device):
    updated(device)

    def crash():
        time.sleep(1.0)
        device.stop(signal.SIGKILL)
        device.start()  # what systemd's Restart=always does

    crasher = threading.Thread(target=crash)
    with traffic(device):
        crasher.start()
        verdict = soak(device, "2.0.0", seconds=60.0)
        crasher.join()
    assert not verdict["passed"] and verdict["restarts"] == 1
    assert "the inference service restarted 1 time(s), more than max_restarts 0" in verdict["reasons"]
    # what the first process answered stays counted
    assert verdict["requests"] >= max(s["requests"] for s in verdict["samples"][:-1])


def test_a_restart_within_max_restarts_passes(device):
    updated(device)

    def crash():
        time.sleep(0.5)
        device.stop(signal.SIGKILL)
        device.start()

    crasher = threading.Thread(target=crash)
    with traffic(device):
        crasher.start()
        verdict = soak(device, "2.0.0", seconds=4.0, max_restarts=1)
        crasher.join()
    assert verdict["passed"], verdict
    assert verdict["restarts"] == 1


def test_too_little_traffic_proves_nothing(device):
    updated(device)
    verdict = soak(device, "2.0.0", seconds=0.5)
    assert not verdict["passed"]
    assert verdict["reasons"] == ["only 0 requests were answered in the 0 s soak, fewer than min_requests 5: too "
                                  "little traffic to judge"]
    assert soak(device, "2.0.0", seconds=0.5, min_requests=0)["passed"]


def test_a_version_that_does_not_serve_fails_at_once(device):
    verdict = soak(device, "2.0.0", seconds=30.0)
    assert not verdict["passed"] and verdict["seconds"] < 5
    assert verdict["reasons"] == ["the service serves digits 1.0.0, not 2.0.0"]


def test_backend_errors_over_the_limit_fail_the_soak(device):
    """Requests for a version the service does not hold are errors, but not backend errors of 2.0.0: the
    error rate counts what 2.0.0 itself failed. Here a healthy 2.0.0 gets 0 backend errors."""
    updated(device)
    with traffic(device), traffic(device, version="9.9.9"):
        verdict = soak(device, "2.0.0", seconds=1.5)
    assert verdict["passed"] and verdict["errors"] == 0, verdict


@pytest.mark.parametrize("bad, message", [
    (dict(seconds=-1), "seconds must be 0 or more"),
    (dict(seconds=1, p95_ms=0), "p95_ms must be positive"),
    (dict(seconds=1, max_error_rate=1.5), "max_error_rate must be within 0-1"),
    (dict(seconds=1, interval_s=0), "interval must be positive"),
])
def test_bad_limits_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        SoakLimits(**bad).check()


def run_cli(root, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["--root", str(root)] + list(argv))
    return rc, json.loads(out.getvalue().strip().splitlines()[-1])


def test_marks_and_status_through_the_cli(device):
    updated(device)
    ident = ["--rollout", "digits-2.0.0", "--name", "digits", "--version", "2.0.0"]
    rc, before = run_cli(device.root, "rollout", "status", *ident)
    assert rc == 0 and not before["changed"] and before["marks"] == []
    assert before["serving"] == before["active"] == "2.0.0" and before["service_up"]
    assert before["committed"]["from_version"] == "1.0.0"

    for every in ("installing", "installed", "rolled_back", "deferred", "failed"):  # what the module may ask for
        assert every in cli.build_parser().parse_args(
            ["rollout", "mark", *ident, "--attempt", "1", "--mark", every]).mark
    rc, marked = run_cli(device.root, "rollout", "mark", *ident, "--attempt", "1", "--from-version", "1.0.0",
                         "--mark", "installed", "--details", '{"updated": true}')
    assert rc == 0 and marked["changed"] and marked["mark"]["mark"] == "installed"
    with traffic(device):
        rc, soaked = run_cli(device.root, "rollout", "soak", *ident, "--attempt", "1", "--from-version", "1.0.0",
                             "--seconds", "1", "--interval", "0.2", "--min-requests", "3")
    assert rc == 0 and soaked["changed"] and soaked["soak"]["passed"], soaked
    rc, after = run_cli(device.root, "rollout", "status", *ident)
    assert [(m["mark"], m["attempt"], m["from_version"]) for m in after["marks"]] == [
        ("installed", 1, "1.0.0"), ("soaked", 1, "1.0.0")]
    assert after["marks"][0]["details"] == {"updated": True}
    assert after["marks"][1]["details"]["requests"] >= 3
    # another rollout's marks are not this one's
    rc, other = run_cli(device.root, "rollout", "status", "--rollout", "digits-3.0.0", "--name", "digits",
                        "--version", "3.0.0")
    assert rc == 0 and other["marks"] == [] and other["committed"] is None

    rc, bad = run_cli(device.root, "rollout", "soak", *ident, "--attempt", "1", "--seconds", "1",
                      "--max-error-rate", "2")
    assert rc == 1 and bad["failed"] and "max_error_rate must be within 0-1" in bad["msg"]
    rc, bad = run_cli(device.root, "rollout", "mark", *ident, "--attempt", "1", "--mark", "installed",
                      "--details", "[1]")
    assert rc == 1 and "--details takes a JSON object" in bad["msg"]
