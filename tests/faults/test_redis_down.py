"""Redis goes away and comes back under control's events: what was acknowledged is kept,
what was not is refused (so the player retries), and it recovers by itself."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import redis.asyncio as redis

from origin.store import TitleStore
from tests.conftest import RedisServer
from tests.control.conftest import call, start_stack


def batch(session: str, n: int) -> dict:
    now = time.time()
    return {"events": [{"type": "start", "session": f"{session}-{i}", "ts": now,
                        "appliance": "a1"} for i in range(n)]}  # fmt: skip


async def stream_sessions(url: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        entries = await client.xrange("streamcdn:events")
    finally:
        await client.aclose()
    return [json.loads(fields["json"])["session"] for _, fields in entries]


async def test_events_acknowledged_before_redis_went_down_are_still_there(
    tmp_path: Path, store: TitleStore
) -> None:
    server = RedisServer(tmp_path / "redis", durable=True)
    (tmp_path / "redis").mkdir()
    server.start()
    stack = await start_stack(tmp_path, store, redis_url=server.url)
    try:
        control = stack.control
        assert (await call("POST", f"{control}/events", batch("before", 3)))[0] == 202
        server.stop()
        refused = await call("POST", f"{control}/events", batch("during", 2))
        assert refused[0] == 503 and refused[2]["Retry-After"] == "1"
        server.start()  # same port, same append-only file
        deadline = time.monotonic() + 10
        while (status := (await call("POST", f"{control}/events", batch("after", 1)))[0]) != 202:
            assert time.monotonic() < deadline, status
            await asyncio.sleep(0.2)
        kept = await stream_sessions(server.url)
        assert kept == ["before-0", "before-1", "before-2", "after-0"]  # none lost, none invented
        _, summary, _ = await call("GET", f"{control}/events/summary")
        assert summary["appliances"]["a1"]["sessions"] == 4  # the refused ones were not counted
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()
        server.stop()
