"""Hostile requests against a real appliance (its front protocol first, then aiohttp).

Hypothesis writes raw HTTP/1.1 request heads: methods, targets full of traversal,
percent-encoding and odd bytes, tokens, Range and validator headers, junk header lines.
Whatever comes in, the appliance answers with a well-formed status below 500 (or closes
a connection it cannot parse), never serves a byte from outside a title's directory,
and keeps serving the next, well-formed request.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from origin.store import TitleStore
from tests.conftest import TITLE, free_port, streamcdn_cmd, wait_for_port

SEGMENT = "360p/seg_00000.m4s"
SECRET = b"streamcdn-fuzz-canary"  # planted outside the title: must never be served


@pytest.fixture(scope="module")
def appliance(store: TitleStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    work = tmp_path_factory.mktemp("fuzz")
    (store.root.parent / "canary.txt").write_bytes(SECRET)
    procs = []
    try:
        origin_port, appliance_port = free_port(), free_port()
        procs.append(subprocess.Popen(
            streamcdn_cmd("serve", "origin", "--store", str(store.root), "--port",
                          str(origin_port), "--no-access-log"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_for_port(origin_port, procs[-1])  # type: ignore[arg-type]
        procs.append(subprocess.Popen(
            streamcdn_cmd("serve", "appliance", "--id", "fz", "--cache-dir", str(work / "cache"),
                          "--upstream", f"http://127.0.0.1:{origin_port}", "--open",
                          "--key", "k1:fuzz-signing-key-0123456789", "--port",
                          str(appliance_port), "--no-access-log"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        wait_for_port(appliance_port, procs[-1])  # type: ignore[arg-type]
        status, _ = exchange(appliance_port, request("GET", f"/titles/{TITLE}/{SEGMENT}"))
        assert status == 200  # filled once: later requests for it are hits on the front path
        yield appliance_port
    finally:
        for p in procs:
            p.terminate()
            p.wait(15)


def request(method: str, target: str, headers: list[tuple[str, str]] = ()) -> bytes:  # type: ignore[assignment]
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


def exchange(port: int, raw: bytes) -> tuple[int | None, bytes]:
    """Send one raw request; the status (None if the server closed without answering) and
    the answer's bytes: its head and the body its Content-Length announces."""
    head_only = raw.startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        if b"\r\n\r\n" not in data:
            assert not data, data[:200]  # a partial head would be a broken answer
            return None, data
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        first = lines[0].split()
        assert first[0].startswith(b"HTTP/1.") and len(first) >= 2, head[:200]
        status = int(first[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if head_only or status in (204, 304) or status < 200:
            length = 0
        while len(body) < length:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
    return status, head + b"\r\n\r\n" + body


PIECES = st.sampled_from(
    ["..", "%2e%2e", "%2E%2e", "%2f", "%5c", "\\", ".", "", "titles", TITLE, "360p",
     "seg_00000.m4s", "master.m3u8", "canary.txt", "%00", "~", "s", "AAAA", "%", "%zz",
     "..%2f..%2f", "%252e%252e", "manifest.json", "\u00e9", "?x=1", "#f", ";", "//"]
)  # fmt: skip
TARGETS = st.one_of(
    st.lists(PIECES, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255), max_size=80).map(
        lambda t: "/" + t
    ),
    st.just(f"/titles/{TITLE}/{SEGMENT}"),
)
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["Range", "If-None-Match", "If-Range", "Connection", "Authorization",
                         "Content-Length", "Transfer-Encoding", "X-Junk", "Expect", "Host"]),
        st.one_of(
            st.sampled_from(["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=9-2", "bytes=a-b",
                             "bytes=0-1,2-3", "bytes=99999999999999999999-", "*", '"x"',
                             "close", "keep-alive", "Bearer AAAA", "chunked", "0", "-1",
                             "100-continue", "upgrade"]),
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        ),
    ),
    max_size=4,
)  # fmt: skip


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "GE T", "get"]),
    target=TARGETS,
    headers=HEADERS,
)
def test_hostile_requests_get_a_clean_answer_and_nothing_outside_a_title(
    appliance: int, method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    status, data = exchange(appliance, request(method, target, headers))
    assert status is None or 100 <= status < 500, data[:300]
    assert SECRET not in data
    assert b"Traceback" not in data
    # And the appliance still serves a plain request afterwards.
    ok, _ = exchange(appliance, request("HEAD", f"/titles/{TITLE}/{SEGMENT}"))
    assert ok == 200


def test_the_canary_sits_where_a_traversal_would_find_it(store: TitleStore) -> None:
    assert (Path(store.root).parent / "canary.txt").read_bytes() == SECRET
