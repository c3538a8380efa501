"""Heartbeats against a real steering service: key rotation, replays."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from steering import server as steering_server
from streamcdn import service
from streamcdn.config import load
from streamcdn.tokens import SigningKey
from tests.steering.conftest import DEPLOYMENT, beat_body, get_json, post_beat

K1 = SigningKey.parse("k1:steering-test-key-0123456789")  # the deployment's signing key
K2 = SigningKey.parse("k2:the-next-signing-key-987654")
A2_OLD = SigningKey.parse("a2:a2-own-heartbeat-key-012345")  # a2's own heartbeat key
A2_NEW = SigningKey.parse("a2v2:a2-next-heartbeat-key-6789")


def ring(*keys: SigningKey) -> str:
    return json.dumps([f"{k.key_id}:{k.secret.decode()}" for k in keys])


async def start(tmp: Path, signing: tuple[SigningKey, ...], a2: tuple[SigningKey, ...]):  # type: ignore[no-untyped-def]
    text = DEPLOYMENT.replace(
        'signing = ["k1:steering-test-key-0123456789"]', f"signing = {ring(*signing)}"
    ).replace('heartbeat_key = "a2:a2-own-heartbeat-key-012345"', f"heartbeat_key = {ring(*a2)}")
    path = tmp / "deploy.toml"
    path.write_text(text)
    app = steering_server.create_app(load(path))
    return await service.start(app, host="127.0.0.1", port=0, access_log=False)


async def test_heartbeat_keys_rotate_without_a_refused_heartbeat(tmp_path: Path) -> None:
    """Both kinds, by the documented steps: a1 signs with the deployment's first signing
    key, a2 with the first of its own heartbeat keys. Steering restarts with each new
    file; the appliances switch key at the step where they restart."""
    steps = [
        # (steering's signing keys, a2's heartbeat keys, a1 signs with, a2 signs with)
        ((K1,), (A2_OLD,), K1, A2_OLD),
        ((K1, K2), (A2_OLD, A2_NEW), K1, A2_OLD),  # new keys added last: steering restarts
        ((K2, K1), (A2_NEW, A2_OLD), K2, A2_NEW),  # moved first: the appliances restart
        ((K2,), (A2_NEW,), K2, A2_NEW),  # old ones dropped: steering restarts
    ]
    for i, (signing, a2, a1_signer, a2_signer) in enumerate(steps):
        running = await start(tmp_path, signing, a2)
        try:
            url = running.make_url()
            # Either side may restart first within a step: the previous step's signers too.
            signers = [(a1_signer, a2_signer)] + ([steps[i - 1][2:]] if i else [])
            for pair in signers:
                assert (await post_beat(url, beat_body("a1"), key=pair[0]))[0] == 200, (i, pair)
                assert (await post_beat(url, beat_body("a2"), key=pair[1]))[0] == 200, (i, pair)
            if i == len(steps) - 1:  # dropped keys are refused, and a2's own key stays its own
                assert (await post_beat(url, beat_body("a1"), key=K1))[0] == 401
                assert (await post_beat(url, beat_body("a2"), key=A2_OLD))[0] == 401
                assert (await post_beat(url, beat_body("a2"), key=K2))[0] == 401
        finally:
            await running.close()


async def test_a_replayed_heartbeat_cannot_keep_a_dead_appliance_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attacker who captured a1's last heartbeat replays it every 50 ms after a1 died:
    steering acknowledges but does not store it, so a1 still goes down after 3 missed
    beats (0.3 s here). A body re-signed with a guessed key is refused outright."""
    monkeypatch.setattr(steering_server, "REFRESH_S", 0.05)
    running = await start(tmp_path, (K1,), (A2_OLD,))
    try:
        url = running.make_url()
        last = beat_body("a1", sent_at=time.time())
        assert await post_beat(url, last, key=K1) == (200, {"stored": True})
        deadline = time.monotonic() + 3
        status = "up"
        while status != "down":
            assert time.monotonic() < deadline, "a replayed heartbeat kept a1 up"
            assert await post_beat(url, last, key=K1) == (200, {"stored": False})
            _, fleet = await get_json(f"{url}/fleet")
            status = next(a["status"] for a in fleet["appliances"] if a["id"] == "a1")
            await asyncio.sleep(0.05)
        fresh = beat_body("a1")  # a new sent_at needs a new signature
        forged = SigningKey.parse("k1:a-guess-at-the-secret-0000")
        assert (await post_beat(url, fresh, key=forged))[0] == 401
    finally:
        await running.close()
