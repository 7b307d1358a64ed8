"""KServe peer for bench_kserve.py: one ONNX model behind stock kserve.ModelServer, REST only.

  /tmp/kserve-venv/bin/python bench/kserve_peer.py MODEL.onnx PORT [--stock-logging]

Runs in its own virtual environment with kserve installed (not the runtime's): a minimal
``kserve.Model`` subclass whose ``predict`` runs an ``onnxruntime.InferenceSession`` over the
model file (default session options, CPU provider, all outputs: what the runtime's ONNX backend
does) and answers KServe v2 JSON tensors. ``ModelServer`` with one worker, gRPC off, the docs
off, on 127.0.0.1 only (KServe itself binds 0.0.0.0; the bench changes only that). KServe's
three log lines per request (uvicorn's access log, the ``kserve.trace`` timings, the latency line)
are off unless ``--stock-logging``: our service logs no line per request either, so the peer is
measured at its fastest. Everything else is KServe's default: uvicorn with ``loop="auto"`` (uvloop,
installed with kserve), httptools, FastAPI, orjson responses.
"""
from __future__ import annotations

import argparse
import functools
import logging
from typing import Dict, Optional

import numpy as np
import onnxruntime as ort
import uvicorn

V2_DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32",
                np.dtype(np.float64): "FP64", np.dtype(np.uint8): "UINT8", np.dtype(np.bool_): "BOOL"}


def loopback_only() -> None:
    """KServe's RESTServer passes host="0.0.0.0" to uvicorn.Config; this bench listens on 127.0.0.1."""
    original = uvicorn.Config.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["host"] = "127.0.0.1"
        original(self, *args, **kwargs)

    uvicorn.Config.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("model")
    parser.add_argument("port", type=int)
    parser.add_argument("--name", default="digits")
    parser.add_argument("--stock-logging", action="store_true")
    args = parser.parse_args()
    loopback_only()
    import kserve  # after the patch: kserve.model_server builds its RESTServer from uvicorn.Config
    from kserve import InferOutput, InferRequest, InferResponse

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.session: Optional[ort.InferenceSession] = None
            self.path = path

        def load(self) -> bool:
            self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            self.input_names = [i.name for i in self.session.get_inputs()]
            self.output_names = [o.name for o in self.session.get_outputs()]
            self.ready = True
            return self.ready

        def predict(self, payload: InferRequest, headers: Optional[Dict[str, str]] = None) -> InferResponse:
            feeds = {t.name: t.as_numpy() for t in payload.inputs}
            values = self.session.run(None, feeds)
            outputs = []
            for name, value in zip(self.output_names, values):
                output = InferOutput(name=name, shape=list(value.shape), datatype=V2_DATATYPES[value.dtype])
                output.set_data_from_numpy(value, binary_data=False)
                outputs.append(output)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs)

    model = OnnxModel(args.name, args.model)
    model.load()
    server = kserve.ModelServer(http_port=args.port, workers=1, enable_grpc=False, enable_docs_url=False,
                                enable_latency_logging=args.stock_logging)
    if not args.stock_logging:  # after ModelServer() has configured KServe's logging
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server.start([model])


if __name__ == "__main__":
    main()
