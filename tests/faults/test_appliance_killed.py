"""An appliance killed mid-stream under 50 concurrent players: they fail over to the next
ranked appliance, none with >= 10 s buffered stalls, and no wrong byte is accepted (every
segment is checked against its X-Content-Digest and the title's manifest)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from origin.store import TitleStore
from player.session import PlaySummary, play
from streamcdn.tokens import sign, title_prefix
from tests.conftest import TITLE, publish_sample
from tests.control.conftest import start_stack

PLAYERS = 50


@pytest.fixture(scope="module")
def long_store(tmp_path_factory: pytest.TempPathFactory) -> TitleStore:
    return publish_sample(
        tmp_path_factory.mktemp("killed"), TITLE, duration_s=60.0, size=(320, 180)
    )


async def test_50_players_fail_over_without_a_stall(tmp_path: Path, long_store: TitleStore) -> None:
    stack = await start_stack(tmp_path, long_store)
    try:
        token = sign(
            title_prefix(TITLE), stack.deployment.signing_keys[0], expires=int(time.time()) + 600
        )
        urls = [
            f"{stack.appliances[a]}/s/{token}/titles/{TITLE}/master.m3u8" for a in ("a1", "ix1")
        ]
        summaries: list[PlaySummary] = []
        buffered_at_kill: dict[int, float] = {}
        connector = aiohttp.TCPConnector(limit=4 * PLAYERS)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def one(i: int) -> None:
                summary = await play(
                    urls, rule="ours", duration_s=24, session=http, appliances=["a1", "ix1"],
                    on_status=lambda s: summaries_by_player.__setitem__(i, s),
                )  # fmt: skip
                summaries.append(summary)

            summaries_by_player: dict[int, PlaySummary] = {}
            tasks = [asyncio.create_task(one(i)) for i in range(PLAYERS)]
            await asyncio.sleep(12)  # every player has buffered well past 10 s by now
            for i, s in summaries_by_player.items():
                buffered_at_kill[i] = s.timeline[-1].buffer_s if s.timeline else 0.0
            await stack.stop("a1")
            await asyncio.gather(*tasks)
        assert len(summaries) == PLAYERS
        well_buffered = [i for i, b in buffered_at_kill.items() if b >= 10]
        assert len(well_buffered) >= PLAYERS * 0.9, buffered_at_kill
        for i in well_buffered:
            s = summaries_by_player[i]
            assert s.stalls == 0, s.to_json(timeline=False)
            assert "digest" not in s.errors  # no wrong byte got through, none was offered
            assert s.appliances[0] == "a1" and "ix1" in s.appliances, s.appliances
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()
