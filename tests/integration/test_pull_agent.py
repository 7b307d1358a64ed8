"""Pull mode on a real simulated device (podman container, network: none): playbooks/publish.yml
writes the registry on the controller; the registry is served over HTTPS inside the device on its
own loopback (the container has no network); deploy.yml with inference_service_registry_url
installs the agent's systemd timer; one run of the agent's service installs the new version through
the OTA installer, and the history says it came by pull."""
from __future__ import annotations

import json
import textwrap

from conftest import DEMO_MODEL, REPO, device_json, podman, version_of
from support.pki import make_ca, make_server_cert, write_pem

PUBLISH = REPO / 'playbooks' / 'publish.yml'
DEPLOY = REPO / 'deploy.yml'

SERVE = textwrap.dedent('''
    import http.server, ssl, functools
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv/registry")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 8443), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/srv/tls/server.pem", "/srv/tls/server.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()
''')


def test_publish_and_pull_through_the_agent_timer(deployed, run_playbook, tmp_path):
    host, inventory, common = deployed
    v1 = json.loads((DEMO_MODEL / 'manifest.json').read_text())['version']
    v2 = version_of(DEMO_MODEL, tmp_path / 'v2', '2.0.0')
    registry = tmp_path / 'registry'

    # 0. publish_wave (a wave of the fleet inventory) is checked before anything is written.
    extra = tmp_path / 'publish.json'
    extra.write_text(json.dumps({'publish_registry_dir': str(registry), 'publish_models': [str(v2)]}))
    unplaced = run_playbook(PUBLISH, inventory, '-e', '@%s' % extra, '-e', 'publish_wave=canary')
    assert unplaced.rc != 0 and 'publish_wave needs every device placed in a wave' in str(unplaced.failures(host))
    placed = tmp_path / 'placed.json'
    placed.write_text(json.dumps({'edgeai_wave_name': 'wave1'}))
    unknown = run_playbook(PUBLISH, inventory, '-e', '@%s' % extra, '-e', '@%s' % placed, '-e', 'publish_wave=canary')
    assert unknown.rc != 0
    assert 'the fleet has no wave canary in this play; its waves: wave1' in str(unknown.failures(host))
    assert not registry.exists()

    # 1. Publish on the controller, for the device's wave: the artifact and a signed update document for it.
    published = run_playbook(PUBLISH, inventory, '-e', '@%s' % extra, '-e', '@%s' % placed,
                             '-e', 'publish_wave=wave1')
    assert published.rc == 0, published.failures(host)
    key_id = device_json(host, 'keys', 'show')['current']['key_id']
    assert (registry / 'updates' / ('%s.json' % key_id)).is_file()
    again = run_playbook(PUBLISH, inventory, '-e', '@%s' % extra)
    assert again.rc == 0 and again.changed(host) == 0, 'publishing the same again changed something'

    # 2. Host the registry over HTTPS inside the device (its own loopback; the container has no network).
    ca_key, ca_cert = make_ca('edgeai integration CA')
    key, cert = make_server_cert(ca_key, ca_cert)
    write_pem(tmp_path / 'ca.pem', ca_cert)
    write_pem(tmp_path / 'server.pem', cert)
    write_pem(tmp_path / 'server.key', key)
    (tmp_path / 'serve.py').write_text(SERVE)
    podman('exec', host, 'mkdir', '-p', '/srv/tls')
    podman('cp', str(registry), '%s:/srv/registry' % host)
    for name in ('server.pem', 'server.key', 'serve.py'):
        podman('cp', str(tmp_path / name), '%s:/srv/tls/%s' % (host, name))
    podman('cp', str(tmp_path / 'ca.pem'), '%s:/opt/edgeai/etc/registry-ca.pem' % host)
    podman('exec', host, 'chmod', '0644', '/opt/edgeai/etc/registry-ca.pem')
    podman('exec', '-d', host, '/usr/bin/python3', '/srv/tls/serve.py')

    # 3. Point the device at it: deploy.yml installs the agent's timer.
    point = tmp_path / 'point.json'
    point.write_text(json.dumps({'inference_service_registry_url': 'https://127.0.0.1:8443/',
                                 'inference_service_registry_ca_file': '/opt/edgeai/etc/registry-ca.pem',
                                 'inference_service_agent_watch': 2}))
    configured = run_playbook(DEPLOY, inventory, '-e', '@%s' % point)
    assert configured.rc == 0, configured.failures(host)
    assert podman('exec', host, 'systemctl', 'is-enabled', 'edgeai-agent.timer').stdout.strip() == 'enabled'
    assert device_json(host, 'model', 'list')['models'][0]['active'] == v1

    # 4. One run of the agent (what the timer starts): the new version, through every phase.
    run = podman('exec', host, 'systemctl', 'start', 'edgeai-agent.service', check=False)
    journal = podman('exec', host, 'journalctl', '-u', 'edgeai-agent.service', '--no-pager', check=False).stdout
    assert run.returncode == 0, journal
    assert device_json(host, 'model', 'list')['models'][0]['active'] == '2.0.0'
    history = device_json(host, 'ota', 'history', '--name', 'digits')['history']
    assert history[0]['mode'] == 'pull' and history[0]['outcome'] == 'committed' and history[0]['bytes_transferred'] > 0

    # 5. Nothing new published: the next run changes nothing.
    podman('exec', host, 'systemctl', 'start', 'edgeai-agent.service')
    assert device_json(host, 'ota', 'history', '--name', 'digits')['history'] == history
