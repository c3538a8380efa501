"""A coverage-guided fuzzer (atheris, libFuzzer) for the appliance's own HTTP head parsing,
checked against aiohttp's parser, the one every request the fast path declines goes to.

The front (appliance/front.py) answers memory and disk hits without aiohttp: it parses
request heads itself (``parse_head``) and, past its loop-turn budget, refuses requests
from their request line alone (``refusable``). A head it reads differently from aiohttp
is a request smuggled past one of them, so for every input:

- what the fast path answers itself (``parse_head`` accepts it and its target is an
  object's) aiohttp accepts too, as the same method and target, with no body, the same
  keep-alive decision and the same Range, If-None-Match, If-Range and Authorization bytes,
  and those headers give the same answer (200, 206 and its range, 304, 416) decoded as
  the front decodes them (latin-1) as decoded by aiohttp (UTF-8, surrogateescape);
- what ``refusable`` refuses quickly (keeping the connection open, reading no body) has
  no body and no ``Connection: close`` however leniently it is read: lines split at any
  CR or LF, names stripped of blanks, so that no reader in front of the appliance (a
  proxy reusing its connection) can see a body in it that the appliance would then read
  as the next request. When aiohttp accepts it, aiohttp reads it as a GET or HEAD
  (whichever ``refusable`` said) with no body that keeps the connection open. (A head
  aiohttp would answer with 400 may get a 503 instead: documented in docs/appliance.md.)

Run by tests/faults/test_atheris.py:
``python -m tests.faults.atheris_front CORPUS_DIR -runs=N -seed=S -dict=FILE``.
"""

from __future__ import annotations

import asyncio
import re
import sys

import atheris

with atheris.instrument_imports():
    from appliance import front
    from streamcdn.byteserving import decide

# The reference: aiohttp's parser (the one its server uses), imported after the front.
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import HttpRequestParser, RawRequestMessage
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EmptyStreamReader

LOOP = asyncio.new_event_loop()
PROTOCOL = BaseProtocol(LOOP)
BODY_HEADERS = ("Content-Length", "Transfer-Encoding")
SIZE, ETAG = 2_000_000, '"3f2a-1c"'  # an object the decisions below are taken for
LENIENT_VETO = {b"content-length", b"transfer-encoding", b"expect", b"upgrade"}


def aiohttp_reading(head: bytes) -> tuple[RawRequestMessage, bool] | None:
    """The request aiohttp's server reads from ``head``, and whether it would go on to
    read a body after it; None: aiohttp rejects it (a 400)."""
    parser = HttpRequestParser(
        PROTOCOL,
        LOOP,
        2**16,
        max_line_size=front.MAX_HEAD_BYTES,
        max_field_size=front.MAX_HEAD_BYTES,
    )
    try:
        messages, _, tail = parser.feed_data(head)
    except HttpProcessingError:
        return None
    except ValueError:
        return None  # e.g. a target yarl cannot take: aiohttp answers 400
    if len(messages) != 1:
        return None
    message, payload = messages[0]
    has_body = (
        not isinstance(payload, EmptyStreamReader)
        or tail != b""
        or message.chunked
        or message.upgrade
        or any(h in message.headers for h in BODY_HEADERS)
    )
    return message, has_body


def leniently_framed(head: bytes) -> bool:
    """Whether a lenient reader could see a body or a close in ``head``: lines split at
    any CR or LF, header names stripped of blanks, any case."""
    for line in re.split(rb"\r\n|\r|\n", head)[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            continue  # not a header in any reading
        name = name.strip(b" \t").lower()
        if name in LENIENT_VETO or (name == b"connection" and b"close" in value.lower()):
            return True
    return False


def aiohttp_raw(value: str | None) -> bytes | None:
    """A value aiohttp read, as the bytes on the wire (it decodes with surrogateescape)."""
    return None if value is None else value.encode("utf-8", "surrogateescape")


def front_raw(value: str | None) -> bytes | None:
    """A header value the front read, as the bytes on the wire (it decodes latin-1)."""
    return None if value is None else value.encode("latin-1")


def one_input(data: bytes) -> None:
    end = data.find(b"\r\n\r\n")
    if end < 0 or end > front.MAX_HEAD_BYTES:
        return  # the front hands such a buffer to aiohttp whole
    head = data[: end + 4]
    buf = bytearray(data)  # what the front holds; the checks must not depend on the rest
    request = front.parse_head(buf, end)
    quick = front.refusable(buf, end)
    reading = aiohttp_reading(head)

    if quick is not None:
        assert not leniently_framed(head), f"refused quickly, may have a body: {head!r}"
    if quick is not None and reading is not None:
        ref, has_body = reading
        _, is_head = quick
        assert ref.method == ("HEAD" if is_head else "GET"), f"method {ref.method}: {head!r}"
        assert not ref.should_close, f"refused quickly, kept open, aiohttp closes: {head!r}"
        assert not has_body, f"refused without reading its body: {head!r}"

    if request is None or front.object_target(request.target) is None:
        return  # aiohttp's to answer
    assert request.head_len == end + 4
    assert reading is not None, f"the fast path answers what aiohttp rejects: {head!r}"
    ref, has_body = reading
    assert ref.method == request.method, f"aiohttp reads {ref.method}: {head!r}"
    assert aiohttp_raw(ref.path) == request.target, f"aiohttp reads {ref.path!r}: {head!r}"
    assert ref.should_close == request.close, f"close: aiohttp {ref.should_close}: {head!r}"
    assert not has_body, f"the fast path answers, aiohttp reads a body: {head!r}"
    for name in front._READ.values():
        theirs, mine = aiohttp_raw(ref.headers.get(name)), front_raw(request.headers.get(name))
        assert theirs == mine, f"{name}: aiohttp {theirs!r}, front {mine!r}: {head!r}"
    theirs, mine = aiohttp_raw(ref.headers.get("Authorization")), front_raw(request.auth)
    assert theirs == mine, f"Authorization: aiohttp {theirs!r}, front {mine!r}: {head!r}"
    # The same answer (200, 206 and its range, 304, 416) on a hit, where the front decodes
    # the values (latin-1), as on a miss, where aiohttp does (UTF-8, surrogateescape).
    theirs_d, mine_d = decide(ref.headers, SIZE, ETAG), decide(request.headers, SIZE, ETAG)
    assert theirs_d == mine_d, f"aiohttp's path {theirs_d}, the fast path {mine_d}: {head!r}"


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
