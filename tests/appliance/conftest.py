"""A real origin and real appliances on loopback, in this process's event loop."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from appliance.config import ApplianceConfig
from appliance.server import create_app as create_appliance
from origin.server import create_app as create_origin
from origin.store import TitleStore
from streamcdn import service
from streamcdn.tokens import SigningKey, sign, title_prefix

KEY = SigningKey.parse("k1:test-signing-key-0123456789")
SEGMENT = "360p/seg_00000.m4s"

MakeAppliance = Callable[..., Awaitable[service.Running]]


@pytest.fixture
async def origin(aiohttp_server, store: TitleStore) -> TestServer:
    return await aiohttp_server(create_origin(store.root))


def url_of(server: TestServer | service.Running) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
async def make_appliance(tmp_path: Path, origin: TestServer) -> AsyncIterator[MakeAppliance]:
    """Start an appliance as `streamcdn serve appliance` does (its front protocol included);
    keyword arguments override ApplianceConfig fields."""
    started: list[service.Running] = []

    async def make(**overrides: object) -> service.Running:
        fields: dict[str, object] = {
            "id": "a1",
            "cache_dir": tmp_path / "cache-a1",
            "upstreams": (url_of(origin),),
            "keys": (KEY,),
            "mem_bytes": 64 * 10**6,
            # The test's clients share this event loop: its delay is theirs, not load.
            "limiter_lag_target_s": 0.0,
            "disk_bytes": 256 * 10**6,
        }
        fields.update(overrides)
        app = create_appliance(ApplianceConfig(**fields))  # type: ignore[arg-type]
        running = await service.start(app, host="127.0.0.1", port=0, access_log=False)
        started.append(running)
        return running

    yield make
    for running in started:
        await running.close()


def signed(
    title: str, rel: str, *, ttl_s: float = 600, cidr: str = "", key: SigningKey = KEY
) -> str:
    import time

    token = sign(title_prefix(title), key, expires=int(time.time() + ttl_s), cidr=cidr)
    return f"/s/{token}/titles/{title}/{rel}"


async def origin_gets(origin: TestServer, status: str = "200") -> int:
    """How many file requests the origin answered with ``status``, from its own metrics."""
    async with ClientSession() as s, s.get(f"{url_of(origin)}/metrics") as r:
        text = await r.text()
    m = re.search(
        r'streamcdn_http_requests_total\{method="GET",route="/titles/\{title\}/\{path\}",'
        rf'status="{status}"\}} ([0-9.]+)',
        text,
    )
    return int(float(m.group(1))) if m else 0
