"""The service's OpenAPI 3.1 document, built as a plain dict: no PyYAML, no docstring parsing.

Built for the models serving at that moment: their names become the enum of the ``name`` path
parameter, and each gets a real example infer body and a body schema of its own, so that a client
or a fuzzer that reads the document reaches the real models. ``document`` is pure (the caller hands
in the manifests); ``DocumentCache`` rebuilds it only when the serving versions change.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from starlette.concurrency import run_in_threadpool

from edgeai_runtime.format.manifest import Manifest, TensorSignature
from edgeai_runtime.format.tensors import V2_TO_NUMPY
from edgeai_runtime.service.serving import ModelManager, ModelNotFound

OPENAPI_VERSION = "3.1.0"
#: Model names and versions are store directory names (format.manifest.check_name).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
JSON = "application/json"
#: Models whose inputs hold more values than this get an example body, but no body schema of their own.
MAX_SCHEMA_ELEMENTS = 4096
Schema = Dict[str, Any]

_DESCRIPTION = (
    "KServe v2 (Open Inference Protocol) over HTTP/JSON, with the binary tensor data extension.\n\n"
    "Authentication: a bearer token is optional in the runtime configuration (`token`, EDGEAI_RUNTIME_TOKEN "
    "or <root>/etc/token; required when the service listens on a non-loopback address). When one is set, "
    "every route but the two health probes needs `Authorization: Bearer <token>`.%s\n\n"
    "Not described here: the /v2/admin/ routes (status, reload, prepare, activate, rollback, discard), "
    "which answer loopback clients only and are driven by the device's command line.")


def _ref(name: str) -> Schema:
    return {"$ref": "#/components/schemas/%s" % name}


def _components() -> Schema:
    datatypes = sorted(V2_TO_NUMPY)
    tensor_data = {"type": "array", "description": "The values, flat in row-major order (nested lists "
                   "of the same values are accepted).",
                   "items": {"type": ["number", "boolean", "array"]}}
    parameters = {"type": "object", "description": "Protocol parameters (e.g. binary_data_size, binary_data, "
                  "binary_data_output).", "additionalProperties": True}
    #: The properties of a tensor, the same in a request's inputs and a response's outputs.
    tensor: Schema = {"name": {"type": "string"},
                      "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                      "datatype": _ref("Datatype"), "parameters": _ref("Parameters"), "data": tensor_data}
    schemas: Dict[str, Schema] = {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string", "description": "What is wrong, and where."}}},
        "Datatype": {"type": "string", "enum": datatypes},
        "Parameters": parameters,
        "RequestInput": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": dict(tensor),
            "description": "An input tensor; `data` is left out when its bytes follow the JSON "
                           "(binary tensor data extension, `parameters.binary_data_size`)."},
        "RequestOutput": {"type": "object", "required": ["name"],
                          "properties": {"name": {"type": "string"}, "parameters": _ref("Parameters")}},
        "InferenceRequest": {
            "type": "object", "required": ["inputs"],
            "properties": {"id": {"type": "string"},
                           "parameters": _ref("Parameters"),
                           "inputs": {"type": "array", "minItems": 1, "items": _ref("RequestInput")},
                           "outputs": {"type": "array", "items": _ref("RequestOutput")}}},
        "ResponseOutput": {
            "type": "object", "required": ["name", "shape", "datatype"],
            "properties": dict(tensor)},
        "InferenceResponse": {
            "type": "object", "required": ["model_name", "outputs"],
            "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                           "id": {"type": "string"}, "parameters": _ref("Parameters"),
                           "outputs": {"type": "array", "items": _ref("ResponseOutput")}}},
        "MetadataTensor": {
            "type": "object", "required": ["name", "datatype", "shape"],
            "properties": {"name": {"type": "string"}, "datatype": _ref("Datatype"),
                           "shape": {"type": "array", "description": "-1 is any size.",
                                     "items": {"type": "integer", "minimum": -1}}}},
        "ModelMetadata": {
            "type": "object", "required": ["name", "platform", "inputs", "outputs"],
            "properties": {"name": {"type": "string"},
                           "versions": {"type": "array", "items": {"type": "string"}},
                           "platform": {"type": "string"},
                           "inputs": {"type": "array", "items": _ref("MetadataTensor")},
                           "outputs": {"type": "array", "items": _ref("MetadataTensor")}}},
        "ServerMetadata": {
            "type": "object", "required": ["name", "version", "extensions"],
            "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                           "extensions": {"type": "array", "items": {"type": "string"}}}},
        "StatDuration": {
            "type": "object", "required": ["count", "ns"],
            "properties": {"count": {"type": "integer", "minimum": 0},
                           "ns": {"type": "integer", "minimum": 0, "description": "Total time, nanoseconds."}}},
        "ModelStat": {
            "type": "object", "required": ["name", "version", "last_inference", "inference_count", "inference_stats",
                                           "window"],
            "properties": {
                "name": {"type": "string"}, "version": {"type": "string"},
                "last_inference": {"type": "integer", "minimum": 0,
                                   "description": "Milliseconds since the epoch of the last answer (0: none yet)."},
                "inference_count": {"type": "integer", "minimum": 0,
                                    "description": "Successful requests since the service started."},
                "inference_stats": {"type": "object", "required": ["success", "fail"],
                                    "properties": {"success": _ref("StatDuration"), "fail": _ref("StatDuration")}},
                "window": {
                    "type": "object", "description": "The requests answered in the last window_seconds.",
                    "required": ["requests", "errors", "latency_p50_seconds", "latency_p95_seconds",
                                 "covered_seconds", "truncated"],
                    "properties": {
                        "requests": {"type": "integer", "minimum": 0},
                        "errors": {"type": "integer", "minimum": 0},
                        "latency_p50_seconds": {"type": ["number", "null"], "minimum": 0,
                                                "description": "Of the successful requests; null without any."},
                        "latency_p95_seconds": {"type": ["number", "null"], "minimum": 0},
                        "covered_seconds": {"type": "number", "minimum": 0,
                                            "description": "How far back the oldest request in the window is."},
                        "truncated": {"type": "boolean", "description": "The window holds max_samples requests "
                                                                        "and older ones in it were dropped."}}}}},
        "ModelStatistics": {
            "type": "object", "required": ["window_seconds", "max_samples", "model_stats"],
            "properties": {"window_seconds": {"type": "number", "exclusiveMinimum": 0},
                           "max_samples": {"type": "integer", "minimum": 1},
                           "model_stats": {"type": "array", "items": _ref("ModelStat")}}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {
            "type": "object", "required": ["name", "ready"],
            "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"},
                           "error": {"type": "string", "description": "Why it is not ready."}}},
    }
    return {"schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "Optional in the runtime configuration; see the "
                                                          "description of this document."}}}


def _json(description: str, schema: str) -> Schema:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _errors(*codes: int) -> Dict[str, Schema]:
    reasons = {400: "Malformed JSON, or a wrong tensor name, shape, datatype or value (the field is named).",
               401: "A bearer token is configured and the request has none, or a wrong one.",
               404: "Unknown model or version.",
               413: "The body is over max_body_bytes.",
               422: "An output holds NaN or infinity, which JSON cannot carry: ask for it as binary data.",
               500: "The backend failed on this input.",
               502: "No local model is ready and the cloud fallback failed (cloud_fallback_url only).",
               503: "The request queue is full (with Retry-After), or the model is installed but not loaded."}
    return {str(code): _json(reasons[code], "Error") for code in codes}


def _path_parameters(names: Sequence[str], versions: Sequence[str], with_version: bool) -> List[Schema]:
    name_schema: Schema = {"type": "string", "pattern": NAME_PATTERN}
    if names:
        name_schema = {"type": "string", "enum": list(names)}
    params: List[Schema] = [{"name": "name", "in": "path", "required": True, "schema": name_schema,
                             "description": "The model's name" + ("; the models serving now." if names else ".")}]
    if names:
        params[0]["example"] = names[0]
    if with_version:
        version: Schema = {"name": "version", "in": "path", "required": True,
                           "schema": {"type": "string", "pattern": NAME_PATTERN},
                           "description": "A loaded version: the serving one, or the previous one kept loaded."}
        if versions:
            version["example"] = versions[0]
        params.append(version)
    return params


def _zero(datatype: str) -> Any:
    kind = V2_TO_NUMPY[datatype].kind
    return False if kind == "b" else 0.0 if kind == "f" else 0


def _example_input(sig: TensorSignature) -> Schema:
    shape = [1 if d < 0 else d for d in sig.shape]
    return {"name": sig.name, "shape": shape, "datatype": sig.datatype,
            "data": [_zero(sig.datatype)] * math.prod(shape)}


def _value_schema(datatype: str) -> Schema:
    dtype = V2_TO_NUMPY[datatype]
    if dtype.kind == "b":
        return {"type": "boolean"}
    if dtype.kind == "f":
        return {"type": "number", "minimum": float(np.finfo(dtype).min), "maximum": float(np.finfo(dtype).max)}
    return {"type": "integer", "minimum": int(np.iinfo(dtype).min), "maximum": int(np.iinfo(dtype).max)}


def model_request_schema(manifest: Manifest) -> Optional[Schema]:
    """An infer body this model takes (one row where the batch is free), as a schema a fuzzer can
    fill with real values; None when its inputs hold more than MAX_SCHEMA_ELEMENTS values."""
    shapes = [[1 if d < 0 else d for d in sig.shape] for sig in manifest.inputs]
    if sum(math.prod(shape) for shape in shapes) > MAX_SCHEMA_ELEMENTS:
        return None
    tensors = [{"type": "object", "required": ["name", "shape", "datatype", "data"], "additionalProperties": False,
                "properties": {"name": {"const": sig.name}, "shape": {"const": shape},
                               "datatype": {"const": sig.datatype},
                               "data": {"type": "array", "minItems": math.prod(shape), "maxItems": math.prod(shape),
                                        "items": _value_schema(sig.datatype)}}}
               for sig, shape in zip(manifest.inputs, shapes)]
    return {"type": "object", "required": ["inputs"], "additionalProperties": False,
            "description": "What %s %s takes." % (manifest.name, manifest.version),
            "properties": {"id": {"type": "string"},
                           "inputs": {"type": "array", "prefixItems": tensors, "items": False,
                                      "minItems": len(tensors), "maxItems": len(tensors)},
                           "outputs": {"type": "array", "items": {
                               "type": "object", "required": ["name"], "additionalProperties": False,
                               "properties": {"name": {"enum": [t.name for t in manifest.outputs]}}}}}}


def example_request(manifest: Manifest) -> Schema:
    """A valid infer body for this model: its inputs, -1 taken as 1, all zeros."""
    return {"id": "example", "inputs": [_example_input(sig) for sig in manifest.inputs]}


def document(server_version: str, manifests: Sequence[Manifest] = (), token_required: bool = False) -> Schema:
    """The OpenAPI 3.1 document of the public routes, for the models in ``manifests`` (the serving versions)."""
    names = [m.name for m in manifests]
    versions = [m.version for m in manifests]
    components = _components()
    specific = {"%s.InferenceRequest" % m.name: model_request_schema(m) for m in manifests}
    components["schemas"].update({key: value for key, value in specific.items() if value is not None})
    request_schema: Schema = _ref("InferenceRequest")
    if any(specific.values()):
        request_schema = {"anyOf": [request_schema] + [_ref(k) for k, v in specific.items() if v is not None],
                          "description": "Any v2 inference request; the served models' own bodies are "
                                         "listed beside it."}
    # An empty requirement makes the token optional, as it is when none is configured.
    security: List[Dict[str, List[str]]] = [{"bearer": []}] if token_required else [{}, {"bearer": []}]

    def operation(op_id: str, summary: str, responses: Dict[str, Schema], public: bool = False,
                  **extra: Any) -> Schema:
        op: Schema = {"operationId": op_id, "summary": summary, "responses": responses}
        if public:
            op["security"] = []
        else:
            op["responses"].update(_errors(401))
        op.update(extra)
        return op

    def model_paths(suffix: str, with_version: bool) -> Dict[str, Schema]:
        base = "/v2/models/{name}" + ("/versions/{version}" if with_version else "")
        tail = "_version" if with_version else ""
        params = _path_parameters(names, versions, with_version)
        examples = {m.name: {"summary": "zeros for %s %s" % (m.name, m.version), "value": example_request(m)}
                    for m in manifests}
        body: Schema = {"required": True, "content": {
            JSON: {"schema": request_schema, **({"examples": examples} if examples else {})},
            "application/octet-stream": {"schema": {
                "type": "string", "format": "binary",
                "description": "Binary tensor data extension: the JSON request (its length in the "
                               "Inference-Header-Content-Length header), then the tensors' bytes."}}}}
        infer_ok = {"description": "The output tensors.", "content": {
            JSON: {"schema": _ref("InferenceResponse")},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary",
                                                    "description": "JSON response, then output bytes "
                                                                   "(Inference-Header-Content-Length)."}}}}
        if suffix == "":
            return {base: {"parameters": params, "get": operation(
                "model_metadata" + tail, "Model metadata (KServe v2)",
                {"200": _json("Inputs, outputs and platform of the model version.", "ModelMetadata"),
                 **_errors(404, 503)})}}
        if suffix == "/ready":
            return {base + suffix: {"parameters": params, "get": operation(
                "model_ready" + tail, "Model readiness (KServe v2)",
                {"200": _json("The model version is loaded and serves.", "ModelReady"),
                 "404": _json("Unknown model or version.", "Error"),
                 "503": _json("Installed but not loaded.", "ModelReady")})}}
        return {base + suffix: {"parameters": params, "post": operation(
            "infer" + tail, "Inference (KServe v2, JSON tensors or the binary tensor data extension)",
            {"200": infer_ok, **_errors(400, 404, 413, 422, 500, 502),
             "503": {**_errors(503)["503"],
                     "headers": {"Retry-After": {"schema": {"type": "integer"},
                                                 "description": "Seconds, when the queue is full."}}}},
            requestBody=body)}}

    paths: Dict[str, Schema] = {
        "/v2/health/live": {"get": operation("server_live", "Liveness (KServe v2 server live)",
                                             {"200": _json("The process is up.", "Live")}, public=True)},
        "/v2/health/ready": {"get": operation(
            "server_ready", "Readiness (KServe v2 server ready)",
            {"200": _json("At least one model serves, or a cloud fallback is configured.", "Ready"),
             "503": _json("Nothing can answer an inference request yet.", "Ready")}, public=True)},
        "/v2": {"get": operation("server_metadata", "Server metadata (KServe v2)",
                                 {"200": _json("Name, version and extensions.", "ServerMetadata")})},
    }
    for with_version in (False, True):
        for suffix in ("", "/ready", "/infer"):
            paths.update(model_paths(suffix, with_version))
    paths["/v2/models/stats"] = {"get": operation(
        "model_statistics", "Inference statistics per loaded model version (Triton's statistics extension's "
        "fields, plus p50/p95 latency over a window)",
        {"200": _json("Counts since the service started, and the window's requests, errors and latencies.",
                      "ModelStatistics"), **_errors(400)},
        parameters=[{"name": "window", "in": "query", "required": False,
                     "description": "Seconds of the window, at most the service's (default: the service's).",
                     "schema": {"type": "number", "exclusiveMinimum": 0}}])}
    paths["/metrics"] = {"get": operation("metrics", "Prometheus metrics", {"200": {
        "description": "Exposition in the format the Accept header asks for.",
        "content": {"text/plain": {"schema": {"type": "string"}},
                    "application/openmetrics-text": {"schema": {"type": "string"}}}}})}
    paths["/openapi.json"] = {"get": operation("openapi", "This document", {"200": {
        "description": "OpenAPI 3.1, for the models serving now.",
        "content": {JSON: {"schema": {"type": "object"}}}}})}
    served = " Serving now: %s." % ", ".join("%s %s" % (m.name, m.version) for m in manifests) if manifests else ""
    return {"openapi": OPENAPI_VERSION,
            "info": {"title": "edgeai-runtime (KServe v2)", "version": server_version,
                     "description": _DESCRIPTION % served},
            "security": security,
            "paths": paths,
            "components": components}


class DocumentCache:
    """The last document built, as JSON bytes, kept until the serving versions or the token setting
    change: an image model's example body alone is ~1 MB of JSON, too much to rebuild on every GET."""

    def __init__(self, server_version: str) -> None:
        self.server_version = server_version
        self._key: Tuple[object, ...] = ()
        self._body = b""

    async def get(self, manager: ModelManager, token_required: bool) -> bytes:
        manifests = serving_manifests(manager)
        key = (token_required,) + tuple((m.name, m.version, m.sha256) for m in manifests)
        if key != self._key:  # built off the event loop: large example bodies take milliseconds
            body = await run_in_threadpool(self._encode, manifests, token_required)
            self._key, self._body = key, body
        return self._body

    def _encode(self, manifests: Sequence[Manifest], token_required: bool) -> bytes:
        return json.dumps(document(self.server_version, manifests, token_required), separators=(",", ":")).encode()


def serving_manifests(manager: ModelManager) -> List[Manifest]:
    """The manifests of the versions serving now, one per model."""
    manifests = []
    for name in manager.names():
        try:
            model = manager.acquire(name)
        except ModelNotFound:  # unloaded since names() was read
            continue
        manifests.append(model.manifest)
        model.release()
    return manifests
