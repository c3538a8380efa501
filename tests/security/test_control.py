"""A viewer attacking the control plane: logins, sessions, other viewers' events, pages."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from aiohttp import ClientSession

from origin.store import TitleStore
from tests.conftest import TITLE
from tests.control.conftest import PASSWORD, Stack, call, sign_up_and_login, start_stack

XSS_NAME = "</title><script>alert('name')</script>"
XSS_TAG = '"><img src=x onerror=alert(1)>'


async def test_login_guessing_is_throttled_per_address_whatever_the_email_or_forwarded_for(
    stack: Stack,
) -> None:
    """5 wrong guesses from one address, each at another email and with a made-up
    X-Forwarded-For (believed only from configured proxies), then even a right password
    from that address waits."""
    c = stack.control
    await sign_up_and_login(c, "victim@example.com")
    async with ClientSession() as s:
        for i in range(5):
            body = {"email": f"guess{i}@example.com", "password": "hunter2 hunter2"}
            hdrs = {"X-Forwarded-For": f"203.0.113.{i}"}
            async with s.post(f"{c}/sessions", json=body, headers=hdrs) as r:
                assert r.status == 401
        body = {"email": "victim@example.com", "password": PASSWORD}
        async with s.post(f"{c}/sessions", json=body, headers={"X-Forwarded-For": "1.2.3.4"}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) > 0


async def test_an_account_is_reached_only_through_its_own_unguessable_bearer_token(
    stack: Stack,
) -> None:
    c = stack.control
    alice = await sign_up_and_login(c, "alice@example.com")
    bob = await sign_up_and_login(c, "bob@example.com")
    assert alice != bob and len(alice) >= 43 and len(bob) >= 43  # 32 random bytes each
    near = alice[:-1] + ("A" if alice[-1] != "A" else "B")
    for token in (near, alice.upper(), alice + "x", "", "null", "Bearer " + alice):
        assert (await call("POST", f"{c}/play/{TITLE}", token=token))[0] == 401, token
    status, play, _ = await call("POST", f"{c}/play/{TITLE}", token=alice)
    assert status == 200 and len(play["session"]) >= 24  # 144 random bits
    # No route lists accounts or sessions, and a near-miss session id finds nothing.
    for method, path in (("GET", "/accounts"), ("GET", "/sessions"), ("GET", "/events")):
        assert (await call(method, f"{c}{path}"))[0] in (404, 405), path
    near = play["session"][:-1] + ("A" if play["session"][-1] != "A" else "B")
    assert (await call("GET", f"{c}/sessions/{near}/master.m3u8"))[0] == 404


async def test_other_viewers_events_cannot_be_read(stack: Stack) -> None:
    """Events go in; only per-appliance aggregates come out (no sessions, titles, errors,
    addresses). A stated limit: posting needs no account, so made-up events can skew the
    summary (limited to 50 requests/s per address)."""
    c = stack.control
    now = time.time()
    secret_session = "private-session-4f1c9a"
    batch = [
        {"type": "start", "session": secret_session, "ts": now - 5, "appliance": "a1",
         "title": TITLE, "bitrate_kbps": 800},
        {"type": "error", "session": secret_session, "ts": now, "appliance": "a1",
         "error": "private-error-detail"},
    ]  # fmt: skip
    assert (await call("POST", f"{c}/events", batch))[0] == 202
    status, summary, _ = await call("GET", f"{c}/events/summary")
    text = json.dumps(summary)
    assert status == 200 and summary["appliances"]["a1"]["sessions"] >= 1
    for private in (secret_session, "private-error-detail", TITLE, "127.0.0.1"):
        assert private not in text


async def test_pages_escape_what_the_catalog_says_and_allow_no_inline_script(
    tmp_path: Path, store: TitleStore
) -> None:
    hostile = TitleStore(tmp_path / "store")
    shutil.copytree(store.root / TITLE, hostile.root / TITLE)
    manifest_path = hostile.root / TITLE / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(name=XSS_NAME, tags=[XSS_TAG])
    manifest_path.write_text(json.dumps(manifest))
    stack = await start_stack(tmp_path, hostile)
    try:
        pages: dict[str, str] = {}
        async with ClientSession() as s:
            for path in ("/", f"/watch/{TITLE}", "/watch/%3Cscript%3Ealert(3)%3C%2Fscript%3E"):
                async with s.get(f"{stack.control}{path}") as r:
                    pages[path] = page = await r.text()
                    csp = r.headers["Content-Security-Policy"]
                assert "<script>alert" not in page and "<img src=x" not in page, path
                assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
                assert "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
            assert "&lt;script&gt;alert(&#x27;name&#x27;)" in pages["/"]  # shown, as text
            assert "&quot;&gt;&lt;img src=x" in pages["/"]
            # The JSON API returns the text as data, with a CSP of its own and nosniff.
            async with s.get(f"{stack.control}/catalog/{TITLE}") as r:
                assert (await r.json())["name"] == XSS_NAME
                assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
                assert r.headers["X-Content-Type-Options"] == "nosniff"
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()
