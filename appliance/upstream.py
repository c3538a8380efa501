"""Fetching from upstreams (a parent appliance, then the origin), each behind a circuit breaker.

A 404 is an answer, not a failure: the parent asked the origin too. Connection errors,
timeouts and 5xx count against that upstream's breaker, and the next one is tried.

A read timeout alone never fires on an upstream that trickles (it restarts with every
byte), so each attempt has a deadline on its whole response head (connect, status line
and headers), and the body a minimum average rate (``body_deadline``, enforced by the fill).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
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
        min_body_bps: float = 32_000.0,
    ) -> None:
        self.urls = urls
        self.head_timeout_s = head_timeout_s
        self.min_body_bps = min_body_bps
        self.session = session
        self.breakers = {url: CircuitBreaker() for url in urls}
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

    async def open(self, key: str, on_attempt: Callable[[], None] | None = None) -> Fetch:
        """GET ``key`` from the first upstream that answers; the caller releases the response.

        ``on_attempt`` is called as each upstream is tried (not those whose breaker is open).
        """
        failures = []
        timeouts = 0
        for url in self.urls:
            breaker = self.breakers[url]
            now = time.monotonic()
            if not breaker.allow(now):
                failures.append(f"{url}: circuit open")
                continue
            if on_attempt is not None:
                on_attempt()
            try:
                async with asyncio.timeout(self.head_timeout_s):
                    resp = await self.session.get(
                        f"{url.rstrip('/')}/{key}",
                        headers=self._headers(key),
                        allow_redirects=False,
                    )
            except (aiohttp.ClientError, TimeoutError) as exc:
                breaker.record_failure(time.monotonic())
                failures.append(f"{url}: {type(exc).__name__}")
                timeouts += isinstance(exc, TimeoutError)
                continue
            if resp.status == 200:
                return Fetch(Outcome.OK, resp, url)
            resp.release()
            if resp.status == 404:
                breaker.record_success(time.monotonic())
                missing = resp.headers.get(NOT_FOUND_HEADER) == "title"
                return Fetch(Outcome.NOT_FOUND, None, url, title_missing=missing)
            breaker.record_failure(time.monotonic())
            failures.append(f"{url}: HTTP {resp.status}")
        return Fetch(
            Outcome.UNAVAILABLE,
            detail="; ".join(failures),
            timed_out=0 < timeouts == len(failures),
        )

    def body_deadline(self, head_at: float, received: int) -> float:
        """When the body must have gone past ``received`` bytes (loop time): a grace for
        TCP's slow start, then ``min_body_bps`` on average. A body that trickles fails."""
        return head_at + BODY_GRACE_S + received / self.min_body_bps

    def report(self, url: str, ok: bool) -> None:
        """After the body: a truncated or wrong body counts against the upstream too."""
        breaker = self.breakers[url]
        (breaker.record_success if ok else breaker.record_failure)(time.monotonic())
