"""Security tests reuse the real-server fixtures of the packages they attack, plus a canary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from streamcdn import service
from tests.appliance.conftest import make_appliance, origin  # noqa: F401
from tests.control.conftest import stack  # noqa: F401


@dataclass
class Canary:
    """A server nobody should ever reach: where an SSRF or a followed redirect would land."""

    url: str = ""
    hits: list[str] = field(default_factory=list)


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    c = Canary()

    async def record(request: web.Request) -> web.Response:
        c.hits.append(request.path_qs)
        return web.Response(text="canary")

    app = service.create_app("canary")
    app.router.add_route("*", "/{tail:.*}", record)
    running = await service.start(app, host="127.0.0.1", port=0, access_log=False)
    c.url = running.make_url()
    yield c
    await running.close()
