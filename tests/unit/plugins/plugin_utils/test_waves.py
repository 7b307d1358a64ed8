"""plugins/plugin_utils/_waves.py: wave plans parsed and checked, and devices placed by the stable hash."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from ansible_collections.edgeai.fleet.plugins.plugin_utils._waves import (
    WavePlanError, assign_waves, default_plan, fraction, parse_wave_plan, unknown_canaries, wave_members, wave_name)

FLEET = ['dev-%05d' % number for number in range(10000)]


def test_fraction_is_the_documented_sha256_prefix():
    expected = int(hashlib.sha256(b'edgeai-wave:nano-a01').hexdigest()[:16], 16) / 2 ** 64
    assert fraction('nano-a01') == expected
    assert 0 <= fraction('nano-a01') < 1


def test_wave_names():
    assert [wave_name(index) for index in range(4)] == ['canary', 'wave1', 'wave2', 'wave3']
    for bad in (-1, True, 1.0):
        with pytest.raises(ValueError):
            wave_name(bad)


@pytest.mark.parametrize('value, plan', [
    (None, {'canary': [], 'percentages': [10, 50, 100]}),
    ('', {'canary': [], 'percentages': [10, 50, 100]}),
    ({}, {'canary': [], 'percentages': [10, 50, 100]}),
    ('10,50,100', {'canary': [], 'percentages': [10, 50, 100]}),
    (' 12.5 , 100 ', {'canary': [], 'percentages': [12.5, 100]}),
    ('count:2,5', {'canary': [], 'counts': [2, 5]}),
    ('counts:3', {'canary': [], 'counts': [3]}),
    ('exp:1,2', {'canary': [], 'exponential': {'start': 1, 'factor': 2}}),
    ('canary=a;b|10,50,100', {'canary': ['a', 'b'], 'percentages': [10, 50, 100]}),
    ('canary=a; b |count:2', {'canary': ['a', 'b'], 'counts': [2]}),
    ('canary=a', {'canary': ['a'], 'percentages': [10, 50, 100]}),
    ('canary=|exp:2,3', {'canary': [], 'exponential': {'start': 2, 'factor': 3}}),
    ({'canary': ['x']}, {'canary': ['x'], 'percentages': [10, 50, 100]}),
    ({'counts': [1, 4]}, {'canary': [], 'counts': [1, 4]}),
    ({'canary': ['x'], 'exponential': {'start': 1, 'factor': 4}},
     {'canary': ['x'], 'exponential': {'start': 1, 'factor': 4}}),
    ({'percentages': [100]}, {'canary': [], 'percentages': [100]}),
])
def test_plans_are_parsed_and_normalised(value, plan):
    assert parse_wave_plan(value) == plan
    # A normalised plan parses to itself.
    assert parse_wave_plan(plan) == plan


def test_default_plan():
    assert parse_wave_plan(None) == default_plan() == {'canary': [], 'percentages': [10, 50, 100]}
    # Callers get their own copy.
    default_plan()['percentages'].append(1)
    assert default_plan()['percentages'] == [10, 50, 100]


@pytest.mark.parametrize('value, message', [
    ({'percentages': [10, 50, 90]}, 'must end at 100'),
    ({'percentages': [10, 50, 50, 100]}, 'strictly increasing; 50 follows 50'),
    ({'percentages': [50, 10, 100]}, 'strictly increasing; 10 follows 50'),
    ({'percentages': [0, 100]}, 'percentage 0 is outside (0, 100]'),
    ({'percentages': [-5, 100]}, 'percentage -5 is outside'),
    ({'percentages': [10, 150]}, 'percentage 150 is outside'),
    ({'percentages': [float('nan'), 100]}, 'outside'),
    ({'percentages': []}, 'percentages is empty'),
    ({'percentages': '10,100'}, 'percentages must be a list'),
    ({'percentages': [True, 100]}, 'percentage True is not a number'),
    ({'percentages': ['10', 100]}, "percentage '10' is not a number"),
    ({'counts': [2, 0]}, 'count 0 is below 1'),
    ({'counts': [-1]}, 'count -1 is below 1'),
    ({'counts': [1.5]}, 'count 1.5 is not a whole number'),
    ({'counts': []}, 'counts is empty'),
    ({'exponential': {'start': 1, 'factor': 1}}, 'factor 1 is below 2'),
    ({'exponential': {'start': 0, 'factor': 2}}, 'start 0 is below 1'),
    ({'exponential': {'start': 1}}, 'exponential needs factor'),
    ({'exponential': {'start': 1, 'factor': 2.5}}, 'factor 2.5 is not a whole number'),
    ({'exponential': {'start': 1, 'factor': 2, 'limit': 9}}, 'exponential has unknown key limit'),
    ({'exponential': [1, 2]}, 'exponential must be a mapping'),
    ({'percent': [10, 100]}, 'unknown key percent'),
    ({'canary': [], 'wave': 1, 'extra': 2}, 'unknown keys extra, wave'),
    ({'percentages': [10, 100], 'counts': [2]}, 'percentages and counts are given together'),
    ({'counts': [2], 'exponential': {'start': 1, 'factor': 2}}, 'counts and exponential are given together'),
    ({'canary': 'a'}, 'canary must be a list'),
    ({'canary': ['a', 'a']}, 'canary lists a twice'),
    ({'canary': ['a', '']}, "canary entry '' is not a device id"),
    ({'canary': [7]}, 'canary entry 7 is not a device id'),
    ('10,50,90', 'must end at 100'),
    ('10,,100', "'' is not a number"),
    ('ten,100', "'ten' is not a number"),
    ('count:2,x', "'x' is not a whole number"),
    ('count:2.5', "'2.5' is not a whole number"),
    ('count:0', 'count 0 is below 1'),
    ('exp:1', 'exp takes two numbers'),
    ('exp:1,1', 'factor 1 is below 2'),
    ('exp:0,2', 'start 0 is below 1'),
    ('linear:1,2', "unknown mode 'linear'"),
    ('canary=a;a|10,100', 'canary lists a twice'),
    (42, 'expected a mapping or a string'),
    ([10, 50, 100], 'expected a mapping or a string'),
])
def test_bad_plans_name_what_is_wrong(value, message):
    with pytest.raises(WavePlanError) as err:
        parse_wave_plan(value)
    assert message in str(err.value)


def test_assignment_is_deterministic_and_independent_of_input_order():
    plan = {'canary': ['dev-00003'], 'percentages': [10, 50, 100]}
    first = assign_waves(FLEET[:500], plan)
    assert first == assign_waves(list(reversed(FLEET[:500])), plan)
    assert first == assign_waves(FLEET[:500], '  canary=dev-00003 | 10,50,100')
    assert first['dev-00003'] == 0


def test_percentages_place_by_the_hash_alone():
    waves = assign_waves(FLEET[:300], {'percentages': [10, 50, 100]})
    for device_id, index in waves.items():
        limits = [0.10, 0.50, 1.0]
        assert index == 1 + next(i for i, limit in enumerate(limits) if fraction(device_id) < limit)


def test_growing_the_fleet_never_moves_a_device_with_percentages():
    plan = {'canary': ['dev-00010'], 'percentages': [5, 20, 60, 100]}
    small = assign_waves(FLEET[:1000], plan)
    grown = assign_waves(FLEET, plan)
    assert all(grown[device_id] == index for device_id, index in small.items())
    # And removing devices moves nobody either.
    shrunk = assign_waves(FLEET[::7], plan)
    assert all(grown[device_id] == index for device_id, index in shrunk.items())


def test_percentages_give_the_planned_proportions():
    waves = Counter(assign_waves(FLEET, {'percentages': [10, 50, 100]}).values())
    assert sorted(waves) == [1, 2, 3]
    # Binomial with n=10,000: one standard deviation is at most 50 devices; allow about 4.
    assert abs(waves[1] - 1000) < 200
    assert abs(waves[2] - 4000) < 200
    assert abs(waves[3] - 5000) < 200
    assert sum(waves.values()) == len(FLEET)


def test_a_single_hundred_percent_wave_takes_everyone():
    assert set(assign_waves(FLEET[:50], '100').values()) == {1}


def test_counts_cut_slices_in_hash_order_and_the_rest_forms_a_last_wave():
    ids = FLEET[:20]
    waves = assign_waves(ids, {'canary': ['dev-00000'], 'counts': [2, 5]})
    sizes = Counter(waves.values())
    assert sizes == {0: 1, 1: 2, 2: 5, 3: 12}
    ordered = sorted((device_id for device_id in ids if device_id != 'dev-00000'),
                     key=lambda device_id: (fraction(device_id), device_id))
    assert [waves[device_id] for device_id in ordered] == [1] * 2 + [2] * 5 + [3] * 12


def test_counts_larger_than_the_fleet_leave_later_waves_absent():
    waves = assign_waves(FLEET[:3], 'count:2,5')
    assert Counter(waves.values()) == {1: 2, 2: 1}
    # Exactly filled counts: no empty last wave.
    assert Counter(assign_waves(FLEET[:7], 'count:2,5').values()) == {1: 2, 2: 5}


def test_exponential_sizes():
    assert Counter(assign_waves(FLEET[:20], 'exp:1,2').values()) == {1: 1, 2: 2, 3: 4, 4: 8, 5: 5}
    assert Counter(assign_waves(FLEET[:13], 'exp:1,3').values()) == {1: 1, 2: 3, 3: 9}
    assert Counter(assign_waves(FLEET[:10], 'exp:4,2').values()) == {1: 4, 2: 6}
    waves = assign_waves(FLEET[:100], 'exp:1,2')
    ordered = sorted(FLEET[:100], key=lambda device_id: (fraction(device_id), device_id))
    assert [waves[device_id] for device_id in ordered[:7]] == [1, 2, 2, 3, 3, 3, 3]


def test_canary_devices_are_wave_zero_and_outside_the_other_waves():
    canary = ['dev-00005', 'dev-00042', 'dev-09999']
    waves = assign_waves(FLEET, {'canary': canary, 'percentages': [10, 100]})
    assert {device_id for device_id, index in waves.items() if index == 0} == set(canary)
    assert len(waves) == len(FLEET)
    # Counted modes slice the non-canary devices only.
    counted = assign_waves(FLEET[:10], {'canary': ['dev-00001'], 'counts': [3]})
    assert Counter(counted.values()) == {0: 1, 1: 3, 2: 6}


def test_canary_ids_not_in_the_fleet_are_ignored_and_reported():
    plan = 'canary=dev-00001;gone-01;gone-02|10,100'
    waves = assign_waves(FLEET[:10], plan)
    assert 'gone-01' not in waves and waves['dev-00001'] == 0
    assert unknown_canaries(FLEET[:10], plan) == ['gone-01', 'gone-02']
    assert unknown_canaries(FLEET[:10], {'canary': ['dev-00001']}) == []


def test_empty_waves_are_absent():
    assert assign_waves([], default_plan()) == {}
    # Without a canary list, there is no wave 0.
    assert 0 not in assign_waves(FLEET[:100], '10,50,100').values()
    members = wave_members(assign_waves(['dev-00001', 'dev-00002'], 'canary=dev-00002|count:1,1'))
    assert members == [(0, ['dev-00002']), (1, ['dev-00001'])]


def test_wave_members_lists_each_wave_in_order_with_sorted_ids():
    waves = assign_waves(FLEET[:50], 'canary=dev-00049;dev-00001|count:5,10')
    members = wave_members(waves)
    assert [index for index, _ids in members] == [0, 1, 2, 3]
    assert members[0] == (0, ['dev-00001', 'dev-00049'])
    assert [len(ids) for _index, ids in members] == [2, 5, 10, 33]
    assert all(ids == sorted(ids) for _index, ids in members)
