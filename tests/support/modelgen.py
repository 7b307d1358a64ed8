"""Offline model builders for the device runtime's tests, benchmarks and demo.

Everything here is built from what is installed, with nothing downloaded:

* ``train_digits_mlp`` trains a small scikit-learn MLP on the digits data set that
  ships inside scikit-learn (8x8 images, 10 classes, 64 features scaled to [0, 1]).
* ``digits_onnx`` / ``digits_onnx_int8`` export it to ONNX (skl2onnx) and quantize that
  (onnxruntime.quantization, dynamic int8).
* ``digits_tflite`` writes the *same* network as a TFLite flatbuffer with the
  ``flatbuffers`` library and the schema module that ai-edge-litert ships
  (``ai_edge_litert.schema_py_generated``), without TensorFlow.
* ``build_edgetpu_double`` compiles a TEST DOUBLE of Coral's ``libedgetpu.so.1``.

Model interfaces (identical names in both formats, so one request body fits both):

==========  =======================================  ==========================================
format      inputs                                   outputs
==========  =======================================  ==========================================
ONNX        ``input`` FP32 [N, 64]                   ``label`` INT64 [N] (argmax class),
                                                     ``probabilities`` FP32 [N, 10]
TFLite      ``input`` FP32 [1, 64] (batch 1, as on   ``probabilities`` FP32 [1, 10]
            a Pi; backends resize for batch > 1)
==========  =======================================  ==========================================
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

#: Name of the input tensor of every digits model built here.
INPUT_NAME = "input"
#: Name of the class-probability output of every digits model built here.
PROBABILITIES = "probabilities"
#: Name of the predicted-label output (ONNX models only).
LABEL = "label"
N_FEATURES = 64
N_CLASSES = 10


# --------------------------------------------------------------------------- training

@dataclass
class DigitsModel:
    """A fitted digits MLP and the split it was trained and evaluated on."""
    model: object                 # sklearn.neural_network.MLPClassifier
    X_train: np.ndarray           # float32 [n, 64], values in [0, 1]
    y_train: np.ndarray           # int64 [n]
    X_test: np.ndarray            # float32 [m, 64]
    y_test: np.ndarray            # int64 [m]
    accuracy: float               # scikit-learn's accuracy on X_test
    seed: int

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X).astype(np.float32)


def train_digits_mlp(seed: int = 0) -> DigitsModel:
    """Train a (64,)-relu MLP on scikit-learn's bundled digits (no download). ~0.5 s, accuracy ~0.97."""
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=seed, stratify=y)
    mlp = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", solver="adam",
                        max_iter=200, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(X_train, y_train)
    accuracy = float(mlp.score(X_test, y_test))
    return DigitsModel(mlp, X_train, y_train, X_test, y_test, accuracy, seed)


def _unwrap(mlp):
    """Accept a DigitsModel or a bare fitted MLPClassifier."""
    return mlp.model if isinstance(mlp, DigitsModel) else mlp


def _layers(mlp):
    """The MLP as a list of (weights [in, out] float32, bias [out] float32, activation)."""
    clf = _unwrap(mlp)
    if clf.activation != "relu" or clf.out_activation_ != "softmax":
        raise ValueError("only relu hidden layers with a softmax output are supported")
    layers = []
    last = len(clf.coefs_) - 1
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        layers.append((np.asarray(w, np.float32), np.asarray(b, np.float32),
                       "softmax" if i == last else "relu"))
    return layers


# --------------------------------------------------------------------------- accuracy data

def golden_samples(mlp, n: int = 8) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` test images (float32 [n, 64]) that the float model classifies correctly, and their labels.

    The first test sample of each class comes first, so with n >= 10 every class is covered.
    """
    dm = mlp if isinstance(mlp, DigitsModel) else None
    if dm is None:
        raise TypeError("golden_samples needs the DigitsModel returned by train_digits_mlp")
    pred = dm.model.predict(dm.X_test)
    correct = np.flatnonzero(pred == dm.y_test)
    firsts = [correct[dm.y_test[correct] == c][0] for c in range(N_CLASSES)
              if np.any(dm.y_test[correct] == c)]
    rest = [i for i in correct if i not in set(firsts)]
    idx = np.array((firsts + rest)[:n], dtype=np.int64)
    return dm.X_test[idx].copy(), dm.y_test[idx].copy()


def validation_set(mlp) -> Tuple[np.ndarray, np.ndarray]:
    """The held-out test split: float32 [m, 64] features and int64 [m] labels."""
    if not isinstance(mlp, DigitsModel):
        raise TypeError("validation_set needs the DigitsModel returned by train_digits_mlp")
    return mlp.X_test.copy(), mlp.y_test.copy()


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


# --------------------------------------------------------------------------- ONNX

def digits_onnx(mlp) -> bytes:
    """The MLP as ONNX (skl2onnx, zipmap off).

    Input ``input`` float32 [None, 64]; outputs ``label`` int64 [None] and
    ``probabilities`` float32 [None, 10] (plain tensors, not a ZipMap).
    """
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    onx = to_onnx(_unwrap(mlp), initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
                  options={"zipmap": False}, target_opset=17)
    return onx.SerializeToString()


def digits_onnx_int8(onnx_bytes: bytes) -> bytes:
    """Dynamic int8 quantization of an ONNX model (int8 weights, float activations)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="edgeai-modelgen-") as tmp:
        src = os.path.join(tmp, "model.onnx")
        dst = os.path.join(tmp, "model.int8.onnx")
        with open(src, "wb") as f:
            f.write(onnx_bytes)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        with open(dst, "rb") as f:
            return f.read()


# --------------------------------------------------------------------------- TFLite

TFLITE_ALIGNMENT = 16


def _schema():
    """The TFLite flatbuffer schema bindings that ai-edge-litert ships."""
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _aligned_buffer_type(schema):
    class AlignedBufferT(schema.BufferT):
        """A BufferT whose data vector starts on a 16-byte boundary (TFLite's force_align: 16,
        which the generated Python Pack ignores)."""

        def Pack(self, builder):
            data = None
            if self.data is not None:
                raw = bytes(self.data)
                builder.StartVector(1, len(raw), TFLITE_ALIGNMENT)
                builder.head -= len(raw)
                builder.Bytes[builder.head:builder.head + len(raw)] = raw
                data = builder.EndVector()
            schema.BufferStart(builder)
            if data is not None:
                schema.BufferAddData(builder, data)
            return schema.BufferEnd(builder)

    return AlignedBufferT


def _quantize_symmetric(w: np.ndarray) -> Tuple[np.ndarray, float]:
    """Per-tensor symmetric int8: w ~= scale * q, q in [-127, 127], zero point 0."""
    scale = float(np.max(np.abs(w))) / 127.0 or 1.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    return q, scale


def digits_tflite(mlp, quantize: Optional[str] = None) -> bytes:
    """The same MLP as a .tflite flatbuffer, written without TensorFlow.

    FULLY_CONNECTED (+ fused RELU) per hidden layer, FULLY_CONNECTED then SOFTMAX at the
    end. Input ``input`` float32 [1, 64], output ``probabilities`` float32 [1, 10].

    ``quantize='int8'``: dynamic-range ("hybrid") quantization: weights int8 with one
    per-tensor scale (zero point 0), biases and activations float32, which the builtin
    FULLY_CONNECTED kernel runs as a hybrid op. Not an Edge TPU (full-integer) model.
    """
    if quantize not in (None, "int8"):
        raise ValueError("quantize must be None or 'int8'")
    schema = _schema()
    import flatbuffers

    AlignedBufferT = _aligned_buffer_type(schema)
    buffers = [AlignedBufferT()]          # buffer 0: the conventional empty sentinel
    tensors = []

    def add_buffer(arr: np.ndarray) -> int:
        b = AlignedBufferT()
        b.data = np.ascontiguousarray(arr).tobytes()
        buffers.append(b)
        return len(buffers) - 1

    def add_tensor(name, shape, ttype, buffer=0, quant=None) -> int:
        t = schema.TensorT()
        t.name = name
        t.shape = list(shape)
        t.type = ttype
        t.buffer = buffer
        t.quantization = quant
        tensors.append(t)
        return len(tensors) - 1

    fc_code = schema.OperatorCodeT()
    fc_code.builtinCode = schema.BuiltinOperator.FULLY_CONNECTED
    fc_code.deprecatedBuiltinCode = schema.BuiltinOperator.FULLY_CONNECTED
    fc_code.version = 3 if quantize == "int8" else 1     # 3: hybrid (float input, int8 weights)
    sm_code = schema.OperatorCodeT()
    sm_code.builtinCode = schema.BuiltinOperator.SOFTMAX
    sm_code.deprecatedBuiltinCode = schema.BuiltinOperator.SOFTMAX
    sm_code.version = 1
    FC, SOFTMAX = 0, 1

    operators = []
    x = add_tensor(INPUT_NAME, [1, N_FEATURES], schema.TensorType.FLOAT32)
    graph_input = x
    layers = _layers(mlp)
    for i, (w, b, act) in enumerate(layers):
        kernel = np.ascontiguousarray(w.T)                  # TFLite FC weights are [out, in]
        units = kernel.shape[0]
        if quantize == "int8":
            q, scale = _quantize_symmetric(kernel)
            qp = schema.QuantizationParametersT()
            qp.scale = [scale]
            qp.zeroPoint = [0]
            qp.quantizedDimension = 0
            w_t = add_tensor("dense_%d/kernel" % i, kernel.shape, schema.TensorType.INT8,
                             add_buffer(q), qp)
        else:
            w_t = add_tensor("dense_%d/kernel" % i, kernel.shape, schema.TensorType.FLOAT32,
                             add_buffer(kernel))
        b_t = add_tensor("dense_%d/bias" % i, [units], schema.TensorType.FLOAT32, add_buffer(b))
        last = act == "softmax"
        y = add_tensor("dense_%d/logits" % i if last else "dense_%d/relu" % i, [1, units],
                       schema.TensorType.FLOAT32)
        opts = schema.FullyConnectedOptionsT()
        opts.fusedActivationFunction = (schema.ActivationFunctionType.NONE if last
                                        else schema.ActivationFunctionType.RELU)
        op = schema.OperatorT()
        op.opcodeIndex = FC
        op.inputs = [x, w_t, b_t]
        op.outputs = [y]
        op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = opts
        operators.append(op)
        x = y
    probs = add_tensor(PROBABILITIES, [1, N_CLASSES], schema.TensorType.FLOAT32)
    sm_opts = schema.SoftmaxOptionsT()
    sm_opts.beta = 1.0
    op = schema.OperatorT()
    op.opcodeIndex = SOFTMAX
    op.inputs = [x]
    op.outputs = [probs]
    op.builtinOptionsType = schema.BuiltinOptions.SoftmaxOptions
    op.builtinOptions = sm_opts
    operators.append(op)

    subgraph = schema.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = tensors
    subgraph.inputs = [graph_input]
    subgraph.outputs = [probs]
    subgraph.operators = operators

    model = schema.ModelT()
    model.version = 3
    model.description = "edgeai digits MLP (tests/support/modelgen.py%s)" % (
        ", int8 dynamic-range" if quantize else "")
    model.operatorCodes = [fc_code, sm_code]
    model.subgraphs = [subgraph]
    model.buffers = buffers

    builder = flatbuffers.Builder(64 * 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def tflite_buffer_offsets(model: bytes):
    """Byte offsets (from the start of the file) of every non-empty buffer's data, for alignment checks."""
    schema = _schema()
    m = schema.Model.GetRootAs(model, 0)
    offsets = []
    for i in range(m.BuffersLength()):
        buf = m.Buffers(i)
        if buf.DataLength():
            o = buf._tab.Offset(4)                 # field 'data'
            offsets.append(buf._tab.Vector(o))
    return offsets


# --------------------------------------------------------------------------- Edge TPU double

#: Environment variable that controls the double's behaviour (read at create time):
#:   unset / anything else  create a delegate that claims no nodes (the model runs on CPU)
#:   ``absent``             return NULL, as real libedgetpu does without a TPU: LiteRT's
#:                          load_delegate then raises ValueError('Failed to load delegate ...')
#:   ``prepare-error``      return a delegate whose Prepare fails (kTfLiteError)
FAKE_EDGETPU_ENV = "EDGEAI_FAKE_EDGETPU"
#: When set to a file path, the double appends one line per call (create/prepare/destroy).
FAKE_EDGETPU_LOG_ENV = "EDGEAI_FAKE_EDGETPU_LOG"

_EDGETPU_DOUBLE_C = textwrap.dedent(r"""
    /*
     * !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
     * TEST DOUBLE -- THIS IS NOT CORAL'S libedgetpu AND DRIVES NO EDGE TPU.
     * It is built by tests/support/modelgen.py only so that the edgetpu backend's
     * delegate-loading path can be exercised on machines without a Coral device.
     * Never install or ship it.
     * !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
     *
     * It implements TFLite's external-delegate plugin ABI
     * (tensorflow/lite/delegates/external/external_delegate_interface.h), which is
     * what LiteRT's Python load_delegate() calls through ctypes:
     *   tflite_plugin_create_delegate(keys, values, n, report_error)
     *   tflite_plugin_destroy_delegate(delegate)
     * The returned struct mirrors TfLiteDelegate (tensorflow/lite/core/c/common.h):
     * data_, Prepare, CopyFromBufferHandle, CopyToBufferHandle, FreeBufferHandle,
     * flags, opaque_delegate_builder. Prepare returns kTfLiteOk without calling
     * ReplaceNodeSubsetsWithDelegateKernels, i.e. the delegate claims no nodes and
     * every op keeps running on LiteRT's CPU kernels.
     *
     * EDGEAI_FAKE_EDGETPU=absent         create returns NULL (like libedgetpu, no TPU)
     * EDGEAI_FAKE_EDGETPU=prepare-error  Prepare returns kTfLiteError
     * EDGEAI_FAKE_EDGETPU_LOG=<file>     append one line per call to <file>
     */
    #include <stdarg.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>

    typedef struct FakeDelegate {
      void *data_;
      int (*Prepare)(void *context, struct FakeDelegate *delegate);
      void *CopyFromBufferHandle;
      void *CopyToBufferHandle;
      void *FreeBufferHandle;
      int64_t flags;
      void *opaque_delegate_builder;
      /* zeroed slack, in case a runtime reads fields appended after these */
      unsigned char reserved[128];
    } FakeDelegate;

    static void fake_log(const char *fmt, ...) {
      const char *path = getenv("EDGEAI_FAKE_EDGETPU_LOG");
      FILE *f;
      va_list ap;
      if (path == NULL || *path == '\0') return;
      f = fopen(path, "a");
      if (f == NULL) return;
      va_start(ap, fmt);
      vfprintf(f, fmt, ap);
      va_end(ap);
      fputc('\n', f);
      fclose(f);
    }

    static int fake_prepare_ok(void *context, FakeDelegate *delegate) {
      (void)context; (void)delegate;
      fake_log("prepare ok");
      return 0;  /* kTfLiteOk: claims no nodes */
    }

    static int fake_prepare_error(void *context, FakeDelegate *delegate) {
      (void)context; (void)delegate;
      fake_log("prepare error");
      return 1;  /* kTfLiteError */
    }

    /* LiteRT's Python wrapper passes the option count as a C int. */
    FakeDelegate *tflite_plugin_create_delegate(char **keys, char **values, int n,
                                                void (*report_error)(const char *)) {
      const char *mode = getenv("EDGEAI_FAKE_EDGETPU");
      FakeDelegate *d;
      int i;
      for (i = 0; i < n; i++) fake_log("option %s=%s", keys[i], values[i]);
      if (mode != NULL && strcmp(mode, "absent") == 0) {
        fake_log("create absent");
        if (report_error != NULL) report_error("fake libedgetpu: no Edge TPU device");
        return NULL;
      }
      d = (FakeDelegate *)calloc(1, sizeof(FakeDelegate));
      if (d == NULL) return NULL;
      if (mode != NULL && strcmp(mode, "prepare-error") == 0)
        d->Prepare = fake_prepare_error;
      else
        d->Prepare = fake_prepare_ok;
      fake_log("create ok");
      return d;
    }

    void tflite_plugin_destroy_delegate(FakeDelegate *delegate) {
      fake_log("destroy");
      free(delegate);
    }
""")


def build_edgetpu_double(dest_dir) -> str:
    """Compile the TEST DOUBLE of Coral's libedgetpu into ``dest_dir/libedgetpu.so.1``; return its path.

    Needs a C compiler (``cc``). See ``FAKE_EDGETPU_ENV`` for how to steer it. It drives
    no hardware: with it a model loads through the Edge TPU delegate path but runs on CPU.
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    src = dest / "fake_libedgetpu.c"
    out = dest / "libedgetpu.so.1"
    src.write_text(_EDGETPU_DOUBLE_C)
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-o", str(out), str(src)],
                   check=True, capture_output=True, text=True)
    return str(out)
