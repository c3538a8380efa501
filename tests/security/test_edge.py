"""What every server does with hostile requests: sizes, slow clients, redirects, the cache
key, and URLs it could be made to fetch."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import xxhash
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from control.server import create_app as create_control
from origin.server import create_app as create_origin
from origin.store import TitleStore
from steering.server import create_app as create_steering
from streamcdn import service
from streamcdn.tokens import SIGNATURE_HEADER, sign_body
from tests.appliance.conftest import SEGMENT, MakeAppliance, origin_gets, signed, url_of
from tests.conftest import TITLE
from tests.control.conftest import Stack
from tests.security.conftest import Canary

ADMIN = "security-admin-key-0123456789"


def servers(stack: Stack) -> dict[str, str]:
    return {
        "control": stack.control,
        "steering": stack.steering,
        "origin": stack.origin,
        **stack.appliances,
    }


async def raw(url: str, request: bytes, *, timeout_s: float = 5) -> bytes:
    """Send ``request`` as is (no client normalising it) and read until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


async def test_big_headers_and_bodies_are_refused_before_they_are_buffered(stack: Stack) -> None:
    big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    many_lines = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n"
    for name, url in servers(stack).items():
        for request in (big_header, many_lines):
            assert status_of(await raw(url, request)) in (400, 431), name
        async with ClientSession() as s, s.get(f"{url}/health") as r:
            assert r.status == 200, name  # and the server is fine
    # Bodies: streamed without a length, 10 MB, to the routes that take JSON.

    async def ten_mb():  # type: ignore[no-untyped-def]
        for _ in range(160):
            yield b"x" * 65536

    for url, status in (
        (f"{stack.control}/accounts", 413),
        (f"{stack.control}/events", 413),
        (f"{stack.steering}/heartbeat", 413),
        (f"{stack.appliances['a1']}/admin/fill", 403),  # no admin key here: never read
    ):
        started = time.monotonic()
        async with ClientSession() as s, s.post(url, data=ten_mb()) as r:
            assert r.status == status, url
        assert time.monotonic() - started < 5


async def dribble(writer: asyncio.StreamWriter) -> None:
    for _ in range(30):
        await asyncio.sleep(0.3)
        writer.write(b"X-Slow: 1\r\n")


async def test_slow_clients_are_cut_off_by_every_server(stack: Stack, store: TitleStore) -> None:
    """Half a request, or a header line every 0.3 s: the connection is closed when the
    keep-alive timeout passes (15 s in `streamcdn serve`; 1 s here). The appliance's own
    front protocol is tested in tests/appliance/test_serving.py."""
    d = stack.deployment
    assert d.control_db is not None
    apps = {
        "origin": create_origin(store.root),
        "steering": create_steering(d),
        "control": create_control(d, db_path=d.control_db.with_name("slow.db")),
    }
    for name, app in apps.items():
        running = await service.start(
            app, host="127.0.0.1", port=0, access_log=False, keepalive_timeout_s=1
        )
        try:
            for drip in (False, True):
                reader, writer = await asyncio.open_connection(running.host, running.port)
                writer.write(b"POST /accounts HTTP/1.1\r\nHost: x\r\n")
                started = time.monotonic()

                task = asyncio.create_task(dribble(writer)) if drip else None
                assert await asyncio.wait_for(reader.read(), 5) == b"", name
                assert time.monotonic() - started < 3, (name, drip)
                if task:
                    task.cancel()
                writer.close()
        finally:
            await running.close()


async def test_no_server_redirects_anywhere(stack: Stack) -> None:
    paths = [
        "//evil.example/", "/\\evil.example/", "/%2f%2fevil.example/", "/watch/", "/catalog/",
        "/watch/..%2f..%2f", "/static/..%2f..%2fcontrol%2fserver.py", "/posters/..%2f..%2fx",
        f"/s/x/titles/{TITLE}/../../../../etc/passwd", f"/titles/{TITLE}/", "/titles",
        "/dashboard/", "/content-steering/s1.json?title=tiny&pathways=//evil.example",
    ]  # fmt: skip
    for name, url in servers(stack).items():
        for path in paths:
            answer = await raw(
                url,
                f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode(),
            )
            assert not 300 <= status_of(answer) < 400, (name, path)
            assert b"\r\nlocation:" not in answer.lower(), (name, path)
            assert b"root:" not in answer and b"create_app" not in answer, (name, path)
    # Steering's RELOAD-URI is a path on steering itself, whatever Host says.
    async with (
        ClientSession() as s,
        s.get(
            f"{stack.steering}/content-steering/s1.json?title={TITLE}&pathways=a1,ix1",
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        ) as r,
    ):
        reload_uri = (await r.json())["RELOAD-URI"]
        assert reload_uri.startswith("/content-steering/") and "evil" not in reload_uri


async def test_query_strings_and_headers_neither_poison_nor_bust_the_cache(
    make_appliance: MakeAppliance, origin: TestServer, store: TitleStore
) -> None:
    appliance = await make_appliance()
    expected = store.manifest(TITLE)["files"][SEGMENT]["xxh3-128"]
    before = await origin_gets(origin)
    hostile = {
        "Host": "evil.example",
        "X-Forwarded-Host": "evil.example",
        "X-Original-URL": "/titles/other/master.m3u8",
        "X-Rewrite-URL": "/titles/other/master.m3u8",
        "X-HTTP-Method-Override": "DELETE",
        "Accept-Encoding": "gzip, br",
        "Forwarded": "host=evil.example",
    }
    busy = 0  # 503 + Retry-After (an overloaded CI machine): retried, as players do
    async with ClientSession() as s:
        for i in range(20):
            url = f"{url_of(appliance)}{signed(TITLE, SEGMENT)}?cb={i}&x=%3Cscript%3E"
            for _ in range(3):
                async with s.get(url, headers=hostile) as r:
                    body = await r.read()
                if r.status != 503:
                    break
                busy += 1
                await asyncio.sleep(float(r.headers["Retry-After"]))
            assert r.status == 200 and xxhash.xxh3_128_hexdigest(body) == expected
            assert "evil" not in str(r.headers) and "script" not in str(r.headers)
        async with s.get(f"{url_of(appliance)}{signed(TITLE, SEGMENT)}") as r:
            body = await r.read()
            assert r.headers["X-Cache"] == "HIT" and r.headers.get("Content-Encoding") is None
            assert xxhash.xxh3_128_hexdigest(body) == expected
    # One fill: query strings do not bust the cache (a retried 503 may have cost one more).
    assert 1 <= await origin_gets(origin) - before <= 1 + busy


async def test_an_upstream_redirect_is_not_followed(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    landed: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{request.url.port}/landed")

    async def land(request: web.Request) -> web.Response:
        landed.append(request.path)
        return web.Response(text="followed")

    app = web.Application()
    app.router.add_get("/landed", land)
    app.router.add_get("/titles/{tail:.*}", redirect)
    upstream = TestServer(app)
    await upstream.start_server()
    try:
        appliance = await make_appliance(upstreams=(url_of(upstream),), cache_dir=tmp_path / "r")
        async with ClientSession() as s, s.get(url_of(appliance) + signed(TITLE, SEGMENT)) as r:
            assert r.status >= 500 and "followed" not in await r.text()
        assert landed == []
    finally:
        await upstream.close()


async def test_nothing_a_request_says_makes_a_server_fetch_it(
    stack: Stack, make_appliance: MakeAppliance, canary: Canary, tmp_path: Path
) -> None:
    """Fills fetch only configured upstreams; steering only hands out configured URLs, even
    when a (validly signed) heartbeat claims another; control fetches only its origin."""
    appliance = await make_appliance(admin_key=ADMIN, cache_dir=tmp_path / "f")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with ClientSession() as s:
        for body in (
            {"titles": [canary.url]},
            {"titles": [f"{TITLE}/../../{canary.url}"]},
            {"titles": [TITLE], "renditions": [canary.url]},
        ):
            async with s.post(f"{url_of(appliance)}/admin/fill", json=body, headers=auth) as r:
                assert r.status == 400, body
        body = {"titles": [TITLE], "upstream": canary.url, "url": canary.url}
        async with s.post(f"{url_of(appliance)}/admin/fill", json=body, headers=auth) as r:
            assert r.status == 202  # unknown fields are ignored: it fills from its upstream
        beat = {"id": "a1", "status": "ok", "sent_at": time.time(), "url": canary.url}
        data = json.dumps(beat).encode()
        headers = {SIGNATURE_HEADER: sign_body(data, stack.deployment.signing_keys[0])}
        async with s.post(f"{stack.steering}/heartbeat", data=data, headers=headers) as r:
            assert r.status == 200
        configured = {a.url for a in stack.deployment.appliances}
        for query in (
            f"title={TITLE}",
            f"title={canary.url}",
            f"title={TITLE}&client_ip={canary.url}",
        ):
            async with s.get(f"{stack.steering}/steer?{query}") as r:
                answer = await r.json()
            if r.status == 200:
                assert {a["url"] for a in answer["appliances"]} <= configured
            else:
                assert r.status == 400, query
        async with s.post(f"{stack.control}/play/{canary.url}") as r:
            assert r.status in (401, 404)
        async with s.get(f"{stack.control}/posters/{canary.url.replace('/', '%2F')}") as r:
            assert r.status == 404
        await asyncio.sleep(0.5)  # the fill job runs meanwhile
    assert canary.hits == []
