"""The --chaos grammar, the schedule, target picking and the windows of what players felt:
all pure, tested directly."""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamcdn.chaos import (
    Action,
    ChaosError,
    Felt,
    Kind,
    check_fits,
    felt,
    parse_duration,
    parse_spec,
    pick_target,
    steps,
)
from tests.conftest import streamcdn_cmd

IDS = ("a1", "a2", "ix1")


def test_the_issue_examples() -> None:
    kill, slow, drop = parse_spec(
        "kill-appliance:every=20s,slow-upstream:200ms,drop-heartbeats:a2", IDS
    )
    assert kill == Action(Kind.KILL, "kill-appliance:every=20s", at_s=20.0, every_s=20.0)
    assert slow == Action(Kind.SLOW, "slow-upstream:200ms", delay_ms=200.0)
    assert drop == Action(Kind.DROP, "drop-heartbeats:a2", target="a2")


def test_repeated_specs_add_up_and_defaults() -> None:
    actions = parse_spec(["kill-appliance", "slow-upstream:1.5s:ix1:at=2s:for=1m"], IDS)
    assert actions[0].at_s == 10.0 and actions[0].every_s is None and actions[0].target is None
    slow = actions[1]
    assert (slow.delay_ms, slow.target, slow.at_s, slow.for_s) == (1500.0, "ix1", 2.0, 60.0)
    assert parse_spec("kill-appliance:target=a1:at=500ms", IDS)[0].at_s == 0.5


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode-appliance", "unknown action 'explode-appliance'; known: kill-appliance"),
        ("kill-appliance:every=20", "bad duration '20'"),
        ("kill-appliance:every=-1s", "bad duration '-1s'"),
        ("kill-appliance:every=20x", "bad duration '20x'"),
        ("kill-appliance:appliance-2", "unknown appliance id 'appliance-2'; known: a1, a2, ix1"),
        ("slow-upstream", "slow-upstream needs its delay"),
        ("slow-upstream:0ms", "more than 0 and at most 60000ms"),
        ("slow-upstream:2m", "at most 60000ms"),
        ("kill-appliance:5s", "takes no bare duration"),
        ("kill-appliance:every=500ms", "every= at least 1s"),
        ("kill-appliance:for=5s", "takes no for="),
        ("drop-heartbeats:every=10s", "needs a for= shorter than it"),
        ("drop-heartbeats:every=10s:for=10s", "needs a for= shorter than it"),
        ("kill-appliance:at=1s:at=2s", "at given twice"),
        ("kill-appliance:when=1s", "unknown parameter 'when'"),
        ("kill-appliance,,slow-upstream:1s", "an empty action between commas"),
        ("", "empty spec"),
        ("kill-appliance:a b", "bad appliance id"),
    ],
)
def test_bad_specs_are_one_clear_line(spec: str, message: str) -> None:
    with pytest.raises(ChaosError) as info:
        parse_spec(spec, IDS)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("--chaos")


def test_without_a_fleet_any_well_formed_id_is_taken() -> None:
    assert parse_spec("drop-heartbeats:appliance-2")[0].target == "appliance-2"


@given(
    value=st.floats(min_value=0, max_value=10_000, allow_nan=False).map(lambda v: round(v, 3)),
    unit=st.sampled_from(["ms", "s", "m"]),
)
def test_durations_read_back(value: float, unit: str) -> None:
    seconds = parse_duration(f"{value}{unit}")
    assert seconds == pytest.approx(value * {"ms": 0.001, "s": 1, "m": 60}[unit])


@given(st.text(max_size=40))
def test_any_text_parses_or_fails_with_a_chaos_error(text: str) -> None:
    try:
        actions = parse_spec(text, IDS)
    except ChaosError as exc:
        assert "\n" not in str(exc).replace(text, "")
        return
    assert actions and all(a.kind in Kind for a in actions)
    assert all(a.target is None or a.target in IDS for a in actions)


@given(
    kinds=st.lists(st.sampled_from(list(Kind)), min_size=1, max_size=4),
    every=st.integers(1, 30),
    at=st.integers(0, 30),
)
def test_the_schedule_is_in_time_order_and_ends_follow_starts(
    kinds: list[Kind], every: int, at: int
) -> None:
    texts = []
    for k in kinds:
        if k is Kind.KILL:
            texts.append(f"{k}:every={every}s:at={at}s")
        elif k is Kind.SLOW:
            texts.append(f"{k}:100ms:at={at}s")
        else:
            texts.append(f"{k}:at={at}s:for={every / 2}s:every={every}s" if every > 1 else k)
    actions = parse_spec(",".join(texts), IDS)
    first = list(itertools.islice(steps(actions), 50))
    assert [s.t_s for s in first] == sorted(s.t_s for s in first)
    started: set[tuple[int, int]] = set()
    for s in first:
        key = (s.index, s.occurrence)
        if s.start:
            assert key not in started
            started.add(key)
        else:
            assert key in started  # every end after its own start
            assert s.t_s - actions[s.index].at_s >= 0


def test_every_repeats_and_one_shot_does_not() -> None:
    actions = parse_spec("kill-appliance:every=20s,slow-upstream:200ms:at=5s:for=10s", IDS)
    first = [(s.t_s, s.index, s.start) for s in itertools.islice(steps(actions), 5)]
    assert first == [(5, 1, True), (15, 1, False), (20, 0, True), (40, 0, True), (60, 0, True)]


def test_an_action_after_the_end_is_refused() -> None:
    check_fits(parse_spec("kill-appliance:at=5s", IDS), 6)
    with pytest.raises(ChaosError, match="starts at 10s, after the end of the 8s run"):
        check_fits(parse_spec("kill-appliance", IDS), 8)


def test_kills_go_where_the_players_are_and_round_robin_otherwise() -> None:
    kill = parse_spec("kill-appliance", IDS)[0]
    busiest = pick_target(kill, IDS, IDS, {"a1": 3, "a2": 5}, None)
    assert busiest == (["a2"], "most players (5)")
    # The busiest is dead: the busiest of the live ones.
    assert pick_target(kill, IDS, ["a1", "ix1"], {"a1": 3, "a2": 5}, None)[0] == ["a1"]
    picks, last = [], None
    for _ in range(4):
        (last,), why = pick_target(kill, IDS, IDS, {}, last)
        picks.append(last)
        assert why == "round-robin"
    assert picks == ["a1", "a2", "ix1", "a1"]
    assert pick_target(kill, IDS, [], {}, None) == ([], "no appliance answered")
    named = parse_spec("kill-appliance:ix1", IDS)[0]
    assert pick_target(named, IDS, [], {"a1": 9}, None) == (["ix1"], "named in the spec")
    slow = parse_spec("slow-upstream:1s", IDS)[0]
    assert pick_target(slow, IDS, ["a1"], {}, None) == (list(IDS), "every appliance")


def test_what_players_felt_lands_in_the_window_of_the_step_before_it() -> None:
    changes = [
        Felt(1.0, errors=1),  # before the first step
        Felt(5.0, failovers=2, errors=2),  # exactly at the first step: its window
        Felt(7.5, stalls=1, stall_s=0.25),
        Felt(12.0, player_errors=1),  # after the second step
        Felt(30.0, failovers=1),  # reported after the end: the last window still
    ]
    fields = ("stalls", "stall_s", "failovers", "errors", "player_errors")
    windows = [tuple(w[f] for f in fields) for w in felt([5.0, 10.0], changes, 20.0)]
    assert windows == [(0, 0, 0, 1, 0), (1, 0.25, 2, 2, 0), (0, 0, 1, 0, 1)]
    assert felt([], changes, 20.0)[0]["failovers"] == 3


def test_an_admin_key_with_control_characters_is_one_clear_line() -> None:
    """It went into the admin API's Authorization header, and aiohttp raised a traceback."""
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        streamcdn_cmd(
            "loadtest", "--players", "1", "--duration", "3", "--control", "http://127.0.0.1:1",
            "--config", str(root / "examples" / "deployment.toml"),
            "--admin-key", "admin-key-0123456789\nX-Injected: 1", "--chaos", "slow-upstream:1s",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert res.returncode == 1
    assert res.stderr == (
        "streamcdn: error: the admin key: control characters cannot go in an HTTP header\n"
    )
