"""ONNX Runtime backend (runtime name ``onnxruntime``).

The model is loaded from bytes (``InferenceSession(model_bytes, ...)``), never
from a path. Execution providers are chosen from what this onnxruntime build
offers (``onnxruntime.get_available_providers()``): TensorRT, then CUDA, then
CPU; :func:`choose_providers` is the pure function that decides, so it can be
tested against made-up ``available`` lists. The providers the session actually
ended up with (``session.get_providers()``) are reported in ``details``.

``onnxruntime`` is imported lazily so that this module imports everywhere, and always through
:func:`import_onnxruntime`, which turns ONNX Runtime's own telemetry off first.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from edgeai_runtime.service.backends.base import Backend, BackendOptions, BackendUnavailable, ModelLoadError, TensorSpec

TRT_EP = "TensorrtExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

#: The default preference order, best first.
DEFAULT_CHAIN: Tuple[str, ...] = (TRT_EP, CUDA_EP, CPU_EP)

#: Short names accepted for ``prefer`` (case-insensitive), besides full provider names.
PROVIDER_ALIASES: Dict[str, str] = {
    "tensorrt": TRT_EP,
    "trt": TRT_EP,
    "cuda": CUDA_EP,
    "gpu": CUDA_EP,
    "cpu": CPU_EP,
}

#: ORT type strings -> KServe v2 datatypes.
ORT_TO_V2: Dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

ProviderEntry = Union[str, Tuple[str, Dict[str, object]]]

_MAX_REASON = 300


def one_line(message: object, limit: int = _MAX_REASON) -> str:
    """The first non-empty line of ``message``, trimmed (and cut at ``limit`` characters)."""
    for line in str(message).splitlines():
        line = line.strip()
        if line:
            return line if len(line) <= limit else line[: limit - 3] + "..."
    return ""


def ort_type_to_v2(ort_type: str) -> str:
    """The v2 datatype of an ORT type string such as ``'tensor(float)'``; ValueError when there is none."""
    try:
        return ORT_TO_V2[ort_type]
    except KeyError:
        raise ValueError("no KServe v2 datatype for onnxruntime type %s" % ort_type) from None


def ort_shape(shape) -> List[int]:
    """ORT shape (ints, symbolic names, None) -> list of ints with -1 for anything not fixed."""
    if shape is None:
        return []
    return [int(d) if isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 else -1
            for d in shape]


def _resolve_prefer(prefer: Optional[str]) -> Optional[str]:
    if not prefer:
        return None
    key = prefer.strip()
    # 'cuda:1' -> 'cuda'
    alias = key.split(":", 1)[0].lower()
    if alias in PROVIDER_ALIASES:
        return PROVIDER_ALIASES[alias]
    for name in DEFAULT_CHAIN:
        if name.lower() == key.lower():
            return name
    return key


def choose_providers(available: Sequence[str], precision: str = "fp32", prefer: Optional[str] = None,
                     trt_cache_dir: Optional[str] = None,
                     device_id: Optional[int] = None) -> List[ProviderEntry]:
    """Execution providers to ask ORT for, best first. Pure: depends only on its arguments.

    The chain is TensorRT -> CUDA -> CPU, keeping those in ``available``. CPU is always
    last (every ORT build has it). TensorRT gets ``trt_fp16_enable`` for fp16,
    ``trt_int8_enable`` for int8, and an engine cache only when ``trt_cache_dir`` is given.

    ``prefer`` ('tensorrt'/'trt', 'cuda'/'gpu', 'cpu', or a full provider name) says where
    to start in that chain: 'cuda' skips TensorRT, 'cpu' gives CPU only. A preferred
    provider outside the chain (e.g. 'OpenVINOExecutionProvider') is put first when
    available; one that is not available is ignored.
    """
    avail = set(available)
    chain = list(DEFAULT_CHAIN)
    want = _resolve_prefer(prefer)
    head: List[str] = []
    if want in chain:
        chain = chain[chain.index(want):]
    elif want is not None and want in avail:
        head = [want]

    names = head + [p for p in chain if p in avail and p != CPU_EP]
    names.append(CPU_EP)

    out: List[ProviderEntry] = []
    for name in names:
        opts: Dict[str, object] = {}
        if name == TRT_EP:
            if precision == "fp16":
                opts["trt_fp16_enable"] = True
            elif precision == "int8":
                opts["trt_int8_enable"] = True
            if trt_cache_dir:
                opts["trt_engine_cache_enable"] = True
                opts["trt_engine_cache_path"] = str(trt_cache_dir)
        if name in (TRT_EP, CUDA_EP) and device_id is not None:
            opts["device_id"] = int(device_id)
        out.append((name, opts) if opts else name)
    return out


def import_onnxruntime() -> Any:
    """``import onnxruntime``, with ONNX Runtime's 1DS telemetry off unless the environment says otherwise.

    Official onnxruntime builds for Linux start a telemetry uploader when the module is imported:
    a thread that wakes on a retry timer, starts resolver threads for
    mobile.events.data.microsoft.com, and keeps a device id and an event database under
    ~/.cache/Microsoft/DeveloperTools/.onnxruntime. On a device that is periodic work in an idle
    service (costly under emulation), writes to its flash, and traffic to a third party.
    ``ORT_DISABLE_TELEMETRY=1`` before the first import turns it off for the process (see
    onnxruntime's Privacy.md); an operator who wants it sets ``ORT_DISABLE_TELEMETRY=0``.
    ImportError when onnxruntime is not installed.
    """
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime  # pylint: disable=import-outside-toplevel
    return onnxruntime


def _provider_name(entry: ProviderEntry) -> str:
    return entry if isinstance(entry, str) else entry[0]


def _device_id(device: Optional[str]) -> Optional[int]:
    """'cuda:1' / 'gpu:1' / '1' -> 1; anything else -> None."""
    if not device:
        return None
    m = re.fullmatch(r"(?:[a-zA-Z_]+:)?(\d+)", device.strip())
    return int(m.group(1)) if m else None


class OnnxBackend(Backend):
    """One ONNX model in one ``onnxruntime.InferenceSession``."""

    runtime = "onnxruntime"

    @classmethod
    def probe(cls) -> Optional[str]:
        try:
            import_onnxruntime()
        except ImportError:
            return "onnxruntime is not installed"
        return None

    def __init__(self, model: bytes, options: BackendOptions) -> None:
        try:
            ort = import_onnxruntime()
        except ImportError:
            raise BackendUnavailable("onnxruntime is not installed") from None
        if not isinstance(model, bytes):
            model = bytes(model)
        if not model:
            raise ModelLoadError("empty model")

        self._options = options
        extra = options.extra or {}
        available = list(ort.get_available_providers())
        prefer = extra.get("execution_provider") or options.device
        requested = choose_providers(
            available, options.precision, prefer=prefer,
            trt_cache_dir=extra.get("trt_cache_dir") or None,
            device_id=_device_id(options.device),
        )

        so = ort.SessionOptions()
        if options.threads:
            so.intra_op_num_threads = int(options.threads)
        so.log_severity_level = 3  # errors only; warnings go nowhere useful on a device

        fallback_reason = None
        try:
            session = ort.InferenceSession(model, sess_options=so, providers=requested)
        except Exception as exc:  # ORT's exceptions derive from Exception, not RuntimeError
            if [_provider_name(p) for p in requested] == [CPU_EP]:
                raise ModelLoadError(one_line(exc) or type(exc).__name__) from None
            # An accelerator provider may fail to initialise (missing CUDA/TensorRT
            # libraries, no driver): try the CPU alone before blaming the model.
            fallback_reason = one_line(exc)
            try:
                session = ort.InferenceSession(model, sess_options=so, providers=[CPU_EP])
            except Exception as exc2:
                raise ModelLoadError(one_line(exc2) or type(exc2).__name__) from None

        try:
            self._inputs = [self._spec(a, "input") for a in session.get_inputs()]
            self._outputs = [self._spec(a, "output") for a in session.get_outputs()]
        except ModelLoadError:
            del session
            raise
        self._session = session
        self._output_names = [o.name for o in self._outputs]
        self._details: Dict[str, object] = {
            "runtime": self.runtime,
            "onnxruntime_version": getattr(ort, "__version__", "unknown"),
            "available_providers": available,
            "requested_providers": [_provider_name(p) for p in requested],
            "providers": list(session.get_providers()),
            "threads": options.threads,
            "precision": options.precision,
        }
        if fallback_reason is not None:
            self._details["provider_fallback"] = fallback_reason

    @staticmethod
    def _spec(arg, kind: str) -> TensorSpec:
        try:
            datatype = ort_type_to_v2(arg.type)
        except ValueError:
            raise ModelLoadError("%s %r has type %s, which the v2 protocol cannot carry"
                                 % (kind, arg.name, arg.type)) from None
        return TensorSpec(name=arg.name, datatype=datatype, shape=ort_shape(arg.shape))

    @property
    def details(self) -> Dict[str, object]:
        return dict(self._details)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        session = self._session
        if session is None:
            raise RuntimeError("backend is closed")
        feed = {spec.name: inputs[spec.name] for spec in self._inputs}
        # InferenceSession.run is thread-safe: no lock here.
        results = session.run(self._output_names, feed)
        return {name: np.asarray(value) for name, value in zip(self._output_names, results)}

    def close(self) -> None:
        self._session = None
