"""A small pull-mode fleet in podman, for the integration tests of staged rollouts in pull mode
(docs/rollout.md, "Pull mode: reading the outcomes" and "Pull mode, device side").

``start_pull_fleet(work)`` builds, and ``PullFleet.close()`` removes (also after a failure half-way):

- an ``--internal`` podman network (no route out; names resolve through aardvark-dns, scripts/containers.conf),
  which the devices, the registry and the broker share;
- a registry container on it: the target image's python3 serving ``registry_dir`` (a controller directory,
  bind-mounted read-only) over HTTPS on ``https://<registry container>:8443/``, its certificate from a
  throwaway CA (tests/support/pki.py) that the devices get as their registry CA bundle;
- generic amd64 devices on it (conftest's start_device), deployed together by one deploy.yml run: digits 1.0.0
  (the demo release of variants), telemetry to the broker by container name with short intervals, their
  identity certificates from the fleet CA (edgeai.fleet.device_identity, ``edgeai_fleet_ca_dir``), the pull
  agent's timer on ``registry_url`` every few seconds;
- the fleet's broker (Debian's mosquitto, scripts/build-broker-image.sh): TLS with a server certificate from the
  same fleet CA (SAN 127.0.0.1, localhost, its container name), a client certificate from the fleet CA required,
  its CN the user name, each device writing only ``edgeai/<its id>/#``, the reader (``fleet-subscriber``)
  reading only ``edgeai/+/rollout``, persistence on. It is on the internal network (the devices reach it by
  name) and on a second, ordinary network of its own with 8883 published on 127.0.0.1 only (an ephemeral port),
  which is how the controller (this host) reaches it: ``broker`` is ``127.0.0.1:PORT``.

The broker is started after the deploy, once the role has made the fleet CA; the devices' telemetry daemons
retry it meanwhile (backoff of at most 4 s) and queue in their outboxes.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support.mqtt_broker import SUBSCRIBER, BrokerPKI, broker_config
from support.pki import make_ca, make_cert, write_pem

REPO = Path(__file__).resolve().parents[2]
RUNTIME_SRC = REPO / 'device_runtime' / 'src'
DEPLOY = REPO / 'deploy.yml'
DEMO_MODELS = REPO / '.state' / 'demo-models'
#: Where the devices find the registry's CA bundle (readable by the agent's service user).
DEVICE_REGISTRY_CA = '/etc/edgeai-test/registry-ca.pem'
REGISTRY_PORT = 8443
BROKER_PORT = 8883
TOPIC_PREFIX = 'edgeai'
#: The reader may read the devices' rollout records only (docs/rollout.md: it subscribes <prefix>/+/rollout).
READER_TOPIC = '%s/+/rollout' % TOPIC_PREFIX

SERVE = textwrap.dedent('''
    import functools, http.server, ssl
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/registry")
    server = http.server.ThreadingHTTPServer(("0.0.0.0", %d), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/srv/tls/server.pem", "/srv/tls/server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
''' % REGISTRY_PORT)


def acl(prefix: str = TOPIC_PREFIX, reader: str = SUBSCRIBER) -> str:
    """Each device writes only its own topics (%u: the CN of its certificate); the reader reads the rollout
    records of every device, nothing else, and writes nothing."""
    return ('# written by tests/support/pull_fleet.py\n'
            'pattern write %s/%%u/#\n\n'
            'user %s\ntopic read %s/+/rollout\n' % (prefix, reader, prefix))


class FleetCAPKI(BrokerPKI):
    """BrokerPKI on an existing CA (the fleet CA edgeai.fleet.device_identity made in ``ca_dir``: ca.key
    unencrypted, ca.crt) instead of a throwaway one: the broker's server certificate and the reader's client
    certificate come from the CA the devices' certificates come from."""

    def __init__(self, directory: Path, ca_dir: Path, server_names: Sequence[str] = ()) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca_key = serialization.load_pem_private_key((Path(ca_dir) / 'ca.key').read_bytes(), None)
        self.ca_cert = x509.load_pem_x509_certificate((Path(ca_dir) / 'ca.crt').read_bytes())
        self.ca_file = write_pem(self.dir / 'ca.crt', self.ca_cert)
        self.revoked = {}
        self.server_names = ('localhost',) + tuple(server_names)
        self.server_cert, self.server_key = self._server()


def podman(*args: str, check: bool = True, timeout: Optional[float] = 120) -> subprocess.CompletedProcess:
    return subprocess.run(['podman', *args], check=check, capture_output=True, text=True, timeout=timeout)


def broker_image() -> str:
    return subprocess.run(['bash', '-c', '. scripts/lib.sh && broker_image'], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()


def runtime_env() -> Dict[str, str]:
    """The environment for the controller's edgeai_runtime CLIs: this checkout's sources first."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(RUNTIME_SRC)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])))


def run_json(argv: Sequence[str], timeout: float = 600) -> Dict[str, Any]:
    """Run a controller CLI that prints one JSON object; returns it, with ``rc`` (and ``stderr`` when it failed)."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, env=runtime_env(), timeout=timeout,
                          check=False)
    try:
        result = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError('%s printed no JSON (rc=%s):\n%s\n%s'
                             % (' '.join(argv[:4]), proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    result['rc'] = proc.returncode
    if proc.returncode:
        result['stderr'] = proc.stderr[-3000:]
    return result


@dataclass
class PullFleet:
    """What ``start_pull_fleet`` made. The paths are the controller's."""

    work: Path
    prefix: str
    #: The podman networks: the devices' --internal one, and the broker's ordinary one (its published port).
    network: str = ''
    control_network: str = ''
    #: The devices' container names (= their inventory host names) and their device ids (certificate CN,
    #: MQTT user name and topic level; edgeai_device_id in the inventory).
    hosts: List[str] = field(default_factory=list)
    device_ids: Dict[str, str] = field(default_factory=dict)
    inventory: Optional[Path] = None
    #: The controller directory the registry container serves (publish into it).
    registry_dir: Optional[Path] = None
    registry_container: str = ''
    registry_url: str = ''
    #: The registry's CA bundle on the controller (on the devices: DEVICE_REGISTRY_CA).
    registry_ca: str = ''
    broker_container: str = ''
    #: HOST:PORT of the broker as the controller reaches it: 127.0.0.1:<published port>.
    broker: str = ''
    broker_port: int = 0
    #: The reader's TLS files (the fleet CA, its certificate of CN reader_user, its key).
    reader_ca: str = ''
    reader_cert: str = ''
    reader_key: str = ''
    reader_user: str = SUBSCRIBER
    #: Fleet signing keys (edgeai_fleet_keys_dir), the fleet CA (edgeai_fleet_ca_dir), packed artifacts
    #: (inference_service_artifact_dir).
    keys_dir: Optional[Path] = None
    ca_dir: Optional[Path] = None
    artifact_dir: Optional[Path] = None
    #: Seconds of deploy.yml (both devices) and of the whole start.
    timings: Dict[str, float] = field(default_factory=dict)
    _containers: List[str] = field(default_factory=list)
    _networks: List[str] = field(default_factory=list)

    # -- the reader (the controller side) ----------------------------------------------------------------------

    def spool(self, session: str) -> Path:
        """The reader's default spool for ``session`` (JSON lines: topic, payload, dup, received)."""
        return self.work / 'outcomes' / ('%s.jsonl' % session)

    def spooled(self, session: str, spool: Optional[Path] = None) -> List[Dict[str, Any]]:
        """The spool's lines (what the broker gave the reader), in order."""
        path = spool or self.spool(session)
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def reader_args(self, session: str, spool: Optional[Path] = None) -> List[str]:
        """The options every ``edgeai_runtime.controller.outcomes`` command takes, for this broker and reader."""
        spool = spool or self.spool(session)
        spool.parent.mkdir(parents=True, exist_ok=True)
        return ['--broker', self.broker, '--ca', self.reader_ca, '--cert', self.reader_cert, '--key', self.reader_key,
                '--session', session, '--spool', str(spool), '--prefix', TOPIC_PREFIX]

    def outcomes(self, command: str, session: str, *args: str, spool: Optional[Path] = None,
                 timeout: float = 600) -> Dict[str, Any]:
        """``python -m edgeai_runtime.controller.outcomes COMMAND`` (register or collect) on this host, to
        ``broker``; its JSON result with ``rc``."""
        return run_json([sys.executable, '-m', 'edgeai_runtime.controller.outcomes', command,
                         *self.reader_args(session, spool), *args], timeout=timeout)

    def register(self, session: str, spool: Optional[Path] = None) -> Dict[str, Any]:
        return self.outcomes('register', session, spool=spool, timeout=60)

    def collect(self, session: str, rollout: str, attempt: int, action: str = 'update',
                hosts: Optional[Sequence[str]] = None, timeout: float = 240,
                spool: Optional[Path] = None) -> Dict[str, Any]:
        """The devices' outcome records for (rollout, attempt, action), as the controller's reader collects them
        from the broker: ``outcomes collect`` for ``hosts`` (default all), by their device ids. ``verdicts`` is
        keyed by device id (``by_host`` maps a host to its device id's verdict)."""
        hosts = list(hosts if hosts is not None else self.hosts)
        args = ['--rollout', rollout, '--attempt', str(attempt), '--action', action, '--timeout', str(timeout)]
        for host in hosts:
            args += ['--device', self.device_ids[host]]
        result = self.outcomes('collect', session, *args, spool=spool, timeout=timeout + 120)
        result['by_host'] = {host: (result.get('verdicts') or {}).get(self.device_ids[host]) for host in hosts}
        return result

    # -- the devices -------------------------------------------------------------------------------------------

    def device_json(self, host: str, *args: str) -> Dict[str, Any]:
        """``edgeai-runtime ARGS`` on a device, as its service user; the JSON it printed last."""
        out = podman('exec', host, 'runuser', '-u', 'edgeai', '--', '/opt/edgeai/venv/bin/edgeai-runtime',
                     *args).stdout
        return json.loads(out.strip().splitlines()[-1])

    def serving(self, host: str, name: str = 'digits') -> Optional[str]:
        """The version of ``name`` the device's service serves now (``model status``: the service's own
        /v2/admin/status, not the store's active version), or None."""
        service = self.device_json(host, 'model', 'status').get('service') or {}
        for entry in service.get('serving', []):
            if entry.get('name') == name and entry.get('active'):
                return str(entry['active']['version'])
        return None

    def device_rollout(self, host: str, rollout: str, name: str = 'digits',
                       version: Optional[str] = None) -> Dict[str, Any]:
        """The device's own side of a rollout: ``edgeai-runtime rollout status`` (its marks) and what it noted as
        reported (``state/pull-rollouts.json``)."""
        status = self.device_json(host, 'rollout', 'status', '--rollout', rollout, '--name', name,
                                  '--version', version or rollout[len(name) + 1:])
        reported = podman('exec', host, 'cat', '/opt/edgeai/state/pull-rollouts.json', check=False)
        status['reported'] = (json.loads(reported.stdout).get('reported', {}) if reported.returncode == 0 else {})
        return status

    def devices_file(self, path: Optional[Path] = None, hosts: Optional[Sequence[str]] = None) -> Path:
        """The publisher's devices file ({host: {public_key, profile}}), read from the devices as playbooks/publish.yml
        does (``keys show``: the current key's public half and the class profile)."""
        path = path or self.work / 'devices.json'
        devices = {}
        for host in hosts if hosts is not None else self.hosts:
            shown = self.device_json(host, 'keys', 'show')
            devices[host] = {'public_key': shown['current']['public_key'], 'profile': shown.get('profile')}
        path.write_text(json.dumps(devices))
        return path

    def publish(self, model_dirs: Sequence[Path], rollout: Optional[Dict[str, Any]] = None,
                hosts: Optional[Sequence[str]] = None, extra: Sequence[str] = ()) -> Dict[str, Any]:
        """``python -m edgeai_runtime.controller.publisher publish`` into ``registry_dir`` for ``hosts`` (default
        all), each entry with ``rollout`` as its rollout block when given, ``extra`` more options; its JSON result
        with ``rc``."""
        argv = [sys.executable, '-m', 'edgeai_runtime.controller.publisher', 'publish',
                '--keys-dir', str(self.keys_dir), '--registry', str(self.registry_dir), '--out-dir', str(self.artifact_dir),
                '--devices', str(self.devices_file(hosts=hosts))]
        argv += ['--model-dir=%s' % d for d in model_dirs]
        if rollout is not None:
            argv += ['--rollout', json.dumps(rollout)]
        return run_json(argv + list(extra))

    # -- what to show when something went wrong ----------------------------------------------------------------

    def diagnose(self, hosts: Optional[Sequence[str]] = None, lines: int = 60) -> str:
        """The agents' and the telemetry daemons' journals, and the broker's log: for assertion messages."""
        parts = []
        for host in hosts if hosts is not None else self.hosts:
            for unit in ('edgeai-agent.service', 'edgeai-telemetry.service'):
                out = podman('exec', host, 'journalctl', '-u', unit, '--no-pager', '-n', str(lines), check=False)
                parts.append('--- %s %s\n%s' % (host, unit, out.stdout[-6000:]))
        if self.broker_container:
            out = podman('logs', '--tail', str(lines), self.broker_container, check=False)
            parts.append('--- broker %s\n%s%s' % (self.broker_container, out.stdout[-6000:], out.stderr[-6000:]))
        return '\n'.join(parts)

    # -- teardown ----------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every container and network this fleet made (only those)."""
        for name in reversed(self._containers):
            podman('rm', '-f', '-t', '0', name, check=False)
        for name in reversed(self._networks):
            podman('network', 'rm', '-f', name, check=False)
        self._containers.clear()
        self._networks.clear()


def _wait(what: str, check, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise RuntimeError('%s: not within %s s' % (what, timeout))
        time.sleep(interval)


def _tls_listens(port: int, ca_file: str, name: str) -> bool:
    """A TLS handshake with the broker on 127.0.0.1:port verifying its certificate for ``name`` (no client
    certificate: the broker may close the connection after the handshake, which is fine here)."""
    context = ssl.create_default_context(cafile=ca_file)
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=2) as sock:
            with context.wrap_socket(sock, server_hostname=name):
                return True
    except ssl.SSLCertVerificationError:
        raise
    except (OSError, ssl.SSLError):
        return False


def start_pull_fleet(work: Path, *, start_device, write_inventory, run_playbook, wait_ready: str,
                     prefix: str, devices: int = 2, release: Optional[Path] = None,
                     extra_vars: Optional[Dict[str, Any]] = None) -> PullFleet:
    """Build the fleet (the module's docstring). ``start_device``, ``write_inventory``, ``run_playbook`` and
    ``wait_ready`` are conftest's (start_device, write_inventory, run_ansible_playbook, WAIT_READY). On any
    failure everything made so far is removed before the exception goes on."""
    started = time.monotonic()
    suffix = uuid.uuid4().hex[:8]
    fleet = PullFleet(work=Path(work), prefix=prefix)
    try:
        _build(fleet, suffix, start_device, write_inventory, run_playbook, wait_ready, devices,
               release or DEMO_MODELS / 'digits-1.0.0', extra_vars or {})
    except BaseException:
        fleet.close()
        raise
    fleet.timings['start'] = time.monotonic() - started
    return fleet


def _build(fleet: PullFleet, suffix: str, start_device, write_inventory, run_playbook, wait_ready: str,
           count: int, release: Path, extra_vars: Dict[str, Any]) -> None:
    work, prefix = fleet.work, fleet.prefix
    image = broker_image()
    if podman('image', 'exists', image, check=False).returncode != 0:
        import pytest
        pytest.skip('needs the broker image %s (scripts/build-broker-image.sh, run by setup.sh)' % image)

    # 1. The networks: the devices' internal one, the broker's ordinary one for its published port.
    fleet.network = '%spull-%s' % (prefix, suffix)
    podman('network', 'create', '--internal', fleet.network)
    fleet._networks.append(fleet.network)
    fleet.control_network = '%spull-ctl-%s' % (prefix, suffix)
    podman('network', 'create', fleet.control_network)
    fleet._networks.append(fleet.control_network)

    # 2. The registry: a controller directory served over HTTPS by a container on the internal network.
    fleet.registry_dir = work / 'registry'
    for sub in ('updates', 'artifacts'):
        (fleet.registry_dir / sub).mkdir(parents=True, exist_ok=True)
    fleet.registry_container = '%sregistry-%s' % (prefix, suffix)
    fleet.registry_url = 'https://%s:%d/' % (fleet.registry_container, REGISTRY_PORT)
    tls = work / 'registry-tls'
    tls.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca('edgeai pull-fleet registry CA')
    key, cert = make_cert(ca_key, ca_cert, fleet.registry_container, dns_names=[fleet.registry_container])
    fleet.registry_ca = write_pem(tls / 'ca.pem', ca_cert)
    write_pem(tls / 'server.pem', cert)
    write_pem(tls / 'server.key', key)
    (tls / 'serve.py').write_text(SERVE)
    target = os.environ['EDGEAI_IMAGE_AMD64']
    podman('run', '-d', '--name', fleet.registry_container, '--hostname', fleet.registry_container,
           '--network', fleet.network, '--label', 'org.edgeai.test=integration',
           '-v', '%s:/srv/registry:ro' % fleet.registry_dir, '-v', '%s:/srv/tls:ro' % tls,
           target, '/usr/bin/python3', '/srv/tls/serve.py')
    fleet._containers.append(fleet.registry_container)

    # 3. The devices, each with the registry's CA where its agent reads it.
    for index in range(count):
        host = start_device('generic', 'amd64', fleet.network)
        fleet._containers.append(host)
        fleet.hosts.append(host)
        fleet.device_ids[host] = 'pull-dev%d-%s' % (index + 1, suffix)
    for host in fleet.hosts:
        podman('exec', host, 'mkdir', '-p', os.path.dirname(DEVICE_REGISTRY_CA))
        podman('cp', fleet.registry_ca, '%s:%s' % (host, DEVICE_REGISTRY_CA))
        podman('exec', host, 'chmod', '0644', DEVICE_REGISTRY_CA)

    # 4. One deploy of every device: digits 1.0.0, telemetry to the broker (by name), the agent on the registry.
    fleet.broker_container = '%sbroker-%s' % (prefix, suffix)
    fleet.keys_dir, fleet.ca_dir, fleet.artifact_dir = work / 'fleet-keys', work / 'fleet-ca', work / 'artifacts'
    group_vars = dict(
        edgeai_fleet_keys_dir=str(fleet.keys_dir), edgeai_fleet_ca_dir=str(fleet.ca_dir),
        inference_service_artifact_dir=str(fleet.artifact_dir),
        inference_service_wheelhouse_cache=str(REPO / '.state' / 'wheelhouse'),
        inference_service_models=[{'src': str(release)}],
        inference_service_telemetry=True,
        inference_service_telemetry_interval_s=2,
        inference_service_telemetry_mqtt_host=fleet.broker_container,
        inference_service_telemetry_mqtt_port=BROKER_PORT,
        inference_service_telemetry_mqtt_topic_prefix=TOPIC_PREFIX,
        inference_service_telemetry_mqtt_keepalive_s=5,
        inference_service_telemetry_backoff_initial_s=0.5,
        inference_service_telemetry_backoff_max_s=4,
        inference_service_registry_url=fleet.registry_url,
        inference_service_registry_ca_file=DEVICE_REGISTRY_CA,
        inference_service_agent_interval=5,
        inference_service_agent_watch=2)
    group_vars.update(extra_vars)
    fleet.inventory = write_inventory(
        work / 'inventory.json',
        {host: {'group': 'generic', 'edgeai_device_id': fleet.device_ids[host], 'rollout_mode': 'pull'}
         for host in fleet.hosts}, **group_vars)
    began = time.monotonic()
    run = run_playbook(DEPLOY, fleet.inventory)
    fleet.timings['deploy'] = time.monotonic() - began
    if run.rc != 0:
        raise AssertionError('deploy.yml failed: %s' % {h: run.failures(h) for h in fleet.hosts})
    for host in fleet.hosts:
        ready = podman('exec', host, '/usr/bin/python3', '-c', wait_ready % 'digits', check=False, timeout=180)
        if ready.returncode != 0:
            raise AssertionError('%s: digits is not ready: %s%s' % (host, ready.stdout, ready.stderr))

    # 5. The broker, its certificate and the reader's from the fleet CA the deploy made.
    pki = FleetCAPKI(work / 'broker-pki', fleet.ca_dir, server_names=[fleet.broker_container])
    reader = pki.identity(fleet.reader_user, work / 'reader')
    fleet.reader_ca, fleet.reader_cert, fleet.reader_key = reader.ca, reader.cert, reader.key
    conf_dir, data_dir = work / 'broker', work / 'broker-data'
    conf_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, src in (('ca.crt', pki.ca_file), ('broker.crt', pki.server_cert), ('broker.key', pki.server_key)):
        shutil.copyfile(src, conf_dir / name)
    (conf_dir / 'acl').write_text(acl(TOPIC_PREFIX, fleet.reader_user))
    (conf_dir / 'mosquitto.conf').write_text(broker_config(
        port=BROKER_PORT, bind_address=None, cafile='/mosquitto/conf/ca.crt', certfile='/mosquitto/conf/broker.crt',
        keyfile='/mosquitto/conf/broker.key', aclfile='/mosquitto/conf/acl', persistence_dir='/mosquitto/data',
        user='root'))
    podman('run', '-d', '--name', fleet.broker_container, '--hostname', fleet.broker_container,
           '--network', fleet.network, '--network', fleet.control_network,
           '-p', '127.0.0.1::%d' % BROKER_PORT, '--label', 'org.edgeai.test=integration',
           '-v', '%s:/mosquitto/conf:ro' % conf_dir, '-v', '%s:/mosquitto/data' % data_dir,
           broker_image(), '/usr/sbin/mosquitto', '-c', '/mosquitto/conf/mosquitto.conf')
    fleet._containers.append(fleet.broker_container)
    published = podman('port', fleet.broker_container, '%d/tcp' % BROKER_PORT).stdout.strip().splitlines()[0]
    address, port = published.rsplit(':', 1)
    if address != '127.0.0.1':
        raise AssertionError('the broker is published on %s, not on 127.0.0.1 only' % published)
    fleet.broker_port = int(port)
    fleet.broker = '127.0.0.1:%d' % fleet.broker_port

    def running() -> bool:
        logs = podman('logs', fleet.broker_container, check=False)
        if podman('container', 'inspect', '-f', '{{.State.Running}}', fleet.broker_container,
                  check=False).stdout.strip() != 'true':
            raise RuntimeError('the broker exited:\n%s%s' % (logs.stdout, logs.stderr))
        return ' running' in logs.stdout + logs.stderr and _tls_listens(fleet.broker_port, pki.ca_file, '127.0.0.1')

    _wait('the broker %s on %s' % (fleet.broker_container, fleet.broker), running, 30)
