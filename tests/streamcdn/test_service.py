"""The plumbing every server shares, on a tiny app built inline."""

import asyncio
import json
import logging
import socket
import time

from aiohttp import web

from streamcdn import service


def tiny_app() -> web.Application:
    app = service.create_app("tiny")

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    async def slow_down(request: web.Request) -> web.Response:
        raise web.HTTPTooManyRequests(text="slow down", headers={"Retry-After": "3"})

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"bytes": len(await request.read())})

    app.router.add_get("/boom", boom)
    app.router.add_get("/limited", slow_down)
    app.router.add_post("/echo", echo)
    return app


async def test_errors_are_small_json_bodies_without_tracebacks(aiohttp_client) -> None:
    client = await aiohttp_client(tiny_app())
    r = await client.get("/boom")
    assert r.status == 500
    body = await r.text()
    assert json.loads(body) == {"error": "internal error", "status": 500}
    assert "secret internals" not in body and "Traceback" not in body
    r = await client.get("/nowhere")
    assert (r.status, await r.json()) == (404, {"error": "Not Found", "status": 404})
    r = await client.get("/echo")
    assert r.status == 405 and r.headers["Allow"] == "POST"
    r = await client.get("/limited")
    assert (r.status, r.headers["Retry-After"]) == (429, "3")
    assert (await r.json())["error"] == "slow down"


async def test_request_bodies_are_bounded(aiohttp_client) -> None:
    client = await aiohttp_client(tiny_app())
    r = await client.post("/echo", data=b"x" * (service.MAX_REQUEST_BYTES + 1))
    assert r.status == 413


async def test_metrics_label_routes_not_raw_paths(aiohttp_client) -> None:
    client = await aiohttp_client(tiny_app())
    for i in range(3):
        await client.get(f"/nowhere/{i}")
    metrics = await (await client.get("/metrics")).text()
    assert 'route="unmatched",status="404"} 3.0' in metrics
    assert "/nowhere/1" not in metrics


def test_json_log_lines_carry_extra_fields() -> None:
    record = logging.LogRecord("streamcdn.x", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.title = "calm"
    line = json.loads(service.JsonFormatter().format(record))
    assert line["msg"] == "hello you" and line["title"] == "calm" and line["level"] == "info"


async def test_a_burst_of_connections_waits_in_the_backlog_not_for_a_syn_retry() -> None:
    """500 players connecting while the server's loop is busy are all accepted when it frees.

    With asyncio's default backlog (100) the kernel drops the SYNs past it, and those
    clients connect only after their 1 s SYN retransmit.
    """
    running = await service.start(tiny_app(), host="127.0.0.1", port=0, access_log=False)
    clients: list[socket.socket] = []
    try:
        for _ in range(500):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", running.port))
            clients.append(s)
        started = time.monotonic()
        time.sleep(0.3)  # the loop is busy: nothing is accepted meanwhile
        pending = set(clients)
        while pending and time.monotonic() - started < 2.5:
            await asyncio.sleep(0.01)
            pending = {s for s in pending if not _established(s)}
        late = time.monotonic() - started
        assert not pending, f"{len(pending)} of 500 not connected after {late:.1f} s"
        assert late < 0.9, f"the last connection took {late:.2f} s (a SYN retry is 1 s)"
    finally:
        for s in clients:
            s.close()
        await running.close()


def _established(s: socket.socket) -> bool:
    """The client's side of the handshake is done (tcpi_state, TCP_INFO's first byte)."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_ESTABLISHED


TCP_ESTABLISHED = 1  # include/net/tcp_states.h
