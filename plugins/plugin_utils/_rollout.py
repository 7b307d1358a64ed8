# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The staged rollout's ledger and decisions, on the controller (docs/rollout.md).

The ledger (``<rollout_dir>/<rollout id>/ledger.json``) records each device's state through the rollout. It is a
cache: every device keeps its own marks (``edgeai-runtime rollout status``, in its deployment history), and
``plan`` rebuilds every reachable device's state from them each run, so a controller that lost the file (a fresh
AWX execution environment) resumes where the fleet is. The file adds what only the controller saw: when each
state began, the waves' start and end, the soak samples.

Pure logic apart from ``LedgerFile`` (a JSON file written atomically under an flock, since every fork of
ansible-playbook writes its host's entry).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import tempfile
import time

FORMAT = 1
STATES = ('pending', 'deferred', 'transferring', 'installing', 'soaking', 'succeeded', 'failed', 'rolled_back',
          'unreachable')
#: States in which a device has finished its part of the wave: they count towards the thresholds.
FINISHED = ('succeeded', 'failed', 'unreachable')
#: States after which a device needs nothing more from this attempt.
DONE = ('succeeded', 'failed', 'rolled_back', 'unreachable')
ACTIONS = ('', 'resume', 'restart', 'rollback')


class RolloutError(Exception):
    """Bad input or a refused step; the message names the thing and the cause."""


def rollout_id(name, version):
    return '%s-%s' % (name, version)


def check_thresholds(thresholds):
    """Refuse thresholds outside 0-100 % (before anything changes)."""
    for key in ('wave_max_failure_pct', 'total_max_failure_pct'):
        value = thresholds.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            raise RolloutError('%s must be a percentage within 0-100, got %r' % (key, value))
    minimum = thresholds.get('wave_min_finished')
    if not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 1:
        raise RolloutError('wave_min_finished must be an integer of 1 or more, got %r' % (minimum,))


def check_soak(soak):
    if not isinstance(soak.get('seconds'), (int, float)) or soak['seconds'] < 0:
        raise RolloutError('the soak must be 0 seconds or more, got %r' % (soak.get('seconds'),))
    if not 0 <= soak.get('max_error_rate', -1) <= 1:
        raise RolloutError('the soak\'s max_error_rate must be within 0-1, got %r' % (soak.get('max_error_rate'),))
    if not soak.get('p95_ms', 0) > 0:
        raise RolloutError('the soak\'s p95_ms must be positive, got %r' % (soak.get('p95_ms'),))


# -- a device's state, from its own marks --------------------------------------------------------------------------

def _entry(wave, report):
    return {'wave': wave, 'class': report.get('class'), 'variant': report.get('variant'), 'state': 'pending',
            'version_before': report.get('active'), 'version_after': report.get('active'), 'updated': False,
            'reason': '', 'history': [], 'soak': None}


def state_from_marks(report, version, attempt):
    """What the device's marks of ``attempt`` and what it serves say about it: a dict of ledger fields (state,
    updated, version_before, version_after, reason, soak) plus ``needs_rollback`` (it serves the version this
    rollout put there, which failed or was breached, and the rollback did not happen yet) and ``breach`` (the
    breach reason a rollback mark carries)."""
    marks = [m for m in report.get('marks') or [] if m.get('attempt') == attempt]
    serving = report.get('serving') or report.get('active')
    found = {'needs_rollback': False, 'breach': None}
    if not marks:
        return dict(found, state='pending', updated=False, version_before=serving, version_after=serving)
    last = marks[-1]
    before = next((m.get('from_version') for m in marks if m.get('from_version')), None)
    updated = any(m['mark'] == 'installed' and (m.get('details') or {}).get('updated') for m in marks)
    found.update(version_before=before, version_after=serving, reason=last.get('reason') or '')
    mark = last['mark']
    if mark == 'installing':
        committed = report.get('committed') or {}
        if serving == version and (committed.get('finished') or 0) >= last['time']:
            return dict(found, state='soaking', updated=True)  # the update went in; its mark did not
        return dict(found, state='pending', updated=False, reason='')
    if mark == 'installed':
        return dict(found, state='soaking' if serving == version else 'pending', updated=updated)
    if mark == 'soaked':
        if serving != version:
            return dict(found, state='pending', updated=False,
                        reason='serves %s now, not %s: installed again' % (serving, version))
        return dict(found, state='succeeded', updated=updated, soak=last.get('details'))
    if mark == 'soak_failed':
        return dict(found, state='failed', updated=updated, soak=last.get('details'),
                    needs_rollback=updated and serving == version)
    if mark == 'failed':
        return dict(found, state='failed', updated=False)
    if mark == 'rolled_back':
        cause = (last.get('details') or {}).get('cause')
        if cause == 'breach':
            return dict(found, state='rolled_back', updated=False, breach=last.get('reason'))
        return dict(found, state='failed', updated=False)
    if mark == 'deferred':
        return dict(found, state='deferred', updated=False)
    raise RolloutError('unknown rollout mark %r' % mark)


# -- the plan --------------------------------------------------------------------------------------------------------

def new_ledger(release, attempt, thresholds, soak, now):
    return {'format': FORMAT, 'id': rollout_id(release['name'], release['version']), 'attempt': attempt,
            'release': dict(release), 'status': 'running', 'started': now, 'updated': now,
            'thresholds': dict(thresholds), 'soak': dict(soak), 'waves': [], 'breach': None, 'devices': {},
            'events': []}


def _event(ledger, now, kind, **fields):
    ledger['events'].append(dict(fields, time=now, kind=kind))


def latest_attempt(reports):
    attempts = [m.get('attempt') or 1 for r in reports.values() for m in r.get('marks') or []]
    return max(attempts) if attempts else 0


def plan(cached, reports, waves, release, thresholds, soak, action, now=None):
    """This run's ledger and what to do, from the ledger file (``cached``, or None), every device's ``reports``
    ({host: edgeai.fleet.device_rollout's report, or {'unreachable': True, 'msg': ...}}), the wave of each host
    (``waves``: {host: (index, name)}), the release ({name, version, src}), the thresholds and soak limits, and
    ``action`` ('', 'resume' or 'restart').

    Returns (ledger, todo): todo = {'waves': [{'name', 'index', 'hosts'}] still to run (empty waves absent),
    'rollback': [hosts to roll back before anything else], 'blocked': reason or None (a breached rollout that
    needs an explicit resume or restart), 'abort': reason or None (action 'rollback': the fleet rollback an
    operator asked for; every device this attempt updated is in 'rollback')}."""
    now = time.time() if now is None else now
    if action not in ACTIONS:
        raise RolloutError('rollout_action must be one of "", resume, restart, rollback; got %r' % (action,))
    check_thresholds(thresholds)
    check_soak(soak)
    no_variant = sorted(h for h, r in reports.items() if not r.get('unreachable') and not r.get('variant'))
    if no_variant:
        raise RolloutError('the release %s has no variant for %s: %s' % (
            release.get('src'), ', '.join(no_variant),
            '; '.join('%s: %s' % (h, reports[h].get('variant_error') or 'no variant fits') for h in no_variant)))
    bad_window = sorted(h for h, r in reports.items() if not r.get('unreachable') and r.get('window_error'))
    if bad_window:
        raise RolloutError('the maintenance windows of %s cannot be used: %s' % (
            ', '.join(bad_window), '; '.join('%s: %s' % (h, reports[h]['window_error']) for h in bad_window)))
    ident = rollout_id(release['name'], release['version'])
    if cached is not None and cached.get('id') != ident:
        cached = None
    attempt = max(latest_attempt(reports), (cached or {}).get('attempt') or 0) or 1
    ledger = copy.deepcopy(cached) if cached and cached.get('attempt') == attempt else \
        new_ledger(release, attempt, thresholds, soak, now)
    states = {h: state_from_marks(r, release['version'], attempt) for h, r in reports.items()
              if not r.get('unreachable')}
    breach = ledger.get('breach') or next(
        ({'wave': None, 'reason': s['breach'], 'time': now} for s in states.values() if s['breach']), None)
    if action == 'restart' or (breach and action == 'resume'):
        # A new attempt: the marks of the earlier ones no longer count. resume keeps the ledger's events.
        _event(ledger, now, action, attempt=attempt + 1, after=(breach or {}).get('reason'))
        kept = [] if action == 'restart' else ledger['events']
        ledger = new_ledger(release, attempt + 1, thresholds, soak, now)
        ledger['events'] = kept
        attempt += 1
        states = {h: dict(s, state='pending', updated=False, needs_rollback=False, breach=None, reason='', soak=None,
                          version_before=s['version_after']) for h, s in states.items()}
        breach = None
    ledger['thresholds'], ledger['soak'], ledger['updated'] = dict(thresholds), dict(soak), now
    ledger['release'] = dict(release)
    for host, (index, _name) in waves.items():
        entry = ledger['devices'].setdefault(host, _entry(index, reports.get(host, {})))
        entry['wave'] = index
        report = reports.get(host, {})
        entry['class'], entry['variant'] = report.get('class', entry['class']), report.get('variant', entry['variant'])
        found = states.get(host)
        if found is None:  # unreachable now: what the file says stands
            continue
        if entry['state'] != found['state'] and not (entry['state'] in ('transferring', 'installing') and
                                                     found['state'] == 'pending'):
            entry['history'].append({'state': found['state'], 'time': now, 'from': 'device marks'})
        entry['state'] = found['state']
        for key in ('updated', 'version_before', 'version_after'):
            entry[key] = found[key]
        if found.get('reason'):
            entry['reason'] = found['reason']
        if found.get('soak'):
            entry['soak'] = found['soak']
    ledger['waves'] = _waves(ledger, waves)
    rollback = sorted(h for h, s in states.items() if s['needs_rollback'])
    if action == 'rollback':  # the fleet rollback an operator asks for: every device this attempt updated
        reason = 'rolled back on request (rollout_action=rollback)'
        ledger['status'], ledger['breach'] = 'breached', breach or {'wave': None, 'reason': reason, 'time': now}
        _event(ledger, now, 'rollback', attempt=attempt)
        for wave in ledger['waves']:
            if wave['status'] in ('pending', 'running'):
                wave['status'] = 'stopped'
        rollback = sorted(set(rollback) | _still_updated(ledger, states))
        return ledger, {'waves': [], 'rollback': rollback, 'attempt': attempt, 'blocked': None,
                        'abort': ledger['breach']['reason']}
    if breach:
        ledger['status'], ledger['breach'] = 'breached', breach
        rollback = sorted(set(rollback) | _still_updated(ledger, states))
        return ledger, {'waves': [], 'rollback': rollback, 'attempt': attempt, 'abort': None,
                        'blocked': 'the rollout %s breached (attempt %d): %s; re-run with -e rollout_action=resume '
                                   'to try again, or -e rollout_action=restart to start over'
                                   % (ident, attempt, breach['reason'])}
    todo = [{'name': w['name'], 'index': w['index'],
             'hosts': [h for h in w['hosts'] if ledger['devices'][h]['state'] not in DONE]}
            for w in ledger['waves']]
    todo = [w for w in todo if w['hosts']]
    ledger['status'] = 'running' if todo else _final_status(ledger)
    return ledger, {'waves': todo, 'rollback': rollback, 'attempt': attempt, 'blocked': None, 'abort': None}


def _still_updated(ledger, reachable):
    """The reachable hosts that serve what this attempt put there, and have not been rolled back."""
    return {h for h, e in ledger['devices'].items() if e['updated'] and e['state'] != 'rolled_back' and h in reachable}


def _waves(ledger, waves):
    known = {w['name']: w for w in ledger.get('waves') or []}
    by_index = {}
    for host, (index, name) in waves.items():
        by_index.setdefault((index, name), []).append(host)
    result = []
    for (index, name), hosts in sorted(by_index.items()):
        wave = known.get(name) or {'status': 'pending', 'started': None, 'finished': None}
        result.append(dict(wave, index=index, name=name, hosts=sorted(hosts)))
    return result


def _final_status(ledger):
    if ledger.get('breach'):
        return 'rolled_back'
    if any(e['state'] in ('pending', 'deferred') for e in ledger['devices'].values()):
        return 'incomplete'  # deferred devices (or a held wave's successors): a re-run takes them
    return 'succeeded'


# -- transitions during the run ------------------------------------------------------------------------------------

def record(ledger, host, state, now=None, **fields):
    """Move ``host`` to ``state`` with the given ledger fields (reason, version_before, version_after, updated,
    soak); history gets the new state with its time (``at``: when it began, if earlier than now). ``stage_seconds``
    (the OTA's stage phase) splits a transferring state into transferring and installing."""
    now = time.time() if now is None else now
    if state not in STATES:
        raise RolloutError('unknown device state %r' % (state,))
    entry = ledger['devices'].get(host)
    if entry is None:
        raise RolloutError('%s is not part of the rollout %s' % (host, ledger['id']))
    at = fields.pop('at', None) or now
    stage_s = fields.pop('stage_seconds', None)
    if stage_s and entry['history'] and entry['history'][-1]['state'] == 'transferring':
        # the transfer (the OTA's stage phase) ended when the device began installing: verify, load, gate ...
        entry['history'].append({'state': 'installing', 'time': entry['history'][-1]['time'] + float(stage_s)})
    for key, value in fields.items():
        if value is not None:
            entry[key] = value
    entry['state'] = state
    entry['history'].append({'state': state, 'time': at})
    ledger['updated'] = now
    return entry


def start_wave(ledger, name, now=None):
    now = time.time() if now is None else now
    wave = _wave(ledger, name)
    if wave['started'] is None:
        wave['started'] = now
    wave['status'] = 'running'
    _event(ledger, now, 'wave_started', wave=name)
    return wave


def _wave(ledger, name):
    for wave in ledger['waves']:
        if wave['name'] == name:
            return wave
    raise RolloutError('the rollout %s has no wave %r' % (ledger['id'], name))


def gate(ledger, name, lost=(), now=None):
    """After wave ``name``: did the failures pass a threshold? ``lost``: the wave's hosts that left the play (Ansible
    found them unreachable), recorded as such. Records the breach (ledger status 'breached') and returns
    {'breached', 'reason', 'rollback': hosts this rollout updated, every started wave}."""
    now = time.time() if now is None else now
    wave = _wave(ledger, name)
    for host in lost:
        entry = ledger['devices'].get(host)
        if entry is not None and host in wave['hosts'] and entry['state'] not in DONE:
            record(ledger, host, 'unreachable', now, reason='unreachable during wave %s (was %s)'
                   % (name, entry['state']))
    thresholds = ledger['thresholds']
    counted = FINISHED if thresholds.get('unreachable_is_failure', True) else ('succeeded', 'failed')
    failing = ('failed', 'unreachable') if thresholds.get('unreachable_is_failure', True) else ('failed',)

    def tally(hosts):
        states = [ledger['devices'][h]['state'] for h in hosts]
        return sum(s in counted for s in states), sum(s in failing for s in states)

    finished, failed = tally(wave['hosts'])
    deferred = [h for h in wave['hosts'] if ledger['devices'][h]['state'] in ('deferred', 'pending')]
    reason = None
    if finished >= thresholds['wave_min_finished'] and failed * 100.0 > thresholds['wave_max_failure_pct'] * finished:
        reason = 'wave %s: %d of %d finished devices failed (%.0f%% > %g%%)' % (
            name, failed, finished, failed * 100.0 / finished, thresholds['wave_max_failure_pct'])
    all_finished, all_failed = tally(list(ledger['devices']))
    if reason is None and all_finished >= thresholds['wave_min_finished'] and \
            all_failed * 100.0 > thresholds['total_max_failure_pct'] * all_finished:
        reason = 'the rollout: %d of %d finished devices failed (%.0f%% > %g%% cumulative), after wave %s' % (
            all_failed, all_finished, all_failed * 100.0 / all_finished, thresholds['total_max_failure_pct'], name)
    held = None
    if reason is None and deferred and finished < thresholds['wave_min_finished']:
        # Too few devices finished to prove the wave: the next one waits for a run that finds these ready.
        held = 'wave %s: %d of %d devices finished (%d deferred: %s), fewer than wave_min_finished %d; the later ' \
               'waves wait for a re-run' % (name, finished, len(wave['hosts']), len(deferred), ', '.join(deferred),
                                            thresholds['wave_min_finished'])
    wave['finished'] = now
    wave['status'] = 'breached' if reason else 'held' if held else 'passed'
    _event(ledger, now, 'wave_gated', wave=name, finished=finished, failed=failed, deferred=len(deferred),
           breached=bool(reason), held=bool(held))
    if reason is None:
        if held:
            for other in ledger['waves']:
                if other['status'] == 'pending':
                    other['status'] = 'waiting'
        return {'breached': False, 'reason': None, 'rollback': [], 'held': held, 'deferred': deferred}
    ledger['status'] = 'breached'
    ledger['breach'] = {'wave': name, 'reason': reason, 'time': now}
    for other in ledger['waves']:
        if other['status'] in ('pending',):
            other['status'] = 'stopped'
    # A pull-mode device without a verdict may have taken the update all the same: it gets the rollback too (its
    # agent reports a rollback that changed nothing where the update never went in). A 'failed' device is not in
    # the set: a failed soak rolls the device back in its own run (device.yml; its mark 'rolled_back' with
    # cause failed leaves it 'failed' and no longer updated). Where that was cut short (a killed run), plan()'s
    # _still_updated and needs_rollback find the device still serving the update on the re-run and roll it back.
    rollback = sorted(h for h, e in ledger['devices'].items()
                      if e['updated'] and e['state'] in ('soaking', 'succeeded', 'installing', 'transferring')
                      or e.get('mode') == 'pull' and e['state'] in ('unreachable', 'transferring', 'soaking'))
    return {'breached': True, 'reason': reason, 'rollback': rollback, 'held': None, 'deferred': deferred}


def record_outcomes(ledger, devices, collected, now=None, refused=None):
    """Take the verdicts that pull-mode devices reported through the broker (the result of
    ``edgeai_runtime.controller.outcomes collect``) into the ledger. ``devices``: {host: device id}, the hosts whose
    documents were published. After an update, a device without a verdict is ``unreachable`` (its agent did not
    report in time); after a rollback it keeps its state, and the reason says the rollback is unconfirmed, or why
    it could not be published for it (``refused``: {host: why}). Returns {host: the state recorded}."""
    now = time.time() if now is None else now
    action = collected.get('action') or 'update'
    verdicts = collected.get('verdicts') or {}
    waited = collected.get('seconds')
    states = {}
    for host, device_id in sorted(devices.items()):
        entry = ledger['devices'].get(host)
        if entry is None:
            raise RolloutError('%s is not part of the rollout %s' % (host, ledger['id']))
        data = ((verdicts.get(device_id) or {}).get('data')) or {}
        if host in (refused or {}):
            entry['reason'] = '%s; not rolled back: %s' % (entry.get('reason') or entry['state'], refused[host])
            states[host] = entry['state']
            continue
        if not data:
            why = 'no %s verdict from %s through the broker%s' % (
                action, device_id, ' within %.0f s' % waited if isinstance(waited, (int, float)) else '')
            if action == 'update':
                record(ledger, host, 'unreachable', now, reason=why + ' (its agent did not report)', mode='pull')
            else:
                entry['reason'] = '%s; the rollback was published, %s' % (entry.get('reason') or entry['state'], why)
            states[host] = entry['state']
            continue
        state = data.get('state')
        if state not in ('succeeded', 'failed', 'rolled_back'):
            raise RolloutError('%s (%s) reported the state %r for %s, not succeeded, failed or rolled_back'
                               % (host, device_id, state, ledger['id']))
        if action == 'rollback' and entry['state'] == 'failed':
            state = 'failed'  # its own soak failed before the breach: it stays a failure, now rolled back
        at = data.get('time')
        record(ledger, host, state, now, at=at if isinstance(at, (int, float)) and at < now else None,
               reason=data.get('reason') or '', version_before=data.get('version_before'),
               version_after=data.get('version_after'), soak=data.get('soak'), mode='pull',
               updated=bool(data.get('updated')) and state == 'succeeded')
        states[host] = state
    return states


def finish(ledger, now=None):
    now = time.time() if now is None else now
    ledger['status'] = _final_status(ledger)
    ledger['updated'] = now
    _event(ledger, now, 'finished', status=ledger['status'])
    return ledger


def summary(ledger):
    counts = {}
    for entry in ledger['devices'].values():
        counts[entry['state']] = counts.get(entry['state'], 0) + 1
    return counts


# -- the file --------------------------------------------------------------------------------------------------------

class LedgerFile(object):
    """``<rollout_dir>/<id>/ledger.json``: read, and changed under an exclusive flock on ``ledger.lock``, written to
    a temporary file and renamed over the old one (a reader sees the old document or the new, never half)."""

    def __init__(self, rollout_dir, ident):
        self.dir = os.path.join(os.path.expanduser(rollout_dir), ident)
        self.path = os.path.join(self.dir, 'ledger.json')

    def read(self):
        try:
            with open(self.path, encoding='utf-8') as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise RolloutError('reading the ledger %s: %s' % (self.path, exc))
        if not isinstance(data, dict) or data.get('format') != FORMAT:
            raise RolloutError('the ledger %s is not a format %d ledger; move it away to rebuild it from the '
                               'devices' % (self.path, FORMAT))
        return data

    @contextlib.contextmanager
    def locked(self):
        try:
            os.makedirs(self.dir, exist_ok=True)
            lock = open(os.path.join(self.dir, 'ledger.lock'), 'a', encoding='utf-8')
        except OSError as exc:
            raise RolloutError('opening the rollout directory %s: %s' % (self.dir, exc))
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        finally:
            lock.close()

    def write(self, ledger):
        fd, tmp = tempfile.mkstemp(prefix='.ledger.', dir=self.dir)
        try:
            with os.fdopen(fd, 'w', encoding='utf-8') as f:
                json.dump(ledger, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise RolloutError('writing the ledger %s: %s' % (self.path, exc))
        dirfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def archive(self, now):
        """Move the ledger aside (a restart): ledger.<time>.json."""
        if os.path.exists(self.path):
            os.replace(self.path, os.path.join(self.dir, 'ledger.%d.json' % int(now)))
