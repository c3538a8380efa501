"""Hostile heartbeats and /steer queries against a real steering service, in-process.

Heartbeats are built field by field (the appliance id, sent_at, status, reasons and
figures, each plausible or hostile) and then signed with the right key, the wrong
appliance's key, a forged key, a garbled header or not at all. Every answer is below
500. The fleet view (/fleet, rebuilt from the store after each case) changes only when
a heartbeat was signed with its appliance's key, carried a fresh sent_at and was stored;
whatever such a heartbeat said, /fleet and /steer keep answering with strict JSON.
/steer and the content-steering route get hostile query strings: 4xx, never 5xx.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from steering import server as steering_server
from streamcdn import service
from streamcdn.config import load
from streamcdn.tokens import SIGNATURE_HEADER, SigningKey, sign_body
from tests.faults.fuzzing import LoopThread, fuzz
from tests.steering.conftest import A2_KEY, DEPLOYMENT, SIGNING

FORGED = SigningKey.parse("k1:not-the-real-secret-0000000")
# Nothing goes down by itself during the run: the view changes only by heartbeats.
QUIET = DEPLOYMENT.replace("heartbeat_interval_s = 0.1", "heartbeat_interval_s = 60")
KEYS = {"a1": SIGNING, "a2": A2_KEY, "ix1": SIGNING}


class SteeringClient:
    def __init__(self, loop: LoopThread, running: service.Running) -> None:
        self.loop = loop
        self.port = running.port
        self.steering = running.app[steering_server.STEERING]

    def send(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in {**(headers or {}), "Content-Length": str(len(body or b""))}.items():
                conn.putheader(k, v)
            conn.endheaders(body)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def fleet(self) -> list[dict[str, Any]]:
        """The fleet view as /fleet gives it right now (rebuilt first), strict JSON."""
        self.loop.run(self.steering.refresh())
        status, data = self.send("GET", "/fleet")
        assert status == 200, data[:300]
        appliances = strict_json(data)["appliances"]
        for a in appliances:
            a.pop("seen_ago_s")  # moves with the clock
        return appliances  # type: ignore[no-any-return]


def strict_json(data: bytes) -> Any:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant} in {data[:200]!r}")

    return json.loads(data, parse_constant=refuse)


@pytest.fixture(scope="module")
def steering(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SteeringClient]:
    path = tmp_path_factory.mktemp("fuzz-steering") / "deploy.toml"
    path.write_text(QUIET)
    loop = LoopThread()
    running = loop.run(
        service.start(
            steering_server.create_app(load(path)), host="127.0.0.1", port=0, access_log=False
        )
    )
    client = SteeringClient(loop, running)
    try:
        for appliance, key in KEYS.items():  # a view with every appliance up
            body = json.dumps({"id": appliance, "status": "ok", "sent_at": time.time()}).encode()
            status, _ = client.send(
                "POST", "/heartbeat", body, {SIGNATURE_HEADER: sign_body(body, key)}
            )
            assert status == 200
        yield client
    finally:
        loop.run(running.close())
        loop.close()


SENT_NOW = "__SENT_NOW__"  # the time the heartbeat is sent, a little later each case
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "9" * 5000, "9" * 400, "[" * 3000 + "]" * 3000]).map(
        lambda t: ("raw", t)
    ),
)  # fmt: skip
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "id": st.one_of(st.sampled_from(["a1", "a2", "ix1", "nobody", "", "A1", "a1 "]), HOSTILE),
    "sent_at": st.one_of(
        st.just(SENT_NOW),
        st.sampled_from([0, -1, 1e18, "now", True]),
        st.floats(min_value=-60, max_value=60).map(lambda d: ("offset", d)),
        HOSTILE,
    ),
    "status": st.one_of(st.sampled_from(["ok", "degraded", "draining", "down", "up"]), HOSTILE),
    "reasons": st.one_of(st.lists(st.text(max_size=20), max_size=3), HOSTILE),
    "egress_bps": st.one_of(st.sampled_from([0, 1e9, 1e308, -5, 2**70]), HOSTILE),
    "limiter": st.one_of(
        st.fixed_dictionaries({"shedding": st.one_of(st.booleans(), HOSTILE)}), HOSTILE
    ),
    "hit_ratio": HOSTILE,
    "tiers": HOSTILE,
    "connections": HOSTILE,
}


def encode_value(value: Any) -> str:
    if value == SENT_NOW:
        return repr(time.time())
    if isinstance(value, tuple) and value[0] == "offset":
        return repr(time.time() + value[1])
    if isinstance(value, tuple):
        return str(value[1])
    return json.dumps(value)


@fuzz(1200)
@example(  # was: OverflowError in /fleet (500) and in the refresh loop, which then died
    fields={"id": "a1", "sent_at": SENT_NOW, "egress_bps": ("raw", "9" * 400)},
    signer="right",
    prefix="",
)
@example(  # was: taken, and /fleet then said NaN, which no browser's JSON.parse reads
    fields={"id": "a1", "sent_at": SENT_NOW, "egress_bps": ("raw", "NaN")},
    signer="right",
    prefix="",
)
@given(
    fields=st.lists(st.sampled_from(list(FIELDS)), unique=True).flatmap(
        lambda names: st.fixed_dictionaries({n: FIELDS[n] for n in names})
    ),
    signer=st.sampled_from(["right", "a1", "a2", "forged", "none", "garbled", "no-key-id"]),
    prefix=st.sampled_from(["", " ", "\ufeff", "[", "x"]),
)
def test_hostile_heartbeats_get_below_500_and_change_the_fleet_only_when_signed_and_valid(
    steering: SteeringClient, fields: dict[str, Any], signer: str, prefix: str
) -> None:
    text = "{" + ",".join(f"{json.dumps(k)}:{encode_value(v)}" for k, v in fields.items()) + "}"
    body = (prefix + text).encode("utf-8", "surrogatepass")
    appliance = fields.get("id")
    own = KEYS.get(appliance) if isinstance(appliance, str) else None
    key = {"right": own, "a1": SIGNING, "a2": A2_KEY, "forged": FORGED}.get(signer)
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers[SIGNATURE_HEADER] = sign_body(body, key)
    elif signer == "garbled":
        headers[SIGNATURE_HEADER] = "k1:" + "A" * 43
    elif signer == "no-key-id":
        headers[SIGNATURE_HEADER] = sign_body(body, SIGNING).partition(":")[2]
    before = steering.fleet()
    status, data = steering.send("POST", "/heartbeat", body, headers)
    assert 400 <= status < 500 or status == 200, data[:300]
    assert b"Traceback" not in data
    after = steering.fleet()
    signed_right = key is not None and key is own
    if status == 200:
        assert signed_right, "a heartbeat not signed with its appliance's key was taken"
        if not strict_json(data)["stored"]:
            assert after == before
    else:
        assert after == before
    # Whatever a signed heartbeat said, ranking still answers.
    status, data = steering.send("GET", "/steer?title=tiny&client_ip=10.1.2.3")
    assert status == 200 and strict_json(data)["site"] == "isp-a", data[:300]


QUERY_VALUES = st.one_of(
    st.sampled_from(
        ["tiny", "", "..", "a" * 300, "10.1.2.3", "::1", "fd00:a::1", "192.0.2.7", "999.1.1.1",
         "1.2.3.4/8", "%00", "0", "1", "20", "21", "-1", "99999999999999999999", "\u0661",
         "a1,a2", "a1,,a1", "ix1", "nobody", "1e3", "NaN", "::ffff:10.0.0.1", "fe80::1%eth0"]
    ),
    st.text(max_size=30),
)  # fmt: skip
QUERY_NAMES = st.sampled_from(
    ["title", "client_ip", "n", "pathways", "_HLS_pathway", "_HLS_throughput", "x", ""]
)


@fuzz(800)
@given(
    route=st.sampled_from(["/steer", "/content-steering/s1.json", "/content-steering/..%2f.json",
                           "/content-steering/" + "s" * 200 + ".json", "/fleet"]),
    params=st.lists(st.tuples(QUERY_NAMES, QUERY_VALUES), max_size=5),
    raw=st.one_of(st.just(""), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30)),
)  # fmt: skip
def test_hostile_steer_queries_get_a_json_4xx_never_a_5xx(
    steering: SteeringClient, route: str, params: list[tuple[str, str]], raw: str
) -> None:
    from urllib.parse import urlencode

    query = urlencode(params) + ("&" + raw.replace("#", "%23") if raw else "")
    status, data = steering.send("GET", f"{route}?{query}")
    assert status < 500 or status == 503, data[:300]  # 503: no healthy pathway, by design
    assert b"Traceback" not in data
    body = strict_json(data)
    if status >= 400:
        assert body["status"] == status and isinstance(body["error"], str)
