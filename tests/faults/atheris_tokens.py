"""A coverage-guided fuzzer (atheris, libFuzzer) for signed URL tokens and heartbeat
signatures (streamcdn/tokens.py), the first thing an appliance and steering read from a
stranger. For every input:

- as a token's decoded fields (the input, base64url-encoded as a forger would send it)
  and as a token string itself, ``verify`` returns a grant or a TokenError, never raises;
  a grant only for a token that signing its own fields gives back exactly (a forger
  without the key cannot have made one);
- as a heartbeat's signature header, ``verify_body`` returns the signing key or None,
  never raises, and the key only for the signature of that body.

Run by tests/faults/test_atheris.py: ``python -m tests.faults.atheris_tokens --write-seeds
SEED_DIR``, then ``python -m tests.faults.atheris_tokens CORPUS_DIR SEED_DIR -runs=N``.
"""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from streamcdn.tokens import (
        Grant,
        SigningKey,
        TokenError,
        key_ring,
        sign,
        sign_body,
        verify,
        verify_body,
    )

KEY = SigningKey.parse("k1:atheris-signing-key-0123456789")
RING = key_ring([KEY])
PATH = "titles/t1/720p/seg_00001.m4s"
NOW = 1_800_000_000
BODY = b'{"id": "a1", "sent_at": 1800000000}'


def seeds() -> list[bytes]:
    """Decoded fields of genuine tokens and a genuine signature, for the corpus."""
    tokens = [
        sign("titles/t1/", KEY, expires=NOW + 3600),
        sign("titles/t1/", KEY, expires=NOW + 3600, cidr="127.0.0.0/8"),
    ]
    decoded = [base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)) for t in tokens]
    return [*decoded, sign_body(BODY, KEY).encode()]


def check_token(token: str) -> None:
    grant = verify(token, PATH, keys=RING, now=NOW, client_ip="127.0.0.1")
    assert isinstance(grant, Grant | TokenError), grant
    if isinstance(grant, Grant):
        again = sign(grant.prefix, KEY, expires=grant.expires, cidr=grant.cidr)
        assert again == token.rstrip("="), f"a grant for a token not signed by us: {token!r}"


def one_input(data: bytes) -> None:
    check_token(base64.urlsafe_b64encode(data).decode().rstrip("="))
    as_text = data.decode("utf-8", "surrogateescape")  # as aiohttp hands a path or header
    check_token(as_text)
    signer = verify_body(BODY, as_text, RING)
    assert signer is None or as_text == sign_body(BODY, KEY), as_text


def main() -> None:
    if sys.argv[1:2] == ["--write-seeds"]:
        seed_dir = Path(sys.argv[2])
        seed_dir.mkdir(parents=True, exist_ok=True)
        for i, seed in enumerate(seeds()):
            (seed_dir / f"{i:02d}").write_bytes(seed)
        return
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
