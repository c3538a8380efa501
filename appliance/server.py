"""The appliance's HTTP server: signed URLs in, bytes out of memory, disk or a coalesced fill.

Decisions live elsewhere (tokens, byteserving, policies, fill); this module wires them
to aiohttp and keeps the tiers consistent: a fill lands in memory at once and on disk
in the background, a disk hit is served with zero-copy, a hot disk object is promoted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance import readahead, tiers
from appliance.admin import Chaos
from appliance.admin import add_routes as add_admin_routes
from appliance.config import ApplianceConfig
from appliance.fill import Fill, Filler, FillError, State
from appliance.front import Front
from appliance.heartbeat import heartbeat_loop
from appliance.limiter import AdaptiveLimiter, LimiterConfig
from appliance.objects import ObjectMeta
from appliance.scrub import Scrubber
from appliance.sendfile import SEND_STALL_S, send_deadline_s, send_file_region
from appliance.upstream import NOT_FOUND_HEADER, Upstreams
from streamcdn import service
from streamcdn.byteserving import Decision, decide
from streamcdn.digest import header_value
from streamcdn.ids import is_valid_rel_path, is_valid_title_id
from streamcdn.tokens import TokenError, key_ring, verify

log = logging.getLogger("streamcdn.appliance")

APPLIANCE = web.AppKey("appliance", "Appliance")
READY_AT = web.RequestKey("ready_at", float)  # when the response was about to start
MAX_KNOWN_RENDITIONS = 10_000
PROMOTE_AFTER_DISK_HITS = 2  # disk hits before an object is copied into memory
MAX_DISK_HIT_COUNTS = 100_000
MAX_FIXED_HEADERS = 100_000
TICK_S = 1.0
EGRESS_SMOOTHING = 0.5  # EWMA weight of the newest second
LAG_PROBE_S = 0.01  # how often the event loop's delay is measured, for the limiter
PURGE_WRITE_WAIT_S = 10.0  # a purge waits this long for the title's disk writes in flight


@dataclass
class Stats:
    results: Tally[str] = field(default_factory=Tally)  # hit, miss, coalesced, shed, ...
    requests: Tally[str] = field(default_factory=Tally)  # by source: memory, disk, upstream
    bytes: Tally[str] = field(default_factory=Tally)  # by source
    egress_bps: float = 0.0
    active_requests: int = 0
    _last_bytes: int = 0

    def tick(self) -> None:
        total = sum(self.bytes.values())
        rate = (total - self._last_bytes) * 8 / TICK_S
        self._last_bytes = total
        self.egress_bps = EGRESS_SMOOTHING * rate + (1 - EGRESS_SMOOTHING) * self.egress_bps

    def ratios(self) -> dict[str, dict[str, float]]:
        served = ("memory", "disk", "upstream")
        reqs = {s: self.requests[s] for s in served}
        byts = {s: self.bytes[s] for s in served}
        total_r, total_b = sum(reqs.values()) or 1, sum(byts.values()) or 1
        return {
            "request_hit_ratio": {s: round(reqs[s] / total_r, 4) for s in ("memory", "disk")},
            "byte_hit_ratio": {s: round(byts[s] / total_b, 4) for s in ("memory", "disk")},
        }


class _Results(Collector):
    """streamcdn_appliance_requests_total{result}, read from the appliance's own tally at
    scrape time (cheaper per request than a prometheus_client Counter)."""

    def __init__(self, results: Tally[str]) -> None:
        self._results = results

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "streamcdn_appliance_requests", "Object requests by result", labels=["result"]
        )
        for result, n in sorted(self._results.items()):
            family.add_metric([result], n)
        yield family


@dataclass(slots=True)
class Hit:
    """A cache hit ready to send: status, headers and where the body comes from.

    Transport-agnostic: aiohttp's handlers and the front protocol (appliance/front.py)
    both send it, so both answer the same request with the same bytes.
    """

    meta: ObjectMeta
    status: int  # 200, 206, 304 or 416
    fixed: dict[str, str]  # the headers every answer for this object has
    fixed_text: str  # the same as "Name: value\r\n" lines
    extra: dict[str, str]  # this answer's own: Age, X-Cache, Content-Range
    source: str  # "memory" or "disk"
    data: bytes | None  # memory: the whole object
    entry: tiers.DiskEntry | None  # disk: the file, checked since this process started
    start: int  # the body is [start, start + length) of the object
    length: int

    @property
    def headers(self) -> dict[str, str]:
        return self.fixed | self.extra

    @property
    def body(self) -> memoryview:
        assert self.data is not None
        return memoryview(self.data)[self.start : self.start + self.length]


class Appliance:
    def __init__(self, config: ApplianceConfig, app: web.Application) -> None:
        self.config = config
        self.keys = key_ring(list(config.keys))
        self.memory = tiers.MemoryTier(config.mem_bytes, config.policy)
        self.disk = tiers.DiskTier(config.cache_dir, config.disk_bytes, config.policy)
        self.stats = Stats()
        self.chaos = Chaos()  # failure injection, set by POST /admin/chaos
        self.session: aiohttp.ClientSession | None = None
        self.filler: Filler | None = None
        self._disk_hits: Tally[str] = Tally()
        self._fixed: dict[str, tuple[ObjectMeta, dict[str, str], str]] = {}
        self.front: Front | None = None  # set by create_app
        self._background: set[asyncio.Task[None]] = set()
        self._writing: dict[str, asyncio.Task[None]] = {}  # disk writes in flight, by key
        # Disk writes in flight of purged titles (they discard their object), with its key.
        self._discarding: dict[asyncio.Task[None], str] = {}
        self._generations: Tally[str] = Tally()  # per title, bumped by each purge
        self.corrupt: Tally[str] = Tally()  # corrupt disk objects dropped, by who found them
        self.scrubber = Scrubber(
            self.disk,
            bytes_per_s=config.scrub_bytes_per_s,
            on_corrupt=lambda key: self.drop_corrupt(key, "scrub"),
        )
        initial = min(config.limiter_initial, config.limiter_max)
        self.limiter = AdaptiveLimiter(
            LimiterConfig(
                initial_limit=initial,
                min_limit=min(LimiterConfig.min_limit, initial),
                max_limit=config.limiter_max,
                lag_target_s=config.limiter_lag_target_s or LimiterConfig.lag_target_s,
            ),
            algorithm=config.limiter,
        )
        # Client traffic first: background work (fills, read-ahead) has its own small budget.
        self.background = asyncio.Semaphore(config.background_fills)
        self._reading_ahead: set[str] = set()
        self._orders: OrderedDict[str, list[str]] = OrderedDict()  # rendition -> segment keys
        registry = app[service.REGISTRY]
        registry.register(_Results(self.stats.results))
        self.m_bytes = Gauge(
            "streamcdn_appliance_sent_bytes",
            "Body bytes sent by source since start (updated every second)",
            ["source"],
            registry=registry,
        )
        self.m_used = Gauge(
            "streamcdn_appliance_tier_used_bytes",
            "Bytes held per tier",
            ["tier"],
            registry=registry,
        )
        self.m_corrupt = Counter(
            "streamcdn_appliance_corrupt_objects",
            "Corrupt disk objects dropped, by what found them (serve: a hit; scrub: the scrubber)",
            ["found_by"],
            registry=registry,
        )
        self.m_scrubbed = Gauge(
            "streamcdn_appliance_scrubbed_bytes",
            "Disk object bytes re-hashed by the scrubber since start (updated every second)",
            registry=registry,
        )
        self.m_capacity = Gauge(
            "streamcdn_appliance_tier_capacity_bytes",
            "Capacity per tier",
            ["tier"],
            registry=registry,
        )

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            entries, report = await asyncio.to_thread(self.disk.load_blocking)
        except OSError as exc:
            raise RuntimeError(f"cache dir {self.config.cache_dir}: {exc.strerror}") from exc
        doomed = self.disk.adopt(entries, report)
        await asyncio.to_thread(tiers.unlink_all_blocking, doomed)
        log.info(
            "disk tier loaded",
            extra={
                "objects": report.objects,
                "bytes": report.bytes,
                "dropped": len(report.dropped),
            },
        )
        timeout = aiohttp.ClientTimeout(
            sock_connect=self.config.upstream_connect_timeout_s,
            sock_read=self.config.upstream_read_timeout_s,
        )
        self.session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        upstreams = Upstreams(
            self.config.upstreams,
            self.session,
            key=self.config.keys[0] if self.config.keys else None,
            token_ttl_s=self.config.parent_token_ttl_s,
            head_timeout_s=self.config.upstream_head_timeout_s,
            hedge_after_s=self.config.upstream_hedge_after_s,
            min_body_bps=self.config.upstream_min_body_bps,
        )
        self.filler = Filler(
            upstreams,
            on_filled=self._filled,
            negative_ttl_s=self.config.negative_ttl_s,
            upstream_delay_s=lambda: self.chaos.upstream_delay_s,
        )
        self.spawn(self._ticker())
        if self.config.limiter_lag_target_s > 0:
            self.spawn(self._watch_loop())
        if self.config.scrub_bytes_per_s > 0:
            self.spawn(self.scrubber.run())
        if self.config.steering:
            key = self.config.heartbeat_key or (self.config.keys[0] if self.config.keys else None)
            self.spawn(
                heartbeat_loop(
                    self.session,
                    self.config.steering,
                    key,
                    self.health,
                    url=self.config.public_url,
                    interval_s=self.config.heartbeat_interval_s,
                    paused=lambda: self.chaos.drop_heartbeats,
                )
            )

    async def stop(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.filler is not None:
            await self.filler.close()
        if self.session is not None:
            await self.session.close()

    def spawn(self, coro) -> asyncio.Task[None]:  # type: ignore[no-untyped-def]
        """Run ``coro`` in the background; stop() cancels it."""
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.stats.tick()
            for source, total in self.stats.bytes.items():
                self.m_bytes.labels(source).set(total)
            for name, tier in (("memory", self.memory), ("disk", self.disk)):
                self.m_used.labels(name).set(tier.used_bytes)
                self.m_capacity.labels(name).set(tier.capacity_bytes)
            self.m_scrubbed.set(self.scrubber.stats.bytes)

    async def _watch_loop(self) -> None:
        """Tell the limiter how late the loop runs a timer: under CPU overload requests
        wait about that long to be read, where no concurrency count can see them."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + LAG_PROBE_S
            await asyncio.sleep(LAG_PROBE_S)
            now = loop.time()
            self.limiter.observe_lag(max(0.0, now - due), now)

    # -- filling the tiers ---------------------------------------------------------

    def _filled(self, meta: ObjectMeta, data: bytes) -> None:
        self.memory.put(meta, data)
        self._learn_order(meta.key, data)
        if meta.key not in self.disk and meta.key not in self._writing:
            task = self.spawn(self._write_disk(meta, data, self._generations[meta.title]))
            self._writing[meta.key] = task
            task.add_done_callback(lambda t: self._wrote(meta.key, t))

    def _wrote(self, key: str, task: asyncio.Task[None]) -> None:
        if self._writing.get(key) is task:  # not a later write of the key, after a purge
            del self._writing[key]
        self._discarding.pop(task, None)

    async def _write_disk(self, meta: ObjectMeta, data: bytes, generation: int) -> None:
        if not self.disk.writable(time.monotonic()):
            return  # degraded: serve by pass-through (memory only) until the retry time
        try:
            entry = await asyncio.to_thread(self.disk.write_blocking, meta, data)
        except OSError as exc:
            self.disk.write_failed(exc, time.monotonic())
            return
        if self._generations[meta.title] != generation:
            # The title was purged while this write was in flight: it must not land.
            await asyncio.to_thread(tiers.unlink_all_blocking, [str(entry.path)])
            return
        doomed = self.disk.admit(entry)
        if doomed:
            await asyncio.to_thread(tiers.unlink_all_blocking, doomed)

    async def _promote(self, entry: tiers.DiskEntry) -> None:
        checked = await asyncio.to_thread(tiers.verify_blocking, entry)
        if checked is None:
            await self.drop_corrupt(entry.meta.key)
        else:
            entry.stamp = checked[1]
            self.memory.put(entry.meta, checked[0])

    def unchanged(self, entry: tiers.DiskEntry, fd: int) -> bool:
        """Whether the open file ``fd`` of a disk hit is still the one whose digest was
        checked (one fstat). If not, it must be checked again before a byte of it leaves:
        the entry is marked unchecked, so the slow path verifies it (or drops and refills)."""
        if tiers.stamp_of(os.fstat(fd)) == entry.stamp:
            return True
        entry.stamp = None
        return False

    async def drop_corrupt(self, key: str, found_by: str = "serve") -> None:
        log.error("corrupt object on disk; dropped and will be re-filled", extra={"key": key})
        self.corrupt[found_by] += 1
        self.m_corrupt.labels(found_by).inc()
        self.memory.remove(key)
        path = self.disk.remove(key)
        if path:
            await asyncio.to_thread(tiers.unlink_all_blocking, [path])

    # -- serving -------------------------------------------------------------------

    async def serve(self, request: web.Request, key: str) -> web.StreamResponse:
        if not self.limiter.try_acquire():
            raise web.HTTPServiceUnavailable(text="overloaded; retry", headers=self.shed())
        started = time.monotonic()
        self.stats.active_requests += 1
        dropped = True  # unless we learn otherwise: an exception we did not expect
        try:
            self.read_ahead_after(key)
            response = await self._serve(request, key)
            dropped = response.status >= 500
            return response
        except web.HTTPException as exc:
            dropped = exc.status >= 500
            raise
        finally:
            self.stats.active_requests -= 1
            # Latency to the response's start: body transfer times differ by size and client.
            ready = request.get(READY_AT, time.monotonic())
            self.limiter.release(max(0.0, ready - started), time.monotonic(), dropped=dropped)

    def shed(self, requests: int = 1) -> dict[str, str]:
        """Count requests the limiter refused; the headers of their 503 (both paths)."""
        self.stats.results["shed"] += requests
        return {"Retry-After": str(self.limiter.retry_after_s())}

    # -- read-ahead and background fills ---------------------------------------------

    def _learn_order(self, key: str, data: bytes) -> None:
        if not key.endswith(".m3u8"):
            return
        order = readahead.segment_keys(key, data.decode("utf-8", "replace"))
        if order:
            rendition = readahead.rendition_of(order[0])
            self._orders[rendition] = order
            self._orders.move_to_end(rendition)
            while len(self._orders) > MAX_KNOWN_RENDITIONS:
                self._orders.popitem(last=False)

    def read_ahead_after(self, key: str) -> None:
        """A client asked for ``key``: bring the next segments of its rendition into memory."""
        order = self._orders.get(readahead.rendition_of(key))
        if not order or not self.config.read_ahead_segments:
            return
        for nxt in readahead.next_keys(order, key, self.config.read_ahead_segments):
            if nxt not in self.memory and nxt not in self._reading_ahead:
                self._reading_ahead.add(nxt)
                self.spawn(self._read_ahead(nxt))

    async def _read_ahead(self, key: str) -> None:
        try:
            await self.ensure_cached(key)
        except FillError:
            pass  # read-ahead is a bet; a client asking later gets the real answer
        finally:
            self._reading_ahead.discard(key)

    def read_cached_json(self, key: str) -> object:
        """A small JSON object that ensure_cached just brought into memory."""
        found = self.memory.peek(key)
        if found is None:
            raise ValueError("not in the memory tier (too big for it?)")
        return json.loads(found[1])

    async def purge_title(self, title: str) -> tuple[int, int, int]:
        """Drop every object of ``title`` from both tiers; (objects, bytes) dropped, and the
        disk writes of the title still in flight after PURGE_WRITE_WAIT_S (0 unless the disk
        hangs: each discards its object when it finishes).

        When it returns, no object of the title is on disk: a disk write in flight may have
        renamed its file into place already, and deletes it once it sees the new generation,
        so the purge waits for those writes. Without that wait, a crash in between would
        bring the object back at the next start, after the purge was acknowledged.
        """
        prefix = f"titles/{title}/"
        objects = nbytes = 0
        # Disk writes in flight for the title must not land after it, nor fills in flight
        # be cached: a new generation, and the fills detached from the table.
        self._generations[title] += 1
        for key, task in list(self._writing.items()):
            if key.startswith(prefix):
                del self._writing[key]  # a fill after the purge may write the key again
                self._discarding[task] = key
        # Every write of the title from before this purge, an earlier purge's too.
        writes = [t for t, k in self._discarding.items() if k.startswith(prefix)]
        assert self.filler is not None
        self.filler.detach(title)
        for key, size in self.memory.sizes():
            if key.startswith(prefix):
                self.memory.remove(key)
                if key not in self.disk:
                    objects, nbytes = objects + 1, nbytes + size
        doomed = []
        for key, size in self.disk.sizes():
            if key.startswith(prefix):
                path = self.disk.remove(key)
                if path:
                    doomed.append(path)
                objects, nbytes = objects + 1, nbytes + size
        await asyncio.to_thread(tiers.unlink_all_blocking, doomed)
        self.filler.forget_missing(title)
        for rendition in [r for r in self._orders if r.startswith(prefix)]:
            del self._orders[rendition]
        pending = 0
        if writes:
            _, still = await asyncio.wait(writes, timeout=PURGE_WRITE_WAIT_S)
            pending = len(still)
        log.info(
            "purged",
            extra={"title": title, "objects": objects, "bytes": nbytes, "writes_pending": pending},
        )
        return objects, nbytes, pending

    async def ensure_cached(self, key: str) -> tuple[str, int]:
        """Bring ``key`` into memory (from disk) or into both tiers (from upstream), under the
        background budget. Returns ("memory" | "disk" | "filled", size); raises FillError."""
        async with self.background:
            if key in self.memory:
                return "memory", self.memory.size_of(key)
            entry = self.disk.peek(key)  # background reads are not accesses
            if entry is not None:
                await self._promote(entry)
                if key in self.memory or key in self.disk:
                    return "disk", entry.meta.size
            assert self.filler is not None
            fill, _ = self.filler.get(key)
            data = await fill.wait_done()
            return "filled", len(data)

    def find_hit(self, key: str, headers: Mapping[str, str]) -> Hit | None:
        """The answer to a GET of ``key`` if it can be sent at once: from memory, or from a
        disk object already checked by this process. None: the slow path (a miss, or a
        disk object to check first). Counts the access; the caller sends and calls sent()."""
        found = self.memory.get(key)
        if found is not None:
            return self._hit(found[0], headers, "memory", data=found[1])
        entry = self.disk.peek(key)
        if entry is None or not entry.verified:
            return None
        self.disk.get(key)  # count the access in the disk policy
        if len(self._disk_hits) > MAX_DISK_HIT_COUNTS:
            self._disk_hits.clear()  # a rough count is enough; keep it bounded
        self._disk_hits[key] += 1
        # Promote hot objects, but never try one the memory tier cannot hold: each try
        # reads and checks the whole file.
        if (
            self._disk_hits[key] >= PROMOTE_AFTER_DISK_HITS
            and entry.meta.size <= self.memory.capacity_bytes
        ):
            del self._disk_hits[key]
            self.spawn(self._promote(entry))
        return self._hit(entry.meta, headers, "disk", entry=entry)

    def _hit(
        self,
        meta: ObjectMeta,
        headers: Mapping[str, str],
        source: str,
        *,
        data: bytes | None = None,
        entry: tiers.DiskEntry | None = None,
    ) -> Hit:
        decision = decide(headers, meta.size, meta.etag)
        start, length = 0, meta.size
        if decision.range is not None:
            start, length = decision.range.start, decision.range.length
        elif decision.status != 200:
            length = 0
        fixed, text = self._fixed_headers(meta)
        extra = {"Age": str(meta.age_s(time.time())), "X-Cache": "HIT"}
        extra.update(decision.headers(meta.size))
        return Hit(meta, decision.status, fixed, text, extra, source, data, entry, start, length)

    def _fixed_headers(self, meta: ObjectMeta) -> tuple[dict[str, str], str]:
        """The headers that do not change between answers for ``meta``, built once."""
        cached = self._fixed.get(meta.key)
        if cached is None or cached[0] is not meta:
            fixed = {
                "ETag": meta.etag,
                "X-Content-Digest": header_value(meta.digest),
                "Content-Type": meta.content_type,
                "Cache-Control": meta.cache_control or "public, max-age=60",
                "Accept-Ranges": "bytes",
                "X-Served-By": self.config.id,
                "Access-Control-Allow-Origin": "*",
            }
            if len(self._fixed) >= MAX_FIXED_HEADERS:
                self._fixed.clear()  # a cache of a cache: rebuilt as objects are asked for
            text = "".join(f"{k}: {v}\r\n" for k, v in fixed.items())
            cached = self._fixed[meta.key] = (meta, fixed, text)
        return cached[1], cached[2]

    def sent(self, hit: Hit, nbytes: int) -> None:
        """Count a hit whose response went out with ``nbytes`` of body."""
        if hit.status in (304, 416):
            self._count(str(hit.status))
        else:
            self._count("hit", hit.source, nbytes)

    async def _serve(self, request: web.Request, key: str) -> web.StreamResponse:
        hit = self.find_hit(key, request.headers)
        if hit is not None:
            if hit.entry is not None and hit.status in (200, 206):
                return await self._send_file(request, hit)
            return self._send_hit(request, hit)
        entry = self.disk.get(key)
        if entry is not None:  # unchecked since start, or its file changed: check it first
            checked = await asyncio.to_thread(tiers.verify_blocking, entry)
            if checked is not None:
                data, entry.stamp = checked
                self.memory.put(entry.meta, data)
                return self._send_bytes(request, entry.meta, data, "HIT", "disk")
            await self.drop_corrupt(key)
        assert self.filler is not None
        if self.filler.known_missing(key, time.monotonic()):
            self._count("not_found")
            raise web.HTTPNotFound(
                text="not found upstream (remembered)", headers={NOT_FOUND_HEADER: "remembered"}
            )
        fill, created = self.filler.get(key)
        result = "MISS" if created else "COALESCED"
        if not await fill.wait_headers_or_stuck(
            self.config.lock_timeout_s, self.config.upstream_head_timeout_s
        ):
            # The fill is stuck: replace it (the first waiter to give up does; the others
            # join the replacement), so what the new fill fetches is cached.
            fill, replaced = self.filler.take_over(fill)
            if replaced:
                self._count("fill_replaced")
                result = "MISS"
            await fill.wait_headers(self.config.lock_timeout_s)
        elif fill.replaced_by is not None:  # another waiter replaced it meanwhile
            fill = fill.latest()
            await fill.wait_headers(self.config.lock_timeout_s)
        return await self._send_fill(request, fill, result)

    def _count(self, result: str, source: str | None = None, nbytes: int = 0) -> None:
        self.stats.results[result] += 1
        if source is not None:
            self.stats.requests[source] += 1
            self.stats.bytes[source] += nbytes

    def _headers(self, meta: ObjectMeta, cache: str) -> dict[str, str]:
        fixed, _ = self._fixed_headers(meta)
        return fixed | {"Age": str(meta.age_s(time.time())), "X-Cache": cache}

    def _decide(self, request: web.Request, meta: ObjectMeta) -> Decision:
        return decide(request.headers, meta.size, meta.etag)

    def _send_hit(self, request: web.Request, hit: Hit) -> web.Response:
        if hit.data is None or hit.status in (304, 416):
            self.sent(hit, 0)
            return web.Response(status=hit.status, headers=hit.headers)
        self.sent(hit, 0 if request.method == "HEAD" else hit.length)
        request[READY_AT] = time.monotonic()
        return web.Response(status=hit.status, body=hit.body, headers=hit.headers)

    def _send_bytes(
        self, request: web.Request, meta: ObjectMeta, data: bytes, cache: str, source: str
    ) -> web.Response:
        decision = self._decide(request, meta)
        headers = self._headers(meta, cache) | decision.headers(meta.size)
        if decision.status in (304, 416):
            self._count(str(decision.status))
            return web.Response(status=decision.status, headers=headers)
        body = memoryview(data)
        if decision.range is not None:
            body = body[decision.range.start : decision.range.end + 1]
        self._count(cache.lower(), source, 0 if request.method == "HEAD" else len(body))
        request[READY_AT] = time.monotonic()
        return web.Response(status=decision.status, body=body, headers=headers)

    async def _send_file(self, request: web.Request, hit: Hit) -> web.StreamResponse:
        entry, meta = hit.entry, hit.meta
        assert entry is not None
        resp = web.StreamResponse(status=hit.status, headers=hit.headers)
        resp.content_length = hit.length
        request[READY_AT] = time.monotonic()
        try:
            with entry.path.open("rb") as f:
                if not self.unchanged(entry, f.fileno()):
                    return await self._serve(request, meta.key)  # checks it before it leaves
                # Zero-copy from the page cache; a reader slower than MIN_SEND_BPS is dropped.
                async with asyncio.timeout(send_deadline_s(hit.length)):
                    await send_file_region(
                        request, resp, f, entry.body_offset + hit.start, hit.length
                    )
        except FileNotFoundError:
            self.moved(entry)
            raise web.HTTPServiceUnavailable(
                text="object moved", headers={"Retry-After": "1"}
            ) from None
        except EOFError:  # the file shrank under us: never serve it again
            await self.drop_corrupt(meta.key)
            return resp
        except (ConnectionError, TimeoutError):
            return resp  # the client left or stalled; send_file_region closed the connection
        self.sent(hit, 0 if request.method == "HEAD" else hit.length)
        return resp

    def moved(self, entry: tiers.DiskEntry) -> None:
        """A disk object's file vanished (evicted between lookup and open): forget it, so
        the next request fills it again."""
        if self.disk.peek(entry.meta.key) is entry:
            self.disk.remove(entry.meta.key)

    async def _send_fill(self, request: web.Request, fill: Fill, cache: str) -> web.StreamResponse:
        if fill.state is State.FAILED or fill.meta is None:
            return self._fill_error(fill.error or FillError(504, "upstream did not answer"))
        meta = fill.meta
        decision = self._decide(request, meta)
        headers = self._headers(meta, cache) | decision.headers(meta.size)
        if decision.status in (304, 416):
            self._count(str(decision.status))
            return web.Response(status=decision.status, headers=headers)
        if decision.range is not None or request.method == "HEAD":
            # A range is served once the whole object is checked: no unverified byte leaves.
            try:
                data = await fill.wait_done()
            except FillError as exc:
                return self._fill_error(exc)
            return self._send_bytes(request, meta, data, cache, "upstream")
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = meta.size
        request[READY_AT] = time.monotonic()
        await resp.prepare(request)
        sent = 0
        try:
            async for piece in fill.read(0, meta.size):
                async with asyncio.timeout(SEND_STALL_S):  # a reader that stopped reading
                    await resp.write(piece)
                sent += len(piece)
        except TimeoutError:
            log.warning("client stopped reading; closing", extra={"key": meta.key, "sent": sent})
            if request.transport is not None:
                request.transport.close()
        except FillError as exc:
            log.warning(
                "fill failed mid-stream; cutting the response short",
                extra={"key": meta.key, "reason": exc.reason, "sent": sent},
            )
            if request.transport is not None:
                request.transport.close()
        self._count(cache.lower(), "upstream", sent)
        return resp

    def _fill_error(self, error: FillError) -> web.Response:
        self._count("not_found" if error.status == 404 else "error")
        headers = {NOT_FOUND_HEADER: "title"} if error.title_missing else {}
        if error.status == 404:
            return web.json_response(
                {"error": error.reason, "status": 404}, status=404, headers=headers
            )
        return web.json_response(
            {"error": error.reason, "status": error.status},
            status=error.status,
            headers={"Retry-After": "1"},
        )

    # -- health --------------------------------------------------------------------

    def health(self) -> dict[str, object]:
        reasons = []
        if self.disk.degraded:
            reasons.append(self.disk.degraded)
        filler = self.filler
        upstreams = {}
        if filler is not None:
            now = time.monotonic()
            ups = filler.upstreams
            upstreams = {
                url: {
                    **breaker.snapshot(now),
                    "hedged_to": ups.hedged_to[url],
                    "passed_over": ups.passed_over[url],
                }
                for url, breaker in ups.breakers.items()
            }
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "id": self.config.id,
            "site": self.config.site,
            "capacity_mbps": self.config.capacity_mbps,
            "connections": self.front.open_connections() if self.front else 0,
            "active_requests": self.stats.active_requests,
            "egress_bps": round(self.stats.egress_bps),
            **self.stats.ratios(),
            "tiers": {
                name: {
                    "used_bytes": t.used_bytes,
                    "capacity_bytes": t.capacity_bytes,
                    "objects": len(t),
                }
                for name, t in (("memory", self.memory), ("disk", self.disk))
            },
            "fills_in_flight": len(filler.fills) if filler else 0,
            "fills_replaced": filler.replaced if filler else 0,
            "corrupt_objects": dict(self.corrupt),
            "scrub": self.scrubber.snapshot(),
            "background_queue": len(self._reading_ahead),
            "limiter": self.limiter.snapshot(),
            "upstreams": upstreams,
            "policy": self.config.policy,
            **({"chaos": chaos} if (chaos := self.chaos.active()) else {}),
        }


def _key(request: web.Request) -> str:
    title, rel = request.match_info["title"], request.match_info["path"]
    if not is_valid_title_id(title):
        raise web.HTTPBadRequest(text=f"invalid title id {title[:80]!r}")
    if not is_valid_rel_path(rel):
        raise web.HTTPBadRequest(text="invalid path")
    return f"titles/{title}/{rel}"


def _check_token(request: web.Request, token: str, key: str) -> None:
    appliance = request.app[APPLIANCE]
    grant = verify(token, key, keys=appliance.keys, now=time.time(), client_ip=request.remote)
    if isinstance(grant, TokenError):
        raise web.HTTPForbidden(text=grant.value)


async def signed_object(request: web.Request) -> web.StreamResponse:
    key = _key(request)
    _check_token(request, request.match_info["token"], key)
    return await request.app[APPLIANCE].serve(request, key)


async def open_object(request: web.Request) -> web.StreamResponse:
    """Unsigned paths: for --open appliances, and for child appliances' fills, which carry
    their token as ``Authorization: Bearer``."""
    appliance = request.app[APPLIANCE]
    key = _key(request)
    auth = request.headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        _check_token(request, auth.removeprefix("Bearer ").strip(" \t"), key)
    elif not appliance.config.open:
        raise web.HTTPForbidden(text="signed URL required: /s/{token}/titles/...")
    return await appliance.serve(request, key)


def create_app(config: ApplianceConfig) -> web.Application:
    app = service.create_app("appliance")
    appliance = Appliance(config, app)
    app[APPLIANCE] = appliance
    app[service.HEALTH_CHECKS].append(appliance.health)
    # Cache hits skip aiohttp's request machinery: appliance/front.py.
    app[service.FRONT] = appliance.front = Front(app, appliance)

    admin = add_admin_routes(app, appliance)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await appliance.start()
        yield
        await admin.close()
        await appliance.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/s/{token}/titles/{title}/{path:.+}", signed_object)
    app.router.add_get("/titles/{title}/{path:.+}", open_object)
    return app
