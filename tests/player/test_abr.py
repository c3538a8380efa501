"""The reference ABR rules: crafted cases against their papers and code, and properties."""

from __future__ import annotations

import itertools
import math
import random
import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from player.abr import DEFAULT_RULE, RULES, make_rule
from player.abr.base import AbrContext, AbrRule, Download
from player.abr.bba import BbaRule
from player.abr.bola import BolaERule, BolaState
from player.abr.dynamic import DynamicRule
from player.abr.mpc import RobustMpcRule, plan
from player.abr.throughput import BandwidthEstimator, Ewma, ThroughputRule

LADDER = (300.0, 750.0, 1200.0, 1850.0, 2850.0, 4300.0)  # Pensieve's, kbps
TOP = len(LADDER) - 1
SEGMENT_S = 4.0


def ctx(**changes: object) -> AbrContext:
    base = AbrContext(
        bitrates_kbps=LADDER,
        segment_s=SEGMENT_S,
        buffer_s=20.0,
        max_buffer_s=30.0,
        now_s=100.0,
        downloads=(),
        last_index=None,
        segment_index=10,
        segments_total=100,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def steady_downloads(kbps: float, count: int, end_s: float = 100.0) -> tuple[Download, ...]:
    """``count`` back-to-back one-second downloads at ``kbps``, the last ending at ``end_s``."""
    size = int(kbps * 1000 / 8)
    return tuple(Download(size, 1.0, end_s - count + 1 + k, 0) for k in range(count))


def play(rule: AbrRule, kbps: float, segments: int, max_buffer_s: float = 30.0) -> list[int]:
    """A tiny player on a constant link: it waits while the buffer is full, then fetches."""
    now_s = buffer_s = 0.0
    downloads: tuple[Download, ...] = ()
    last = None
    state = rule.initial_state()
    chosen = []
    for index in range(segments):
        if buffer_s + SEGMENT_S > max_buffer_s:  # idle until one more segment fits
            idle_s = buffer_s + SEGMENT_S - max_buffer_s
            now_s += idle_s
            buffer_s -= idle_s
        c = AbrContext(
            LADDER,
            SEGMENT_S,
            buffer_s,
            max_buffer_s,
            now_s,
            downloads[-20:],
            last,
            index,
            None,
            playing=index > 0,
        )
        last, state = rule.choose(c, state)
        size = int(LADDER[last] * SEGMENT_S * 1000 / 8)
        duration_s = size * 8 / 1000 / kbps
        now_s += duration_s
        buffer_s = (max(0.0, buffer_s - duration_s) if index > 0 else 0.0) + SEGMENT_S
        downloads += (Download(size, duration_s, now_s, last),)
        chosen.append(last)
    return chosen


# --- registry -----------------------------------------------------------------------------


REFERENCE_RULES = ("bba", "bola-e", "dynamic", "robust-mpc", "throughput")


def test_registry_builds_every_reference_rule_by_name() -> None:
    assert set(REFERENCE_RULES) <= set(RULES)
    for name in REFERENCE_RULES:
        assert make_rule(name).name == name
    assert DEFAULT_RULE in RULES


def test_unknown_rule_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'pensieve'") as err:
        make_rule("pensieve")
    assert ", ".join(sorted(RULES)) in str(err.value)


# --- BBA-0 --------------------------------------------------------------------------------


@pytest.mark.parametrize("buffer_s", [0.0, 2.0, 5.0])
def test_bba_at_or_below_reservoir_is_lowest(buffer_s: float) -> None:
    assert BbaRule().choose(ctx(buffer_s=buffer_s, last_index=TOP), None)[0] == 0


@pytest.mark.parametrize("buffer_s", [15.0, 16.0, 60.0])
def test_bba_at_or_above_reservoir_plus_cushion_is_highest(buffer_s: float) -> None:
    assert BbaRule().choose(ctx(buffer_s=buffer_s, last_index=0), None)[0] == TOP


@pytest.mark.parametrize(
    ("buffer_s", "last_index", "expected"),
    [
        # f(B) = 300 + 4000 (B - 5) / 10 kbps; from 1200 kbps, Rate+ = 1850 and Rate- = 750.
        (9.0, 2, 3),  # f = 1900 >= Rate+: up to the highest rung below f
        (8.0, 2, 2),  # f = 1500, inside (Rate-, Rate+): stay
        (6.0, 2, 1),  # f = 700 <= Rate-: down to the lowest rung above f
        # The same buffer keeps a different previous rung: that is the hysteresis.
        (8.0, 3, 3),  # f = 1500 inside (1200, 2850)
        (8.0, 4, 3),  # f = 1500 <= Rate- = 1850: down to 1850, not to f's floor
    ],
)
def test_bba_rate_map_between_the_edges_has_hysteresis(
    buffer_s: float, last_index: int, expected: int
) -> None:
    assert BbaRule().choose(ctx(buffer_s=buffer_s, last_index=last_index), None)[0] == expected


# --- throughput (hls.js) ------------------------------------------------------------------


def test_ewma_moves_halfway_after_one_half_life_of_samples() -> None:
    fast, slow = Ewma(3.0), Ewma(9.0)
    for _ in range(300):  # five minutes at 1000 kbps, one-second samples
        fast, slow = fast.sample(1.0, 1000.0), slow.sample(1.0, 1000.0)
    for _ in range(3):  # three seconds at 2000 kbps: one fast half-life
        fast, slow = fast.sample(1.0, 2000.0), slow.sample(1.0, 2000.0)
    assert fast.value() == pytest.approx(1500.0, abs=0.01)
    for _ in range(6):  # nine seconds in all: one slow half-life
        slow = slow.sample(1.0, 2000.0)
    assert slow.value() == pytest.approx(1500.0, abs=0.01)


def test_ewma_weighs_by_duration_not_by_count() -> None:
    one = Ewma(3.0).sample(10.0, 1000.0).sample(3.0, 2000.0)
    three = Ewma(3.0).sample(10.0, 1000.0)
    for _ in range(3):
        three = three.sample(1.0, 2000.0)
    assert one.value() == pytest.approx(three.value())


def test_estimate_is_the_lower_average() -> None:
    est = BandwidthEstimator.new(3.0, 9.0)
    assert est.estimate_kbps() is None
    est = est.observe(steady_downloads(1000.0, 30, end_s=30.0))
    up = est.observe(steady_downloads(4000.0, 2, end_s=32.0))
    assert up.estimate_kbps() == pytest.approx(up.slow.value())  # rises slowly
    down = est.observe(steady_downloads(250.0, 2, end_s=32.0))
    assert down.estimate_kbps() == pytest.approx(down.fast.value())  # falls fast


def test_throughput_samples_each_download_once() -> None:
    rule = ThroughputRule()
    downloads = steady_downloads(1000.0, 3)
    _, once = rule.choose(ctx(downloads=downloads), rule.initial_state())
    _, twice = rule.choose(ctx(downloads=downloads), once)
    assert twice == once


@pytest.mark.parametrize(
    ("last_index", "expected"),
    [
        (0, 1),  # 690 < 0.7 x 1000: up one rung
        (1, 1),  # 940 > 0.7 x 1000: no further up-switch, 690 < 0.95 x 1000: stay
        (2, 2),  # 940 < 0.95 x 1000: stay
        (3, 2),  # 1200 > 0.95 x 1000: down
    ],
)
def test_throughput_up_switch_needs_0_7_and_staying_needs_0_95(
    last_index: int, expected: int
) -> None:
    ladder = (300.0, 690.0, 940.0, 1200.0)
    c = ctx(bitrates_kbps=ladder, downloads=steady_downloads(1000.0, 20), last_index=last_index)
    assert ThroughputRule().choose(c, ThroughputRule().initial_state())[0] == expected


def test_throughput_starts_from_500_kbps_at_rung_0() -> None:
    ladder = (200.0, 340.0, 460.0)
    rule = ThroughputRule()
    assert rule.choose(ctx(bitrates_kbps=ladder), rule.initial_state())[0] == 1  # 340 < 350
    kept = rule.choose(ctx(bitrates_kbps=ladder, last_index=2), rule.initial_state())[0]
    assert kept == 2  # 460 < 475


def test_throughput_prefers_a_rung_that_arrives_before_the_buffer_runs_out() -> None:
    rule = ThroughputRule()
    # 5000 kbps, staying at the top: every rung is below 0.95 x 5000 = 4750 kbps. With 8 s
    # segments the fetch takes bitrate x 8 / 4750 s: 7.2 s at 4300, 4.8 at 2850, 3.1 at 1850,
    # 2.0 at 1200.
    c = ctx(downloads=steady_downloads(5000.0, 20), last_index=TOP, segment_s=8.0)
    assert rule.choose(replace(c, buffer_s=20.0), rule.initial_state())[0] == TOP
    assert rule.choose(replace(c, buffer_s=3.0), rule.initial_state())[0] == 2
    # Nothing arrives before an empty buffer runs out: allow min(8, 4) s of stall instead.
    assert rule.choose(replace(c, buffer_s=0.0), rule.initial_state())[0] == 3
    # On a live stream hls.js ignores the fetch time.
    live = replace(c, buffer_s=0.0, segments_total=None)
    assert rule.choose(live, rule.initial_state())[0] == TOP


# --- RobustMPC ----------------------------------------------------------------------------


def test_mpc_picks_the_top_when_throughput_is_ample() -> None:
    rule = RobustMpcRule()
    c = ctx(downloads=steady_downloads(50_000.0, 5), last_index=0, buffer_s=10.0)
    assert rule.choose(c, rule.initial_state())[0] == TOP


def test_mpc_goes_down_when_buffer_is_low_and_throughput_falling() -> None:
    rule = RobustMpcRule()
    state = rule.initial_state()
    downloads: tuple[Download, ...] = ()
    chosen = []
    for k, kbps in enumerate((5000.0, 3000.0, 1500.0, 800.0)):
        downloads += (Download(int(kbps * 1000 / 8), 1.0, float(k + 1), TOP),)
        index, state = rule.choose(ctx(downloads=downloads, last_index=TOP, buffer_s=2.0), state)
        chosen.append(index)
    assert chosen == sorted(chosen, reverse=True)
    assert chosen[0] == TOP - 1
    assert chosen[-1] == 0


def test_mpc_keeps_its_prediction_errors() -> None:
    rule = RobustMpcRule()
    first = ctx(downloads=(Download(125_000, 1.0, 1.0, 0),))  # 1000 kbps
    _, state = rule.choose(first, rule.initial_state())
    assert state.errors == (0.0,)
    assert state.last_prediction_kbps == pytest.approx(1000.0)
    second = ctx(downloads=(*first.downloads, Download(62_500, 1.0, 2.0, 0)))  # 500 kbps
    _, state = rule.choose(second, state)
    assert state.errors == pytest.approx((0.0, 1.0))  # |1000 - 500| / 500
    assert state.last_prediction_kbps == pytest.approx(2 / (1 / 1000 + 1 / 500))
    _, again = rule.choose(second, state)  # no new sample: no new error
    assert again == state
    for k in range(3, 10):
        later = ctx(downloads=(*second.downloads, Download(62_500, 1.0, float(k), 0)))
        _, state = rule.choose(later, state)
    assert len(state.errors) == 5


def test_mpc_uses_known_segment_sizes() -> None:
    rule = RobustMpcRule()
    c = ctx(downloads=steady_downloads(6000.0, 5), last_index=TOP, buffer_s=4.0)
    assert rule.choose(c, rule.initial_state())[0] == TOP
    # The next segments at the top two rungs are five times their nominal size: avoid them.
    nominal = [int(b * SEGMENT_S * 1000 / 8) for b in LADDER]
    heavy = tuple(n * 5 if i >= 4 else n for i, n in enumerate(nominal))
    assert rule.choose(replace(c, next_sizes=(heavy,) * 5), rule.initial_state())[0] == 3


def brute_force(
    bitrates: tuple[float, ...],
    download_s: list[list[float]],
    buffer_s: float,
    segment_s: float,
    last_index: int | None,
) -> int:
    """Pensieve's exhaustive loop (hongzimao/pensieve test/mpc.py), tie-break included."""
    best_reward, best = -100000000.0, 0
    for combo in itertools.product(range(len(bitrates)), repeat=len(download_s)):
        rebuffer, buf, rate, smooth, last = 0.0, buffer_s, 0.0, 0.0, last_index
        for k, q in enumerate(combo):
            download = download_s[k][q]
            if buf < download:
                rebuffer += download - buf
                buf = 0.0
            else:
                buf -= download
            buf += segment_s
            rate += bitrates[q]
            if last is not None:
                smooth += abs(bitrates[q] - bitrates[last])
            last = q
        reward = rate / 1000 - 4.3 * rebuffer - smooth / 1000
        if reward >= best_reward:
            best_reward, best = reward, combo[0]
    return best


@st.composite
def mpc_cases(draw: st.DrawFn) -> tuple:
    rungs = draw(st.integers(1, 4))
    steps = draw(st.integers(1, 5))
    if draw(st.booleans()):  # coarse values, so that ties are common
        bitrates = tuple(
            sorted(
                draw(
                    st.lists(
                        st.sampled_from([100.0, 500.0, 1000.0, 2000.0]),
                        min_size=rungs,
                        max_size=rungs,
                    )
                )
            )
        )
        cell = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0, 8.0])
        buffer_s = draw(st.sampled_from([0.0, 1.0, 2.0, 4.0]))
    else:
        bitrates = tuple(
            sorted(draw(st.lists(st.floats(50.0, 20_000.0), min_size=rungs, max_size=rungs)))
        )
        cell = st.floats(0.0, 30.0)
        buffer_s = draw(st.floats(0.0, 60.0))
    download_s = [draw(st.lists(cell, min_size=rungs, max_size=rungs)) for _ in range(steps)]
    last = draw(st.none() | st.integers(0, rungs - 1))
    segment_s = draw(st.sampled_from([1.0, 2.0, 4.0]))
    return bitrates, download_s, buffer_s, segment_s, last


@settings(max_examples=300, deadline=None)
@given(mpc_cases())
def test_mpc_search_equals_exhaustive_search(case: tuple) -> None:
    assert plan(*case) == brute_force(*case)


def test_mpc_decides_in_under_5_ms() -> None:
    rng = random.Random(7)
    rule = RobustMpcRule()
    times = []
    for _ in range(200):
        kbps = [rng.uniform(200.0, 8000.0) for _ in range(5)]
        downloads = tuple(Download(int(k * 1000 / 8), 1.0, float(i), 0) for i, k in enumerate(kbps))
        c = ctx(downloads=downloads, buffer_s=rng.uniform(0.0, 40.0), last_index=rng.randrange(6))
        start = time.perf_counter()
        rule.choose(c, rule.initial_state())
        times.append(time.perf_counter() - start)
    assert sum(times) / len(times) < 0.005


# --- BOLA-E -------------------------------------------------------------------------------


def test_bola_parameters_follow_dash_js() -> None:
    p = BolaERule().params(LADDER, max_buffer_s=30.0)
    assert p is not None
    assert p.utilities[0] == 1.0
    assert p.utilities[-1] == pytest.approx(1 + math.log(4300 / 300))
    assert p.vp * p.gp == pytest.approx(10.0)  # lowest rung preferred up to MINIMUM_BUFFER_S
    assert p.vp * (p.utilities[-1] + p.gp - 1) == pytest.approx(30.0)  # top rung at the target

    def bola(level_s: float) -> int:
        return max(range(len(LADDER)), key=lambda i: p.score(i, level_s, LADDER[i]))

    assert bola(10.0) == 0
    assert bola(30.0) == TOP
    assert BolaERule().params((500.0, 500.0), 30.0) is None  # nothing beats the lowest rung


def test_bola_starts_from_the_safe_throughput() -> None:
    rule = BolaERule()
    c = ctx(downloads=steady_downloads(2000.0, 1), buffer_s=0.0, playing=False, last_index=0)
    index, state = rule.choose(c, rule.initial_state())
    assert index == 2  # the highest rung <= 0.9 x 2000 kbps
    assert not state.steady
    p = rule.params(LADDER, 30.0)
    assert p is not None
    assert state.placeholder_s == pytest.approx(p.min_level_s(2, LADDER))


def test_bola_without_throughput_keeps_the_lowest_rung() -> None:
    rule = BolaERule()
    assert rule.choose(ctx(buffer_s=0.0, playing=False), rule.initial_state())[0] == 0


def steady_bola(kbps: float, last_index: int) -> tuple[BolaERule, BolaState]:
    rule = BolaERule()
    c = ctx(
        downloads=steady_downloads(kbps, 10, end_s=90.0),
        buffer_s=20.0,
        now_s=90.0,
        last_index=last_index,
        segment_index=9,
    )
    _, state = rule.choose(c, rule.initial_state())
    assert state.steady
    return rule, state


def test_bola_placeholder_grows_while_the_player_idles() -> None:
    rule, state = steady_bola(20_000.0, last_index=3)
    downloads = steady_downloads(20_000.0, 10, end_s=95.0)
    busy = ctx(downloads=downloads, buffer_s=20.0, now_s=95.0, last_index=3)
    idle = replace(busy, now_s=101.0)  # six seconds without fetching
    busy_index, after_busy = rule.choose(busy, state)
    idle_index, after_idle = rule.choose(idle, state)
    assert after_idle.placeholder_s > after_busy.placeholder_s + 3.0
    assert idle_index > busy_index


def test_bola_reaches_the_top_with_a_full_buffer() -> None:
    chosen = play(BolaERule(), kbps=6000.0, segments=40)
    assert chosen[-10:] == [TOP] * 10


def test_bola_o_does_not_switch_up_past_the_throughput() -> None:
    rule, state = steady_bola(1000.0, last_index=1)
    # A large buffer asks for the top, but 0.9 x 1000 kbps only sustains 750 kbps.
    c = ctx(downloads=steady_downloads(1000.0, 10), buffer_s=29.0, last_index=1)
    assert rule.choose(c, state)[0] == 1


def test_bola_stall_empties_the_placeholder() -> None:
    rule, state = steady_bola(20_000.0, last_index=3)
    state = replace(state, placeholder_s=15.0)
    stalled = ctx(downloads=steady_downloads(20_000.0, 10, end_s=95.0), buffer_s=0.0, now_s=95.0)
    index, after = rule.choose(stalled, state)
    assert after.placeholder_s == 0.0
    assert index == 0  # nothing fits in an empty buffer (insufficient buffer rule)


def test_bola_restarts_after_a_seek() -> None:
    rule, state = steady_bola(20_000.0, last_index=3)
    seek = ctx(
        downloads=steady_downloads(20_000.0, 10, end_s=95.0),
        buffer_s=0.0,
        now_s=95.0,
        segment_index=50,
    )
    _, after = rule.choose(seek, state)
    assert not after.steady


# --- DYNAMIC ------------------------------------------------------------------------------


def test_dynamic_switches_at_18_s_and_back_below_9_s() -> None:
    rule = DynamicRule()
    state = rule.initial_state()
    downloads = steady_downloads(2500.0, 10)
    seen = []
    for buffer_s in (10.0, 17.9, 18.0, 12.0, 9.0, 8.9, 12.0, 18.0):
        c = ctx(downloads=downloads, buffer_s=buffer_s, last_index=2)
        bola_index, _ = rule.bola.choose(c, state.bola)
        tput_index, _ = rule.throughput.choose(c, state.throughput)
        index, state = rule.choose(c, state)
        seen.append(state.using_bola)
        assert index == (bola_index if state.using_bola else tput_index)
    assert seen == [False, False, True, True, True, False, False, True]


def test_dynamic_reaches_the_top_on_a_fast_link() -> None:
    chosen = play(DynamicRule(), kbps=6000.0, segments=40)
    assert chosen[-10:] == [TOP] * 10


# --- every rule, any context --------------------------------------------------------------

downloads_st = st.lists(
    st.builds(
        Download,
        bytes=st.integers(0, 50_000_000),
        duration_s=st.floats(0.0, 60.0),
        end_s=st.floats(0.0, 10_000.0),
        index=st.integers(0, 7),
    ),
    max_size=20,
)


@st.composite
def contexts(draw: st.DrawFn) -> list[AbrContext]:
    """A short session on one ladder of 1-8 rungs, each decision with arbitrary inputs."""
    ladder = tuple(sorted(draw(st.lists(st.floats(1.0, 100_000.0), min_size=1, max_size=8))))
    n = len(ladder)
    segment_s = draw(st.floats(0.5, 10.0))
    out = []
    for _ in range(draw(st.integers(1, 4))):
        downloads = tuple(replace(d, index=d.index % n) for d in draw(downloads_st))
        sizes = st.tuples(*[st.integers(0, 10_000_000)] * n)
        out.append(
            AbrContext(
                bitrates_kbps=ladder,
                segment_s=segment_s,
                buffer_s=draw(st.floats(0.0, 120.0)),
                max_buffer_s=draw(st.floats(0.0, 120.0)),
                now_s=draw(st.floats(0.0, 10_000.0)),
                downloads=downloads,
                last_index=draw(st.none() | st.integers(0, n - 1)),
                segment_index=draw(st.integers(0, 1000)),
                segments_total=draw(st.none() | st.integers(0, 1000)),
                next_sizes=draw(st.none() | st.lists(sizes, max_size=6).map(tuple)),
                playing=draw(st.booleans()),
            )
        )
    return out


@pytest.mark.parametrize("name", REFERENCE_RULES)
@settings(max_examples=60, deadline=None)
@given(session=contexts())
def test_every_rule_returns_a_rung_for_any_context(name: str, session: list[AbrContext]) -> None:
    rule = make_rule(name)
    state = rule.initial_state()
    for c in session:
        index, state = rule.choose(c, state)
        assert isinstance(index, int)
        assert 0 <= index < len(c.bitrates_kbps)
