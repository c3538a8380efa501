"""The control plane over HTTP, against a real origin, steering and appliances."""

from __future__ import annotations

import json
import time
import urllib.parse
from pathlib import Path

import m3u8
from aiohttp import ClientSession

from control import server as control_server
from tests.conftest import TITLE, RedisServer
from tests.control.conftest import PASSWORD, Stack, call, sign_up_and_login, start_stack


async def test_accounts_and_logins_with_every_bad_input(stack: Stack) -> None:
    c = stack.control
    assert (await call("POST", f"{c}/accounts", {"email": "a@b.example", "password": PASSWORD}))[
        0
    ] == 201
    assert (await call("POST", f"{c}/accounts", {"email": "A@B.example", "password": PASSWORD}))[
        0
    ] == 409
    for body in ({"email": "nope", "password": PASSWORD}, {"email": "x@y.z", "password": "short"},
                 {"email": 3, "password": PASSWORD}, {}, [1]):  # fmt: skip
        assert (await call("POST", f"{c}/accounts", body))[0] == 400, body
    assert (await call("POST", f"{c}/accounts", raw=b"{not json"))[0] == 400
    assert (await call("POST", f"{c}/accounts", raw=b'{"a": "' + b"x" * 100_000 + b'"}'))[0] == 413
    status, body, _ = await call(
        "POST", f"{c}/sessions", {"email": "a@b.example", "password": PASSWORD}
    )
    assert status == 200 and body["token"] and body["expires_at"] > time.time()
    # A wrong password and an unknown email look the same.
    wrong = await call(
        "POST", f"{c}/sessions", {"email": "a@b.example", "password": "not it at all"}
    )
    unknown = await call(
        "POST", f"{c}/sessions", {"email": "zz@b.example", "password": "not it at all"}
    )
    assert wrong[0] == unknown[0] == 401 and wrong[1] == unknown[1]
    # Guessing is throttled: 429 with Retry-After, even with the right password then.
    for _ in range(5):
        await call("POST", f"{c}/sessions", {"email": "a@b.example", "password": "guess guess"})
    status, _, headers = await call(
        "POST", f"{c}/sessions", {"email": "a@b.example", "password": PASSWORD}
    )
    assert status == 429 and int(headers["Retry-After"]) > 0
    # Every answer carries the security headers.
    assert (
        headers["X-Content-Type-Options"] == "nosniff"
        and "default-src" in headers["Content-Security-Policy"]
    )


async def test_the_catalog_follows_the_origin_and_search_is_safe(stack: Stack) -> None:
    c = stack.control
    status, body, _ = await call("GET", f"{c}/catalog")
    assert status == 200 and body["total"] == 1
    entry = body["titles"][0]
    assert entry["id"] == TITLE and entry["duration_s"] > 0 and entry["renditions"]
    assert (await call("GET", f"{c}/catalog/{TITLE}"))[1]["name"] == entry["name"]
    assert (await call("GET", f"{c}/catalog/nope"))[0] == 404
    assert (await call("GET", f"{c}/catalog/..%2f..%2fetc"))[0] == 404
    status, body, _ = await call("GET", f"{c}/search?q=" + urllib.parse.quote("Tiny"))
    assert status == 200 and [r["id"] for r in body["results"]] == [TITLE]
    for q in (
        "'; DROP TABLE titles; --",
        'tiny" OR 1=1',
        "NEAR(a b)",
        "col:x",
        "\x00",
        "🙂",
        "ti*",
    ):
        status, body, _ = await call("GET", f"{c}/search?q=" + urllib.parse.quote(q))
        assert status == 200 and all(r["id"] == TITLE for r in body["results"]), q
    for query in ("limit=0", "limit=1000", "offset=-1", "limit=x"):
        assert (await call("GET", f"{c}/catalog?{query}"))[0] == 400, query


async def test_play_gives_a_session_master_whose_every_uri_resolves(stack: Stack) -> None:
    token = await sign_up_and_login(stack.control)
    status, body, _ = await call("POST", f"{stack.control}/play/{TITLE}", token=token)
    assert status == 200, body
    assert body["source"] == "steering" and body["appliances"][0] == "a1"  # a local viewer
    assert body["expires_at"] > time.time() and body["steering_uri"].startswith(stack.steering)
    async with ClientSession() as s:
        async with s.get(body["manifest_url"]) as r:
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            master = m3u8.loads(await r.text(), uri=body["manifest_url"])
        pathways = {p.stream_info.pathway_id for p in master.playlists}
        assert pathways == {"a1", "ix1"}
        uris = [p.absolute_uri for p in master.playlists] + [
            m.absolute_uri for m in master.media if m.uri
        ]
        segments = 0
        for uri in uris:  # every media playlist, and every segment in it, through an appliance
            assert uri.startswith(tuple(stack.appliances.values())), uri
            async with s.get(uri) as r:
                assert r.status == 200, uri
                media = m3u8.loads(await r.text(), uri=uri)
            for seg in [*media.segments, *([media.segment_map[0]] if media.segment_map else [])]:
                async with s.get(seg.absolute_uri) as r:
                    assert r.status == 200, seg.absolute_uri
                    await r.read()
                segments += 1
        assert segments > 10
        for url in body["urls"]:  # the direct masters, for players that fail over themselves
            async with s.get(url) as r:
                assert r.status == 200
        # The steering URI answers a manifest for this session.
        async with s.get(body["steering_uri"]) as r:
            manifest = await r.json()
            assert r.status == 200 and set(manifest["PATHWAY-PRIORITY"]) == {"a1", "ix1"}


async def test_play_refuses_what_it_must(stack: Stack) -> None:
    c = stack.control
    token = await sign_up_and_login(c)
    assert (await call("POST", f"{c}/play/{TITLE}"))[0] == 401
    status, _, headers = await call("POST", f"{c}/play/{TITLE}", token="forged-token")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert (await call("POST", f"{c}/play/no-such-title", token=token))[0] == 404
    assert (await call("POST", f"{c}/play/..", token=token))[0] in (404, 405)  # "/.." is "/"
    assert (await call("GET", f"{c}/sessions/not-a-session/master.m3u8"))[0] == 404
    assert (await call("GET", f"{c}/sessions/{'x' * 500}/master.m3u8"))[0] == 404
    # Plays are rate-limited per account: a burst of 10, then 429 with Retry-After.
    statuses = [(await call("POST", f"{c}/play/{TITLE}", token=token))[0] for _ in range(14)]
    assert statuses.count(200) >= 8 and statuses[-1] == 429  # the 404s above took tokens too


async def test_play_still_starts_with_steering_down(stack: Stack) -> None:
    token = await sign_up_and_login(stack.control)
    await stack.stop("steering")
    started = time.monotonic()
    status, body, _ = await call("POST", f"{stack.control}/play/{TITLE}", token=token)
    assert status == 200 and body["source"] == "static"
    assert time.monotonic() - started < 2  # a timeout, then the breaker: no long wait
    assert body["appliances"] == ["a1", "ix1"]  # the static ranking: own site first
    async with ClientSession() as s, s.get(body["urls"][0]) as r:
        assert r.status == 200  # appliances keep serving without the brain


async def test_events_are_kept_and_summarised(stack: Stack, tmp_path: Path) -> None:
    c = stack.control
    now = time.time()
    batch = {
        "events": [
            {"type": "start", "session": "s1", "ts": now - 60, "appliance": "a1", "title": TITLE,
             "bitrate_kbps": 800},
            {"type": "stall", "session": "s1", "ts": now - 30, "appliance": "a1", "stall_s": 1.5,
             "bitrate_kbps": 800},
            {"type": "end", "session": "s1", "ts": now, "appliance": "a1", "bitrate_kbps": 800},
        ]
    }  # fmt: skip
    status, body, _ = await call("POST", f"{c}/events", batch)
    assert status == 202 and body == {"accepted": 3}
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["start", "stall", "end"]
    status, summary, _ = await call("GET", f"{c}/events/summary")
    a1 = summary["appliances"]["a1"]
    assert status == 200 and a1["stalls"] == 1 and a1["avg_bitrate_kbps"] == 800
    bad = {"events": [{"type": "stall", "session": "s1", "ts": now, "stall_s": "long"}]}
    status, body, _ = await call("POST", f"{c}/events", bad)
    assert status == 400 and "events[0]" in body["error"]
    assert (await call("POST", f"{c}/events", raw=b"[" * 10_000))[0] == 400


async def test_the_per_address_limit_answers_429(stack: Stack, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from control.edge import RateLimiter

    app_control = stack.running["control"].app[control_server.CONTROL]
    monkeypatch.setattr(app_control, "ip_limits", RateLimiter(1.0, 3))
    statuses = [(await call("GET", f"{stack.control}/catalog"))[0] for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and statuses[-1] == 429
    assert (await call("GET", f"{stack.control}/health"))[0] == 200  # health is never limited


async def test_posters_come_from_the_origin(stack: Stack) -> None:
    _, body, _ = await call("GET", f"{stack.control}/catalog/{TITLE}")
    async with ClientSession() as s, s.get(f"{stack.control}{body['poster']}") as r:
        assert r.status == 200 and r.content_type == "image/jpeg"
        assert (await r.read())[:3] == b"\xff\xd8\xff"
    assert (await call("GET", f"{stack.control}/posters/nope"))[0] == 404


async def test_events_go_to_a_redis_stream_when_configured(
    tmp_path: Path,
    store,
    redis_server: RedisServer,  # type: ignore[no-untyped-def]
) -> None:
    import redis.asyncio as redis

    stack = await start_stack(tmp_path, store, redis_url=redis_server.url)
    try:
        now = time.time()
        batch = [{"type": "start", "session": "r1", "ts": now, "appliance": "a1"}]
        assert (await call("POST", f"{stack.control}/events", batch))[0] == 202
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        entries = await client.xrange("streamcdn:events")
        await client.aclose()
        assert [json.loads(e[1]["json"])["session"] for e in entries] == ["r1"]
        redis_server.stop()  # not acknowledged, so the player retries: nothing is lost
        status, _, headers = await call("POST", f"{stack.control}/events", batch)
        assert status == 503 and headers["Retry-After"] == "1"
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()


async def test_control_serves_https_with_a_certificate(tmp_path: Path) -> None:
    import ssl
    import subprocess

    from control.server import create_app
    from streamcdn import service
    from streamcdn.config import load
    from tests.control.conftest import deployment_text

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    ports = dict.fromkeys(("origin", "steering", "control", "a1", "ix1"), 9)
    (tmp_path / "deploy.toml").write_text(deployment_text(ports, tmp_path, None))
    deployment = load(tmp_path / "deploy.toml")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    app = create_app(deployment, db_path=tmp_path / "c.db", tls=True)
    running = await service.start(app, host="127.0.0.1", port=0, ssl_context=context)
    try:
        client = ssl.create_default_context(cafile=str(cert))
        client.check_hostname = False
        async with (
            ClientSession() as s,
            s.get(f"https://127.0.0.1:{running.port}/health", ssl=client) as r,
        ):
            assert r.status == 200
            assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        await running.close()
