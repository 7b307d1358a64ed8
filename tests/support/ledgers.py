"""Rollout ledgers as plugins/plugin_utils/_rollout.py writes them (the "Ledger" contract, format 1), for the
report's tests: a succeeded rollout, a breached one with rollbacks, one with deferred and unreachable
devices, and a running one without any soak result yet."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional

START = 1796185784.2
THRESHOLDS = {"wave_max_failure_pct": 20, "wave_min_finished": 2, "total_max_failure_pct": 10,
              "unreachable_is_failure": True}
SOAK = {"seconds": 60, "p95_ms": 100, "max_error_rate": 0.05, "max_restarts": 0}
# A reason as a device could report it: markup that must reach the page as text.
HOSTILE_REASON = 'agent said: <script>alert("owned")</script> & <b>bold</b>'


def history(*steps) -> List[dict]:
    """[(state, seconds after START), ...] as a device's history."""
    return [{"state": state, "time": START + offset} for state, offset in steps]


def soak_result(p95: float, passed: bool = True, reasons: Optional[List[str]] = None, samples: bool = True,
                errors: int = 0, restarts: int = 0) -> dict:
    points = []
    if samples:
        points = [{"t": float(at), "p95_ms": round(p95 * (0.8 + 0.04 * i), 1), "requests": 80 * i}
                  for i, at in enumerate(range(0, 70, 10))]
    return {"seconds": 60, "requests": 512, "errors": errors, "error_rate": round(errors / 512, 4),
            "p95_ms": p95, "restarts": restarts, "passed": passed, "reasons": reasons or [], "samples": points}


def device(wave: int, state: str, before: Optional[str] = "1.0.0", after: Optional[str] = "1.1.0",
           updated: bool = True, reason: str = "", steps=(), soak: Optional[dict] = None,
           hardware_class: str = "generic", variant: str = "onnxruntime-fp32") -> dict:
    return {"wave": wave, "class": hardware_class, "variant": variant, "state": state,
            "version_before": before, "version_after": after, "updated": updated, "reason": reason,
            "history": history(*steps), "soak": soak}


def wave(index: int, name: str, hosts: List[str], status: str, started: Optional[float],
         finished: Optional[float]) -> dict:
    return {"index": index, "name": name, "hosts": hosts, "status": status,
            "started": None if started is None else START + started,
            "finished": None if finished is None else START + finished}


def ledger(status: str, waves: List[dict], devices: Dict[str, dict], updated: float,
           breach: Optional[dict] = None) -> dict:
    return {"format": 1, "id": "digits-1.1.0",
            "release": {"name": "digits", "version": "1.1.0", "src": "/srv/releases/digits-1.1.0"},
            "status": status, "started": START, "updated": START + updated,
            "thresholds": copy.deepcopy(THRESHOLDS), "soak": copy.deepcopy(SOAK),
            "waves": waves, "breach": breach, "devices": devices}


def _rolled_out(wave_index: int, begin: float, p95: float) -> dict:
    return device(wave_index, "succeeded", soak=soak_result(p95),
                  steps=[("transferring", begin), ("installing", begin + 5), ("soaking", begin + 9),
                         ("succeeded", begin + 70)])


def succeeded() -> dict:
    """Five devices in three waves, all on 1.1.0 now."""
    devices = {"cam-01": _rolled_out(0, 0, 41.5),
               "cam-02": _rolled_out(1, 80, 38.0), "cam-03": _rolled_out(1, 81, 52.25),
               "cam-04": _rolled_out(2, 160, 47.0), "cam-05": _rolled_out(2, 161, 44.0)}
    devices["cam-05"]["class"] = "raspberry_pi"
    devices["cam-05"]["variant"] = "litert-int8"
    return ledger("succeeded", [wave(0, "canary", ["cam-01"], "passed", 0, 75),
                                wave(1, "wave1", ["cam-02", "cam-03"], "passed", 80, 156),
                                wave(2, "wave2", ["cam-04", "cam-05"], "passed", 160, 236)],
                  devices, updated=240)


BREACH_REASON = "wave wave1: 2 of 3 finished devices failed (67% > 20%)"


def breached() -> dict:
    """The canary passed; in wave1 one device's soak was too slow and one failed to install, so the
    rollout breached and the devices it had updated were rolled back; wave2 never started."""
    devices = {
        "cam-01": device(0, "rolled_back", after="1.0.0", reason="rollout breached in wave wave1",
                         soak=soak_result(40.0),
                         steps=[("transferring", 0), ("installing", 4), ("soaking", 8), ("succeeded", 70),
                                ("rolled_back", 151)]),
        "cam-02": device(1, "rolled_back", after="1.0.0", reason="soak: p95 182.5 ms > 100 ms",
                         soak=soak_result(182.5, passed=False, reasons=["soak: p95 182.5 ms > 100 ms"]),
                         steps=[("transferring", 80), ("installing", 84), ("soaking", 88), ("failed", 149),
                                ("rolled_back", 152)]),
        "cam-03": device(1, "failed", after="1.0.0", updated=False, reason=HOSTILE_REASON,
                         steps=[("transferring", 80), ("installing", 86), ("failed", 90)]),
        "cam-04": device(1, "rolled_back", after="1.0.0", reason="rollout breached in wave wave1",
                         soak=soak_result(61.0),
                         steps=[("transferring", 81), ("installing", 85), ("soaking", 89), ("succeeded", 150),
                                ("rolled_back", 153)]),
        "cam-05": device(2, "pending", after="1.0.0", updated=False),
    }
    return ledger("rolled_back", [wave(0, "canary", ["cam-01"], "passed", 0, 75),
                                  wave(1, "wave1", ["cam-02", "cam-03", "cam-04"], "breached", 80, 150),
                                  wave(2, "wave2", ["cam-05"], "stopped", None, None)],
                  devices, updated=155, breach={"wave": "wave1", "reason": BREACH_REASON, "time": START + 150})


def deferred_unreachable() -> dict:
    """A rollout that went through: one device was deferred (its own reason), one could not be reached."""
    devices = {
        "orin-01": _rolled_out(0, 0, 12.5),
        "orin-02": device(1, "deferred", after="1.0.0", updated=False, hardware_class="jetson_orin",
                          reason="device busy: maintenance window not open",
                          steps=[("deferred", 80)]),
        "orin-03": device(1, "unreachable", after="1.0.0", updated=False, hardware_class="jetson_orin",
                          reason="ssh: connect to host 10.20.0.13 port 22: No route to host",
                          steps=[("unreachable", 95)]),
        "orin-04": _rolled_out(1, 81, 14.0),
    }
    devices["orin-01"]["class"] = devices["orin-04"]["class"] = "jetson_orin"
    return ledger("succeeded", [wave(0, "canary", ["orin-01"], "passed", 0, 75),
                                wave(1, "wave1", ["orin-02", "orin-03", "orin-04"], "passed", 80, 156)],
                  devices, updated=160)


def no_soak() -> dict:
    """A rollout under way: the canary is installing, nothing has soaked, one device has no history yet."""
    devices = {
        "pi-01": device(0, "installing", after="1.0.0", updated=False, hardware_class="raspberry_pi",
                        variant="litert-int8", steps=[("transferring", 0), ("installing", 6)]),
        "pi-02": device(1, "pending", after="1.0.0", updated=False, hardware_class="raspberry_pi",
                        variant="litert-int8"),
        "pi-03": device(1, "pending", before=None, after=None, updated=False, hardware_class="raspberry_pi",
                        variant="litert-int8"),
    }
    return ledger("running", [wave(0, "canary", ["pi-01"], "running", 0, None),
                              wave(1, "wave1", ["pi-02", "pi-03"], "pending", None, None)],
                  devices, updated=7)
