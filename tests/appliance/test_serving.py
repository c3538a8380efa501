"""The appliance between players and the origin: hits, misses, coalescing, tokens, restarts."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from appliance.server import APPLIANCE
from streamcdn import service
from streamcdn.digest import digest_bytes
from streamcdn.tokens import SigningKey
from tests.appliance.conftest import (
    SEGMENT,
    MakeAppliance,
    origin_gets,
    signed,
    url_of,
)
from tests.conftest import TITLE


async def get(server: TestServer, path: str, **kw) -> tuple[int, CIMultiDict[str], bytes]:
    async with ClientSession() as s, s.get(f"{url_of(server)}{path}", **kw) as r:
        return r.status, r.headers.copy(), await r.read()


async def test_100_concurrent_cold_requests_make_one_origin_request(
    make_appliance: MakeAppliance, origin: TestServer, title_dir: Path
) -> None:
    appliance = await make_appliance()
    expected = (title_dir / SEGMENT).read_bytes()
    before = await origin_gets(origin)
    async with ClientSession() as s:

        async def one() -> tuple[str, bytes]:
            async with s.get(f"{url_of(appliance)}{signed(TITLE, SEGMENT)}") as r:
                assert r.status == 200
                return r.headers["X-Cache"], await r.read()

        results = await asyncio.gather(*(one() for _ in range(100)))
    assert await origin_gets(origin) - before == 1
    assert all(body == expected for _, body in results)
    caches = [c for c, _ in results]
    assert caches.count("MISS") == 1
    assert set(caches) <= {"MISS", "COALESCED", "HIT"}


async def test_hits_carry_cache_headers_ranges_and_validators(
    make_appliance: MakeAppliance, title_dir: Path
) -> None:
    appliance = await make_appliance(id="edge-7")
    path = signed(TITLE, SEGMENT)
    data = (title_dir / SEGMENT).read_bytes()
    status, headers, body = await get(appliance, path)
    assert (status, headers["X-Cache"], headers["X-Served-By"]) == (200, "MISS", "edge-7")
    status, headers, body = await get(appliance, path)
    assert (status, headers["X-Cache"], body) == (200, "HIT", data)
    assert headers["ETag"] == f'"{digest_bytes(data)}"'
    assert headers["X-Content-Digest"] == f"xxh3-128={digest_bytes(data)}"
    assert int(headers["Age"]) >= 0
    status, headers, body = await get(appliance, path, headers={"Range": "bytes=10-19"})
    assert (status, body, headers["Content-Range"]) == (
        206,
        data[10:20],
        f"bytes 10-19/{len(data)}",
    )
    status, headers, _ = await get(appliance, path, headers={"Range": "bytes=99999999-"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    status, headers, _ = await get(appliance, path, headers={"Range": "bytes=5-x"})
    assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
    etag = headers["ETag"]
    status, _, body = await get(appliance, path, headers={"If-None-Match": etag})
    assert (status, body) == (304, b"")


async def test_a_range_on_a_cold_object_is_served_once_verified(
    make_appliance: MakeAppliance, title_dir: Path
) -> None:
    appliance = await make_appliance()
    data = (title_dir / SEGMENT).read_bytes()
    status, headers, body = await get(
        appliance, signed(TITLE, SEGMENT), headers={"Range": "bytes=-100"}
    )
    assert (status, body, headers["X-Cache"]) == (206, data[-100:], "MISS")


def raw_token(fields: str) -> str:
    """A token with these fields, as a forger would send it: base64url, no padding."""
    return base64.urlsafe_b64encode(fields.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("make_path", "reason"),
    [
        (lambda: signed(TITLE, SEGMENT, ttl_s=-5), "expired"),
        (
            lambda: signed("other", SEGMENT).replace("/titles/other/", f"/titles/{TITLE}/"),
            "does not cover",
        ),
        (lambda: signed(TITLE, SEGMENT, cidr="10.9.0.0/16"), "this address"),
        (
            lambda: signed(TITLE, SEGMENT, key=SigningKey.parse("k1:an-attackers-own-secret")),
            "bad signature",
        ),
        (
            lambda: signed(TITLE, SEGMENT, key=SigningKey.parse("zz:an-attackers-own-secret")),
            "unknown key",
        ),
        (lambda: f"/s/not-a-token/titles/{TITLE}/{SEGMENT}", "malformed"),
        # Fields in UTF-8 beyond ASCII: hmac.compare_digest raised TypeError (a 500).
        (
            lambda: (
                f"/s/{raw_token(f'v1~9999999999~k1~~titles/{TITLE}/~é')}/titles/{TITLE}/{SEGMENT}"
            ),
            "malformed",
        ),
        (lambda: f"/titles/{TITLE}/{SEGMENT}", "signed URL required"),
    ],
)
async def test_bad_tokens_get_403(
    make_appliance: MakeAppliance, origin: TestServer, make_path, reason: str
) -> None:
    appliance = await make_appliance()
    before = await origin_gets(origin)
    status, _, body = await get(appliance, make_path())
    assert status == 403 and reason.encode() in body
    assert await origin_gets(origin) == before


async def test_open_appliances_serve_unsigned_urls_and_a_cidr_token_from_its_network(
    make_appliance: MakeAppliance,
) -> None:
    appliance = await make_appliance(open=True)
    assert (await get(appliance, f"/titles/{TITLE}/master.m3u8"))[0] == 200
    assert (await get(appliance, signed(TITLE, SEGMENT, cidr="127.0.0.0/8")))[0] == 200


@pytest.mark.parametrize(
    "target",
    [
        f"/titles/{TITLE}/../../etc/passwd",
        f"/titles/{TITLE}/%2e%2e/%2e%2e/etc/passwd",
        f"/titles/{TITLE}/360p/..%2f..%2fmanifest.json",
        "/titles/..%2f..%2fetc/passwd",
        f"/titles/{TITLE}//etc/passwd",
    ],
)
async def test_traversal_is_refused(make_appliance: MakeAppliance, target: str) -> None:
    appliance = await make_appliance(open=True)
    reader, writer = await asyncio.open_connection(appliance.host, appliance.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    assert int(data.split(b" ", 2)[1]) in (400, 403, 404)
    assert b"root:" not in data


async def test_unknown_titles_are_remembered_briefly(
    make_appliance: MakeAppliance, origin: TestServer
) -> None:
    appliance = await make_appliance(negative_ttl_s=60)
    before = await origin_gets(origin, "404")
    for i in range(20):
        status, _headers, _ = await get(appliance, signed("nosuch", f"360p/seg_{i:05d}.m4s"))
        assert status == 404
    assert await origin_gets(origin, "404") - before == 1


async def test_a_restarted_appliance_is_warm_and_checks_what_it_loaded(
    make_appliance: MakeAppliance, origin: TestServer, title_dir: Path
) -> None:
    first = await make_appliance()
    path = signed(TITLE, SEGMENT)
    await get(first, path)
    await wait_for_disk(first, 1)
    await first.close()
    before = await origin_gets(origin)
    second = await make_appliance()
    status, headers, body = await get(second, path)
    assert (status, headers["X-Cache"], body) == (200, "HIT", (title_dir / SEGMENT).read_bytes())
    assert await origin_gets(origin) == before


async def test_a_corrupted_disk_object_is_never_served_and_is_refilled(
    make_appliance: MakeAppliance, origin: TestServer, title_dir: Path, tmp_path: Path
) -> None:
    first = await make_appliance()
    path = signed(TITLE, SEGMENT)
    await get(first, path)
    await wait_for_disk(first, 1)
    await first.close()
    [obj] = (tmp_path / "cache-a1" / "objects").glob("*/*.obj")
    raw = bytearray(obj.read_bytes())
    raw[-1000] ^= 0x55  # flip bits in the body; the length stays right
    obj.write_bytes(bytes(raw))
    before = await origin_gets(origin)
    second = await make_appliance()
    status, headers, body = await get(second, path)
    assert status == 200 and body == (title_dir / SEGMENT).read_bytes()
    assert headers["X-Cache"] == "MISS"
    assert await origin_gets(origin) == before + 1


async def wait_for_disk(server: TestServer, objects: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        _, _, body = await get(server, "/health")
        if json.loads(body)["tiers"]["disk"]["objects"] >= objects:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the object never reached the disk tier")


async def test_misses_go_through_the_parent_appliance(
    make_appliance: MakeAppliance, origin: TestServer, tmp_path: Path, title_dir: Path
) -> None:
    parent = await make_appliance(id="ix1", cache_dir=tmp_path / "cache-ix1")
    child = await make_appliance(id="a1", upstreams=(url_of(parent), url_of(origin)))
    before = await origin_gets(origin)
    status, _headers, body = await get(child, signed(TITLE, SEGMENT))
    assert (status, body) == (200, (title_dir / SEGMENT).read_bytes())
    other = await make_appliance(
        id="a2", cache_dir=tmp_path / "cache-a2", upstreams=(url_of(parent), url_of(origin))
    )
    assert (await get(other, signed(TITLE, SEGMENT)))[0] == 200
    assert await origin_gets(origin) - before == 1  # the second child was filled by the parent


async def test_a_dead_upstream_is_skipped(
    make_appliance: MakeAppliance, origin: TestServer, unused_tcp_port: int
) -> None:
    appliance = await make_appliance(
        upstreams=(f"http://127.0.0.1:{unused_tcp_port}", url_of(origin))
    )
    for rel in ("master.m3u8", SEGMENT, "360p/seg_00001.m4s"):
        assert (await get(appliance, signed(TITLE, rel)))[0] == 200


async def bad_upstream(aiohttp_server, body: bytes, *, digest: str, length: int) -> TestServer:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"X-Content-Digest": f"xxh3-128={digest}", "Content-Type": "video/iso.segment"}
        )
        resp.content_length = length
        await resp.prepare(request)
        await resp.write(body)
        if len(body) < length:
            request.transport.close()  # hang up early: a truncated body
        return resp

    app = web.Application()
    app.router.add_get("/titles/{title}/{path:.+}", handler)
    return await aiohttp_server(app)


@pytest.mark.parametrize("case", ["wrong digest", "truncated"])
async def test_a_bad_upstream_body_is_never_cached_or_delivered_whole(
    aiohttp_server, make_appliance: MakeAppliance, case: str
) -> None:
    body = b"x" * 300_000
    if case == "wrong digest":
        up = await bad_upstream(aiohttp_server, body, digest="0" * 32, length=len(body))
    else:
        up = await bad_upstream(
            aiohttp_server, body[:1000], digest=digest_bytes(body), length=len(body)
        )
    appliance = await make_appliance(upstreams=(url_of(up),))
    for _ in range(2):
        async with ClientSession() as s, s.get(f"{url_of(appliance)}{signed(TITLE, SEGMENT)}") as r:
            if r.status == 200:  # streaming had begun: the body must come up short
                with pytest.raises(Exception):  # noqa: B017 - any client error will do
                    await r.read()
            else:
                assert r.status == 502
    health = (await get(appliance, "/health"))[2]
    assert json.loads(health)["tiers"]["disk"]["objects"] == 0


async def test_an_upstream_body_that_trickles_fails_is_counted_and_not_cached(
    aiohttp_server, make_appliance: MakeAppliance
) -> None:
    body = b"t" * 300_000

    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"X-Content-Digest": f"xxh3-128={digest_bytes(body)}"})
        resp.content_length = len(body)
        await resp.prepare(request)  # the head at once, then 50 bytes a second
        for i in range(0, len(body), 10):
            await resp.write(body[i : i + 10])
            await asyncio.sleep(0.2)
        return resp

    app = web.Application()
    app.router.add_get("/titles/{title}/{path:.+}", trickle)
    up = await aiohttp_server(app)
    appliance = await make_appliance(upstreams=(url_of(up),), read_ahead_segments=0)
    started = time.monotonic()
    async with ClientSession() as s, s.get(f"{url_of(appliance)}{signed(TITLE, SEGMENT)}") as r:
        assert r.status == 200
        with pytest.raises(Exception):  # noqa: B017 - cut short of Content-Length
            await r.read()
    # Failed after the grace and well before the read timeout (which a trickle never trips).
    assert time.monotonic() - started < 4.0
    health = json.loads((await get(appliance, "/health"))[2])
    assert health["upstreams"][url_of(up)]["consecutive_failures"] == 1
    assert health["tiers"]["memory"]["objects"] == health["tiers"]["disk"]["objects"] == 0


async def test_read_ahead_brings_the_next_segment_before_it_is_asked_for(
    make_appliance: MakeAppliance, origin: TestServer
) -> None:
    appliance = await make_appliance(read_ahead_segments=1)
    assert (await get(appliance, signed(TITLE, "360p/index.m3u8")))[0] == 200
    assert (await get(appliance, signed(TITLE, "360p/seg_00000.m4s")))[0] == 200
    deadline = time.monotonic() + 5
    while json.loads((await get(appliance, "/health"))[2])["tiers"]["memory"]["objects"] < 3:
        assert time.monotonic() < deadline, "segment 1 was never read ahead"
        await asyncio.sleep(0.02)
    status, headers, _ = await get(appliance, signed(TITLE, "360p/seg_00001.m4s"))
    assert (status, headers["X-Cache"]) == (200, "HIT")  # already in memory: no wait for it


async def slow_upstream(aiohttp_server, delay_s: float, *, only_first: bool = False) -> TestServer:
    calls = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        if not only_first or len(calls) == 1:
            await asyncio.sleep(delay_s)
        body = b"slow" * 1000
        return web.Response(
            body=body, headers={"X-Content-Digest": f"xxh3-128={digest_bytes(body)}"}
        )

    app = web.Application()
    app.router.add_get("/titles/{title}/{path:.+}", handler)
    return await aiohttp_server(app)


async def test_the_limiter_sheds_with_503_and_retry_after_when_full(
    aiohttp_server, make_appliance: MakeAppliance
) -> None:
    up = await slow_upstream(aiohttp_server, 1.5)
    appliance = await make_appliance(
        upstreams=(url_of(up),),
        limiter_initial=8,
        read_ahead_segments=0,
        upstream_head_timeout_s=5.0,  # slow to answer, but within its deadline
    )
    slow = [
        asyncio.create_task(get(appliance, signed(TITLE, f"360p/seg_{i:05d}.m4s")))
        for i in range(8)
    ]
    await asyncio.sleep(0.5)  # all 8 slots are now held by requests waiting on upstream
    status, headers, _ = await get(appliance, signed(TITLE, "master.m3u8"))
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert [s for s, _, _ in await asyncio.gather(*slow)] == [200] * 8
    health = json.loads((await get(appliance, "/health"))[2])
    assert health["limiter"]["shed_total"] >= 1
    assert (await get(appliance, signed(TITLE, "master.m3u8")))[0] == 200  # recovered


async def test_a_stuck_fill_is_replaced_after_the_lock_timeout_and_cached(
    aiohttp_server, make_appliance: MakeAppliance
) -> None:
    up = await slow_upstream(aiohttp_server, 5.0, only_first=True)  # the first fetch hangs
    appliance = await make_appliance(
        upstreams=(url_of(up),), lock_timeout_s=0.5, read_ahead_segments=0
    )
    first = asyncio.create_task(get(appliance, signed(TITLE, SEGMENT)))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    second = await get(appliance, signed(TITLE, SEGMENT))
    # The first waiter to give up on the stuck fill replaced it; the other joined that.
    assert second[0] == 200 and time.monotonic() - started < 2.0
    assert (await first)[0] == 200 and time.monotonic() - started < 2.0
    assert {second[1]["X-Cache"], (await first)[1]["X-Cache"]} == {"MISS", "COALESCED"}
    health = json.loads((await get(appliance, "/health"))[2])
    assert health["fills_replaced"] == 1 and health["fills_in_flight"] == 0
    third = await get(appliance, signed(TITLE, SEGMENT))
    assert (third[0], third[1]["X-Cache"]) == (200, "HIT")  # the replacement was cached


async def test_a_full_disk_degrades_but_keeps_serving(
    make_appliance: MakeAppliance, tiny_tmpfs: Path, title_dir: Path
) -> None:
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # leave less than one segment free
    appliance = await make_appliance(cache_dir=tiny_tmpfs / "cache")
    for rel in (SEGMENT, "360p/seg_00001.m4s"):
        status, _, body = await get(appliance, signed(TITLE, rel))
        assert status == 200 and body == (title_dir / rel).read_bytes()
    deadline = time.monotonic() + 5
    while (health := json.loads((await get(appliance, "/health"))[2]))["status"] == "ok":
        assert time.monotonic() < deadline, "the failed disk write was never reported"
        await asyncio.sleep(0.05)
    assert health["status"] == "degraded" and "disk" in health["reasons"][0]
    status, headers, _ = await get(appliance, signed(TITLE, SEGMENT))
    assert (status, headers["X-Cache"]) == (200, "HIT")  # still served, from memory


async def test_slow_and_oversized_requests_do_not_hold_connections(
    make_appliance: MakeAppliance,
) -> None:
    from appliance.config import ApplianceConfig
    from appliance.server import create_app

    appliance = await make_appliance()
    reader, writer = await asyncio.open_connection(appliance.host, appliance.port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert (await reader.read(100)).startswith(b"HTTP/1.0 400")
    writer.close()
    # Half a request, then silence: closed after the keep-alive timeout (15 s when served by
    # `streamcdn serve`; 1 s here), so slow-header clients cannot pile up connections.
    config = ApplianceConfig(
        id="slow",
        cache_dir=appliance.app[APPLIANCE].config.cache_dir,
        upstreams=("http://127.0.0.1:9",),
        open=True,
    )
    server = await service.start(
        create_app(config), host="127.0.0.1", port=0, access_log=False, keepalive_timeout_s=1
    )
    try:
        for half in (b"GET /health HTTP/1.1\r\nHost: x\r\n", b"GET /titles/t/a.m3u8 HTTP/1.1\r\n"):
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(half)
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # the server hung up
            assert time.monotonic() - started < 3
            writer.close()
    finally:
        await server.close()


async def test_disk_hits_go_out_zero_copy_whole_and_in_ranges(
    make_appliance: MakeAppliance, title_dir: Path
) -> None:
    # A memory tier too small for a segment: every hit after the fill comes from disk.
    appliance = await make_appliance(mem_bytes=10_000, read_ahead_segments=0)
    path = signed(TITLE, SEGMENT)
    data = (title_dir / SEGMENT).read_bytes()
    assert (await get(appliance, path))[2] == data
    await wait_for_disk(appliance, 1)
    async with ClientSession() as s:  # several requests on one keep-alive connection
        for headers, expected in (
            ({}, data),
            ({"Range": "bytes=1000-"}, data[1000:]),
            ({"Range": "bytes=7-7"}, data[7:8]),
            ({}, data),
        ):
            async with s.get(f"{url_of(appliance)}{path}", headers=headers) as r:
                assert r.headers["X-Cache"] == "HIT"
                assert await r.read() == expected
        async with s.head(f"{url_of(appliance)}{path}") as r:
            assert int(r.headers["Content-Length"]) == len(data) and await r.read() == b""
    health = json.loads((await get(appliance, "/health"))[2])
    assert health["byte_hit_ratio"]["disk"] > 0.5 and health["tiers"]["memory"]["objects"] <= 1
