"""The steering service: the fleet's health in one view, and which appliances serve whom.

Routes (JSON unless noted):

- ``POST /heartbeat``: an appliance's health, signed with its key (401 otherwise).
- ``GET /fleet``: every appliance with its status, reason, last-seen time and figures.
- ``GET /fleet/events``: server-sent events: ``fleet`` (the whole view) on connect,
  ``change`` when an appliance's status changes, ``tick`` every second with every
  appliance's figures (the dashboard's feed).
- ``GET /steer?title=ID&client_ip=IP[&n=K]``: the client's site and up to K appliances,
  best first (steering/ranking.py).
- ``GET /content-steering/{session}.json?title=ID&pathways=a1,a2``: the HLS Content
  Steering manifest for a session whose master lists those pathways (one per
  appliance, steering/content_steering.py), ordered by current health and ranking.

The view is refreshed from the store every REFRESH_S, so a decision never waits on
Redis; if Redis goes away, the last view keeps serving and /health says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import time
from typing import Any

from aiohttp import web

from steering import content_steering as cs
from steering.dashboard import add_routes as add_dashboard_routes
from steering.ranking import RankingIndex, Site, SiteMap
from steering.registry import (
    ApplianceView,
    FleetStore,
    Heartbeat,
    MemoryStore,
    RedisStore,
    fleet_view,
)
from streamcdn import service
from streamcdn.config import Deployment
from streamcdn.ids import is_valid_title_id
from streamcdn.tokens import SIGNATURE_HEADER, key_ring, verify_body

log = logging.getLogger("streamcdn.steering")

REFRESH_S = 0.5  # how often the view is rebuilt from the store
TICK_S = 1.0  # how often /fleet/events sends every appliance's figures
MAX_HEARTBEAT_BYTES = 64 * 1024
MAX_CLOCK_SKEW_S = 30.0  # older (replayed) or future heartbeats are refused
MAX_STEER_N = 20
DEFAULT_STEER_N = 5
STEERING_TTL_S = 5  # players reload the steering manifest this often
SUBSCRIBER_QUEUE = 64  # events a slow /fleet/events client may lag before it is dropped


class Steering:
    def __init__(self, deployment: Deployment, store: FleetStore, backend: str) -> None:
        self.deployment = deployment
        self.store = store
        self.backend = backend
        self.sites = {s.name: Site(s.name, s.cidrs, s.fallbacks) for s in deployment.sites}
        self.site_map = SiteMap(list(self.sites.values()), deployment.default_site)
        self.keys = {
            a.id: key_ring(list(deployment.heartbeat_keys(a.id))) for a in deployment.appliances
        }
        self.views: list[ApplianceView] = []
        self.index = RankingIndex(self.sites, [], load_bound=deployment.load_bound)
        self.store_error: str | None = None
        self.store_error_since: float | None = None
        self.subscribers: set[asyncio.Queue[str]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- the view ----------------------------------------------------------------------

    async def refresh(self) -> list[tuple[ApplianceView, str]]:
        """Rebuild the view; the (view, old status) of every appliance whose status changed."""
        try:
            beats = await self.store.all()
        except Exception as exc:  # Redis gone: keep serving the last view, and say so
            if self.store_error is None:
                log.error("fleet store unreachable; serving the last view", extra={"e": repr(exc)})
                self.store_error_since = time.time()
            self.store_error = repr(exc)
            return []
        if self.store_error is not None:
            log.info("fleet store reachable again")
        self.store_error = self.store_error_since = None
        old = {v.id: v.status for v in self.views}
        self.views = fleet_view(self.deployment, beats, time.time())
        self.index = RankingIndex(
            self.sites, [v.state() for v in self.views], load_bound=self.deployment.load_bound
        )
        return [(v, old.get(v.id, "unknown")) for v in self.views if old.get(v.id) != v.status]

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._refresh_loop()),
            asyncio.create_task(self._tick_loop()),
        ]

    def end_streams(self) -> None:
        """End every /fleet/events stream (at shutdown, before in-flight requests drain)."""
        for queue in list(self.subscribers):
            _offer(queue, "", force=True)  # wakes the handler, which ends the stream

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.end_streams()
        await self.store.close()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            try:
                changed = await self.refresh()
            except Exception:  # a bug in one refresh must not freeze the view for good
                log.exception("fleet refresh failed; serving the last view")
                continue
            for view, old in changed:
                log.info(
                    "appliance status changed",
                    extra={"id": view.id, "from": old, "to": view.status, "reason": view.reason},
                )
                self.publish("change", {"id": view.id, "from": old, **view.to_json(time.time())})

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            self.publish("tick", {"now": now, "appliances": [v.to_json(now) for v in self.views]})

    def publish(self, event: str, data: dict[str, Any]) -> None:
        message = f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        for queue in list(self.subscribers):
            if not _offer(queue, message):
                self.subscribers.discard(queue)  # too slow: its stream ends
                _offer(queue, "", force=True)

    def fleet_json(self) -> dict[str, Any]:
        now = time.time()
        return {
            "now": now,
            "store": self.store_health(),
            "sites": [
                {"name": s.name, "cidrs": list(s.cidrs), "fallbacks": list(s.fallbacks)}
                for s in self.sites.values()
            ],
            "default_site": self.deployment.default_site,
            "appliances": [v.to_json(now) for v in self.views],
        }

    def store_health(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "ok": self.store_error is None,
            "error": self.store_error,
            "since": self.store_error_since,
        }

    def health(self) -> dict[str, Any]:
        counts = {s: 0 for s in ("up", "degraded", "draining", "down")}
        for v in self.views:
            counts[v.status] = counts.get(v.status, 0) + 1
        out: dict[str, Any] = {"appliances": counts, "store": self.store_health()}
        if self.store_error is not None:
            out["status"] = "degraded"
            out["reasons"] = [f"{self.backend} unreachable; serving the last view"]
        return out


STEERING = web.AppKey("steering", Steering)


def _offer(queue: asyncio.Queue[str], message: str, *, force: bool = False) -> bool:
    if force and queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    try:
        queue.put_nowait(message)
    except asyncio.QueueFull:
        return False
    return True


# -- handlers ------------------------------------------------------------------------


async def heartbeat(request: web.Request) -> web.Response:
    steering = request.app[STEERING]
    body = await request.read()
    data = await service.json_body(request, what="the heartbeat")
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="heartbeat body must be a JSON object")
    appliance_id = data.get("id")
    if not isinstance(appliance_id, str) or appliance_id not in steering.keys:
        raise web.HTTPNotFound(text=f"unknown appliance id {str(appliance_id)[:64]!r}")
    header = request.headers.get(SIGNATURE_HEADER, "")
    if verify_body(body, header, steering.keys[appliance_id]) is None:
        raise web.HTTPUnauthorized(text=f"heartbeat not signed with {appliance_id}'s key")
    sent_at = data.get("sent_at")
    now = time.time()
    if (
        not isinstance(sent_at, int | float)
        or isinstance(sent_at, bool)
        or not math.isfinite(sent_at)
        or abs(now - sent_at) > MAX_CLOCK_SKEW_S
    ):
        raise web.HTTPBadRequest(text="sent_at missing, or more than 30 s off this clock")
    try:
        stored = await steering.store.put(Heartbeat(appliance_id, float(sent_at), now, data))
    except Exception as exc:  # the store is down: say so; the appliance keeps trying
        log.warning("heartbeat not stored", extra={"id": appliance_id, "error": repr(exc)})
        raise web.HTTPServiceUnavailable(
            text="fleet store unreachable", headers={"Retry-After": "1"}
        ) from None
    return web.json_response({"stored": stored})


async def fleet(request: web.Request) -> web.Response:
    return web.json_response(request.app[STEERING].fleet_json())


async def fleet_events(request: web.Request) -> web.StreamResponse:
    steering = request.app[STEERING]
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Access-Control-Allow-Origin": "*",
        }
    )
    await resp.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue(SUBSCRIBER_QUEUE)
    steering.subscribers.add(queue)
    try:
        snapshot = json.dumps(steering.fleet_json(), separators=(",", ":"))
        await resp.write(f"retry: 1000\nevent: fleet\ndata: {snapshot}\n\n".encode())
        while True:
            message = await queue.get()
            if not message:
                break  # shutting down, or this client fell too far behind
            await resp.write(message.encode())
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        steering.subscribers.discard(queue)
    return resp


def _title(request: web.Request) -> str:
    title = request.query.get("title", "")
    if not is_valid_title_id(title):
        raise web.HTTPBadRequest(text="title: expected a title id")
    return title


async def steer(request: web.Request) -> web.Response:
    steering = request.app[STEERING]
    title = _title(request)
    # Control asks on a viewer's behalf; without client_ip, the caller is the viewer.
    raw_ip = request.query.get("client_ip", request.remote or "")
    try:
        ip = ipaddress.ip_address(raw_ip)
    except ValueError:
        raise web.HTTPBadRequest(text=f"client_ip: not an IP address: {raw_ip[:64]!r}") from None
    raw_n = request.query.get("n", str(DEFAULT_STEER_N))
    if not raw_n.isdigit() or not 1 <= int(raw_n) <= MAX_STEER_N:
        raise web.HTTPBadRequest(text=f"n: expected 1..{MAX_STEER_N}")
    site = steering.site_map.site_for(ip)
    ranking = steering.index.rank(title, site, int(raw_n))
    return web.json_response(
        {
            "title": title,
            "client_ip": str(ip),
            "site": ranking.site,
            "appliances": [{"id": a.id, "url": a.url, "site": a.site} for a in ranking.appliances],
        }
    )


async def content_steering(request: web.Request) -> web.Response:
    """HLS Content Steering manifest for one session (steering/content_steering.py)."""
    steering = request.app[STEERING]
    session = request.match_info["session"]
    try:
        cs.manifest_uri("http://x", session)  # validates the session id
    except ValueError:
        raise web.HTTPBadRequest(text="session: expected 1-128 of [A-Za-z0-9_-]") from None
    title = _title(request)
    pathways = [p for p in request.query.get("pathways", "").split(",") if p]
    configured = {v.id for v in steering.views}
    known = [p for p in dict.fromkeys(pathways) if p in configured]
    if not known or len(pathways) > 64:
        raise web.HTTPBadRequest(text="pathways: expected appliance ids, comma-separated")
    query = cs.parse_steering_query(request.query, known=known)
    site = steering.site_map.site_for(ipaddress.ip_address(request.remote or "127.0.0.1"))
    ranked = [a.id for a in steering.index.rank(title, site, len(steering.views)).appliances]
    priority = cs.pathway_priority(
        [p for p in ranked if p in known],
        current=query.pathway,
        throughput_bps=query.throughput_bps,
        known=known,
    )
    if not priority:  # nothing healthy: players keep their last priority on an error
        raise web.HTTPServiceUnavailable(
            text="no pathway of this session is healthy", headers={"Retry-After": "1"}
        )
    reload = request.rel_url.with_query(
        {k: v for k, v in request.query.items() if not k.startswith("_HLS_")}
    )
    body = cs.steering_manifest(priority, ttl_s=STEERING_TTL_S, reload_uri=str(reload))
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def create_app(deployment: Deployment, *, redis_url: str | None = None) -> web.Application:
    app = service.create_app("steering", client_max_size=MAX_HEARTBEAT_BYTES)
    url = redis_url or deployment.redis_url
    store: FleetStore = RedisStore(url) if url else MemoryStore()
    steering = Steering(deployment, store, "redis" if url else "memory")
    app[STEERING] = steering
    app[service.HEALTH_CHECKS].append(steering.health)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await steering.start()
        yield
        await steering.stop()

    async def end_streams(app: web.Application) -> None:
        steering.end_streams()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(end_streams)
    app.router.add_post("/heartbeat", heartbeat)
    app.router.add_get("/fleet", fleet)
    app.router.add_get("/fleet/events", fleet_events)
    app.router.add_get("/steer", steer)
    app.router.add_get("/content-steering/{session}.json", content_steering)
    add_dashboard_routes(app, deployment.control_url)
    return app
