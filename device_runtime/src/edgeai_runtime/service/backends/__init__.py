"""Runtime backends, by runtime name. Each module is imported only when its runtime is used."""
from __future__ import annotations

import importlib
from typing import Dict, Optional, Tuple, Type

from edgeai_runtime.service.backends.base import Backend, BackendOptions, BackendUnavailable, ModelLoadError, TensorSpec

__all__ = ["Backend", "BackendOptions", "BackendUnavailable", "ModelLoadError", "TensorSpec",
           "backend_class", "create_backend", "probe_all", "RUNTIMES"]

# runtime name -> (module, class)
RUNTIMES: Dict[str, Tuple[str, str]] = {
    "onnxruntime": ("onnx", "OnnxBackend"),
    "tflite": ("litert", "LiteRTBackend"),
    "edgetpu": ("edgetpu", "EdgeTPUBackend"),
    "tensorrt": ("tensorrt", "TensorRTBackend"),
}


def backend_class(runtime: str) -> Type[Backend]:
    try:
        module, cls = RUNTIMES[runtime]
    except KeyError:
        raise BackendUnavailable("unknown runtime %r (known: %s)" % (runtime, ", ".join(RUNTIMES))) from None
    return getattr(importlib.import_module("%s.%s" % (__name__, module)), cls)


def create_backend(runtime: str, model: bytes, options: BackendOptions) -> Backend:
    """Load ``model`` on ``runtime``; raises BackendUnavailable or ModelLoadError with a one-line reason."""
    cls = backend_class(runtime)
    reason = cls.probe()
    if reason:
        raise BackendUnavailable(reason)
    return cls(model, options)


def probe_all() -> Dict[str, Optional[str]]:
    """{runtime: None when usable here, else the one-line reason}."""
    return {runtime: backend_class(runtime).probe() for runtime in RUNTIMES}
