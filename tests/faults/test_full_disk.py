"""An appliance whose cache dir is on a full filesystem (a real 1 MiB tmpfs, almost all
taken): it keeps serving every object by pass-through and from memory, a player sees the
title play end to end twice with no error, and /health says `degraded` and why."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from origin.store import TitleStore
from player.session import play
from tests.faults.stack import ApplianceSpec, Stack, wait_until


async def test_a_full_disk_degrades_the_appliance_but_it_keeps_serving(
    tmp_path: Path, store: TitleStore, tiny_tmpfs: Path
) -> None:
    (tiny_tmpfs / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))  # < 1 segment free
    spec = ApplianceSpec("a1", cache_dir=tiny_tmpfs / "cache")
    async with Stack(tmp_path, store, [spec]) as stack:
        await stack.start("origin", "a1")
        master = stack.signed("a1", "master.m3u8")
        async with aiohttp.ClientSession() as http:
            first = await play([master], rule="ours", session=http, play_out=False)

            async def degraded() -> bool:
                return (await stack.health("a1"))["status"] == "degraded"

            await wait_until(degraded, "/health reporting the full disk", timeout_s=5)
            again = await play([master], rule="ours", session=http, play_out=False)
        for summary in (first, again):
            assert summary.ended == "title" and len(summary.timeline) == summary.segments_total
            assert not summary.errors and summary.stalls == 0, summary.errors
        health = await stack.health("a1")
        assert health["reasons"] == ["disk writes failing: No space left on device"], health
        disk, memory = health["tiers"]["disk"], health["tiers"]["memory"]
        assert disk["objects"] < memory["objects"]  # what the disk could not take, memory holds
        print(
            f"played twice with 0 errors; /health {health['status']}: {health['reasons'][0]};"
            f" {disk['objects']} objects on disk, {memory['objects']} in memory"
        )
