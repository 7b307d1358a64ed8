"""KServe v2 tensor datatypes and their numpy equivalents."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

V2_TO_NUMPY: Dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_V2: Dict[np.dtype, str] = {v: k for k, v in V2_TO_NUMPY.items()}


def v2_datatype(dtype: Any) -> str:
    """The v2 datatype name of a numpy dtype; ValueError for dtypes v2 has no name for."""
    try:
        return NUMPY_TO_V2[np.dtype(dtype)]
    except KeyError:
        raise ValueError("no KServe v2 datatype for numpy dtype %s" % np.dtype(dtype)) from None
