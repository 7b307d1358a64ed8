# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r'''
name: fleet_report
type: notification
short_description: Write a report of each staged rollout, as JSON and as one self-contained HTML page
version_added: 0.6.0
description:
  - Watches the results of the tasks that run a staged rollout (M(edgeai.fleet.rollout) by default) and keeps
    the last ledger each returned, per rollout directory (the C(rollout_dir) of the result).
  - At the end of the playbook it reads C(<rollout_dir>/ledger.json) again when that file exists (the file is
    the truth; the ledger of the last result is the fallback) and writes C(report.json) and C(report.html)
    next to it, or into C(<report_dir>/<name of the rollout directory>/) when O(report_dir) is set. Both are
    replaced atomically.
  - C(report.json) is the ledger with a C(summary) added (devices per state, per wave, the duration, the
    breach). C(report.html) is one file with everything inline (waves, devices, versions before and after,
    reasons, charts of soak latency and of progress over time); it loads nothing from anywhere.
  - A report that cannot be written (a malformed ledger, a directory that is not writable) is a warning; it
    never fails the run. Without the Python library pygal only C(report.json) is written, with a warning.
  - Only the display is written to, on stderr (a stdout callback such as C(json) keeps its stdout its own); the
    plugin works the same under ansible-runner and AWX.
  - Enable it with C(callbacks_enabled = edgeai.fleet.fleet_report) in C(ansible.cfg) or
    C(ANSIBLE_CALLBACKS_ENABLED=edgeai.fleet.fleet_report).
requirements:
  - pygal (Python library, on the controller) for C(report.html)
options:
  report_dir:
    description:
      - Write the reports here instead of into each rollout directory, one subdirectory per rollout named
        like its rollout directory.
      - Unset, the reports are written next to each rollout's C(ledger.json).
    type: path
    env:
      - name: EDGEAI_FLEET_REPORT_DIR
    ini:
      - section: callback_fleet_report
        key: report_dir
  rollout_actions:
    description:
      - The task actions whose results carry a rollout ledger (C(rollout_dir) and C(ledger)).
      - A task matches when the action as written or as resolved (its fully qualified name) is in this list.
    type: list
    elements: str
    default: [edgeai.fleet.rollout, rollout]
    env:
      - name: EDGEAI_FLEET_REPORT_ACTIONS
    ini:
      - section: callback_fleet_report
        key: rollout_actions
seealso:
  - name: Fleet report
    description: What the report shows, and where it is written (docs/rollout.md in the collection).
    link: https://github.com/edgeai/fleet/blob/main/docs/rollout.md#fleet-report
'''

import json
import os
import tempfile
import typing as t

from ansible.plugins.callback import CallbackBase

from ansible_collections.edgeai.fleet.plugins.plugin_utils._fleet_report import (
    HAS_PYGAL, PYGAL_MISSING, ReportError, render_html, render_json,
)

LEDGER_FILE = 'ledger.json'


def write_atomic(path: str, text: str) -> None:
    """Replace ``path`` with ``text``: written to a temporary file beside it, then renamed over it."""
    directory = os.path.dirname(path) or '.'
    handle, temp = tempfile.mkstemp(prefix='.%s.' % os.path.basename(path), suffix='.tmp', dir=directory)
    try:
        with os.fdopen(handle, 'w', encoding='utf-8') as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def read_ledger(rollout_dir: str) -> t.Optional[t.Any]:
    """The rollout directory's ledger.json, or None when there is none. OSError / ValueError when unreadable."""
    path = os.path.join(rollout_dir, LEDGER_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding='utf-8') as stream:
        return json.load(stream)


class CallbackModule(CallbackBase):
    """Writes report.json and report.html of every rollout the playbook ran (see DOCUMENTATION)."""

    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'edgeai.fleet.fleet_report'
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, display=None, options=None):
        super().__init__(display=display, options=options)
        self._seen: t.Dict[str, t.Any] = {}   # rollout_dir -> the ledger of its last task result

    # The results --------------------------------------------------------------------------------------------

    def _remember(self, result) -> None:
        """Keep the ledger of a rollout task's result. Only ever warns."""
        try:
            data = getattr(result, 'result', None)
            if data is None:
                data = result._result   # ansible-core < 2.19
            if not isinstance(data, dict) or 'rollout_dir' not in data:
                return
            task = getattr(result, 'task', None) or result._task
            names = set(self.get_option('rollout_actions') or ())
            # The action as written first; its FQCN only then, here in v2_runner_(item_)on_ok/failed, where
            # ansible-core has resolved it (tasks without a rollout_dir never get this far).
            if task.action not in names and task.resolved_action not in names:
                return
            rollout_dir = data['rollout_dir']
            if not isinstance(rollout_dir, str) or not rollout_dir:
                self._display.warning('edgeai.fleet.fleet_report: task "%s" returned a rollout_dir that is not a '
                                      'path (%r); no report for it' % (task.get_name(), rollout_dir))
                return
            self._seen[rollout_dir] = data.get('ledger')
        except Exception as exc:  # pylint: disable=broad-exception-caught  # a report never breaks the run
            self._display.warning('edgeai.fleet.fleet_report: reading a task result: %s: %s'
                                  % (type(exc).__name__, exc))

    def v2_runner_on_ok(self, result):
        self._remember(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._remember(result)

    def v2_runner_item_on_ok(self, result):
        self._remember(result)

    def v2_runner_item_on_failed(self, result):
        self._remember(result)

    # The reports --------------------------------------------------------------------------------------------

    def _ledger(self, rollout_dir: str) -> t.Any:
        """ledger.json when it can be read, else the ledger of the last result."""
        try:
            on_disk = read_ledger(rollout_dir)
        except (OSError, ValueError) as exc:
            if self._seen.get(rollout_dir) is None:
                raise ReportError('reading %s: %s' % (os.path.join(rollout_dir, LEDGER_FILE), exc)) from exc
            self._display.warning('edgeai.fleet.fleet_report: reading %s: %s; the report shows the ledger of the '
                                  'last task result' % (os.path.join(rollout_dir, LEDGER_FILE), exc))
            return self._seen[rollout_dir]
        return self._seen.get(rollout_dir) if on_disk is None else on_disk

    def _target(self, rollout_dir: str) -> str:
        report_dir = self.get_option('report_dir')
        if not report_dir:
            return rollout_dir
        return os.path.join(report_dir, os.path.basename(os.path.normpath(rollout_dir)))

    def write_report(self, rollout_dir: str) -> t.List[str]:
        """Write the rollout's report.json (and report.html with pygal); the paths written."""
        ledger = self._ledger(rollout_dir)
        report = render_json(ledger)
        page = render_html(ledger) if HAS_PYGAL else None
        target = self._target(rollout_dir)
        os.makedirs(target, exist_ok=True)
        written = [os.path.join(target, 'report.json')]
        write_atomic(written[0], json.dumps(report, indent=2, sort_keys=True) + '\n')
        if page is not None:
            written.append(os.path.join(target, 'report.html'))
            write_atomic(written[1], page)
        return written

    def v2_playbook_on_stats(self, stats):
        if self._seen and not HAS_PYGAL:
            self._display.warning('edgeai.fleet.fleet_report: %s; only report.json is written' % PYGAL_MISSING)
        for rollout_dir in sorted(self._seen):
            try:
                written = self.write_report(rollout_dir)
            except Exception as exc:  # pylint: disable=broad-exception-caught  # a report never breaks the run
                cause = str(exc) if isinstance(exc, (ReportError, OSError)) else '%s: %s' % (type(exc).__name__, exc)
                self._display.warning('edgeai.fleet.fleet_report: writing the report of rollout %s: %s'
                                      % (rollout_dir, cause))
            else:
                # On stderr, as the warnings: a machine-read stdout (the json callback) stays one JSON document.
                self._display.display('edgeai.fleet.fleet_report: rollout %s: wrote %s'
                                      % (rollout_dir, ', '.join(written)), stderr=True)
