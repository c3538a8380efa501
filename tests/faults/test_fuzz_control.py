"""Hostile JSON bodies on every POST route of a real control plane, in-process on loopback.

The whole stack runs (tests/control/conftest.py): origin, steering, two appliances and
control, with the rate limits and the login throttle lifted and scrypt made cheap, so
that every generated request reaches its handler. Bodies are structure-aware (the
route's own fields, each either plausible or hostile: wrong types, NaN, 1e999, a
5,000-digit integer, deep nesting, lone surrogates, unicode, 70 kB strings) or raw
bytes. Every answer is below 500; every 4xx is control's JSON error naming its status,
never a traceback; and control answers /health after each one.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from control import edge
from control.accounts import LoginThrottle, ScryptParams, hash_password
from control.server import CONTROL
from origin.store import TitleStore
from tests.conftest import TITLE
from tests.control.conftest import PASSWORD, start_stack
from tests.faults.fuzzing import LoopThread, fuzz

EMAIL = "fuzz@example.com"
NOW = "__NOW__"  # replaced by the server's current time as each request is sent


class Control:
    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 80
        self.token = token

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        """POST ``body`` and check the answer: below 500, a 4xx is a JSON error."""
        status, data = self.send("POST", path, body, headers or {})
        assert status < 500, data[:300]
        assert b"Traceback" not in data
        if status >= 400:
            error = json.loads(data)
            assert error["status"] == status and isinstance(error["error"], str), error
        assert self.send("GET", "/health", None, {})[0] == 200

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def control(store: TitleStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Control]:
    loop = LoopThread()
    stack = loop.run(start_stack(tmp_path_factory.mktemp("fuzz-control"), store))
    try:
        c = stack.running["control"].app[CONTROL]
        c.ip_limits = c.play_limits = c.signup_limits = edge.RateLimiter(1e9, 1e9)
        c.throttle = LoginThrottle(max_failures=10**9)
        # Every sign-up and log-in hashes; the production cost would make this a minute.
        cheap = ScryptParams(n=2, r=1, p=1)
        c.accounts.scrypt = cheap
        c.accounts._dummy_hash = hash_password("fuzz-dummy-password", cheap)
        client = Control(stack.control, "")
        body = json.dumps({"email": EMAIL, "password": PASSWORD}).encode()
        assert client.send("POST", "/accounts", body, {})[0] == 201
        status, data = client.send("POST", "/sessions", body, {})
        assert status == 200
        client.token = json.loads(data)["token"]
        yield client
    finally:
        for running in reversed(list(stack.running.values())):
            loop.run(running.close())
        loop.close()


# -- JSON text, built as text so it can hold what json.dumps refuses or cannot write ------

SPECIAL = st.sampled_from(
    ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 5000, "-0", "1.5e-400",
     "[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, '"\\ud800"', '"\\u0000"',
     '"\\u202e\\ufeff"', json.dumps("x" * 70_000), json.dumps("\U0001f600" * 300), "{}", "[]",
     '""', "true", "null", "9007199254740993", "-9223372036854775809"]
)  # fmt: skip
SCALAR = st.one_of(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40)).map(
        json.dumps
    ),
    SPECIAL,
)


def obj_text(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"


HOSTILE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(st.text(max_size=10), inner), max_size=4).map(obj_text),
    ),
    max_leaves=8,
)


def body_of(fields: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[str]:
    """An object with some of the route's fields (plausible or hostile values) and extras."""
    names = st.lists(
        st.sampled_from([*fields, "", "extra", "__proto__", "Email"]), unique=True, max_size=8
    )
    return names.flatmap(
        lambda ns: st.tuples(
            *(st.tuples(st.just(n), st.one_of(fields.get(n, HOSTILE), HOSTILE)) for n in ns)
        )
    ).map(lambda pairs: obj_text(list(pairs)))


def plausible(*values: object) -> st.SearchStrategy[str]:
    return st.sampled_from([json.dumps(v) for v in values])


CREDENTIALS = body_of(
    {
        "email": st.one_of(
            st.emails().map(json.dumps),
            plausible(EMAIL, "FUZZ@example.com", " a@b.c ", "@", "a@", "\ud800@b.c"),
        ),
        "password": st.one_of(
            st.text(min_size=8, max_size=60).map(json.dumps), plausible(PASSWORD, "x" * 1025)
        ),
        "plan": plausible("basic", "premium", "root"),
    }
)
EVENT = body_of(
    {
        "type": plausible("start", "switch", "stall", "error", "end", "START", ""),
        "session": plausible("s1", "A" * 128, "A" * 129, "a b", "../x"),
        "ts": st.one_of(st.just(NOW), plausible(0, -1, 1e12)),
        "appliance": plausible("a1", "ix1", "x" * 65, "a/1"),
        "title": plausible(TITLE, "..", "a" * 300),
        "rendition": plausible("360p", "240p", ""),
        "from_rendition": plausible("240p"),
        "bitrate_kbps": plausible(800, 1e12, -5, 0),
        "throughput_kbps": plausible(5000, 1e300),
        "buffer_s": plausible(10.5, 1e9),
        "position_s": plausible(4, -0.0),
        "stall_s": plausible(0.5, 1e9),
        "error": plausible("HTTP 502", "\n", "x" * 2000, "\u0000"),
    }
)
EVENTS = st.one_of(
    st.lists(EVENT, max_size=5).map(lambda es: '{"events":[' + ",".join(es) + "]}"),
    st.lists(EVENT, max_size=5).map(lambda es: "[" + ",".join(es) + "]"),
    body_of({"events": st.lists(EVENT, max_size=3).map(lambda es: "[" + ",".join(es) + "]")}),
    HOSTILE,
)


def encode(text: str) -> bytes:
    # Lone surrogates from st.text() cannot be UTF-8; send what a broken client would.
    return text.replace(NOW, repr(time.time())).encode("utf-8", "surrogatepass")


# -- the routes ------------------------------------------------------------------------------


@fuzz(350)
@given(path=st.sampled_from(["/accounts", "/sessions"]), body=st.one_of(CREDENTIALS, HOSTILE))
@example(path="/accounts", body='{"email": "a@b.c", "password": "' + "\\ud800" * 8 + '"}')
def test_hostile_credentials_get_a_json_4xx_never_a_5xx(
    control: Control, path: str, body: str
) -> None:
    control.post(path, encode(body))


@fuzz(500)
@given(body=EVENTS)
def test_hostile_event_batches_get_a_json_4xx_never_a_5xx(control: Control, body: str) -> None:
    control.post("/events", encode(body))


@fuzz(250)
@given(
    title=st.one_of(
        st.sampled_from([TITLE, "nope", "..", "%2e%2e", "a" * 300, "ti ny", "\u00e9", "%00"]),
        st.text(max_size=20),
    ),
    auth=st.one_of(
        st.sampled_from(["{token}", "Bearer {token}", "Bearer {token}x", "Bearer ", "Basic eA==",
                         "", "Bearer " + "A" * 1000, "bearer {token}", "Bearer  {token} "]),
        st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    ),
    body=st.one_of(st.just(""), HOSTILE),
    forwarded=st.sampled_from(["", "1.2.3.4", "::1, 10.0.0.1", "not an ip", "999.1.1.1"]),
)  # fmt: skip
def test_hostile_play_requests_get_a_json_4xx_never_a_5xx(
    control: Control, title: str, auth: str, body: str, forwarded: str
) -> None:
    headers = {"Authorization": auth.replace("{token}", control.token)}
    if forwarded:
        headers["X-Forwarded-For"] = forwarded
    path = "/play/" + urllib.parse.quote(title, safe="%")
    control.post(path, encode(body), headers)


@fuzz(400)
@given(
    path=st.sampled_from(["/accounts", "/sessions", f"/play/{TITLE}", "/events"]),
    body=st.binary(max_size=2000),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "multipart/form-data; boundary=x",
         "application/x-www-form-urlencoded", "application/json; charset=utf-16"]
    ),
)  # fmt: skip
def test_raw_bytes_on_every_post_route_get_a_json_4xx_never_a_5xx(
    control: Control, path: str, body: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {control.token}"}
    control.post(path, body, headers)


def test_the_fuzzed_control_still_plays_and_counts_events(control: Control) -> None:
    headers = {"Authorization": f"Bearer {control.token}"}
    status, data = control.send("POST", f"/play/{TITLE}", b"", headers)
    assert status == 200, data[:300]
    event = {"type": "start", "session": "s1", "ts": time.time(), "title": TITLE}
    assert control.send("POST", "/events", json.dumps([event]).encode(), {})[0] == 202
