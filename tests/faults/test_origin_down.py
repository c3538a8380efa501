"""The brain/brawn split: with the origin gone, what the appliances hold keeps playing,
and what they do not hold fails fast with a clear error.

The whole stack runs in this process on loopback (tests/control/conftest.py); the HTTP
player plays through control like a viewer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from origin.store import TitleStore
from player.session import PlayerConfig, PlayerError, play, play_title
from streamcdn.tokens import sign, title_prefix
from tests.conftest import TITLE
from tests.control.conftest import PASSWORD, Stack, sign_up_and_login, start_stack


@pytest.fixture
async def stack(tmp_path: Path, store: TitleStore) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, store)
    yield s
    for running in reversed(list(s.running.values())):
        await running.close()


async def test_cached_titles_keep_playing_and_the_rest_fail_fast(stack: Stack) -> None:
    email = "viewer@example.com"
    await sign_up_and_login(stack.control, email)
    first = await play_title(stack.control, TITLE, email, PASSWORD, rule="ours", play_out=False)
    assert first.segments_total and len(first.timeline) == first.segments_total
    await stack.stop("origin")
    # The appliance that served it has every object: the title plays end to end again.
    again = await play_title(stack.control, TITLE, email, PASSWORD, rule="ours", play_out=False)
    assert len(again.timeline) == again.segments_total and again.stalls == 0
    assert again.appliances[:1] == first.appliances[:1] and not again.errors
    # A title no appliance holds fails fast, clearly: the appliance cannot reach the origin.
    gone = f"{TITLE}-gone"
    token = sign(
        title_prefix(gone), stack.deployment.signing_keys[0], expires=int(time.time()) + 60
    )
    missing = f"{stack.appliances['a1']}/s/{token}/titles/{gone}/master.m3u8"
    config = PlayerConfig(give_up_s=3.0)
    started = time.monotonic()
    with pytest.raises(PlayerError) as err:
        await play([missing], rule="ours", config=config, play_out=False)
    assert time.monotonic() - started < 10
    assert "master.m3u8" in str(err.value) and "http_5xx" in str(err.value), err.value
