"""appliance.sendfile on a real loopback server under uvloop, for both transfers.

Every test that takes ``server`` runs twice: once preferring SENDFILE (the fast path)
and once with COPY (the fallback), and checks that the transfer asked for was used.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import statistics
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import uvloop
from aiohttp import web
from yarl import URL

from appliance.sendfile import Transfer, choose_transfer, send_file_region

SIZES = {"tiny": 1_001, "seg": 2 * 1024 * 1024 + 3, "big": 20 * 1024 * 1024}
HEADER_PAD_BYTES = 8 * 1024 * 1024  # more than loopback socket buffers hold unread

pytestmark = pytest.mark.filterwarnings(
    # pytest-asyncio's replacement, a pytest_asyncio_loop_factories hook, must live in a
    # conftest.py; overriding the fixture keeps uvloop local to this module.
    'ignore:Overriding the "event_loop_policy" fixture is deprecated'
)


@pytest.fixture
def event_loop_policy() -> asyncio.AbstractEventLoopPolicy:
    return uvloop.EventLoopPolicy()


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    """Random contents by name, written to ``root`` below."""
    return {name: os.urandom(size) for name, size in SIZES.items()}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, files: dict[str, bytes]) -> Path:
    root = tmp_path_factory.mktemp("files")
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@dataclass
class Server:
    transfer: Transfer  # the one preferred
    url: str = ""
    used: list[Transfer] = field(default_factory=list)  # one entry per finished body
    gone: list[str] = field(default_factory=list)  # one entry per client that went away

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        url = URL(self.url)
        return await asyncio.open_connection(url.host, url.port, limit=HEADER_PAD_BYTES * 2)


def make_app(root: Path, server: Server) -> web.Application:
    """GET/HEAD /{name}?offset=&count=&pad= sends that region; no Range parsing, on purpose.

    ``pad`` adds a header of that many bytes, to fill the socket before the body.
    """

    async def region(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["name"]
        offset = int(request.query.get("offset", 0))
        count = int(request.query.get("count", path.stat().st_size - offset))
        response = web.StreamResponse()
        response.content_length = count
        if pad := int(request.query.get("pad", 0)):
            response.headers["X-Pad"] = "p" * pad
        with path.open("rb") as f:
            try:
                used = await send_file_region(
                    request, response, f, offset, count, prefer=server.transfer
                )
            except ConnectionError:  # the appliance's case: see handler_cancellation
                server.gone.append(request.match_info["name"])
                return response  # the connection is closed already
            except asyncio.CancelledError:
                server.gone.append(request.match_info["name"])
                raise
        server.used.append(used)
        return response

    app = web.Application()
    app.router.add_get("/{name}", region)
    return app


@pytest.fixture
def handler_cancellation() -> bool:
    """False as in web.run_app, which the appliance runs on: a client that goes away
    shows up as ConnectionError. aiohttp's TestServer forces True (and ignores
    ``ssl``), so these tests start their own servers."""
    return False


@asynccontextmanager
async def running(
    root: Path,
    server: Server,
    *,
    handler_cancellation: bool = False,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[Server]:
    runner = web.AppRunner(make_app(root, server), handler_cancellation=handler_cancellation)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls).start()
        host, port = runner.addresses[0][:2]
        server.url = f"{'https' if tls else 'http'}://{host}:{port}"
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture(params=[Transfer.SENDFILE, Transfer.COPY], ids=lambda t: t.value)
async def server(
    request: pytest.FixtureRequest, root: Path, handler_cancellation: bool
) -> AsyncIterator[Server]:
    async with running(
        root, Server(request.param), handler_cancellation=handler_cancellation
    ) as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def read_response(
    reader: asyncio.StreamReader, *, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body, read off a raw connection."""
    status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines if h)}
    length = 0 if head else int(headers["content-length"])
    return int(status_line.split()[1]), headers, await reader.readexactly(length)


def request_bytes(path: str, method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


async def test_runs_under_uvloop(server: Server) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)


@pytest.mark.parametrize("name", list(SIZES))
async def test_whole_file(
    server: Server, client: aiohttp.ClientSession, files: dict[str, bytes], name: str
) -> None:
    async with client.get(f"{server.url}/{name}") as resp:
        assert resp.status == 200
        assert resp.content_length == len(files[name])
        assert await resp.read() == files[name]
    assert server.used == [server.transfer]


@pytest.mark.parametrize(
    ("offset", "count"),
    [(0, 1), (1, 1), (4_095, 4_097), (12_345, 1_000_003), (SIZES["seg"] - 1, 1), (777, 0)],
)
async def test_range_at_odd_offset(
    server: Server, client: aiohttp.ClientSession, files: dict[str, bytes], offset: int, count: int
) -> None:
    async with client.get(f"{server.url}/seg?offset={offset}&count={count}") as resp:
        assert resp.content_length == count
        assert await resp.read() == files["seg"][offset : offset + count]


async def test_keep_alive_serves_the_next_request(server: Server, files: dict[str, bytes]) -> None:
    reader, writer = await server.connect()
    try:
        for name in ("seg", "tiny"):
            writer.write(request_bytes(f"/{name}"))
            status, headers, body = await read_response(reader)
            assert (status, body) == (200, files[name])
            assert "connection" not in headers  # HTTP/1.1 keep-alive
    finally:
        writer.close()
    assert server.used == [server.transfer] * 2


async def test_small_responses_are_not_held_back(server: Server) -> None:
    # The fast path corks the socket; one left corked holds each response's last segment
    # for 200 ms before Linux sends it anyway.
    reader, writer = await server.connect()
    try:
        times = []
        for _ in range(5):
            start = time.monotonic()
            writer.write(request_bytes("/tiny"))
            await read_response(reader)
            times.append(time.monotonic() - start)
    finally:
        writer.close()
    assert statistics.median(times) < 0.1


async def test_headers_that_fill_the_socket_go_before_the_body(
    server: Server, files: dict[str, bytes]
) -> None:
    # The client reads nothing for a while, so most of the headers wait in uvloop's
    # buffer; the fast path writes behind uvloop's back and must wait for them first.
    reader, writer = await server.connect()
    try:
        writer.write(request_bytes(f"/seg?pad={HEADER_PAD_BYTES}"))
        await asyncio.sleep(0.3)
        status, headers, body = await read_response(reader)
        assert (status, len(headers["x-pad"]), body) == (200, HEADER_PAD_BYTES, files["seg"])
    finally:
        writer.close()
    assert server.used == [server.transfer]


async def test_pipelined_requests_to_a_slow_reader(server: Server, files: dict[str, bytes]) -> None:
    reader, writer = await server.connect()
    try:
        writer.write(request_bytes("/big") + request_bytes("/seg?offset=5"))
        await asyncio.sleep(0.3)
        assert (await read_response(reader))[2] == files["big"]
        assert (await read_response(reader))[2] == files["seg"][5:]
    finally:
        writer.close()


async def test_head_sends_headers_only(server: Server, files: dict[str, bytes]) -> None:
    reader, writer = await server.connect()
    try:
        writer.write(request_bytes("/seg", "HEAD"))
        status, headers, body = await read_response(reader, head=True)
        assert (status, int(headers["content-length"]), body) == (200, len(files["seg"]), b"")
        # A body sent after all would be read here as the start of the next response.
        writer.write(request_bytes("/tiny"))
        status, _, body = await read_response(reader)
        assert (status, body) == (200, files["tiny"])
    finally:
        writer.close()


@pytest.mark.parametrize("handler_cancellation", [False, True], ids=["reset-error", "cancelled"])
@pytest.mark.parametrize("how", ["close", "reset"])
async def test_client_going_away_mid_body(
    server: Server, files: dict[str, bytes], how: str
) -> None:
    before = open_fds()
    reader, writer = await server.connect()
    writer.write(request_bytes("/big"))
    await reader.readexactly(256 * 1024)  # the headers and the start of the body
    if how == "reset":  # RST instead of FIN: the server's next send fails at once
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    await eventually(lambda: server.gone == ["big"])

    # The server goes on serving, and every descriptor of the dead connection is closed.
    reader, writer = await server.connect()
    writer.write(request_bytes("/big", extra="Connection: close\r\n"))
    assert (await read_response(reader))[2] == files["big"]
    assert await reader.read() == b""  # closed by the server, as asked
    writer.close()
    await eventually(lambda: open_fds() == before)
    assert server.used == [server.transfer]


async def test_file_shorter_than_count_closes_the_connection(
    server: Server, files: dict[str, bytes]
) -> None:
    reader, writer = await server.connect()
    try:
        writer.write(request_bytes(f"/seg?offset=10&count={SIZES['seg']}"))
        with pytest.raises(asyncio.IncompleteReadError) as cut:
            await read_response(reader)
        assert cut.value.partial == files["seg"][10:]
    finally:
        writer.close()
    reader, writer = await server.connect()
    try:
        writer.write(request_bytes("/tiny"))
        assert (await read_response(reader))[2] == files["tiny"]
    finally:
        writer.close()


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate, made by the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", d / "key.pem", "-out", d / "cert.pem"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(d / "cert.pem", d / "key.pem")
    return context


async def test_tls_falls_back_to_copy(
    root: Path, client: aiohttp.ClientSession, files: dict[str, bytes], tls_context: ssl.SSLContext
) -> None:
    async with running(root, Server(Transfer.SENDFILE), tls=tls_context) as server:
        assert server.url.startswith("https://")
        async with client.get(f"{server.url}/seg?offset=3", ssl=False) as resp:
            assert await resp.read() == files["seg"][3:]
    assert server.used == [Transfer.COPY]


@pytest.mark.parametrize(
    ("tls", "socket_fd", "compressed", "expected"),
    [
        (False, 7, False, Transfer.SENDFILE),
        (True, 7, False, Transfer.COPY),
        (False, None, False, Transfer.COPY),
        (False, 7, True, Transfer.COPY),
    ],
)
def test_choose_transfer(
    tls: bool, socket_fd: int | None, compressed: bool, expected: Transfer
) -> None:
    kwargs = {"tls": tls, "socket_fd": socket_fd, "compressed": compressed}
    assert choose_transfer(Transfer.SENDFILE, **kwargs) is expected
    assert choose_transfer(Transfer.COPY, **kwargs) is Transfer.COPY
