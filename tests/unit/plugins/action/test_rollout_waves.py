"""Which wave each host of the play is in (plugins/action/rollout.py): the inventory's waves (edgeai_wave, set by the
edgeai.fleet.fleet inventory plugin), or an override plan applied to the hosts' device ids by the same stable hash."""
from __future__ import annotations

import pytest

from ansible_collections.edgeai.fleet.plugins.action.rollout import ActionModule
from ansible_collections.edgeai.fleet.plugins.plugin_utils import _rollout, _waves

HOSTS = ['cam-%02d' % i for i in range(20)]


def test_the_inventory_waves_are_used_as_they_are():
    hostvars = {h: {'edgeai_wave': i % 3} for i, h in enumerate(HOSTS)}
    waves = ActionModule._waves(None, HOSTS, hostvars)
    assert waves['cam-00'] == (0, 'canary') and waves['cam-01'] == (1, 'wave1') and waves['cam-05'] == (2, 'wave2')


def test_an_override_plan_uses_the_device_ids_and_the_same_hash():
    hostvars = {h: {'edgeai_wave': 0, 'edgeai_device_id': 'id-' + h} for h in HOSTS}
    waves = ActionModule._waves('canary=id-cam-07|count:2,5', HOSTS, hostvars)
    expected = _waves.assign_waves(['id-' + h for h in HOSTS], _waves.parse_wave_plan('canary=id-cam-07|count:2,5'))
    assert {h: w[0] for h, w in waves.items()} == {h: expected['id-' + h] for h in HOSTS}
    assert waves['cam-07'] == (0, 'canary')
    assert sorted(w[0] for w in waves.values()).count(1) == 2


def test_hosts_without_waves_get_the_default_plan():
    waves = ActionModule._waves('', HOSTS, {})
    assert {w[0] for w in waves.values()} <= {1, 2, 3} and len(waves) == len(HOSTS)


def test_a_play_mixing_hosts_with_and_without_waves_is_refused():
    hostvars = {h: {'edgeai_wave': 1} for h in HOSTS[:5]}
    with pytest.raises(_rollout.RolloutError, match='cam-05, .* have no edgeai_wave while other hosts do'):
        ActionModule._waves(None, HOSTS, hostvars)


def test_a_canary_that_is_not_in_the_play_is_refused():
    with pytest.raises(_rollout.RolloutError, match='the canary list names devices that are not in this play: nope'):
        ActionModule._waves('canary=nope|10,50,100', HOSTS, {})


def test_a_plan_that_does_not_add_up_is_refused():
    with pytest.raises(_waves.WavePlanError):
        ActionModule._waves('10,50,90', HOSTS, {})
