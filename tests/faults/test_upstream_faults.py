"""Upstreams that misbehave, behind a TCP proxy of the test's own: a stuck fill (its answer
trickles at seconds per byte), a parent appliance that trickles every answer, and one that
flaps. Coalesced waiters are not held by the stuck fill beyond the lock timeout (the first
to give up replaces it, and the replacement is cached); a trickling parent misses its
response-head deadline, which counts against its breaker, and the next upstream answers;
a flapping parent trips its circuit breaker, so misses go to the next upstream without
trying it, until a probe finds it back."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from appliance.config import ApplianceConfig
from origin.store import TitleStore
from player.session import PlayerConfig
from streamcdn.digest import digest_bytes
from tests.conftest import TITLE, free_port
from tests.faults.stack import ApplianceSpec, Proxy, Stack, wait_until

SEGMENT = "360p/seg_00000.m4s"
LOCK_TIMEOUT_S = 1.0
WAITERS = 20
BREAKER_THRESHOLD = 5  # streamcdn/breaker.py: consecutive failures that open a breaker


async def appliance_results(stack: Stack, appliance: str) -> dict[str, int]:
    """streamcdn_appliance_requests_total by result, from the appliance's /metrics."""
    async with stack.http.get(f"{stack.urls[appliance]}/metrics") as r:
        text = await r.text()
    found = re.findall(r'streamcdn_appliance_requests_total\{result="(\w+)"\} ([0-9.e+]+)', text)
    return {result: int(float(n)) for result, n in found}


def behind_a_proxied_parent(
    store: TitleStore,
) -> tuple[dict[str, str], int, str, list[ApplianceSpec]]:
    """a1 with upstreams [parent, origin], the parent being ix1 reached through a proxy
    port of the test's (default lock and head timeouts: what a deployment gets untuned):
    (the title's digests, the proxy's port, the parent's URL, the specs)."""
    digests = {rel: f["xxh3-128"] for rel, f in store.manifest(TITLE)["files"].items()}
    proxy_port = free_port()
    parent = f"http://127.0.0.1:{proxy_port}"
    specs = [
        ApplianceSpec("ix1", site="ix"),
        ApplianceSpec("a1", upstreams=(parent, "origin"), flags=("--read-ahead", "0")),
    ]
    return digests, proxy_port, parent, specs


async def test_waiters_on_a_stuck_fill_replace_it_after_the_lock_timeout(
    tmp_path: Path, store: TitleStore
) -> None:
    digest = store.manifest(TITLE)["files"][SEGMENT]["xxh3-128"]
    proxy_port = free_port()
    spec = ApplianceSpec(
        "a1",
        upstreams=(f"http://127.0.0.1:{proxy_port}",),
        extra=f"lock_timeout_s = {LOCK_TIMEOUT_S}",  # from the deployment file
        flags=("--read-ahead", "0"),
    )
    async with Stack(tmp_path, store, [spec]) as stack:
        proxy = Proxy(stack.port("origin"))
        proxy.trickle_first, proxy.s_per_byte = 1, 2.0  # the shared fill's answer: 2 s a byte
        await proxy.start(proxy_port)
        try:
            await stack.start("origin", "a1")
            url = stack.signed("a1", SEGMENT)

            async def timed() -> tuple[float, int, str, bytes]:
                started = time.monotonic()
                status, headers, body = await stack.get(url)
                return time.monotonic() - started, status, headers.get("X-Cache", ""), body

            results = await asyncio.wait_for(
                asyncio.gather(*(timed() for _ in range(WAITERS))), timeout=15
            )
            waits = sorted(r[0] for r in results)
            for _, status, _, body in results:
                assert status == 200 and digest_bytes(body) == digest
            # The first to give up replaced the stuck fill; the others joined the replacement.
            assert sorted(r[2] for r in results) == ["COALESCED"] * (WAITERS - 1) + ["MISS"]
            # They all waited on the stuck fill (coalesced) up to the lock timeout, no longer.
            assert waits[0] >= LOCK_TIMEOUT_S * 0.9 and waits[-1] < LOCK_TIMEOUT_S + 3, waits
            assert (await appliance_results(stack, "a1")).get("fill_replaced") == 1
            health = await stack.health("a1")
            assert health["fills_in_flight"] == 0 and health["fills_replaced"] == 1
            assert health["tiers"]["memory"]["objects"] == 1  # the replacement was cached
            _, headers, body = await stack.get(url)
            assert headers["X-Cache"] == "HIT" and digest_bytes(body) == digest
            print(
                f"{WAITERS} waiters on a stuck fill served in {waits[0]:.2f}-{waits[-1]:.2f} s;"
                " 1 fill replaced, then a hit"
            )
        finally:
            await proxy.close()


async def test_a_parent_that_trickles_every_answer_is_hedged_and_then_passed_over(
    tmp_path: Path, store: TitleStore
) -> None:
    digests, proxy_port, parent, specs = behind_a_proxied_parent(store)
    head_deadline_s = ApplianceConfig.upstream_head_timeout_s
    hedge_s = ApplianceConfig.upstream_hedge_after_s
    player_first_byte_s = PlayerConfig().read_timeout_s
    async with Stack(tmp_path, store, specs) as stack:
        proxy = Proxy(stack.port("ix1"))
        proxy.trickle_first, proxy.s_per_byte = 10**6, 2.0  # every answer, headers included
        await proxy.start(proxy_port)
        try:
            await stack.start("origin", "ix1", "a1")
            waits = []
            for rel in list(digests)[: BREAKER_THRESHOLD + 2]:  # cold, one after another
                started = time.monotonic()
                status, headers, body = await stack.get(stack.signed("a1", rel))
                waits.append(time.monotonic() - started)
                assert status == 200 and digest_bytes(body) == digests[rel], rel
                assert headers["X-Cache"] == "MISS"
            # The parent holds its head back, so after the hedge delay the origin is asked
            # too and answers: before the parent's head deadline, never a lock timeout.
            assert max(waits) < head_deadline_s < player_first_byte_s, waits
            assert min(waits[:BREAKER_THRESHOLD]) >= hedge_s * 0.9, waits
            # Each slow head counted against the parent's breaker: open after 5, then the
            # parent is not tried at all and misses go straight to the origin.
            state = (await stack.health("a1"))["upstreams"][parent]
            assert state["state"] == "open" and state["trips"] == 1, state
            assert state["passed_over"] == BREAKER_THRESHOLD, state
            assert max(waits[BREAKER_THRESHOLD:]) < hedge_s / 2, waits
            assert proxy.accepted == BREAKER_THRESHOLD
            print(
                f"parent trickling its heads: misses served by the origin in"
                f" {min(waits[:BREAKER_THRESHOLD]):.2f}-{max(waits[:BREAKER_THRESHOLD]):.2f} s"
                f" (hedge {hedge_s} s, head deadline {head_deadline_s} s), breaker open after"
                f" {BREAKER_THRESHOLD}, then {max(waits[BREAKER_THRESHOLD:]):.3f} s"
            )
        finally:
            await proxy.close()


async def test_a_flapping_parent_trips_its_breaker_and_misses_go_to_the_origin(
    tmp_path: Path, store: TitleStore
) -> None:
    digests, proxy_port, parent, specs = behind_a_proxied_parent(store)
    async with Stack(tmp_path, store, specs) as stack:
        proxy = Proxy(stack.port("ix1"))
        await proxy.start(proxy_port)
        try:
            await stack.start("origin", "ix1", "a1")

            async def round_of_misses() -> tuple[int, int, float]:
                """Every file of the title, cold on a1, one after another, as a viewer would
                ask: (origin fetches, connections the parent saw, slowest answer in s)."""
                await stack.purge("a1")
                origin, accepted, slowest = await stack.origin_fetches(), proxy.accepted, 0.0
                for rel, digest in digests.items():
                    started = time.monotonic()
                    status, _, body = await stack.get(stack.signed("a1", rel))
                    slowest = max(slowest, time.monotonic() - started)
                    assert status == 200 and digest_bytes(body) == digest, rel
                fetched = await stack.origin_fetches() - origin
                # Every object on disk before the next purge, so each round starts alike.
                await wait_until(all_written, "every object written to a1's disk")
                return fetched, proxy.accepted - accepted, slowest

            async def all_written() -> bool:
                return (await stack.health("a1"))["tiers"]["disk"]["objects"] == len(digests)

            async def breaker() -> dict:
                return (await stack.health("a1"))["upstreams"][parent]

            n = len(digests)
            fetched, _, _ = await round_of_misses()
            assert fetched == n  # through the parent, which filled once from the origin
            assert (await round_of_misses())[0] == 0  # again through the parent: all its hits

            proxy.down = True  # the parent resets every connection
            fetched, tried_down, slowest_down = await round_of_misses()
            assert fetched == n  # every miss served by the next upstream, the origin
            # 5 failed fetches open the breaker (aiohttp tries a reset request once more on a
            # fresh connection, so up to 10 connections); after that the parent is not tried.
            assert BREAKER_THRESHOLD <= tried_down <= 2 * BREAKER_THRESHOLD, tried_down
            assert (await breaker())["state"] == "open"

            proxy.down = False  # back up, but the breaker is still open: not tried yet
            fetched, tried, _ = await round_of_misses()
            assert (fetched, tried) == (n, 0)

            async def probing() -> bool:
                return (await breaker())["state"] == "half_open"

            await wait_until(probing, "the breaker lets a probe through", timeout_s=10)
            fetched, tried, _ = await round_of_misses()
            assert fetched == 0 and tried >= 1  # the probe found the parent back: all via it
            state = await breaker()
            assert state["state"] == "closed" and state["trips"] == 1, state
            print(
                f"parent down: {n} of {n} misses served by the origin, slowest {slowest_down:.3f} s;"
                f" the parent saw {tried_down} connections, then none until the probe after"
                f" {state['open_s']:.0f} s open"
            )
        finally:
            await proxy.close()


@pytest.mark.parametrize(("hedging", "upstreams"), [("on", 2), ("on", 3), ("off", 2)])
async def test_when_no_upstream_ever_answers_clients_get_a_504_not_a_hang(
    tmp_path: Path, store: TitleStore, hedging: str, upstreams: int
) -> None:
    """Every upstream accepts and never sends a byte.

    Hedging on (the default): each next upstream is asked too after the hedge delay, and
    every client gets a 504 when the last one's head deadline passes: 2 s with two, 2.5 s
    with three, the lock timeout itself, where the fill must still be seen as failing
    over, not stuck.

    Hedging off: the fill tries each up to its head deadline, 3 s in all, longer than the
    lock timeout; when that runs out the fill is on its second upstream, failing over
    rather than stuck, so the waiters let it finish instead of replacing it (which would
    start again at the first). Every client gets a 504 at the sum of the head deadlines.

    Either way under the player's first-byte timeout, and the appliance serves the object
    as soon as an upstream answers again."""
    digest = store.manifest(TITLE)["files"][SEGMENT]["xxh3-128"]
    ports = tuple(free_port() for _ in range(upstreams))
    spec = ApplianceSpec(
        "a1",
        upstreams=tuple(f"http://127.0.0.1:{p}" for p in ports),
        flags=("--read-ahead", "0"),
        extra="upstream_hedge_after_s = 0" if hedging == "off" else "",
    )
    lock_timeout_s = ApplianceConfig.lock_timeout_s
    head_deadline_s = ApplianceConfig.upstream_head_timeout_s
    # When the last upstream is asked; it is given up a head deadline later.
    step_s = ApplianceConfig.upstream_hedge_after_s if hedging == "on" else head_deadline_s
    expected_s = (upstreams - 1) * step_s + head_deadline_s
    player_first_byte_s = PlayerConfig().read_timeout_s
    async with Stack(tmp_path, store, [spec]) as stack:
        proxies = [Proxy(stack.port("origin")) for _ in ports]
        for proxy, port in zip(proxies, ports, strict=True):
            proxy.hang = True
            await proxy.start(port)
        try:
            await stack.start("origin", "a1")
            url = stack.signed("a1", SEGMENT)

            async def timed() -> tuple[float, int]:
                started = time.monotonic()
                status, _, _ = await stack.get(url)
                return time.monotonic() - started, status

            results = await asyncio.wait_for(
                asyncio.gather(*(timed() for _ in range(WAITERS))), timeout=20
            )
            waits = sorted(r[0] for r in results)
            assert {r[1] for r in results} == {504}, results
            assert waits[0] >= expected_s * 0.9, waits  # every upstream was tried
            assert waits[-1] < expected_s + 0.5 < player_first_byte_s, waits

            async def no_fill_left() -> bool:
                return (await stack.health("a1"))["fills_in_flight"] == 0

            await wait_until(no_fill_left, "every fill over", timeout_s=expected_s)
            health = await stack.health("a1")
            assert health["fills_replaced"] == 0  # failing over is not stuck
            assert health["tiers"]["memory"]["objects"] == 0  # nothing was cached
            assert all(p.accepted == 1 for p in proxies)  # one try each, no second round

            for proxy in proxies:
                proxy.hang = False  # the upstreams answer again

            async def served() -> bool:
                status, _, body = await stack.get(url)
                return status == 200 and digest_bytes(body) == digest

            # At once, or once an upstream's breaker lets its probe through.
            await wait_until(served, "served once an upstream answers", timeout_s=20)
            print(
                f"{upstreams} upstreams not answering, hedging {hedging}: {WAITERS} clients got"
                f" 504 in"
                f" {waits[0]:.2f}-{waits[-1]:.2f} s (lock timeout {lock_timeout_s} s, head"
                f" deadline {head_deadline_s} s each); served again once one answered"
            )
        finally:
            for proxy in proxies:
                await proxy.close()
