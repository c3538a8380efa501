"""The steering service over HTTP: heartbeats, the fleet view, events, /steer, Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time

from aiohttp import ClientSession

from streamcdn.tokens import SigningKey
from tests.conftest import RedisServer, streamcdn_cmd
from tests.steering.conftest import (
    A2_KEY,
    SIGNING,
    StartSteering,
    beat_body,
    get_json,
    post_beat,
)


async def statuses(url: str) -> dict[str, str]:
    _, fleet = await get_json(f"{url}/fleet")
    return {a["id"]: a["status"] for a in fleet["appliances"]}


async def wait_for(predicate, timeout_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_signed_heartbeats_are_taken_and_spoofed_ones_refused(
    start_steering: StartSteering,
) -> None:
    url = (await start_steering()).make_url()
    assert await post_beat(url, beat_body("a1")) == (200, {"stored": True})
    assert (await post_beat(url, beat_body("a2"), key=A2_KEY))[0] == 200
    # a2 has its own key: the deployment's signing key cannot speak for it.
    assert (await post_beat(url, beat_body("a2")))[0] == 401
    forged = SigningKey.parse("k1:not-the-real-secret-0000")
    assert (await post_beat(url, beat_body("a1"), key=forged))[0] == 401
    assert (await post_beat(url, beat_body("a1"), key=None))[0] == 401
    assert (await post_beat(url, beat_body("nobody")))[0] == 404
    assert (await post_beat(url, b"{not json"))[0] == 400
    assert (await post_beat(url, b"[1, 2]"))[0] == 400
    assert (await post_beat(url, beat_body("a1", sent_at=time.time() - 3600)))[0] == 400
    assert (await post_beat(url, beat_body("a1", sent_at=float("nan"))))[0] == 400
    assert (await post_beat(url, beat_body("a1", pad="x" * 100_000)))[0] == 413
    # An older heartbeat than the one held is acknowledged but changes nothing.
    assert await post_beat(url, beat_body("a1", sent_at=time.time() - 5)) == (
        200,
        {"stored": False},
    )


async def test_an_appliance_that_misses_3_heartbeats_is_down_then_recovers(
    start_steering: StartSteering,
) -> None:
    url = (await start_steering()).make_url()
    assert (await statuses(url))["a1"] == "down"  # never heard from
    started = time.monotonic()
    await post_beat(url, beat_body("a1"))
    await wait_for(lambda: _is(url, "a1", "up"))
    await wait_for(lambda: _is(url, "a1", "down"))  # 3 x 0.1 s of silence
    assert 0.3 <= time.monotonic() - started < 2
    _, fleet = await get_json(f"{url}/fleet")
    a1 = next(a for a in fleet["appliances"] if a["id"] == "a1")
    assert "missed 3 heartbeats" in a1["reason"] and a1["last_seen"] is not None
    await post_beat(url, beat_body("a1", status="degraded", reasons=["disk full"]))
    await wait_for(lambda: _is(url, "a1", "degraded"))
    _, fleet = await get_json(f"{url}/fleet")
    assert next(a for a in fleet["appliances"] if a["id"] == "a1")["reason"] == "disk full"


async def _is(url: str, appliance: str, status: str) -> bool:
    return (await statuses(url))[appliance] == status


async def test_steer_ranks_by_network_and_health_and_refuses_bad_input(
    start_steering: StartSteering,
) -> None:
    url = (await start_steering()).make_url()

    async def keep_beating(stop: asyncio.Event, ids: list[str]) -> None:
        while not stop.is_set():
            for i in ids:
                await post_beat(url, beat_body(i), key=A2_KEY if i == "a2" else SIGNING)
            await asyncio.sleep(0.05)

    stop = asyncio.Event()
    beating = asyncio.create_task(keep_beating(stop, ["a1", "a2", "ix1"]))
    try:
        await wait_for(lambda: _all_up(url))
        status, body = await get_json(f"{url}/steer?title=t1&client_ip=10.1.2.3&n=3")
        assert status == 200 and body["site"] == "isp-a"
        ids = [a["id"] for a in body["appliances"]]
        assert sorted(ids[:2]) == ["a1", "a2"] and ids[2] == "ix1"  # then the fallback site
        _, body = await get_json(f"{url}/steer?title=t1&client_ip=192.0.2.9&n=1")
        assert body["site"] == "ix" and [a["id"] for a in body["appliances"]] == ["ix1"]
        _, body = await get_json(f"{url}/steer?title=t1&client_ip=fd00:a::1")
        assert body["site"] == "isp-a"
        _, body = await get_json(f"{url}/steer?title=t1&client_ip=8.8.8.8")
        assert body["site"] == "isp-a"  # unknown networks: the default site
        for query in (
            "title=t1&client_ip=10.1.2.300",
            "title=t1&client_ip=",
            "title=../etc&client_ip=10.0.0.1",
            "client_ip=10.0.0.1",
            "title=t1&client_ip=10.0.0.1&n=0",
            "title=t1&client_ip=10.0.0.1&n=abc",
            "title=t1&client_ip=10.0.0.1&n=999",
        ):
            status, body = await get_json(f"{url}/steer?{query}")
            assert status == 400 and body["error"], query
        # a1 stops beating: it leaves every ranking.
        stop.set()
        await beating
        stop = asyncio.Event()
        beating = asyncio.create_task(keep_beating(stop, ["a2", "ix1"]))
        await wait_for(lambda: _is(url, "a1", "down"))
        for title in ("t1", "t2", "t3", "t4"):
            _, body = await get_json(f"{url}/steer?title={title}&client_ip=10.0.0.1&n=5")
            assert [a["id"] for a in body["appliances"]] == ["a2", "ix1"]
        _, manifest = await get_json(f"{url}/content-steering/s1.json?title=t1&pathways=a1,a2,ix1")
        assert manifest["PATHWAY-PRIORITY"] == ["a2", "ix1"] and manifest["VERSION"] == 1
        assert manifest["RELOAD-URI"].startswith("/content-steering/s1.json?")
        status, _ = await get_json(f"{url}/content-steering/s1.json?title=t1&pathways=a1")
        assert status == 503  # nothing healthy in this session: the player keeps its last order
        status, _ = await get_json(f"{url}/content-steering/s!.json?title=t1&pathways=a2")
        assert status in (400, 404)
        status, _ = await get_json(f"{url}/content-steering/s1.json?title=t1&pathways=zz")
        assert status == 400
    finally:
        stop.set()
        await beating


async def _all_up(url: str) -> bool:
    return set((await statuses(url)).values()) == {"up"}


async def test_fleet_events_stream_changes_and_ticks(start_steering: StartSteering) -> None:
    url = (await start_steering()).make_url()
    events: list[tuple[str, dict]] = []
    async with ClientSession() as s, s.get(f"{url}/fleet/events") as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")

        async def read() -> None:
            event = None
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line.removeprefix("event: ")
                elif line.startswith("data: ") and event:
                    events.append((event, json.loads(line.removeprefix("data: "))))

        reader = asyncio.create_task(read())
        await post_beat(url, beat_body("ix1"))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not (
            any(e == "change" and d["id"] == "ix1" and d["status"] == "up" for e, d in events)
            and any(e == "tick" for e, _ in events)
        ):
            await asyncio.sleep(0.05)
        reader.cancel()
    kinds = [e for e, _ in events]
    assert kinds[0] == "fleet" and "change" in kinds and "tick" in kinds
    change = next(d for e, d in events if e == "change")
    assert change == change | {"id": "ix1", "from": "down", "status": "up"}
    tick = next(d for e, d in events if e == "tick")
    assert {a["id"] for a in tick["appliances"]} == {"a1", "a2", "ix1"}


async def test_two_replicas_share_one_view_through_redis_and_survive_it_going_away(
    start_steering: StartSteering, redis_server: RedisServer
) -> None:
    one = (await start_steering(redis_url=redis_server.url)).make_url()
    two = (await start_steering(redis_url=redis_server.url)).make_url()
    await post_beat(one, beat_body("a1", egress_bps=5e6))
    await wait_for(lambda: _is(two, "a1", "up"))  # written to one, seen by the other
    # Two replicas writing at once, newest first: the older write must not win.
    now = time.time()
    results = await asyncio.gather(
        post_beat(one, beat_body("ix1", sent_at=now, egress_bps=2e6)),
        post_beat(two, beat_body("ix1", sent_at=now - 0.5, egress_bps=1e6)),
    )
    assert sorted(r[1]["stored"] for r in results) in ([False, True], [True, True])
    await asyncio.sleep(0.2)
    for url in (one, two):
        _, fleet = await get_json(f"{url}/fleet")
        ix1 = next(a for a in fleet["appliances"] if a["id"] == "ix1")
        assert ix1["figures"]["egress_bps"] == 2e6
    # Redis goes away: both keep answering from their last view and say so.
    redis_server.stop()
    await asyncio.sleep(0.3)
    status, health = await get_json(f"{two}/health")
    assert status == 200 and health["status"] == "degraded" and not health["store"]["ok"]
    status, body = await get_json(f"{two}/steer?title=t1&client_ip=10.0.0.1")
    assert status == 200 and body["site"] == "isp-a"
    assert (await post_beat(one, beat_body("a1")))[0] == 503  # not stored, and it says so
    redis_server.start()
    await post_beat(one, beat_body("a1"))
    await wait_for(lambda: _healthy(two))


async def _healthy(url: str) -> bool:
    return (await get_json(f"{url}/health"))[1]["status"] == "ok"


def test_status_prints_the_fleet_and_serve_steering_needs_a_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = subprocess.run(
        streamcdn_cmd("serve", "steering"), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1 and "needs --config" in res.stderr
    res = subprocess.run(
        streamcdn_cmd("status", "--steering", "http://127.0.0.1:9"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 1 and res.stderr.count("\n") == 1


async def test_a_real_appliance_heartbeats_into_the_fleet(
    start_steering: StartSteering, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from appliance.config import ApplianceConfig
    from appliance.server import create_app as create_appliance
    from streamcdn import service

    url = (await start_steering()).make_url()
    config = ApplianceConfig(
        id="a1",
        cache_dir=tmp_path / "cache",
        upstreams=("http://127.0.0.1:9",),
        keys=(SIGNING,),
        steering=url,
        capacity_mbps=1000,
        heartbeat_interval_s=0.1,  # as the test deployment says
        limiter_lag_target_s=0.0,  # the loop is shared with the test: its delay is not load
    )
    appliance = await service.start(
        create_appliance(config), host="127.0.0.1", port=0, access_log=False
    )
    try:
        await wait_for(lambda: _is(url, "a1", "up"))
        _, fleet = await get_json(f"{url}/fleet")
        a1 = next(a for a in fleet["appliances"] if a["id"] == "a1")
        assert a1["figures"]["tiers"]["memory"]["capacity_bytes"] == config.mem_bytes
    finally:
        await appliance.close()
    # Stopped, it misses its heartbeats (every second) and goes down.
    await wait_for(lambda: _is(url, "a1", "down"))


async def test_status_shows_every_appliance_and_why_one_is_down(
    start_steering: StartSteering,
) -> None:
    url = (await start_steering()).make_url()

    async def keep_beating() -> None:  # a1 must stay up while the CLI starts (about 1 s)
        while True:
            await post_beat(url, beat_body("a1"))
            await asyncio.sleep(0.05)

    beating = asyncio.create_task(keep_beating())
    await wait_for(lambda: _is(url, "a1", "up"))
    proc = await asyncio.create_subprocess_exec(
        *streamcdn_cmd("status", "--steering", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "120"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    beating.cancel()
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    for fragment in ("a1", "a2", "ix1", "isp-a", "up", "down", "a2: down: no heartbeat yet"):
        assert fragment in text, fragment
