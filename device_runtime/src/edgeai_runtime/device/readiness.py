"""Is now a good time to update this device? (The staged rollout asks before it starts a device; docs/rollout.md.)

Two things can say "not now", and neither is a failure:

* **Maintenance windows.** Each is a cron expression (five fields, as crontab(5)), a duration and a time zone: the
  window opens at each time the expression matches, in that zone, and stays open for the duration. A device with
  windows may be updated only while one of them is open; outside them it is *deferred* and a later run takes it.
  No windows: always open.
* **The "defer until safe" hook**: an executable on the device (a robot mid-task knows it is busy). It is run
  with no arguments and a time limit. Exit 0: go ahead. Exit 75 (``EX_TEMPFAIL`` of sysexits.h): not now; it is
  asked again every ``interval_s`` until it says yes, for at most ``max_wait_s``. Past that cap the device counts
  as *failed*: a device that is never safe to update is a problem someone must look at. Any other exit, a hook
  that cannot be run, or one that runs past its time limit is a failure too (a broken hook proves nothing safe).

The windows are read again at every try: a window that closes while the hook says "not now" defers the device.
"""
from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from edgeai_runtime.format.errors import EdgeAIError

#: The hook's exit code for "not now" (sysexits.h EX_TEMPFAIL).
NOT_NOW = 75
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ReadinessError(EdgeAIError, ValueError):
    """A window or hook setting that cannot be used; the message names it and why."""

    default_reason = "bad_readiness"


def parse_duration(value: Union[int, float, str]) -> float:
    """Seconds, from a number (seconds) or a string such as ``90``, ``90s``, ``30m``, ``2h``, ``1d``."""
    if isinstance(value, bool):
        raise ReadinessError("a duration must be seconds or a string such as 30m or 2h, got %r" % (value,))
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ReadinessError("a duration must be seconds or a string such as 30m or 2h, got %r" % (value,))
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ReadinessError("a duration must be positive, got %r" % (value,))
    return seconds


@dataclass(frozen=True)
class Window:
    cron: str
    duration_s: float
    timezone: str

    def zone(self) -> ZoneInfo:
        try:
            return ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ReadinessError("unknown time zone %r (%s)" % (self.timezone, exc)) from None

    def opened(self, now: float) -> Optional[float]:
        """When the window that holds ``now`` opened (epoch seconds), or None when none is open."""
        local = datetime.datetime.fromtimestamp(now, self.zone())
        # The newest start at or before now: walk back from the next whole minute (cron matches whole minutes),
        # past any start still after now.
        last = next(self._iter(local.replace(second=0, microsecond=0) + datetime.timedelta(minutes=1), True), None)
        while last is not None and last.timestamp() > now:
            last = next(self._iter(last, True), None)
        if last is not None and now < last.timestamp() + self.duration_s:
            return last.timestamp()
        return None

    def next_open(self, now: float) -> Optional[float]:
        local = datetime.datetime.fromtimestamp(now, self.zone())
        start = next(self._iter(local, False), None)
        return None if start is None else start.timestamp()

    def _iter(self, start: datetime.datetime, reverse: bool) -> Iterator[datetime.datetime]:
        try:
            return CronSim(self.cron, start, reverse=reverse)
        except CronSimError as exc:
            raise ReadinessError("the cron expression %r does not parse: %s" % (self.cron, exc)) from None


def parse_windows(spec: Union[None, Mapping[str, Any], Sequence[Mapping[str, Any]]]) -> List[Window]:
    """Windows from ``{cron, duration, timezone}`` or a list of them (None or []: no windows, always open). Every
    window is checked here: a bad one fails before anything is decided."""
    if not spec:
        return []
    items = [spec] if isinstance(spec, Mapping) else list(spec)
    windows = []
    for position, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            raise ReadinessError("maintenance window %d must be a mapping of cron, duration and timezone, got %r"
                                 % (position, item))
        unknown = sorted(set(item) - {"cron", "duration", "timezone"})
        missing = [k for k in ("cron", "duration") if item.get(k) in (None, "")]
        if unknown or missing:
            raise ReadinessError("maintenance window %d: %s" % (position, "; ".join(
                (["unknown key(s) %s" % ", ".join(unknown)] if unknown else [])
                + (["%s is required" % ", ".join(missing)] if missing else []))))
        try:
            window = Window(str(item["cron"]), parse_duration(item["duration"]), str(item.get("timezone") or "UTC"))
            window.zone()
            window.next_open(time.time())  # the cron expression parses
        except ReadinessError as exc:
            raise ReadinessError("maintenance window %d: %s" % (position, exc)) from None
        windows.append(window)
    return windows


def window_state(windows: Sequence[Window], now: float) -> Dict[str, Any]:
    """``open`` (True without windows), ``closes`` (when the open window ends: the latest of them) or ``opens``
    (the next start), as epoch seconds, and ``windows`` (how many)."""
    if not windows:
        return {"open": True, "windows": 0, "closes": None, "opens": None}
    closes = [w.opened(now) for w in windows]
    open_ends = [start + w.duration_s for start, w in zip(closes, windows) if start is not None]
    if open_ends:
        return {"open": True, "windows": len(windows), "closes": max(open_ends), "opens": None}
    starts = [s for s in (w.next_open(now) for w in windows) if s is not None]
    return {"open": False, "windows": len(windows), "closes": None, "opens": min(starts) if starts else None}


@dataclass(frozen=True)
class Hook:
    path: str
    timeout_s: float = 30.0

    def ask(self) -> Dict[str, Any]:
        """Run the hook once: {"answer": "go" | "not_now" | "broken", "exit": code or None, "output": its last
        lines, "seconds"}."""
        started = time.monotonic()
        try:
            done = subprocess.run([self.path], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return {"answer": "broken", "exit": None, "seconds": round(time.monotonic() - started, 3),
                    "output": "ran past its %.0f s time limit (killed)" % self.timeout_s}
        except OSError as exc:
            return {"answer": "broken", "exit": None, "seconds": 0.0, "output": "cannot be run: %s" % exc}
        output = done.stdout.decode("utf-8", "replace").strip()[-500:]
        answer = "go" if done.returncode == 0 else "not_now" if done.returncode == NOT_NOW else "broken"
        return {"answer": answer, "exit": done.returncode, "output": output,
                "seconds": round(time.monotonic() - started, 3)}


@dataclass(frozen=True)
class Readiness:
    windows: Sequence[Window] = ()
    hook: Optional[Hook] = None
    max_wait_s: float = 600.0
    interval_s: float = 15.0

    def check(self) -> None:
        if self.max_wait_s < 0:
            raise ReadinessError("the defer cap must be 0 seconds or more, got %s" % self.max_wait_s)
        if self.interval_s <= 0:
            raise ReadinessError("the defer interval must be positive, got %s" % self.interval_s)
        if self.hook is not None:
            if not os.path.isabs(self.hook.path):
                raise ReadinessError("the defer hook must be an absolute path, got %r" % self.hook.path)
            if self.hook.timeout_s <= 0:
                raise ReadinessError("the defer hook's time limit must be positive, got %s" % self.hook.timeout_s)

    def wait(self, clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
             ask: bool = True) -> Dict[str, Any]:
        """Until the device is ready, deferred, or failed: {"verdict": "go" | "deferred" | "failed", "reason",
        "waited_s", "asked" (how often the hook was run), "window" (window_state at the end), "hook" (its last
        answer, or None)}. ``ask=False`` (check mode) reads the windows only and never runs the hook."""
        self.check()
        start = clock()
        asked = 0
        last: Optional[Dict[str, Any]] = None
        while True:
            now = clock()
            state = window_state(self.windows, now)
            waited = round(now - start, 3)
            done = {"waited_s": waited, "asked": asked, "window": state, "hook": last}
            if not state["open"]:
                opens = ("; the next opens at %s" % _iso(state["opens"])) if state["opens"] else ""
                why = "outside its maintenance window%s" % opens
                if last is not None:
                    why += " (it closed while the defer hook said not now)"
                return dict(done, verdict="deferred", reason=why)
            if self.hook is None or not ask:
                return dict(done, verdict="go", reason="")
            last = self.hook.ask()
            asked += 1
            done.update(asked=asked, hook=last)
            if last["answer"] == "go":
                return dict(done, verdict="go", reason="")
            if last["answer"] == "broken":
                return dict(done, verdict="failed", reason="the defer hook %s %s%s" % (
                    self.hook.path, "exited %d" % last["exit"] if last["exit"] is not None else last["output"],
                    (": " + last["output"]) if last["exit"] is not None and last["output"] else ""))
            spent = clock() - start
            if spent + self.interval_s > self.max_wait_s:
                said = (": " + last["output"]) if last["output"] else ""
                return dict(done, waited_s=round(spent, 3), verdict="failed",
                            reason="deferred past the cap: the defer hook %s said not now %d time(s) over %.0f s "
                                   "(max %.0f s)%s" % (self.hook.path, asked, spent, self.max_wait_s, said))
            sleep(self.interval_s)


def _iso(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
