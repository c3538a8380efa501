"""URL tokens against a real appliance: no forging, extending, moving, and rotation."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from aiohttp import ClientSession, TCPConnector
from aiohttp.test_utils import TestServer

from streamcdn import service
from streamcdn.tokens import SigningKey, sign, title_prefix
from tests.appliance.conftest import SEGMENT, MakeAppliance, origin_gets, signed, url_of
from tests.conftest import TITLE
from tests.control.conftest import Stack, call, sign_up_and_login

OLD = SigningKey.parse("k1:test-signing-key-0123456789")  # the appliance fixture's key
NEW = SigningKey.parse("k2:the-next-signing-key-987654")


def tampered(path: str, field: int, value: str, *, title: str = TITLE) -> str:
    """``path`` with one field of its token replaced, the signature kept."""
    token, rel = _token(path), path.split(f"/titles/{TITLE}/", 1)[1]
    fields = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split("~")
    fields[field] = value
    forged = base64.urlsafe_b64encode("~".join(fields).encode()).rstrip(b"=").decode()
    return f"/s/{forged}/titles/{title}/{rel}"


def _token(path: str) -> str:
    return path.split("/s/", 1)[1].split("/", 1)[0]


def _key_id(path: str) -> str:
    token = _token(path)
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().split("~")[2]


async def status_of(appliance: service.Running, path: str) -> tuple[int, str]:
    async with ClientSession() as s, s.get(url_of(appliance) + path) as r:
        return r.status, (await r.text()) if r.status != 200 else ""


async def test_a_token_cannot_be_extended_moved_or_forged_on_hits_or_misses(
    make_appliance: MakeAppliance, origin: TestServer
) -> None:
    appliance = await make_appliance()
    hot = signed(TITLE, SEGMENT)
    assert (await status_of(appliance, hot))[0] == 200  # now a hit: the fast path answers
    for rel in (SEGMENT, "240p/seg_00001.m4s"):  # a hit, then a cold object (aiohttp)
        good = signed(TITLE, rel, ttl_s=60)
        before = await origin_gets(origin)
        attacks = {
            "extended": tampered(good, 1, str(int(time.time()) + 10 * 365 * 86400)),
            "another title": tampered(good, 4, "titles/other/", title="other"),
            "wider prefix": tampered(good, 4, "titles/"),
            "cidr dropped": tampered(signed(TITLE, rel, cidr="10.0.0.0/8"), 3, ""),
            "key id swapped": tampered(good, 2, "k9"),
            "expired": signed(TITLE, rel, ttl_s=-1),
            "own key": signed(TITLE, rel, key=SigningKey.parse("k1:attackers-own-secret-00")),
            "prefix of a longer id": signed(TITLE[:-1], rel).replace(
                f"titles/{TITLE[:-1]}/", f"titles/{TITLE}/"
            ),
        }
        for name, path in attacks.items():
            status, text = await status_of(appliance, path)
            assert status == 403, (name, rel, status)
            assert "token" in text or "signature" in text or "key" in text, (name, text)
        assert await origin_gets(origin) == before  # a refused request never reaches upstream


async def test_signing_keys_rotate_without_a_refused_request(
    make_appliance: MakeAppliance, tmp_path: Path
) -> None:
    """The documented steps: add the new key last, move it first, drop the old one. At
    every step, tokens the signer hands out and tokens already handed out both play."""
    steps = [((OLD,), OLD), ((OLD, NEW), OLD), ((NEW, OLD), NEW), ((NEW,), NEW)]
    handed_out: list[str] = []
    for i, (ring, signer) in enumerate(steps):
        appliance = await make_appliance(keys=ring, cache_dir=tmp_path / f"cache-{i}")
        handed_out.append(signed(TITLE, SEGMENT, key=signer))
        valid = {k.key_id for k in ring}
        for path in handed_out:
            if _key_id(path) in valid:
                assert (await status_of(appliance, path))[0] == 200, (i, _key_id(path))
            else:  # only once the old key is dropped, which waits for its tokens to expire
                assert i == len(steps) - 1
                status, text = await status_of(appliance, path)
                assert status == 403 and "unknown key id" in text


async def test_control_signs_with_the_first_key_and_the_others_still_play(
    tmp_path: Path,
    store,
    monkeypatch,  # type: ignore[no-untyped-def]
) -> None:
    from tests.control import conftest as control_conftest

    text = control_conftest.deployment_text

    def two_keys(*args):  # type: ignore[no-untyped-def]
        return text(*args).replace(
            'signing = ["k1:', f'signing = ["{NEW.key_id}:{NEW.secret.decode()}", "k1:'
        )

    monkeypatch.setattr(control_conftest, "deployment_text", two_keys)
    stack = await control_conftest.start_stack(tmp_path, store)
    try:
        token = await sign_up_and_login(stack.control)
        status, body, _ = await call("POST", f"{stack.control}/play/{TITLE}", token=token)
        assert status == 200
        url = body["urls"][0]
        assert _key_id(url) == NEW.key_id
        old_key = stack.deployment.signing_keys[1]
        old = sign(title_prefix(TITLE), old_key, expires=int(time.time()) + 60)
        async with ClientSession() as s:
            for u in (url, f"{stack.appliances['a1']}/s/{old}/titles/{TITLE}/master.m3u8"):
                async with s.get(u) as r:
                    assert r.status == 200, u
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()


async def test_a_token_from_control_plays_from_any_address_until_it_expires(stack: Stack) -> None:
    """A stated limit: control does not bind its tokens to the viewer's network (viewers
    move between Wi-Fi and mobile mid-play), so a leaked URL plays elsewhere until it
    expires. `streamcdn token --cidr` binds one; tests/appliance/test_serving.py shows a
    bound token refused from outside its network."""
    token = await sign_up_and_login(stack.control)
    _, body, _ = await call("POST", f"{stack.control}/play/{TITLE}", token=token)
    connector = TCPConnector(local_addr=("127.0.0.2", 0))
    async with ClientSession(connector=connector) as s, s.get(body["urls"][0]) as r:
        assert r.status == 200
