"""Benchmark of a no-change re-run of deploy.yml against fresh simulated devices.

    .venv/bin/python bench/bench_rerun.py [--hosts 1] [--arch amd64] [--runs 2] [--out summary.json] [--keep]

Run it the way scripts/test.sh runs the integration tests (HOME=.state/home, the venv active, the
demo models built into .state/demo-models). It starts fresh containers of the target image (as
tests/integration/conftest.py does), writes an inventory with the demo release as the bootstrap
model, then runs ``ansible-playbook deploy.yml`` ``--runs`` times and reports, for each run: the
wall time, the PLAY RECAP, the slowest tasks (ansible.posix.profile_tasks) and the module runs per
host. A module run is one ``podman exec`` that runs an AnsiballZ payload: the podman connection has no
pipelining, so each one costs a round trip (about 1-1.5 s natively, 2-3x under qemu), and their
number on a re-run is what a re-run costs. The podman calls are counted through a logging wrapper
given as ``ansible_podman_executable``. Target: the second run changes nothing and takes at most
half the first. It prints numbers and a JSON summary; it never fails on a missed target.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_RELEASE = REPO / '.state' / 'demo-models' / 'digits-1.0.0'
WRAPPER = '''#!/bin/sh
printf '%s\\n' "$*" >> {log}
exec {podman} "$@"
'''
# The exec that runs the payload (not the chmod before it): "... /usr/bin/python3 <tmp>/AnsiballZ_stat.py ...".
MODULE_RUN = re.compile(r'^exec (\S+) .*python\S* \S*/AnsiballZ_(\w+)\.py')
TASK_TIME = re.compile(r'^(.+?) -+ (\d+\.\d+)s$')
RECAP = re.compile(r'^(\S+)\s+:\s+(ok=.*)$')


def target_image(arch):
    env = os.environ.get('EDGEAI_IMAGE_%s' % arch.upper())
    if env:
        return env
    return subprocess.run(['bash', '-c', '. scripts/lib.sh && target_image %s' % arch], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def start_device(podman, image, arch, hardware_class):
    name = 'edgeai-bench-%s-%s' % (hardware_class.replace('_', '-'), uuid.uuid4().hex[:8])
    proc = subprocess.run([podman, 'run', '-d', '--name', name, '--hostname', name, '--network', 'none',
                           '--systemd', 'always', '--arch', arch, '--label', 'org.edgeai.test=bench',
                           '-v', '%s/sim/evidence/%s:/var/lib/edgeai-sim:ro' % (REPO, hardware_class), image,
                           '/sbin/init'], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit('starting a %s device from %s failed: %s' % (arch, image, proc.stderr.strip()))
    return name


def write_inventory(path, hosts, hardware_class, wrapper, scratch):
    gv = {'ansible_connection': 'containers.podman.podman', 'ansible_python_interpreter': '/usr/bin/python3',
          'ansible_podman_executable': str(wrapper), 'edgeai_evidence_root': '/var/lib/edgeai-sim',
          'edgeai_fleet_keys_dir': str(scratch / 'fleet-keys'),
          'inference_service_artifact_dir': str(scratch / 'artifacts'),
          'inference_service_wheelhouse_cache': str(REPO / '.state' / 'wheelhouse'),
          'inference_service_models': [{'src': str(DEMO_RELEASE)}]}
    inventory = {'all': {'children': {'edgeai_devices': {
        'children': {hardware_class: {'hosts': {h: {} for h in hosts}}}, 'vars': gv}}}}
    path.write_text(json.dumps(inventory))


def run_deploy(inventory, log, out):
    env = dict(os.environ, ANSIBLE_CALLBACKS_ENABLED='ansible.posix.profile_tasks', ANSIBLE_CONFIG=str(REPO / 'ansible.cfg'),
               ANSIBLE_NOCOLOR='1', PROFILE_TASKS_TASK_OUTPUT_LIMIT='all')
    log.write_text('')
    started = time.monotonic()
    proc = subprocess.run(['ansible-playbook', '-i', str(inventory), str(REPO / 'deploy.yml')], cwd=REPO, env=env,
                          capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    out.write_text(proc.stdout + proc.stderr)
    recap = {m.group(1): dict(kv.split('=') for kv in m.group(2).split())
             for m in map(RECAP.match, proc.stdout.splitlines()) if m}
    tail = proc.stdout.split('PLAY RECAP', 1)[-1]
    tasks = sorted(((m.group(1).strip(), float(m.group(2))) for m in map(TASK_TIME.match, tail.splitlines()) if m),
                   key=lambda t: -t[1])
    modules = collections.defaultdict(collections.Counter)
    for line in log.read_text().splitlines():
        m = MODULE_RUN.match(line)
        if m:
            modules[m.group(1)][m.group(2)] += 1
    return dict(rc=proc.returncode, seconds=round(seconds, 1), recap=recap, slowest_tasks=tasks[:15],
                module_runs={h: sum(c.values()) for h, c in modules.items()},
                modules={h: dict(c.most_common()) for h, c in modules.items()})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
    parser.add_argument('--hosts', type=int, default=1, help='devices to start (default 1)')
    parser.add_argument('--arch', default='amd64', help='amd64 (native) or arm64 (qemu)')
    parser.add_argument('--hardware-class', default='generic')
    parser.add_argument('--runs', type=int, default=2, help='deploy.yml runs (default 2: a deploy and a re-run)')
    parser.add_argument('--out', help='also write the JSON summary here')
    parser.add_argument('--keep', action='store_true', help='keep the containers and the scratch directory')
    args = parser.parse_args()
    if not (DEMO_RELEASE / 'onnxruntime-fp32' / 'manifest.json').exists():
        sys.exit('needs the demo models: python scripts/build-demo-models.py .state/demo-models')
    podman = shutil.which('podman')
    if not podman:
        sys.exit('needs podman')
    scratch = Path(tempfile.mkdtemp(prefix='edgeai-bench-rerun.'))
    wrapper, log = scratch / 'podman', scratch / 'podman.log'
    wrapper.write_text(WRAPPER.format(log=log, podman=podman))
    wrapper.chmod(0o755)
    image = target_image(args.arch)
    hosts = []
    try:
        while len(hosts) < args.hosts:
            hosts.append(start_device(podman, image, args.arch, args.hardware_class))
        write_inventory(scratch / 'inventory.json', hosts, args.hardware_class, wrapper, scratch)
        runs = []
        for n in range(1, args.runs + 1):
            run = run_deploy(scratch / 'inventory.json', log, scratch / ('run%d.log' % n))
            runs.append(run)
            print('=== run %d: rc %s, %.1f s' % (n, run['rc'], run['seconds']))
            for host in hosts:
                print('  %s: %s; %d module runs %s' % (
                    host, ' '.join('%s=%s' % kv for kv in run['recap'].get(host, {}).items()),
                    run['module_runs'].get(host, 0), run['modules'].get(host, {})))
            for task, seconds in run['slowest_tasks']:
                print('  %6.2f s  %s' % (seconds, task))
        first, last = runs[0], runs[-1]
        summary = dict(arch=args.arch, hosts=len(hosts), hardware_class=args.hardware_class,
                       load_average=os.getloadavg(), runs=runs,
                       rerun_ratio=round(last['seconds'] / first['seconds'], 3) if len(runs) > 1 else None,
                       targets_met=dict(
                           rerun_unchanged=len(runs) > 1 and all(
                               r.get('changed') == '0' for r in last['recap'].values()),
                           rerun_at_most_half=len(runs) > 1 and last['seconds'] <= first['seconds'] / 2))
        print('=== summary (JSON; everything below this line) ===')
        print(json.dumps(summary, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(summary, indent=2))
    finally:
        if args.keep:
            print('kept %s and %s' % (scratch, ' '.join(hosts)), file=sys.stderr)
        else:
            for host in hosts:
                subprocess.run([podman, 'rm', '-f', '-t', '0', host], check=False, capture_output=True)
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == '__main__':
    main()
