"""The ABR simulator: exact timings, conservation, QoE by hand, the videos, speed, the CLI core."""

from __future__ import annotations

import functools
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from player.abr.base import AbrContext
from player.qoe import SegmentRecord, SessionMetrics, mean_metrics, session_metrics
from player.simulate import (
    SimConfig,
    SimulationError,
    format_table,
    run_simulation,
    simulate,
    simulate_session,
)
from player.traces import Period, Trace, load_traces
from player.video import Video, pensieve_video, video_from_manifest
from streamcdn.errors import UserError
from tests.conftest import TINY_DURATION_S

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"


@functools.cache
def family(name: str) -> list[Trace]:
    """A shared trace family, read once per test run."""
    return load_traces(SHARED / name)


class Fixed:
    """Always the same rung."""

    name = "fixed"

    def __init__(self, rung: int = 0) -> None:
        self.rung = rung

    def initial_state(self) -> None:
        return None

    def choose(self, ctx: AbrContext, state: None) -> tuple[int, None]:
        return self.rung, state


class Scripted:
    """The rungs it is given, in order; remembers every context it saw."""

    name = "scripted"

    def __init__(self, rungs: list[int]) -> None:
        self.rungs = rungs
        self.seen: list[AbrContext] = []

    def initial_state(self) -> int:
        return 0

    def choose(self, ctx: AbrContext, state: int) -> tuple[int, int]:
        self.seen.append(ctx)
        return self.rungs[state % len(self.rungs)], state + 1


def constant(kbps: float, latency_ms: float = 0.0) -> Trace:
    return Trace(f"constant-{kbps}", (Period(1.0, kbps, latency_ms),))


# -- exact timings ------------------------------------------------------------------------


def test_constant_trace_gives_exact_download_times_and_no_stall() -> None:
    # 750 kbps rung = 375,000 B per segment; 1000 kbps = 125,000 B/s: 3 s, plus 50 ms latency.
    session = simulate_session(Fixed(1), constant(1000, latency_ms=50), pensieve_video())
    assert len(session.segments) == 48
    for s in session.segments:
        assert s.download_s == pytest.approx(3.05, abs=1e-9)
        assert s.stall_s == 0
        assert s.wait_s == 0  # 0.95 s more buffer per segment never reaches 60 s
        assert s.bytes == 375_000
    assert session.startup_s == pytest.approx(3.05)
    assert session.segments[-1].end_s == pytest.approx(48 * 3.05)
    assert session.end_s == pytest.approx(3.05 + 48 * 4)  # plays without a stall
    assert session.bytes == 48 * 375_000
    assert session.metrics.rebuffer_ratio == 0
    assert session.metrics.avg_kbps == 750
    assert session.metrics.switches_per_min == 0


def test_full_buffer_waits_instead_of_fetching() -> None:
    # 150,000 B at 12.5 MB/s + 50 ms: 62 ms per 4 s segment, so the buffer fills to 60 s.
    session = simulate_session(Fixed(0), constant(100_000, latency_ms=50), pensieve_video())
    waited = [s for s in session.segments if s.wait_s > 0]
    assert waited, "the buffer should have filled"
    assert max(s.buffer_s for s in session.segments) <= 60
    for s in waited:  # each request leaves room for exactly one segment (56 s + 4 s)
        assert s.buffer_s + s.download_s == pytest.approx(60)
    for s in waited[1:]:  # steady state: one segment fetched per segment played
        assert s.wait_s + s.download_s == pytest.approx(4.0)
    assert session.metrics.rebuffer_ratio == 0


def test_outage_stalls_for_exactly_its_excess() -> None:
    # 1 MB/s for 1 s, a 10 s outage, then 1 MB/s; three 500 kB segments of 4 s.
    trace = Trace("outage", (Period(1.0, 8000, 0), Period(10.0, 0, 0), Period(100.0, 8000, 0)))
    video = Video((1000,), 4.0, ((500_000,),) * 3)
    session = simulate_session(Fixed(0), trace, video)
    downloads = [s.download_s for s in session.segments]
    assert downloads == pytest.approx([0.5, 0.5, 10.5])
    assert session.startup_s == pytest.approx(0.5)
    # Segment 2 starts at 1.0 s with 7.5 s buffered and arrives at 11.5 s: 3 s of stall.
    assert [s.stall_s for s in session.segments] == pytest.approx([0, 0, 3.0])
    assert session.end_s == pytest.approx(15.5)  # 0.5 startup + 12 played + 3 stalled
    assert session.metrics.rebuffer_ratio == pytest.approx(3 / 15)
    assert session.metrics.stalls_per_hour == pytest.approx(3600 / 15)
    # QoE_lin: 1 Mbps per segment; the startup wait is the first segment's stall.
    assert session.metrics.qoe_lin == pytest.approx((1 - 4.3 * 0.5 + 1 + 1 - 4.3 * 3) / 3)


def test_context_the_rule_sees() -> None:
    rule = Scripted([0, 2, 5])
    video = pensieve_video()
    session = simulate_session(rule, constant(3000, latency_ms=20), video)
    first, second = rule.seen[0], rule.seen[1]
    assert (first.playing, first.buffer_s, first.now_s, first.last_index) == (False, 0, 0, None)
    assert first.next_sizes == video.sizes
    assert first.max_buffer_s == 60 and first.segments_total == 48
    assert second.playing and second.last_index == 0 and second.segment_index == 1
    assert second.now_s == session.segments[0].end_s
    assert second.buffer_s == 4.0
    assert len(second.next_sizes or ()) == 47
    (download,) = second.downloads
    assert (download.bytes, download.index) == (150_000, 0)
    assert download.duration_s == pytest.approx(0.02 + 150_000 / 375_000)
    assert all(len(ctx.downloads) <= 20 for ctx in rule.seen)
    assert rule.seen[-1].downloads[-1].end_s == session.segments[-2].end_s


# -- conservation -------------------------------------------------------------------------


class Random:
    name = "random"

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def initial_state(self) -> None:
        return None

    def choose(self, ctx: AbrContext, state: None) -> tuple[int, None]:
        return self.rng.randrange(len(ctx.bitrates_kbps)), state


@pytest.mark.parametrize("name", ["norway-3g", "fcc"])
def test_conservation_on_real_traces(name: str) -> None:
    video = pensieve_video()
    traces = family(name)[:40]
    for session in simulate(lambda: Random(7), traces, video):
        chosen = sum(video.sizes[s.index][s.rung] for s in session.segments)
        assert session.bytes == sum(s.bytes for s in session.segments) == chosen
        clock = math.fsum(s.wait_s + s.download_s for s in session.segments)
        assert clock == pytest.approx(session.segments[-1].end_s, abs=1e-6)
        played = math.fsum(s.media_s for s in session.segments)
        stalled = math.fsum(s.stall_s for s in session.segments)
        assert played == video.duration_s == 192
        assert session.end_s - session.startup_s == pytest.approx(played + stalled, abs=1e-6)
        assert all(0 <= s.buffer_s <= 60 + 1e-9 for s in session.segments)


def test_nearly_dead_trace_finishes_fast() -> None:
    # 125 B per 1001 s: each 150 kB segment takes 1,200 loops, skipped arithmetically.
    trace = Trace("dead", (Period(1.0, 1, 0), Period(1000.0, 0, 0)))
    start = time.perf_counter()
    session = simulate_session(Fixed(0), trace, pensieve_video())
    assert time.perf_counter() - start < 0.5
    assert session.segments[0].download_s == pytest.approx(1199 * 1001 + 1.0)
    assert session.metrics.rebuffer_ratio > 0.99


def test_startup_after_several_segments() -> None:
    config = SimConfig(startup_segments=3)
    rule = Scripted([0])
    session = simulate_session(rule, constant(1000), pensieve_video(), config)
    assert [ctx.playing for ctx in rule.seen[:4]] == [False, False, False, True]
    assert session.startup_s == pytest.approx(3 * 1.2)  # 150,000 B at 125,000 B/s each
    assert session.end_s == pytest.approx(session.startup_s + 192)


def test_rule_out_of_range_is_an_error() -> None:
    with pytest.raises(SimulationError, match=r"rule fixed: segment 0: chose rung 6 of 0\.\.5"):
        simulate_session(Fixed(6), constant(1000), pensieve_video())


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="max_buffer_s"):
        simulate_session(Fixed(0), constant(1000), pensieve_video(), SimConfig(max_buffer_s=3))


def test_same_inputs_same_results() -> None:
    traces = family("norway-3g")[:5]
    first = simulate(lambda: Random(1), traces, pensieve_video())
    assert first == simulate(lambda: Random(1), traces, pensieve_video())


# -- QoE by hand --------------------------------------------------------------------------


def record(index: int, rung: int, stall_s: float) -> SegmentRecord:
    return SegmentRecord(index, rung, 1, 4.0, 0.0, 1.0, stall_s, 4.0, float(index))


def test_qoe_by_hand() -> None:
    ladder = (300, 750, 1200)
    segments = [record(0, 0, 0.0), record(1, 2, 0.5), record(2, 1, 0.0)]
    m = session_metrics(segments, startup_s=1.0, ladder_kbps=ladder)
    # lin: 0.3 - 4.3 x 1 (startup); 1.2 - 4.3 x 0.5 - 0.9; 0.75 - 0.45
    assert m.qoe_lin == pytest.approx((-4.0 - 1.85 + 0.3) / 3)
    # log: q = log(R / 300): 0 - 2.66; log 4 - 1.33 - log 4; log 2.5 - |log 2.5 - log 4|
    assert m.qoe_log == pytest.approx((-2.66 - 1.33 + math.log(2.5) - math.log(1.6)) / 3)
    assert m.rebuffer_ratio == pytest.approx(0.5 / 12.5)
    assert m.stalls_per_hour == pytest.approx(3600 / 12.5)
    assert m.avg_kbps == pytest.approx(750)
    assert m.switches_per_min == pytest.approx(2 * 60 / 12)
    assert m.startup_s == 1.0


def test_mean_metrics() -> None:
    a = SessionMetrics(1, 2, 0.1, 10, 1000, 1, 2)
    b = SessionMetrics(3, 0, 0.3, 30, 3000, 3, 4)
    assert mean_metrics([a, b]) == SessionMetrics(2, 1, 0.2, 20, 2000, 2, 3)


# -- the videos ---------------------------------------------------------------------------


def test_pensieve_video_sizes() -> None:
    video = pensieve_video()
    assert video.bitrates_kbps == (300, 750, 1200, 1850, 2850, 4300)
    assert (video.segment_s, video.segments, video.duration_s) == (4.0, 48, 192.0)
    assert set(video.sizes) == {(150_000, 375_000, 600_000, 925_000, 1_425_000, 2_150_000)}


def test_real_manifest_sizes(title_dir: Path) -> None:
    video = video_from_manifest(title_dir / "manifest.json")
    # The tiny title's two video rungs (240p, 360p), lowest first; audio is left out.
    assert len(video.bitrates_kbps) == 2
    assert video.bitrates_kbps[0] < video.bitrates_kbps[1]
    assert video.segments == 3  # 4 s, 4 s, 2 s
    assert video.duration_s == pytest.approx(TINY_DURATION_S)
    for i, row in enumerate(video.sizes):
        on_disk = tuple(
            (title_dir / r / f"seg_{i:05d}.m4s").stat().st_size for r in ("240p", "360p")
        )
        assert row == on_disk
    session = simulate_session(Fixed(1), constant(2000), video)
    assert session.bytes == sum(row[1] for row in video.sizes)
    assert session.end_s == pytest.approx(session.startup_s + TINY_DURATION_S)


def test_bad_manifests(tmp_path: Path) -> None:
    (tmp_path / "garbage.json").write_text("{not json")
    (tmp_path / "audio.json").write_text(
        '{"files": {}, "duration_s": 4, "renditions": '
        '[{"name": "audio", "kind": "audio", "average_bandwidth": 1, "segments": 1}]}'
    )
    with pytest.raises(UserError, match=r"garbage\.json: not a manifest"):
        video_from_manifest(tmp_path / "garbage.json")
    with pytest.raises(UserError, match=r"audio\.json: no video rendition"):
        video_from_manifest(tmp_path / "audio.json")
    with pytest.raises(UserError, match="cannot read"):
        video_from_manifest(tmp_path / "missing.json")


# -- speed --------------------------------------------------------------------------------


def test_300_sessions_in_under_5_s() -> None:
    traces = (family("fcc") + family("norway-3g"))[:300]
    video = pensieve_video()
    start = time.perf_counter()
    sessions = simulate(lambda: Fixed(2), traces, video)
    elapsed = time.perf_counter() - start
    assert len(sessions) == 300
    assert elapsed < 5, f"{elapsed:.2f} s for 300 sessions"


# -- what the CLI runs --------------------------------------------------------------------


@pytest.fixture
def traces_dir(tmp_path: Path) -> Path:
    """Three small Pensieve-format traces: 1 Mbps, 3 Mbps, and 2 Mbps with outages."""
    for name, mbps in (("a.txt", [1.0]), ("b.txt", [3.0]), ("c.txt", [2.0, 2.0, 0.0, 2.0, 0.0])):
        (tmp_path / name).write_text("".join(f"{t}\t{v}\n" for t, v in enumerate(mbps * 20)))
    return tmp_path


def test_run_simulation_shape(traces_dir: Path) -> None:
    from player.abr import DEFAULT_RULE, RULES

    result = run_simulation(["all"], traces_dir, "pensieve")
    assert result["default"] == DEFAULT_RULE
    assert set(result) == {*RULES, "default"}
    keys = ["qoe_lin", "qoe_log", "rebuffer_ratio", "stalls_per_hour", "avg_kbps",
            "switches_per_min", "startup_s", "sessions"]  # fmt: skip
    for name in RULES:
        assert list(result[name]) == keys
        assert result[name]["sessions"] == 3
        assert all(isinstance(v, float) for k, v in result[name].items() if k != "sessions")
    table = format_table(result)
    assert table.row_count == len(RULES)
    console = Console(width=150, record=True)
    console.print(table)
    assert f"{DEFAULT_RULE} *" in console.export_text()


def test_run_simulation_some_rules_and_a_manifest(traces_dir: Path, title_dir: Path) -> None:
    from player.abr import RULES

    name = next(iter(RULES))
    result: dict[str, Any] = run_simulation([name], traces_dir, str(title_dir / "manifest.json"))
    assert list(result) == [name, "default"]


def test_run_simulation_unknown_rule(traces_dir: Path) -> None:
    with pytest.raises(UserError, match="unknown ABR rule 'nope'; known: "):
        run_simulation(["nope"], traces_dir, "pensieve")
