"""EventDrivenServer (edgeai_runtime.service.http_server): uvicorn without its 10 Hz main loop, on 127.0.0.1."""
from __future__ import annotations

import threading
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgeai_runtime.service.http_server import EventDrivenServer
from support.service import free_port


async def live(request):
    return JSONResponse({"live": True})


APP = Starlette(routes=[Route("/live", live)])


@pytest.fixture
def start():
    """Start an EventDrivenServer in a thread (no signal handlers there); stopped at the end."""
    running = []

    def _start(**settings):
        config = uvicorn.Config(APP, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off",
                                **settings)
        server = EventDrivenServer(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.started
        return server, thread, "http://127.0.0.1:%d" % config.port

    yield _start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=10)


def test_setting_should_exit_wakes_the_idle_server(start):
    """What uvicorn's signal handler and in-process callers do; the loop does not poll for it."""
    server, thread, _base = start()
    time.sleep(0.3)
    asked = time.monotonic()
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert time.monotonic() - asked < 5


def test_date_is_made_when_a_response_needs_it(start):
    base = start(headers=[("x-device", "sim-1")])[2]
    with httpx.Client(base_url=base) as client:
        first = client.get("/live")
        time.sleep(1.1)
        second = client.get("/live")
    dates = [parsedate_to_datetime(r.headers["date"]).timestamp() for r in (first, second)]
    assert dates[1] > dates[0]
    assert abs(dates[1] - time.time()) < 2
    assert second.headers["server"] == "uvicorn" and second.headers["x-device"] == "sim-1"


def test_no_date_header_when_turned_off(start):
    base = start(date_header=False)[2]
    reply = httpx.get(base + "/live")
    assert reply.status_code == 200 and "date" not in reply.headers and reply.headers["server"] == "uvicorn"


def test_limit_max_requests_still_ends_the_server(start):
    """uvicorn checks the limit on its tick: with a limit configured the stock loop runs."""
    _server, thread, base = start(limit_max_requests=1)
    assert httpx.get(base + "/live").status_code == 200
    thread.join(timeout=10)
    assert not thread.is_alive()
