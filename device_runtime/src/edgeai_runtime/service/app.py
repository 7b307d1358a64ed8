"""The inference service: KServe v2 / Open Inference Protocol over Starlette.

Routes (all JSON):
  GET  /v2/health/live, /v2/health/ready, /v2
  GET  /v2/models/{name}[/versions/{version}]            model metadata
  GET  /v2/models/{name}[/versions/{version}]/ready
  POST /v2/models/{name}[/versions/{version}]/infer
  GET  /v2/models/stats                                  per model version statistics (Triton's, and a window)
  GET  /metrics                                           Prometheus, with the device's telemetry series
  GET  /openapi.json
  GET  /v2/admin/status, POST /v2/admin/reload,           loopback clients only
       POST /v2/admin/models/{name}/activate|rollback
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
import uuid
import weakref
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Sequence, Tuple,
                    TypeVar, Union)

import numpy as np
import psutil

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edgeai_runtime import __version__
from edgeai_runtime.service.backends import BackendUnavailable, ModelLoadError
from edgeai_runtime.service.batching import Batcher, Overloaded
from edgeai_runtime.device.client import address_path, announce, withdraw
from edgeai_runtime.device.config import ConfigError, RuntimeConfig, TelemetryConfig, load_telemetry_config
from edgeai_runtime.device.exposition import TelemetryCollector
from edgeai_runtime.device.telemetry import Collector
from edgeai_runtime.service.gate import GateFailed
from edgeai_runtime.format.manifest import Manifest, ManifestError
from edgeai_runtime.service.metrics import UNKNOWN_MODEL, Metrics, error_reason
from edgeai_runtime.service.results import ResultRecorder
from edgeai_runtime.service import openapi as openapi_doc
from edgeai_runtime.service.serving import LoadedModel, ModelManager, ModelNotFound
from edgeai_runtime.service.stats import InferenceStats
from edgeai_runtime.device.store import StoreError, open_store
from edgeai_runtime.service.v2 import (BINARY_HEADER, FAST_JSON, V2Error, binary_outputs, decode_request, dumps,
                                       encode_response, model_metadata, parse_json, split_body)

if TYPE_CHECKING:  # httpx is imported when a cloud fallback URL is configured, not before
    import httpx

log = logging.getLogger(__name__)
#: When this process started: the OTA watch tells a restarted service by it (and the pid).
_STARTED = time.time()

PUBLIC_PATHS = ("/v2/health/live", "/v2/health/ready")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tflite": "tensorflow_lite", "edgetpu": "tensorflow_lite_edgetpu",
             "tensorrt": "tensorrt_plan"}

T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # prctl(2)
OFFLOAD_NICENESS = 10


def error(status: int, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# -- large requests: held, decoded and answered without copying them whole on the event loop --------------------
#
# A copy of megabytes holds the GIL, and with it the event loop, for milliseconds to tens of them on a small
# device: joining a body's pieces, pickling it for the worker, and writing a whole answer would each be one.

class SpooledBody:
    """A large request body in an anonymous memory file, written piece by piece as it arrives (the kernel copies,
    without the GIL). Pickled for the offload worker as where to read it, /proc/<service>/fd/<fd>, not as bytes."""

    available = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")

    def __init__(self) -> None:
        self.fd = os.memfd_create("edgeai-request-body", os.MFD_CLOEXEC)
        self.size = 0
        weakref.finalize(self, os.close, self.fd)

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(chunk)

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return os.pread(self.fd, self.size, 0)

    def __reduce__(self) -> Tuple[Callable[[int, int, int], bytes], Tuple[int, int, int]]:
        return read_spooled, (os.getpid(), self.fd, self.size)


def read_spooled(pid: int, fd: int, size: int) -> bytes:
    """In the offload worker: the bytes of the service's SpooledBody."""
    with open("/proc/%d/fd/%d" % (pid, fd), "rb") as f:
        return f.read(size)


class LargeResponse(Response):
    """A response sent in pieces: h11 and the transport each copy what they are given at once."""

    piece = 256 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        view = memoryview(self.body)
        for start in range(0, max(len(view), 1), self.piece):
            await send({"type": "http.response.body", "body": view[start:start + self.piece],
                        "more_body": start + self.piece < len(view)})


def answer(content: bytes, json_length: Optional[int], large: int) -> Response:
    """The infer response for what render_response gave; above ``large`` bytes sent in pieces."""
    cls = LargeResponse if len(content) > large else Response
    if json_length is None:
        return cls(content, media_type="application/json")
    return cls(content, media_type="application/octet-stream", headers={BINARY_HEADER: str(json_length)})


# -- decoding and encoding: module-level functions of bytes and arrays, so they also run in the offload worker

#: A decoded request: the input arrays, the outputs asked for (None: all), the request id, the binary outputs.
Decoded = Tuple[Dict[str, np.ndarray], Optional[List[str]], Optional[str], List[str]]


def decode_body(body: Union[bytes, SpooledBody], json_length: Optional[str], manifest: Manifest,
                max_elements: int) -> Decoded:
    """An infer request body, checked against the manifest; raises V2Error.
    (A SpooledBody comes to the offload worker as bytes.)

    orjson (when installed) reads it first; a request refused on that reading is read again by the json module,
    so that what is refused, and how the error says it, never depend on orjson (which reads an integer beyond
    64 bits as a float, for one).
    """
    raw = bytes(body)
    try:
        return _decode_body(raw, json_length, manifest, max_elements, FAST_JSON)
    except V2Error:
        if not FAST_JSON:
            raise
    return _decode_body(raw, json_length, manifest, max_elements, False)


def _decode_body(body: bytes, json_length: Optional[str], manifest: Manifest, max_elements: int,
                 fast: bool) -> Decoded:
    data, binary = split_body(body, json_length, fast)
    arrays, wanted = decode_request(data, manifest, max_batch=None, binary=binary, max_elements=max_elements)
    return arrays, wanted, data.get("id"), binary_outputs(data, manifest)


def render_response(manifest: Manifest, outputs: Mapping[str, np.ndarray], request_id: Optional[str],
                    wanted: Optional[List[str]], binary: Sequence[str]) -> Tuple[bytes, Optional[int]]:
    """The response body (v2.dumps), and the length of its JSON part when binary data follows."""
    payload, raw = encode_response(manifest, outputs, request_id, wanted, binary)
    content = dumps(payload)
    return (content + raw, len(content)) if raw else (content, None)


def start_offload_worker(parent: int) -> None:
    """The offload worker's start: below the service's CPU priority, so that on a busy CPU the event loop goes
    first; and ended with the service, even when that is killed (the worker holds both ends of its pipes, so
    it never sees an end of file and would wait for work for ever)."""
    os.nice(OFFLOAD_NICENESS)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the service ended before that
        os._exit(0)


def json_size(outputs: Mapping[str, np.ndarray]) -> int:
    """About how long the JSON of these outputs is: a number takes 2 to 20 characters."""
    return 8 * sum(int(value.size) for value in outputs.values())


def _result_recorder(config: RuntimeConfig) -> Optional[ResultRecorder]:
    try:
        return ResultRecorder.for_root(config.root)
    except Exception:  # noqa: BLE001 - the service serves without queuing results rather than not at all
        log.exception("inference results are not queued")
        return None


class Service:
    """Everything one process serves with: config, store, manager, metrics, batchers."""

    def __init__(self, config: RuntimeConfig, manager: Optional[ModelManager] = None) -> None:
        self.config = config
        self.store = open_store(config)
        self.metrics = Metrics()
        telemetry = telemetry_config(config)
        self.stats = InferenceStats(window_s=telemetry.stats_window_s)
        # The device's telemetry on /metrics: sampled when scraped (no timer), stats and process from here.
        self.telemetry = Collector(telemetry, config, stats=self.stats.snapshot, process=psutil.Process())
        self.metrics.registry.register(TelemetryCollector(self.telemetry.sample))
        self.manager = manager or ModelManager(self.store, config)
        self.manager.on_change = self._on_change
        self.executor = ThreadPoolExecutor(max_workers=max(2, config.threads or 2), thread_name_prefix="infer")
        self._batchers: Dict[Tuple[str, str, int], Batcher] = {}
        self._answered: Dict[Tuple[str, str], Tuple[Any, Any]] = {}  # served_metrics' children
        self._offloader: Optional[ProcessPoolExecutor] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._http: Optional[httpx.AsyncClient] = None
        self.results = _result_recorder(config)  # inference results into the outbox, when telemetry asks

    # -- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self.store.recover()
        await self.reload()
        try:  # SIGHUP: pick up what the store says is active, without a restart
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload()))
        except (NotImplementedError, RuntimeError, ValueError):
            log.info("SIGHUP reload is not available in this thread; use POST /v2/admin/reload")

    async def reload(self) -> Dict[str, Optional[str]]:
        errors = await run_in_threadpool(self.manager.sync_from_store)
        for name, err in errors.items():
            if err:
                log.error("model %s is not serving: %s", name, err)
        return errors

    async def shutdown(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()
        await run_in_threadpool(self.manager.close)
        self.executor.shutdown(wait=False)
        if self._offloader is not None:  # joined: uvicorn re-raises SIGTERM after this, so no atexit hook runs
            await run_in_threadpool(self._offloader.shutdown, wait=True, cancel_futures=True)
        if self._http is not None:
            await self._http.aclose()
        if self.results is not None:
            await run_in_threadpool(self.results.close)

    def _on_change(self, model: LoadedModel) -> None:
        """Called after a switch (from a worker thread): refresh gauges, drop batchers of unloaded versions."""
        self.metrics.swaps.labels(model.name).inc()
        for loaded in self.manager.loaded():
            if loaded.name == model.name:
                self.metrics.active.labels(loaded.name, loaded.version).set(1 if loaded is model else 0)
                self.stats.track(loaded.name, loaded.version)
        if model.gate.accuracy is not None:
            self.metrics.accuracy.labels(model.name, model.version).set(model.gate.accuracy)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_stale_batchers)

    def _drop_stale_batchers(self) -> None:
        """Close the batchers of unloaded versions once their last request is answered; forget their cached
        metric children (the series stay in /metrics)."""
        loaded = self.manager.loaded()
        versions = {(m.name, m.version) for m in loaded}
        for labels in [k for k in self._answered if k not in versions]:
            del self._answered[labels]
        self.stats.retain(versions)
        live = {id(m) for m in loaded}
        stale = [k for k in self._batchers if k[2] not in live]
        for key in stale:
            if self._batchers[key].idle:
                self._batchers.pop(key).close()
        if any(k in self._batchers for k in stale) and self._loop is not None:
            self._loop.call_later(0.2, self._drop_stale_batchers)

    def batcher(self, model: LoadedModel) -> Batcher:
        key = (model.name, model.version, id(model))
        batcher = self._batchers.get(key)
        if batcher is None:
            batchable = all(t.shape and t.shape[0] == -1 for t in model.manifest.inputs)
            batcher = Batcher(model.infer, self.executor,
                              max_batch=self.config.max_batch_size if batchable else 1,
                              max_delay_s=self.config.max_delay_ms / 1000.0, max_queue=self.config.max_queue,
                              on_batch=self.metrics.batch_size.labels(model.name, model.version).observe)
            self._batchers[key] = batcher
        return batcher

    def served_metrics(self, model: LoadedModel) -> Tuple[Any, Any]:
        """The (inferences, duration) metric children of a loaded version, made once: ``labels()`` costs more
        than the update. Only versions the manager has loaded come here, so the cache is as bounded as they are."""
        labels = (model.name, model.version)
        children = self._answered.get(labels)
        if children is None:
            children = (self.metrics.inferences.labels(*labels), self.metrics.duration.labels(*labels))
            self._answered[labels] = children
        return children

    # -- large requests off the event loop ---------------------------------------------------

    async def offload(self, size: int, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` for a request or answer of ``size`` bytes: right here up to ``offload_body_bytes``,
        above it in the offload worker process, so that the event loop keeps answering meanwhile.

        A process, not a thread: json.loads and tolist hold the GIL, so a thread would stall the loop as much.
        One worker, started (spawned, not forked from this threaded process) on the first large request;
        a worker that died is replaced and the call tried once more.
        """
        if size <= self.config.offload_body_bytes:
            return function(*args)
        loop = asyncio.get_running_loop()
        pool = self._offload_pool()
        try:
            return await loop.run_in_executor(pool, function, *args)
        except BrokenProcessPool:
            log.warning("the offload worker died; starting another and trying once more")
            if self._offloader is pool:
                self._offloader = None
                pool.shutdown(wait=False)
        return await loop.run_in_executor(self._offload_pool(), function, *args)

    def _offload_pool(self) -> ProcessPoolExecutor:
        if self._offloader is None:
            self._offloader = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=start_offload_worker, initargs=(os.getpid(),))
        return self._offloader

    # -- auth ------------------------------------------------------------------------------

    def authorized(self, request: Request) -> bool:
        if not self.config.token or request.scope["path"] in PUBLIC_PATHS:
            return True
        header = request.headers.get("authorization", "")
        scheme, token = (header.split(" ", 1) + [""])[:2]
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self.config.token)

    @staticmethod
    def from_loopback(request: Request) -> bool:
        host = request.client.host if request.client else ""
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return host in ("localhost", "testclient")

    async def read_body(self, request: Request) -> Union[bytes, SpooledBody]:
        """The body; one that says it is larger than offload_body_bytes spooled for the offload worker."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.config.max_body_bytes:
            raise V2Error(413, "request body of %s bytes exceeds the limit of %d"
                          % (length, self.config.max_body_bytes))
        large = bool(length and length.isdigit() and int(length) > self.config.offload_body_bytes)
        spool = SpooledBody() if large and SpooledBody.available else None
        chunks, size = [], 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > self.config.max_body_bytes:
                    raise V2Error(413, "request body exceeds the limit of %d bytes" % self.config.max_body_bytes)
                if spool is not None:
                    spool.write(chunk)
                else:
                    chunks.append(chunk)
        except ClientDisconnect:  # gone, or closed by the server for a body slower than body_timeout_s
            raise V2Error(408, "the client went away before its request body was complete") from None
        return spool if spool is not None else b"".join(chunks)

    # -- cloud fallback --------------------------------------------------------------------

    async def forward_to_cloud(self, request: Request, body: bytes) -> Response:
        import httpx  # only needed when a fallback URL is configured

        fallback_url = self.config.cloud_fallback_url
        if not fallback_url:
            raise RuntimeError("forwarding to the cloud needs cloud_fallback_url in the runtime configuration")
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=self.config.cloud_fallback_timeout_s)
        url = fallback_url.rstrip("/") + request.url.path
        try:
            upstream = await self._http.post(url, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            return error(502, "no local model is ready and the cloud fallback %s failed: %s"
                         % (fallback_url, exc.__class__.__name__))
        return Response(upstream.content, status_code=upstream.status_code,
                        media_type=upstream.headers.get("content-type", "application/json"),
                        headers={"x-edgeai-served-by": "cloud-fallback"})


# -- endpoints -------------------------------------------------------------------------------

def _service(request: Request) -> Service:
    return request.app.state.service


async def live(request: Request) -> Response:
    """Liveness (KServe v2 server live)."""
    return JSONResponse({"live": True})


async def ready(request: Request) -> Response:
    """Readiness (KServe v2 server ready): 503 until a model serves or a cloud fallback is configured."""
    service = _service(request)
    is_ready = bool(service.manager.names()) or bool(service.config.cloud_fallback_url)
    return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)


async def server_metadata(request: Request) -> Response:
    """Server metadata (KServe v2)."""
    return JSONResponse({"name": "edgeai-runtime", "version": __version__, "extensions": ["binary_tensor_data"]})


def _model_args(request: Request) -> Tuple[str, Optional[str]]:
    return request.path_params["name"], request.path_params.get("version")


def _known_labels(service: Service, name: str, version: Optional[str]) -> Tuple[str, str]:
    """The metric labels of a request for ``name`` (and ``version``): theirs only when the store has them,
    else one fixed pair, so that the names clients make up cannot grow /metrics."""
    if name in service.store.names() and (version is None or version in service.store.versions(name)):
        return name, version or ""
    return UNKNOWN_MODEL


def _count_error(service: Service, labels: Optional[Tuple[str, str]], name: str, version: Optional[str],
                 reason: str, started: float) -> None:
    service.metrics.errors.labels(*(labels or _known_labels(service, name, version)), reason).inc()
    if labels is not None:  # a loaded version's failure (the window keeps loaded versions only)
        service.stats.record(labels[0], labels[1], time.perf_counter() - started, False)


def _acquire(service: Service, name: str, version: Optional[str]) -> LoadedModel:
    try:
        return service.manager.acquire(name, version)
    except ModelNotFound:
        pass
    known = name in service.store.names()
    if known and (version is None or version in service.store.versions(name)):
        raise V2Error(503, "model %s%s is installed but not loaded: %s"
                      % (name, " version %s" % version if version else "",
                         next((s["last_error"] for s in service.manager.status() if s["name"] == name), None)
                         or "not activated"))
    raise V2Error(404, "model %s%s not found" % (name, " version %s" % version if version else ""))


async def model_metadata_endpoint(request: Request) -> Response:
    """Model metadata (KServe v2)."""
    service = _service(request)
    name, version = _model_args(request)
    try:
        model = _acquire(service, name, version)
    except V2Error as exc:
        return error(exc.status, exc.message)
    try:
        return JSONResponse(model_metadata(model.manifest, PLATFORMS.get(model.manifest.runtime, "")))
    finally:
        model.release()


async def model_ready(request: Request) -> Response:
    """Model readiness (KServe v2)."""
    service = _service(request)
    name, version = _model_args(request)
    try:
        _acquire(service, name, version).release()
    except V2Error as exc:
        if exc.status == 404:
            return error(404, exc.message)
        return JSONResponse({"name": name, "ready": False, "error": exc.message}, status_code=503)
    return JSONResponse({"name": name, "ready": True})


async def infer(request: Request) -> Response:
    """Inference (KServe v2): JSON tensors, or the binary tensor data extension."""
    service = _service(request)
    name, version = _model_args(request)
    started = time.perf_counter()
    labels: Optional[Tuple[str, str]] = None  # the model's, once it is acquired
    try:
        body = await service.read_body(request)
        try:
            model = _acquire(service, name, version)
        except V2Error as exc:
            if service.config.cloud_fallback_url and exc.status in (404, 503):
                return await service.forward_to_cloud(request, bytes(body))
            raise
        labels = (model.name, model.version)
        try:
            arrays, wanted, client_id, binary = await service.offload(
                len(body), decode_body, body, request.headers.get(BINARY_HEADER), model.manifest,
                service.config.max_body_bytes)
            outputs = await service.batcher(model).submit(arrays)
            if service.results is not None and service.results.wants(model.name):
                service.results.offer(model.name, model.version, outputs, [t.name for t in model.manifest.outputs],
                                      client_id, time.perf_counter() - started)
            content, json_length = await service.offload(
                json_size(outputs), render_response, model.manifest, outputs, client_id, wanted, binary)
        finally:
            model.release()
    except V2Error as exc:
        _count_error(service, labels, name, version, error_reason(exc.status), started)
        return error(exc.status, exc.message)
    except Overloaded as exc:
        _count_error(service, labels, name, version, "overloaded", started)
        return error(503, "the request queue of %s is full; retry later" % name,
                     headers={"Retry-After": str(exc.retry_after)})
    except Exception as exc:  # the backend failed on this input
        request_id = uuid.uuid4().hex
        log.exception("inference on %s failed (request id %s)", name, request_id)
        _count_error(service, labels, name, version, "backend", started)
        cause = (str(exc).splitlines() or [""])[0][:300] or type(exc).__name__
        return error(500, "inference failed (request id %s): %s" % (request_id, cause),
                     headers={"x-request-id": request_id})
    answered, duration = service.served_metrics(model)
    elapsed = time.perf_counter() - started
    answered.inc()
    duration.observe(elapsed)
    service.stats.record(model.name, model.version, elapsed, True)
    return answer(content, json_length, service.config.offload_body_bytes)


async def model_statistics(request: Request) -> Response:
    """Per model version statistics: Triton's statistics extension's fields, plus the window (service/stats.py);
    ``?window=SECONDS`` narrows the window."""
    raw = request.query_params.get("window")
    try:
        return JSONResponse(_service(request).stats.snapshot(None if raw is None else float(raw)))
    except ValueError as exc:
        return error(400, "window: %s" % exc)


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics, in the format the Accept header asks for. Rendered in a worker thread: the telemetry
    series read sensor files, which on a Jetson are i2c reads."""
    body, content_type = await run_in_threadpool(_service(request).metrics.exposition,
                                                 request.headers.get("accept", ""))
    return Response(body, media_type=None, headers={"content-type": content_type})


async def openapi(request: Request) -> Response:
    """This service's OpenAPI 3.1 document (service/openapi.py), for the models serving now."""
    service, state = _service(request), request.app.state
    if not hasattr(state, "openapi"):
        state.openapi = openapi_doc.DocumentCache(__version__)
    body = await state.openapi.get(service.manager, token_required=bool(service.config.token))
    return Response(body, media_type="application/json")


# -- admin (loopback only) -----------------------------------------------------------------------

async def _admin_json(request: Request) -> Dict[str, Any]:
    body = await request.body()
    return parse_json(body) if body.strip() else {}


async def admin_status(request: Request) -> Response:
    service = _service(request)
    return JSONResponse({"serving": service.manager.status(), "store": service.store.status(),
                         "process": {"pid": os.getpid(), "started": _STARTED}})


def _version_arg(data: Dict[str, Any]) -> str:
    version = data.get("version")
    if not isinstance(version, str):
        raise V2Error(400, "version: a string is required")
    return version


def _budget(data: Dict[str, Any]) -> Optional[float]:
    budget = data.get("latency_p95_ms")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise V2Error(400, "latency_p95_ms: a positive number is required")
    return budget


async def admin_prepare(request: Request) -> Response:
    """Load and gate a version beside the serving one, without switching (see ModelManager.prepare)."""
    service = _service(request)
    name = request.path_params["name"]
    try:
        data = await _admin_json(request)
        version = _version_arg(data)
        result = await run_in_threadpool(service.manager.prepare, name, version, _budget(data))
    except V2Error as exc:
        return error(exc.status, exc.message)
    except GateFailed as exc:  # the OTA installer reports the phase that failed
        return JSONResponse({"error": str(exc), "phase": "gate"}, status_code=409)
    except (StoreError, ManifestError, BackendUnavailable, ModelLoadError) as exc:
        return JSONResponse({"error": str(exc), "phase": "load"}, status_code=409)
    return JSONResponse(result)


async def admin_reload(request: Request) -> Response:
    errors = await _service(request).reload()
    return JSONResponse({"errors": errors}, status_code=200 if not any(errors.values()) else 409)


async def admin_activate(request: Request) -> Response:
    service = _service(request)
    name = request.path_params["name"]
    try:
        data = await _admin_json(request)
        version = _version_arg(data)
        result = await run_in_threadpool(service.manager.activate, name, version, True, _budget(data),
                                         data.get("prune", True) is not False)
    except V2Error as exc:
        return error(exc.status, exc.message)
    except (StoreError, ManifestError, GateFailed, BackendUnavailable, ModelLoadError) as exc:
        return error(409, str(exc))
    return JSONResponse(result)


async def admin_discard(request: Request) -> Response:
    """Unload a loaded version that is not serving (what an OTA rollback does with the failed version)."""
    service = _service(request)
    try:
        data = await _admin_json(request)
        version = _version_arg(data)
    except V2Error as exc:
        return error(exc.status, exc.message)
    discarded = await run_in_threadpool(service.manager.discard, request.path_params["name"], version)
    return JSONResponse({"changed": discarded, "version": version})


async def admin_rollback(request: Request) -> Response:
    service = _service(request)
    name = request.path_params["name"]
    try:
        data = await _admin_json(request)
        result = await run_in_threadpool(service.manager.rollback, name, data.get("version"))
    except V2Error as exc:
        return error(exc.status, exc.message)
    except (StoreError, ManifestError, GateFailed, BackendUnavailable, ModelLoadError) as exc:
        return error(409, str(exc))
    return JSONResponse(result)


class Guard:
    """ASGI middleware: bearer token (when configured) and loopback-only admin routes."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # scope["path"], and a Request only when a token or an admin route needs one: building the URL cost
        # more than the rest of the check (bench/bench_kserve.py).
        if scope["type"] == "http":
            service: Service = scope["app"].state.service
            admin = scope["path"].startswith("/v2/admin/")
            if admin or service.config.token:
                request = Request(scope)
                if not service.authorized(request):
                    await error(401, "a valid bearer token is required",
                                headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
                if admin and not service.from_loopback(request):
                    await error(403, "admin endpoints answer loopback clients only")(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such route, a method the route does not take) as the v2 error object."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    path = request.url.path if len(request.url.path) <= 200 else request.url.path[:197] + "..."
    message = {404: "no route %s %s" % (request.method, path),
               405: "%s is not allowed on %s" % (request.method, path)}.get(exc.status_code, exc.detail)
    return error(exc.status_code, message, headers=dict(exc.headers) if exc.headers else None)


async def internal_error(request: Request, exc: Exception) -> Response:
    """Any exception no endpoint caught: a JSON 500 that names a request id, logged with the traceback.

    Starlette's ServerErrorMiddleware (the outermost layer) calls this, so exceptions in middleware
    are answered in JSON too; it re-raises afterwards, and the server logs it once more.
    """
    request_id = uuid.uuid4().hex
    log.error("internal error (request id %s) on %s %s", request_id, request.method, request.url.path,
              exc_info=(type(exc), exc, exc.__traceback__))
    return error(500, "internal error (request id %s)" % request_id, headers={"x-request-id": request_id})


def announce_bound(config: RuntimeConfig, addresses: List[Tuple[str, int]]) -> None:
    """Announce the address the server really bound (device.client.announce): the CLI and the OTA
    installer find the service by it, ``serve --port`` and port 0 included. The server calls this
    once it listens (http_server.serve's ``on_listening``); a clean shutdown withdraws it."""
    if not addresses:
        log.warning("the server listens on no TCP socket: the service address is not announced")
        return
    host, port = addresses[0]
    try:
        announce(config.root, host, port)
    except OSError as exc:
        log.error("cannot announce the service address in %s: %s", address_path(config.root), exc)
        return
    log.info("listening on %s:%d, announced in %s", host, port, address_path(config.root))


def telemetry_config(config: RuntimeConfig) -> TelemetryConfig:
    """The device's telemetry settings (<root>/etc/telemetry.json); the defaults, logged, when that is unusable:
    a telemetry setting never keeps the service from serving."""
    try:
        return load_telemetry_config(config.root)
    except ConfigError as exc:
        log.error("telemetry settings ignored, using the defaults: %s", exc)
        return TelemetryConfig(root=config.root, device_id=socket.gethostname() or "device")


def create_app(config: RuntimeConfig, manager: Optional[ModelManager] = None) -> Starlette:
    service = Service(config, manager)
    routes = [  # Starlette tries them in order: inference, the hot path, first
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/models/stats", model_statistics, methods=["GET"]),  # before /v2/models/{name}
        Route("/v2/models/{name}", model_metadata_endpoint, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}", model_metadata_endpoint, methods=["GET"]),
        Route("/v2/models/{name}/ready", model_ready, methods=["GET"]),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
        Route("/v2/admin/status", admin_status, methods=["GET"], include_in_schema=False),
        Route("/v2/admin/reload", admin_reload, methods=["POST"], include_in_schema=False),
        Route("/v2/admin/models/{name}/prepare", admin_prepare, methods=["POST"], include_in_schema=False),
        Route("/v2/admin/models/{name}/activate", admin_activate, methods=["POST"], include_in_schema=False),
        Route("/v2/admin/models/{name}/rollback", admin_rollback, methods=["POST"], include_in_schema=False),
        Route("/v2/admin/models/{name}/discard", admin_discard, methods=["POST"], include_in_schema=False),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.startup()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                withdraw(config.root)
            await service.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error, Exception: internal_error})
    app.state.service = service
    app.add_middleware(Guard)
    return app
