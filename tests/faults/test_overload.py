"""A real appliance driven past its limit: it sheds with 503 + Retry-After, never sends a
wrong or short 200, keeps answering /health, keeps its memory within its tier plus a
margin, and serves every request again once the load stops.

The appliance's limit is set to LIMIT requests in flight in the deployment file, so a few
clients are enough. The segment is larger than the kernel's socket buffers take at once
(Linux's tcp_wmem caps a send buffer at 4 MB by default), so an answer to a client that is
not reading stays in the appliance and holds its slot.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest

from origin.store import TitleStore
from streamcdn.digest import ALGORITHM, digest_bytes
from tests.faults.stack import ApplianceSpec, Stack, wait_until

TITLE = "overload"
SEGMENT = "seg.m4s"
SEGMENT_BYTES = 12 * 10**6
LIMIT = 4
MEM_TIER_BYTES = 64 * 10**6
RSS_MARGIN_BYTES = 160 * 10**6  # the interpreter, aiohttp and buffers, beyond the tier
CLIENTS = 24  # of the sustained phase, each asking again as soon as an answer is in
LOAD_S = 3.0
BURST = 100  # requests read in one loop turn


@pytest.fixture
def segment_store(tmp_path: Path) -> tuple[TitleStore, bytes]:
    """A store with one title: a segment of random bytes and a manifest naming it."""
    data = os.urandom(SEGMENT_BYTES)
    title = tmp_path / "store" / TITLE
    title.mkdir(parents=True)
    (title / SEGMENT).write_bytes(data)
    manifest = {
        "version": 1, "title": TITLE, "name": TITLE, "duration_s": 4.0, "master": SEGMENT,
        "renditions": [], "files": {SEGMENT: {"size": len(data), ALGORITHM: digest_bytes(data)}},
    }  # fmt: skip
    (title / "manifest.json").write_text(json.dumps(manifest))
    return TitleStore(tmp_path / "store"), data


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def send_get(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A GET sent on a fresh connection with a small receive buffer; the answer is left
    unread."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.partition(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=sock, limit=2**20)
    writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split()[1]), headers, body


def check_answer(status: int, headers: dict[str, str], body: bytes, data: bytes) -> None:
    """A 200 carries the whole segment; a 503 says when to come back."""
    if status == 200:
        assert body == data, f"a 200 with {len(body)} wrong or missing bytes"
    else:
        assert status == 503, (status, body[:200])
        assert int(headers["retry-after"]) >= 1, headers


async def test_overload_sheds_with_retry_after_and_recovers(
    tmp_path: Path, segment_store: tuple[TitleStore, bytes]
) -> None:
    store, data = segment_store
    spec = ApplianceSpec(
        "a1",
        extra=f'mem = "64MB"\nlimiter_initial = {LIMIT}\nlimiter_max = {LIMIT}',
        flags=("--read-ahead", "0", "--no-access-log"),
    )
    async with Stack(tmp_path, store, [spec]) as stack:
        await stack.start("origin", "a1")
        pid = stack.procs["a1"].pid
        url = stack.signed("a1", SEGMENT, title=TITLE)
        for _ in range(2):  # a fill, then a memory hit
            status, headers, body = await stack.get(url)
            assert status == 200 and body == data
        assert headers["X-Cache"] == "HIT"

        # 1. Clients that do not read: LIMIT answers hold every slot, the rest get 503.
        conns = [await send_get(url) for _ in range(3 * LIMIT)]
        await wait_until(
            lambda: _shed_at_least(stack, 2 * LIMIT), "the appliance sheds", timeout_s=10
        )
        health = await stack.health("a1")
        assert health["limiter"]["in_flight"] <= LIMIT
        answers = [await read_answer(reader) for reader, _ in conns]
        for _, writer in conns:
            writer.close()
        statuses = [a[0] for a in answers]
        assert statuses.count(503) >= 2 * LIMIT and statuses.count(200) >= 1, statuses
        for answer in answers:
            check_answer(*answer, data)

        # 2. Sustained: CLIENTS readers asking back to back, /health polled meanwhile.
        answers, health_times, rss_max = [], [], rss_bytes(pid)
        stop_at = time.monotonic() + LOAD_S

        async def client() -> None:
            while time.monotonic() < stop_at:
                answers.append(await stack.get(url))

        async def watch() -> None:
            nonlocal rss_max
            while time.monotonic() < stop_at:
                started = time.monotonic()
                assert (await stack.health("a1"))["status"] in ("ok", "degraded")
                health_times.append(time.monotonic() - started)
                rss_max = max(rss_max, rss_bytes(pid))
                await asyncio.sleep(0.2)

        await asyncio.gather(watch(), *(client() for _ in range(CLIENTS)))
        statuses = [a[0] for a in answers]
        assert statuses.count(503) >= 1 and statuses.count(200) >= 1, statuses
        for status, headers, body in answers:
            check_answer(status, {k.lower(): v for k, v in headers.items()}, body, data)
        assert len(health_times) >= 3 and max(health_times) < 5.0, health_times
        assert rss_max < MEM_TIER_BYTES + RSS_MARGIN_BYTES, rss_max

        # 3. The load is gone: once nothing is in flight, every request is answered.
        async def calm() -> bool:
            limiter = (await stack.health("a1"))["limiter"]
            return limiter["in_flight"] == 0 and limiter["lag_shed_fraction"] == 0

        await wait_until(calm, "the limiter calms down", timeout_s=10)
        for _ in range(10):
            status, _, body = await stack.get(url)
            assert status == 200 and body == data


async def _shed_at_least(stack: Stack, n: int) -> bool:
    return (await stack.health("a1"))["limiter"]["shed_total"] >= n


async def test_requests_ready_at_once_are_cut_at_the_loop_turn_budget(
    tmp_path: Path, segment_store: tuple[TitleStore, bytes]
) -> None:
    """BURST requests arrive while the appliance is stopped, so its loop reads them all in
    one turn when it resumes. Past the turn's budget (its loop-delay target, set tiny here)
    the rest are refused with 503 + Retry-After at once instead of being answered in that
    turn, which would hold every request behind it for the whole turn. Neither the
    concurrency limit (256) nor the loop-delay controller (which ignores one late turn)
    refuses any of them."""
    store, data = segment_store
    spec = ApplianceSpec(
        "a1",
        extra='mem = "64MB"\nlimiter_lag_target_s = 0.0005',
        flags=("--read-ahead", "0", "--no-access-log"),
    )
    async with Stack(tmp_path, store, [spec]) as stack:
        await stack.start("origin", "a1")
        url = stack.signed("a1", SEGMENT, title=TITLE)
        for _ in range(2):  # a fill, then a memory hit
            status, _, body = await stack.get(url)
            assert status == 200 and body == data
        rest = url.removeprefix("http://")
        hostport, _, path = rest.partition("/")
        host, _, port = hostport.partition(":")
        conns = [await asyncio.open_connection(host, int(port), limit=2**20) for _ in range(BURST)]

        async def all_accepted() -> bool:  # else some are read only in a later turn
            return (await stack.health("a1"))["connections"] >= BURST

        await wait_until(all_accepted, "every connection accepted")
        stack.pause("a1")  # SIGSTOP
        try:
            for _, writer in conns:
                writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n\r\n".encode())
                await writer.drain()
            await asyncio.sleep(0.2)
        finally:
            stack.resume("a1")
        answers = await asyncio.wait_for(
            asyncio.gather(*(read_answer(reader) for reader, _ in conns)), timeout=30
        )
        for _, writer in conns:
            writer.close()
        statuses = [a[0] for a in answers]
        assert statuses.count(503) >= BURST // 2 and statuses.count(200) >= 1, statuses
        for answer in answers:
            check_answer(*answer, data)
