"""The admin API and `streamcdn fill`: fills, purges, listings, and who may use them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from appliance.tiers import DiskTier
from origin.store import TitleStore
from tests.appliance.conftest import SEGMENT, MakeAppliance, origin_gets, signed, url_of
from tests.conftest import TITLE

ADMIN = "admin-key-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


async def call(server: TestServer, method: str, path: str, **kw) -> tuple[int, object]:
    async with ClientSession() as s, s.request(method, f"{url_of(server)}{path}", **kw) as r:
        return r.status, await r.json()


async def wait_job(server: TestServer, job_id: int) -> dict:
    for _ in range(200):
        status, job = await call(server, "GET", f"/admin/fill/{job_id}", headers=AUTH)
        assert status == 200
        if job["state"] != "running":
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("fill job did not finish")


async def test_fill_then_list_then_purge(
    make_appliance: MakeAppliance, origin: TestServer, store: TitleStore
) -> None:
    appliance = await make_appliance(admin_key=ADMIN)
    status, job = await call(
        appliance,
        "POST",
        "/admin/fill",
        headers=AUTH,
        json={"titles": [TITLE], "renditions": ["240p", "audio"]},
    )
    assert status == 202
    job = await wait_job(appliance, job["id"])
    files = store.manifest(TITLE)["files"]
    wanted = [f for f in files if f.startswith(("240p/", "audio/")) or "/" not in f]
    assert job["state"] == "done" and job["errors"] == []
    assert job["objects_total"] == len(wanted)
    assert job["bytes_done"] >= sum(files[f]["size"] for f in wanted)
    # Filled objects are hits for players, with no further origin traffic.
    before = await origin_gets(origin)
    url = f"{url_of(appliance)}{signed(TITLE, '240p/seg_00001.m4s')}"
    async with ClientSession() as s, s.get(url) as r:
        assert r.headers["X-Cache"] == "HIT"
    assert await origin_gets(origin) == before
    status, listing = await call(appliance, "GET", "/admin/cache", headers=AUTH)
    # The fill brought the manifest too, to know the title's files.
    assert status == 200 and listing["titles"][TITLE]["objects"] == len(wanted) + 1
    status, purged = await call(appliance, "DELETE", f"/admin/cache/titles/{TITLE}", headers=AUTH)
    assert status == 200 and purged["purged_objects"] == len(wanted) + 1
    status, listing = await call(appliance, "GET", "/admin/cache", headers=AUTH)
    assert TITLE not in listing["titles"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-key-0123456789"}, 401),
        ({"Authorization": ADMIN}, 401),
    ],
)
async def test_admin_needs_the_admin_key(make_appliance: MakeAppliance, headers, status) -> None:
    appliance = await make_appliance(admin_key=ADMIN)
    for method, path in (
        ("GET", "/admin/cache"),
        ("DELETE", f"/admin/cache/titles/{TITLE}"),
        ("POST", "/admin/fill"),
        ("GET", "/admin/fill/1"),
    ):
        assert (await call(appliance, method, path, headers=headers))[0] == status


@pytest.mark.parametrize(
    "key", [b"\xff\xfe-not-utf-8", "admin-key-é".encode(), b"\xa0" + ADMIN.encode()]
)
async def test_a_key_of_any_bytes_gets_401(make_appliance: MakeAppliance, key: bytes) -> None:
    """Bytes that are not UTF-8 came to the key check as lone surrogates, which .encode()
    refused: a 500 with a traceback instead of a 401."""
    appliance = await make_appliance(admin_key=ADMIN)
    reader, writer = await asyncio.open_connection(appliance.host, appliance.port)
    writer.write(
        b"GET /admin/cache HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key
        + b"\r\nConnection: close\r\n\r\n"
    )
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]


async def test_admin_is_off_without_an_admin_key(make_appliance: MakeAppliance) -> None:
    appliance = await make_appliance()
    assert (await call(appliance, "GET", "/admin/cache", headers=AUTH))[0] == 403


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"titles": []}',
        b'{"titles": ["../x"]}',
        b'{"titles": "calm"}',
        b'{"top": 0}',
        b'{"top": true}',
        b'{"titles": ["a"], "top": 3}',
        b"{}",
        b'{"titles": ["a"], "renditions": ["../../x"]}',
        b'{"titles": ["a"], "rate_mbps": -1}',
    ],
)
async def test_bad_fill_bodies_get_400(make_appliance: MakeAppliance, body: bytes) -> None:
    appliance = await make_appliance(admin_key=ADMIN)
    status, answer = await call(appliance, "POST", "/admin/fill", headers=AUTH, data=body)
    assert status == 400 and answer["status"] == 400


async def test_fill_reports_unknown_titles(make_appliance: MakeAppliance) -> None:
    appliance = await make_appliance(admin_key=ADMIN)
    _, job = await call(appliance, "POST", "/admin/fill", headers=AUTH, json={"titles": ["nosuch"]})
    job = await wait_job(appliance, job["id"])
    assert job["state"] == "failed" and "nosuch" in job["errors"][0]


async def test_the_fill_command_fills_the_top_titles(make_appliance: MakeAppliance) -> None:
    appliance = await make_appliance(admin_key=ADMIN)
    async with ClientSession() as s:  # make TITLE popular at the origin
        await (await s.get(f"{url_of(appliance)}{signed(TITLE, SEGMENT)}")).read()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streamcdn.cli",
        "fill",
        "--appliance",
        url_of(appliance),
        "--admin-key",
        ADMIN,
        "--top",
        "1",
        "--rendition",
        "360p",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "done:" in err.decode() and "1 titles" in err.decode()
    _, listing = await call(appliance, "GET", "/admin/cache", headers=AUTH)
    assert listing["titles"][TITLE]["objects"] >= 5  # master, manifest, playlist, init, segments


async def test_the_fill_command_says_what_is_wrong(
    make_appliance: MakeAppliance, unused_tcp_port: int
) -> None:
    appliance = await make_appliance(admin_key=ADMIN)
    for args, message in (
        (["--appliance", url_of(appliance), "--admin-key", "nope-nope-nope-nope"], "refused"),
        (
            ["--appliance", f"http://127.0.0.1:{unused_tcp_port}", "--admin-key", ADMIN],
            "cannot reach",
        ),
        (["--appliance", "a1.example.net", "--admin-key", ADMIN], "expected http://host:port"),
        (["--appliance", url_of(appliance), "--admin-key", "key\nX-Injected: 1"], "control"),
    ):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streamcdn.cli",
            "fill",
            *args,
            "--title",
            TITLE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 1
        lines = err.decode().strip().splitlines()
        assert lines[-1].startswith("streamcdn: error:") and message in lines[-1]
        assert "Traceback" not in err.decode()


def test_admin_key_must_be_long() -> None:
    from appliance.config import ApplianceConfig
    from streamcdn.errors import UserError

    with pytest.raises(UserError, match="admin-key"):
        ApplianceConfig(
            id="a", cache_dir=Path("/tmp/x"), upstreams=("http://o",), open=True, admin_key="short"
        )
    with pytest.raises(UserError, match="control characters"):
        ApplianceConfig(
            id="a",
            cache_dir=Path("/tmp/x"),
            upstreams=("http://o",),
            open=True,
            admin_key="admin-key-0123456789\n",
        )


@pytest.mark.parametrize("slow", ["before the rename", "after the rename"])
async def test_a_purge_is_not_undone_by_a_disk_write_in_flight(
    make_appliance: MakeAppliance, origin: TestServer, tmp_path: Path, monkeypatch, slow: str
) -> None:
    write = DiskTier.write_blocking

    def slow_write(self, meta, data):  # type: ignore[no-untyped-def]
        # A slow disk, or (after the rename) a loop too busy to see the write finish:
        # either way the write is still in flight when the purge runs.
        if slow == "before the rename":
            time.sleep(0.5)
        entry = write(self, meta, data)
        if slow == "after the rename":
            time.sleep(0.5)
        return entry

    monkeypatch.setattr(DiskTier, "write_blocking", slow_write)
    appliance = await make_appliance(admin_key=ADMIN, read_ahead_segments=0)
    url = f"{url_of(appliance)}{signed(TITLE, SEGMENT)}"

    def on_disk() -> list[Path]:
        return list((tmp_path / "cache-a1" / "objects").glob("*/*.obj"))

    async with ClientSession() as s, s.get(url) as r:
        assert r.headers["X-Cache"] == "MISS"
        await r.read()
    purge = f"/admin/cache/titles/{TITLE}"
    first = asyncio.create_task(call(appliance, "DELETE", purge, headers=AUTH))
    await asyncio.sleep(0.1)
    # A second purge meanwhile finds nothing left to drop, but waits for the same write.
    status, purged = await call(appliance, "DELETE", purge, headers=AUTH)
    assert status == 200 and purged["purged_objects"] == 0
    assert on_disk() == []
    status, purged = await first
    assert status == 200 and purged["purged_objects"] == 1  # from memory; disk write pending
    assert purged["disk_writes_pending"] == 0
    # Acknowledged: the object is already off the disk, so a crash now cannot bring it back.
    assert on_disk() == []
    await asyncio.sleep(1.0)  # nothing lands later either
    _, health = await call(appliance, "GET", "/health")
    assert isinstance(health, dict) and health["tiers"]["disk"]["objects"] == 0
    assert on_disk() == []
    before = await origin_gets(origin)
    async with ClientSession() as s, s.get(url) as r:
        assert r.headers["X-Cache"] == "MISS"  # filled again after the purge
        await r.read()
    assert await origin_gets(origin) == before + 1
