"""Deciding how to answer a GET or HEAD for a static object: 200, 206, 304 or 416.

Pure: takes the request's headers, the object's size and ETag, and returns a decision;
the servers (origin, appliance) act on it. Only single ranges are served: RFC 9110
14.2 lets a server ignore a Range header, and HLS players never send multi-range
requests, so a multi-range request gets the whole object with 200. A malformed
``bytes=`` range gets 416, as RFC 9110 14.2 allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# ASCII digits only, and HTTP's blanks (space, tab) only: "\d" and str.strip() also take
# Unicode digits and spaces, which the appliance's fast path (latin-1) and aiohttp (UTF-8)
# decode differently, so a hit and a miss of one request got different answers.
_SINGLE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_MULTI_PART = re.compile(r"[0-9]{1,18}-[0-9]{0,18}|-[0-9]{1,18}")
MAX_DIGITS = 18  # larger numbers are nonsense, and int() on huge strings is slow
OWS = " \t"


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    def content_range(self, size: int) -> str:
        return f"bytes {self.start}-{self.end}/{size}"


@dataclass(frozen=True)
class Decision:
    status: int  # 200, 206, 304 or 416
    range: ByteRange | None = None  # set for 206

    def headers(self, size: int) -> dict[str, str]:
        if self.status == 206 and self.range is not None:
            return {"Content-Range": self.range.content_range(size)}
        if self.status == 416:
            return {"Content-Range": f"bytes */{size}"}  # RFC 9110 15.5.17
        return {}


class _Unsatisfiable(Exception):
    pass


def parse_range(value: str, size: int) -> ByteRange | None:
    """One range from a Range header value; None if the header is to be ignored.

    Raises _Unsatisfiable for a byte range that selects no byte, and for a malformed
    ``bytes=`` value, which RFC 9110 14.2 lets a server reject rather than ignore:
    answering 416 tells a buggy client its request is wrong instead of sending it
    the whole object. Other units and lists of several ranges are ignored (200).
    """
    spec = value.replace(" ", "").replace("\t", "")
    unit, sep, ranges = spec.partition("=")
    if unit.lower() != "bytes" or not sep:
        return None  # another unit: ignore
    m = _SINGLE_RANGE.fullmatch(f"bytes={ranges}")
    if not m:
        if "," in ranges and all(_MULTI_PART.fullmatch(r) for r in ranges.split(",")):
            return None  # several well-formed ranges: served whole, as allowed
        raise _Unsatisfiable
    first, last = m.groups()
    if len(first) > MAX_DIGITS or len(last) > MAX_DIGITS or (not first and not last):
        raise _Unsatisfiable
    if not first:  # suffix range: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _Unsatisfiable
        return ByteRange(max(0, size - n), size - 1)
    start = int(first)
    if (last and int(last) < start) or start >= size:
        raise _Unsatisfiable
    end = min(int(last), size - 1) if last else size - 1
    return ByteRange(start, end)


def _etag_matches(header: str, etag: str) -> bool:
    """If-None-Match uses weak comparison (RFC 9110 13.1.2)."""
    if header.strip(OWS) == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip(OWS).removeprefix("W/") == opaque for tag in header.split(","))


def decide(headers: Mapping[str, str], size: int, etag: str) -> Decision:
    """The answer to a GET/HEAD of an object of ``size`` bytes with strong ``etag``."""
    inm = headers.get("If-None-Match")
    if inm is not None and _etag_matches(inm, etag):
        return Decision(304)  # RFC 9110 13.2.2: If-None-Match before Range
    value = headers.get("Range")
    if value is None:
        return Decision(200)
    if_range = headers.get("If-Range")
    if if_range is not None and if_range.strip(OWS) != etag:
        return Decision(200)  # RFC 9110 13.1.5: strong comparison; a date never matches
    try:
        rng = parse_range(value, size)
    except _Unsatisfiable:
        return Decision(416)
    if rng is None:
        return Decision(200)
    return Decision(206, rng)
