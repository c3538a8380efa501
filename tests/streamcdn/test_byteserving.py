"""Range and validator decisions (RFC 9110 13-14), by example and by property."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamcdn.byteserving import ByteRange, decide

ETAG = '"abc"'


def test_no_headers_is_a_plain_200() -> None:
    assert decide({}, 100, ETAG).status == 200


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", ByteRange(0, 0)),
        ("bytes=90-", ByteRange(90, 99)),
        ("bytes=-10", ByteRange(90, 99)),
        ("bytes=-500", ByteRange(0, 99)),
        ("bytes=50-5000", ByteRange(50, 99)),
        (" bytes = 1 - 2 ", ByteRange(1, 2)),
        ("\tbytes=1-2\t", ByteRange(1, 2)),
    ],
)
def test_single_ranges(header: str, expected: ByteRange) -> None:
    d = decide({"Range": header}, 100, ETAG)
    assert (d.status, d.range) == (206, expected)
    assert d.headers(100) == {"Content-Range": f"bytes {expected.start}-{expected.end}/100"}


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    d = decide({"Range": header}, 100, ETAG)
    assert d.status == 416 and d.headers(100) == {"Content-Range": "bytes */100"}


def test_any_range_of_an_empty_object_is_unsatisfiable() -> None:
    assert decide({"Range": "bytes=0-"}, 0, ETAG).status == 416
    assert decide({"Range": "bytes=-5"}, 0, ETAG).status == 416


@pytest.mark.parametrize("header", ["bytes=0-1,3-4", "bytes=-5, 10-", "pages=0-1", "", "bytes"])
def test_other_units_and_multiple_ranges_are_ignored(header: str) -> None:
    assert decide({"Range": header}, 100, ETAG).status == 200


@pytest.mark.parametrize(
    "header",
    [
        "bytes=",
        "bytes=-",
        "bytes=5-1",
        "bytes=abc",
        "bytes=1-2-3",
        "bytes=0-1,x",
        "bytes=1" + "0" * 30,
        "bytes=0-\u0663",  # an Arabic-Indic 3: a digit to int(), not to HTTP
        "bytes=\xb2-",  # a superscript 2
    ],
)
def test_malformed_byte_ranges_are_rejected_with_416(header: str) -> None:
    d = decide({"Range": header}, 100, ETAG)
    assert d.status == 416 and d.headers(100) == {"Content-Range": "bytes */100"}


@pytest.mark.parametrize("blank", ["\xa0", "\x85", "\u2003"])
def test_only_http_blanks_are_blanks(blank: str) -> None:
    """Found by tests/faults/test_atheris.py: str.strip() took these for blanks, so an
    appliance answered a hit (headers decoded latin-1) and a miss (UTF-8) differently."""
    assert decide({"Range": f"{blank}bytes=0-1"}, 100, ETAG).status == 200  # another unit
    assert decide({"If-None-Match": f"{blank}{ETAG}"}, 100, ETAG).status == 200
    assert decide({"Range": "bytes=0-1", "If-Range": f"{ETAG}{blank}"}, 100, ETAG).status == 200


def test_validators() -> None:
    assert decide({"If-None-Match": ETAG}, 100, ETAG).status == 304
    assert decide({"If-None-Match": f'"x", W/{ETAG}'}, 100, ETAG).status == 304  # weak compare
    assert decide({"If-None-Match": "*"}, 100, ETAG).status == 304
    assert decide({"If-None-Match": '"x"', "Range": "bytes=0-1"}, 100, ETAG).status == 206
    assert decide({"If-Range": '"old"', "Range": "bytes=0-1"}, 100, ETAG).status == 200
    assert decide({"If-Range": f"W/{ETAG}", "Range": "bytes=0-1"}, 100, ETAG).status == 200
    assert decide({"If-Range": ETAG, "Range": "bytes=0-1"}, 100, ETAG).status == 206


@settings(max_examples=2000)
@given(
    header=st.one_of(
        st.text(max_size=40),
        st.builds(
            lambda a, b: f"bytes={a}-{b}",
            st.integers(0, 300) | st.just(""),
            st.integers(0, 300) | st.just(""),
        ),
    ),
    size=st.integers(0, 250),
)
def test_any_range_header_gives_a_sound_decision(header: str, size: int) -> None:
    d = decide({"Range": header}, size, ETAG)
    assert d.status in (200, 206, 416)
    if d.status == 206:
        assert d.range is not None
        assert 0 <= d.range.start <= d.range.end < size
        assert d.range.length >= 1
