"""Benchmark of a staged rollout: playbooks/rollout.yml to N simulated amd64 devices, by Ansible configuration.

    .venv/bin/python bench/bench_rollout.py [--devices 20] [--quick] [--rounds 1] [--soak 2] [--out F] [--keep]

Run it the way scripts/test.sh runs Molecule (HOME=.state/home, the venv active, the target images and the
wheelhouse built by scripts/setup.sh). It starts N fresh device containers ``bench-roll-01`` ... (the amd64
target image, systemd, network none, the generic class's sim evidence: as molecule/rollout does), deploys
digits 1.0.0 to them with deploy.yml, and writes a fleet inventory (the edgeai.fleet.fleet plugin over a
generated registry) whose plan puts them in three waves: a canary, a quarter of the fleet, the rest. Then it
rolls out one new release per configuration with ``ansible-playbook playbooks/rollout.yml``, as users run it:

  baseline    forks 5, strategy linear, no pipelining (ANSIBLE_PIPELINING=0)
  forks-20    forks 20
  free        strategy free
  pipelining  ANSIBLE_PIPELINING=1
  mitogen     strategy mitogen_linear (mitogen's podman connection), when mitogen imports under this ansible-core

Every rollout takes a release no device holds yet (digits 1.1.0, 1.2.0, ... built by
scripts/build-demo-models.py, one network trained per version), so every device transfers, installs and
soaks once per configuration. The soak is short (``--soak``, 2 s, no traffic needed: min requests 0) and the
OTA watch is off, so the numbers show the orchestration. A warm-up rollout (not counted) runs first.
Configurations are interleaved in ``--rounds`` rounds, the order rotated each round; ratios are against the
baseline of the same round. Per configuration: the wall time, per device (wall / N, and the wall less the
soak floor, waves x soak, / N), the podman calls and module runs per device (counted by a logging podman
wrapper first on PATH), the phases from the rollout's ledger, and whether the waves still ran one after another.
A configuration that fails is reported with its error; the bench never fails on a result. The containers are
removed at the end, also on errors, Ctrl-C and SIGTERM, unless ``--keep``. The last thing printed is a JSON
summary.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

REPO = Path(__file__).resolve().parents[1]
PREFIX = 'bench-roll-'
MARKER = '=== summary (JSON; everything below this line) ==='
MODEL = 'digits'
MITOGEN_PIN = 'mitogen==0.3.54'
WRAPPER = '''#!/bin/sh
printf '%s\\n' "$*" >> "${{BENCH_ROLL_PODMAN_LOG:-/dev/null}}"
exec {podman} "$@"
'''
HOST_IN_CALL = re.compile(r'\b(%s\d+)\b' % re.escape(PREFIX))
# The exec that runs an AnsiballZ payload (not the chmod or rm around it).
MODULE_RUN = re.compile(r'^exec .*python\S* \S*/AnsiballZ_\w+\.py')
# What a failed run says: task failures and Ansible's errors (not a "fatal: [host]: FAILED! =>" whose message follows).
ERROR_LINE = re.compile(r'^((?:fatal|failed): .*\S(?<!=>)|\[ERROR\]: .*|ERROR! .*)\s*$')
# Warnings that say a configuration changes how the play runs (the free strategy and run_once, third-party strategies).
NOTE_LINE = re.compile(r'^(\[(?:DEPRECATION )?WARNING\]: .*(?:run_once|strategy|strategies).*)$')
# Asked in a child: does mitogen's Ansible extension import (its own version check included) under this ansible?
MITOGEN_PROBE = '''
import json, os, ansible.release
try:
    import mitogen, ansible_mitogen.loaders, ansible_mitogen.strategy
except Exception as exc:
    print(json.dumps({"ok": False, "ansible": ansible.release.__version__,
                      "error": "%s: %s" % (type(exc).__name__, exc)}))
else:
    print(json.dumps({"ok": True, "ansible": ansible.release.__version__,
                      "mitogen": ".".join(map(str, mitogen.__version__)),
                      "strategy_plugins": os.path.join(os.path.dirname(ansible_mitogen.__file__),
                                                       "plugins", "strategy")}))
'''


@dataclass(frozen=True)
class Config:
    """One way of running the same rollout."""
    name: str
    forks: int = 5
    strategy: str = 'linear'
    pipelining: bool = False

    @property
    def mitogen(self) -> bool:
        return self.strategy.startswith('mitogen_')


CONFIGS = (Config('baseline'), Config('forks-20', forks=20), Config('free', strategy='free'),
           Config('pipelining', pipelining=True), Config('mitogen', strategy='mitogen_linear'))
BASELINE = CONFIGS[0]


@dataclass
class Bench:
    """Where the run's files are and what every ansible-playbook run shares."""
    scratch: Path
    releases: Path
    wheelhouse: Path
    env: Dict[str, str]
    timeout: float

    @property
    def inventory(self) -> Path:
        return self.scratch / 'inventory'

    @property
    def ledgers(self) -> Path:
        return self.scratch / 'ledgers'


# -- set-up ---------------------------------------------------------------------------------------------------------

def target_image(arch: str) -> str:
    env = os.environ.get('EDGEAI_IMAGE_%s' % arch.upper())
    if env:
        return env
    return subprocess.run(['bash', '-c', '. scripts/lib.sh && target_image %s' % arch], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(['podman', *args], check=False, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError('podman %s: %s' % (' '.join(args[:2]), proc.stderr.strip()[-500:]))
    return proc


def existing_bench_containers() -> List[str]:
    out = podman('ps', '-a', '--format', '{{.Names}}').stdout.split()
    return sorted(name for name in out if name.startswith(PREFIX))


def start_device(name: str, image: str) -> None:
    podman('run', '-d', '--name', name, '--hostname', name, '--network', 'none', '--systemd', 'always',
           '--arch', 'amd64', '--label', 'org.edgeai.test=bench-rollout',
           '-v', '%s/sim/evidence/generic:/var/lib/edgeai-sim:ro' % REPO, image, '/sbin/init')


def remove_devices(names: Sequence[str]) -> None:
    for name in names:
        podman('rm', '-f', '-t', '0', name, check=False)


def build_releases(releases: Path, count: int) -> List[str]:
    """digits 1.0.0 and ``count`` more versions (1.1.0, 1.2.0, ...), each its own build; returns the new ones."""
    versions = ['1.%d.0' % n for n in range(1, count + 1)]
    argv = [sys.executable, str(REPO / 'scripts' / 'build-demo-models.py'), str(releases)]
    for version in versions:
        argv += ['--version', version]
    proc = subprocess.run(argv, cwd=REPO, check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError('building the demo releases in %s: %s' % (releases, proc.stderr.strip()[-1000:]))
    return versions


def wave_counts(devices: int) -> List[int]:
    """The plan after the canary: a quarter of the fleet, then everyone left."""
    return [max(1, (devices - 1) // 4)]


def write_deploy_inventory(bench: Bench, hosts: Sequence[str]) -> Path:
    group_vars = {'ansible_connection': 'containers.podman.podman', 'ansible_python_interpreter': '/usr/bin/python3',
                  'edgeai_evidence_root': '/var/lib/edgeai-sim',
                  'edgeai_fleet_keys_dir': str(bench.scratch / 'fleet-keys'),
                  'inference_service_artifact_dir': str(bench.scratch / 'artifacts'),
                  'inference_service_wheelhouse_cache': str(bench.wheelhouse),
                  'inference_service_telemetry': False,
                  'inference_service_models': [{'src': str(bench.releases / ('%s-1.0.0' % MODEL))}]}
    inventory = {'all': {'children': {'edgeai_devices': {
        'children': {'generic': {'hosts': {h: {} for h in hosts}}}, 'vars': group_vars}}}}
    path = bench.scratch / 'deploy-inventory.json'
    path.write_text(json.dumps(inventory, indent=1))
    return path


def write_fleet_inventory(bench: Bench, hosts: Sequence[str], soak: float) -> None:
    """The fleet inventory the rollouts run with, as molecule/rollout's prepare writes it."""
    (bench.inventory / 'group_vars').mkdir(parents=True)
    registry = {'devices': [{'id': h, 'class': 'generic', 'site': 'bench', 'address': h,
                             'vars': {'ansible_connection': 'containers.podman.podman'}} for h in hosts]}
    (bench.inventory / 'registry.yml').write_text(yaml.safe_dump(registry, sort_keys=False))
    waves = {'canary': [hosts[0]], 'counts': wave_counts(len(hosts))}
    (bench.inventory / 'bench.fleet.yml').write_text(yaml.safe_dump(
        {'plugin': 'edgeai.fleet.fleet', 'registry': 'registry.yml', 'waves': waves}, sort_keys=False))
    settings = {'ansible_python_interpreter': '/usr/bin/python3', 'edgeai_evidence_root': '/var/lib/edgeai-sim',
                'edgeai_fleet_keys_dir': str(bench.scratch / 'fleet-keys'),
                'inference_service_artifact_dir': str(bench.scratch / 'artifacts'),
                'rollout_dir': str(bench.ledgers), 'rollout_soak': soak, 'rollout_soak_interval': 1,
                'rollout_soak_min_requests': 0, 'rollout_watch': 0}
    (bench.inventory / 'group_vars' / 'edgeai_devices.yml').write_text(yaml.safe_dump(settings, sort_keys=False))


def inventory_waves(bench: Bench) -> Dict[str, List[str]]:
    """rollout_<wave> group -> hosts, as the plugin placed them (ansible-inventory --list)."""
    proc = subprocess.run(['ansible-inventory', '-i', str(bench.inventory), '--list'], cwd=REPO, env=bench.env,
                          check=True, capture_output=True, text=True)
    groups = json.loads(proc.stdout)
    return {name: sorted(body.get('hosts', [])) for name, body in groups.items() if name.startswith('rollout_')}


def probe_mitogen() -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, '-c', MITOGEN_PROBE], check=False, capture_output=True, text=True)
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {'ok': False, 'error': 'the probe printed no result: %s' % proc.stderr.strip()[-500:]}


def connection_has_pipelining() -> bool:
    """containers.podman.podman's own answer (ansible never pipelines over a connection that says False)."""
    proc = subprocess.run([sys.executable, '-c', 'from ansible_collections.containers.podman.plugins.connection.'
                           'podman import Connection; print(Connection.has_pipelining)'],
                          check=False, capture_output=True, text=True)
    return proc.stdout.strip() == 'True'


# -- one ansible-playbook run ---------------------------------------------------------------------------------------

def run_logged(argv: Sequence[str], env: Dict[str, str], log: Path, timeout: float) -> Tuple[int, float]:
    """Run argv in its own process group, output to log; kill the group on timeout or interrupt. (rc, seconds)."""
    started = time.monotonic()
    with log.open('w') as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = 124
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    return rc, time.monotonic() - started


def config_argv(config: Config) -> List[str]:
    argv = ['-f', str(config.forks)]
    if config.mitogen:  # mitogen swaps in its podman connection for "podman", not for containers.podman.podman
        argv += ['-e', 'ansible_connection=podman']
    return argv


def config_env(config: Config, bench: Bench, mitogen: Dict[str, Any], podman_log: Path) -> Dict[str, str]:
    env = dict(bench.env, ANSIBLE_STRATEGY=config.strategy, ANSIBLE_PIPELINING='1' if config.pipelining else '0',
               BENCH_ROLL_PODMAN_LOG=str(podman_log))
    if config.mitogen:
        env['ANSIBLE_STRATEGY_PLUGINS'] = mitogen['strategy_plugins']
    return env


def podman_calls(log: Path) -> Tuple[Counter, Counter]:
    """(podman calls, module runs) per host, from the wrapper's log."""
    calls: Counter = Counter()
    modules: Counter = Counter()
    for line in log.read_text().splitlines() if log.exists() else []:
        found = HOST_IN_CALL.search(line)
        if found:
            calls[found.group(1)] += 1
            if MODULE_RUN.match(line):
                modules[found.group(1)] += 1
    return calls, modules


def matching_lines(log: Path, pattern: re.Pattern, limit: int = 4) -> List[str]:
    """The first ``limit`` distinct lines of log that match pattern (each cut to 600 characters)."""
    found: List[str] = []
    for line in log.read_text(errors='replace').splitlines():
        match = pattern.match(line)
        if match and match.group(1)[:600] not in found:
            found.append(match.group(1)[:600])
    return found[:limit]


def first_time(history: Sequence[Dict[str, Any]], state: str) -> Optional[float]:
    return next((h['time'] for h in history if h['state'] == state), None)


def median(values: Sequence[float]) -> Optional[float]:
    return round(statistics.median(values), 2) if values else None


def ledger_facts(ledger: Dict[str, Any], version: str, started: float, ended: float) -> Dict[str, Any]:
    """What the rollout's ledger says: outcome, phases per device, and the time before, in and after the waves."""
    devices = ledger.get('devices') or {}
    install, soak = [], []
    for entry in devices.values():
        history = entry.get('history') or []
        begin, soaking, done = (first_time(history, s) for s in ('transferring', 'soaking', 'succeeded'))
        if begin is not None and soaking is not None:
            install.append(soaking - begin)
        if soaking is not None and done is not None:
            soak.append(done - soaking)
    waves = sorted(ledger.get('waves') or [], key=lambda w: w.get('index', 0))
    ran = [w for w in waves if w.get('started') and w.get('finished')]
    in_order = all(later['started'] >= earlier['finished'] - 0.01 for earlier, later in zip(ran, ran[1:]))
    # A device of a later wave that began before the earlier wave's last device finished breaks the staging.
    for earlier, later in zip(waves, waves[1:]):
        ends = [first_time(devices[h].get('history') or [], 'succeeded') for h in earlier.get('hosts', [])]
        starts = [first_time(devices[h].get('history') or [], 'transferring') for h in later.get('hosts', [])]
        ends = [t for t in ends if t is not None]
        starts = [t for t in starts if t is not None]
        if ends and starts and min(starts) < max(ends):
            in_order = False
    return {
        'status': ledger.get('status'),
        'states': dict(Counter(e.get('state') for e in devices.values())),
        'updated_to_release': sum(1 for e in devices.values()
                                  if e.get('updated') and e.get('version_after') == version),
        'install_s_median': median(install), 'soak_s_median': median(soak),
        'waves': [{'name': w['name'], 'hosts': len(w.get('hosts', [])), 'status': w.get('status'),
                   'seconds': round(w['finished'] - w['started'], 2) if w in ran else None} for w in waves],
        'waves_in_order': in_order,
        'before_waves_s': round(ran[0]['started'] - started, 2) if ran else None,
        'after_waves_s': round(ended - ran[-1]['finished'], 2) if ran else None,
    }


def roll_out(bench: Bench, config: Config, version: str, mitogen: Dict[str, Any], label: str) -> Dict[str, Any]:
    """One rollout of digits <version> with config; its numbers, or its error."""
    log, podman_log = bench.scratch / ('%s.log' % label), bench.scratch / ('%s.podman.log' % label)
    argv = ['ansible-playbook', 'playbooks/rollout.yml', '-i', str(bench.inventory),
            '-e', 'rollout_release=%s' % (bench.releases / ('%s-%s' % (MODEL, version)))] + config_argv(config)
    started = time.time()
    rc, seconds = run_logged(argv, config_env(config, bench, mitogen, podman_log), log, bench.timeout)
    ended = time.time()
    result: Dict[str, Any] = {'config': config.name, 'version': version, 'rc': rc, 'wall_s': round(seconds, 2),
                              'log': log.name}
    ledger_path = bench.ledgers / ('%s-%s' % (MODEL, version)) / 'ledger.json'
    try:
        result.update(ledger_facts(json.loads(ledger_path.read_text()), version, started, ended))
    except (OSError, ValueError) as exc:
        result.update(status=None, ledger_error='reading %s: %s' % (ledger_path, exc))
    calls, modules = podman_calls(podman_log)
    result['podman_calls'] = dict(sorted(calls.items()))
    result['module_runs'] = dict(sorted(modules.items()))
    result['ok'] = rc == 0 and result.get('status') == 'succeeded'
    result['notes'] = matching_lines(log, NOTE_LINE)
    if not result['ok']:
        result['errors'] = matching_lines(log, ERROR_LINE) or ['rc %s; see %s' % (rc, log)]
    return result


# -- the numbers ----------------------------------------------------------------------------------------------------

def per_device(result: Dict[str, Any], devices: int, floor_s: float) -> Dict[str, Any]:
    calls, modules = list(result['podman_calls'].values()), list(result['module_runs'].values())
    return {
        'wall_per_device_s': round(result['wall_s'] / devices, 2),
        'overhead_s': round(result['wall_s'] - floor_s, 2),
        'overhead_per_device_s': round((result['wall_s'] - floor_s) / devices, 2),
        'podman_calls_per_device': round(sum(calls) / devices, 1) if calls else 0,
        'module_runs_per_device': round(sum(modules) / devices, 1) if modules else 0,
    }


def aggregate(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    by_config: Dict[str, Dict[str, List[float]]] = {}
    for entry in rounds:
        for name, result in entry['results'].items():
            if 'wall_s' not in result or not result.get('ok'):
                continue
            slot = by_config.setdefault(name, {'wall_s': [], 'ratio': [], 'overhead_per_device_s': []})
            slot['wall_s'].append(result['wall_s'])
            slot['overhead_per_device_s'].append(result['overhead_per_device_s'])
            if result.get('ratio_to_baseline') is not None:
                slot['ratio'].append(result['ratio_to_baseline'])
    return {name: {'runs': len(v['wall_s']), 'wall_s_median': median(v['wall_s']),
                   'overhead_per_device_s_median': median(v['overhead_per_device_s']),
                   'ratio_to_baseline_median': round(statistics.median(v['ratio']), 3) if v['ratio'] else None}
            for name, v in by_config.items()}


def print_row(round_no: int, result: Dict[str, Any]) -> None:
    if 'wall_s' not in result:
        print('  round %d  %-11s skipped: %s' % (round_no, result['config'], result['skipped']), flush=True)
        return
    ratio = result.get('ratio_to_baseline')
    waves = '/'.join('%.1f' % w['seconds'] if w.get('seconds') is not None else '-' for w in result.get('waves', []))
    print('  round %d  %-11s %-6s %6.1f s  x%-5s  %5.2f s/dev  %5.2f s/dev over the soak floor  '
          '%5.1f podman calls/dev  %4.1f module runs/dev' % (
              round_no, result['config'], 'ok' if result['ok'] else 'FAILED', result['wall_s'],
              '%.3f' % ratio if ratio is not None else '-', result['wall_per_device_s'],
              result['overhead_per_device_s'], result['podman_calls_per_device'], result['module_runs_per_device']),
          flush=True)
    seconds = {k: '-' if result.get(k) is None else '%.1f' % result[k]
               for k in ('before_waves_s', 'after_waves_s', 'install_s_median', 'soak_s_median')}
    print('      before the waves %(before_waves_s)s s, waves %(waves)s s, after %(after_waves_s)s s; per device: '
          'install %(install_s_median)s s, soak %(soak_s_median)s s; waves one after another: %(in_order)s; '
          '%(updated)s of %(devices)d devices updated' % dict(
              seconds, waves=waves or '-', in_order=result.get('waves_in_order'),
              updated=result.get('updated_to_release'), devices=sum((result.get('states') or {}).values())),
          flush=True)
    for line in result.get('notes', []) + result.get('errors', []):
        print('      %s' % line, flush=True)


def rotated(configs: Sequence[Config], round_no: int) -> List[Config]:
    shift = round_no % len(configs)
    return list(configs[shift:]) + list(configs[:shift])


# -- main -----------------------------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--devices', type=int, help='devices to start (default 20; --quick: 4)')
    parser.add_argument('--quick', action='store_true', help='4 devices')
    parser.add_argument('--warmup', action=argparse.BooleanOptionalAction, default=True,
                        help='roll out one release first, not counted (default on)')
    parser.add_argument('--rounds', type=int, default=1, help='rounds of all configurations (default 1)')
    parser.add_argument('--soak', type=float, default=2.0, help='rollout_soak in seconds (default 2)')
    parser.add_argument('--only', action='append', choices=[c.name for c in CONFIGS],
                        help='measure only these configurations (repeatable; the baseline is always measured)')
    parser.add_argument('--releases', type=Path, default=REPO / '.state' / 'bench-rollout' / 'releases',
                        help='where the demo releases are built (default .state/bench-rollout/releases)')
    parser.add_argument('--wheelhouse', type=Path, default=REPO / '.state' / 'wheelhouse',
                        help="the controller's wheelhouse cache for deploy.yml (default .state/wheelhouse)")
    parser.add_argument('--timeout', type=float, default=3600, help='seconds one ansible-playbook run may take')
    parser.add_argument('--out', type=Path, help='also write the JSON summary here')
    parser.add_argument('--keep', action='store_true', help='keep the containers and the scratch directory')
    args = parser.parse_args()
    if args.devices is None:
        args.devices = 4 if args.quick else 20
    if args.devices < 1 or args.rounds < 1:
        parser.error('--devices and --rounds must be at least 1')
    return args


def bench_env(scratch: Path) -> Dict[str, str]:
    """The environment of every Ansible run (main sets CONTAINERS_CONF): the checkout's ansible.cfg, the logging
    podman wrapper first on PATH (both podman connections, containers.podman's and mitogen's, run ``podman`` from
    PATH)."""
    wrapper = scratch / 'bin' / 'podman'
    wrapper.parent.mkdir()
    wrapper.write_text(WRAPPER.format(podman=shutil.which('podman')))
    wrapper.chmod(0o755)
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'), ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
                ANSIBLE_LOCAL_TEMP=str(scratch / 'ansible-tmp'),
                PATH='%s%s%s' % (wrapper.parent, os.pathsep, os.environ.get('PATH', '')))


def check_prerequisites(args: argparse.Namespace) -> Optional[str]:
    if not shutil.which('podman'):
        return 'needs podman'
    if not shutil.which('ansible-playbook'):
        return 'needs ansible-playbook on PATH (activate the venv)'
    if not args.wheelhouse.is_dir():
        return 'needs the wheelhouse cache %s (scripts/setup.sh builds it; or --wheelhouse)' % args.wheelhouse
    leftovers = existing_bench_containers()
    if leftovers:
        return 'containers named %s* exist already (an earlier --keep?): podman rm -f %s' % (
            PREFIX, ' '.join(leftovers))
    return None


def measure(bench: Bench, args: argparse.Namespace, hosts: List[str], versions: List[str],
            configs: List[Config], mitogen: Dict[str, Any], floor_s: float) -> Tuple[List[Dict[str, Any]], Any]:
    """The warm-up, then the rounds; returns (rounds, warm-up result)."""
    pending = list(versions)
    warmup = None
    if args.warmup:
        warmup = roll_out(bench, BASELINE, pending.pop(0), mitogen, 'warmup')
        warmup.update(per_device(warmup, len(hosts), floor_s))
        print('  warm-up (round 0, not counted):', flush=True)
        print_row(0, warmup)
    rounds = []
    for round_no in range(1, args.rounds + 1):
        results: Dict[str, Dict[str, Any]] = {}
        for config in rotated(configs, round_no - 1):
            if config.mitogen and not mitogen.get('ok'):
                results[config.name] = {'config': config.name, 'skipped': 'mitogen does not load under ansible-core '
                                        '%s: %s (requirements-dev.txt pins %s)'
                                        % (mitogen.get('ansible'), mitogen.get('error'), MITOGEN_PIN)}
            else:
                result = roll_out(bench, config, pending.pop(0), mitogen, 'round%d-%s' % (round_no, config.name))
                results[config.name] = dict(result, **per_device(result, len(hosts), floor_s))
                print('  round %d  %-11s %s in %.1f s' % (round_no, config.name, 'done' if result['ok'] else 'FAILED',
                                                          result['wall_s']), flush=True)
        base = results[BASELINE.name]
        print('  round %d, against its baseline:' % round_no, flush=True)
        for result in results.values():
            if 'wall_s' in result:
                both_ok = base.get('ok') and result['ok']
                result['ratio_to_baseline'] = round(result['wall_s'] / base['wall_s'], 3) if both_ok else None
            print_row(round_no, result)
        rounds.append({'round': round_no, 'order': [c.name for c in rotated(configs, round_no - 1)],
                       'results': results})
    return rounds, warmup


def prepare_fleet(bench: Bench, hosts: List[str], started: List[str], soak: float) -> Dict[str, Any]:
    """Start the devices (appended to started as they start), deploy 1.0.0, write the fleet inventory."""
    image = target_image('amd64')
    print('=== %d devices from %s; releases in %s; scratch %s' % (len(hosts), image, bench.releases, bench.scratch),
          flush=True)
    begin = time.monotonic()
    for host in hosts:
        start_device(host, image)
        started.append(host)
    start_s = time.monotonic() - begin
    print('  started %d containers in %.1f s' % (len(hosts), start_s), flush=True)
    log = bench.scratch / 'deploy.log'
    rc, deploy_s = run_logged(['ansible-playbook', '-i', str(write_deploy_inventory(bench, hosts)), 'deploy.yml',
                               '-f', str(len(hosts))], bench.env, log, bench.timeout)
    if rc != 0:
        raise RuntimeError('deploying digits 1.0.0 to the devices failed (rc %d, %s): %s'
                           % (rc, log, ' | '.join(matching_lines(log, ERROR_LINE))))
    print('  deployed digits 1.0.0 in %.1f s' % deploy_s, flush=True)
    write_fleet_inventory(bench, hosts, soak)
    waves = {k: len(v) for k, v in sorted(inventory_waves(bench).items())}
    return {'image': image, 'start_containers_s': round(start_s, 1), 'deploy_s': round(deploy_s, 1), 'waves': waves}


def main() -> int:
    args = parse_args()
    os.environ['CONTAINERS_CONF'] = str(REPO / 'scripts' / 'containers.conf')  # as scripts/lib.sh exports it
    problem = check_prerequisites(args)
    if problem:
        print('bench_rollout: %s' % problem, file=sys.stderr)
        return 2
    configs = [c for c in CONFIGS if c is BASELINE or not args.only or c.name in args.only]
    scratch = Path(tempfile.mkdtemp(prefix='edgeai-bench-rollout.'))
    bench = Bench(scratch=scratch, releases=args.releases.resolve(), wheelhouse=args.wheelhouse.resolve(),
                  env=bench_env(scratch), timeout=args.timeout)
    hosts = ['%s%02d' % (PREFIX, n) for n in range(1, args.devices + 1)]
    started: List[str] = []
    keep_logs = True
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    load_before = os.getloadavg()
    try:
        versions = build_releases(bench.releases, args.rounds * len(configs) + int(args.warmup))
        mitogen = probe_mitogen() if any(c.mitogen for c in configs) else {}
        fleet = prepare_fleet(bench, hosts, started, args.soak)
        floor_s = len(fleet['waves']) * args.soak
        print('  waves %s; soak %g s, so a soak floor of %g s; mitogen: %s' % (
            fleet['waves'], args.soak, floor_s, mitogen or 'not asked'), flush=True)
        rounds, warmup = measure(bench, args, hosts, versions, configs, mitogen, floor_s)
        keep_logs = not all(r.get('ok', True) for e in rounds for r in e['results'].values())
        summary = dict(fleet, devices=len(hosts), soak_s=args.soak, soak_floor_s=floor_s, watch_s=0,
                       configs={c.name: asdict(c) for c in configs}, by_config=aggregate(rounds), rounds=rounds,
                       warmup=warmup, mitogen=mitogen,
                       podman_connection_has_pipelining=connection_has_pipelining(), cpus=os.cpu_count(),
                       load_average_before=load_before, load_average_after=os.getloadavg(),
                       logs=str(scratch) if keep_logs or args.keep else None)
        print(MARKER)
        print(json.dumps(summary, indent=2))
        if args.out:
            args.out.write_text(json.dumps(summary, indent=2))
        return 0
    except RuntimeError as exc:
        print('bench_rollout: %s' % exc, file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            remove_devices(started)
        if args.keep or keep_logs:
            print('kept %s%s' % (scratch, ' and the containers %s' % ' '.join(started) if args.keep else ''),
                  file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
