"""Signed tokens: every way a token can be wrong is refused, and rotation works."""

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamcdn.tokens import (
    Grant,
    SigningKey,
    TokenError,
    key_ring,
    sign,
    title_prefix,
    verify,
)

OLD = SigningKey.parse("old:0123456789abcdef-old")
NEW = SigningKey.parse("new:0123456789abcdef-new")
NOW = 1_800_000_000
PATH = "titles/calm/720p/seg_00001.m4s"


def check(token: str, path: str = PATH, *, keys=(OLD, NEW), now=NOW, ip="127.0.0.1"):
    return verify(token, path, keys=key_ring(list(keys)), now=now, client_ip=ip)


def test_a_good_token_covers_its_titles_files_until_it_expires() -> None:
    token = sign(title_prefix("calm"), NEW, expires=NOW + 60)
    assert check(token) == Grant("titles/calm/", NOW + 60, "new", "")
    assert isinstance(check(token, "titles/calm/master.m3u8"), Grant)
    assert check(token, now=NOW + 61) is TokenError.EXPIRED


def test_the_token_is_path_safe() -> None:
    token = sign(title_prefix("calm"), NEW, expires=NOW + 60, cidr="10.0.0.0/8")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_other_titles_are_refused_even_with_a_shared_prefix() -> None:
    token = sign(title_prefix("calm"), NEW, expires=NOW + 60)
    assert check(token, "titles/calmer/720p/seg_00001.m4s") is TokenError.WRONG_PATH
    assert check(token, "titles/life/master.m3u8") is TokenError.WRONG_PATH


def test_rotation_accepts_old_and_new_keys_then_drops_the_old() -> None:
    old_token = sign(title_prefix("calm"), OLD, expires=NOW + 60)
    assert isinstance(check(old_token), Grant)
    assert check(old_token, keys=(NEW,)) is TokenError.UNKNOWN_KEY


def test_forged_tokens_are_refused() -> None:
    token = sign(title_prefix("calm"), NEW, expires=NOW + 60)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    # Move the expiry a year on, or widen the prefix to every title, keeping the old MAC.
    for forged_raw in (
        raw.replace(str(NOW + 60), str(NOW + 31_536_000)),
        raw.replace("titles/calm/", "titles/"),
    ):
        forged = base64.urlsafe_b64encode(forged_raw.encode()).rstrip(b"=").decode()
        assert check(forged) is TokenError.BAD_SIGNATURE
    attacker = SigningKey.parse("new:attacker-chosen-secret")
    assert check(sign(title_prefix("calm"), attacker, expires=NOW + 60)) is TokenError.BAD_SIGNATURE


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "x",
        "!!!!",
        "a" * 2000,
        "djF-MX4yfjN-NH41fjY",
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
    ],
)
def test_garbage_is_malformed(junk: str) -> None:
    assert check(junk) is TokenError.MALFORMED


def test_client_cidr_binds_the_token_to_a_network() -> None:
    token = sign(title_prefix("calm"), NEW, expires=NOW + 60, cidr="127.0.1.0/24")
    assert isinstance(check(token, ip="127.0.1.9"), Grant)
    assert check(token, ip="127.0.0.9") is TokenError.WRONG_CLIENT
    assert check(token, ip="::1") is TokenError.WRONG_CLIENT
    assert check(token, ip=None) is TokenError.WRONG_CLIENT
    v6 = sign(title_prefix("calm"), NEW, expires=NOW + 60, cidr="2001:db8::/32")
    assert isinstance(check(v6, ip="2001:db8::7"), Grant)


def test_keys_parse_with_or_without_an_id() -> None:
    assert SigningKey.parse("k1:0123456789abcdef").key_id == "k1"
    bare = SigningKey.parse("0123456789abcdef")
    assert bare.key_id == SigningKey.parse("0123456789abcdef").key_id  # stable, derived
    with pytest.raises(ValueError, match="at least 16"):
        SigningKey.parse("short")
    with pytest.raises(ValueError, match="key id"):
        SigningKey.parse("bad id!:0123456789abcdef")
    with pytest.raises(ValueError, match="share the key id"):
        key_ring([SigningKey.parse("k:0123456789abcdef"), SigningKey.parse("k:fedcba9876543210")])


@given(st.text(max_size=300))
def test_no_string_crashes_verify(token: str) -> None:
    assert isinstance(check(token), TokenError | Grant)


@given(
    st.integers(min_value=0, max_value=10**12),
    st.sampled_from(["old", "new"]),
    st.lists(st.text(max_size=40).filter(lambda s: "~" not in s), min_size=3, max_size=3),
)
def test_no_forged_fields_crash_verify(expires: int, key_id: str, rest: list[str]) -> None:
    """Tokens a forger builds field by field (the version, an expiry, a known key id, and
    any text in the CIDR, the prefix and the MAC, UTF-8 beyond ASCII included),
    base64url-encoded as the real ones are: refused, never an exception. A MAC with an
    "é" made hmac.compare_digest raise TypeError (a 500 on an appliance)."""
    fields = ["v1", str(expires), key_id, *rest]
    forged = base64.urlsafe_b64encode("~".join(fields).encode()).decode().rstrip("=")
    assert isinstance(check(forged), TokenError)


def test_signed_bodies_prove_their_sender() -> None:
    from streamcdn.tokens import sign_body, verify_body

    body = b'{"id": "a1", "sent_at": 1}'
    header = sign_body(body, NEW)
    ring = key_ring([OLD, NEW])
    assert verify_body(body, header, ring) == NEW
    assert verify_body(body + b" ", header, ring) is None  # tampered
    assert (
        verify_body(body, sign_body(body, SigningKey.parse("new:someone-elses-key")), ring) is None
    )
    assert verify_body(body, header, key_ring([OLD])) is None  # rotated out
    for junk in ("", "new", "new:", ":" * 5000, "zz:abc", "new:é", "new:\udcc3\udca9"):
        assert verify_body(body, junk, ring) is None  # non-ASCII: hmac.compare_digest raised
