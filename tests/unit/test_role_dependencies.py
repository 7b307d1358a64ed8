"""The inference_service role downloads the device runtime's dependencies for devices without a
package index; its list must be pyproject.toml's, or a device install fails on a missing wheel."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_role_downloads_exactly_the_runtime_dependencies():
    project = tomllib.loads((REPO / 'device_runtime' / 'pyproject.toml').read_text())['project']
    wanted = sorted(re.split(r'[<>=!~ ;\[]', dep, maxsplit=1)[0].lower() for dep in project['dependencies'])
    role_vars = yaml.safe_load((REPO / 'roles' / 'inference_service' / 'vars' / 'main.yml').read_text())
    assert sorted(role_vars['__inference_service_runtime_dependencies']) == wanted
