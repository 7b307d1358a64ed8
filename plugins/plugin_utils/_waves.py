# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Wave plans of staged rollouts: parse and check a plan, and place devices in waves by a stable hash
of their ids. Pure; shared by the fleet inventory plugin and the rollout action plugin. Private.

A plan (the normalised form parse_wave_plan returns) is a dict with a ``canary`` list and exactly one
of ``percentages`` (cumulative % of the non-canary fleet, strictly increasing, ending at 100),
``counts`` (sizes of the waves after the canary; whoever is left forms a last wave) or
``exponential`` (``{"start": S, "factor": F}``: sizes S, S*F, S*F**2, ... until all are placed).
Wave 0 is the canary list; waves 1, 2, ... follow. Empty waves are absent from an assignment.

Placement with percentages depends on a device's own id only, so adding devices never moves an
existing one. With counts and exponential the non-canary devices are sorted by (hash, id) and cut
into consecutive slices: an existing device keeps its wave only while the devices sorted before it
stay the same.
"""

from __future__ import annotations

import hashlib
import re
import typing as t
from fractions import Fraction

CANARY = 'canary'
MODES = ('percentages', 'counts', 'exponential')
DEFAULT_PERCENTAGES = (10, 50, 100)
_HASH_PREFIX = b'edgeai-wave:'
_HASH_SPACE = 2 ** 64
_NUMBER = re.compile(r'^[0-9]+(?:\.[0-9]+)?$')
_WHOLE = re.compile(r'^[0-9]+$')

Plan = t.Dict[str, t.Any]


class WavePlanError(ValueError):
    """A wave plan that cannot be used; the message names what is wrong."""


def default_plan() -> Plan:
    """The plan used when none is configured: no canary list, then 10 %, 50 % and 100 % of the fleet."""
    return {CANARY: [], 'percentages': list(DEFAULT_PERCENTAGES)}


def wave_name(index: int) -> str:
    """``canary`` for wave 0, ``wave<index>`` for the others."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError('a wave index is a whole number >= 0, not %r' % (index,))
    return CANARY if index == 0 else 'wave%d' % index


def _hash(device_id: str) -> int:
    """The first 64 bits of sha256("edgeai-wave:" + id), as an integer in [0, 2**64)."""
    return int(hashlib.sha256(_HASH_PREFIX + device_id.encode('utf-8')).hexdigest()[:16], 16)


def fraction(device_id: str) -> float:
    """Where a device id falls in [0, 1): the first 64 bits of sha256("edgeai-wave:" + id) / 2**64.

    A float, for display; placement compares the exact value (a float can round up to 1.0)."""
    return _hash(device_id) / _HASH_SPACE


def parse_wave_plan(value: t.Any) -> Plan:
    """Check a wave plan and return it normalised: ``{"canary": [...], <one mode>: ...}``.

    ``value`` is a plan dict, a string form (``"10,50,100"``, ``"count:2,5"``, ``"exp:1,2"``, each
    optionally prefixed with ``"canary=a;b|"``; ``"canary=a;b"`` alone keeps the default
    percentages), an already normalised plan, or None / an empty string / an empty dict for the
    default plan. A plan without a mode uses the default percentages.
    Raises WavePlanError naming what is wrong.
    """
    if value is None:
        return default_plan()
    if isinstance(value, str):
        return _parse_string(value)
    if isinstance(value, t.Mapping):
        return _parse_mapping(value)
    what = 'a list' if isinstance(value, t.Sequence) else 'a number' if _is_number(value) else type(value).__name__
    raise WavePlanError('wave plan %r: expected a mapping or a string such as "10,50,100", not %s' % (value, what))


def _parse_string(text: str) -> Plan:
    spec = text.strip()
    canary: t.List[str] = []
    if spec.startswith(CANARY + '='):
        head, _sep, spec = spec.partition('|')
        canary = [part.strip() for part in head[len(CANARY) + 1:].split(';') if part.strip()]
        spec = spec.strip()
    if not spec:
        return _parse_mapping({CANARY: canary})
    mode, sep, numbers = spec.partition(':')
    if not sep:
        return _parse_mapping({CANARY: canary, 'percentages': _numbers(text, spec, whole=False)})
    mode = mode.strip().lower()
    if mode in ('count', 'counts'):
        return _parse_mapping({CANARY: canary, 'counts': _numbers(text, numbers, whole=True)})
    if mode in ('exp', 'exponential'):
        pair = _numbers(text, numbers, whole=True)
        if len(pair) != 2:
            raise WavePlanError('wave plan %r: exp takes two numbers, start and factor (such as "exp:1,2"), '
                                'not %d' % (text, len(pair)))
        return _parse_mapping({CANARY: canary, 'exponential': {'start': pair[0], 'factor': pair[1]}})
    raise WavePlanError('wave plan %r: unknown mode %r (use "10,50,100", "count:2,5" or "exp:1,2")' % (text, mode))


def _numbers(text: str, spec: str, whole: bool) -> t.List[t.Union[int, float]]:
    numbers: t.List[t.Union[int, float]] = []
    for part in spec.split(','):
        token = part.strip()
        if whole and not _WHOLE.match(token):
            raise WavePlanError('wave plan %r: %r is not a whole number' % (text, token))
        if not _NUMBER.match(token):
            raise WavePlanError('wave plan %r: %r is not a number' % (text, token))
        numbers.append(int(token) if _WHOLE.match(token) else float(token))
    return numbers


def _parse_mapping(value: t.Mapping[str, t.Any]) -> Plan:
    unknown = sorted(str(key) for key in value if key not in (CANARY,) + MODES)
    if unknown:
        raise WavePlanError('wave plan: unknown key%s %s (known: canary, %s)'
                            % ('s' if len(unknown) > 1 else '', ', '.join(unknown), ', '.join(MODES)))
    modes = [mode for mode in MODES if mode in value]
    if len(modes) > 1:
        raise WavePlanError('wave plan: %s are given together; use one of them' % ' and '.join(modes))
    plan: Plan = {CANARY: _canary(value.get(CANARY))}
    mode = modes[0] if modes else 'percentages'
    if mode == 'percentages':
        plan[mode] = _percentages(value.get(mode, list(DEFAULT_PERCENTAGES)))
    elif mode == 'counts':
        plan[mode] = _counts(value[mode])
    else:
        plan[mode] = _exponential(value[mode])
    return plan


def _canary(value: t.Any) -> t.List[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, t.Sequence):
        raise WavePlanError('wave plan: canary must be a list of device ids, not %r' % (value,))
    seen: t.List[str] = []
    for device_id in value:
        if not isinstance(device_id, str) or not device_id.strip():
            raise WavePlanError('wave plan: canary entry %r is not a device id' % (device_id,))
        if device_id in seen:
            raise WavePlanError('wave plan: canary lists %s twice' % device_id)
        seen.append(device_id)
    return seen


def _is_number(value: t.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: t.Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_list(name: str, value: t.Any) -> t.List[t.Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, t.Sequence):
        raise WavePlanError('wave plan: %s must be a list of numbers, not %r' % (name, value))
    if not value:
        raise WavePlanError('wave plan: %s is empty' % name)
    return list(value)


def _percentages(value: t.Any) -> t.List[t.Union[int, float]]:
    percentages = _number_list('percentages', value)
    previous: t.Optional[float] = None
    for pct in percentages:
        if not _is_number(pct):
            raise WavePlanError('wave plan: percentage %r is not a number' % (pct,))
        if not 0 < pct <= 100:
            raise WavePlanError('wave plan: percentage %s is outside (0, 100]' % pct)
        if previous is not None and pct <= previous:
            raise WavePlanError('wave plan: percentages must be strictly increasing; %s follows %s' % (pct, previous))
        previous = pct
    if percentages[-1] != 100:
        raise WavePlanError('wave plan: percentages must end at 100 (the whole fleet), not %s' % percentages[-1])
    return percentages


def _counts(value: t.Any) -> t.List[int]:
    counts = _number_list('counts', value)
    for count in counts:
        if not _is_whole(count):
            raise WavePlanError('wave plan: count %r is not a whole number' % (count,))
        if count < 1:
            raise WavePlanError('wave plan: count %d is below 1' % count)
    return counts


def _exponential(value: t.Any) -> t.Dict[str, int]:
    if not isinstance(value, t.Mapping):
        raise WavePlanError('wave plan: exponential must be a mapping {start: N, factor: F}, not %r' % (value,))
    unknown = sorted(str(key) for key in value if key not in ('start', 'factor'))
    if unknown:
        raise WavePlanError('wave plan: exponential has unknown key%s %s (known: start, factor)'
                            % ('s' if len(unknown) > 1 else '', ', '.join(unknown)))
    for key in ('start', 'factor'):
        if key not in value:
            raise WavePlanError('wave plan: exponential needs %s' % key)
        if not _is_whole(value[key]):
            raise WavePlanError('wave plan: exponential %s %r is not a whole number' % (key, value[key]))
    if value['start'] < 1:
        raise WavePlanError('wave plan: exponential start %d is below 1' % value['start'])
    if value['factor'] < 2:
        raise WavePlanError('wave plan: exponential factor %d is below 2' % value['factor'])
    return {'start': value['start'], 'factor': value['factor']}


def unknown_canaries(device_ids: t.Iterable[str], plan: t.Any) -> t.List[str]:
    """The canary ids of ``plan`` that are not among ``device_ids`` (assign_waves ignores them), in plan order."""
    known = set(device_ids)
    return [device_id for device_id in parse_wave_plan(plan)[CANARY] if device_id not in known]


def assign_waves(device_ids: t.Iterable[str], plan: t.Any) -> t.Dict[str, int]:
    """Place every device id in a wave: id -> wave index (0 = canary). Waves nobody is in are absent.

    ``plan`` is anything parse_wave_plan accepts. Canary ids that are not in ``device_ids`` are ignored.
    """
    plan = parse_wave_plan(plan)
    ids = sorted(set(device_ids))
    canary = set(plan[CANARY])
    waves: t.Dict[str, int] = {device_id: 0 for device_id in ids if device_id in canary}
    rest = [device_id for device_id in ids if device_id not in canary]
    if 'percentages' in plan:
        waves.update(_by_percentages(rest, plan['percentages']))
    else:
        ordered = sorted(rest, key=lambda device_id: (_hash(device_id), device_id))
        waves.update(_by_sizes(ordered, _sizes(plan, len(ordered))))
    return waves


def _by_percentages(device_ids: t.List[str], percentages: t.List[t.Union[int, float]]) -> t.Dict[str, int]:
    # A device goes to the first wave i with fraction(id) < pct[i] / 100, compared exactly.
    limits = [Fraction(pct) / 100 * _HASH_SPACE for pct in percentages]
    waves: t.Dict[str, int] = {}
    for device_id in device_ids:
        point = _hash(device_id)
        waves[device_id] = 1 + next(index for index, limit in enumerate(limits) if point < limit)
    return waves


def _sizes(plan: Plan, total: int) -> t.List[int]:
    """The sizes of the waves after the canary for ``total`` devices: the plan's counts and a last wave
    of whoever is left, or the exponential series up to ``total``."""
    if 'counts' in plan:
        return list(plan['counts']) + [total]
    sizes: t.List[int] = []
    size = plan['exponential']['start']
    while sum(sizes) < total:
        sizes.append(size)
        size *= plan['exponential']['factor']
    return sizes


def _by_sizes(ordered: t.List[str], sizes: t.List[int]) -> t.Dict[str, int]:
    waves: t.Dict[str, int] = {}
    start = 0
    for index, size in enumerate(sizes, start=1):
        for device_id in ordered[start:start + size]:
            waves[device_id] = index
        start += size
    return waves


def wave_members(assignment: t.Mapping[str, int]) -> t.List[t.Tuple[int, t.List[str]]]:
    """The non-empty waves of an assignment in order: [(index, sorted ids), ...]."""
    members: t.Dict[int, t.List[str]] = {}
    for device_id, index in assignment.items():
        members.setdefault(index, []).append(device_id)
    return [(index, sorted(members[index])) for index in sorted(members)]
