"""report.html in a real browser: headless Chromium (Debian's package `chromium`, installed by
scripts/setup.sh) opens the page the fleet_report renders, with every host name resolving to nothing, and
dumps the DOM it built; the charts, the device rows and the waves must be in it. A screenshot is taken too
(it is kept under the test's tmp_path for a person to look at)."""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ledgers
from support.report_dom import ReportDom, web_addresses

# The checkout as ansible_collections.edgeai.fleet (the committed .collections link), as in tests/unit.
COLLECTIONS = str(Path(__file__).resolve().parents[2] / '.collections')
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)

render_html = importlib.import_module('ansible_collections.edgeai.fleet.plugins.plugin_utils._fleet_report').render_html


def find_chromium():
    found = shutil.which('chromium') or shutil.which('chromium-browser')
    if found:
        return found
    if shutil.which('apt-get') and os.geteuid() == 0:
        subprocess.run(['apt-get', 'update', '-qq'], check=True, capture_output=True)
        subprocess.run(['apt-get', 'install', '-y', '-qq', '--no-install-recommends', 'chromium'], check=True,
                       capture_output=True, env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'))
        return shutil.which('chromium')
    return None


@pytest.fixture(scope='module')
def chromium():
    found = find_chromium()
    if not found:
        pytest.skip('needs Chromium (Debian package chromium, installed by scripts/setup.sh); none is installed '
                    'and apt-get is not available to install it')
    return found


def browse(chromium, page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Chromium, headless, on the file, with a profile of its own and no name resolving: anything the page
    tried to load from a network would fail (and show as missing in the DOM and the screenshot)."""
    argv = [chromium, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-extensions',
            '--user-data-dir=%s' % (tmp_path / 'profile'), '--host-resolver-rules=MAP * ~NOTFOUND',
            '--disable-background-networking', '--disable-component-update', '--disable-sync',
            *args, page.as_uri()]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)


@pytest.fixture(scope='module')
def breached_page(tmp_path_factory):
    path = tmp_path_factory.mktemp('report') / 'report.html'
    path.write_text(render_html(ledgers.breached()), encoding='utf-8')
    return path


def test_the_browser_builds_the_charts_devices_and_waves(chromium, breached_page, tmp_path):
    served = breached_page.read_text(encoding='utf-8')
    assert web_addresses(served) == set()
    dumped = browse(chromium, breached_page, tmp_path, '--dump-dom').stdout
    dom = ReportDom(dumped)

    assert set(dom.charts) == {'chart-latency', 'chart-samples', 'chart-progress'}
    for chart in dom.charts.values():
        assert 'svg' in chart.tags and 'pygal-chart' in chart.classes
        assert {'series', 'serie-0', 'plot', 'axis'} <= chart.classes
    assert {'cam-01', 'cam-02', 'cam-04', 'p95 limit (100 ms)'} <= set(dom.charts['chart-samples'].texts)
    assert {'in progress', 'succeeded', 'failed', 'rolled back'} <= set(dom.charts['chart-progress'].texts)
    assert {'cam-01', 'cam-02', 'cam-04', '182.5'} <= set(dom.charts['chart-latency'].texts)

    ledger = ledgers.breached()
    assert {name: row['attrs']['data-state'] for name, row in dom.devices.items()} == {
        name: device['state'] for name, device in ledger['devices'].items()}
    assert dom.devices['cam-03']['cells'][-1] == ledgers.HOSTILE_REASON      # text, not markup
    assert [(name, row['attrs']['data-status']) for name, row in dom.waves.items()] == [
        ('canary', 'passed'), ('wave1', 'breached'), ('wave2', 'stopped')]
    assert dom.ids['breach'].endswith(ledgers.BREACH_REASON)
    # The browser ran no script (the hostile reason's included) and found nothing to load.
    assert not [tag for tag, _attrs in dom.elements if tag in ('script', 'img', 'iframe', 'link')]
    assert web_addresses(dumped) == set()


def test_a_screenshot_of_the_report(chromium, breached_page, tmp_path):
    shot = tmp_path / 'report.png'
    browse(chromium, breached_page, tmp_path, '--window-size=1280,3000', '--hide-scrollbars',
           '--screenshot=%s' % shot)
    data = shot.read_bytes()
    assert data.startswith(b'\x89PNG\r\n\x1a\n') and len(data) > 50000   # a page with charts, not a blank one
    print('screenshot: %s' % shot)
