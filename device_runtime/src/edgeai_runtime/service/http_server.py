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

:class:`DeadlineH11Protocol` adds the deadlines uvicorn lacks: its ``timeout_keep_alive`` closes a
connection that sends nothing between requests, but one that sends a request head or body slowly
(a byte a second) was kept open, and held its place under ``limit_concurrency``, for ever.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from email.utils import formatdate
from typing import Any, Callable, List, Optional, Tuple

import h11
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

Headers = List[Tuple[bytes, bytes]]


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


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for the request head and body, and for a new connection.

    * A new connection that sends nothing is closed after ``timeout_keep_alive``, like one that is
      idle between requests (uvicorn arms that timer only after a response).
    * Once the first byte of a request has come, its head must be complete within
      ``header_timeout_s`` and then its body within ``body_timeout_s``. Each is one deadline for the
      whole part, not a timer that every byte restarts, so a client sending a byte a second is
      closed as soon as a slow one. The client gets a 408 (unless its answer has started) and the
      connection is closed; an app waiting for the body sees the client disconnect.

    The two timeouts are read from the config (:class:`ServiceConfig`), else the defaults here.
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

    def _waiting_for(self) -> Optional[str]:
        """The part of a request that has begun to come and is not complete yet, if any."""
        if self.transport.is_closing():
            return None
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            return "body"
        if state is h11.IDLE and self.conn.trailing_data[0]:
            return "head"
        return None

    def _watch(self, phase: Optional[str]) -> None:
        """Keep one deadline, for ``phase``: left running while the phase lasts, replaced when it changes."""
        if phase == self._phase:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            timeout = self.header_timeout_s if phase == "head" else self.body_timeout_s
            self._deadline = self.loop.call_later(timeout, self._expired)

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if not answering:
            timeout = self.header_timeout_s if phase == "head" else self.body_timeout_s
            body = json.dumps({"error": "the request %s did not arrive within %g s" % (phase, timeout)}).encode()
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                       (b"connection", b"close")]
            try:
                for event in (h11.Response(status_code=408, reason=b"Request Timeout", headers=headers),
                              h11.Data(data=body), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(event) or b"")
            except h11.LocalProtocolError:  # the answer to this request is already out: just close
                pass
        self.transport.close()


class ServiceConfig(uvicorn.Config):
    """``uvicorn.Config`` with the request head and body deadlines of :class:`DeadlineH11Protocol` (its default)."""

    def __init__(self, app: Any, header_timeout_s: float = DeadlineH11Protocol.header_timeout_s,
                 body_timeout_s: float = DeadlineH11Protocol.body_timeout_s, **settings: Any) -> None:
        settings.setdefault("http", DeadlineH11Protocol)
        super().__init__(app, **settings)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s


def serve(app: Any, on_listening: Optional[Callable[[List[Tuple[str, int]]], None]] = None,
          **settings: Any) -> int:
    """What ``uvicorn.run(app, **settings)`` does for one worker without reload, on the event-driven server
    with :class:`DeadlineH11Protocol` (``header_timeout_s`` and ``body_timeout_s`` are its settings).
    ``on_listening`` is called with the (host, port) pairs bound, once the server listens.

    Returns the exit status: 0, or uvicorn's startup-failure status when the server never started.
    """
    config = ServiceConfig(app, **settings)
    server = EventDrivenServer(config, on_listening)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE
