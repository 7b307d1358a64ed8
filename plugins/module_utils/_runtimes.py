# -*- coding: utf-8 -*-
# Copyright (c) 2026, edgeai.fleet contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Find the inference runtimes installed on a device, with their versions.

Private to this collection: the API may change without notice.

Nothing is imported: TensorRT crashes without a GPU driver, so runtimes are
found by their package metadata (Python distributions, in the device venv and
system-wide) and by their Debian packages (JetPack's TensorRT, libedgetpu).
"""

from __future__ import annotations

import json

# Python distributions that provide an inference runtime, by runtime name.
PYTHON_DISTRIBUTIONS = {
    'onnxruntime': ('onnxruntime', 'onnxruntime-gpu'),
    'litert': ('ai-edge-litert',),
    'tflite_runtime': ('tflite-runtime',),
    'tensorrt': ('tensorrt', 'tensorrt-lean', 'tensorrt-cu12'),
    'device_runtime': ('edgeai-device-runtime',),
}

# Debian packages that provide a runtime's native library, by runtime name.
DEBIAN_PACKAGES = {
    'edgetpu': ('libedgetpu1-std', 'libedgetpu1-max'),
    'tensorrt': ('tensorrt', 'libnvinfer10', 'libnvinfer8', 'python3-libnvinfer'),
    'tflite_runtime': ('python3-tflite-runtime',),
}

# Run by the interpreter under test, with the distribution names as arguments.
# It prints {"name": "version"} for the ones installed; it imports nothing else.
PROBE_SCRIPT = (
    'import json, sys\n'
    'try:\n'
    '    from importlib import metadata\n'
    'except ImportError:\n'
    '    import importlib_metadata as metadata\n'
    'found = {}\n'
    'for name in sys.argv[1:]:\n'
    '    try:\n'
    '        found[name] = metadata.version(name)\n'
    '    except Exception:\n'
    '        pass\n'
    'print(json.dumps(found))\n'
)


def all_distributions():
    return sorted({d for names in PYTHON_DISTRIBUTIONS.values() for d in names})


def all_debian_packages():
    return sorted({p for names in DEBIAN_PACKAGES.values() for p in names})


def python_versions(run_command, python):
    """Ask ``python`` which runtime distributions it has. Returns ({dist: version}, error)."""
    rc, out, err = run_command([python, '-c', PROBE_SCRIPT] + all_distributions())
    if rc != 0:
        return {}, 'probing %s failed (rc=%s): %s' % (python, rc, (err or out).strip()[-300:])
    try:
        found = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {}, 'probing %s printed no JSON: %r' % (python, out[-300:])
    return found, None


def parse_dpkg_query(output):
    """Parse `dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n'` output.

    Only packages whose status (the second letter of the abbreviation) says installed are
    returned: 'ii', and 'hi' for a package on hold (apt-mark hold is common for JetPack's TensorRT).
    """
    found = {}
    for line in output.splitlines():
        parts = line.split('\t')
        if len(parts) == 3 and parts[2][1:2] == 'i' and parts[1]:
            found[parts[0].split(':')[0]] = parts[1]
    return found


def debian_versions(run_command, dpkg_query):
    """Return {package: version} for the runtime packages dpkg knows as installed."""
    if not dpkg_query:
        return {}
    # dpkg-query exits 1 when some of the names are unknown; what it printed is still right.
    rc, out, err = run_command([dpkg_query, '-W', '-f', '${Package}\t${Version}\t${db:Status-Abbrev}\n']
                               + all_debian_packages())
    return parse_dpkg_query(out)


def collect(sources):
    """Fold {source: {package: version}} into {runtime: {version, package, source}}.

    ``sources`` is ordered: the first source that has a runtime wins (the
    device venv comes before the system).
    """
    runtimes = {}
    for source, found in sources:
        table = DEBIAN_PACKAGES if source == 'dpkg' else PYTHON_DISTRIBUTIONS
        for runtime, packages in table.items():
            if runtime in runtimes:
                continue
            for package in packages:
                if package in found:
                    runtimes[runtime] = {'version': found[package], 'package': package, 'source': source}
                    break
    return runtimes
