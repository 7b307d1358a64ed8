"""edgeai.fleet.rollout refuses strategies that ignore run_once (free, host_pinned): under them every host would plan
and gate alone and nothing would be staged (bench/bench_rollout.py measured the waves running at once). A real
ansible-playbook run on localhost, before anything is read or written."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[4]
PLAY = '''
- hosts: localhost
  gather_facts: false
  strategy: {strategy}
  tasks:
    - edgeai.fleet.rollout:
        state: planned
        src: {src}
        rollout_dir: {dir}
      run_once: true
'''


def plan(tmp_path, strategy):
    playbook = tmp_path / 'play.yml'
    playbook.write_text(PLAY.format(strategy=strategy, src=tmp_path / 'no-release', dir=tmp_path / 'rollouts'))
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(REPO / '.collections'), ANSIBLE_STDOUT_CALLBACK='json',
               ANSIBLE_LOCALHOST_WARNING='0', ANSIBLE_INVENTORY_UNPARSED_WARNING='0', ANSIBLE_HOME=str(tmp_path))
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), 'ansible-playbook'), str(playbook)],
                          env=env, capture_output=True, text=True, check=False)
    result = json.loads(done.stdout)['plays'][0]['tasks'][0]['hosts']['localhost']
    return done.returncode, result['msg']


@pytest.mark.parametrize('strategy', ['free', 'host_pinned'])
def test_a_strategy_that_ignores_run_once_is_refused(tmp_path, strategy):
    rc, msg = plan(tmp_path, strategy)
    assert rc != 0 and msg == (
        'the rollout needs a strategy that keeps the hosts together (linear, or mitogen_linear); the play runs with '
        '%s, under which run_once is ignored and the waves would not be staged' % strategy)
    assert not (tmp_path / 'rollouts').exists()


def test_linear_goes_on_to_read_the_release(tmp_path):
    rc, msg = plan(tmp_path, 'linear')
    assert rc != 0 and 'no-release' in msg and 'strategy' not in msg
