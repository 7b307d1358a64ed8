# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""A rollout's ledger (docs/rollout.md, "Fleet report") as a report: render_json() gives the ledger plus a
summary, render_html() one self-contained HTML page with pygal's SVG charts inline. Pure: no files, no
clock; the callback plugin edgeai.fleet.fleet_report does the I/O. Private."""

from __future__ import annotations

import copy
import datetime
import typing as t

from jinja2 import Environment, StrictUndefined
from markupsafe import Markup

try:
    import pygal
    from pygal.style import Style
except ImportError:  # the caller reports it: report.json needs no pygal, report.html does
    pygal = None
    Style = None

HAS_PYGAL = pygal is not None
PYGAL_MISSING = ('rendering report.html needs the Python library pygal on the controller '
                 '(pip install pygal; it is in meta/ee-requirements.txt)')

# Every device state of the ledger, in the order a device goes through them; the summary counts each.
STATES = ('pending', 'deferred', 'transferring', 'installing', 'soaking',
          'succeeded', 'failed', 'rolled_back', 'unreachable')
IN_PROGRESS = frozenset(('transferring', 'installing', 'soaking'))

# The progress chart's series: label, the states it counts, its colour, shown even when always zero.
PROGRESS_SERIES = (
    ('in progress', IN_PROGRESS, '#1f77b4', False),
    ('succeeded', frozenset(('succeeded',)), '#2ca02c', True),
    ('failed', frozenset(('failed',)), '#d62728', True),
    ('rolled back', frozenset(('rolled_back',)), '#ff7f0e', True),
    ('unreachable', frozenset(('unreachable',)), '#7f7f7f', False),
    ('deferred', frozenset(('deferred',)), '#9467bd', False),
)
SAMPLE_COLOURS = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
                  '#bcbd22', '#17becf')
LEGEND_MAX = 24   # more series than this: the chart goes without a legend (the table names every device)
CHART_WIDTH = 960

Number = t.Union[int, float]


class ReportError(Exception):
    """The ledger cannot be rendered; the message names what is wrong with it."""


def _number(value: t.Any) -> t.Optional[float]:
    """A JSON number as a float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _checked(ledger: t.Any) -> t.Tuple[t.List[dict], t.Dict[str, dict]]:
    """The ledger's waves and devices, after checking the shape the report relies on."""
    if not isinstance(ledger, dict):
        raise ReportError('the ledger is a %s, not a JSON object' % type(ledger).__name__)
    if ledger.get('format') != 1:
        raise ReportError('the ledger has format %r; this report reads format 1' % (ledger.get('format'),))
    waves = ledger.get('waves', [])
    if not isinstance(waves, list) or not all(isinstance(wave, dict) for wave in waves):
        raise ReportError('the ledger\'s "waves" is not a list of objects')
    devices = ledger.get('devices', {})
    if not isinstance(devices, dict):
        raise ReportError('the ledger\'s "devices" is not an object of devices')
    for name, device in devices.items():
        if not isinstance(device, dict):
            raise ReportError('device %s in the ledger is a %s, not an object' % (name, type(device).__name__))
        if not isinstance(device.get('history', []), list):
            raise ReportError('device %s in the ledger has a "history" that is not a list' % name)
        if device.get('soak') is not None and not isinstance(device['soak'], dict):
            raise ReportError('device %s in the ledger has a "soak" that is not an object' % name)
    return waves, devices


def _state_counts(devices: t.Iterable[dict]) -> t.Dict[str, int]:
    """Devices per state: every known state (zero included), then any other state the ledger has."""
    counts = dict.fromkeys(STATES, 0)
    for device in devices:
        state = str(device.get('state') or 'pending')
        counts[state] = counts.get(state, 0) + 1
    return counts


def _span(started: t.Any, finished: t.Any) -> t.Optional[float]:
    start, end = _number(started), _number(finished)
    return round(end - start, 3) if start is not None and end is not None else None


def summarize(ledger: dict) -> dict:
    """Counts per state and per wave, the duration (updated - started, seconds) and the breach."""
    waves, devices = _checked(ledger)
    per_wave = []
    for wave in waves:
        members = [device for device in devices.values() if device.get('wave') == wave.get('index')]
        per_wave.append({'index': wave.get('index'), 'name': wave.get('name'), 'status': wave.get('status'),
                         'hosts': len(wave.get('hosts') or []), 'started': wave.get('started'),
                         'finished': wave.get('finished'),
                         'duration': _span(wave.get('started'), wave.get('finished')),
                         'states': {state: n for state, n in _state_counts(members).items() if n}})
    return {'status': ledger.get('status'), 'devices': len(devices),
            'states': _state_counts(devices.values()),
            'updated_devices': sum(1 for device in devices.values() if device.get('updated')),
            'waves': per_wave, 'duration': _span(ledger.get('started'), ledger.get('updated')),
            'breach': ledger.get('breach')}


def render_json(ledger: dict) -> dict:
    """report.json: a copy of the ledger with a "summary" added."""
    report = copy.deepcopy(ledger)
    report['summary'] = summarize(ledger)
    return report


# The charts --------------------------------------------------------------------------------------------------

def _drop_comments_and_scripts(root: t.Any) -> t.Any:
    """pygal's xml filter: remove its comments (they carry its web addresses) and its inline config script
    (only pygal's tooltip script, which the report does not load, reads it). The report holds no script."""
    for parent in list(root.iter()):
        for child in list(parent):
            tag = child.tag if isinstance(child.tag, str) else None
            if tag is None or tag.rsplit('}', 1)[-1] == 'script':
                parent.remove(child)
    return root


def _chart_config(**settings: t.Any) -> dict:
    """What every chart shares: no external script (pygal's default loads its tooltips from the web), no
    XML declaration (the SVG goes inline into the HTML), the page's font."""
    config = dict(js=[], disable_xml_declaration=True, width=CHART_WIDTH, height=360, truncate_legend=-1,
                  truncate_label=-1, legend_at_bottom=True)
    config.update(settings)
    return config


def _style(colours: t.Sequence[str]) -> t.Any:
    return Style(background='white', plot_background='white', font_family='sans-serif',
                 label_font_size=12, major_label_font_size=12, legend_font_size=13, title_font_size=15,
                 colors=tuple(colours))


def _svg(chart: t.Any) -> Markup:
    chart.add_xml_filter(_drop_comments_and_scripts)
    return Markup(chart.render(is_unicode=True))


def _p95_per_device(devices: t.Dict[str, dict]) -> t.List[t.Tuple[str, float, bool]]:
    """(device, soak p95 ms, soak passed) of each device that has a soak result with a p95."""
    rows = []
    for name in sorted(devices):
        soak = devices[name].get('soak') or {}
        p95 = _number(soak.get('p95_ms'))
        if p95 is not None:
            rows.append((name, p95, bool(soak.get('passed'))))
    return rows


def latency_chart(ledger: dict) -> t.Optional[Markup]:
    """A bar per device: its soak p95, green when its soak passed, red when not. None without soak results."""
    _waves, devices = _checked(ledger)
    rows = _p95_per_device(devices)
    if not rows:
        return None
    limit = _number((ledger.get('soak') or {}).get('p95_ms'))
    title = 'Soak p95 latency per device (ms)' + (', limit %g ms' % limit if limit is not None else '')
    # The scale reaches the limit: how far each device is from it shows at a glance.
    top = max([p95 for _name, p95, _passed in rows] + ([limit] if limit is not None else []))
    chart = pygal.HorizontalBar(**_chart_config(
        title=title, style=_style(['#2ca02c']), show_legend=False, height=max(200, 90 + 26 * len(rows)),
        print_values=True, x_title='p95 (ms)', range=(0, top)))
    chart.x_labels = [name for name, _p95, _passed in rows]
    chart.add('soak p95 (ms)', [{'value': p95, 'color': '#2ca02c' if passed else '#d62728',
                                 'label': 'passed' if passed else 'failed'}
                                for _name, p95, passed in rows])
    return _svg(chart)


def _samples(soak: t.Any) -> t.List[t.Tuple[float, float]]:
    points = []
    for sample in (soak or {}).get('samples') or []:
        if isinstance(sample, dict):
            at, p95 = _number(sample.get('t')), _number(sample.get('p95_ms'))
            if at is not None and p95 is not None:
                points.append((at, p95))
    return sorted(points)


def samples_chart(ledger: dict) -> t.Optional[Markup]:
    """The soak's p95 samples as one line per device, and the p95 limit in black. None without samples."""
    _waves, devices = _checked(ledger)
    series = [(name, points) for name in sorted(devices) if (points := _samples(devices[name].get('soak')))]
    if not series:
        return None
    colours = [SAMPLE_COLOURS[i % len(SAMPLE_COLOURS)] for i in range(len(series))]
    limit = _number((ledger.get('soak') or {}).get('p95_ms'))
    if limit is not None:
        colours.append('#000000')
    chart = pygal.XY(**_chart_config(
        title='Soak p95 latency over time', style=_style(colours), show_legend=len(series) <= LEGEND_MAX,
        x_title='seconds into the soak', y_title='p95 (ms)', dots_size=2, include_x_axis=True))
    for name, points in series:
        chart.add(name, points)
    if limit is not None:
        end = max(points[-1][0] for _name, points in series)
        chart.add('p95 limit (%g ms)' % limit, [(0.0, limit), (max(end, 1.0), limit)], show_dots=False,
                  stroke_style={'width': 2.5})
    return _svg(chart)


def _events(devices: t.Dict[str, dict]) -> t.List[t.Tuple[float, str, str]]:
    """(time, device, state) of every timed entry of every device's history, in time order."""
    events = []
    for name, device in devices.items():
        for entry in device.get('history') or []:
            if isinstance(entry, dict) and _number(entry.get('time')) is not None and entry.get('state'):
                events.append((float(entry['time']), name, str(entry['state'])))
    return sorted(events)


def progress(ledger: dict) -> t.Dict[str, t.List[t.Tuple[float, int]]]:
    """Per series of PROGRESS_SERIES: (seconds since the start, devices in its states) as steps, from each
    device's history. A series that is zero throughout is left out unless it is one always shown."""
    _waves, devices = _checked(ledger)
    events = _events(devices)
    if not events:
        return {}
    start = _number(ledger.get('started'))
    start = min(events[0][0], start) if start is not None else events[0][0]
    state = dict.fromkeys(devices, 'pending')
    points: t.Dict[str, t.List[t.Tuple[float, int]]] = {label: [(0.0, 0)] for label, *_rest in PROGRESS_SERIES}

    def count(states: t.FrozenSet[str]) -> int:
        return sum(1 for now in state.values() if now in states)

    index = 0
    while index < len(events):
        at = events[index][0]
        before = {label: count(states) for label, states, _colour, _always in PROGRESS_SERIES}
        while index < len(events) and events[index][0] == at:
            state[events[index][1]] = events[index][2]
            index += 1
        for label, states, _colour, _always in PROGRESS_SERIES:
            points[label].extend([(round(at - start, 3), before[label]), (round(at - start, 3), count(states))])
    end = _number(ledger.get('updated'))
    if end is not None and end > events[-1][0]:
        for label, states, _colour, _always in PROGRESS_SERIES:
            points[label].append((round(end - start, 3), count(states)))
    return {label: points[label] for label, _states, _colour, always in PROGRESS_SERIES
            if always or any(n for _at, n in points[label])}


def progress_chart(ledger: dict) -> t.Optional[Markup]:
    """Devices in progress / succeeded / failed / rolled back (and unreachable, deferred) over time."""
    series = progress(ledger)
    if not series:
        return None
    colours = [colour for label, _states, colour, _always in PROGRESS_SERIES if label in series]
    span = max(at for points in series.values() for at, _n in points)
    unit, scale = ('minutes', 60.0) if span > 900 else ('seconds', 1.0)
    most = max(n for points in series.values() for _at, n in points)
    chart = pygal.XY(**_chart_config(
        title='Progress over time', style=_style(colours), x_title='%s since the rollout started' % unit,
        y_title='devices', show_dots=False, include_x_axis=True, stroke_style={'width': 2.5},
        y_labels=list(range(0, most + 1, max(1, (most + 9) // 10)))))
    for label, points in series.items():
        chart.add(label, [(round(at / scale, 3), n) for at, n in points])
    return _svg(chart)


# The page ----------------------------------------------------------------------------------------------------

def _when(value: t.Any) -> str:
    seconds = _number(value)
    if seconds is None:
        return '-'
    return datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')


def _duration(value: t.Any) -> str:
    seconds = _number(value)
    if seconds is None:
        return '-'
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return '%d h %02d min' % (hours, minutes)
    if minutes:
        return '%d min %02d s' % (minutes, secs)
    return '%d s' % secs


def _text(value: t.Any) -> str:
    return '-' if value is None or value == '' else str(value)


def _settings(values: dict) -> str:
    """{"seconds": 60, "p95_ms": 100} as "seconds=60, p95_ms=100"."""
    return ', '.join('%s=%s' % (key, value) for key, value in values.items())


PAGE = '''<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Rollout {{ ledger.id|text }}: {{ ledger.status|text }}</title>
<style>
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; width: 100%; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .3em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.state, .status { display: inline-block; padding: .05em .45em; border-radius: .3em; font-weight: bold;
  color: #fff; background: #777; white-space: nowrap; }
.s-succeeded, .s-passed { background: #2ca02c; }
.s-failed, .s-breached { background: #d62728; }
.s-rolled_back, .s-stopped { background: #ff7f0e; }
.s-unreachable { background: #7f7f7f; }
.s-deferred, .s-held, .s-waiting, .s-incomplete { background: #9467bd; }
.s-transferring, .s-installing, .s-soaking, .s-running { background: #1f77b4; }
.s-pending { background: #bbb; color: #222; }
.breach { border: 2px solid #d62728; background: #fdecea; padding: .6em .9em; border-radius: .3em; }
.meta td:first-child { width: 14em; font-weight: bold; }
.counts span { margin-right: 1em; white-space: nowrap; }
.chart svg { width: 100%; height: auto; max-width: 960px; display: block; }
.none { color: #666; font-style: italic; }
ul.reasons { margin: 0; padding-left: 1.1em; }
</style>
</head>
<body>
<h1>Rollout {{ ledger.id|text }} <span class="status s-{{ ledger.status|text }}" id="rollout-status">
{{- ledger.status|text }}</span></h1>
<table class="meta">
<tr><td>Release</td><td>{{ release.name|text }} {{ release.version|text }}</td></tr>
<tr><td>Source</td><td>{{ release.src|text }}</td></tr>
<tr><td>Started</td><td>{{ ledger.started|when }}</td></tr>
<tr><td>Last update</td><td>{{ ledger.updated|when }}</td></tr>
<tr><td>Duration</td><td>{{ summary.duration|duration }}</td></tr>
<tr><td>Devices</td><td class="counts" id="state-counts">
{%- for state, n in summary.states.items() if n %}<span data-state="{{ state }}">
<span class="state s-{{ state }}">{{ state }}</span> {{ n }}</span>{{ ' ' }}{% endfor %}</td></tr>
{% if thresholds %}
<tr><td>Thresholds</td><td>{{ thresholds|settings }}</td></tr>
{% endif %}
{% if soak %}
<tr><td>Soak</td><td>{{ soak|settings }}</td></tr>
{% endif %}
</table>
{% if breach %}
<h2>Breach</h2>
<p class="breach" id="breach"><strong>{{ breach.wave|text }}</strong> at {{ breach.time|when }}:
{{ breach.reason|text }}</p>
{% endif %}

<h2>Waves</h2>
<table id="waves">
<tr><th>#</th><th>Wave</th><th>Status</th><th>Hosts</th><th>Started</th><th>Finished</th><th>Duration</th>
<th>Devices</th></tr>
{% for wave in waves %}
<tr class="wave" data-wave="{{ wave.name|text }}" data-status="{{ wave.status|text }}">
<td class="num">{{ wave.index|text }}</td><td>{{ wave.name|text }}</td>
<td><span class="status s-{{ wave.status|text }}">{{ wave.status|text }}</span></td>
<td>{{ (wave.hosts or [])|join(', ') }}</td><td>{{ wave.started|when }}</td><td>{{ wave.finished|when }}</td>
<td>{{ wave_summary[loop.index0].duration|duration }}</td>
<td class="counts">{% for state, n in wave_summary[loop.index0].states.items() %}
<span>{{ state }} {{ n }}</span>
{% endfor %}</td></tr>
{% else %}
<tr><td colspan="8" class="none">No waves in this ledger.</td></tr>
{% endfor %}
</table>

<h2>Devices</h2>
<table id="devices">
<tr><th>Device</th><th>Wave</th><th>Class</th><th>Variant</th><th>State</th><th>Version before</th>
<th>Version after</th><th>Changed</th><th>Soak p95 (ms)</th><th>Requests</th><th>Errors</th><th>Restarts</th>
<th>Reason</th></tr>
{% for row in devices %}
<tr class="device" data-device="{{ row.name }}" data-state="{{ row.state }}">
<td>{{ row.name }}</td><td>{{ row.wave }}</td><td>{{ row.device.class|text }}</td>
<td>{{ row.device.variant|text }}</td><td><span class="state s-{{ row.state }}">{{ row.state }}</span></td>
<td class="version-before">{{ row.device.version_before|text }}</td>
<td class="version-after">{{ row.device.version_after|text }}</td>
<td>{{ 'yes' if row.device.updated else 'no' }}</td>
<td class="num">{{ row.soak.p95_ms|text }}</td><td class="num">{{ row.soak.requests|text }}</td>
<td class="num">{{ row.soak.errors|text }}</td><td class="num">{{ row.soak.restarts|text }}</td>
<td class="reason">{{ row.device.reason if row.device.reason else '' }}
{% if row.soak_reasons %}<ul class="reasons">{% for reason in row.soak_reasons %}<li>{{ reason }}</li>
{% endfor %}</ul>{% endif %}</td></tr>
{% else %}
<tr><td colspan="13" class="none">No devices in this ledger.</td></tr>
{% endfor %}
</table>

<h2>Latency</h2>
{% if latency %}<div class="chart" id="chart-latency">{{ latency }}</div>
{% else %}<p class="none" id="no-latency">No device has a soak result yet.</p>{% endif %}
{% if samples %}<div class="chart" id="chart-samples">{{ samples }}</div>
{% else %}<p class="none" id="no-samples">No soak samples in this ledger.</p>{% endif %}

<h2>Progress</h2>
{% if progress %}<div class="chart" id="chart-progress">{{ progress }}</div>
{% else %}<p class="none" id="no-progress">No device has a timed history yet.</p>{% endif %}
<p class="none">Times are UTC. Written by edgeai.fleet.fleet_report from the rollout's ledger.</p>
</body>
</html>
'''


def _environment() -> Environment:
    env = Environment(autoescape=True, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=_when, duration=_duration, text=_text, settings=_settings)
    return env


class _Lenient(dict):
    """A mapping the template can ask for any key: a key the ledger lacks reads as None."""

    def __getattr__(self, name: str) -> t.Any:
        return self.get(name)


def _lenient(value: t.Any) -> _Lenient:
    return _Lenient(value) if isinstance(value, dict) else _Lenient()


def _device_rows(waves: t.List[dict], devices: t.Dict[str, dict]) -> t.List[dict]:
    names = {wave.get('index'): wave.get('name') for wave in waves}
    rows = []
    for name in sorted(devices, key=lambda name: (str(devices[name].get('wave')), name)):
        device = devices[name]
        soak = _lenient(device.get('soak'))
        reasons = soak.get('reasons') if isinstance(soak.get('reasons'), list) else []
        rows.append({'name': str(name), 'device': _lenient(device), 'soak': soak,
                     'state': str(device.get('state') or 'pending'),
                     'wave': _text(names.get(device.get('wave'), device.get('wave'))),
                     'soak_reasons': [str(reason) for reason in reasons if reason != device.get('reason')]})
    return rows


def render_html(ledger: dict) -> str:
    """report.html: one page, everything inline (styles, pygal's SVG charts), no script, nothing loaded."""
    if not HAS_PYGAL:
        raise ReportError(PYGAL_MISSING)
    waves, devices = _checked(ledger)
    summary = summarize(ledger)
    page = _environment().from_string(PAGE)
    return page.render(
        ledger=_lenient(ledger), release=_lenient(ledger.get('release')), summary=summary,
        thresholds=ledger.get('thresholds') if isinstance(ledger.get('thresholds'), dict) else {},
        soak=ledger.get('soak') if isinstance(ledger.get('soak'), dict) else {},
        breach=_lenient(ledger['breach']) if isinstance(ledger.get('breach'), dict) else None,
        waves=[_lenient(wave) for wave in waves], wave_summary=summary['waves'],
        devices=_device_rows(waves, devices),
        latency=latency_chart(ledger), samples=samples_chart(ledger), progress=progress_chart(ledger))
