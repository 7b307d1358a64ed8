"""plugins/filter/telemetry_table.py on real samples: the device runtime's collector, run on each sim
class's evidence tree (sensor files as the real boards write them), flattened and written as CSV."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.edgeai.fleet.plugins.filter.telemetry_table import COLUMNS, telemetry_csv, telemetry_table
from edgeai_runtime.device.config import RuntimeConfig, TelemetryConfig
from edgeai_runtime.device.telemetry import Collector

REPO = Path(__file__).resolve().parents[4]


def _sample(tmp_path, hardware_class):
    root = tmp_path / hardware_class
    root.mkdir()
    config = TelemetryConfig(root=str(root), device_id='sim-%s' % hardware_class,
                             evidence_root=str(REPO / 'sim' / 'evidence' / hardware_class))
    return Collector(config, RuntimeConfig(root=str(root), hardware_class=hardware_class)).sample()


@pytest.fixture(scope='module')
def samples(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('telemetry')
    return {'orin-01': _sample(tmp, 'jetson_orin'), 'rpi-01': _sample(tmp, 'raspberry_pi'), 'gone-01': None}


def test_one_row_per_host_sorted_with_every_column(samples):
    rows = telemetry_table(samples)
    assert [row['host'] for row in rows] == ['gone-01', 'orin-01', 'rpi-01']
    assert all(tuple(row) == COLUMNS for row in rows)


def test_an_unreachable_host_is_a_row_of_nulls(samples):
    gone = telemetry_table(samples)[0]
    assert gone['reachable'] is False
    assert {k: v for k, v in gone.items() if k not in ('host', 'reachable')} == dict.fromkeys(COLUMNS[2:])


def test_sensors_are_summarised_from_the_boards_files(samples):
    rows = {row['host']: row for row in telemetry_table(samples)}
    orin, rpi = rows['orin-01'], rows['rpi-01']
    assert orin['hardware_class'] == 'jetson_orin' and orin['reachable'] is True
    # The sim Orin's hottest zone and its INA3221 input rail (VDD_IN: 5.072 V x 1.136 A).
    assert orin['temperature_max_celsius'] == pytest.approx(45.5)
    assert orin['power_watts'] == pytest.approx(5.072 * 1.136)
    assert orin['throttled_now'] is None  # no Raspberry Pi firmware on a Jetson
    # The sim Pi's firmware file says: under-voltage and throttling since boot, nothing now.
    assert rpi['throttled_now'] == 'none'
    assert rpi['throttled_since_boot'] == 'throttled under_voltage'
    assert rpi['power_watts'] is None
    assert orin['cpu_count'] >= 1 and 0 <= orin['memory_used_ratio'] <= 1
    assert orin['service_running'] is False and orin['inference_requests'] is None


def test_csv_round_trips(samples):
    text = telemetry_csv(samples)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 3
    assert rows[0]['reachable'] == 'false' and rows[0]['device_id'] == ''
    assert rows[1]['reachable'] == 'true' and rows[1]['device_id'] == 'sim-jetson_orin'
    assert float(rows[1]['temperature_max_celsius']) == pytest.approx(45.5)


@pytest.mark.parametrize('bad', [['not', 'a', 'dict'], 'text'])
def test_bad_input_is_a_clear_error(bad):
    with pytest.raises(AnsibleFilterError, match='telemetry_table: expected a dict'):
        telemetry_table(bad)
    with pytest.raises(AnsibleFilterError, match='telemetry_row: a sample must be a dict'):
        telemetry_table({'h': ['x']})
