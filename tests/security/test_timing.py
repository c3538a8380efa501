"""Every secret a request presents is checked with hmac.compare_digest (constant time)."""

from __future__ import annotations

import hmac
import time

import pytest
from aiohttp import ClientSession

from streamcdn.tokens import SIGNATURE_HEADER, SigningKey, sign_body
from tests.appliance.conftest import SEGMENT, MakeAppliance, signed, url_of
from tests.conftest import TITLE
from tests.control.conftest import Stack, call, sign_up_and_login

ADMIN = "security-admin-key-0123456789"
WRONG = SigningKey.parse("k1:a-wrong-guess-of-the-secret")


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every pair hmac.compare_digest saw, as bytes."""
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):  # type: ignore[no-untyped-def]
        seen.append(tuple(x.encode() if isinstance(x, str) else bytes(x) for x in (a, b)))  # type: ignore[arg-type]
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    return seen


def saw(compared: list[tuple[bytes, bytes]], given: bytes) -> bool:
    return any(given in pair for pair in compared)


async def test_url_tokens_and_admin_keys_are_compared_in_constant_time(
    make_appliance: MakeAppliance, compared: list[tuple[bytes, bytes]]
) -> None:
    appliance = await make_appliance(admin_key=ADMIN, previous_admin_keys=(ADMIN[::-1],))
    forged = signed(TITLE, SEGMENT, key=WRONG)
    async with ClientSession() as s:
        for _ in range(2):  # a miss, then (the object cached by a good request) the fast path
            async with s.get(url_of(appliance) + forged) as r:
                assert r.status == 403
            mac = _token_mac(forged)
            assert saw(compared, mac.encode()), "a token's MAC was compared some other way"
            compared.clear()
            async with s.get(url_of(appliance) + signed(TITLE, SEGMENT)) as r:
                assert r.status == 200
        guess = b"a-guess-at-the-admin-key-000"
        async with s.get(
            url_of(appliance) + "/admin/cache",
            headers={"Authorization": f"Bearer {guess.decode()}"},
        ) as r:
            assert r.status == 401
        # Compared with the current key and the previous one, each in constant time.
        assert [p for p in compared if guess in p] == [
            (guess, ADMIN.encode()),
            (guess, ADMIN[::-1].encode()),
        ]


def _token_mac(path: str) -> str:
    import base64

    token = path.split("/s/", 1)[1].split("/", 1)[0]
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split("~")[5]


async def test_heartbeat_signatures_and_passwords_are_compared_in_constant_time(
    stack: Stack, compared: list[tuple[bytes, bytes]]
) -> None:
    body = b'{"id": "a1", "status": "ok", "sent_at": %f}' % time.time()
    header = sign_body(body, WRONG)
    async with (
        ClientSession() as s,
        s.post(f"{stack.steering}/heartbeat", data=body, headers={SIGNATURE_HEADER: header}) as r,
    ):
        assert r.status == 401
    assert saw(compared, header.encode())
    await sign_up_and_login(stack.control, "timing@example.com")
    compared.clear()
    status, _, _ = await call(
        "POST",
        f"{stack.control}/sessions",
        {"email": "timing@example.com", "password": "wrong guess 1"},
    )
    # The scrypt hashes, compared in constant time (the appliances' heartbeats aside).
    assert status == 401 and len([p for p in compared if not p[0].startswith(b"k1:")]) == 1
