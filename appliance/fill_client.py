"""``streamcdn fill``: drive an appliance's admin fill API and show its progress."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from streamcdn.errors import UserError
from streamcdn.progress import console

POLL_S = 0.25
TIMEOUT_S = 10


def _call(method: str, url: str, admin_key: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {admin_key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        try:
            reason = json.load(exc).get("error", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        if exc.code == 401:
            raise UserError(f"{url}: the admin key was refused") from None
        raise UserError(f"{url}: HTTP {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise UserError(f"{url}: cannot reach the appliance ({reason})") from None


def run_fill(
    appliance: str,
    admin_key: str,
    *,
    titles: list[str] | None,
    top: int | None,
    renditions: list[str] | None,
    rate_mbps: float | None,
) -> dict[str, Any]:
    parts = urlsplit(appliance)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(f"--appliance {appliance!r}: expected http://host:port")
    if not admin_key.isprintable():
        raise UserError("--admin-key: control characters cannot go in an HTTP header")
    base = appliance.rstrip("/")
    body: dict[str, Any] = {"titles": titles} if titles else {"top": top}
    if renditions:
        body["renditions"] = renditions
    if rate_mbps:
        body["rate_mbps"] = rate_mbps
    job = _call("POST", f"{base}/admin/fill", admin_key, body)
    columns = (
        TextColumn("fill"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("objects, {task.fields[mb]:.1f} MB fetched"),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("fill", total=None, mb=0.0)
        while True:
            progress.update(
                task,
                total=job["objects_total"] or None,
                completed=job["objects_done"],
                mb=job["bytes_done"] / 1e6,
            )
            if job["state"] != "running":
                break
            time.sleep(POLL_S)
            job = _call("GET", f"{base}/admin/fill/{job['id']}", admin_key)
    elapsed = (job["finished_at"] or time.time()) - job["started_at"]
    console.print(
        f"{job['state']}: {job['objects_done']}/{job['objects_total']} objects in "
        f"{len(job['titles'])} titles, {job['bytes_done'] / 1e6:.1f} MB fetched, "
        f"{job['already_cached']} already cached, {elapsed:.1f} s"
    )
    for err in job["errors"][:10]:
        console.print(f"  error: {err}")
    if job["state"] != "done":
        raise UserError(f"fill finished with {len(job['errors'])} errors")
    return job
