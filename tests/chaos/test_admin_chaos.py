"""`/admin/chaos` on real appliances on loopback: only with the admin key, precise 400s, and
each switch really changes what the appliance does."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from appliance.config import ApplianceConfig
from appliance.server import create_app as create_appliance
from steering.server import create_app as create_steering
from streamcdn import service
from streamcdn.chaos import ChaosError, ChaosMonkey, ChaosPlan, parse_spec
from streamcdn.config import load
from tests.appliance.conftest import KEY, MakeAppliance, signed, url_of
from tests.conftest import TITLE, free_port, streamcdn_cmd, wait_for_port

ADMIN = "chaos-admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}
OFF = {"upstream_delay_ms": 0.0, "drop_heartbeats": False}


async def call(base: str, method: str, path: str = "/admin/chaos", **kw) -> tuple[int, object]:
    async with ClientSession() as s, s.request(method, f"{base}{path}", **kw) as r:
        text = await r.text()
        return r.status, (await r.json()) if r.content_type == "application/json" else text


async def test_no_admin_key_no_chaos(make_appliance: MakeAppliance) -> None:
    base = url_of(await make_appliance())  # no admin key configured
    for method, body in (("GET", None), ("POST", {"kill": True}), ("DELETE", None)):
        status, text = await call(base, method, json=body, headers=AUTH)
        assert status == 403 and "admin API disabled" in str(text)
    _, health = await call(base, "GET", "/health")
    assert "chaos" not in health  # type: ignore[operator]


async def test_an_appliance_with_chaos_off_refuses_every_switch(
    make_appliance: MakeAppliance,
) -> None:
    base = url_of(await make_appliance(admin_key=ADMIN, chaos=False))
    for method, body in (("GET", None), ("POST", {"kill": True}), ("POST", {"drop_heartbeats": True}), ("DELETE", None)):  # fmt: skip
        status, text = await call(base, method, json=body, headers=AUTH)
        assert status == 403 and "chaos is turned off" in str(text)
    status, _ = await call(base, "POST", json={"kill": True}, headers={})
    assert status == 401  # the key is still checked first
    await asyncio.sleep(0.3)  # a kill would have landed by now (it follows the 202 by 0.1 s)
    _, health = await call(base, "GET", "/health")
    assert "chaos" not in health  # type: ignore[operator]
    monkey = ChaosMonkey(ChaosPlan(parse_spec("kill-appliance:every=20s"), {"a1": base}, ADMIN))
    try:
        with pytest.raises(ChaosError, match="a1: chaos is turned off"):
            await monkey.check()
    finally:
        await monkey.close()


async def test_the_admin_key_is_required(make_appliance: MakeAppliance) -> None:
    base = url_of(await make_appliance(admin_key=ADMIN))
    wrong = {"Authorization": "Bearer not-the-admin-key-at-all"}
    for headers in ({}, wrong, {"Authorization": ADMIN}):
        status, _ = await call(base, "POST", json={"kill": True}, headers=headers)
        assert status == 401
    status, _ = await call(base, "POST", json={"drop_heartbeats": True}, headers=wrong)
    assert status == 401
    assert await call(base, "GET", headers=AUTH) == (200, OFF)  # nothing was switched on


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "must be a JSON object"),
        (b"{}", "nothing to change"),
        (b'{"upstream_delay": 5}', "unknown field 'upstream_delay'"),
        (b'{"upstream_delay_ms": "200"}', '"upstream_delay_ms": a number 0..60000'),
        (b'{"upstream_delay_ms": true}', '"upstream_delay_ms": a number 0..60000'),
        (b'{"upstream_delay_ms": -1}', '"upstream_delay_ms": a number 0..60000, got -1'),
        (b'{"upstream_delay_ms": 60001}', '"upstream_delay_ms": a number 0..60000'),
        (b'{"upstream_delay_ms": NaN}', "not JSON"),  # not JSON (RFC 8259), though Python reads it
        (b'{"drop_heartbeats": "yes"}', '"drop_heartbeats": true or false'),
        (b'{"kill": false}', '"kill": true, and alone'),
        (b'{"kill": true, "drop_heartbeats": true}', '"kill": true, and alone'),
    ],
)
async def test_bad_bodies_get_a_precise_400(
    make_appliance: MakeAppliance, body: bytes, message: str
) -> None:
    base = url_of(await make_appliance(admin_key=ADMIN))
    status, text = await call(base, "POST", data=body, headers=AUTH)
    assert status == 400 and message in str(text), text
    assert await call(base, "GET", headers=AUTH) == (200, OFF)


async def cold_fill_s(base: str, rel: str) -> float:
    started = time.monotonic()
    async with ClientSession() as s, s.get(f"{base}{signed(TITLE, rel)}") as r:
        assert r.status == 200 and r.headers["X-Cache"] == "MISS"
        await r.read()
    return time.monotonic() - started


async def test_slow_upstream_slows_cold_fills(make_appliance: MakeAppliance) -> None:
    base = url_of(await make_appliance(admin_key=ADMIN, read_ahead_segments=0))
    normal = await cold_fill_s(base, "240p/seg_00000.m4s")
    status, state = await call(base, "POST", json={"upstream_delay_ms": 400}, headers=AUTH)
    assert (status, state) == (200, {**OFF, "upstream_delay_ms": 400.0})
    _, health = await call(base, "GET", "/health")
    assert health["chaos"] == {"upstream_delay_ms": 400.0}  # type: ignore[index]
    slowed = await cold_fill_s(base, "240p/seg_00001.m4s")
    assert slowed >= normal + 0.35, (normal, slowed)
    # Hits never touch upstream: no slower.
    async with ClientSession() as s:
        started = time.monotonic()
        async with s.get(f"{base}{signed(TITLE, '240p/seg_00001.m4s')}") as r:
            assert r.headers["X-Cache"] == "HIT"
        assert time.monotonic() - started < 0.3
    assert await call(base, "DELETE", headers=AUTH) == (200, OFF)
    assert await cold_fill_s(base, "240p/seg_00002.m4s") < 0.35


async def fleet_status(steering: str, appliance_id: str) -> str:
    async with ClientSession() as s, s.get(f"{steering}/fleet") as r:
        fleet = await r.json()
    return next(a["status"] for a in fleet["appliances"] if a["id"] == appliance_id)


async def wait_status(steering: str, appliance_id: str, want: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if await fleet_status(steering, appliance_id) == want:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{appliance_id} not {want} in steering's view within {timeout_s} s")


async def test_dropped_heartbeats_make_steering_mark_it_down(
    tmp_path: Path, origin: TestServer
) -> None:
    steering_port, a1_port = free_port(), free_port()
    path = tmp_path / "deploy.toml"
    path.write_text(f"""
[keys]
signing = ["{KEY.key_id}:{KEY.secret.decode()}"]
admin = "{ADMIN}"
[origin]
url = "{url_of(origin)}"
[steering]
url = "http://127.0.0.1:{steering_port}"
heartbeat_interval_s = 0.2
[[sites]]
name = "isp-a"
cidrs = ["127.0.0.0/8"]
[[appliances]]
id = "a1"
url = "http://127.0.0.1:{a1_port}"
site = "isp-a"
capacity_mbps = 1000
""")
    d = load(path)
    config = ApplianceConfig(
        id="a1", cache_dir=tmp_path / "a1", upstreams=(url_of(origin),), keys=d.signing_keys,
        admin_key=ADMIN, steering=d.steering_url, heartbeat_interval_s=0.2,
        url=d.appliance("a1").url, port=a1_port,
        limiter_lag_target_s=0.0,  # the loop is shared with the test: its delay is not load
    )  # fmt: skip
    running = [
        await service.start(create_steering(d), host="127.0.0.1", port=steering_port),
        await service.start(create_appliance(config), host="127.0.0.1", port=a1_port),
    ]
    try:
        steering, base = f"http://127.0.0.1:{steering_port}", f"http://127.0.0.1:{a1_port}"
        await wait_status(steering, "a1", "up", 5)
        status, _ = await call(base, "POST", json={"drop_heartbeats": True}, headers=AUTH)
        assert status == 200
        # Down after 3 missed beats of 0.2 s, while it still serves.
        took = await wait_status(steering, "a1", "down", 5)
        assert took < 2.0, took
        async with ClientSession() as s, s.get(f"{base}{signed(TITLE, 'master.m3u8')}") as r:
            assert r.status == 200
        assert (await call(base, "DELETE", headers=AUTH))[0] == 200
        await wait_status(steering, "a1", "up", 5)
    finally:
        for r in reversed(running):
            await r.close()


def test_kill_makes_the_process_die_at_once(tmp_path: Path, origin_process: str) -> None:
    port = free_port()
    proc = subprocess.Popen(
        streamcdn_cmd(
            "serve", "appliance", "--id", "a1", "--cache-dir", str(tmp_path / "a1"),
            "--upstream", origin_process, "--key", f"{KEY.key_id}:{KEY.secret.decode()}",
            "--admin-key", ADMIN, "--port", str(port), "--no-access-log",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        status, answer = asyncio.run(call(base, "POST", json={"kill": True}, headers=AUTH))
        assert status == 202 and answer == {"killing": True, "pid": proc.pid}
        assert proc.wait(timeout=5) == -signal.SIGKILL  # abrupt: no graceful shutdown
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(5)
