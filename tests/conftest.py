"""Shared fixtures: tiny real titles made with the real ffmpeg, and a store holding them."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from media.sample import make_sample
from origin.ingest import ingest
from origin.store import TitleStore

TINY_SIZE = (640, 360)  # two rungs of the default ladder (360p, 240p), fast to encode
TINY_DURATION_S = 10.0  # three segments: 4 s, 4 s, 2 s
TITLE = "tiny"


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("src") / "tiny.mp4"
    make_sample(out, duration_s=TINY_DURATION_S, size=TINY_SIZE, pattern="testsrc")
    return out


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_source: Path) -> TitleStore:
    """A store with one published title, TITLE. Tests must not modify it."""
    s = TitleStore(tmp_path_factory.mktemp("store"))
    ingest(tiny_source, TITLE, s, name="Tiny test title")
    return s


@pytest.fixture(scope="session")
def title_dir(store: TitleStore) -> Path:
    return store.root / TITLE


# Ports handed out for servers that bind later come from below the kernel's ephemeral
# range (32768-60999 on Linux): a port from inside it can be taken, between this check
# and the bind, by any outgoing connection's local end (a heartbeat, a fill).
SERVER_PORTS = range(20000, 32768)
# A port is handed out once per test run. Checking that it is free does not reserve it,
# so without this two calls before either server binds (a stack's five ports) can get
# the same one, and a server that is still closing can lose its port to the next test.
_handed_out: set[int] = set()


def free_ports(span: int = 1) -> int:
    """A port P with P .. P + span - 1 all free now and never handed out before."""
    for _ in range(1000):
        base = random.randrange(SERVER_PORTS.start, SERVER_PORTS.stop - span + 1)
        ports = range(base, base + span)
        if _handed_out.intersection(ports):
            continue
        socks = []
        try:
            for port in ports:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        _handed_out.update(ports)
        return base
    raise RuntimeError(f"no {span} free ports in a row in {SERVER_PORTS} after 1000 tries")


def free_port() -> int:
    return free_ports(1)


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 15
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout_s} s")


def ffmpeg_read_all(url_or_path: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """What a real HLS client does with a master playlist: read every rendition to the end."""
    from media.ffmpeg import ffmpeg_path

    return subprocess.run(
        [
            ffmpeg_path(),
            "-hide_banner",
            "-nostdin",
            "-i",
            url_or_path,
            "-map",
            "0",
            "-c",
            "copy",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def streamcdn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamcdn.cli", *args]


@pytest.fixture
def origin_process(store: TitleStore) -> Iterator[str]:
    """`streamcdn serve origin` as its own process on a free port; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        streamcdn_cmd("serve", "origin", "--store", str(store.root), "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs: a real full disk. Needs root (CI runs as root); fails loudly otherwise."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs to fill (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


REDIS_SERVER_PATH = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """A redis-server of the test's own on a free port, stoppable and restartable."""

    def __init__(self, workdir: Path, *, durable: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.durable = durable  # an append-only file fsynced per write, as production runs
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if not os.access(REDIS_SERVER_PATH, os.X_OK):
            pytest.fail(f"{REDIS_SERVER_PATH} is missing: apt-get install redis-server")
        self.proc = subprocess.Popen(
            [REDIS_SERVER_PATH, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.durable else "no", "--appendfsync", "always",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(self.port, self.proc)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def publish_sample(
    root: Path, title: str, *, duration_s: float, size: tuple[int, int], name: str = "Long"
) -> TitleStore:
    """A store under ``root`` with one title of ``duration_s`` (made and ingested for real):
    for tests that need playback to outlast a player's buffer."""
    source = root / f"{title}.mp4"
    make_sample(source, duration_s=duration_s, size=size, pattern="testsrc")
    store = TitleStore(root / "store")
    ingest(source, title, store, name=name)
    return store
