"""TensorRTBackend: the probe and the refusal paths.

This machine has no GPU and no TensorRT, so the engine path (deserialize, execution
with cuda-python device buffers) is NOT exercised here. What is tested:

* the module never imports ``tensorrt`` on import;
* ``probe()`` reports the not-installed reason when tensorrt is not importable;
* TEST DOUBLES: small fake ``tensorrt`` packages written into a tmp dir and put on the
  probe subprocess's PYTHONPATH. The crashing one stands in for a TensorRT build on a
  machine without a usable GPU driver, where ``import tensorrt`` segfaults; the probe
  must turn that into a one-line reason while this test process survives. Others stand
  in for a broken install (ImportError), a hang, and a healthy import (to check the
  success branch of the parent's parsing, not TensorRT itself);
* constructing the backend when the probe fails raises BackendUnavailable with the reason.
"""
from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import textwrap

import pytest

from edgeai_runtime.service.backends import tensorrt as trt_backend
from edgeai_runtime.service.backends.base import BackendOptions, BackendUnavailable
from edgeai_runtime.service.backends.tensorrt import (
    CRASHED,
    NOT_INSTALLED,
    TensorRTBackend,
    run_probe,
    trt_type_to_v2,
)

REAL_TENSORRT = importlib.util.find_spec("tensorrt") is not None  # find_spec does not import it


def _fake_tensorrt(root, body: str):
    pkg = root / "tensorrt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(body))
    return root


@pytest.fixture
def fresh_probe_cache():
    trt_backend._reset_probe_cache()
    yield
    trt_backend._reset_probe_cache()


def test_module_import_does_not_import_tensorrt():
    code = ("import sys, edgeai_runtime.service.backends.tensorrt as m; "
            "assert 'tensorrt' not in sys.modules, 'imported'; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_runtime_name():
    assert TensorRTBackend.runtime == "tensorrt"


@pytest.mark.skipif(REAL_TENSORRT, reason="tensorrt is importable here")
def test_probe_reports_not_installed(fresh_probe_cache):
    reason = TensorRTBackend.probe()
    assert reason == "tensorrt is not installed (on Jetson it comes from JetPack: apt install python3-libnvinfer)"
    assert reason == NOT_INSTALLED
    assert "tensorrt" not in sys.modules


def test_probe_is_cached_per_process(fresh_probe_cache, monkeypatch):
    calls = []

    def fake_run_probe(*args, **kwargs):
        calls.append(1)
        return "some reason"

    monkeypatch.setattr(trt_backend, "run_probe", fake_run_probe)
    assert TensorRTBackend.probe() == "some reason"
    assert TensorRTBackend.probe() == "some reason"
    assert len(calls) == 1


def test_probe_not_shadowed_by_this_module_in_cwd(tmp_path, monkeypatch):
    """'python -c' puts the cwd on sys.path; a tensorrt.py there must not count as TensorRT."""
    (tmp_path / "tensorrt.py").write_text("raise ImportError('attempted relative import')\n")
    monkeypatch.chdir(tmp_path)
    reason = run_probe()
    if not REAL_TENSORRT:
        assert reason == NOT_INSTALLED


@pytest.mark.parametrize("body,sig", [
    ("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n", signal.SIGSEGV),
    ("import os\nos.abort()\n", signal.SIGABRT),
])
def test_probe_reports_crash_on_import(tmp_path, body, sig):
    """Double: a tensorrt whose import kills the interpreter, as a real build without a driver does."""
    root = _fake_tensorrt(tmp_path, body)
    reason = run_probe(pythonpath=[str(root)])
    assert reason == "tensorrt crashed on import (signal %d): no usable GPU driver" % int(sig)
    assert reason == CRASHED % int(sig)
    assert "\n" not in reason
    assert "tensorrt" not in sys.modules  # the parent never imported it


def test_probe_reports_broken_install_as_last_stderr_line(tmp_path):
    """Double: installed bindings whose shared library is missing."""
    root = _fake_tensorrt(tmp_path, """
        raise ImportError("libnvinfer.so.10: cannot open shared object file: No such file or directory")
    """)
    reason = run_probe(pythonpath=[str(root)])
    assert reason == ("tensorrt failed to import: libnvinfer.so.10: cannot open shared object file: "
                      "No such file or directory")


def test_probe_reports_runtime_creation_failure(tmp_path):
    """Double: tensorrt imports, but creating a Runtime fails (what TensorRT does without a CUDA device)."""
    root = _fake_tensorrt(tmp_path, """
        __version__ = "10.3.0"
        class ILogger:
            class Severity:
                INTERNAL_ERROR = 0
                ERROR = 1
                WARNING = 2
            def __init__(self):
                pass
        class Runtime:
            def __init__(self, logger):
                logger.log(ILogger.Severity.ERROR, "CUDA initialization failure with error: 35")
                raise TypeError("pybind11::init(): factory function returned nullptr")
    """)
    reason = run_probe(pythonpath=[str(root)])
    assert reason.startswith("tensorrt cannot create a runtime (no usable CUDA device?): "
                             "CUDA initialization failure with error: 35")
    assert "\n" not in reason


def test_probe_success_branch_with_healthy_double(tmp_path):
    """Double: a tensorrt that imports and creates a Runtime; checks the parent's success parsing only."""
    root = _fake_tensorrt(tmp_path, """
        __version__ = "10.3.0"
        class ILogger:
            class Severity:
                INTERNAL_ERROR = 0
                ERROR = 1
            def __init__(self):
                pass
        class Runtime:
            def __init__(self, logger):
                pass
    """)
    # Only meaningful where cuda-python is absent (else the child also counts CUDA devices).
    if importlib.util.find_spec("cuda") is not None:
        pytest.skip("cuda-python importable here; the child would query real devices")
    assert run_probe(pythonpath=[str(root)]) is None
    assert trt_backend._probe_version.get("version") == "10.3.0"
    trt_backend._probe_version.clear()


def test_probe_timeout(tmp_path):
    root = _fake_tensorrt(tmp_path, "import time\ntime.sleep(30)\n")
    assert run_probe(pythonpath=[str(root)], timeout=1) == "tensorrt probe timed out after 1 s"


def test_constructor_refuses_with_probe_reason(tmp_path, monkeypatch, fresh_probe_cache):
    """The crashing double on PYTHONPATH: construction must fail cleanly, not crash us."""
    root = _fake_tensorrt(tmp_path, "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    monkeypatch.setenv("PYTHONPATH", str(root))
    with pytest.raises(BackendUnavailable) as info:
        TensorRTBackend(b"\x00engine-bytes", BackendOptions(precision="fp16"))
    assert str(info.value) == CRASHED % int(signal.SIGSEGV)
    assert "tensorrt" not in sys.modules


@pytest.mark.skipif(REAL_TENSORRT, reason="tensorrt is importable here")
def test_constructor_refuses_when_not_installed(fresh_probe_cache):
    with pytest.raises(BackendUnavailable) as info:
        TensorRTBackend(b"engine", BackendOptions())
    assert str(info.value) == NOT_INSTALLED


class _FakeDataType:
    def __init__(self, name):
        self.name = name


@pytest.mark.parametrize("name,v2", [
    ("FLOAT", "FP32"), ("HALF", "FP16"), ("INT8", "INT8"), ("INT32", "INT32"),
    ("INT64", "INT64"), ("BOOL", "BOOL"), ("UINT8", "UINT8"),
])
def test_trt_type_to_v2(name, v2):
    assert trt_type_to_v2(_FakeDataType(name)) == v2


def test_trt_type_to_v2_from_str_and_unsupported():
    class Enumish:
        def __str__(self):
            return "DataType.HALF"
    assert trt_type_to_v2(Enumish()) == "FP16"
    for name in ("BF16", "FP8", "INT4"):
        with pytest.raises(ValueError):
            trt_type_to_v2(_FakeDataType(name))
