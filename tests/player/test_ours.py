"""The project's own ABR rule on crafted cases, and on any context at all."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from player.abr import DEFAULT_RULE, make_rule
from player.abr.base import AbrContext, Download
from player.abr.ours import Ours, _worst_drawdown_s

LADDER = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)


def ctx(buffer_s: float, kbps: list[float], last: int | None = 2, **kw: object) -> AbrContext:
    downloads = tuple(
        Download(bytes=int(k * 1000 / 8 * 2), duration_s=2.0, end_s=2.0 * (i + 1), index=2)
        for i, k in enumerate(kbps)
    )
    fields: dict = dict(
        bitrates_kbps=LADDER, segment_s=4.0, buffer_s=buffer_s, max_buffer_s=60.0,
        now_s=2.0 * len(kbps), downloads=downloads, last_index=last, segment_index=len(kbps),
        segments_total=48,
    )  # fmt: skip
    fields.update(kw)
    return AbrContext(**fields)


def choose(context: AbrContext) -> int:
    rule = Ours()
    return rule.choose(context, rule.initial_state())[0]


def test_it_is_the_default_and_starts_at_the_bottom() -> None:
    assert DEFAULT_RULE == "ours" and isinstance(make_rule("ours"), Ours)
    assert choose(ctx(0.0, [], last=None, playing=False)) == 0  # nothing measured yet


def test_ample_steady_throughput_reaches_the_top_rung() -> None:
    assert choose(ctx(30.0, [20_000.0] * 5, last=5)) == 5


def test_a_low_buffer_and_falling_throughput_step_down() -> None:
    steady = choose(ctx(20.0, [3000.0] * 5, last=3))
    falling = choose(ctx(3.0, [3000.0, 2500.0, 1500.0, 900.0, 600.0], last=3))
    assert falling < steady and falling <= 1


def test_a_deep_buffer_buys_a_higher_rung_than_a_shallow_one() -> None:
    samples = [1500.0, 1300.0, 1700.0, 1400.0, 1600.0]
    assert choose(ctx(35.0, samples)) >= choose(ctx(4.0, samples))


def test_near_the_end_a_steady_link_spends_its_buffer_and_a_volatile_one_keeps_it() -> None:
    steady = [1500.0, 1450.0, 1550.0, 1500.0, 1480.0] * 4
    mid = choose(ctx(40.0, steady, segment_index=20))
    end = choose(ctx(40.0, steady, segment_index=42))  # 6 segments (24 s) left
    assert end > mid  # the buffer held at the end would be bandwidth never used
    outages = [1500.0, 1450.0, 40.0, 1500.0, 1480.0] * 4  # a near stop now and then
    assert choose(ctx(40.0, outages, segment_index=42)) < end


def test_a_level_shift_up_is_followed_at_once() -> None:
    """Two downloads at 4 Mbit/s after three at 1: the harmonic mean of all five (1.6)
    would hold a middle rung; the shift restarts the estimate from the new level."""
    shifted = choose(ctx(30.0, [1000.0] * 3 + [4000.0] * 2, last=2))
    assert shifted >= 4
    no_shift = Ours(shift_samples=0)
    context = ctx(30.0, [1000.0] * 3 + [4000.0] * 2, last=2)
    assert shifted > no_shift.choose(context, no_shift.initial_state())[0]
    # One fast download alone is no shift (a burst through a cache, a lucky moment).
    assert choose(ctx(30.0, [1000.0] * 4 + [4000.0], last=2)) < shifted


def test_the_end_margin_is_the_worst_slow_spell_seen() -> None:
    """The margin is how far the downloads fell behind the pace of their mean throughput:
    nothing on a steady link; three 2 s downloads in a row at a fifth of the rate fall
    3 x (2 - 2 x 300 / 1320) = 4.64 s behind; the same three spread out are paid back in
    between. Near the end the steady link spends its buffer on bitrate, the other keeps it."""
    steady = [1500.0] * 20
    spell = [1500.0] * 8 + [300.0] * 3 + [1500.0] * 9  # mean 1320
    spread = ([1500.0] * 5 + [300.0]) * 3 + [1500.0] * 2
    assert _worst_drawdown_s(list(ctx(0, steady).downloads)) == pytest.approx(0.0)
    assert _worst_drawdown_s(list(ctx(0, spell).downloads)) == pytest.approx(4.636, abs=1e-3)
    assert _worst_drawdown_s(list(ctx(0, spread).downloads)) < 2.0
    at_end = {"segment_index": 42}  # 6 segments (24 s) left
    assert choose(ctx(24.0, steady, **at_end)) > choose(ctx(24.0, spell, **at_end))


def test_known_segment_sizes_are_used() -> None:
    # The next segments at the top rung are tiny (a still scene): affordable now.
    sizes = tuple((1000, 2000, 3000, 4000, 5000, 6000) for _ in range(5))
    assert choose(ctx(10.0, [800.0] * 5, next_sizes=sizes)) == 5


@settings(max_examples=200, deadline=None)
@given(
    ladder=st.lists(st.floats(50, 50_000), min_size=1, max_size=8).map(sorted),
    buffer_s=st.floats(0, 120),
    samples=st.lists(
        st.tuples(st.integers(0, 10**8), st.floats(0, 100), st.integers(0, 7)), max_size=20
    ),
    last=st.none() | st.integers(0, 7),
    playing=st.booleans(),
)
def test_any_context_gives_a_valid_rung(ladder, buffer_s, samples, last, playing) -> None:  # type: ignore[no-untyped-def]
    rungs = len(ladder)
    downloads = tuple(
        Download(bytes=b, duration_s=d, end_s=float(i), index=min(r, rungs - 1))
        for i, (b, d, r) in enumerate(samples)
    )
    context = AbrContext(
        bitrates_kbps=tuple(ladder), segment_s=4.0, buffer_s=buffer_s, max_buffer_s=60.0,
        now_s=float(len(samples)), downloads=downloads,
        last_index=None if last is None else min(last, rungs - 1), segment_index=len(samples),
        segments_total=None, playing=playing,
    )  # fmt: skip
    rule = Ours()
    state = rule.initial_state()
    for _ in range(3):  # the state it hands back is usable again
        index, state = rule.choose(context, state)
        assert 0 <= index < rungs
