"""Coalesced fills: exactly one upstream fetch per object, however many clients ask at once.

Every client that wants an object being fetched streams from that one fetch while it
arrives (read-while-writer), so the 100th waiter's first byte comes as soon as the
first's. The fetch is its own task: it goes on if the client that started it leaves.
A fill that has no headers when a waiter's lock timeout runs out is replaced by a fresh
one (``Filler.take_over``), which the other waiters join and which is cached, unless it
is failing over: trying a later upstream, within that upstream's head deadline.

Nothing wrong is ever delivered whole: the body is checked against the upstream's
length and ``X-Content-Digest`` when it ends, and until then the final byte is held
back. A client of a fill that turns out bad sees its connection cut short of
Content-Length, which every HTTP client treats as a failed response.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
import time
from collections.abc import AsyncIterator, Callable

import aiohttp

from appliance.objects import ObjectMeta
from appliance.upstream import Outcome, Upstreams
from streamcdn.digest import ALGORITHM, digest_bytes

log = logging.getLogger("streamcdn.appliance.fill")

CHUNK_BYTES = 256 * 1024
MAX_OBJECT_BYTES = 256 * 10**6  # far above any segment; a bigger answer is refused, not cached
FAILOVER_MARGIN_S = 0.1  # past an upstream's head deadline, for its timeout to fire first


class FillError(Exception):
    def __init__(self, status: int, reason: str, *, title_missing: bool = False) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.title_missing = title_missing


class State(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Fill:
    """One object on its way from upstream, readable by any number of clients meanwhile."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.meta: ObjectMeta | None = None
        self.state = State.RUNNING
        self.error: FillError | None = None
        self.data: bytes | None = None  # the whole checked body, once DONE
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # offset of each chunk
        self.received = 0
        self.replaced_by: Fill | None = None  # set when a waiter gave up on this fill
        self.attempts = 0  # upstreams tried so far
        self.attempt_started: float | None = None  # loop time the latest try began
        self._headers = asyncio.Event()
        self._wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- the fetching side ---------------------------------------------------------

    def _notify(self) -> None:
        wake, self._wake = self._wake, asyncio.get_running_loop().create_future()
        wake.set_result(None)

    def _fail(self, error: FillError) -> None:
        self.state, self.error = State.FAILED, error
        self._chunks.clear()
        self._starts.clear()
        self._headers.set()
        self._notify()

    async def run(self, upstreams: Upstreams, delay_s: float = 0.0) -> None:
        try:
            if delay_s > 0:  # chaos: a slow upstream network (POST /admin/chaos)
                await asyncio.sleep(delay_s)
            await self._fetch(upstreams)
        except FillError as exc:
            self._fail(exc)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._fail(FillError(502, f"upstream failed mid-body: {type(exc).__name__}"))
        except asyncio.CancelledError:
            if self.replaced_by is not None:
                self._fail(FillError(504, "upstream did not answer; fill replaced"))
            else:
                self._fail(FillError(503, "appliance shutting down"))
            raise
        except Exception as exc:  # never leave waiters hanging
            log.exception("fill crashed", extra={"key": self.key})
            self._fail(FillError(500, f"fill crashed: {type(exc).__name__}"))

    def _attempting(self) -> None:
        self.attempts += 1
        self.attempt_started = asyncio.get_running_loop().time()

    async def _fetch(self, upstreams: Upstreams) -> None:
        fetch = await upstreams.open(self.key, on_attempt=self._attempting)
        if fetch.outcome is Outcome.NOT_FOUND:
            raise FillError(404, "not found upstream", title_missing=fetch.title_missing)
        if fetch.outcome is Outcome.UNAVAILABLE or fetch.response is None:
            status = 504 if fetch.timed_out else 502  # RFC 9110 15.6.5: no timely answer
            raise FillError(status, f"no upstream answered: {fetch.detail}")
        url, resp = fetch.upstream or "", fetch.response
        ok = False
        try:
            self.meta = _meta_from(self.key, resp)
            self._headers.set()
            head_at = asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout_at(upstreams.body_deadline(head_at, 0)) as deadline:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        if self.received + len(chunk) > self.meta.size:
                            raise FillError(502, "upstream sent more bytes than Content-Length")
                        self._starts.append(self.received)
                        self._chunks.append(chunk)
                        self.received += len(chunk)
                        deadline.reschedule(upstreams.body_deadline(head_at, self.received))
                        self._notify()
            except TimeoutError:
                if not deadline.expired():
                    raise  # aiohttp's own read timeout
                raise FillError(
                    502, f"upstream body slower than {upstreams.min_body_bps:.0f} B/s"
                ) from None
            if self.received != self.meta.size:
                raise FillError(502, f"upstream body truncated at {self.received} bytes")
            data = b"".join(self._chunks)
            if digest_bytes(data) != self.meta.digest:
                raise FillError(502, "upstream body does not match its X-Content-Digest")
            ok = True
        finally:
            resp.release()
            upstreams.report(url, ok)
        self.data = data
        self._chunks, self._starts = [data], [0]
        self.state = State.DONE
        self._notify()

    # -- the reading side ----------------------------------------------------------

    def latest(self) -> Fill:
        """This fill, or the one that replaced it (and so on)."""
        fill = self
        while fill.replaced_by is not None:
            fill = fill.replaced_by
        return fill

    async def wait_headers(self, timeout_s: float) -> bool:
        """True once the upstream's headers (or a failure) are in; False after the timeout."""
        try:
            await asyncio.wait_for(self._headers.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def wait_headers_or_stuck(self, lock_timeout_s: float, head_timeout_s: float) -> bool:
        """Like :meth:`wait_headers` with the lock timeout, but a fill that has moved on to a
        later upstream is failing over, not stuck: it gets until that upstream's head
        deadline (a replacement would start again at the upstream that just failed).
        False: stuck, replace it."""
        if await self.wait_headers(lock_timeout_s):
            return True
        loop = asyncio.get_running_loop()
        while self.attempts > 1 and self.attempt_started is not None:
            left = self.attempt_started + head_timeout_s - loop.time() + FAILOVER_MARGIN_S
            if left <= 0:
                return False  # past its own deadline: something else holds it
            if await self.wait_headers(left):
                return True
        return False

    def _readable(self) -> int:
        if self.state is State.DONE:
            return self.received
        assert self.meta is not None
        return min(self.received, self.meta.size - 1)  # the final byte waits for the checks

    async def read(self, start: int, end: int) -> AsyncIterator[memoryview]:
        """Bytes [start, end) as they arrive; raises FillError if the fill fails."""
        pos = start
        while pos < end:
            if self.state is State.FAILED:
                assert self.error is not None
                raise self.error
            limit = min(end, self._readable())
            if pos >= limit:
                await asyncio.shield(self._wake)
                continue
            i = bisect.bisect_right(self._starts, pos) - 1
            chunk, chunk_start = self._chunks[i], self._starts[i]
            piece = memoryview(chunk)[
                pos - chunk_start : min(limit, chunk_start + len(chunk)) - chunk_start
            ]
            pos += len(piece)
            yield piece

    async def wait_done(self) -> bytes:
        while self.state is State.RUNNING:
            await asyncio.shield(self._wake)
        if self.state is State.FAILED:
            if self.replaced_by is not None:
                return await self.replaced_by.wait_done()
            assert self.error is not None
            raise self.error
        assert self.data is not None
        return self.data


def _meta_from(key: str, resp: aiohttp.ClientResponse) -> ObjectMeta:
    length = resp.content_length
    if length is None:
        raise FillError(502, "upstream sent no Content-Length")
    if length > MAX_OBJECT_BYTES:
        raise FillError(502, f"upstream object of {length} bytes is over the limit")
    algorithm, _, digest = resp.headers.get("X-Content-Digest", "").partition("=")
    if algorithm != ALGORITHM or len(digest) != 32:
        raise FillError(502, "upstream sent no usable X-Content-Digest")
    try:
        age = max(0, int(resp.headers.get("Age", "0")))
    except ValueError:
        age = 0
    return ObjectMeta(
        key=key,
        size=length,
        digest=digest.lower(),
        content_type=resp.headers.get("Content-Type", "application/octet-stream"),
        cache_control=resp.headers.get("Cache-Control", ""),
        fetched_at=time.time(),
        age_at_fetch=age,
    )


class Filler:
    """The fills in flight, keyed by object, and a short memory of what upstream lacks."""

    def __init__(
        self,
        upstreams: Upstreams,
        *,
        on_filled: Callable[[ObjectMeta, bytes], None],
        negative_ttl_s: float,
        upstream_delay_s: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.upstreams = upstreams
        self._upstream_delay_s = upstream_delay_s
        self._on_filled = on_filled
        self._negative_ttl_s = negative_ttl_s
        self.fills: dict[str, Fill] = {}
        self._running: dict[Fill, asyncio.Task[None]] = {}
        self.replaced = 0  # stuck fills replaced since start
        self._missing: dict[str, float] = {}  # key or "title:<id>" -> until (monotonic)

    def known_missing(self, key: str, now: float) -> bool:
        title = key.split("/", 2)[1]
        for k in (key, f"title:{title}"):
            until = self._missing.get(k)
            if until is not None:
                if now < until:
                    return True
                del self._missing[k]
        return False

    def forget_missing(self, title: str) -> None:
        """After a purge or a new ingest, ask upstream again at once."""
        for k in [
            k for k in self._missing if k == f"title:{title}" or k.startswith(f"titles/{title}/")
        ]:
            del self._missing[k]

    def get(self, key: str) -> tuple[Fill, bool]:
        """The fill for ``key``, started if none runs; True if this call started it."""
        fill = self.fills.get(key)
        if fill is not None:
            return fill, False
        return self._start(key), True

    def take_over(self, stuck: Fill) -> tuple[Fill, bool]:
        """A waiter gave up on ``stuck`` (no headers within the lock timeout): cancel it and
        start a fresh fill in its place, which every later request joins and which is
        cached. Coalescing holds: only the first waiter to give up replaces it, the others
        join the replacement. Returns (the fill to wait on, True if this call replaced)."""
        if stuck.replaced_by is not None:  # another waiter gave up first
            return stuck.latest(), False
        if self.fills.get(stuck.key) is not stuck or stuck.meta is not None:
            return stuck, False  # detached by a purge, or it answered after all
        fresh = stuck.replaced_by = self._start(stuck.key)
        self._running[stuck].cancel()
        self.replaced += 1
        log.warning("fill replaced: no upstream answer in time", extra={"key": stuck.key})
        return fresh, True

    def detach(self, title: str) -> None:
        """After a purge: fills of ``title`` in flight finish for their waiters, uncached,
        and the next request starts a fresh one."""
        for key in [k for k in self.fills if k.startswith(f"titles/{title}/")]:
            del self.fills[key]

    def _start(self, key: str) -> Fill:
        fill = self.fills[key] = Fill(key)
        self._running[fill] = asyncio.create_task(self._run(fill))
        return fill

    async def _run(self, fill: Fill) -> None:
        try:
            await fill.run(self.upstreams, self._upstream_delay_s())
        finally:
            del self._running[fill]
        owned = self.fills.get(fill.key) is fill  # not replaced, nor detached by a purge
        if owned:
            del self.fills[fill.key]
        if fill.state is State.DONE and owned and fill.meta and fill.data is not None:
            self._on_filled(fill.meta, fill.data)
        elif fill.error is not None and fill.error.status == 404:
            until = time.monotonic() + self._negative_ttl_s
            self._missing[fill.key] = until
            if fill.error.title_missing:
                self._missing[f"title:{fill.key.split('/', 2)[1]}"] = until

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
