"""Heartbeats reach a steering endpoint every second, signed, with the health figures."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

from aiohttp import web

from streamcdn.tokens import SIGNATURE_HEADER, key_ring, verify_body
from tests.appliance.conftest import KEY, MakeAppliance, signed, url_of
from tests.appliance.test_serving import get
from tests.conftest import TITLE


async def test_heartbeats_are_signed_and_carry_health(
    aiohttp_server, make_appliance: MakeAppliance
) -> None:
    received: list[tuple[bytes, str]] = []

    async def heartbeat(request: web.Request) -> web.Response:
        received.append((await request.read(), request.headers.get(SIGNATURE_HEADER, "")))
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/heartbeat", heartbeat)
    steering = await aiohttp_server(app)
    started = time.monotonic()
    await make_appliance(
        id="a7", site="isp-a", steering=url_of(steering), url="http://edge-7.example:8100"
    )
    while len(received) < 3:
        await asyncio.sleep(0.05)
        assert time.monotonic() - started < 6, "fewer than 3 heartbeats in 6 s"
    ring = key_ring([KEY])
    for body, signature in received:
        assert verify_body(body, signature, ring) == KEY
        beat = json.loads(body)
        assert (beat["id"], beat["site"], beat["status"]) == ("a7", "isp-a", "ok")
        assert beat["url"] == "http://edge-7.example:8100"  # where steering sends players
        assert "tiers" in beat and "limiter" in beat and abs(beat["sent_at"] - time.time()) < 10
    gaps = [json.loads(b)["sent_at"] for b, _ in received]
    assert all(0.5 < b - a < 2.0 for a, b in itertools.pairwise(gaps))


async def test_an_unreachable_steering_does_not_stop_serving(
    make_appliance: MakeAppliance, unused_tcp_port: int
) -> None:

    appliance = await make_appliance(steering=f"http://127.0.0.1:{unused_tcp_port}")
    await asyncio.sleep(1.5)
    assert (await get(appliance, signed(TITLE, "master.m3u8")))[0] == 200
