"""Real clients on a signed appliance URL: VLC (Debian's cvlc, headless) and ffmpeg."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from origin.store import TitleStore
from tests.conftest import TITLE
from tests.control.conftest import Stack, start_stack

VLC_ERRORS = re.compile(r"\] (\w+ )?(demux|decoder|packetizer|adaptive) error: (.*)")


@pytest.fixture
async def stack(tmp_path: Path, store: TitleStore) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, store)
    yield s
    for running in reversed(list(s.running.values())):
        await running.close()


def signed_master(stack: Stack, appliance: str = "a1") -> str:
    from streamcdn.tokens import sign, title_prefix

    token = sign(
        title_prefix(TITLE), stack.deployment.signing_keys[0], expires=int(time.time()) + 600
    )
    return f"{stack.appliances[appliance]}/s/{token}/titles/{TITLE}/master.m3u8"


async def appliance_gets(stack: Stack, appliance: str = "a1") -> int:
    """Objects the appliance served (hits, misses, coalesced), from its own /metrics."""
    url = f"{stack.appliances[appliance]}/metrics"
    async with ClientSession() as s, s.get(url) as r:
        text = await r.text()
    served = re.findall(r'requests_total\{result="(?:hit|miss|coalesced)"\} (\S+)', text)
    return int(sum(float(v) for v in served))


async def test_vlc_plays_a_signed_appliance_url(stack: Stack, tmp_path: Path) -> None:
    cvlc = shutil.which("cvlc")
    if cvlc is None:
        pytest.fail(
            "cvlc is missing: `make test` installs it (apt-get install vlc-bin vlc-plugin-base)"
        )
    home = tmp_path / "vlc-home"
    home.mkdir()
    home.chmod(0o777)
    before = await appliance_gets(stack)
    # VLC refuses to run as root: run it as nobody when we are root.
    drop = (
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        if os.geteuid() == 0
        else []
    )
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *drop, "env", f"HOME={home}", cvlc, "--intf", "dummy", "--vout", "dummy", "--aout", "dummy",
        "--play-and-exit", "--run-time=7", "-vv", signed_master(stack),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    log = out.decode(errors="replace")
    assert time.monotonic() - started >= 6, log[-2000:]  # it kept playing for >= 6 s
    assert not VLC_ERRORS.findall(log), VLC_ERRORS.findall(log)
    assert "adaptive demux" in log  # VLC read it as HLS
    # From the appliance's own counters: the master, playlists, init and media segments.
    assert await appliance_gets(stack) - before >= 6


async def test_ffmpeg_reads_a_whole_title_through_an_appliance(stack: Stack) -> None:
    from tests.conftest import ffmpeg_read_all

    before = await appliance_gets(stack, "ix1")
    result = await asyncio.to_thread(ffmpeg_read_all, signed_master(stack, "ix1"))
    assert result.returncode == 0, result.stderr[-1500:]
    assert await appliance_gets(stack, "ix1") - before >= 10  # every rendition, every segment
