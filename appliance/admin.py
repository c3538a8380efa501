"""Admin API (admin key required): background fills, purges, and what is cached per title.

``POST /admin/fill`` starts a job and answers 202 with its id; ``GET /admin/fill/{job}``
tells its progress (the ``streamcdn fill`` command polls it for its progress bar).
Fills run under the appliance's background budget and a byte-rate cap, so they never
crowd out players.

``/admin/chaos`` injects failures on purpose (``streamcdn loadtest --chaos``, Netflix's
FIT and Chaos Monkey): a delay on every upstream fill, heartbeats withheld, or the
process killed outright. Like the rest of this API it needs the admin key, and with no
admin key configured it is off.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import math
import os
import signal
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from appliance.fill import FillError
from streamcdn import service
from streamcdn.ids import is_valid_rel_path, is_valid_title_id

if TYPE_CHECKING:
    from appliance.server import Appliance

log = logging.getLogger("streamcdn.appliance.admin")

MAX_TITLES_PER_JOB = 1000
MAX_TOP = 1000
DEFAULT_RATE_MBPS = 400.0
MAX_JOBS_KEPT = 100
MANIFEST = "manifest.json"
APPLIANCE_KEY: web.AppKey[Any] = web.AppKey("admin_appliance")
MAX_UPSTREAM_DELAY_MS = 60_000.0
KILL_AFTER_S = 0.1  # time for the 202 to leave before the process dies
CHAOS_FIELDS = ("drop_heartbeats", "kill", "upstream_delay_ms")


@dataclass
class Chaos:
    """The failure-injection switches; all off until ``POST /admin/chaos`` turns one on."""

    upstream_delay_ms: float = 0.0  # before each upstream fill request
    drop_heartbeats: bool = False  # steering then counts the appliance down

    @property
    def upstream_delay_s(self) -> float:
        return self.upstream_delay_ms / 1000

    def active(self) -> dict[str, Any]:
        """The switches that are on (empty when none is)."""
        return {k: v for k, v in asdict(self).items() if v != getattr(Chaos, k)}


@dataclass
class FillJob:
    id: int
    titles: list[str]
    renditions: list[str] | None
    rate_mbps: float
    state: str = "running"  # running | done | failed
    objects_total: int = 0
    objects_done: int = 0
    bytes_done: int = 0
    already_cached: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None


def _authorize(request: web.Request) -> None:
    appliance: Appliance = request.app[APPLIANCE_KEY]
    config = appliance.config
    if config.admin_key is None:
        raise web.HTTPForbidden(text="admin API disabled: no --admin-key configured")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    # As the bytes sent (aiohttp decodes bytes that are not UTF-8 to lone surrogates),
    # stripped of HTTP's blanks only.
    sent = given.strip(" \t").encode("utf-8", "surrogateescape")
    # Every accepted key is compared, in constant time each, while the admin key rotates.
    matches = [
        hmac.compare_digest(sent, key.encode())
        for key in (config.admin_key, *config.previous_admin_keys)
    ]
    if scheme != "Bearer" or not any(matches):
        raise web.HTTPUnauthorized(text="admin key required: Authorization: Bearer <key>")


def _authorize_chaos(request: web.Request) -> None:
    _authorize(request)
    if not request.app[APPLIANCE_KEY].config.chaos:
        raise web.HTTPForbidden(
            text="chaos is turned off on this appliance (chaos = false in its deployment entry)"
        )


def _wanted(rel: str, renditions: list[str] | None) -> bool:
    if renditions is None or "/" not in rel:
        return True  # master playlist, manifest: always
    return rel.split("/", 1)[0] in renditions


class Admin:
    def __init__(self, appliance: Appliance) -> None:
        self.appliance = appliance
        self.jobs: dict[int, FillJob] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    async def _json(self, request: web.Request) -> dict[str, Any]:
        body = await service.json_body(request)
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def start_fill(self, request: web.Request) -> web.Response:
        _authorize(request)
        body = await self._json(request)
        titles, top = body.get("titles"), body.get("top")
        renditions = body.get("renditions")
        rate = body.get("rate_mbps", DEFAULT_RATE_MBPS)
        if (titles is None) == (top is None):
            raise web.HTTPBadRequest(text='give exactly one of "titles" (a list) or "top" (N)')
        if titles is not None and (
            not isinstance(titles, list)
            or not titles
            or len(titles) > MAX_TITLES_PER_JOB
            or not all(isinstance(t, str) and is_valid_title_id(t) for t in titles)
        ):
            raise web.HTTPBadRequest(text=f'"titles": 1..{MAX_TITLES_PER_JOB} valid title ids')
        if top is not None and (
            isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP
        ):
            raise web.HTTPBadRequest(text=f'"top": an integer 1..{MAX_TOP}')
        if renditions is not None and (
            not isinstance(renditions, list)
            or not renditions
            or not all(
                isinstance(r, str) and is_valid_rel_path(r) and "/" not in r for r in renditions
            )
        ):
            raise web.HTTPBadRequest(text='"renditions": a list of names like "720p", "audio"')
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1e5:
            raise web.HTTPBadRequest(text='"rate_mbps": a number 0 < rate <= 100000')
        if top is not None:
            titles = await self._top_titles(top)
        job = FillJob(next(self._ids), titles, renditions, float(rate))
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS_KEPT:
            del self.jobs[min(self.jobs)]
        task = asyncio.create_task(self._run(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.json_response(asdict(job), status=202)

    async def _top_titles(self, n: int) -> list[str]:
        """The N titles the origin has served most (its /titles counters)."""
        session = self.appliance.session
        assert session is not None
        for url in reversed(self.appliance.config.upstreams):  # the origin is usually last
            try:
                async with session.get(f"{url.rstrip('/')}/titles") as r:
                    if r.status != 200:
                        continue
                    listing = (await r.json()).get("titles", [])
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            ranked = sorted(listing, key=lambda t: (-int(t.get("requests", 0)), t["title"]))
            return [t["title"] for t in ranked[:n] if is_valid_title_id(str(t.get("title")))]
        raise web.HTTPBadGateway(text="no upstream answered GET /titles for --top")

    async def _run(self, job: FillJob) -> None:
        try:
            plan = []
            for title in job.titles:
                try:
                    await self.appliance.ensure_cached(f"titles/{title}/{MANIFEST}")
                    manifest = self.appliance.read_cached_json(f"titles/{title}/{MANIFEST}")
                except (FillError, ValueError) as exc:
                    job.errors.append(f"{title}: no manifest ({exc})")
                    continue
                files = manifest.get("files", {}) if isinstance(manifest, dict) else {}
                plan += [
                    (f"titles/{title}/{rel}", int(meta.get("size", 0)))
                    for rel, meta in files.items()
                    if isinstance(meta, dict)
                    and is_valid_rel_path(rel)
                    and _wanted(rel, job.renditions)
                ]
            job.objects_total = len(plan)
            started = time.monotonic()
            for key, _size in plan:
                try:
                    where, size = await self.appliance.ensure_cached(key)
                except FillError as exc:
                    job.errors.append(f"{key}: {exc.reason}")
                    continue
                job.objects_done += 1
                if where == "filled":
                    job.bytes_done += size
                    # Stay under the rate cap: sleep until the average is back under it.
                    ahead = job.bytes_done * 8 / (job.rate_mbps * 1e6) - (
                        time.monotonic() - started
                    )
                    if ahead > 0:
                        await asyncio.sleep(ahead)
                else:
                    job.already_cached += 1
            job.state = "done" if not job.errors else "failed"
        except Exception as exc:  # a job must end with a state, whatever happens
            log.exception("fill job crashed", extra={"job": job.id})
            job.errors.append(f"internal error: {type(exc).__name__}")
            job.state = "failed"
        finally:
            job.finished_at = time.time()

    async def fill_status(self, request: web.Request) -> web.Response:
        _authorize(request)
        try:
            job = self.jobs[int(request.match_info["job"])]
        except (KeyError, ValueError):
            raise web.HTTPNotFound(text="no such fill job") from None
        return web.json_response(asdict(job))

    async def purge(self, request: web.Request) -> web.Response:
        _authorize(request)
        title = request.match_info["title"]
        if not is_valid_title_id(title):
            raise web.HTTPBadRequest(text="invalid title id")
        objects, nbytes, pending = await self.appliance.purge_title(title)
        return web.json_response(
            {
                "title": title,
                "purged_objects": objects,
                "purged_bytes": nbytes,
                "disk_writes_pending": pending,
            }
        )

    async def listing(self, request: web.Request) -> web.Response:
        _authorize(request)
        titles: dict[str, dict[str, int]] = defaultdict(
            lambda: {"objects": 0, "bytes": 0, "memory_objects": 0, "disk_objects": 0}
        )
        for tier_name, tier in (("memory", self.appliance.memory), ("disk", self.appliance.disk)):
            for key, size in tier.sizes():
                t = titles[key.split("/", 2)[1]]
                t[f"{tier_name}_objects"] += 1
                if tier_name == "disk" or key not in self.appliance.disk:
                    t["objects"] += 1
                    t["bytes"] += size
        return web.json_response({"titles": dict(sorted(titles.items()))})

    async def get_chaos(self, request: web.Request) -> web.Response:
        _authorize_chaos(request)
        return web.json_response(asdict(self.appliance.chaos))

    async def set_chaos(self, request: web.Request) -> web.Response:
        """Turn switches on or off: the fields given change, the others stay as they are."""
        _authorize_chaos(request)
        body = await self._json(request)
        unknown = sorted(set(body) - set(CHAOS_FIELDS))
        if unknown:
            raise web.HTTPBadRequest(
                text=f"unknown field {unknown[0]!r}; known: {', '.join(CHAOS_FIELDS)}"
            )
        if not body:
            raise web.HTTPBadRequest(text=f"nothing to change; give one of {CHAOS_FIELDS}")
        if "kill" in body:
            if body != {"kill": True}:
                raise web.HTTPBadRequest(text='"kill": true, and alone')
            log.warning("chaos: killing this process (SIGKILL)", extra={"pid": os.getpid()})
            # Abrupt on purpose, like a power cut: no cleanup, no goodbye to steering.
            asyncio.get_running_loop().call_later(
                KILL_AFTER_S, os.kill, os.getpid(), signal.SIGKILL
            )
            return web.json_response({"killing": True, "pid": os.getpid()}, status=202)
        delay = body.get("upstream_delay_ms", self.appliance.chaos.upstream_delay_ms)
        if (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
            or not 0 <= delay <= MAX_UPSTREAM_DELAY_MS
        ):
            most = f"{MAX_UPSTREAM_DELAY_MS:.0f}"
            raise web.HTTPBadRequest(
                text=f'"upstream_delay_ms": a number 0..{most}, got {delay!r:.40}'
            )
        drop = body.get("drop_heartbeats", self.appliance.chaos.drop_heartbeats)
        if not isinstance(drop, bool):
            raise web.HTTPBadRequest(text=f'"drop_heartbeats": true or false, got {drop!r:.40}')
        self.appliance.chaos = Chaos(upstream_delay_ms=float(delay), drop_heartbeats=drop)
        log.warning("chaos switches set", extra=asdict(self.appliance.chaos))
        return web.json_response(asdict(self.appliance.chaos))

    async def clear_chaos(self, request: web.Request) -> web.Response:
        _authorize_chaos(request)
        self.appliance.chaos = Chaos()
        log.warning("chaos switches cleared")
        return web.json_response(asdict(self.appliance.chaos))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def add_routes(app: web.Application, appliance: Appliance) -> Admin:
    admin = Admin(appliance)
    app[APPLIANCE_KEY] = appliance
    app.router.add_post("/admin/fill", admin.start_fill)
    app.router.add_get("/admin/fill/{job}", admin.fill_status)
    app.router.add_delete("/admin/cache/titles/{title}", admin.purge)
    app.router.add_get("/admin/cache", admin.listing)
    app.router.add_get("/admin/chaos", admin.get_chaos)
    app.router.add_post("/admin/chaos", admin.set_chaos)
    app.router.add_delete("/admin/chaos", admin.clear_chaos)
    return admin
