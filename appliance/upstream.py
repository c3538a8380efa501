"""Fetching from upstreams (a parent appliance, then the origin), each behind a circuit breaker.

A 404 is an answer, not a failure: the parent asked the origin too. Connection errors,
timeouts and 5xx count against that upstream's breaker, and the next one is tried.

A read timeout alone never fires on an upstream that trickles (it restarts with every
byte), so each attempt has a deadline on its whole response head (connect, status line
and headers), and the body a minimum average rate (``body_deadline``, enforced by the fill).

An upstream that has not answered within ``hedge_after_s`` is not waited on alone: the
next one is asked too (a hedged request), and the first head to come back wins. The one
passed over counts as a failure on its breaker, since a head that slow is one; it is cut
off (no retry storm: at most one attempt per upstream per fetch).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from streamcdn.breaker import CircuitBreaker
from streamcdn.tokens import SigningKey, sign, title_prefix

log = logging.getLogger("streamcdn.appliance.upstream")

NOT_FOUND_HEADER = "X-Not-Found"
BODY_GRACE_S = 2.0  # before an upstream body is held to its minimum rate


class Outcome(enum.Enum):
    OK = "ok"
    NOT_FOUND = "not found"
    UNAVAILABLE = "every upstream failed or is circuit-broken"


@dataclass
class Fetch:
    outcome: Outcome
    response: aiohttp.ClientResponse | None = None
    upstream: str | None = None
    title_missing: bool = False  # the 404 was for the whole title
    detail: str = ""
    timed_out: bool = False  # every upstream tried let its deadline pass (none refused)


class Upstreams:
    def __init__(
        self,
        urls: tuple[str, ...],
        session: aiohttp.ClientSession,
        *,
        key: SigningKey | None,
        token_ttl_s: float,
        head_timeout_s: float = 1.5,
        hedge_after_s: float = 0.5,
        min_body_bps: float = 32_000.0,
    ) -> None:
        self.urls = urls
        self.head_timeout_s = head_timeout_s
        self.hedge_after_s = hedge_after_s  # 0: no hedging, one upstream at a time
        self.min_body_bps = min_body_bps
        self.session = session
        self.breakers = {url: CircuitBreaker() for url in urls}
        self.hedged_to: Tally[str] = Tally()  # attempts sent as a hedge, by upstream
        self.passed_over: Tally[str] = Tally()  # slow attempts cut off, by upstream
        self._key = key
        self._token_ttl_s = token_ttl_s

    def _headers(self, key: str) -> dict[str, str]:
        """A parent appliance wants a token, like any client: sign one for the title and send
        it as a bearer token, so the path stays canonical for parents and origin alike."""
        if self._key is None:
            return {}
        title = key.split("/", 2)[1]
        token = sign(title_prefix(title), self._key, expires=int(time.time() + self._token_ttl_s))
        return {"Authorization": f"Bearer {token}"}

    async def _head(self, url: str, key: str) -> aiohttp.ClientResponse:
        async with asyncio.timeout(self.head_timeout_s):
            return await self.session.get(
                f"{url.rstrip('/')}/{key}", headers=self._headers(key), allow_redirects=False
            )

    async def open(self, key: str, on_attempt: Callable[[], None] | None = None) -> Fetch:
        """GET ``key`` from the first upstream that answers; the caller releases the response.

        Upstreams are tried in order: the next one as soon as the one before fails, or as a
        hedge once it has kept its head back for ``hedge_after_s``. ``on_attempt`` is
        called as each upstream is tried (not those whose breaker is open).
        """
        queue = iter(self.urls)
        attempts: dict[asyncio.Task[aiohttp.ClientResponse], tuple[str, float]] = {}
        failures: list[str] = []
        timeouts = 0

        def try_next() -> str | None:
            """Ask the next upstream whose breaker lets it be asked; None: none left."""
            for url in queue:
                if not self.breakers[url].allow(time.monotonic()):
                    failures.append(f"{url}: circuit open")
                    continue
                if on_attempt is not None:
                    on_attempt()
                attempts[asyncio.create_task(self._head(url, key))] = (url, time.monotonic())
                return url
            return None

        more = try_next() is not None
        try:
            while attempts:
                newest = max(started for _, started in attempts.values())
                hedge_in = newest + self.hedge_after_s - time.monotonic()
                done, _ = await asyncio.wait(
                    attempts,
                    timeout=max(0.0, hedge_in) if more and self.hedge_after_s else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    hedge = try_next()  # the slow one keeps its chance
                    if hedge is not None:
                        self.hedged_to[hedge] += 1
                    more = hedge is not None
                    continue
                for task in done:
                    url, _ = attempts.pop(task)
                    answer = self._settle(task, url)
                    if isinstance(answer, Fetch):
                        return answer
                    failures.append(f"{url}: {answer}")
                    timeouts += answer == "TimeoutError"
                more = try_next() is not None  # after a failure: the next one at once
        finally:
            await self._cut_off(attempts)
        return Fetch(
            Outcome.UNAVAILABLE,
            detail="; ".join(failures),
            timed_out=0 < timeouts == len(failures),
        )

    def _settle(self, task: asyncio.Task[aiohttp.ClientResponse], url: str) -> Fetch | str:
        """A finished attempt: the fetch's answer (200, or a 404, which is an answer too),
        or why it failed, counted on the upstream's breaker."""
        breaker = self.breakers[url]
        try:
            resp = task.result()
        except (aiohttp.ClientError, TimeoutError) as exc:
            breaker.record_failure(time.monotonic())
            return type(exc).__name__
        if resp.status == 200:
            return Fetch(Outcome.OK, resp, url)
        resp.release()
        if resp.status == 404:
            breaker.record_success(time.monotonic())
            missing = resp.headers.get(NOT_FOUND_HEADER) == "title"
            return Fetch(Outcome.NOT_FOUND, None, url, title_missing=missing)
        breaker.record_failure(time.monotonic())
        return f"HTTP {resp.status}"

    async def _cut_off(
        self, attempts: dict[asyncio.Task[aiohttp.ClientResponse], tuple[str, float]]
    ) -> None:
        """Cancel the attempts a fetch no longer needs (another upstream answered, or the
        fetch itself was cancelled). One that had kept its head back past the hedge delay
        counts as a failure on its breaker: otherwise a hung parent would cost every miss
        the hedge delay and never open its breaker."""
        now, slow_s = time.monotonic(), self.hedge_after_s or self.head_timeout_s
        for task, (url, started) in attempts.items():
            if task.cancel() and now - started >= slow_s:
                self.breakers[url].record_failure(now)
                self.passed_over[url] += 1
        if attempts:
            outcomes = await asyncio.gather(*attempts, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, aiohttp.ClientResponse):
                    outcome.release()  # it answered in the same instant as the winner

    def body_deadline(self, head_at: float, received: int) -> float:
        """When the body must have gone past ``received`` bytes (loop time): a grace for
        TCP's slow start, then ``min_body_bps`` on average. A body that trickles fails."""
        return head_at + BODY_GRACE_S + received / self.min_body_bps

    def report(self, url: str, ok: bool) -> None:
        """After the body: a truncated or wrong body counts against the upstream too."""
        breaker = self.breakers[url]
        (breaker.record_success if ok else breaker.record_failure)(time.monotonic())
