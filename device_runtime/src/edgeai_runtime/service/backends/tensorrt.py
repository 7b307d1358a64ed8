"""TensorRT backend (runtime name ``tensorrt``): serialized engines on NVIDIA GPUs / Jetson.

Two hard facts shape this module:

* TensorRT is not pip-installable everywhere (on Jetson it comes from JetPack), and
* ``import tensorrt`` can CRASH THE PROCESS (segfault) on a machine without a usable
  GPU driver.

So ``tensorrt`` is never imported at module import time, and :meth:`TensorRTBackend.probe`
imports it in a *subprocess* (``sys.executable -c ...``) that also creates a TensorRT
runtime (which initialises CUDA) and, when cuda-python is importable, counts CUDA
devices. Only when that subprocess succeeds does the loading process import tensorrt
itself. The probe result is cached per process.

The engine path (deserialize, name-based I/O introspection, execution with device
buffers through cuda-python's runtime API) is written against the TensorRT 8.5+/10
Python API (``num_io_tensors``, ``get_tensor_name``, ``get_tensor_mode``,
``get_tensor_shape``, ``get_tensor_dtype``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). NOTE: it has not been run in this project's CI, which has no
GPU and no TensorRT; only the probe and the refusal paths are tested there.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from edgeai_runtime.format.tensors import V2_TO_NUMPY
from edgeai_runtime.service.backends.base import Backend, BackendOptions, BackendUnavailable, ModelLoadError, TensorSpec

NOT_INSTALLED = "tensorrt is not installed (on Jetson it comes from JetPack: apt install python3-libnvinfer)"
CRASHED = "tensorrt crashed on import (signal %d): no usable GPU driver"
TIMED_OUT = "tensorrt probe timed out after %g s"
CUDA_PYTHON_MISSING = "cuda-python is not installed"

PROBE_TIMEOUT_S = 20.0

#: Exit code the probe script uses for "module tensorrt not found".
_RC_NOT_INSTALLED = 17

# Runs in a child interpreter. Prints the TensorRT version on success; otherwise one
# line on stderr and a non-zero exit. A segfault in import kills only the child.
_PROBE_SCRIPT = r"""
import sys
# 'python -c' puts the working directory first on sys.path; a tensorrt.py or tensorrt/
# there (this very module, when run from its folder) must not shadow the real package.
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
try:
    import tensorrt as trt
except ModuleNotFoundError as e:
    if (e.name or "").split(".")[0] == "tensorrt":
        sys.exit(%(rc_not_installed)d)
    sys.stderr.write("tensorrt failed to import: %%s\n" %% (str(e).splitlines() or [""])[0])
    sys.exit(1)
except Exception as e:
    sys.stderr.write("tensorrt failed to import: %%s\n" %% (str(e).splitlines() or [type(e).__name__])[0])
    sys.exit(1)

version = getattr(trt, "__version__", "unknown")

cudart = None
try:
    from cuda.bindings import runtime as cudart
except Exception:
    try:
        from cuda import cudart
    except Exception:
        cudart = None
if cudart is not None:
    res = cudart.cudaGetDeviceCount()
    err, count = res[0], res[1]
    if err != cudart.cudaError_t.cudaSuccess:
        sys.stderr.write("no usable CUDA device: %%s\n" %% (getattr(err, "name", None) or err))
        sys.exit(3)
    if count < 1:
        sys.stderr.write("no CUDA device visible\n")
        sys.exit(3)

errors = []
class _Logger(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)
    def log(self, severity, msg):
        if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
            errors.append(str(msg))

try:
    runtime = trt.Runtime(_Logger())
except Exception as e:
    runtime = None
    errors.append(str(e))
if runtime is None:
    first = (" ".join(errors).splitlines() or [""])[0].strip()
    sys.stderr.write("tensorrt cannot create a runtime (no usable CUDA device?)%%s\n"
                     %% ((": " + first) if first else ""))
    sys.exit(4)
print(version)
""" % {"rc_not_installed": _RC_NOT_INSTALLED}

_probe_lock = threading.Lock()
_probe_cache: Dict[str, Optional[str]] = {}   # {'reason': ...} once probed
_probe_version: Dict[str, str] = {}


def run_probe(pythonpath: Optional[Sequence[str]] = None, timeout: float = PROBE_TIMEOUT_S,
              python: Optional[str] = None) -> Optional[str]:
    """Probe TensorRT in a child interpreter; None when usable, else a one-line reason. Not cached.

    ``pythonpath`` entries are prepended to the child's PYTHONPATH (used by tests to put
    a stand-in ``tensorrt`` package in front). ``python`` defaults to ``sys.executable``.
    """
    env = dict(os.environ)
    if pythonpath:
        parts = [str(p) for p in pythonpath]
        if env.get("PYTHONPATH"):
            parts.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(parts)
    try:
        proc = subprocess.run(
            [python or sys.executable, "-c", _PROBE_SCRIPT],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            timeout=timeout, check=False,
        )
    except subprocess.TimeoutExpired:
        return TIMED_OUT % timeout
    except OSError as exc:
        return "tensorrt probe could not start %s: %s" % (python or sys.executable, exc)

    rc = proc.returncode
    if rc == 0:
        lines = proc.stdout.decode("utf-8", "replace").strip().splitlines()
        _probe_version["version"] = lines[-1].strip() if lines else "unknown"
        return None
    if rc < 0:
        return CRASHED % (-rc)
    if rc == _RC_NOT_INSTALLED:
        return NOT_INSTALLED
    err_lines = [ln.strip() for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if err_lines:
        return err_lines[-1][:300]
    return "tensorrt probe failed (exit code %d)" % rc


def _reset_probe_cache() -> None:
    """Forget the cached probe result (tests)."""
    with _probe_lock:
        _probe_cache.clear()
        _probe_version.clear()


# ---------------------------------------------------------------------------------------
# Helpers used only once tensorrt is known to import safely.

#: TensorRT DataType member name -> KServe v2 datatype. BF16/FP8/INT4/FP4 have no numpy type.
TRT_TO_V2: Dict[str, str] = {
    "FLOAT": "FP32",
    "HALF": "FP16",
    "INT8": "INT8",
    "INT32": "INT32",
    "INT64": "INT64",
    "BOOL": "BOOL",
    "UINT8": "UINT8",
}


def trt_dtype_name(dtype) -> str:
    """'FLOAT' for ``trt.DataType.FLOAT`` (pybind11 enums expose ``.name``; str() is 'DataType.FLOAT')."""
    name = getattr(dtype, "name", None)
    if isinstance(name, str) and name:
        return name
    return str(dtype).rsplit(".", 1)[-1]


def trt_type_to_v2(dtype) -> str:
    name = trt_dtype_name(dtype)
    try:
        return TRT_TO_V2[name]
    except KeyError:
        raise ValueError("no KServe v2 datatype for TensorRT type %s" % name) from None


def _device_index(device: Optional[str]) -> int:
    if not device:
        return 0
    tail = device.strip().rsplit(":", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6 layout
        return cudart
    except ImportError:
        pass
    try:
        from cuda import cudart  # older layout (deprecated alias in newer releases)
        return cudart
    except ImportError:
        raise BackendUnavailable(CUDA_PYTHON_MISSING) from None


def _cuda_check(cudart, result, what: str):
    """cuda-python calls return (err, *values); raise on error, return the value(s)."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if err != cudart.cudaError_t.cudaSuccess:
        name = getattr(err, "name", None) or str(err)
        raise RuntimeError("%s failed: %s" % (what, name))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


_trt_logger = None
_trt_logger_lock = threading.Lock()
_load_lock = threading.Lock()


def _get_logger(trt: ModuleType) -> Any:
    """One process-wide logger (older TensorRT treats the logger as a singleton) that keeps errors."""
    global _trt_logger
    with _trt_logger_lock:
        if _trt_logger is None:
            logger_base: Any = trt.ILogger  # a class of the tensorrt module, imported only here

            class _CapturingLogger(logger_base):
                def __init__(self):
                    trt.ILogger.__init__(self)
                    self.errors: List[str] = []

                def log(self, severity, msg):
                    if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                        self.errors.append(str(msg))
                        del self.errors[:-20]

            _trt_logger = _CapturingLogger()
        return _trt_logger


class TensorRTBackend(Backend):
    """One deserialized TensorRT engine with one execution context.

    Written from the TensorRT 8.5+/10 and cuda-python documentation; not exercised in
    CI (no GPU there). Engines are built for one precision and one GPU/TensorRT version:
    the manifest's precision is accepted as given and only reported.
    """

    runtime = "tensorrt"

    @classmethod
    def probe(cls) -> Optional[str]:
        with _probe_lock:
            if "reason" not in _probe_cache:
                _probe_cache["reason"] = run_probe()
            return _probe_cache["reason"]

    def __init__(self, model: bytes, options: BackendOptions) -> None:
        reason = type(self).probe()
        if reason is not None:
            raise BackendUnavailable(reason)
        # Safe now: a child interpreter with the same executable and environment imported it.
        import tensorrt as trt
        cudart = _import_cudart()

        if not isinstance(model, bytes):
            model = bytes(model)
        if not model:
            raise ModelLoadError("empty engine")

        self._trt = trt
        self._cudart = cudart
        self._options = options
        self._lock = threading.Lock()
        self._buffers: Dict[str, List[int]] = {}   # name -> [device pointer, capacity in bytes]
        self._stream = None
        self._context = None
        self._engine = None
        self._runtime = None
        self._device = _device_index(options.device)
        try:
            self._load(trt, cudart, model, options)
        except BaseException:
            self.close()
            raise

    def _load(self, trt, cudart, model: bytes, options: BackendOptions) -> None:
        _cuda_check(cudart, cudart.cudaSetDevice(self._device), "cudaSetDevice(%d)" % self._device)

        logger = _get_logger(trt)
        with _load_lock:
            del logger.errors[:]
            try:
                trt.init_libnvinfer_plugins(logger, "")  # engines that use the stock plugins
            except Exception:
                pass
            runtime = trt.Runtime(logger)
            if runtime is None:
                raise BackendUnavailable("tensorrt cannot create a runtime: %s"
                                         % (logger.errors[0] if logger.errors else "unknown error"))
            try:
                engine = runtime.deserialize_cuda_engine(model)
            except Exception as exc:  # some versions raise instead of returning None
                engine = None
                logger.errors.append(str(exc))
            if engine is None:
                first = logger.errors[0] if logger.errors else "deserialize_cuda_engine returned None"
                raise ModelLoadError("tensorrt cannot deserialize the engine: %s"
                                     % (first.strip().splitlines() or [""])[0][:300])
        self._runtime = runtime
        self._engine = engine

        inputs: List[TensorSpec] = []
        outputs: List[TensorSpec] = []
        self._np_dtypes: Dict[str, np.dtype] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            mode = engine.get_tensor_mode(name)
            try:
                datatype = trt_type_to_v2(engine.get_tensor_dtype(name))
            except ValueError as exc:
                raise ModelLoadError("tensor %r: %s" % (name, exc)) from None
            shape = [int(d) if int(d) >= 0 else -1 for d in engine.get_tensor_shape(name)]
            spec = TensorSpec(name=name, datatype=datatype, shape=shape)
            self._np_dtypes[name] = V2_TO_NUMPY[datatype]
            if mode == trt.TensorIOMode.INPUT:
                inputs.append(spec)
            elif mode == trt.TensorIOMode.OUTPUT:
                outputs.append(spec)
        if not inputs or not outputs:
            raise ModelLoadError("engine has %d inputs and %d outputs" % (len(inputs), len(outputs)))
        self._inputs = inputs
        self._outputs = outputs
        self._dynamic_inputs = {s.name for s in inputs if -1 in s.shape}

        context = engine.create_execution_context()
        if context is None:
            raise BackendUnavailable("tensorrt cannot create an execution context: %s"
                                     % (logger.errors[-1] if logger.errors else "out of GPU memory?"))
        self._context = context
        self._stream = _cuda_check(cudart, cudart.cudaStreamCreate(), "cudaStreamCreate")

        profiles = {}
        if self._dynamic_inputs:
            for name in sorted(self._dynamic_inputs):
                try:
                    lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
                    profiles[name] = {"min": list(lo), "opt": list(opt), "max": list(hi)}
                except Exception:
                    pass
        self._details: Dict[str, object] = {
            "runtime": self.runtime,
            "tensorrt_version": getattr(trt, "__version__", _probe_version.get("version", "unknown")),
            "device": self._device,
            "precision": options.precision,   # as declared by the manifest: engines carry their own
            "profiles": profiles,
        }

    @property
    def details(self) -> Dict[str, object]:
        return dict(self._details)

    def _device_buffer(self, name: str, nbytes: int) -> int:
        cudart = self._cudart
        nbytes = max(int(nbytes), 1)
        buf = self._buffers.get(name)
        if buf is not None and buf[1] >= nbytes:
            return buf[0]
        if buf is not None:
            _cuda_check(cudart, cudart.cudaFree(buf[0]), "cudaFree")
            del self._buffers[name]
        ptr = _cuda_check(cudart, cudart.cudaMalloc(nbytes), "cudaMalloc(%d)" % nbytes)
        self._buffers[name] = [int(ptr), nbytes]
        return int(ptr)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if self._context is None:
            raise RuntimeError("backend is closed")
        cudart = self._cudart
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        # One execution context: runs are serialized. (Several contexts would allow overlap.)
        with self._lock:
            _cuda_check(cudart, cudart.cudaSetDevice(self._device), "cudaSetDevice")
            ctx = self._context
            stream = self._stream
            host_inputs = {}
            for spec in self._inputs:
                arr = np.ascontiguousarray(inputs[spec.name], dtype=self._np_dtypes[spec.name])
                host_inputs[spec.name] = arr
                if spec.name in self._dynamic_inputs:
                    ok = ctx.set_input_shape(spec.name, tuple(arr.shape))
                    if ok is False:
                        raise ValueError("shape %s of input %r is outside the engine's optimization profile"
                                         % (list(arr.shape), spec.name))
            host_outputs = {}
            for spec in self._outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(spec.name))
                if any(d < 0 for d in shape):
                    raise RuntimeError("output %r has a data-dependent shape, which this backend does not support"
                                       % spec.name)
                host_outputs[spec.name] = np.empty(shape, dtype=self._np_dtypes[spec.name])

            for name, arr in host_inputs.items():
                ptr = self._device_buffer(name, arr.nbytes)
                if arr.nbytes:
                    _cuda_check(cudart, cudart.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, h2d, stream),
                                "cudaMemcpyAsync(host->device)")
                if not ctx.set_tensor_address(name, ptr):
                    raise RuntimeError("set_tensor_address(%r) failed" % name)
            for name, arr in host_outputs.items():
                ptr = self._device_buffer(name, arr.nbytes)
                if not ctx.set_tensor_address(name, ptr):
                    raise RuntimeError("set_tensor_address(%r) failed" % name)

            if not ctx.execute_async_v3(stream_handle=int(stream)):
                raise RuntimeError("tensorrt execute_async_v3 failed")

            for name, arr in host_outputs.items():
                if arr.nbytes:
                    _cuda_check(cudart, cudart.cudaMemcpyAsync(arr.ctypes.data, self._buffers[name][0],
                                                               arr.nbytes, d2h, stream),
                                "cudaMemcpyAsync(device->host)")
            _cuda_check(cudart, cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
            return host_outputs

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:
            return
        with lock:
            cudart = self._cudart
            for ptr, _cap in self._buffers.values():
                try:
                    cudart.cudaFree(ptr)
                except Exception:
                    pass
            self._buffers.clear()
            if self._stream is not None:
                try:
                    cudart.cudaStreamDestroy(self._stream)
                except Exception:
                    pass
                self._stream = None
            # Release in dependency order: context, engine, runtime.
            self._context = None
            self._engine = None
            self._runtime = None
