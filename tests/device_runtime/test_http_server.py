"""EventDrivenServer (edgeai_runtime.service.http_server): uvicorn without its 10 Hz main loop, on 127.0.0.1."""
from __future__ import annotations

import socket
import sys
import threading
import time
from email.utils import parsedate_to_datetime

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from edgeai_runtime.service import http_server
from edgeai_runtime.service.http_server import EventDrivenServer, ServiceConfig
from support.service import free_port


async def live(request):
    return JSONResponse({"live": True})


APP = Starlette(routes=[Route("/live", live)])


@pytest.fixture
def start():
    """Start an EventDrivenServer in a thread (no signal handlers there); stopped at the end."""
    running = []

    def _start(config=None, **settings):
        config = config or uvicorn.Config(APP, host="127.0.0.1", port=free_port(), log_level="warning",
                                          lifespan="off", **settings)
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


# -- the loop and parser serve() picks, and the deadlines on each parser --------------------------------------------

def test_fastest_stack_is_uvloop_and_httptools_when_both_import():
    pytest.importorskip("uvloop")
    pytest.importorskip("httptools")
    assert http_server.fastest_stack() == ("uvloop", http_server.DeadlineHttpToolsProtocol, None)


def test_without_uvloop_the_stack_is_asyncio_and_h11(monkeypatch):
    """Never httptools without uvloop, nor a parser without the deadlines: the reason is what serve() logs."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what `import uvloop` raises ImportError for
    loop, protocol, missing = http_server.fastest_stack()
    assert (loop, protocol) == ("asyncio", http_server.DeadlineH11Protocol)
    assert missing and ("uvloop does not import" in missing or "httptools does not import" in missing)
    assert issubclass(protocol, http_server.RequestDeadlines)


def parsers():
    found = [("asyncio", "DeadlineH11Protocol")]
    if http_server.HTTPTOOLS_MISSING is None:
        found.append(("uvloop", "DeadlineHttpToolsProtocol"))
    return found


@pytest.fixture(params=parsers(), ids=lambda p: p[1])
def deadline_server(request, start):
    """An EventDrivenServer with a 0.5 s head deadline on each parser (uvloop with httptools, as serve() runs it)."""
    loop, protocol = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    config = ServiceConfig(APP, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off",
                           loop=loop, http=getattr(http_server, protocol), header_timeout_s=0.5, body_timeout_s=0.5)
    return start(config=config)


def read_until_closed(sock):
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def test_pipelined_requests_are_all_answered(deadline_server):
    _server, _thread, base = deadline_server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nhost: a\r\n\r\n" * 2
                     + b"GET /live HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
        received = read_until_closed(sock)
    assert received.count(b"HTTP/1.1 200 OK\r\n") == 3 and b"408" not in received


def test_a_slow_second_head_on_a_kept_connection_gets_408(deadline_server):
    """The head deadline starts at a request's first byte, on a connection that has been answered before too."""
    _server, _thread, base = deadline_server
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nhost: a\r\n\r\n")
        first = b""
        while not first.endswith(b'{"live":true}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        sock.sendall(b"GET /live HTTP/1.1\r\nhos")
        sent = time.monotonic()
        received = read_until_closed(sock)
        took = time.monotonic() - sent
    assert 0.4 < took < 1.5, took
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), received
    assert received.endswith(b'{"error": "the request head did not arrive within 0.5 s"}')


def test_idle_uvloop_server_exits_when_asked(start):
    """EventDrivenServer on uvloop: should_exit set from another thread wakes the loop it waits on."""
    pytest.importorskip("uvloop")
    server, thread, base = start(loop="uvloop")
    assert httpx.get(base + "/live").status_code == 200
    time.sleep(0.3)
    asked = time.monotonic()
    server.should_exit = True
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - asked < 5
