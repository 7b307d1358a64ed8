"""LiteRT / TensorFlow Lite backend (runtime name ``tflite``).

The interpreter comes from ``ai_edge_litert.interpreter`` (the ``ai-edge-litert``
wheel), else from ``tflite_runtime.interpreter`` (the older ``tflite-runtime``
wheel); both are imported lazily so that this module imports everywhere. The model
is loaded with ``Interpreter(model_content=bytes)``, never from a path.

Batching: TFLite models usually have a fixed batch of 1 (as converted for a Pi).
A batch dimension of 1 (or -1 in ``shape_signature``) is reported as -1 in
``inputs``/``outputs``; ``infer`` with another batch size resizes the input
tensors (``resize_tensor_input`` + ``allocate_tensors``) and, if the model cannot
be resized (or the subclass says not to, as the Edge TPU one does), runs the batch
one row at a time and stacks the results.

Interpreters are not thread-safe: every call that touches the interpreter holds
one lock per backend.
"""
from __future__ import annotations

import threading
from types import ModuleType
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeai_runtime.format.tensors import v2_datatype
from edgeai_runtime.service.backends.base import Backend, BackendOptions, BackendUnavailable, ModelLoadError, TensorSpec

NOT_INSTALLED = "neither ai-edge-litert nor tflite-runtime is installed"

_MAX_REASON = 300

#: A tensor as the interpreter describes it (get_input_details / get_output_details): name, index,
#: shape, shape_signature, dtype, quantization. LiteRT ships no type information for these.
TensorDetail = Mapping[str, Any]


def _one_line(message: object, limit: int = _MAX_REASON) -> str:
    """``message`` on one line: its non-empty lines joined with '; ', cut at ``limit`` characters."""
    text = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def import_interpreter_module() -> Tuple[Optional[ModuleType], Optional[str]]:
    """(module with ``Interpreter`` and ``load_delegate``, distribution name), or (None, None)."""
    try:
        from ai_edge_litert import interpreter as mod
        return mod, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod
        return mod, "tflite-runtime"
    except ImportError:
        return None, None


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return "%s %s" % (dist, version(dist))
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return dist


def _batch_flexible(detail: TensorDetail) -> bool:
    """A tensor's first dimension is a batch we may resize: rank >= 2 and 1 (or -1 in its signature)."""
    shape = [int(d) for d in detail["shape"]]
    sig = [int(d) for d in detail.get("shape_signature", shape)] or shape
    return len(shape) >= 2 and (shape[0] == 1 or sig[0] == -1)


class LiteRTBackend(Backend):
    """One .tflite model in one LiteRT interpreter."""

    runtime = "tflite"
    #: precisions this backend accepts in ``BackendOptions.precision``
    precisions: Tuple[str, ...] = ("fp32", "fp16", "int8")
    #: try resize_tensor_input for a batch other than the model's; else loop row by row
    resize_batch: bool = True

    # ------------------------------------------------------------------ probing

    @classmethod
    def probe(cls) -> Optional[str]:
        return None if import_interpreter_module()[0] is not None else NOT_INSTALLED

    @classmethod
    def _precision_reason(cls, precision: str) -> Optional[str]:
        if precision in cls.precisions:
            return None
        return "precision %s is not supported by the %s backend (%s)" % (
            precision, cls.runtime, ", ".join(cls.precisions))

    # ------------------------------------------------------------------ loading

    def __init__(self, model: bytes, options: BackendOptions) -> None:
        options = options if options is not None else BackendOptions()
        self._options = options
        self._lock = threading.Lock()
        self._interpreter: Optional[Any] = None    # an ai_edge_litert / tflite_runtime Interpreter
        self._delegates: List[object] = []
        self._delegate_names: List[str] = []

        reason = self._precision_reason(options.precision)
        if reason:
            raise BackendUnavailable(reason)
        mod, dist = import_interpreter_module()
        if mod is None or dist is None:
            raise BackendUnavailable(NOT_INSTALLED)
        self._library = _dist_version(dist)

        if not isinstance(model, bytes):
            model = bytes(model)
        if not model:
            raise ModelLoadError("empty model")
        # Keep a reference: the interpreter reads the flatbuffer in place.
        self._model = model

        self._delegates = list(self._make_delegates(mod))
        threads = int(options.threads) if options.threads and int(options.threads) > 0 else None
        self._threads = threads
        try:
            interp = mod.Interpreter(model_content=model,
                                     experimental_delegates=self._delegates or None,
                                     num_threads=threads)
            interp.allocate_tensors()
        except ValueError as exc:
            # e.g. 'The model is not a valid Flatbuffer buffer', unresolved custom ops
            self._delegates = []
            raise ModelLoadError("not a loadable TFLite model: %s" % _one_line(exc)) from None
        except RuntimeError as exc:
            self._delegates = []
            raise ModelLoadError(self._runtime_error_reason(exc)) from None
        self._interpreter = interp

        in_details = interp.get_input_details()
        out_details = interp.get_output_details()
        self._in_index = [int(d["index"]) for d in in_details]
        self._out_index = [int(d["index"]) for d in out_details]
        self._orig_shapes = [tuple(int(x) for x in d["shape"]) for d in in_details]
        self._cur_shapes = list(self._orig_shapes)
        flexible = [_batch_flexible(d) for d in in_details]
        # Batch handling applies when every input carries a resizable batch of 1.
        self._batched = bool(in_details) and all(flexible) and all(s[0] == 1 for s in self._orig_shapes)
        self._can_resize = self.resize_batch
        try:
            self._inputs = [self._spec(d, self._batched) for d in in_details]
            self._outputs = [self._spec(d, self._batched) for d in out_details]
        except ValueError as exc:
            self.close()
            raise ModelLoadError(_one_line(exc)) from None
        self._in_dtypes = [np.dtype(d["dtype"]) for d in in_details]
        self._quant = {}
        for d in list(in_details) + list(out_details):
            scale, zero_point = d.get("quantization", (0.0, 0))
            if scale:
                self._quant[d["name"]] = {"scale": float(scale), "zero_point": int(zero_point)}

    def _make_delegates(self, mod: ModuleType) -> Sequence[object]:
        """Delegates to hand the interpreter; none for plain LiteRT (XNNPACK is LiteRT's own default)."""
        return []

    def _runtime_error_reason(self, exc: BaseException) -> str:
        return "TFLite could not prepare the model: %s" % _one_line(exc)

    @staticmethod
    def _spec(detail: TensorDetail, batched: bool) -> TensorSpec:
        try:
            datatype = v2_datatype(detail["dtype"])
        except ValueError:
            raise ValueError("tensor %r has type %s, which has no KServe v2 datatype"
                             % (detail["name"], np.dtype(detail["dtype"]))) from None
        shape = [int(x) for x in detail["shape"]]
        sig = [int(x) for x in detail.get("shape_signature", shape)]
        dims = sig if len(sig) == len(shape) else shape
        dims = [-1 if d < 0 else d for d in dims]
        if batched and _batch_flexible(detail):
            dims[0] = -1
        return TensorSpec(name=str(detail["name"]), datatype=datatype, shape=dims)

    # ------------------------------------------------------------------ interface

    @property
    def details(self) -> Dict[str, object]:
        info: Dict[str, object] = {
            "runtime": self.runtime,
            "library": self._library,
            "threads": self._threads,
            "precision": self._options.precision,
            "delegates": list(self._delegate_names),
            "batching": ("resize" if self._can_resize else "loop") if self._batched else "fixed",
        }
        if self._quant:
            info["quantization"] = {k: dict(v) for k, v in self._quant.items()}
        return info

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        arrays = [np.ascontiguousarray(inputs[spec.name], dtype=dt)
                  for spec, dt in zip(self._inputs, self._in_dtypes)]
        shapes = [tuple(a.shape) for a in arrays]
        with self._lock:
            if self._interpreter is None:
                raise RuntimeError("the %s backend is closed" % self.runtime)
            if shapes == self._cur_shapes:
                return self._run(arrays)
            only_batch = self._batched and all(
                len(s) == len(o) and s[1:] == o[1:] for s, o in zip(shapes, self._orig_shapes))
            if only_batch and len({s[0] for s in shapes}) != 1:
                raise ValueError("all inputs must have the same batch size, got %s"
                                 % [s[0] for s in shapes])
            if only_batch and shapes[0][0] == 0:
                return self._empty_outputs()
            if self._can_resize or not only_batch:
                try:
                    self._resize(shapes)
                    return self._run(arrays)
                except (RuntimeError, ValueError) as exc:
                    if not only_batch:
                        self._restore()
                        raise ValueError("input shapes %s do not fit this model: %s"
                                         % (shapes, _one_line(exc))) from None
                    # The graph has fixed shapes somewhere: fall back to one row at a time.
                    self._can_resize = False
                    self._restore()
            elif self._cur_shapes != self._orig_shapes:
                self._restore()
            return self._run_rows(arrays)

    # ------------------------------------------------------------------ internals (lock held)

    def _live(self) -> Any:
        """The interpreter; RuntimeError once the backend is closed."""
        if self._interpreter is None:
            raise RuntimeError("the %s backend is closed" % self.runtime)
        return self._interpreter

    def _resize(self, shapes: List[Tuple[int, ...]]) -> None:
        interp = self._live()
        for index, shape in zip(self._in_index, shapes):
            interp.resize_tensor_input(index, list(shape), strict=False)
        self._cur_shapes = list(shapes)   # set first, so that a failure below is restored
        interp.allocate_tensors()

    def _restore(self) -> None:
        interp = self._live()
        for index, shape in zip(self._in_index, self._orig_shapes):
            interp.resize_tensor_input(index, list(shape), strict=False)
        interp.allocate_tensors()
        self._cur_shapes = list(self._orig_shapes)

    def _run(self, arrays: List[np.ndarray]) -> Dict[str, np.ndarray]:
        interp = self._live()
        for index, arr in zip(self._in_index, arrays):
            interp.set_tensor(index, arr)
        interp.invoke()
        # get_tensor returns a copy, so nothing keeps the interpreter's buffers alive.
        return {spec.name: interp.get_tensor(index)
                for spec, index in zip(self._outputs, self._out_index)}

    def _run_rows(self, arrays: List[np.ndarray]) -> Dict[str, np.ndarray]:
        rows = [self._run([a[i:i + 1] for a in arrays]) for i in range(arrays[0].shape[0])]
        return {spec.name: np.concatenate([r[spec.name] for r in rows], axis=0)
                for spec in self._outputs}

    def _empty_outputs(self) -> Dict[str, np.ndarray]:
        """Outputs for a batch of 0, without running the interpreter."""
        by_index = {int(d["index"]): d for d in self._live().get_output_details()}
        out = {}
        for spec, index in zip(self._outputs, self._out_index):
            detail = by_index[index]
            out[spec.name] = np.zeros([0] + [int(d) for d in detail["shape"][1:]],
                                      dtype=np.dtype(detail["dtype"]))
        return out

    def close(self) -> None:
        with self._lock:
            # The interpreter must go before the delegates it uses.
            self._interpreter = None
            self._delegates = []
