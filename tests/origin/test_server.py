"""The origin over real HTTP on loopback: files, ranges, validators, traversal, metrics."""

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from origin.server import create_app
from origin.store import TitleStore
from streamcdn.digest import digest_bytes
from tests.conftest import TITLE

SEGMENT = "360p/seg_00000.m4s"


@pytest.fixture
async def client(aiohttp_client, store: TitleStore) -> TestClient:
    return await aiohttp_client(create_app(store.root))


async def raw_get(client: TestClient, target: str) -> tuple[int, bytes]:
    """Send a request line exactly as written (no client-side normalisation of the path)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


async def test_lists_titles(client: TestClient) -> None:
    r = await client.get("/titles")
    assert r.status == 200
    body = await r.json()
    (listed,) = body["titles"]
    assert listed | {"title": TITLE, "name": "Tiny test title", "duration_s": 10.0} == listed
    assert listed["requests"] == 0 and listed["poster"] == "poster.jpg" and listed["tags"] == []
    assert {r["name"] for r in listed["renditions"]} == {"360p", "240p", "audio"}


async def test_serves_the_manifest(client: TestClient, store: TitleStore) -> None:
    r = await client.get(f"/titles/{TITLE}/manifest.json")
    assert r.status == 200
    assert (await r.json())["files"] == store.manifest(TITLE)["files"]
    assert r.headers["X-Content-Digest"] == f"xxh3-128={digest_bytes(await r.read())}"


async def test_serves_a_segment_with_digest_etag_and_caching_headers(
    client: TestClient, title_dir: Path
) -> None:
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}")
    body = await r.read()
    assert r.status == 200
    assert body == (title_dir / SEGMENT).read_bytes()
    assert r.headers["X-Content-Digest"] == f"xxh3-128={digest_bytes(body)}"
    assert r.headers["ETag"] == f'"{digest_bytes(body)}"'
    assert r.headers["Content-Type"] == "video/iso.segment"
    assert r.headers["Accept-Ranges"] == "bytes"
    assert "max-age=" in r.headers["Cache-Control"]
    r = await client.get(f"/titles/{TITLE}/master.m3u8")
    assert r.headers["Content-Type"] == "application/vnd.apple.mpegurl"
    assert (await r.text()).startswith("#EXTM3U")


async def test_head_gives_headers_without_a_body(client: TestClient, title_dir: Path) -> None:
    r = await client.head(f"/titles/{TITLE}/{SEGMENT}")
    assert r.status == 200
    assert int(r.headers["Content-Length"]) == (title_dir / SEGMENT).stat().st_size
    assert await r.read() == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, None),
        ("bytes=-50", -50, None),
        ("bytes=10-10", 10, 10),
        ("bytes=5-999999999", 5, None),
    ],
)
async def test_single_ranges_get_206(
    client: TestClient, title_dir: Path, header: str, start: int, end: int | None
) -> None:
    data = (title_dir / SEGMENT).read_bytes()
    expected = data[start:] if end is None else data[start : end + 1]
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}", headers={"Range": header})
    assert r.status == 206
    assert await r.read() == expected
    first = start % len(data)
    assert r.headers["Content-Range"] == f"bytes {first}-{first + len(expected) - 1}/{len(data)}"


@pytest.mark.parametrize("header", ["bytes=999999999-", "bytes=-0"])
async def test_unsatisfiable_ranges_get_416(client: TestClient, title_dir: Path, header: str):
    size = (title_dir / SEGMENT).stat().st_size
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}", headers={"Range": header})
    assert r.status == 416
    assert r.headers["Content-Range"] == f"bytes */{size}"


@pytest.mark.parametrize("header", ["bytes=0-1,5-6", "items=0-5", ""])
async def test_multi_ranges_and_other_units_get_the_whole_object(
    client: TestClient, title_dir: Path, header: str
) -> None:
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}", headers={"Range": header})
    assert r.status == 200
    assert await r.read() == (title_dir / SEGMENT).read_bytes()


@pytest.mark.parametrize("header", ["bytes=9-2", "bytes=abc", "bytes=", "bytes=--5"])
async def test_malformed_byte_ranges_get_416(client: TestClient, header: str) -> None:
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}", headers={"Range": header})
    assert r.status == 416 and await r.read() == b""


async def test_if_none_match_gives_304_and_if_range_guards_ranges(client: TestClient) -> None:
    etag = (await client.get(f"/titles/{TITLE}/{SEGMENT}")).headers["ETag"]
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}", headers={"If-None-Match": etag})
    assert r.status == 304 and await r.read() == b""
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}", headers={"If-None-Match": '"other"'})
    assert r.status == 200
    stale = {"Range": "bytes=0-9", "If-Range": '"stale"'}
    assert (await client.get(f"/titles/{TITLE}/{SEGMENT}", headers=stale)).status == 200
    fresh = {"Range": "bytes=0-9", "If-Range": etag}
    assert (await client.get(f"/titles/{TITLE}/{SEGMENT}", headers=fresh)).status == 206


@pytest.mark.parametrize(
    "target",
    [
        f"/titles/{TITLE}/../../../../etc/passwd",
        f"/titles/{TITLE}/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
        f"/titles/{TITLE}/360p/..%2f..%2f..%2fetc%2fpasswd",
        f"/titles/{TITLE}/%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        f"/titles/{TITLE}/..%5c..%5cetc%5cpasswd",
        "/titles/..%2f..%2fetc/passwd",
        f"/titles/{TITLE}/360p/%00seg_00000.m4s",
        f"/titles/{TITLE}//etc/passwd",
        f"/titles/{TITLE}/./master.m3u8",
        f"/titles/{TITLE}/manifest.json/../../x",
        "/titles/%2e%2e/manifest.json",
    ],
)
async def test_traversal_attempts_never_escape_the_title(client: TestClient, target: str) -> None:
    status, body = await raw_get(client, target)
    assert status in (400, 404), (target, status)
    assert b"root:" not in body


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/titles/{TITLE}/nothere.m4s", 404),
        (f"/titles/{TITLE}/360p/seg_99999.m4s", 404),
        ("/titles/unknown/master.m3u8", 404),
        ("/titles/unknown/manifest.json", 404),
        ("/titles/bad%20id/master.m3u8", 400),
        ("/titles/" + "x" * 65 + "/master.m3u8", 400),
        (f"/titles/{TITLE}/" + "a/" * 300 + "x", 400),
    ],
)
async def test_malformed_and_unknown_paths(client: TestClient, path: str, status: int) -> None:
    r = await client.get(path)
    assert r.status == status
    assert (await r.json())["status"] == status
    # Appliances cache "no such title" for the whole title; only unknown titles say so.
    assert (r.headers.get("X-Not-Found") == "title") == ("/unknown/" in path)


async def test_a_corrupted_file_is_never_served(aiohttp_client, tmp_path: Path, store) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store.root, copy)
    seg = copy / TITLE / SEGMENT
    data = bytearray(seg.read_bytes())
    data[len(data) // 2] ^= 0xFF
    seg.write_bytes(bytes(data))
    client = await aiohttp_client(create_app(copy))
    r = await client.get(f"/titles/{TITLE}/{SEGMENT}")
    assert r.status == 500
    assert bytes(data) not in await r.read()
    assert (await client.get(f"/titles/{TITLE}/360p/seg_00001.m4s")).status == 200


async def test_health_and_metrics(client: TestClient) -> None:
    r = await client.get("/health")
    assert r.status == 200
    health = await r.json()
    assert health["status"] == "ok" and health["service"] == "origin" and health["titles"] == 1
    await client.get(f"/titles/{TITLE}/{SEGMENT}")
    await client.get(f"/titles/{TITLE}/nothere.m4s")
    metrics = await (await client.get("/metrics")).text()
    route = 'route="/titles/{title}/{path}"'
    assert f'streamcdn_http_requests_total{{method="GET",{route},status="200"}} 1.0' in metrics
    assert f'streamcdn_http_requests_total{{method="GET",{route},status="404"}} 1.0' in metrics
    sent = [
        ln
        for ln in metrics.splitlines()
        if ln.startswith("streamcdn_http_response_bytes_total")
        and route in ln
        and 'status="200"' in ln
    ]
    assert sent and float(sent[0].rsplit(" ", 1)[1]) > 1000


async def test_a_read_only_store_is_served(aiohttp_client, tmp_path: Path, store) -> None:
    copy = tmp_path / "ro"
    shutil.copytree(store.root, copy)
    subprocess.run(["mount", "--bind", "-o", "ro", str(copy), str(copy)], check=True)
    subprocess.run(["mount", "-o", "remount,ro,bind", str(copy)], check=True)
    try:
        client = await aiohttp_client(create_app(copy))
        assert (await client.get(f"/titles/{TITLE}/{SEGMENT}")).status == 200
    finally:
        subprocess.run(["umount", str(copy)], check=False)
