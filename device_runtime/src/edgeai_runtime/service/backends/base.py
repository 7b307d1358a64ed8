"""The one small interface every runtime backend implements.

A backend holds one loaded model. It is created from the model's bytes (never a
plaintext path: models may arrive decrypted into memory only) and the device
profile, and runs a batch of named numpy arrays to named numpy arrays.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from edgeai_runtime.format.errors import EdgeAIError


class BackendUnavailable(EdgeAIError, RuntimeError):
    """The backend cannot load here; ``str()`` is one line saying why.

    Examples: 'onnxruntime is not installed', 'libedgetpu.so.1 not found',
    'no Edge TPU device: Failed to load delegate', 'precision fp32 is not
    supported by the edgetpu backend (int8 only)'.
    """

    default_reason = "backend_unavailable"


class ModelLoadError(EdgeAIError, RuntimeError):
    """The model itself is corrupt or incompatible; ``str()`` is one line saying why."""

    default_reason = "load"


@dataclass(frozen=True)
class TensorSpec:
    """A named input or output: KServe v2 datatype (FP32, INT8, UINT8, INT64, ...) and shape (-1 = any)."""
    name: str
    datatype: str
    shape: List[int]


@dataclass
class BackendOptions:
    """What the device profile and manifest tell a backend."""
    precision: str = "fp32"              # fp32 | fp16 | int8
    max_batch_size: int = 1
    threads: Optional[int] = None
    device: Optional[str] = None         # e.g. Edge TPU 'usb' / 'pci:0'
    extra: Dict[str, str] = field(default_factory=dict)


class Backend(abc.ABC):
    """One loaded model on one runtime."""

    #: runtime name as used in profiles and manifests: onnxruntime | tflite | edgetpu | tensorrt
    runtime: str = ""

    @classmethod
    @abc.abstractmethod
    def probe(cls) -> Optional[str]:
        """Return None when this backend can load models here, else a one-line reason."""

    @abc.abstractmethod
    def __init__(self, model: bytes, options: BackendOptions) -> None:
        """Load the model from bytes. Raise BackendUnavailable or ModelLoadError."""

    #: Filled in by each backend's constructor from what the loaded model declares.
    _inputs: Sequence[TensorSpec] = ()
    _outputs: Sequence[TensorSpec] = ()

    @property
    def inputs(self) -> Sequence[TensorSpec]:
        """The model's inputs, in order."""
        return list(self._inputs)

    @property
    def outputs(self) -> Sequence[TensorSpec]:
        """The model's outputs, in order."""
        return list(self._outputs)

    @property
    def details(self) -> Dict[str, object]:
        """What was chosen at load time (execution providers, delegate, threads), for status and metadata."""
        return {}

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one batch. Inputs are already validated against ``inputs`` (names, dtype, shape)."""

    def close(self) -> None:
        """Release what the model holds."""
