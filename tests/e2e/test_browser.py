"""The watch page in a real browser: Debian's chromium, headless, driven by Playwright.

Screenshots land in tests/artifacts/ (git ignores it).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import ClientSession

from origin.store import TitleStore
from tests.conftest import TITLE, publish_sample
from tests.control.conftest import PASSWORD, Stack, appliance_config, call, start_stack

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


@pytest.fixture
async def browser():  # type: ignore[no-untyped-def]
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield browser
        await browser.close()


@pytest.fixture
async def stack(tmp_path: Path, store: TitleStore) -> AsyncIterator[Stack]:
    s = await start_stack(tmp_path, store)
    yield s
    for running in reversed(list(s.running.values())):
        await running.close()


async def wait_for_state(page, done, timeout_s: float = 30.0) -> dict:  # type: ignore[no-untyped-def]
    """Poll the page's window.streamcdn (the page's CSP forbids Playwright's in-page polling)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = await page.evaluate("window.streamcdn || null")
        if state is not None and done(state):
            return state
        assert time.monotonic() < deadline, f"page state never got there: {state}"
        await asyncio.sleep(0.25)


async def test_the_watch_page_plays_a_title_in_chromium(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    email = "viewer@example.com"
    assert (
        await call("POST", f"{stack.control}/accounts", {"email": email, "password": PASSWORD})
    )[0] == 201
    page = await browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    await page.goto(f"{stack.control}/")
    assert await page.locator("a.card").count() == 1  # the catalog lists the title
    await page.goto(f"{stack.control}/watch/{TITLE}")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("form#login button")
    state = await wait_for_state(page, lambda s: s["currentTime"] >= 5 or s["fatal"])
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "watch.png"))
    assert state["fatal"] is None, (state, console)
    assert state["pathway"] in ("a1", "ix1")  # played through an appliance pathway
    assert "pathway" in await page.inner_text("#overlay")
    # The page posted its playback events (every 5 s): control's QoE summary has them.
    deadline = time.monotonic() + 10
    while True:
        _, summary, _ = await call("GET", f"{stack.control}/events/summary")
        if summary["appliances"].get(state["pathway"], {}).get("sessions"):
            break
        assert time.monotonic() < deadline, summary
        await asyncio.sleep(0.5)


async def test_the_watch_page_explains_what_went_wrong(stack: Stack, browser) -> None:  # type: ignore[no-untyped-def]
    page = await browser.new_page()
    response = await page.goto(f"{stack.control}/watch/no-such-title")
    assert response is not None and response.status == 404
    assert "No such title" in await page.inner_text("main")
    await page.goto(f"{stack.control}/watch/{TITLE}")
    await page.fill("input[name=password]", "not the password")
    await page.click("form#login button")
    await page.wait_for_selector("#message.error")
    assert "wrong email or password" in await page.inner_text("#message")


async def test_the_dashboard_shows_an_appliance_go_down_and_come_back(
    stack: Stack, browser, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from appliance.server import create_app as create_appliance
    from streamcdn import service
    from streamcdn.tokens import SIGNATURE_HEADER, sign_body

    page = await browser.new_page()
    await page.goto(f"{stack.steering}/dashboard")

    def fleet(ids):  # type: ignore[no-untyped-def]
        return lambda s: all(s.get(i) == want for i, want in ids.items())

    async def wait_fleet(want: dict[str, str], timeout_s: float) -> float:
        started = time.monotonic()
        while True:
            state = await page.evaluate("window.streamcdnFleet || {}")
            if fleet(want)(state):
                return time.monotonic() - started
            assert time.monotonic() - started < timeout_s, f"dashboard shows {state}, not {want}"
            await asyncio.sleep(0.1)

    await wait_fleet({"a1": "up", "ix1": "up"}, 10)
    # An appliance reporting nonsense figures does not break the page.
    nonsense = json.dumps({"id": "ix1", "sent_at": time.time(), "status": "ok", "egress_bps": "lots",
                           "tiers": 7, "limiter": [1], "byte_hit_ratio": {"memory": 1e300}}).encode()  # fmt: skip
    key = stack.deployment.signing_keys[0]
    async with ClientSession() as s, s.post(f"{stack.steering}/heartbeat", data=nonsense,
                      headers={SIGNATURE_HEADER: sign_body(nonsense, key)}) as r:  # fmt: skip
        assert r.status == 200
    entry = stack.deployment.appliance("a1")
    await stack.stop("a1")
    assert await wait_fleet({"a1": "down"}, 5) < 5  # seen down within 5 s
    assert "down" in await page.inner_text("#appliance-a1")
    config = appliance_config(stack.deployment, "a1", tmp_path)
    stack.running["a1"] = await service.start(
        create_appliance(config), host="127.0.0.1", port=entry.port, access_log=False
    )
    await wait_fleet({"a1": "up"}, 10)
    # Steering restarts: the page's event stream reconnects by itself.
    from steering.server import create_app as create_steering

    await stack.stop("steering")
    await page.wait_for_selector("#conn.lost", timeout=10_000)
    port = int(stack.steering.rsplit(":", 1)[1])
    stack.running["steering"] = await service.start(
        create_steering(stack.deployment), host="127.0.0.1", port=port, access_log=False
    )
    await page.wait_for_selector("#conn.live", timeout=15_000)
    await wait_fleet({"a1": "up", "ix1": "up"}, 10)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert await page.locator("article.card").count() == 2


@pytest.fixture(scope="module")
def long_store(tmp_path_factory: pytest.TempPathFactory) -> TitleStore:
    """A 60 s title: longer than the page's forward buffer, so hls.js still fetches after
    an appliance dies."""
    return publish_sample(
        tmp_path_factory.mktemp("long-store"), TITLE, duration_s=60.0, size=(640, 360)
    )


async def test_killing_the_appliance_in_use_keeps_the_video_playing(
    tmp_path: Path,
    long_store: TitleStore,
    browser,  # type: ignore[no-untyped-def]
) -> None:
    stack = await start_stack(tmp_path, long_store)
    try:
        email = "viewer@example.com"
        await call("POST", f"{stack.control}/accounts", {"email": email, "password": PASSWORD})
        page = await browser.new_page()
        await page.goto(f"{stack.control}/watch/{TITLE}")
        await page.fill("input[name=email]", email)
        await page.fill("input[name=password]", PASSWORD)
        await page.click("form#login button")
        state = await wait_for_state(page, lambda s: s["currentTime"] >= 3 and s["pathway"])
        first, killed_at = state["pathway"], state["currentTime"]
        await stack.stop(first)  # the appliance serving this viewer dies
        state = await wait_for_state(
            page,
            lambda s: (s["currentTime"] >= killed_at + 8 and s["pathway"] != first) or s["fatal"],
            timeout_s=40,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "failover.png"))
        assert state["fatal"] is None, state
        assert state["pathway"] != first and first in state["pathways"], state
        assert state["stalls"] <= 1, state  # at most a short stall
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()


async def test_the_dashboard_stays_readable_with_50_appliances(tmp_path: Path, browser) -> None:  # type: ignore[no-untyped-def]
    from steering.server import create_app as create_steering
    from streamcdn import service
    from streamcdn.config import load
    from streamcdn.tokens import SIGNATURE_HEADER, sign_body

    sites = "".join(f'[[sites]]\nname = "site-{s}"\ncidrs = ["10.{s}.0.0/16"]\n' for s in range(5))
    appliances = "".join(
        f'[[appliances]]\nid = "oca-{i:02}"\nurl = "http://127.0.0.1:{20000 + i}"\n'
        f'site = "site-{i % 5}"\ncapacity_mbps = 10000\n'
        for i in range(50)
    )
    (tmp_path / "d.toml").write_text(
        '[keys]\nsigning = ["k1:dashboard-test-key-0123456789"]\n[origin]\nurl = "http://127.0.0.1:9"\n'
        "[steering]\nheartbeat_interval_s = 30.0\n" + sites + appliances
    )
    deployment = load(tmp_path / "d.toml")
    steering = await service.start(
        create_steering(deployment), host="127.0.0.1", port=0, access_log=False
    )
    try:
        async with ClientSession() as s:
            for i in range(50):
                body = json.dumps({"id": f"oca-{i:02}", "sent_at": time.time(), "status": "ok",
                                   "egress_bps": i * 1e8, "connections": i}).encode()  # fmt: skip
                headers = {SIGNATURE_HEADER: sign_body(body, deployment.signing_keys[0])}
                async with s.post(steering.make_url("/heartbeat"), data=body, headers=headers) as r:
                    assert r.status == 200
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        await page.goto(steering.make_url("/dashboard"))
        deadline = time.monotonic() + 10
        while await page.locator("article.card.up").count() < 50:
            assert time.monotonic() < deadline, "not every appliance shows up"
            await asyncio.sleep(0.2)
        assert await page.locator("section.site").count() == 5
        # No sideways scrolling, and every card keeps its figures on screen.
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-50.png"), full_page=True)
    finally:
        await steering.close()
