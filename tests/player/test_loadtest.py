"""The load test against the whole stack in this process."""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import ClientSession
from rich.console import Console

from origin.store import TitleStore
from player.loadtest import account_emails, format_loadtest, loadtest
from player.plot import plot_loadtest
from tests.conftest import TITLE
from tests.control.conftest import PASSWORD, start_stack
from tests.player.test_session import FixedRule, LastThroughputRule


def test_accounts_derive_from_the_given_email() -> None:
    assert account_emails("me@example.com", 3) == [
        "me@example.com",
        "me+lt1@example.com",
        "me+lt2@example.com",
    ]


async def test_twenty_players_play_through_the_stack(tmp_path: Path, store: TitleStore) -> None:
    stack = await start_stack(tmp_path, store)
    try:
        result = await loadtest(
            stack.control,
            20,
            3.0,
            email="load@example.com",
            password=PASSWORD,
            abr=LastThroughputRule,
        )
        async with ClientSession() as s, s.get(f"{stack.control}/events/summary") as r:
            qoe = await r.json()
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()
    json.dumps(result)
    assert (
        result["players"] == 20 and result["accounts"] == 2 and result["abr"] == "last-throughput"
    )
    assert result["errors"] == {} and result["egress_mbps"] > 0
    assert result["plays"] >= 20
    assert {s["player"] for s in result["sessions"]} == set(range(20))
    assert all(s["segments"] > 0 and s["title"] == TITLE for s in result["sessions"])
    assert result["qoe"]["stalls"] == 0 and result["qoe"]["qoe_lin"] > 0
    assert result["cpu"]["cores_used"] > 0 and result["cpu"]["players_per_core"] > 0
    assert result["timeline"] and max(s["players"] for s in result["timeline"]) == 20
    assert result["events"]["posted"] >= 40 and result["events"]["failed_posts"] == 0
    assert qoe["appliances"]["a1"]["sessions"] == result["plays"]

    console = Console(record=True, width=100)
    console.print(format_loadtest(result))
    assert "players/core" in console.export_text()
    assert plot_loadtest(result, tmp_path / "load.png").stat().st_size > 1000


async def test_plays_are_retried_when_control_rate_limits_them(
    tmp_path: Path, store: TitleStore
) -> None:
    """12 players on one account: past its burst of 10, plays wait out control's 429s."""
    stack = await start_stack(tmp_path, store)
    try:
        result = await loadtest(
            stack.control,
            12,
            4.0,
            email="one@example.com",
            password=PASSWORD,
            abr=lambda: FixedRule(0),
            players_per_account=12,
            stagger_s=0.0,
            titles=[TITLE],
        )
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()
    assert result["accounts"] == 1 and result["throttled"] > 0
    assert {s["player"] for s in result["sessions"]} == set(range(12))
    assert result["errors"] == {}
