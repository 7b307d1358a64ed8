"""uvicorn without its periodic wakeups: an idle service sleeps until a request or a signal comes.

Stock ``uvicorn.Server`` runs a main loop that wakes ten times a second (``asyncio.sleep(0.1)``)
to check whether it should exit and, once a second, to refresh the ``Date`` header. Natively that
is about 0.2 % of a core (bench/bench_idle.py); under qemu user emulation, where a wakeup costs far
more, the idle arm64 sim devices' services took 17-24 % of a core each.

:class:`EventDrivenServer` does the same two jobs when something happens instead:

* exit: setting ``should_exit`` (what uvicorn's SIGINT/SIGTERM handler does, and what a caller
  running the server in-process does) wakes the loop through ``call_soon_threadsafe``;
* ``Date``: made when a response asks for the default headers, at most once per second, so it
  is never older than uvicorn's own (refreshed once per second by that loop).

uvicorn's other tick jobs, ``limit_max_requests`` and ``callback_notify`` (gunicorn workers), are
not used by the runtime; with either configured the stock loop runs.

:class:`RequestDeadlines` adds the deadlines uvicorn lacks, to both of its HTTP parsers
(:class:`DeadlineHttpToolsProtocol`, :class:`DeadlineH11Protocol`): its ``timeout_keep_alive`` closes
a connection that sends nothing between requests, but one that sends a request head or body slowly
(a byte a second) was kept open, and held its place under ``limit_concurrency``, for ever.
:func:`serve` runs on uvloop and httptools when both are installed, else on asyncio and h11: never
on a parser without the deadlines.
"""
from __future__ import annotations

import abc
import asyncio
import importlib
import json
import logging
import socket
import ssl
import time
from email.utils import formatdate
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple, Type

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

Headers = List[Tuple[bytes, bytes]]
log = logging.getLogger(__name__)


class LazyHeadersState(ServerState):
    """uvicorn's state shared by all connections, with the default headers made on demand.

    Every request cycle reads ``default_headers`` when it starts; the ``Date`` in them is made
    then, once per second at most, instead of from a timer.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        self._config = config
        self._second: Optional[int] = None
        self._headers: Headers = []
        super().__init__()

    @property
    def default_headers(self) -> Headers:
        if not self._config.date_header:
            return self._config.encoded_headers
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._headers = [(b"date", formatdate(now, usegmt=True).encode())] + self._config.encoded_headers
        return self._headers

    @default_headers.setter
    def default_headers(self, value: Headers) -> None:
        """uvicorn's own tick assigns them; they are made by the getter instead, so this keeps nothing."""


class EventDrivenServer(uvicorn.Server):
    """``uvicorn.Server`` whose main loop waits for ``should_exit`` instead of polling it."""

    def __init__(self, config: uvicorn.Config,
                 on_listening: Optional[Callable[[List[Tuple[str, int]]], None]] = None) -> None:
        self._on_listening = on_listening
        self._exit_requested = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._exit_event: Optional[asyncio.Event] = None
        super().__init__(config)
        self.server_state = LazyHeadersState(config)

    @property
    def should_exit(self) -> bool:
        return self._exit_requested

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._exit_requested = value
        if value and self._loop is not None and self._exit_event is not None:
            try:  # from a signal handler, or from another thread
                self._loop.call_soon_threadsafe(self._exit_event.set)
            except RuntimeError:  # the loop is closed: nothing waits any more
                pass

    async def startup(self, sockets: Optional[List[socket.socket]] = None) -> None:
        """uvicorn's startup (lifespan, then bind); then ``on_listening`` gets the addresses really bound."""
        await super().startup(sockets)
        if self.started and self._on_listening is not None:
            self._on_listening([(str(s.getsockname()[0]), int(s.getsockname()[1]))
                                for server in self.servers for s in (server.sockets or ())])

    async def main_loop(self) -> None:
        if self.config.limit_max_requests is not None or self.config.callback_notify is not None:
            await super().main_loop()
            return
        self._exit_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if not self.should_exit:  # an exit asked for before this point is seen here
            await self._exit_event.wait()


if TYPE_CHECKING:
    class _UvicornProtocol(asyncio.Protocol):
        """What the deadlines use of uvicorn's HTTP protocols (H11Protocol, HttpToolsProtocol)."""

        loop: asyncio.AbstractEventLoop
        transport: asyncio.Transport
        timeout_keep_alive: int
        timeout_keep_alive_task: Optional[asyncio.TimerHandle]

        def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                     _loop: Optional[asyncio.AbstractEventLoop] = None) -> None: ...

        def connection_made(self, transport: asyncio.Transport) -> None: ...  # type: ignore[override]

        def on_response_complete(self) -> None: ...

        def timeout_keep_alive_handler(self) -> None: ...
else:  # at run time the protocol class the deadlines are mixed into comes next in the MRO
    _UvicornProtocol = asyncio.Protocol


class RequestDeadlines(_UvicornProtocol, metaclass=abc.ABCMeta):
    """Deadlines for the request head and body, and for a new connection, mixed into a uvicorn HTTP protocol.

    * A new connection that sends nothing is closed after ``timeout_keep_alive``, like one that is
      idle between requests (uvicorn arms that timer only after a response).
    * Once the first byte of a request has come, its head must be complete within
      ``header_timeout_s`` and then its body within ``body_timeout_s``. Each is one deadline for the
      whole part, not a timer that every byte restarts, so a client sending a byte a second is
      closed as soon as a slow one. The client gets a 408 (unless its answer has started) and the
      connection is closed; an app waiting for the body sees the client disconnect.

    The two timeouts are read from the config (:class:`ServiceConfig`), else the defaults here.
    A parser's subclass says which part of a request is coming (``_waiting_for``) and writes the
    408 (``_answer_timeout``); the rest is here, once for both parsers.
    """

    header_timeout_s = 10.0
    body_timeout_s = 60.0

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s = getattr(config, "header_timeout_s", self.header_timeout_s)
        self.body_timeout_s = getattr(config, "body_timeout_s", self.body_timeout_s)
        self._phase: Optional[str] = None  # "head" or "body": what the deadline waits for
        self._deadline: Optional[asyncio.TimerHandle] = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._watch(None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch(self._waiting_for())

    def on_response_complete(self) -> None:
        super().on_response_complete()  # which may start on a pipelined request already received
        self._watch(self._waiting_for())

    @abc.abstractmethod
    def _waiting_for(self) -> Optional[str]:
        """The part of a request that has begun to come and is not complete yet ("head", "body"), if any:
        what each parser's protocol says from its own state."""

    @abc.abstractmethod
    def _answer_timeout(self, phase: str, body: bytes) -> None:
        """Write a 408 with this JSON ``body``, unless an answer to the request has started (each parser
        writes it its own way)."""

    def _watch(self, phase: Optional[str]) -> None:
        """Keep one deadline, for ``phase``: left running while the phase lasts, replaced when it changes."""
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            self._deadline = self.loop.call_later(self._timeout(phase), self._expired)

    def _timeout(self, phase: str) -> float:
        return self.header_timeout_s if phase == "head" else self.body_timeout_s

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing() or phase is None:
            return
        message = "the request %s did not arrive within %g s" % (phase, self._timeout(phase))
        self._answer_timeout(phase, json.dumps({"error": message}).encode())
        self.transport.close()


def _timeout_headers(body: bytes) -> Headers:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]


class DeadlineH11Protocol(RequestDeadlines, H11Protocol):
    """uvicorn's h11 protocol with the :class:`RequestDeadlines`: what serves when httptools or uvloop is missing."""

    def _waiting_for(self) -> Optional[str]:
        if self.transport.is_closing():
            return None
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return "body"
        if state is h11.IDLE and self.conn.trailing_data[0]:
            return "head"
        return None

    def _answer_timeout(self, phase: str, body: bytes) -> None:
        if self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete:
            return
        try:
            for event in (h11.Response(status_code=408, reason=b"Request Timeout", headers=_timeout_headers(body)),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        except h11.LocalProtocolError:  # the answer to this request is already out: just close
            pass


try:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
except ImportError as exc:  # httptools is not installed: serve() takes DeadlineH11Protocol
    HTTPTOOLS_MISSING: Optional[str] = str(exc)
else:
    HTTPTOOLS_MISSING = None

    class DeadlineHttpToolsProtocol(RequestDeadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol with the :class:`RequestDeadlines`: what serves when uvloop and httptools
        are installed (bench/bench_kserve.py: about 0.7x the CPU per request of asyncio and h11).

        httptools parses in callbacks; the request part that is coming is noted from them. A request that
        begins while an earlier one on the connection is still being answered waits its turn (uvicorn
        stops reading), as h11 makes it wait: its deadlines start once it is the one being served.
        """

        def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                     _loop: Optional[asyncio.AbstractEventLoop] = None) -> None:
            self._message: Optional[str] = None  # "head", "body": what the parser has begun and not finished
            super().__init__(config, server_state, app_state, _loop)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._message = "head"

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._message = "body"

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._message = None

        def _waiting_for(self) -> Optional[str]:
            if self.transport.is_closing() or self.pipeline:
                return None
            if self._message == "head" and (self.cycle is None or self.cycle.response_complete):
                return "head"
            return "body" if self._message == "body" else None

        def _answer_timeout(self, phase: str, body: bytes) -> None:
            if phase == "body" and self.cycle.response_started:  # the cycle is this request's
                return
            content = [STATUS_LINE[408]]
            for name, value in self.server_state.default_headers + _timeout_headers(body):
                content.extend([name, b": ", value, b"\r\n"])
            self.transport.write(b"".join(content + [b"\r\n", body]))


class ServiceConfig(uvicorn.Config):
    """``uvicorn.Config`` with the request head and body deadlines of :class:`RequestDeadlines`
    (protocol :class:`DeadlineH11Protocol` unless ``http`` says otherwise)."""

    def __init__(self, app: Any, header_timeout_s: float = RequestDeadlines.header_timeout_s,
                 body_timeout_s: float = RequestDeadlines.body_timeout_s, **settings: Any) -> None:
        settings.setdefault("http", DeadlineH11Protocol)
        super().__init__(app, **settings)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s


def mtls_settings(cert_file: str, key_file: str, client_ca_file: str) -> Dict[str, Any]:
    """uvicorn's settings for mutual TLS: the server presents ``cert_file`` (its key ``key_file``) and refuses,
    in the handshake, every client that presents no certificate signed by ``client_ca_file``'s CA."""
    return {"ssl_certfile": cert_file, "ssl_keyfile": key_file, "ssl_ca_certs": client_ca_file,
            "ssl_cert_reqs": ssl.CERT_REQUIRED}


def fastest_stack() -> Tuple[str, Type[RequestDeadlines], Optional[str]]:
    """The event loop and HTTP protocol to serve with, and why not the fast pair when it is not:
    uvloop and httptools when both import, else asyncio and h11. Either protocol has the deadlines."""
    if HTTPTOOLS_MISSING is not None:
        return "asyncio", DeadlineH11Protocol, "httptools does not import (%s)" % HTTPTOOLS_MISSING
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        return "asyncio", DeadlineH11Protocol, "uvloop does not import (%s)" % exc
    return "uvloop", DeadlineHttpToolsProtocol, None


def serve(app: Any, on_listening: Optional[Callable[[List[Tuple[str, int]]], None]] = None,
          **settings: Any) -> int:
    """What ``uvicorn.run(app, **settings)`` does for one worker without reload, on the event-driven server
    with the loop and protocol :func:`fastest_stack` picks (``header_timeout_s`` and ``body_timeout_s`` are
    its settings). ``on_listening`` is called with the (host, port) pairs bound, once the server listens.

    Returns the exit status: 0, or uvicorn's startup-failure status when the server never started.
    """
    loop, protocol, missing = fastest_stack()
    if missing:
        log.info("HTTP on asyncio and h11: %s; uvloop and httptools take about 0.7x the CPU per request", missing)
    else:
        log.info("HTTP on uvloop and httptools")
    config = ServiceConfig(app, loop=loop, http=protocol, **settings)
    server = EventDrivenServer(config, on_listening)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE
