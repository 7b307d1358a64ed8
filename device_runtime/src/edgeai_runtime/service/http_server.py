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
"""
from __future__ import annotations

import asyncio
import time
from email.utils import formatdate
from typing import Any, List, Optional, Tuple

import uvicorn
from uvicorn.config import STARTUP_FAILURE
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

    def __init__(self, config: uvicorn.Config) -> None:
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

    async def main_loop(self) -> None:
        if self.config.limit_max_requests is not None or self.config.callback_notify is not None:
            await super().main_loop()
            return
        self._exit_event = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        if not self.should_exit:  # an exit asked for before this point is seen here
            await self._exit_event.wait()


def serve(app: Any, **settings: Any) -> int:
    """What ``uvicorn.run(app, **settings)`` does for one worker without reload, on the event-driven server.

    Returns the exit status: 0, or uvicorn's startup-failure status when the server never started.
    """
    config = uvicorn.Config(app, **settings)
    server = EventDrivenServer(config)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    return 0 if server.started else STARTUP_FAILURE
