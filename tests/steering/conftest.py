"""A deployment, running steering services, signed heartbeats, and a real redis-server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession

from steering import server as steering_server
from streamcdn import service
from streamcdn.config import Deployment, load
from streamcdn.tokens import SIGNATURE_HEADER, SigningKey, sign_body

SIGNING = SigningKey.parse("k1:steering-test-key-0123456789")
A2_KEY = SigningKey.parse("a2:a2-own-heartbeat-key-012345")

DEPLOYMENT = """
[keys]
signing = ["k1:steering-test-key-0123456789"]
[origin]
url = "http://127.0.0.1:9"
[steering]
default_site = "isp-a"
heartbeat_interval_s = 0.1
down_after_missed = 3
[[sites]]
name = "isp-a"
cidrs = ["10.0.0.0/8", "fd00:a::/32"]
fallbacks = ["ix"]
[[sites]]
name = "ix"
cidrs = ["192.0.2.0/24"]
[[appliances]]
id = "a1"
url = "http://127.0.0.1:9101"
site = "isp-a"
capacity_mbps = 1000
[[appliances]]
id = "a2"
url = "http://127.0.0.1:9102"
site = "isp-a"
capacity_mbps = 1000
heartbeat_key = "a2:a2-own-heartbeat-key-012345"
[[appliances]]
id = "ix1"
url = "http://127.0.0.1:9103"
site = "ix"
capacity_mbps = 4000
"""

StartSteering = Callable[..., Awaitable[service.Running]]


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    path = tmp_path / "deploy.toml"
    path.write_text(DEPLOYMENT)
    return load(path)


@pytest.fixture(autouse=True)
def fast_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test deployment beats every 0.1 s; refresh the view as often.
    monkeypatch.setattr(steering_server, "REFRESH_S", 0.05)


@pytest.fixture
async def start_steering(deployment: Deployment) -> AsyncIterator[StartSteering]:
    started: list[service.Running] = []

    async def start(redis_url: str | None = None) -> service.Running:
        app = steering_server.create_app(deployment, redis_url=redis_url)
        running = await service.start(app, host="127.0.0.1", port=0, access_log=False)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


def beat_body(appliance: str, *, sent_at: float | None = None, **figures: object) -> bytes:
    body = {"id": appliance, "status": "ok", "sent_at": sent_at or time.time(), **figures}
    return json.dumps(body).encode()


async def post_beat(
    url: str, body: bytes, key: SigningKey | None = SIGNING, headers: dict[str, str] | None = None
) -> tuple[int, dict]:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        hdrs[SIGNATURE_HEADER] = sign_body(body, key)
    async with ClientSession() as s, s.post(f"{url}/heartbeat", data=body, headers=hdrs) as r:
        return r.status, await r.json(content_type=None)


async def get_json(url: str) -> tuple[int, dict]:
    async with ClientSession() as s, s.get(url) as r:
        return r.status, await r.json(content_type=None)
