"""Hostile requests against a real origin server, in-process on loopback.

Hypothesis writes raw HTTP/1.1 request heads for the origin's routes: paths full of
traversal, percent-encoding and odd bytes, with Range and validator headers, real
ETags and junk. Three canaries sit where a traversal would look: beside the store,
in the store beside the title, and in the title's directory but not in its manifest.
None is ever served; every answer is a well-formed status below 500 (or a clean close),
a 206 carries exactly the bytes its Content-Range names, and the next request is served.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from origin.server import create_app
from origin.store import TitleStore
from streamcdn import service
from tests.conftest import TITLE
from tests.faults.fuzzing import LoopThread, fuzz
from tests.faults.test_fuzz_appliance import exchange, request

SEGMENT = "360p/seg_00000.m4s"
CANARIES = {
    "beside the store": b"streamcdn-origin-canary-outside-the-store",
    "in the store": b"streamcdn-origin-canary-in-the-store-root",
    "in the title": b"streamcdn-origin-canary-not-in-the-manifest",
}


@pytest.fixture(scope="module")
def origin(store: TitleStore, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """An origin over a copy of the test title, with the canaries planted around it."""
    root = tmp_path_factory.mktemp("fuzz-origin")
    shutil.copytree(store.root / TITLE, root / "store" / TITLE)
    (root / "canary.txt").write_bytes(CANARIES["beside the store"])
    (root / "store" / "canary.txt").write_bytes(CANARIES["in the store"])
    (root / "store" / TITLE / "canary.txt").write_bytes(CANARIES["in the title"])
    loop = LoopThread()
    running = loop.run(
        service.start(create_app(root / "store"), host="127.0.0.1", port=0, access_log=False)
    )
    try:
        yield running.port
    finally:
        loop.run(running.close())
        loop.close()


@pytest.fixture(scope="module")
def etag(origin: int) -> str:
    status, data = exchange(origin, request("HEAD", f"/titles/{TITLE}/{SEGMENT}"))
    assert status == 200
    return re.search(rb"(?im)^etag: *(\S+)", data).group(1).decode()  # type: ignore[union-attr]


PIECES = st.sampled_from(
    ["..", "%2e%2e", "%2E%2e", ".%2e", "%2f", "%5c", "\\", ".", "", "titles", TITLE, "360p",
     "240p", "audio", "seg_00000.m4s", "init.mp4", "index.m3u8", "master.m3u8", "poster.jpg",
     "manifest.json", "canary.txt", "store", "%00", "\x00", "~", "%", "%zz", "..%2f..%2f",
     "%252e%252e", "..;", "\u00e9", "%c0%ae%c0%ae", "?x=1", "#f", ";", "//", "health",
     "metrics", "/titles/tiny/../canary.txt", "%2e%2e%2fcanary.txt"]
)  # fmt: skip
TARGETS = st.one_of(
    st.lists(PIECES, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(PIECES, max_size=6).map(lambda parts: f"/titles/{TITLE}/" + "/".join(parts)),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=255), max_size=80).map(
        lambda t: "/" + t
    ),
    st.sampled_from(
        [f"/titles/{TITLE}/{SEGMENT}", f"/titles/{TITLE}/manifest.json", "/titles",
         f"/titles/{TITLE}/master.m3u8", f"/titles/{TITLE}/360p/index.m3u8"]
    ),
)  # fmt: skip
RANGES = st.one_of(
    st.sampled_from(
        ["bytes=0-0", "bytes=-1", "bytes=5-", "bytes=9-2", "bytes=a-b", "bytes=0-1,2-3",
         "bytes=99999999999999999999-", "bytes=-0", "bytes=-99999999999999999999", "bytes=",
         "bytes=0-", "bytes= 0-1", "items=0-1", "bytes=0--1", "bytes=--1", "bytes=1-1-1",
         "bytes=0-18446744073709551616", "bytes=" + "9" * 5000 + "-", "bytes=\u0661-\u0662"]
    ),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(-10, 10**7), st.integers(-10, 10**7)),
)  # fmt: skip
VALUES = st.one_of(
    RANGES,
    st.sampled_from(
        ["*", '"x"', "W/\"x\"", "close", "keep-alive", "chunked", "0", "-1", "100-continue",
         "gzip, br", "Thu, 01 Jan 1970 00:00:00 GMT", "not a date", '"a", "b"', ",", ""]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)  # fmt: skip
HEADER_NAMES = st.sampled_from(
    ["Range", "If-None-Match", "If-Range", "If-Match", "If-Modified-Since",
     "If-Unmodified-Since", "Accept-Encoding", "Connection", "Content-Length",
     "Transfer-Encoding", "Expect", "Host", "X-Junk"]
)  # fmt: skip
ETAG = "{etag}"  # replaced by the segment's real ETag, to reach 304 and If-Range


@fuzz(1500)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "GE T", "get"]),
    target=TARGETS,
    headers=st.lists(
        st.tuples(HEADER_NAMES, st.one_of(VALUES, st.sampled_from([ETAG, f"W/{ETAG}"]))),
        max_size=4,
    ),
)
def test_hostile_origin_requests_get_below_500_and_never_a_canary(
    origin: int, etag: str, method: str, target: str, headers: list[tuple[str, str]]
) -> None:
    headers = [(k, v.replace(ETAG, etag)) for k, v in headers]
    status, data = exchange(origin, request(method, target, headers))
    assert status is None or 100 <= status < 500, data[:300]
    for where, canary in CANARIES.items():
        assert canary not in data, f"served the canary {where}"
    assert b"Traceback" not in data
    if status == 206:
        head, _, body = data.partition(b"\r\n\r\n")
        found = re.search(rb"(?im)^content-range: *bytes (\d+)-(\d+)/(\d+)", head)
        assert found, head
        first, last, total = map(int, found.groups())
        assert 0 <= first <= last < total
        assert method == "HEAD" or len(body) == last - first + 1
    ok, _ = exchange(origin, request("HEAD", f"/titles/{TITLE}/{SEGMENT}"))
    assert ok == 200


def test_the_canaries_sit_where_a_traversal_would_find_them(origin: int) -> None:
    for target in ("/titles/tiny/canary.txt", "/titles/canary.txt", "/canary.txt"):
        status, data = exchange(origin, request("GET", target))
        assert status == 404 and not any(c in data for c in CANARIES.values()), target


def test_store_copy_is_the_real_title(origin: int, title_dir: Path) -> None:
    status, data = exchange(origin, request("GET", f"/titles/{TITLE}/{SEGMENT}"))
    assert status == 200 and data.endswith((title_dir / SEGMENT).read_bytes())
