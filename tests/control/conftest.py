"""The whole stack in this process, on loopback: origin, steering, two appliances, control."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientSession

from appliance.config import ApplianceConfig
from appliance.server import create_app as create_appliance
from control.server import create_app as create_control
from origin.server import create_app as create_origin
from origin.store import TitleStore
from steering.server import create_app as create_steering
from streamcdn import service
from streamcdn.config import Deployment, load
from tests.conftest import free_port

PASSWORD = "correct horse battery"


@dataclass
class Stack:
    deployment: Deployment
    control: str
    steering: str
    origin: str
    appliances: dict[str, str]
    running: dict[str, service.Running] = field(default_factory=dict)

    async def stop(self, name: str) -> None:
        await self.running.pop(name).close()


def deployment_text(ports: dict[str, int], tmp: Path, redis_url: str | None) -> str:
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    redis = f'redis = "{redis_url}"' if redis_url else ""
    return f"""
[keys]
signing = ["k1:control-test-signing-key-0123"]
admin = "control-test-admin-key-0123"
[origin]
url = "{url["origin"]}"
[steering]
url = "{url["steering"]}"
default_site = "isp-a"
heartbeat_interval_s = 0.2
[control]
url = "{url["control"]}"
db = "{tmp / "control.db"}"
events_file = "{tmp / "events.jsonl"}"
{redis}
[[sites]]
name = "isp-a"
cidrs = ["127.0.0.0/8"]
fallbacks = ["ix"]
[[sites]]
name = "ix"
cidrs = ["192.0.2.0/24"]
[[appliances]]
id = "a1"
url = "{url["a1"]}"
site = "isp-a"
capacity_mbps = 1000
upstreams = ["origin"]
cache_dir = "{tmp / "cache-a1"}"
[[appliances]]
id = "ix1"
url = "{url["ix1"]}"
site = "ix"
capacity_mbps = 1000
upstreams = ["origin"]
cache_dir = "{tmp / "cache-ix1"}"
"""


def appliance_config(d: Deployment, appliance_id: str, tmp: Path) -> ApplianceConfig:
    """An appliance's settings from its entry in the deployment file, as serve does."""
    a = d.appliance(appliance_id)
    return ApplianceConfig(
        id=a.id,
        cache_dir=a.cache_dir or tmp / a.id,
        upstreams=a.upstreams,
        keys=d.signing_keys,
        steering=d.steering_url,
        capacity_mbps=a.capacity_mbps,
        heartbeat_interval_s=d.heartbeat_interval_s,
        url=a.url,
        port=a.port,
        limiter_lag_target_s=0.0,  # the loop is shared with the test: its delay is not load
    )


async def start_stack(tmp: Path, store: TitleStore, redis_url: str | None = None) -> Stack:
    ports = {name: free_port() for name in ("origin", "steering", "control", "a1", "ix1")}
    path = tmp / "deploy.toml"
    path.write_text(deployment_text(ports, tmp, redis_url))
    d = load(path)
    stack = Stack(d, d.control_url or "", d.steering_url or "", d.origin_url, {})

    async def start(name: str, app) -> None:  # type: ignore[no-untyped-def]
        stack.running[name] = await service.start(
            app, host="127.0.0.1", port=ports[name], access_log=False
        )

    await start("origin", create_origin(store.root))
    await start("steering", create_steering(d))
    for a in d.appliances:
        await start(a.id, create_appliance(appliance_config(d, a.id, tmp)))
        stack.appliances[a.id] = a.url
    assert d.control_db is not None
    await start("control", create_control(d, db_path=d.control_db))
    # Wait until steering sees every appliance and control's catalog has the title.
    async with ClientSession() as s:
        for _ in range(100):
            async with s.get(f"{stack.steering}/fleet") as r:
                up = {a["status"] for a in (await r.json())["appliances"]} == {"up"}
            async with s.get(f"{stack.control}/catalog") as r:
                listed = (await r.json())["total"] > 0
            if up and listed:
                return stack
            await asyncio.sleep(0.1)
    raise AssertionError("the stack did not come up")


@pytest.fixture
async def stack(tmp_path: Path, store: TitleStore) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, store)
    yield s
    for running in reversed(list(s.running.values())):
        await running.close()


async def call(
    method: str,
    url: str,
    body: object = None,
    *,
    token: str | None = None,
    raw: bytes | None = None,
) -> tuple[int, dict, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    async with ClientSession() as s, s.request(method, url, data=data, headers=headers) as r:
        text = await r.text()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = {"text": text}
        return r.status, parsed, dict(r.headers)


async def sign_up_and_login(control: str, email: str = "viewer@example.com") -> str:
    status, _, _ = await call("POST", f"{control}/accounts", {"email": email, "password": PASSWORD})
    assert status == 201
    status, body, _ = await call(
        "POST", f"{control}/sessions", {"email": email, "password": PASSWORD}
    )
    assert status == 200
    return str(body["token"])
