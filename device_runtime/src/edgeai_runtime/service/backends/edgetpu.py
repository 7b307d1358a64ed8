"""Coral Edge TPU backend (runtime name ``edgetpu``).

A LiteRT interpreter with Coral's delegate, loaded through LiteRT's external-delegate
plugin loader: ``load_delegate('libedgetpu.so.1', {'device': options.device})``.
``libedgetpu.so.1`` comes from Coral's Debian package ``libedgetpu1-std`` (or
``libedgetpu1-max``). The PyPI package named ``pycoral`` is NOT Coral's library and
is never imported or installed here.

Failures are one-line ``BackendUnavailable`` reasons:

* the library cannot be loaded -> ``libedgetpu.so.1 not found (install libedgetpu1-std)``
* it loads but returns no delegate (no TPU plugged in / visible)
  -> ``no Edge TPU device: Failed to load delegate``
* any precision but int8 -> ``precision fp32 is not supported by the edgetpu backend (int8 only)``

Only models compiled with ``edgetpu_compiler`` (an ``edgetpu-custom-op`` node) run on
the TPU; anything else the delegate leaves to LiteRT's CPU kernels.
``details['edgetpu_custom_ops']`` counts such nodes (0 = everything runs on CPU).
Compiled models have fixed shapes, so batches run one row at a time.

FOR TESTS ONLY: the environment variable ``EDGEAI_EDGETPU_LIBRARY`` replaces the
library name (a path to a test double, see tests/support/modelgen.py). It is read
from the process environment only, deliberately not from ``BackendOptions.extra``,
so that no manifest can make the runtime dlopen an arbitrary file.
"""
from __future__ import annotations

import ctypes
import os
from types import ModuleType
from typing import Dict, Optional, Sequence

from edgeai_runtime.service.backends.base import BackendOptions, BackendUnavailable
from edgeai_runtime.service.backends.litert import LiteRTBackend, _one_line

DEFAULT_LIBRARY = "libedgetpu.so.1"
#: Test-only override of the delegate library (a name or a path).
LIBRARY_ENV = "EDGEAI_EDGETPU_LIBRARY"

LIBRARY_NOT_FOUND = "libedgetpu.so.1 not found (install libedgetpu1-std)"
NO_DEVICE = "no Edge TPU device: Failed to load delegate"
EDGETPU_CUSTOM_OP = "edgetpu-custom-op"


def library_name() -> str:
    """The delegate library to load: ``libedgetpu.so.1`` unless the test-only override is set."""
    return os.environ.get(LIBRARY_ENV) or DEFAULT_LIBRARY


def _library_loads(name: str) -> bool:
    """Whether the dynamic loader can open ``name`` (and what it links against)."""
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


class EdgeTPUBackend(LiteRTBackend):
    """One Edge TPU-compiled .tflite model in a LiteRT interpreter with Coral's delegate."""

    runtime = "edgetpu"
    precisions = ("int8",)
    resize_batch = False

    @classmethod
    def probe(cls) -> Optional[str]:
        reason = super().probe()
        if reason:
            return reason
        if not _library_loads(library_name()):
            return LIBRARY_NOT_FOUND
        # Whether a TPU is present is only known once the delegate is created (at load).
        return None

    @classmethod
    def _precision_reason(cls, precision: str) -> Optional[str]:
        if precision in cls.precisions:
            return None
        return "precision %s is not supported by the edgetpu backend (int8 only)" % precision

    def __init__(self, model: bytes, options: BackendOptions) -> None:
        self._edgetpu_ops = 0
        super().__init__(model, options)
        self._edgetpu_ops = self._count_edgetpu_ops()

    def _make_delegates(self, mod: ModuleType) -> Sequence[object]:
        library = library_name()
        # Checked first: for a library that cannot be opened, LiteRT's Delegate raises
        # OSError from a half-built object whose __del__ then prints a spurious traceback.
        if not _library_loads(library):
            raise BackendUnavailable(LIBRARY_NOT_FOUND)
        opts = {"device": self._options.device} if self._options.device else None
        try:
            delegate = mod.load_delegate(library, opts)
        except OSError:
            raise BackendUnavailable(LIBRARY_NOT_FOUND) from None
        except ValueError:
            # libedgetpu returns no delegate when it finds no (free) Edge TPU.
            raise BackendUnavailable(NO_DEVICE) from None
        self._delegate_names = [DEFAULT_LIBRARY if library == DEFAULT_LIBRARY
                                else "%s (override %s)" % (DEFAULT_LIBRARY, library)]
        return [delegate]

    def _runtime_error_reason(self, exc: BaseException) -> str:
        return "the Edge TPU delegate could not prepare the model: %s" % _one_line(exc)

    def _count_edgetpu_ops(self) -> int:
        try:
            ops = self._live()._get_ops_details()  # private, but in both LiteRT wheels
        except Exception:
            return -1
        return sum(1 for op in ops if str(op.get("op_name", "")) == EDGETPU_CUSTOM_OP)

    @property
    def details(self) -> Dict[str, object]:
        info = super().details
        info["device"] = self._options.device
        info["edgetpu_custom_ops"] = self._edgetpu_ops
        return info


__all__ = ["EdgeTPUBackend", "DEFAULT_LIBRARY", "LIBRARY_ENV", "LIBRARY_NOT_FOUND", "NO_DEVICE",
           "library_name"]
