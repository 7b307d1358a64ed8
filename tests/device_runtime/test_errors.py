"""One exception hierarchy: every error the device runtime raises on purpose is an EdgeAIError with a
stable reason code and a result, and keeps the built-in base it had; the CLI prints the code."""
from __future__ import annotations

import importlib
import inspect
import json
import pkgutil

import edgeai_runtime
from edgeai_runtime.format.errors import EdgeAIError
from edgeai_runtime.device.ota import UpdateFailed
from edgeai_runtime.device.store import DiskFull, StoreError
from support.service import runtime

#: The built-in base each error had before the hierarchy, which callers may still catch it by.
BUILTIN = {"ArtifactError": ValueError, "ManifestError": ValueError, "ConfigError": ValueError,
           "RootMissing": ValueError, "StoreError": RuntimeError, "DiskFull": RuntimeError,
           "UpdateFailed": RuntimeError, "DeltaFailed": RuntimeError, "HistoryError": RuntimeError,
           "GateFailed": RuntimeError, "RegistryError": RuntimeError, "ServiceError": RuntimeError,
           "ServiceDown": ConnectionError, "ModelNotFound": LookupError, "BackendUnavailable": RuntimeError,
           "ModelLoadError": RuntimeError, "ReadinessError": ValueError}


def runtime_errors():
    """Every public exception class defined in the edgeai_runtime package."""
    found = {}
    for info in pkgutil.walk_packages(edgeai_runtime.__path__, "edgeai_runtime."):
        if info.name.startswith("edgeai_runtime.controller"):
            continue  # the controller side: its errors are the format's (ArtifactError)
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name \
                    and not name.startswith("_"):
                found[name] = obj
    return found


def test_every_runtime_error_is_an_edgeai_error_with_a_code():
    errors = runtime_errors()
    assert set(BUILTIN) <= set(errors), sorted(set(BUILTIN) - set(errors))
    for name, cls in sorted(errors.items()):
        assert issubclass(cls, EdgeAIError), name
        assert issubclass(cls, BUILTIN.get(name, Exception)), (name, "lost its built-in base")
        assert cls.default_reason and cls.default_reason.islower(), name
    assert StoreError("x").reason == "store" and StoreError("x").result == {}
    result = {"changed": False}
    failed = UpdateFailed("update of digits to 2.0.0 refused", result)
    assert failed.reason == "update_failed" and failed.result is result  # callers add to it after the raise


def test_the_cli_prints_the_code(tmp_path):
    (tmp_path / "root").mkdir()
    done = runtime(tmp_path / "root", "model", "remove", "digits", "1.0.0")
    assert done.returncode == 0 and not json.loads(done.stdout)["changed"]  # not held: nothing to remove
    missing = runtime(tmp_path / "nowhere", "model", "list")
    out = json.loads(missing.stdout)
    assert missing.returncode == 1 and out["reason"] == "root_missing" and "nowhere" in out["msg"]
    usage = runtime(tmp_path / "root", "ota", "apply", "--watch", "0")
    out = json.loads(usage.stdout)
    assert usage.returncode == 1 and out["reason"] == "usage" and out["error"] == "CommandFailed", out
    assert DiskFull.default_reason == "disk_full"


def test_a_failed_update_keeps_its_own_reason_in_the_cli_output(tmp_path):
    """A failed update says why in its result (phase and cause); the CLI must not replace that with
    the class's code, which stays beside it as reason_code."""
    from argparse import Namespace
    from edgeai_runtime.cli import _failure
    result = {"changed": False, "outcome": "rolled_back", "reason": "watch: the service restarted",
              "reason_code": "gate"}
    out = _failure(UpdateFailed("update of digits to 2.0.0 rolled back", result),
                   Namespace(command="ota", action="apply", root=str(tmp_path)), None)
    assert (out["reason"], out["reason_code"], out["failed"]) == ("watch: the service restarted", "gate", True)
    out = _failure(StoreError("removing digits 1.0.0: it is the active version"),
                   Namespace(command="model", action="remove", root=str(tmp_path)), None)
    assert out["reason"] == "store" and out["error"] == "StoreError"
