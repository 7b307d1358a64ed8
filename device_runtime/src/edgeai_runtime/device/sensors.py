"""The kernel's sensor files, read through a rooted view: temperatures (thermal zones, hwmon), batteries and
mains (power_supply), the Raspberry Pi firmware's throttling bits, and the Jetson INA3221 power rails.

Pure readers: each takes a :class:`SysView` (``/`` on a device; a fixture tree, such as a simulated device's
``sim/evidence/<class>``, in tests and the sims) and returns plain JSON-able values in base units (degrees
Celsius, volts, amperes, watts, joules, ratios 0-1). A family whose sysfs directory is absent is ``None``; a
file that is missing or does not parse gives ``None`` for that one value. Nothing here raises on what a
device shows.

Units as the kernel writes them (Documentation/ABI/testing/sysfs-class-thermal, Documentation/hwmon/
sysfs-interface.rst, Documentation/ABI/testing/sysfs-class-power, the L4T ina3221x IIO driver):
thermal ``temp`` and hwmon ``temp*_input`` in millidegrees Celsius, hwmon ``in*_input`` in millivolts,
``curr*_input`` in milliamperes, ``power*_input`` in microwatts; power_supply ``voltage_now`` in microvolts,
``current_now`` in microamperes, ``power_now`` in microwatts, ``energy_*`` in microwatt-hours,
``capacity`` in percent; the IIO INA3221 in millivolts, milliamperes and milliwatts.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Dict, List, Optional

Reading = Dict[str, Any]

_HWMON_INPUT = re.compile(r"^(temp|in|curr|power|fan)(\d+)_input$")
_HWMON_ALARM = re.compile(r"^((?:temp|in|curr|power|fan)\d+)_(\w+_)?alarm$")
#: hwmon input file prefix -> (the reading's key, factor from the kernel's unit to the base unit)
_HWMON_UNITS = {"temp": ("celsius", 1e-3), "in": ("volts", 1e-3), "curr": ("amperes", 1e-3),
                "power": ("watts", 1e-6), "fan": ("rpm", 1.0)}

#: The Raspberry Pi firmware's get_throttled bits (raspberrypi.com documentation, "get_throttled"):
#: bits 0-3 now, bits 16-19 the same conditions at any time since boot.
THROTTLED_BITS = (("under_voltage", 0), ("arm_frequency_capped", 1), ("throttled", 2), ("soft_temp_limit", 3))
_SINCE_BOOT_SHIFT = 16
#: Where the firmware driver (drivers/firmware/raspberrypi.c) is bound: each bound device directory (the
#: kernel names it soc:firmware) holds ``get_throttled``, hexadecimal without 0x ("50005\n").
RPI_FIRMWARE_DRIVER = "/sys/bus/platform/drivers/raspberrypi-firmware"
#: The raspberrypi-hwmon driver's chip name; its in0_lcrit_alarm is the under-voltage sticky bit (bit 16).
RPI_HWMON_NAME = "rpi_volt"

#: Jetson INA3221 drivers: the mainline hwmon driver (L4T R35 and later, Orin) and L4T R32's IIO driver (Nano).
INA3221_HWMON_DRIVER = "/sys/bus/i2c/drivers/ina3221"
INA3221_IIO_DRIVER = "/sys/bus/i2c/drivers/ina3221x"
#: The label the Jetson device trees give a channel with nothing connected (AGX Orin's second INA3221).
_UNCONNECTED = "NC"


class SysView:
    """Read-only view of a host's kernel files, rooted at ``root`` (``/`` on the device itself)."""

    def __init__(self, root: str = "/") -> None:
        self.root = root or "/"

    def path(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def read(self, path: str) -> Optional[str]:
        """The file's text, stripped; None when it is missing or unreadable (a sensor gone, EIO from i2c)."""
        try:
            with open(self.path(path), "rb") as f:
                data = f.read(4096)
        except OSError:
            return None
        return data.decode("utf-8", "replace").strip()

    def listdir(self, path: str) -> Optional[List[str]]:
        """The directory's entries, sorted naturally (hwmon2 before hwmon10); None when it does not exist."""
        try:
            return sorted(os.listdir(self.path(path)), key=_natural)
        except OSError:
            return None

    def isdir(self, path: str) -> bool:
        return os.path.isdir(self.path(path))


def _natural(name: str) -> List[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _number(text: Optional[str], factor: float = 1.0) -> Optional[float]:
    """An integer sysfs value scaled to base units, or None when absent or malformed."""
    if text is None:
        return None
    try:
        return int(text) * factor
    except ValueError:
        return None


def _flag(text: Optional[str]) -> Optional[bool]:
    if text in ("0", "1"):
        return text == "1"
    return None


# -- thermal zones ---------------------------------------------------------------------------------------------

def thermal_zones(view: SysView) -> Optional[List[Reading]]:
    """``/sys/class/thermal/thermal_zone*``: [{zone, type, celsius}], None without the thermal class."""
    entries = view.listdir("/sys/class/thermal")
    if entries is None:
        return None
    zones = []
    for zone in entries:
        if not zone.startswith("thermal_zone"):
            continue
        base = "/sys/class/thermal/%s/" % zone
        zones.append({"zone": zone, "type": view.read(base + "type"),
                      "celsius": _number(view.read(base + "temp"), 1e-3)})
    return zones


# -- hwmon -----------------------------------------------------------------------------------------------------

def hwmon_chip(view: SysView, base: str) -> Reading:
    """One hwmon directory: its name and each sensor's reading in base units, label and alarms."""
    sensors: List[Reading] = []
    alarms: Dict[str, Dict[str, Optional[bool]]] = {}
    for entry in view.listdir(base) or []:
        match = _HWMON_INPUT.match(entry)
        if match:
            kind, index = match.groups()
            key, factor = _HWMON_UNITS[kind]
            sensors.append({"sensor": kind + index, "kind": kind, "label": view.read("%s/%s%s_label" % (base, kind, index)),
                            key: _number(view.read("%s/%s" % (base, entry)), factor)})
            continue
        alarm = _HWMON_ALARM.match(entry)
        if alarm:
            sensor, which = alarm.groups()
            alarms.setdefault(sensor, {})[(which or "").rstrip("_") or "alarm"] = _flag(view.read("%s/%s" % (base, entry)))
    for sensor in sensors:
        if sensor["sensor"] in alarms:
            sensor["alarms"] = alarms.pop(sensor["sensor"])
    # Alarms of sensors without an input (raspberrypi-hwmon has in0_lcrit_alarm alone).
    sensors.extend({"sensor": name, "kind": re.sub(r"\d+$", "", name), "label": None, "alarms": found}
                   for name, found in sorted(alarms.items()))
    return {"name": view.read(base + "/name"), "sensors": sensors}


def hwmon(view: SysView) -> Optional[List[Reading]]:
    """``/sys/class/hwmon/hwmon*``: [{chip, name, sensors: [...]}], None without the hwmon class."""
    entries = view.listdir("/sys/class/hwmon")
    if entries is None:
        return None
    return [dict(hwmon_chip(view, "/sys/class/hwmon/" + chip), chip=chip) for chip in entries if chip.startswith("hwmon")]


# -- power_supply ----------------------------------------------------------------------------------------------

def power_supplies(view: SysView) -> Optional[List[Reading]]:
    """``/sys/class/power_supply/*`` (batteries, mains, USB): [{name, type, online, status, capacity_ratio,
    voltage_volts, current_amperes, power_watts, energy_joules, energy_full_joules}], None without the class."""
    entries = view.listdir("/sys/class/power_supply")
    if entries is None:
        return None
    supplies = []
    for name in entries:
        base = "/sys/class/power_supply/%s/" % name
        capacity = _number(view.read(base + "capacity"), 0.01)
        # µWh -> J: 1 µWh = 3.6e-3 J.
        energy = _number(view.read(base + "energy_now"), 3.6e-3)
        energy_full = _number(view.read(base + "energy_full"), 3.6e-3)
        power = _number(view.read(base + "power_now"), 1e-6)
        voltage = _number(view.read(base + "voltage_now"), 1e-6)
        current = _number(view.read(base + "current_now"), 1e-6)
        if power is None and voltage is not None and current is not None:
            power = abs(voltage * current)  # batteries that report charge, not energy, report current_now
        supplies.append({"name": name, "type": view.read(base + "type"), "online": _flag(view.read(base + "online")),
                         "present": _flag(view.read(base + "present")), "status": view.read(base + "status"),
                         "capacity_ratio": capacity if capacity is None or 0 <= capacity <= 1 else None,
                         "voltage_volts": voltage, "current_amperes": current, "power_watts": power,
                         "energy_joules": energy, "energy_full_joules": energy_full})
    return supplies


# -- Raspberry Pi throttling -----------------------------------------------------------------------------------

def decode_throttled(value: int) -> Dict[str, Dict[str, bool]]:
    """The firmware's get_throttled word as {now: {...}, since_boot: {...}}."""
    return {"now": {name: bool(value >> bit & 1) for name, bit in THROTTLED_BITS},
            "since_boot": {name: bool(value >> (bit + _SINCE_BOOT_SHIFT) & 1) for name, bit in THROTTLED_BITS}}


def rpi_throttled(view: SysView, chips: Optional[List[Reading]] = None) -> Optional[Reading]:
    """The Raspberry Pi's throttling state: from the firmware driver's ``get_throttled`` (every bit), else from
    the raspberrypi-hwmon chip ``rpi_volt`` (under-voltage since boot only; the rest None). None elsewhere.
    ``raw`` is the word as read (None when it did not parse or came from hwmon)."""
    for device in view.listdir(RPI_FIRMWARE_DRIVER) or []:
        text = view.read("%s/%s/get_throttled" % (RPI_FIRMWARE_DRIVER, device))
        if text is None:
            continue
        try:
            value = int(text, 16)
        except ValueError:
            return {"source": "get_throttled", "raw": None,
                    "now": {name: None for name, _bit in THROTTLED_BITS},
                    "since_boot": {name: None for name, _bit in THROTTLED_BITS}}
        return dict(decode_throttled(value), source="get_throttled", raw=value)
    for chip in (hwmon(view) or []) if chips is None else chips:
        if chip.get("name") != RPI_HWMON_NAME:
            continue
        lcrit = next((s.get("alarms", {}).get("lcrit") for s in chip["sensors"] if s["sensor"] == "in0"), None)
        since: Dict[str, Optional[bool]] = {name: None for name, _bit in THROTTLED_BITS}
        since["under_voltage"] = lcrit
        return {"source": RPI_HWMON_NAME, "raw": None, "now": {name: None for name, _bit in THROTTLED_BITS},
                "since_boot": since}
    return None


# -- Jetson INA3221 power rails --------------------------------------------------------------------------------

def _rail(rail: str, source: str, volts: Optional[float], amperes: Optional[float],
          watts: Optional[float]) -> Reading:
    if watts is None and volts is not None and amperes is not None:
        watts = volts * amperes
    return {"rail": rail, "source": source, "voltage_volts": volts, "current_amperes": amperes, "power_watts": watts}


def _ina3221_hwmon(view: SysView) -> List[Reading]:
    """Mainline hwmon driver: ``<device>/hwmon/hwmonN/in{1,2,3}_label``, ``in*_input`` (mV), ``curr*_input`` (mA)."""
    rails = []
    for device in view.listdir(INA3221_HWMON_DRIVER) or []:
        for chip in view.listdir("%s/%s/hwmon" % (INA3221_HWMON_DRIVER, device)) or []:
            base = "%s/%s/hwmon/%s" % (INA3221_HWMON_DRIVER, device, chip)
            for channel in (1, 2, 3):
                label = view.read("%s/in%d_label" % (base, channel))
                if not label or label == _UNCONNECTED:
                    continue
                rails.append(_rail(label, "ina3221 %s" % device, _number(view.read("%s/in%d_input" % (base, channel)), 1e-3),
                                   _number(view.read("%s/curr%d_input" % (base, channel)), 1e-3), None))
    return rails


def _ina3221_iio(view: SysView) -> List[Reading]:
    """L4T R32's IIO driver: an IIO device directory (``iio:deviceN``) below each bound device, holding
    ``rail_name_{0,1,2}``, ``in_voltage*_input`` (mV), ``in_current*_input`` (mA), ``in_power*_input`` (mW)."""
    rails = []
    for device in view.listdir(INA3221_IIO_DRIVER) or []:
        for sub in view.listdir("%s/%s" % (INA3221_IIO_DRIVER, device)) or []:
            base = "%s/%s/%s" % (INA3221_IIO_DRIVER, device, sub)
            for channel in (0, 1, 2):
                label = view.read("%s/rail_name_%d" % (base, channel))
                if not label or label == _UNCONNECTED:
                    continue
                rails.append(_rail(label, "ina3221x %s" % device,
                                   _number(view.read("%s/in_voltage%d_input" % (base, channel)), 1e-3),
                                   _number(view.read("%s/in_current%d_input" % (base, channel)), 1e-3),
                                   _number(view.read("%s/in_power%d_input" % (base, channel)), 1e-3)))
    return rails


def jetson_rails(view: SysView) -> Optional[List[Reading]]:
    """Jetson INA3221 rails: [{rail, source, voltage_volts, current_amperes, power_watts}]; None when no
    INA3221 driver is bound (not a Jetson, or a Jetson Nano 2GB, which has none)."""
    if not (view.isdir(INA3221_HWMON_DRIVER) or view.isdir(INA3221_IIO_DRIVER)):
        return None
    return _ina3221_hwmon(view) + _ina3221_iio(view)


# -- all of them -----------------------------------------------------------------------------------------------

def _guarded(read: Callable[[], Any]) -> Any:
    """A family's reading; None when the reader meets something it did not expect (never a crash)."""
    try:
        return read()
    except (OSError, ValueError, UnicodeError, KeyError, TypeError):
        return None


def read_all(view: SysView) -> Reading:
    """Every family: {thermal_zones, hwmon, power_supplies, rpi_throttled, jetson_rails}, each None when absent."""
    chips = _guarded(lambda: hwmon(view))
    return {"thermal_zones": _guarded(lambda: thermal_zones(view)), "hwmon": chips,
            "power_supplies": _guarded(lambda: power_supplies(view)),
            "rpi_throttled": _guarded(lambda: rpi_throttled(view, chips or [])),
            "jetson_rails": _guarded(lambda: jetson_rails(view))}
