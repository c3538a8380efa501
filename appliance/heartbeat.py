"""The heartbeat: every second, this appliance's health goes to the steering service.

The body is JSON (the same figures as ``GET /health`` plus who and where the appliance
is, and when it was sent), signed with the appliance's URL-signing key so steering can
refuse a spoofed heartbeat. Steering's answers are not needed; failures are logged,
rate-limited, and never affect serving.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from streamcdn.tokens import SIGNATURE_HEADER, SigningKey, sign_body

log = logging.getLogger("streamcdn.appliance.heartbeat")

INTERVAL_S = 1.0
TIMEOUT_S = 2.0
LOG_EVERY_S = 30.0  # at most one warning per this while steering is unreachable


def heartbeat_body(health: dict[str, Any], *, url: str, now: float) -> bytes:
    return json.dumps({**health, "url": url, "sent_at": now}, separators=(",", ":")).encode()


async def heartbeat_loop(
    session: aiohttp.ClientSession,
    steering: str,
    key: SigningKey | None,
    health: Callable[[], dict[str, Any]],
    *,
    url: str,
    interval_s: float = INTERVAL_S,
    paused: Callable[[], bool] = lambda: False,
) -> None:
    """Post ``health()`` to steering every ``interval_s``; none while ``paused()`` (chaos:
    POST /admin/chaos {"drop_heartbeats": true}), so steering counts the appliance down."""
    target = f"{steering.rstrip('/')}/heartbeat"
    last_warning = 0.0
    sent = failed = 0
    while True:
        if paused():
            await asyncio.sleep(interval_s)
            continue
        body = heartbeat_body(health(), url=url, now=time.time())
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers[SIGNATURE_HEADER] = sign_body(body, key)
        try:
            async with session.post(
                target, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)
            ) as r:
                if r.status >= 300:
                    raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
            sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed += 1
            if time.monotonic() - last_warning > LOG_EVERY_S:
                last_warning = time.monotonic()
                log.warning(
                    "heartbeat failed",
                    extra={"steering": target, "error": repr(exc), "sent": sent, "failed": failed},
                )
        await asyncio.sleep(interval_s)
