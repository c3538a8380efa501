"""Real processes on loopback for the fault suite: each service is `streamcdn serve ...`
started from one deployment file, and a small TCP proxy of the test's own stands in for an
upstream that is slow or flaps.

    async with Stack(tmp_path, store, [ApplianceSpec("a1")]) as stack:
        await stack.start("origin", "a1")
        stack.kill("a1")  # SIGKILL, as a crash
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import aiohttp

from origin.store import TitleStore
from streamcdn.config import Deployment, load
from streamcdn.tokens import sign, title_prefix
from tests.conftest import TITLE, free_port, streamcdn_cmd

ADMIN_KEY = "faults-admin-key-0123456789"
ORIGIN_ROUTES = ("/titles/{title}/{path}", "/titles/{title}/manifest.json")
START_TIMEOUT_S = 20.0  # a service's first /health answer, on two busy cores


@dataclass(frozen=True)
class ApplianceSpec:
    id: str
    site: str = "isp-a"
    upstreams: tuple[str, ...] = ("origin",)  # appliance ids, "origin" or URLs, in order
    cache_dir: Path | None = None  # default: TMP/cache-ID
    extra: str = ""  # more TOML lines for its entry, e.g. 'lock_timeout_s = 1'
    flags: tuple[str, ...] = ()  # more `serve appliance` flags, e.g. ("--read-ahead", "0")


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 10.0
) -> None:
    """Poll ``check`` until it is true; AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.05)


class Stack:
    """Origin, steering, control and appliances, each its own process, from one deployment
    file; every service's stdout and stderr go to TMP/NAME.log."""

    def __init__(
        self,
        tmp: Path,
        store: TitleStore,
        appliances: Sequence[ApplianceSpec],
        *,
        steering: bool = False,
        control: bool = False,
    ) -> None:
        self.tmp = tmp
        self.specs = {a.id: a for a in appliances}
        names = ["origin", *(["steering"] if steering else []), *(["control"] if control else [])]
        self.urls = {n: f"http://127.0.0.1:{free_port()}" for n in [*names, *self.specs]}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.path = tmp / "deployment.toml"
        self.path.write_text(self._deployment_text(store))
        self.deployment: Deployment = load(self.path)
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    def port(self, name: str) -> int:
        return int(self.urls[name].rsplit(":", 1)[1])

    def cache_dir(self, appliance: str) -> Path:
        return self.specs[appliance].cache_dir or self.tmp / f"cache-{appliance}"

    def _deployment_text(self, store: TitleStore) -> str:
        u = self.urls
        text = f"""
[keys]
signing = ["k1:faults-signing-key-0123456789"]
admin = "{ADMIN_KEY}"
[origin]
url = "{u["origin"]}"
store = "{store.root}"
"""
        if "steering" in u:
            text += f"""[steering]
url = "{u["steering"]}"
default_site = "isp-a"
heartbeat_interval_s = 0.2
"""
        if "control" in u:
            text += f"""[control]
url = "{u["control"]}"
db = "{self.tmp / "control.db"}"
events_file = "{self.tmp / "events.jsonl"}"
"""
        text += """[[sites]]
name = "isp-a"
cidrs = ["127.0.0.0/8"]
fallbacks = ["ix"]
[[sites]]
name = "ix"
cidrs = ["192.0.2.0/24"]
"""
        for a in self.specs.values():
            upstreams = ", ".join(f'"{x}"' for x in a.upstreams)
            text += f"""[[appliances]]
id = "{a.id}"
url = "{u[a.id]}"
site = "{a.site}"
capacity_mbps = 1000
upstreams = [{upstreams}]
cache_dir = "{self.cache_dir(a.id)}"
{a.extra}
"""
        return text

    # -- processes -------------------------------------------------------------------

    def _command(self, name: str) -> list[str]:
        config = ("--config", str(self.path))
        if name in self.specs:
            return streamcdn_cmd(
                "serve", "appliance", "--id", name, *config, *self.specs[name].flags
            )
        return streamcdn_cmd("serve", name, *config)

    async def start(self, *names: str) -> None:
        """Start the services (at once) and wait until each answers /health."""
        for name in names:
            assert name not in self.procs, f"{name} is running already"
            with (self.tmp / f"{name}.log").open("ab") as log:
                self.procs[name] = subprocess.Popen(
                    self._command(name),
                    stdout=log,
                    stderr=log,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
        await asyncio.gather(*(self._wait_serving(n) for n in names))

    async def _wait_serving(self, name: str) -> None:
        proc, deadline = self.procs[name], time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                async with self.http.get(f"{self.urls[name]}/health") as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
        raise AssertionError(f"{name} did not serve within {START_TIMEOUT_S} s:\n{self.log(name)}")

    def log(self, name: str, lines: int = 30) -> str:
        path = self.tmp / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the service and reap it (SIGKILL by default: a crash, nothing flushed)."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def pause(self, name: str) -> None:
        """SIGSTOP: the service hangs; its port still accepts connections, nothing answers."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT after :meth:`pause`."""
        self.procs[name].send_signal(signal.SIGCONT)

    async def close(self) -> None:
        for name in list(self.procs):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused one must run to stop
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            del self.procs[name]
        await self.http.close()

    async def __aenter__(self) -> Stack:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- talking to it ---------------------------------------------------------------

    def signed(self, appliance: str, rel: str, title: str = TITLE) -> str:
        """A signed URL of ``rel`` inside ``title`` on ``appliance``."""
        key = self.deployment.signing_keys[0]
        token = sign(title_prefix(title), key, expires=int(time.time()) + 600)
        return f"{self.urls[appliance]}/s/{token}/titles/{title}/{rel}"

    async def health(self, name: str) -> dict:
        async with self.http.get(f"{self.urls[name]}/health") as r:
            return await r.json()

    async def get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        async with self.http.get(url) as r:
            return r.status, dict(r.headers), await r.read()

    async def origin_fetches(self) -> int:
        """Title files (manifest.json included) the origin has served, from its /metrics."""
        async with self.http.get(f"{self.urls['origin']}/metrics") as r:
            text = await r.text()
        return sum(requests_served(text, route) for route in ORIGIN_ROUTES)

    async def purge(self, appliance: str, title: str = TITLE) -> None:
        """Drop the title from both of the appliance's tiers, so the next requests miss."""
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        url = f"{self.urls[appliance]}/admin/cache/titles/{title}"
        async with self.http.delete(url, headers=headers) as r:
            assert r.status == 200, (r.status, await r.text())


def requests_served(metrics: str, route: str, status: str = "200") -> int:
    """GETs of ``route`` answered with ``status``, from a service's /metrics text."""
    prefix = f'streamcdn_http_requests_total{{method="GET",route="{route}",status="{status}"}} '
    for line in metrics.splitlines():
        if line.startswith(prefix):
            return int(float(line[len(prefix) :]))
    return 0


class Proxy:
    """A TCP proxy in front of ``target_port`` on loopback, for upstream faults.

    ``down``: every connection is reset as soon as it is accepted (and going down resets
    the ones open), as a flapping parent does. ``trickle_first``: the first N connections
    get the answer at one byte per ``s_per_byte`` seconds, headers included (a stuck fill).
    ``rate_bps``: every other connection's answer is paced to this many bytes a second.
    ``hang``: every connection is accepted and read, and never answered (nor closed)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.trickle_first = 0
        self.s_per_byte = 1.0
        self.rate_bps: float | None = None
        self.hang = False
        self.accepted = 0
        self.reset = 0
        self._down = False
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._open):
            _reset(writer)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def down(self) -> bool:
        return self._down

    @down.setter
    def down(self, value: bool) -> None:
        self._down = value
        if value:
            for writer in list(self._open):
                _reset(writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._down:
            self.reset += 1
            _reset(writer)
            return
        if self.hang:
            self._open.add(writer)
            with contextlib.suppress(ConnectionError, OSError):
                while await reader.read(64 * 1024):
                    pass  # swallow the request; the answer never comes
            self._open.discard(writer)
            return
        trickle = self.accepted <= self.trickle_first
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            _reset(writer)
            return
        self._open.update((writer, up_writer))
        tasks = [
            asyncio.create_task(self._pump(reader, up_writer, paced=False)),
            asyncio.create_task(self._pump(up_reader, writer, paced=True, trickle=trickle)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            for w in (writer, up_writer):
                self._open.discard(w)
                w.close()

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        *,
        paced: bool,
        trickle: bool = False,
    ) -> None:
        try:
            while data := await src.read(1 if trickle else 64 * 1024):
                if trickle:
                    await asyncio.sleep(self.s_per_byte)
                elif paced and self.rate_bps:
                    await asyncio.sleep(len(data) / self.rate_bps)
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if dst.can_write_eof():
                with contextlib.suppress(OSError):
                    dst.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a crashed or refusing peer does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
