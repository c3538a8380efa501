"""The origin HTTP server: titles out of the store, exactly as ingest published them.

Every file answer is checked against the manifest's size and xxh3-128 digest before a
byte leaves, and carries that digest in ``X-Content-Digest`` so an appliance can check
what it caches. Objects are small (a 4 s segment is a few MB), so each is read whole.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path, PurePosixPath

from aiohttp import web

from origin.store import MANIFEST, FileEntry, TitleStore
from streamcdn import service
from streamcdn.byteserving import decide
from streamcdn.digest import digest_bytes, digest_file, header_value
from streamcdn.ids import is_valid_rel_path, is_valid_title_id

log = logging.getLogger("streamcdn.origin")

STORE = web.AppKey("store", TitleStore)
REQUESTS = web.AppKey("requests_by_title", Counter)
NOT_FOUND_HEADER = "X-Not-Found"
PLAYLIST_MAX_AGE_S = 60
MEDIA_MAX_AGE_S = 86_400
CONTENT_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".json": "application/json",
    ".jpg": "image/jpeg",
}


def _title(request: web.Request) -> str:
    title = request.match_info["title"]
    if not is_valid_title_id(title):
        raise web.HTTPBadRequest(text=f"invalid title id {title[:80]!r}")
    return title


def unknown_title(title: str) -> web.HTTPNotFound:
    # Appliances remember this header briefly for the whole title, so requests for
    # made-up titles cannot storm the origin one path at a time.
    return web.HTTPNotFound(text=f"no title {title!r}", headers={NOT_FOUND_HEADER: "title"})


async def list_titles(request: web.Request) -> web.Response:
    store = request.app[STORE]
    titles = []
    for title in await asyncio.to_thread(store.titles):
        m = store.manifest(title)
        if m is not None:
            titles.append(
                {
                    "title": title,
                    "name": m["name"],
                    "duration_s": m["duration_s"],
                    "tags": m.get("tags", []),
                    "poster": m.get("poster"),
                    "created_at": m.get("created_at"),
                    "renditions": m.get("renditions", []),
                    "requests": request.app[REQUESTS][title],
                }
            )
    return web.json_response({"titles": titles})


async def _send(request: web.Request, path: Path, entry: FileEntry, max_age: int) -> web.Response:
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError:
        # The title was replaced (ingest --force) between lookup and read.
        raise web.HTTPServiceUnavailable(
            text="title is being replaced", headers={"Retry-After": "1"}
        ) from None
    if len(data) != entry.size or digest_bytes(data) != entry.digest:
        log.error("store file does not match its manifest", extra={"path": str(path)})
        raise web.HTTPInternalServerError(text="stored file is corrupt")
    etag = f'"{entry.digest}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": f"public, max-age={max_age}",
        "Content-Type": CONTENT_TYPES.get(
            PurePosixPath(path.name).suffix, "application/octet-stream"
        ),
        "X-Content-Digest": header_value(entry.digest),
        "Access-Control-Allow-Origin": "*",
    }
    decision = decide(request.headers, entry.size, etag)
    headers.update(decision.headers(entry.size))
    if decision.status in (304, 416):
        return web.Response(status=decision.status, headers=headers)
    body = data if decision.range is None else data[decision.range.start : decision.range.end + 1]
    return web.Response(status=decision.status, body=body, headers=headers)


async def title_manifest(request: web.Request) -> web.Response:
    store = request.app[STORE]
    title = _title(request)
    if store.manifest(title) is None:
        raise unknown_title(title)
    path = store.manifest_path(title)
    # The manifest describes the other files, so it is digested as it is read.
    entry = await asyncio.to_thread(lambda: FileEntry(path.stat().st_size, digest_file(path)))
    return await _send(request, path, entry, PLAYLIST_MAX_AGE_S)


async def title_file(request: web.Request) -> web.Response:
    store = request.app[STORE]
    title = _title(request)
    rel = request.match_info["path"]
    if not is_valid_rel_path(rel):
        raise web.HTTPBadRequest(text="invalid path")
    if store.manifest(title) is None:
        raise unknown_title(title)
    found = store.lookup(title, rel)
    if found is None:
        raise web.HTTPNotFound(text=f"no file {rel[:80]!r} in title {title!r}")
    path, entry = found
    request.app[REQUESTS][title] += 1  # popularity, for `streamcdn fill --top N`
    max_age = PLAYLIST_MAX_AGE_S if rel.endswith(".m3u8") else MEDIA_MAX_AGE_S
    return await _send(request, path, entry, max_age)


def create_app(store_dir: str | Path) -> web.Application:
    store = TitleStore(store_dir).ensure(writable=False)
    app = service.create_app("origin")
    app[STORE] = store
    app[REQUESTS] = Counter()
    app[service.HEALTH_CHECKS].append(lambda: {"titles": len(store.titles())})
    app.router.add_get("/titles", list_titles)
    app.router.add_get(f"/titles/{{title}}/{MANIFEST}", title_manifest)
    app.router.add_get("/titles/{title}/{path:.+}", title_file)
    return app
