"""Is now a good time to update this device? (edgeai_runtime.device.readiness): maintenance windows in their time
zones (a DST change included), and the "defer until safe" hook as real executables, its cap, and the CLI."""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import stat
import threading
import time
from zoneinfo import ZoneInfo

import pytest

from edgeai_runtime import cli
from edgeai_runtime.device.readiness import (Hook, Readiness, ReadinessError, parse_duration, parse_windows,
                                             window_state)

BERLIN = ZoneInfo("Europe/Berlin")
NIGHTLY = {"cron": "0 2 * * *", "duration": "1h", "timezone": "Europe/Berlin"}


def at(text, zone=BERLIN):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


@pytest.mark.parametrize("when, is_open", [
    ("2026-12-02T01:59:59", False),
    ("2026-12-02T02:00:00", True),
    ("2026-12-02T02:59:59", True),
    ("2026-12-02T03:00:00", False),
    ("2026-12-02T14:00:00", False),
])
def test_a_nightly_window_is_open_for_its_duration_in_its_own_time_zone(when, is_open):
    state = window_state(parse_windows(NIGHTLY), at(when))
    assert state["open"] is is_open
    if is_open:
        assert state["closes"] == at("2026-12-02T03:00:00") and state["opens"] is None
    else:
        assert state["closes"] is None and state["opens"] in (at("2026-12-02T02:00:00"), at("2026-12-03T02:00:00"))


def test_the_same_instant_is_inside_one_zone_s_window_and_outside_another_s():
    instant = at("2026-12-02T02:30:00")  # 01:30 UTC, 20:30 in New York the evening before
    assert window_state(parse_windows(NIGHTLY), instant)["open"]
    assert not window_state(parse_windows(dict(NIGHTLY, timezone="America/New_York")), instant)["open"]
    assert not window_state(parse_windows(dict(NIGHTLY, timezone="UTC")), instant)["open"]


def test_a_window_on_the_night_the_clocks_go_forward_still_opens():
    # 2026-03-29 in Berlin: 02:00 does not exist (01:59:59 CET is followed by 03:00:00 CEST). cron runs what it
    # skipped at 03:00, so the window is open from 03:00 to 04:00 CEST.
    assert not window_state(parse_windows(NIGHTLY), at("2026-03-29T01:59:00"))["open"]
    state = window_state(parse_windows(NIGHTLY), at("2026-03-29T03:30:00"))
    assert state["open"] and state["closes"] == at("2026-03-29T04:00:00")


def test_any_of_several_windows_opens_the_device():
    windows = parse_windows([NIGHTLY, {"cron": "30 12 * * 1-5", "duration": 900, "timezone": "Europe/Berlin"}])
    assert window_state(windows, at("2026-12-02T12:40:00"))["open"]  # a Wednesday lunch break
    assert not window_state(windows, at("2026-12-05T12:40:00"))["open"]  # a Saturday
    assert window_state(windows, at("2026-12-05T12:40:00"))["opens"] == at("2026-12-06T02:00:00")
    assert window_state([], time.time()) == {"open": True, "windows": 0, "closes": None, "opens": None}


@pytest.mark.parametrize("value, seconds", [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
                                            ("1d", 86400.0), (" 1.5h ", 5400.0)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("spec, message", [
    ({"cron": "61 2 * * *", "duration": 60}, "maintenance window 1: the cron expression '61 2 * * *' does not parse"),
    ({"cron": "0 2 * * *", "duration": 60, "timezone": "Mars/Olympus"}, "maintenance window 1: unknown time zone"),
    ([NIGHTLY, {"cron": "0 2 * * *", "duration": "0"}], "maintenance window 2: a duration must be positive"),
    ({"cron": "0 2 * * *", "duration": "an hour"}, "maintenance window 1: a duration must be seconds or a string"),
    ({"cron": "0 2 * * *"}, "maintenance window 1: duration is required"),
    ({"cron": "0 2 * * *", "duration": 60, "tz": "UTC"}, "maintenance window 1: unknown key(s) tz"),
    (["0 2 * * *"], "maintenance window 1 must be a mapping"),
])
def test_a_window_that_cannot_be_used_is_refused_naming_it(spec, message):
    with pytest.raises(ReadinessError) as exc:
        parse_windows(spec)
    assert str(exc.value).startswith(message)


def executable(path, body):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize("body, answer, code", [
    ("exit 0", "go", 0),
    ("echo 'robot mid-task (job 17)'; exit 75", "not_now", 75),
    ("echo 'cannot read the PLC' >&2; exit 2", "broken", 2),
])
def test_the_hook_s_exit_code_is_its_answer(tmp_path, body, answer, code):
    found = Hook(executable(tmp_path / "hook", body)).ask()
    assert (found["answer"], found["exit"]) == (answer, code)
    if code:
        assert found["output"] in ("robot mid-task (job 17)", "cannot read the PLC")


def test_a_hook_that_hangs_or_cannot_run_is_broken(tmp_path):
    slow = Hook(executable(tmp_path / "slow", "sleep 5"), timeout_s=0.3).ask()
    assert slow["answer"] == "broken" and "ran past its 0 s time limit" in slow["output"] and slow["seconds"] < 3
    plain = tmp_path / "plain"
    plain.write_text("#!/bin/sh\nexit 0\n")
    assert Hook(str(plain)).ask()["answer"] == "broken"  # not executable
    assert "cannot be run" in Hook(str(tmp_path / "missing")).ask()["output"]


def test_the_device_waits_while_the_hook_says_not_now_then_goes(tmp_path):
    busy = tmp_path / "robot-busy"
    busy.touch()
    hook = Hook(executable(tmp_path / "hook", "test -e %s && exit 75; exit 0" % busy))
    threading.Timer(0.5, busy.unlink).start()
    started = time.monotonic()
    done = Readiness(hook=hook, max_wait_s=10, interval_s=0.1).wait()
    assert done["verdict"] == "go" and done["asked"] >= 3 and 0.4 < done["waited_s"] < 5
    assert time.monotonic() - started < 5


def test_past_the_cap_the_device_fails(tmp_path):
    hook = Hook(executable(tmp_path / "hook", "echo 'welding'; exit 75"))
    done = Readiness(hook=hook, max_wait_s=0.5, interval_s=0.1).wait()
    assert done["verdict"] == "failed" and done["asked"] >= 4
    assert done["reason"].startswith("deferred past the cap: the defer hook %s said not now" % hook.path)
    assert done["reason"].endswith("(max 0 s): welding")


def test_a_broken_hook_fails_the_device_at_once(tmp_path):
    hook = Hook(executable(tmp_path / "hook", "echo 'no such PLC' >&2; exit 3"))
    done = Readiness(hook=hook, max_wait_s=60, interval_s=0.1).wait()
    assert done["verdict"] == "failed" and done["asked"] == 1
    assert done["reason"] == "the defer hook %s exited 3: no such PLC" % hook.path


def test_outside_its_window_the_device_is_deferred_and_the_hook_is_not_run(tmp_path):
    ran = tmp_path / "ran"
    hook = Hook(executable(tmp_path / "hook", "touch %s; exit 0" % ran))
    done = Readiness(parse_windows(NIGHTLY), hook).wait(clock=lambda: at("2026-12-02T14:00:00"))
    assert done["verdict"] == "deferred" and not ran.exists()
    assert done["reason"] == "outside its maintenance window; the next opens at 2026-12-03T01:00:00Z"


def test_a_window_that_closes_while_the_hook_says_not_now_defers_the_device(tmp_path):
    now = [at("2026-12-02T02:59:00")]

    def sleep(seconds):
        now[0] += seconds

    hook = Hook(executable(tmp_path / "hook", "exit 75"))
    check = Readiness(parse_windows(NIGHTLY), hook, max_wait_s=3600, interval_s=30)
    done = check.wait(clock=lambda: now[0], sleep=sleep)
    assert done["verdict"] == "deferred" and done["asked"] == 2
    assert "it closed while the defer hook said not now" in done["reason"]


def test_settings_that_cannot_be_used_are_refused():
    with pytest.raises(ReadinessError, match="must be an absolute path"):
        Readiness(hook=Hook("robot-check")).check()
    with pytest.raises(ReadinessError, match="interval must be positive"):
        Readiness(interval_s=0).check()


def run_cli(root, *argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["--root", str(root)] + list(argv))
    return rc, json.loads(out.getvalue().strip().splitlines()[-1])


def test_the_cli_answers_and_check_mode_never_runs_the_hook(tmp_path):
    ran = tmp_path / "ran"
    hook = executable(tmp_path / "hook", "touch %s; exit 75" % ran)
    always = json.dumps({"cron": "* * * * *", "duration": 120})
    rc, found = run_cli(tmp_path, "rollout", "ready", "--windows", always, "--hook", hook, "--check")
    assert rc == 0 and found["changed"] is False and found["ready"]["verdict"] == "go" and not ran.exists()
    rc, found = run_cli(tmp_path, "rollout", "ready", "--windows", always, "--hook", hook, "--max-wait", "0.3",
                        "--interval", "0.1")
    assert rc == 0 and found["ready"]["verdict"] == "failed" and ran.exists()
    rc, found = run_cli(tmp_path, "rollout", "ready", "--windows", json.dumps({"cron": "0 2 * * *"}))
    assert rc != 0 and found["failed"] and "rollout ready: maintenance window 1: duration is required" in found["msg"]
