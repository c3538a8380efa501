"""Signed URL tokens: who may fetch which title's files, until when, and from where.

A token rides in the path, ``/s/{token}/titles/{title}/...``, so the relative URLs
inside playlists keep it. It is the base64url encoding (no padding, so path-safe)
of ``v1~{expiry}~{key id}~{cidr}~{prefix}~{signature}``: the signature is
HMAC-SHA256 over the other fields with the key named by the key id, so several
keys can be valid at once while keys rotate. Pure: the caller passes ``now``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

VERSION = "v1"
SEP = "~"
MAX_TOKEN_LEN = 1024
MIN_KEY_LEN = 16
DEFAULT_TTL_S = 6 * 3600


class TokenError(enum.Enum):
    MALFORMED = "malformed token"
    UNKNOWN_KEY = "unknown key id"
    BAD_SIGNATURE = "bad signature"
    EXPIRED = "token expired"
    WRONG_PATH = "token does not cover this path"
    WRONG_CLIENT = "token is not valid from this address"


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    secret: bytes

    @classmethod
    def parse(cls, text: str) -> SigningKey:
        """``ID:SECRET`` or a bare ``SECRET`` (its id is then derived from it)."""
        key_id, sep, secret = text.partition(":")
        if not sep:
            key_id, secret = "", text
        if len(secret) < MIN_KEY_LEN:
            raise ValueError(f"signing key must be at least {MIN_KEY_LEN} characters")
        if not key_id:
            key_id = hashlib.sha256(secret.encode()).hexdigest()[:8]
        if not key_id.isalnum() or len(key_id) > 32:
            raise ValueError(f"key id {key_id!r}: use 1-32 letters and digits")
        return cls(key_id, secret.encode())


@dataclass(frozen=True)
class Grant:
    """What a valid token allows."""

    prefix: str
    expires: int
    key_id: str
    cidr: str


def title_prefix(title: str) -> str:
    return f"titles/{title}/"


def _mac(key: SigningKey, fields: list[str]) -> str:
    digest = hmac.new(key.secret, SEP.join(fields).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(prefix: str, key: SigningKey, *, expires: int, cidr: str = "") -> str:
    """A token for every path under ``prefix`` (which must end with '/') until ``expires``."""
    if not prefix.endswith("/") or SEP in prefix:
        raise ValueError(f"prefix {prefix!r} must end with '/' and not contain {SEP!r}")
    if cidr:
        cidr = str(ipaddress.ip_network(cidr, strict=False))
    fields = [VERSION, str(int(expires)), key.key_id, cidr, prefix]
    raw = SEP.join([*fields, _mac(key, fields)]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify(
    token: str,
    path: str,
    *,
    keys: Mapping[str, SigningKey],
    now: float,
    client_ip: str | None = None,
) -> Grant | TokenError:
    """Check ``token`` for the canonical ``path`` (``titles/{title}/...``) at time ``now``."""
    if not token or len(token) > MAX_TOKEN_LEN:
        return TokenError.MALFORMED
    try:
        # ASCII: every field a token is signed with is; and hmac.compare_digest raises
        # TypeError on str with any other character.
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return TokenError.MALFORMED
    parts = raw.split(SEP)
    if len(parts) != 6 or parts[0] != VERSION or not parts[1].isdigit():
        return TokenError.MALFORMED
    fields, mac = parts[:5], parts[5]
    _, expires, key_id, cidr, prefix = fields
    key = keys.get(key_id)
    if key is None:
        return TokenError.UNKNOWN_KEY
    if not hmac.compare_digest(_mac(key, fields), mac):
        return TokenError.BAD_SIGNATURE
    if int(expires) < now:
        return TokenError.EXPIRED
    if not prefix.endswith("/") or not path.startswith(prefix):
        return TokenError.WRONG_PATH
    if cidr:
        try:
            inside = client_ip is not None and ipaddress.ip_address(
                client_ip
            ) in ipaddress.ip_network(cidr)
        except ValueError:
            inside = False
        if not inside:
            return TokenError.WRONG_CLIENT
    return Grant(prefix, int(expires), key_id, cidr)


def key_ring(keys: list[SigningKey]) -> dict[str, SigningKey]:
    """Keys by id; two different secrets under one id is a configuration error."""
    ring: dict[str, SigningKey] = {}
    for k in keys:
        if k.key_id in ring and ring[k.key_id] != k:
            raise ValueError(f"two different signing keys share the key id {k.key_id!r}")
        ring[k.key_id] = k
    return ring


# -- signed request bodies (appliance heartbeats) -------------------------------------

SIGNATURE_HEADER = "X-Streamcdn-Signature"


def sign_body(body: bytes, key: SigningKey) -> str:
    """``<key id>:<base64url HMAC-SHA256 of body>``, for the SIGNATURE_HEADER."""
    mac = hmac.new(key.secret, body, hashlib.sha256).digest()
    return f"{key.key_id}:{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def verify_body(body: bytes, header: str, keys: Mapping[str, SigningKey]) -> SigningKey | None:
    """The key that signed ``body``, or None if the signature is missing, unknown or wrong.

    The body must carry its own timestamp and sender: this proves who wrote it, the
    receiver still refuses stale or replayed bodies.
    """
    key_id, sep, _ = header.partition(":")
    key = keys.get(key_id) if sep else None
    if key is None or len(header) > MAX_TOKEN_LEN or not header.isascii():
        return None  # (hmac.compare_digest raises TypeError on non-ASCII str)
    return key if hmac.compare_digest(sign_body(body, key), header) else None
