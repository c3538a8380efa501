"""Failing over between upstreams, and hedging a slow one, against real HTTP servers on
loopback (each upstream a tiny aiohttp app that hangs, answers late, or fails)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.upstream import Outcome, Upstreams
from streamcdn.breaker import BreakerState

KEY = "titles/t1/360p/seg_00000.m4s"
HEAD_S = 1.0  # the head deadline these tests use
HEDGE_S = 0.3


class Upstream:
    """An upstream that waits ``delay_s`` (None: for ever), then answers ``status``."""

    def __init__(self, status: int = 200, delay_s: float | None = 0.0) -> None:
        self.status, self.delay_s = status, delay_s
        self.asked = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.asked += 1
        await asyncio.sleep(3600 if self.delay_s is None else self.delay_s)
        return web.Response(status=self.status, body=f"from {self.url}".encode())


MakeUpstreams = Callable[..., Awaitable[Upstreams]]


@pytest.fixture
async def make_upstreams(aiohttp_server) -> AsyncIterator[MakeUpstreams]:  # type: ignore[no-untyped-def]
    session = aiohttp.ClientSession()

    async def make(*upstreams: Upstream, hedge_after_s: float = HEDGE_S) -> Upstreams:
        for upstream in upstreams:
            app = web.Application()
            app.router.add_get("/{tail:.*}", upstream.handle)
            server: TestServer = await aiohttp_server(app)
            upstream.url = str(server.make_url("")).rstrip("/")
        return Upstreams(
            tuple(u.url for u in upstreams),
            session,
            key=None,
            token_ttl_s=60,
            head_timeout_s=HEAD_S,
            hedge_after_s=hedge_after_s,
        )

    yield make
    await session.close()


async def timed_open(upstreams: Upstreams) -> tuple[float, Outcome, str | None, str]:
    started = time.monotonic()
    fetch = await upstreams.open(KEY)
    took = time.monotonic() - started
    body = ""
    if fetch.response is not None:
        body = (await fetch.response.read()).decode()
        fetch.response.release()
    return took, fetch.outcome, fetch.upstream, body


def failures(upstreams: Upstreams, url: str) -> int:
    """Consecutive failures on the upstream's breaker, as /health shows them."""
    count = upstreams.breakers[url].snapshot(time.monotonic())["consecutive_failures"]
    assert isinstance(count, int)
    return count


async def test_a_hung_upstream_is_hedged_and_the_next_one_answers(
    make_upstreams: MakeUpstreams,
) -> None:
    hung, good = Upstream(delay_s=None), Upstream()
    upstreams = await make_upstreams(hung, good)
    took, outcome, url, body = await timed_open(upstreams)
    assert (outcome, url, body) == (Outcome.OK, good.url, f"from {good.url}")
    assert HEDGE_S * 0.9 <= took < HEAD_S, took  # at the hedge delay, not the head deadline
    assert (hung.asked, good.asked) == (1, 1)
    assert failures(upstreams, hung.url) == 1  # the slow head counts against it
    assert (upstreams.hedged_to[good.url], upstreams.passed_over[hung.url]) == (1, 1)


async def test_a_slow_upstream_that_answers_first_still_wins(
    make_upstreams: MakeUpstreams,
) -> None:
    slow, hung = Upstream(delay_s=HEDGE_S + 0.2), Upstream(delay_s=None)
    upstreams = await make_upstreams(slow, hung)
    took, outcome, url, body = await timed_open(upstreams)
    assert (outcome, url, body) == (Outcome.OK, slow.url, f"from {slow.url}")
    assert hung.asked == 1  # the hedge went out, and was cut off when the first answered
    assert failures(upstreams, slow.url) == 0
    assert upstreams.hedged_to[hung.url] == 1 and not upstreams.passed_over
    assert took < HEAD_S, took


async def test_without_hedging_a_hung_upstream_is_waited_out(
    make_upstreams: MakeUpstreams,
) -> None:
    hung, good = Upstream(delay_s=None), Upstream()
    upstreams = await make_upstreams(hung, good, hedge_after_s=0)
    took, outcome, url, _ = await timed_open(upstreams)
    assert (outcome, url) == (Outcome.OK, good.url)
    assert HEAD_S * 0.9 <= took < HEAD_S + 0.5, took
    assert failures(upstreams, hung.url) == 1


async def test_a_failing_upstream_moves_on_at_once_without_waiting_for_the_hedge(
    make_upstreams: MakeUpstreams,
) -> None:
    broken, good = Upstream(status=500), Upstream()
    upstreams = await make_upstreams(broken, good)
    took, outcome, url, _ = await timed_open(upstreams)
    assert (outcome, url) == (Outcome.OK, good.url)
    assert took < HEDGE_S * 0.9, took
    assert failures(upstreams, broken.url) == 1
    assert not upstreams.hedged_to  # a failover, not a hedge


async def test_a_hedge_that_fails_moves_on_at_once(make_upstreams: MakeUpstreams) -> None:
    hung, broken, good = Upstream(delay_s=None), Upstream(status=502), Upstream()
    upstreams = await make_upstreams(hung, broken, good)
    took, outcome, url, _ = await timed_open(upstreams)
    assert (outcome, url) == (Outcome.OK, good.url)
    # The hedge to `broken` goes out at HEDGE_S and fails at once: `good` is asked then,
    # not a second hedge delay later.
    assert HEDGE_S * 0.9 <= took < HEDGE_S * 1.8, took
    assert [u.asked for u in (hung, broken, good)] == [1, 1, 1]


async def test_a_404_from_the_hedge_is_the_answer(make_upstreams: MakeUpstreams) -> None:
    hung, origin = Upstream(delay_s=None), Upstream(status=404)
    upstreams = await make_upstreams(hung, origin)
    took, outcome, url, _ = await timed_open(upstreams)
    assert (outcome, url) == (Outcome.NOT_FOUND, origin.url)
    assert took < HEAD_S, took


async def test_when_every_upstream_hangs_the_fetch_ends_at_the_last_ones_deadline(
    make_upstreams: MakeUpstreams,
) -> None:
    hung = [Upstream(delay_s=None) for _ in range(3)]
    upstreams = await make_upstreams(*hung)
    started = time.monotonic()
    fetch = await upstreams.open(KEY)
    took = time.monotonic() - started
    assert fetch.outcome is Outcome.UNAVAILABLE and fetch.timed_out, fetch
    # Asked at 0, HEDGE_S and 2 * HEDGE_S; the last gives up HEAD_S after it was asked,
    # not after the three deadlines one after another (3 * HEAD_S).
    assert 2 * HEDGE_S + HEAD_S * 0.9 <= took < 2 * HEDGE_S + HEAD_S + 0.5, took
    assert [u.asked for u in hung] == [1, 1, 1]
    assert all(failures(upstreams, u.url) == 1 for u in hung)


async def test_a_hung_parent_opens_its_breaker_and_is_then_skipped(
    make_upstreams: MakeUpstreams,
) -> None:
    hung, good = Upstream(delay_s=None), Upstream()
    upstreams = await make_upstreams(hung, good)
    threshold = upstreams.breakers[hung.url].config.failure_threshold
    for _ in range(threshold):
        took, _, url, _ = await timed_open(upstreams)
        assert url == good.url and took >= HEDGE_S * 0.9
    assert upstreams.breakers[hung.url].state is BreakerState.OPEN
    took, _, url, _ = await timed_open(upstreams)
    assert url == good.url and took < HEDGE_S * 0.9, took  # not asked, not waited on
    assert hung.asked == threshold


async def test_a_cancelled_fetch_cancels_its_attempts(make_upstreams: MakeUpstreams) -> None:
    hung = [Upstream(delay_s=None) for _ in range(2)]
    upstreams = await make_upstreams(*hung)
    task = asyncio.create_task(upstreams.open(KEY))
    await asyncio.sleep(HEDGE_S + 0.1)  # both asked
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [u.asked for u in hung] == [1, 1]
    assert failures(upstreams, hung[0].url) == 1  # held its head past the hedge delay
    assert failures(upstreams, hung[1].url) == 0  # asked 0.1 s before: not slow yet
    await asyncio.sleep(0)
    assert not [t for t in asyncio.all_tasks() if "_head" in repr(t.get_coro())]
