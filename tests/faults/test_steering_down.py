"""Steering killed (`kill -9`) or hung (SIGSTOP: connections accepted, never answered)
under a running deployment: a play through control still starts, from control's static
ranking, and the appliances keep serving the whole title."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest

from origin.store import TitleStore
from player.session import ControlClient, play
from tests.conftest import TITLE
from tests.faults.stack import ApplianceSpec, Stack, wait_until

EMAIL, PASSWORD = "viewer@example.com", "correct horse battery"


@pytest.mark.parametrize("fault", ["killed", "hung"])
async def test_play_starts_and_appliances_serve_with_steering_down(
    tmp_path: Path, store: TitleStore, fault: str
) -> None:
    specs = [ApplianceSpec("a1"), ApplianceSpec("ix1", site="ix")]
    async with Stack(tmp_path, store, specs, steering=True, control=True) as stack:
        await stack.start("origin", "steering", "a1", "ix1", "control")

        async def fleet_up_and_title_listed() -> bool:
            async with stack.http.get(f"{stack.urls['steering']}/fleet") as r:
                fleet = (await r.json())["appliances"]
            async with stack.http.get(f"{stack.urls['control']}/catalog") as r:
                listed = (await r.json())["total"] > 0
            return listed and len(fleet) == 2 and {a["status"] for a in fleet} == {"up"}

        await wait_until(fleet_up_and_title_listed, "steering sees the fleet, control the title")
        async with aiohttp.ClientSession() as http:
            control = ControlClient(stack.urls["control"], http)
            await control.sign_up(EMAIL, PASSWORD)
            token = await control.login(EMAIL, PASSWORD)
            assert (await control.play(token, TITLE))["source"] == "steering"

            if fault == "killed":
                stack.kill("steering")
            else:
                stack.pause("steering")
            answers = []
            for _ in range(2):
                started = time.monotonic()
                answers.append((await control.play(token, TITLE), time.monotonic() - started))
            for answer, took_s in answers:
                # Refused at once, or control's 0.5 s timeout: never a long wait.
                assert answer["source"] == "static" and took_s < 2, (answer["source"], took_s)
                assert answer["appliances"] == ["a1", "ix1"]  # own site first, as configured
            answer = answers[-1][0]
            summary = await play(
                answer["urls"], rule="ours", session=http, appliances=answer["appliances"],
                session_id=answer["session"], play_out=False,
            )  # fmt: skip
        assert summary.ended == "title" and len(summary.timeline) == summary.segments_total
        assert not summary.errors and summary.stalls == 0, summary.errors
        assert summary.appliances == ["a1"]  # no fail-over needed: the appliance serves on
        assert (await stack.health("a1"))["status"] == "ok"  # heartbeats failing is not a fault
        print(
            f"steering {fault}: play answered from the static ranking in "
            + ", ".join(f"{t:.3f} s" for _, t in answers)
            + f"; the title played on a1 with startup {summary.startup_s:.2f} s, 0 errors"
        )
