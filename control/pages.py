"""The pages people look at: the catalog (``GET /``) and the watch page (``GET /watch/{title}``).

Server-rendered HTML, every value escaped; the watch page's script (``static/watch.js``)
logs in, calls ``POST /play``, and plays the session master with hls.js (content steering
on). hls.js comes from npm (``web/``, installed by ``make install``) and is served from
here: no CDN links. Pages carry their own Content-Security-Policy: scripts only from this
origin, media through MediaSource blobs, fetches to the appliances and steering.
"""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

from aiohttp import web

from streamcdn.ids import is_valid_title_id

ROOT = Path(__file__).resolve().parent.parent
STATIC = Path(__file__).resolve().parent / "static"
HLS_JS = ROOT / "web" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; worker-src 'self' blob:; connect-src *; frame-ancestors 'none'"
)
STATIC_FILES = {  # name -> (path, content type): nothing else is served from disk
    "watch.js": (STATIC / "watch.js", "text/javascript"),
    "page.css": (STATIC / "page.css", "text/css"),
    "hls.min.js": (HLS_JS, "text/javascript"),
}


def page(title: str, body: str, *, scripts: tuple[str, ...] = ()) -> web.Response:
    tags = "".join(f'<script src="/static/{s}"></script>' for s in scripts)
    text = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f'<title>{html.escape(title)}</title><link rel=stylesheet href="/static/page.css">'
        f"</head><body>{body}{tags}</body></html>"
    )
    return web.Response(
        text=text,
        content_type="text/html",
        headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"},
    )


async def catalog_page(request: web.Request) -> web.Response:
    from control.server import CONTROL

    control = request.app[CONTROL]
    entries, total = await asyncio.to_thread(control.catalog.list, limit=100)
    cards = "".join(
        f'<a class=card href="/watch/{html.escape(e.id)}">'
        + (
            f'<img alt="" src="/posters/{html.escape(e.id)}">'
            if e.poster
            else "<div class=blank></div>"
        )
        + f"<b>{html.escape(e.name)}</b><span>{e.duration_s:.0f} s · "
        + html.escape(", ".join(e.tags))
        + "</span></a>"
        for e in entries
    )
    empty = "<p>No titles yet: ingest one with <code>streamcdn ingest</code>.</p>"
    return page(
        "streamcdn",
        f"<header><h1>streamcdn</h1><p>{total} titles</p></header>"
        f"<main class=grid>{cards or empty}</main>",
    )


async def watch_page(request: web.Request) -> web.Response:
    from control.server import CONTROL

    control = request.app[CONTROL]
    title = request.match_info["title"]
    entry = None
    if is_valid_title_id(title):
        entry = await asyncio.to_thread(control.catalog.get, title)
    if entry is None:
        response = page(
            "not found",
            f"<main><h1>No such title</h1><p>{html.escape(title[:64])!s} is not in the "
            'catalog. <a href="/">See what is.</a></p></main>',
        )
        response.set_status(404)
        return response
    body = (
        f'<main id=watch data-title="{html.escape(entry.id)}">'
        f'<h1>{html.escape(entry.name)}</h1><p><a href="/">catalog</a></p>'
        "<form id=login hidden><label>email <input name=email type=email "
        'value="demo@streamcdn.test" autocomplete=username></label>'
        "<label>password <input name=password type=password autocomplete=current-password>"
        "</label><button>log in and play</button></form>"
        "<p id=message role=status></p>"
        "<div class=player><video id=video controls muted playsinline></video>"
        "<pre id=overlay></pre></div></main>"
    )
    return page(entry.name, body, scripts=("hls.min.js", "watch.js"))


async def static_file(request: web.Request) -> web.Response:
    found = STATIC_FILES.get(request.match_info["name"])
    if found is None:
        raise web.HTTPNotFound(text="no such file")
    path, content_type = found
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        raise web.HTTPServiceUnavailable(text=f"{path.name} is missing: run make install") from None
    return web.Response(
        body=data, content_type=content_type, headers={"Cache-Control": "public, max-age=300"}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", catalog_page)
    app.router.add_get("/watch/{title}", watch_page)
    app.router.add_get("/static/{name}", static_file)
