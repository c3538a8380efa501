"""The control plane: accounts, the catalog, "play title X", playback events.

Routes (JSON; every body is at most MAX_BODY_BYTES, every route rate-limited per client
address, every answer carries the security headers of control/edge.py):

- ``POST /accounts`` ``{"email", "password"}`` -> 201; 409 if the email is taken.
- ``POST /sessions`` ``{"email", "password"}`` -> ``{"token", "expires_at"}``; 401 for a
  wrong email or password alike; 429 after repeated failures (per email and per address).
- ``GET /catalog[?genre=&offset=&limit=]``, ``GET /catalog/{title}``, ``GET /search?q=``.
- ``POST /play/{title}`` with ``Authorization: Bearer <token>`` -> ``{"session",
  "manifest_url", "urls", "steering_uri", "expires_at", "source"}``.
- ``GET /sessions/{session}/master.m3u8``: the session's master, one pathway per appliance.
- ``POST /events`` (a batch), ``GET /events/summary`` (QoE per appliance).

The catalog follows the origin: every CATALOG_SYNC_S the origin's ``GET /titles`` (its
manifests are the source of truth) is folded into control's SQLite file.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from control import edge
from control.accounts import AccountError, Accounts, LoginThrottle, Reason, entitled
from control.catalog import Catalog, Rendition, TitleEntry
from control.events import (
    EventError,
    EventSink,
    JsonlSink,
    QoeSummary,
    RedisStreamSink,
    SinkUnavailable,
    parse_batch,
)
from control.pages import add_routes as add_page_routes
from control.play import (
    MasterCache,
    PlaySessions,
    Steerer,
    build_session_master,
    signed_base,
    steering_uri,
)
from streamcdn import service
from streamcdn.config import Deployment
from streamcdn.ids import is_valid_title_id

log = logging.getLogger("streamcdn.control")

MAX_BODY_BYTES = 64 * 1024
CATALOG_SYNC_S = 5.0
MAX_POSTERS = 1000
SUMMARY_REBUILD_EVENTS = 100_000  # recent events folded into the QoE summary at start
IP_RATE = (50.0, 100.0)  # requests/s sustained, burst, per client address
PLAY_RATE = (1.0, 10.0)  # plays/s sustained, burst, per account
SIGNUP_RATE = (0.1, 10.0)  # sign-up attempts per client address: 10, then 1 per 10 s
_SESSION_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


class Control:
    def __init__(
        self,
        deployment: Deployment,
        *,
        db_path: Path,
        sink: EventSink,
        tls: bool = False,
    ) -> None:
        if not deployment.signing_keys:
            raise ValueError("control signs URLs: the deployment file needs [keys] signing")
        if not deployment.steering_url:
            raise ValueError("control needs [steering] url in the deployment file")
        self.deployment = deployment
        self.tls = tls
        self.accounts = Accounts(db_path)
        self.catalog = Catalog(db_path)
        self.sessions = PlaySessions(db_path)
        self.sink = sink
        self.summary = QoeSummary()
        self.addresses = edge.ClientAddress(deployment.trusted_proxies)
        self.throttle = LoginThrottle()
        self.ip_limits = edge.RateLimiter(*IP_RATE)
        self.play_limits = edge.RateLimiter(*PLAY_RATE)
        self.signup_limits = edge.RateLimiter(*SIGNUP_RATE)
        self.http: aiohttp.ClientSession | None = None
        self.steerer: Steerer | None = None
        self.masters: MasterCache | None = None
        self.posters: dict[str, bytes] = {}
        self._known: dict[str, str | None] = {}  # title -> the created_at it was synced at
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self.steerer = Steerer(self.deployment, self.http)
        self.masters = MasterCache(self.deployment.origin_url, self.http)
        try:
            self.summary.add(await self.sink.recent(SUMMARY_REBUILD_EVENTS))
        except SinkUnavailable as exc:
            log.warning("events store unreachable; summary starts empty", extra={"e": str(exc)})
        self._tasks.append(asyncio.create_task(self._sync_loop()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        await self.sink.close()
        for store in (self.accounts, self.catalog, self.sessions):
            store.close()

    # -- the catalog follows the origin ---------------------------------------------------

    async def _sync_loop(self) -> None:
        while True:
            try:
                await self.sync_catalog()
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                log.warning("catalog sync failed; will retry", extra={"e": repr(exc)})
            await asyncio.sleep(CATALOG_SYNC_S)

    async def sync_catalog(self) -> int:
        """Fold the origin's titles into the catalog; the number of titles changed."""
        assert self.http is not None
        async with self.http.get(f"{self.deployment.origin_url}/titles") as r:
            r.raise_for_status()
            listed = (await r.json())["titles"]
        changed = 0
        seen = set()
        for t in listed:
            seen.add(t["title"])
            if self._known.get(t["title"], "unknown") == t.get("created_at"):
                continue
            try:
                entry = TitleEntry(
                    id=t["title"],
                    name=t["name"],
                    duration_s=float(t["duration_s"]),
                    tags=tuple(t.get("tags") or ()),
                    renditions=tuple(
                        Rendition.from_dict(r) for r in t.get("renditions") or () if "codecs" in r
                    ),
                    poster=t.get("poster"),
                    updated_at=time.time(),
                )
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("origin listed a title we cannot use", extra={"e": repr(exc)})
                continue
            await asyncio.to_thread(self.catalog.upsert, entry)
            self._known[entry.id] = t.get("created_at")
            self.posters.pop(entry.id, None)
            changed += 1
        for gone in await asyncio.to_thread(self.catalog.ids) - seen:
            await asyncio.to_thread(self.catalog.remove, gone)
            self._known.pop(gone, None)
            changed += 1
        return changed

    def health(self) -> dict[str, Any]:
        steering = self.steerer.breaker.snapshot(time.monotonic()) if self.steerer else {}
        return {"titles": len(self._known), "steering_breaker": steering}


CONTROL = web.AppKey("control", Control)


# -- helpers ------------------------------------------------------------------------------


def client_ip(request: web.Request) -> str:
    control = request.app[CONTROL]
    return control.addresses.of(request.remote, request.headers.get("X-Forwarded-For"))


async def read_json(request: web.Request) -> dict[str, Any]:
    data = await service.json_body(request)
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="the body must be a JSON object")
    return data


def credentials(data: dict[str, Any]) -> tuple[str, str]:
    email, password = data.get("email"), data.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise web.HTTPBadRequest(text='expected {"email": string, "password": string}')
    return email, password


def entry_json(entry: TitleEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "name": entry.name,
        "duration_s": entry.duration_s,
        "tags": list(entry.tags),
        "poster": f"/posters/{entry.id}" if entry.poster else None,
        "renditions": [
            {"name": r.name, "width": r.width, "height": r.height, "bandwidth": r.bandwidth}
            for r in entry.renditions
        ],
    }


async def find_title(request: web.Request) -> TitleEntry:
    title = request.match_info["title"]
    entry = None
    if is_valid_title_id(title):
        entry = await asyncio.to_thread(request.app[CONTROL].catalog.get, title)
    if entry is None:
        raise web.HTTPNotFound(text=f"no title {title[:64]!r}")
    return entry


def int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name, str(default))
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise web.HTTPBadRequest(text=f"{name}: expected a whole number {low}..{high}")
    return int(raw)


# -- handlers -----------------------------------------------------------------------------


async def create_account(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    wait = control.signup_limits.take(client_ip(request), time.monotonic())
    if wait:
        raise edge.too_many(wait, "sign-ups from this address")
    email, password = credentials(await read_json(request))
    try:
        account = await asyncio.to_thread(control.accounts.create, email, password, now=time.time())
    except AccountError as exc:
        if exc.reason is Reason.EMAIL_TAKEN:
            raise web.HTTPConflict(text=str(exc)) from None
        raise web.HTTPBadRequest(text=str(exc)) from None
    return web.json_response(
        {"id": account.id, "email": account.email, "plan": account.plan}, status=201
    )


async def login(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    email, password = credentials(await read_json(request))
    keys = (f"email:{email.strip().lower()}", f"ip:{client_ip(request)}")
    now = time.monotonic()
    wait = max(control.throttle.check(k, now) for k in keys)
    if wait:
        raise edge.too_many(wait, "failed logins")
    try:
        session = await asyncio.to_thread(control.accounts.login, email, password, now=time.time())
    except AccountError as exc:
        for k in keys:
            control.throttle.failed(k, now)
        raise web.HTTPUnauthorized(
            text=str(exc), headers={"WWW-Authenticate": 'Bearer realm="streamcdn"'}
        ) from None
    for k in keys:
        control.throttle.succeeded(k)
    return web.json_response({"token": session.token, "expires_at": session.expires_at})


async def list_catalog(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    genre = request.query.get("genre") or None
    offset = int_param(request, "offset", 0, 0, 1_000_000)
    limit = int_param(request, "limit", 20, 1, 100)
    entries, total = await asyncio.to_thread(
        control.catalog.list, genre=genre, offset=offset, limit=limit
    )
    return web.json_response(
        {
            "titles": [entry_json(e) for e in entries],
            "total": total,
            "offset": offset,
            "limit": limit,
            "genres": [g for g, _ in await asyncio.to_thread(control.catalog.genres)],
        }
    )


async def get_title(request: web.Request) -> web.Response:
    entry = await find_title(request)
    return web.json_response(entry_json(entry))


async def poster(request: web.Request) -> web.Response:
    """A title's poster frame, from the origin, kept in memory (a few tens of kB each)."""
    control = request.app[CONTROL]
    entry = await find_title(request)
    if entry.poster is None:
        raise web.HTTPNotFound(text="this title has no poster")
    data = control.posters.get(entry.id)
    if data is None:
        assert control.http is not None
        url = f"{control.deployment.origin_url}/titles/{entry.id}/{entry.poster}"
        try:
            async with control.http.get(url) as r:
                if r.status != 200:
                    raise web.HTTPNotFound(text="the origin has no poster for this title")
                data = await r.read()
        except (aiohttp.ClientError, TimeoutError):
            raise web.HTTPBadGateway(text="the origin did not answer") from None
        if len(control.posters) >= MAX_POSTERS:
            control.posters.clear()
        control.posters[entry.id] = data
    return web.Response(
        body=data, content_type="image/jpeg", headers={"Cache-Control": "public, max-age=300"}
    )


async def search(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    q = request.query.get("q", "")
    if len(q) > 500:
        raise web.HTTPBadRequest(text="q: at most 500 characters")
    limit = int_param(request, "limit", 20, 1, 100)
    entries = await asyncio.to_thread(control.catalog.search, q, limit=limit)
    return web.json_response({"q": q, "results": [entry_json(e) for e in entries]})


async def play(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    auth = request.headers.get("Authorization", "")
    account = None
    if auth.startswith("Bearer "):
        token = auth.removeprefix("Bearer ").strip()
        account = await asyncio.to_thread(control.accounts.authenticate, token, now=time.time())
    if account is None:
        raise web.HTTPUnauthorized(
            text="a valid bearer token is needed: POST /sessions",
            headers={"WWW-Authenticate": 'Bearer realm="streamcdn"'},
        )
    wait = control.play_limits.take(f"account:{account.id}", time.monotonic())
    if wait:
        raise edge.too_many(wait, "plays for this account")
    entry = await find_title(request)
    title = entry.id
    if not entitled(account, entry.tags):
        raise web.HTTPForbidden(text="this title needs the premium plan")
    ip = client_ip(request)
    assert control.steerer is not None
    placement = await control.steerer.place(title, ip)
    if not placement.appliances:
        raise web.HTTPServiceUnavailable(
            text="no appliance can serve", headers={"Retry-After": "5"}
        )
    expires_at = time.time() + control.deployment.play_ttl_s
    session = await asyncio.to_thread(
        control.sessions.create, account.id, title, placement, ip, expires_at
    )
    base = control.deployment.control_url or str(request.url.origin())
    deployment = control.deployment
    return web.json_response(
        {
            "session": session.id,
            "manifest_url": f"{base}/sessions/{session.id}/master.m3u8",
            "urls": [
                signed_base(deployment, url, title, expires_at) + "master.m3u8"
                for _, url in placement.appliances
            ],
            "appliances": [a for a, _ in placement.appliances],
            "steering_uri": steering_uri(deployment, session),
            "expires_at": expires_at,
            "source": placement.source,
        }
    )


async def session_master(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    session_id = request.match_info["session"]
    session = None
    if 0 < len(session_id) <= 64 and set(session_id) <= _SESSION_CHARS:
        session = await asyncio.to_thread(control.sessions.get, session_id, now=time.time())
    if session is None:
        raise web.HTTPNotFound(text="no such play session (or it expired)")
    assert control.masters is not None
    try:
        master = await control.masters.get(session.title)
    except (aiohttp.ClientError, TimeoutError):
        raise web.HTTPBadGateway(text="the origin did not give the title's master") from None
    if master is None:
        raise web.HTTPNotFound(text="the title is gone")
    try:
        text = build_session_master(control.deployment, master, session)
    except ValueError as exc:
        log.error("cannot build a session master", extra={"e": str(exc), "title": session.title})
        raise web.HTTPBadGateway(text="the title's master playlist is not usable") from None
    return web.Response(
        text=text,
        content_type="application/vnd.apple.mpegurl",
        headers={"Cache-Control": "no-store", "Access-Control-Allow-Origin": "*"},
    )


async def post_events(request: web.Request) -> web.Response:
    control = request.app[CONTROL]
    try:
        events = parse_batch(await service.json_body(request), now=time.time())
    except EventError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None
    try:
        await control.sink.append(events)
    except SinkUnavailable:
        raise web.HTTPServiceUnavailable(
            text="events store unreachable; retry", headers={"Retry-After": "1"}
        ) from None
    control.summary.add(events)
    return web.json_response({"accepted": len(events)}, status=202)


async def events_summary(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[CONTROL].summary.to_json(time.time()),
        headers={"Access-Control-Allow-Origin": "*"},
    )


# -- the app --------------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNLIMITED = ("/health", "/metrics")


@web.middleware
async def per_address_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path not in UNLIMITED:
        control = request.app[CONTROL]
        wait = control.ip_limits.take(client_ip(request), time.monotonic())
        if wait:
            raise edge.too_many(wait, "requests from this address")
    return await handler(request)


def make_sink(deployment: Deployment, redis_url: str | None, data_dir: Path) -> EventSink:
    url = redis_url or deployment.control_redis_url
    if url:
        return RedisStreamSink(url)
    return JsonlSink(deployment.control_events_file or data_dir / "events.jsonl")


def create_app(
    deployment: Deployment,
    *,
    db_path: Path,
    redis_url: str | None = None,
    tls: bool = False,
) -> web.Application:
    app = service.create_app("control", client_max_size=MAX_BODY_BYTES)
    app.middlewares.append(per_address_limit)
    control = Control(
        deployment,
        db_path=db_path,
        sink=make_sink(deployment, redis_url, db_path.parent),
        tls=tls,
    )
    app[CONTROL] = control
    app[service.HEALTH_CHECKS].append(control.health)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await control.start()
        yield
        await control.stop()

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        edge.add_security_headers(response, tls=control.tls)

    app.cleanup_ctx.append(lifecycle)
    app.on_response_prepare.append(headers)
    app.router.add_post("/accounts", create_account)
    app.router.add_post("/sessions", login)
    app.router.add_get("/catalog", list_catalog)
    app.router.add_get("/catalog/{title}", get_title)
    app.router.add_get("/search", search)
    app.router.add_get("/posters/{title}", poster)
    app.router.add_post("/play/{title}", play)
    app.router.add_get("/sessions/{session}/master.m3u8", session_master)
    app.router.add_post("/events", post_events)
    app.router.add_get("/events/summary", events_summary)
    add_page_routes(app)
    return app
