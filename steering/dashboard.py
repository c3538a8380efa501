"""The appliance health dashboard (``GET /dashboard``): every appliance, grouped by site,
live from ``/fleet/events``.

The page is static HTML and one script (``static/dashboard.js``): the script opens an
``EventSource`` on ``/fleet/events`` (which reconnects by itself when steering restarts),
draws each appliance as a compact card (status and why, egress against capacity, hit
ratio, tiers, connections, limiter, fills) with hand-made SVG sparklines of egress and
hit ratio, and every few seconds adds QoE from control's ``GET /events/summary`` when
the deployment file names control. No library, so nothing to install for it.
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent / "static"
FILES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src *; frame-ancestors 'none'"
)


def dashboard_handler(control_url: str | None):  # type: ignore[no-untyped-def]
    async def dashboard(request: web.Request) -> web.Response:
        control = html.escape(control_url or "", quote=True)
        text = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<title>streamcdn fleet</title><link rel=stylesheet href=/static/dashboard.css>"
            f'</head><body data-control="{control}"><header><h1>streamcdn fleet</h1>'
            "<span id=conn>connecting...</span></header><main id=sites></main>"
            "<script src=/static/dashboard.js></script></body></html>"
        )
        return web.Response(
            text=text,
            content_type="text/html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"},
        )

    return dashboard


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES:
        raise web.HTTPNotFound(text="no such file")
    data = await asyncio.to_thread((STATIC / name).read_bytes)
    return web.Response(body=data, content_type=FILES[name])


def add_routes(app: web.Application, control_url: str | None) -> None:
    app.router.add_get("/dashboard", dashboard_handler(control_url))
    app.router.add_get("/static/{name}", static_file)
