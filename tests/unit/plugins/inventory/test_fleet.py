"""plugins/inventory/fleet.py: the plugin's real parse() into a real InventoryData, from YAML and CSV
registries in tmp_path and from an HTTP registry served by http.server on 127.0.0.1."""
from __future__ import annotations

import functools
import http.server
import json
import ssl
import threading

import pytest
import yaml
from ansible.errors import AnsibleError, AnsibleParserError
from ansible.inventory.data import InventoryData
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import cache_loader, inventory_loader
from ansible.template import Templar, trust_as_template

from ansible_collections.edgeai.fleet.plugins.plugin_utils._waves import assign_waves
from support import pki

CLASSES = ['jetson_nano', 'jetson_orin', 'raspberry_pi', 'coral', 'generic']
DEVICES = [
    {'id': 'nano-a01', 'class': 'jetson_nano', 'site': 'plant_a', 'address': '192.0.2.11',
     'labels': {'role': 'camera', 'line': '1'}},
    {'id': 'nano-a02', 'class': 'jetson_nano', 'site': 'plant_a', 'address': '192.0.2.12',
     'labels': {'role': 'camera', 'line': '2'}},
    {'id': 'orin-b01', 'class': 'jetson_orin', 'site': 'plant-b', 'address': '198.51.100.21',
     'labels': {'role': 'inspection'}},
    {'id': 'rpi-a01', 'class': 'raspberry_pi', 'site': 'plant_a', 'address': '192.0.2.31',
     'labels': {'role': 'gateway'}},
    {'id': 'coral-b02', 'class': 'coral', 'site': 'plant-b', 'address': '198.51.100.42',
     'labels': {'role': 'inspection'}, 'vars': {'edgeai_hardware_class': 'coral', 'camera_fps': 15}},
    {'id': 'ipc-a01', 'class': 'generic', 'site': 'plant_a', 'address': '192.0.2.41'},
]
CSV = ('id,class,site,labels,address\n'
       'nano-a01,jetson_nano,plant_a,role=camera;line=1,192.0.2.11\n'
       'nano-a02,jetson_nano,plant_a,role=camera;line=2,192.0.2.12\n'
       'orin-b01,jetson_orin,plant-b,role=inspection,198.51.100.21\n'
       'rpi-a01,raspberry_pi,plant_a,role=gateway,192.0.2.31\n'
       'coral-b02,coral,plant-b,role=inspection,198.51.100.42\n'
       '\n'
       'ipc-a01,generic,plant_a,,192.0.2.41\n')
WAVES = {'canary': ['rpi-a01'], 'counts': [2]}
TOKEN = 'tok-3f9a7c1e-secret'


def write_config(tmp_path, name='fleet.yml', **options):
    config = dict({'plugin': 'edgeai.fleet.fleet', 'registry': 'registry.yml', 'waves': WAVES}, **options)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def write_registry(tmp_path, devices, name='registry.yml'):
    (tmp_path / name).write_text(yaml.safe_dump(devices))
    return tmp_path / name


def parse(config, cache=True, inventory=None):
    """Parse like ansible-inventory does: parse(), then persist the cache."""
    inventory = InventoryData() if inventory is None else inventory
    plugin = inventory_loader.get('edgeai.fleet.fleet')
    plugin.parse(inventory, DataLoader(), str(config), cache=cache)
    if plugin.get_option('cache'):
        plugin.update_cache_if_changed()
    return inventory


def hosts_of(inventory, group):
    return [host.name for host in inventory.groups[group].get_hosts()]


def expected_waves(ids=None):
    return assign_waves(ids or [device['id'] for device in DEVICES], WAVES)


def assert_fleet(inventory):
    """The groups and variables DEVICES must produce with WAVES."""
    waves = expected_waves()
    assert set(inventory.groups['edgeai_devices'].child_groups) == {inventory.groups[name] for name in CLASSES}
    assert hosts_of(inventory, 'jetson_nano') == ['nano-a01', 'nano-a02']
    assert hosts_of(inventory, 'coral') == ['coral-b02']
    assert sorted(hosts_of(inventory, 'site_plant_a')) == ['ipc-a01', 'nano-a01', 'nano-a02', 'rpi-a01']
    # Site names are made safe group names the way constructed does it.
    assert sorted(hosts_of(inventory, 'site_plant_b')) == ['coral-b02', 'orin-b01']
    assert hosts_of(inventory, 'rollout_canary') == ['rpi-a01']
    assert sorted(hosts_of(inventory, 'rollout_wave1') + hosts_of(inventory, 'rollout_wave2')) == \
        ['coral-b02', 'ipc-a01', 'nano-a01', 'nano-a02', 'orin-b01']
    assert len(hosts_of(inventory, 'rollout_wave1')) == 2
    assert 'rollout_wave3' not in inventory.groups
    # Hosts in wave order, then by id.
    assert list(inventory.hosts) == sorted(waves, key=lambda device_id: (waves[device_id], device_id))
    nano = inventory.get_host('nano-a01').get_vars()
    assert nano['ansible_host'] == '192.0.2.11'
    assert nano['edgeai_device_id'] == 'nano-a01'
    assert nano['edgeai_registry_class'] == 'jetson_nano'
    assert nano['edgeai_site'] == 'plant_a'
    assert nano['edgeai_labels'] == {'role': 'camera', 'line': '1'}
    assert nano['edgeai_wave'] == waves['nano-a01']
    assert nano['edgeai_wave_name'] == 'wave%d' % waves['nano-a01']
    assert nano['edgeai_wave_plan'] == {'canary': ['rpi-a01'], 'counts': [2]}
    assert 'edgeai_hardware_class' not in nano
    assert inventory.get_host('rpi-a01').get_vars()['edgeai_wave_name'] == 'canary'
    assert inventory.get_host('ipc-a01').get_vars()['edgeai_labels'] == {}


def test_verify_file_accepts_only_fleet_configs(tmp_path):
    plugin = inventory_loader.get('edgeai.fleet.fleet')
    for name in ('fleet.yml', 'plant.fleet.yaml', 'hosts.yml', 'fleet.json', 'fleet.yml.bak'):
        (tmp_path / name).write_text('plugin: edgeai.fleet.fleet\n')
    assert plugin.verify_file(str(tmp_path / 'fleet.yml'))
    assert plugin.verify_file(str(tmp_path / 'plant.fleet.yaml'))
    for name in ('hosts.yml', 'fleet.json', 'fleet.yml.bak', 'missing.fleet.yml'):
        assert not plugin.verify_file(str(tmp_path / name)), name


def test_yaml_registry(tmp_path):
    write_registry(tmp_path, DEVICES)
    inventory = parse(write_config(tmp_path))
    assert_fleet(inventory)
    coral = inventory.get_host('coral-b02').get_vars()
    # The entry's vars are host vars.
    assert coral['edgeai_hardware_class'] == 'coral' and coral['camera_fps'] == 15


def test_yaml_registry_as_a_devices_mapping_and_an_absolute_path(tmp_path):
    registry = tmp_path / 'data' / 'devices.yaml'
    registry.parent.mkdir()
    registry.write_text(yaml.safe_dump({'devices': DEVICES}))
    assert_fleet(parse(write_config(tmp_path, registry=str(registry))))


def test_csv_registry(tmp_path):
    # A spreadsheet export: byte-order mark, blank line.
    (tmp_path / 'registry.csv').write_text('\ufeff' + CSV, encoding='utf-8')
    inventory = parse(write_config(tmp_path, registry='registry.csv'))
    assert_fleet(inventory)
    assert 'camera_fps' not in inventory.get_host('coral-b02').get_vars()


def test_a_device_without_site_or_address(tmp_path):
    write_registry(tmp_path, [{'id': 'bare-01', 'class': 'generic', 'labels': {'line': 3, 'spare': True}}])
    inventory = parse(write_config(tmp_path))
    bare = inventory.get_host('bare-01').get_vars()
    assert bare['edgeai_site'] is None and 'ansible_host' not in bare
    # Label values are strings, whatever YAML made of them.
    assert bare['edgeai_labels'] == {'line': '3', 'spare': 'true'}
    assert not [name for name in inventory.groups if name.startswith('site_')]


def test_default_waves_and_the_string_form(tmp_path):
    write_registry(tmp_path, DEVICES)
    config = tmp_path / 'fleet.yml'
    config.write_text(yaml.safe_dump({'plugin': 'edgeai.fleet.fleet', 'registry': 'registry.yml'}))
    ids = [device['id'] for device in DEVICES]
    default = assign_waves(ids, {'percentages': [10, 50, 100]})
    inventory = parse(config)
    assert {host: inventory.get_host(host).get_vars()['edgeai_wave'] for host in ids} == default
    assert inventory.get_host('ipc-a01').get_vars()['edgeai_wave_plan'] == {'canary': [], 'percentages': [10, 50, 100]}
    inventory = parse(write_config(tmp_path, waves='canary=ipc-a01|exp:1,2'))
    assert hosts_of(inventory, 'rollout_canary') == ['ipc-a01']
    assert [len(hosts_of(inventory, 'rollout_wave%d' % index)) for index in (1, 2, 3)] == [1, 2, 2]


def test_pin_class(tmp_path):
    write_registry(tmp_path, DEVICES)
    inventory = parse(write_config(tmp_path, pin_class=True))
    assert all(inventory.get_host(device['id']).get_vars()['edgeai_hardware_class'] == device['class']
               for device in DEVICES)
    write_registry(tmp_path, [{'id': 'coral-b01', 'class': 'coral'},
                              {'id': 'coral-b02', 'class': 'coral', 'vars': {'edgeai_hardware_class': 'raspberry_pi'}}])
    inventory = InventoryData()
    conflict = 'coral-b02: vars.edgeai_hardware_class raspberry_pi contradicts its class coral'
    with pytest.raises(AnsibleParserError, match=conflict):
        parse(write_config(tmp_path, pin_class=True), inventory=inventory)
    # Nothing was added before the bad entry was found.
    assert not inventory.hosts


def test_compose_groups_and_keyed_groups(tmp_path):
    write_registry(tmp_path, DEVICES)
    inventory = parse(write_config(
        tmp_path,
        compose={'ansible_port': "2222 if edgeai_site == 'plant-b' else 22", 'line_no': 'edgeai_labels.line | int'},
        groups={'cameras': "edgeai_labels.role == 'camera'", 'jetsons': "edgeai_registry_class.startswith('jetson')"},
        keyed_groups=[{'key': 'edgeai_labels.role', 'prefix': 'role'},
                      {'key': 'edgeai_wave_name', 'prefix': 'wave'}]))
    assert_fleet(inventory)
    assert sorted(hosts_of(inventory, 'cameras')) == ['nano-a01', 'nano-a02']
    assert sorted(hosts_of(inventory, 'jetsons')) == ['nano-a01', 'nano-a02', 'orin-b01']
    assert sorted(hosts_of(inventory, 'role_inspection')) == ['coral-b02', 'orin-b01']
    assert hosts_of(inventory, 'wave_canary') == ['rpi-a01']
    assert inventory.get_host('orin-b01').get_vars()['ansible_port'] == 2222
    assert inventory.get_host('nano-a01').get_vars()['ansible_port'] == 22
    assert inventory.get_host('nano-a02').get_vars()['line_no'] == 2
    # ipc-a01 has no line label: the failed expression is skipped when strict is off.
    assert 'line_no' not in inventory.get_host('ipc-a01').get_vars()


def test_strict_makes_a_failing_expression_an_error(tmp_path):
    write_registry(tmp_path, DEVICES)
    with pytest.raises(AnsibleError, match='line_no'):
        parse(write_config(tmp_path, strict=True, compose={'line_no': 'edgeai_labels.line | int'}))
    with pytest.raises(AnsibleError, match='Could not generate group'):
        parse(write_config(tmp_path, strict=True, keyed_groups=[{'key': 'edgeai_labels.line', 'prefix': 'line'}]))


def _cache_config(tmp_path, **options):
    return write_config(tmp_path, cache=True, cache_plugin='ansible.builtin.jsonfile',
                        cache_connection=str(tmp_path / 'cache'), cache_timeout=3600, **options)


def cached(tmp_path, replace=None):
    """The one entry of the jsonfile cache in tmp_path/cache, read (or first replaced) through the cache plugin."""
    cache = cache_loader.get('ansible.builtin.jsonfile', _uri=str(tmp_path / 'cache'), _prefix='ansible_inventory_',
                             _timeout=3600)
    [key] = cache.keys()
    assert key.startswith('edgeai.fleet.fleet_')
    if replace is not None:
        cache.set(key, replace)
    return cache.get(key)


def test_the_cache_holds_the_raw_registry_and_groups_are_applied_again(tmp_path):
    registry = write_registry(tmp_path, DEVICES)
    inventory = parse(_cache_config(tmp_path, groups={'cameras': "edgeai_labels.role == 'camera'"}))
    assert sorted(hosts_of(inventory, 'cameras')) == ['nano-a01', 'nano-a02']
    # The raw registry list as read, not the hosts and groups built from it.
    assert cached(tmp_path) == DEVICES

    # The registry is gone: a run that may use the cache does not need it, and the changed
    # groups / compose / keyed_groups apply to the cached devices.
    registry.unlink()
    inventory = parse(_cache_config(tmp_path, groups={'gateways': "edgeai_labels.role == 'gateway'"},
                                    compose={'plant': 'edgeai_site'},
                                    keyed_groups=[{'key': 'edgeai_labels.role', 'prefix': 'role'}]))
    assert_fleet(inventory)
    assert 'cameras' not in inventory.groups
    assert hosts_of(inventory, 'gateways') == ['rpi-a01']
    assert sorted(hosts_of(inventory, 'role_camera')) == ['nano-a01', 'nano-a02']
    assert inventory.get_host('orin-b01').get_vars()['plant'] == 'plant-b'

    # A refresh (cache=False, as --flush-cache passes) reads the registry again.
    with pytest.raises(AnsibleParserError, match='no such file'):
        parse(_cache_config(tmp_path), cache=False)
    write_registry(tmp_path, DEVICES[:2])
    assert sorted(parse(_cache_config(tmp_path), cache=False).hosts) == ['nano-a01', 'nano-a02']
    assert cached(tmp_path) == DEVICES[:2]


def test_cached_entries_are_checked_again(tmp_path):
    write_registry(tmp_path, DEVICES)
    config = _cache_config(tmp_path)
    parse(config)
    cached(tmp_path, DEVICES + [{'id': 'x-01', 'class': 'jetson_tx2'}])
    with pytest.raises(AnsibleParserError, match="entry 7 \\(x-01\\): unknown class 'jetson_tx2'"):
        parse(config)


TEMPLATED = [{'id': 'evil-01', 'class': 'generic', 'site': 'plant_a',
              'labels': {'note': '{{ 6 * 7 }}'},
              'vars': {'motd': "{{ lookup('env', 'HOME') }}", 'nested': {'list': ['{{ 1 + 1 }}']}}}]


def _render(inventory, host, expression):
    templar = Templar(loader=DataLoader(), variables=inventory.get_host(host).get_vars())
    return templar.template(trust_as_template(expression))


@pytest.fixture
def trusting_loader(monkeypatch):
    """A DataLoader that marks everything it reads as trusted templates, as a config file is: the
    plugin must still make registry data unsafe."""
    original = DataLoader.load_from_file

    def load_trusted(self, file_name, *args, **kwargs):
        kwargs['trusted_as_template'] = True
        return original(self, file_name, *args, **kwargs)
    monkeypatch.setattr(DataLoader, 'load_from_file', load_trusted)


@pytest.mark.usefixtures('trusting_loader')
def test_registry_data_is_never_templated(tmp_path):
    write_registry(tmp_path, TEMPLATED)
    inventory = parse(write_config(tmp_path, compose={'note_copy': 'edgeai_labels.note'}))
    assert _render(inventory, 'evil-01', '{{ edgeai_labels.note }}') == '{{ 6 * 7 }}'
    assert _render(inventory, 'evil-01', '{{ motd }}') == "{{ lookup('env', 'HOME') }}"
    assert _render(inventory, 'evil-01', '{{ nested.list[0] }}') == '{{ 1 + 1 }}'
    assert _render(inventory, 'evil-01', '{{ note_copy }}') == '{{ 6 * 7 }}'
    # The check is real: a trusted value of the same text does render.
    templar = Templar(loader=DataLoader(), variables={'note': trust_as_template('{{ 6 * 7 }}')})
    assert templar.template(trust_as_template('{{ note }}')) == 42


@pytest.mark.usefixtures('trusting_loader')
def test_registry_data_from_the_cache_is_never_templated(tmp_path):
    registry = write_registry(tmp_path, TEMPLATED)
    parse(_cache_config(tmp_path))
    registry.unlink()
    inventory = parse(_cache_config(tmp_path))
    assert _render(inventory, 'evil-01', '{{ edgeai_labels.note }}') == '{{ 6 * 7 }}'
    assert _render(inventory, 'evil-01', '{{ motd }}') == "{{ lookup('env', 'HOME') }}"


@pytest.mark.parametrize('devices, message', [
    (DEVICES[:2] + [{'id': 'tx2-a01', 'class': 'jetson_tx2'}],
     "entry 3 (tx2-a01): unknown class 'jetson_tx2' (known: jetson_nano, jetson_orin, raspberry_pi, coral, generic)"),
    (DEVICES[:2] + [{'id': 'nano-a01', 'class': 'generic'}], 'entry 3 (nano-a01): duplicate id, entry 1 has it too'),
    (DEVICES[:1] + [{'class': 'generic', 'site': 'plant_a'}], 'entry 2: no id'),
    ([{'id': 'nano-a09'}], 'entry 1 (nano-a09): no class'),
    ([{'id': 'nano a09', 'class': 'jetson_nano'}], 'entry 1 (nano a09): the id is not a valid inventory host name'),
    ([{'id': 'web:22', 'class': 'generic'}], 'entry 1 (web:22): the id is not a valid inventory host name'),
    ([{'id': '-x', 'class': 'generic'}], 'entry 1 (-x): the id is not a valid inventory host name'),
    ([{'id': 1234, 'class': 'generic'}], 'entry 1: id 1234 is a number, not a string'),
    ([{'id': 'a-01', 'class': 'generic', 'adress': '192.0.2.1'}], 'entry 1 (a-01): unknown key adress'),
    ([{'id': 'a-01', 'class': 'generic', 'labels': ['x']}], 'entry 1 (a-01): labels must be a mapping'),
    ([{'id': 'a-01', 'class': 'generic', 'labels': {'x': [1]}}], 'entry 1 (a-01): label x has a list value'),
    ([{'id': 'a-01', 'class': 'generic', 'vars': {'edgeai_wave': 0}}], 'entry 1 (a-01): vars may not set edgeai_wave'),
    ([{'id': 'a-01', 'class': 'generic', 'vars': {'bad-name': 1}}],
     "entry 1 (a-01): vars key 'bad-name' is not a valid"),
    ([{'id': 'a-01', 'class': 'generic', 'address': '192.0.2.1', 'vars': {'ansible_host': '192.0.2.2'}}],
     'entry 1 (a-01): both address and vars.ansible_host are set'),
    ([{'id': 'a-01', 'class': 'generic', 'site': 7}], 'entry 1 (a-01): site 7 is a number, not a string'),
    (['nano-a01'], 'entry 1: expected a mapping with id and class, got a string'),
    ({'hosts': []}, 'the registry is a mapping with keys hosts'),
    ('just text', 'the registry holds a string'),
])
def test_bad_entries_fail_naming_the_entry(tmp_path, devices, message):
    write_registry(tmp_path, devices)
    with pytest.raises(AnsibleParserError) as err:
        parse(write_config(tmp_path))
    assert 'reading the device registry registry.yml: ' in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize('text, message', [
    ('id,class,plant\na-01,generic,x\n', 'CSV header: unknown column plant'),
    ('id,site\na-01,x\n', 'CSV header: the columns id and class are required'),
    ('id,class,labels\na-01,generic,role\n', "CSV line 2: label 'role' is not key=value"),
    ('id,class\na-01,generic,extra\n', 'CSV line 2: more cells than header columns'),
    ('id,class\na-01,generic\nb-01,raspberrypi\n', "entry 2 (b-01): unknown class 'raspberrypi'"),
])
def test_bad_csv_fails_naming_the_line(tmp_path, text, message):
    (tmp_path / 'registry.csv').write_text(text)
    with pytest.raises(AnsibleParserError, match='reading the device registry registry.csv: ') as err:
        parse(write_config(tmp_path, registry='registry.csv'))
    assert message in str(err.value)


@pytest.mark.parametrize('waves, message', [
    ({'percentages': [10, 50, 90]}, 'must end at 100'),
    ({'counts': [0]}, 'count 0 is below 1'),
    ({'percentages': [50, 100], 'counts': [1]}, 'percentages and counts are given together'),
    ('exp:1,1', 'factor 1 is below 2'),
])
def test_a_bad_wave_plan_fails(tmp_path, waves, message):
    write_registry(tmp_path, DEVICES)
    config = write_config(tmp_path, waves=waves)
    expected = 'reading the fleet inventory .*fleet.yml: option waves: wave plan'
    with pytest.raises(AnsibleParserError, match=expected) as err:
        parse(config)
    assert message in str(err.value)


def test_unreadable_sources(tmp_path):
    prefix = 'reading the device registry '
    with pytest.raises(AnsibleParserError, match=prefix + 'registry.yml: no such file .*registry.yml'):
        parse(write_config(tmp_path))
    (tmp_path / 'registry.yml').write_text('- id: a-01\n  class: [generic\n')
    with pytest.raises(AnsibleParserError, match=prefix + 'registry.yml: cannot read .*registry.yml'):
        parse(write_config(tmp_path))
    (tmp_path / 'registry.csv').write_bytes(b'id,class\n\xff\xfe,generic\n')
    with pytest.raises(AnsibleParserError, match=prefix + 'registry.csv: cannot read .*registry.csv'):
        parse(write_config(tmp_path, registry='registry.csv'))
    with pytest.raises(AnsibleParserError, match='cannot read .*missing.csv'):
        parse(write_config(tmp_path, registry='missing.csv'))
    (tmp_path / 'registry.xml').write_text('<devices/>')
    with pytest.raises(AnsibleParserError, match='cannot tell the format of .*registry.xml'):
        parse(write_config(tmp_path, registry='registry.xml'))


def test_an_empty_registry_gives_the_groups_and_no_hosts(tmp_path):
    (tmp_path / 'registry.yml').write_text('devices: []\n')
    inventory = parse(write_config(tmp_path))
    assert not inventory.hosts
    assert sorted(group.name for group in inventory.groups['edgeai_devices'].child_groups) == sorted(CLASSES)


def test_unknown_canaries_are_warned_about(tmp_path, capsys):
    write_registry(tmp_path, DEVICES)
    inventory = parse(write_config(tmp_path, waves={'canary': ['rpi-a01', 'gone-01'], 'percentages': [100]}))
    assert hosts_of(inventory, 'rollout_canary') == ['rpi-a01']
    captured = capsys.readouterr()
    assert 'canary device gone-01 not in the registry' in captured.err + captured.out


class Registry(http.server.BaseHTTPRequestHandler):
    """GET /devices: the DEVICES document when the bearer token is TOKEN; 401 naming what it got otherwise
    (an indiscreet server: the plugin must keep the token out of its message anyway)."""

    seen = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        auth = self.headers.get('Authorization')
        self.seen.append((self.path, auth, self.headers.get('Accept')))
        if self.path == '/broken':
            self.send_error(500, 'registry database offline')
            return
        if self.path == '/moved':
            self.send_response(302)
            self.send_header('Location', '/devices')
            self.end_headers()
            return
        if auth != 'Bearer %s' % TOKEN:
            self.send_response(401, 'token %s refused' % auth)
            self.end_headers()
            return
        if self.path == '/text':
            body = b'<html>not json</html>'
        else:
            body = json.dumps({'devices': DEVICES} if self.path == '/devices' else {'hosts': []}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Registry.seen = []
    return thread


def _stop(server, thread):
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def registry_url(monkeypatch):
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Registry)
    thread = _serve(server)
    yield functools.partial('http://127.0.0.1:{port}{path}'.format, port=server.server_address[1])
    _stop(server, thread)


@pytest.fixture
def https_registry_url(monkeypatch, tmp_path):
    """The same registry over TLS, with a certificate from a throwaway CA that nobody trusts."""
    monkeypatch.setenv('no_proxy', '127.0.0.1')
    ca_key, ca_cert = pki.make_ca('test registry CA')
    key, cert = pki.make_server_cert(ca_key, ca_cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.write_pem(tmp_path / 'server.pem', cert, key))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Registry)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = _serve(server)
    yield 'https://127.0.0.1:%d/devices' % server.server_address[1]
    _stop(server, thread)


def test_http_registry_with_a_bearer_token(tmp_path, registry_url, monkeypatch):
    monkeypatch.setenv('EDGEAI_FLEET_REGISTRY_TOKEN', TOKEN)
    assert_fleet(parse(write_config(tmp_path, registry=registry_url(path='/devices'))))
    assert Registry.seen == [('/devices', 'Bearer %s' % TOKEN, 'application/json')]
    # The option works as well as the environment variable.
    monkeypatch.delenv('EDGEAI_FLEET_REGISTRY_TOKEN')
    assert_fleet(parse(write_config(tmp_path, registry=registry_url(path='/devices'), token=TOKEN)))


def test_http_401_names_status_and_url_but_not_the_token(tmp_path, registry_url):
    url = registry_url(path='/devices')
    with pytest.raises(AnsibleParserError) as err:
        parse(write_config(tmp_path, registry=url, token=TOKEN + '-old'))
    message = str(err.value)
    assert 'reading the device registry %s: HTTP 401' % url in message
    assert Registry.seen == [('/devices', 'Bearer %s-old' % TOKEN, 'application/json')]
    assert TOKEN not in message and '********' in message


def test_http_failures(tmp_path, registry_url):
    with pytest.raises(AnsibleParserError, match='HTTP 500 registry database offline'):
        parse(write_config(tmp_path, registry=registry_url(path='/broken'), token=TOKEN))
    with pytest.raises(AnsibleParserError, match='the answer is not JSON'):
        parse(write_config(tmp_path, registry=registry_url(path='/text'), token=TOKEN))
    with pytest.raises(AnsibleParserError, match='the registry is a mapping with keys'):
        parse(write_config(tmp_path, registry=registry_url(path='/other'), token=TOKEN))
    # Credentials in the URL are not shown either.
    url = registry_url(path='/devices').replace('http://', 'http://admin:pa55@')
    with pytest.raises(AnsibleParserError) as err:
        parse(write_config(tmp_path, registry=url))
    assert 'pa55' not in str(err.value) and 'http://127.0.0.1:' in str(err.value)


def test_http_registry_that_is_not_there(tmp_path, registry_url):
    # A port nobody listens on: bind one, then close it.
    server = http.server.HTTPServer(('127.0.0.1', 0), Registry)
    port = server.server_address[1]
    server.server_close()
    expected = 'reading the device registry http://127.0.0.1:%d/devices: cannot reach it' % port
    with pytest.raises(AnsibleParserError, match=expected):
        parse(write_config(tmp_path, registry='http://127.0.0.1:%d/devices' % port, token=TOKEN, timeout=5))


def test_https_registry_and_validate_certs(tmp_path, https_registry_url):
    expected = 'reading the device registry https://127.0.0.1:[0-9]+/devices: cannot reach it: .*CERTIFICATE_VERIFY'
    with pytest.raises(AnsibleParserError, match=expected):
        parse(write_config(tmp_path, registry=https_registry_url, token=TOKEN))
    assert_fleet(parse(write_config(tmp_path, registry=https_registry_url, token=TOKEN, validate_certs=False)))
    assert Registry.seen == [('/devices', 'Bearer %s' % TOKEN, 'application/json')]


def test_a_redirect_is_followed_without_the_token(tmp_path, registry_url):
    with pytest.raises(AnsibleParserError, match='HTTP 401') as err:
        parse(write_config(tmp_path, registry=registry_url(path='/moved'), token=TOKEN))
    assert Registry.seen == [('/moved', 'Bearer %s' % TOKEN, 'application/json'),
                             ('/devices', None, 'application/json')]
    assert TOKEN not in str(err.value)
