"""A virtual-clock ABR simulator in the manner of Sabre and Pensieve's environment.

One session plays a :class:`~player.video.Video` over one trace. Segments are downloaded
back to back, each after one decision of the rule (``choose(ctx, state)``, see
player/abr/base.py). The modelling choices, each a Sabre or Pensieve one:

- The clock and the trace start together at 0 for every session (offset 0, deterministic;
  Pensieve picks a random offset, Sabre starts at 0 like us).
- A request waits the latency of the trace period it starts in, then its bytes flow at each
  period's bandwidth (traces loop; see player/traces.py).
- Playback starts when ``startup_segments`` segments (default 1, like both) are in; the
  startup delay is the time to that point, and the rule sees ``playing=False`` until then.
- Once playing, the buffer drains in real time while segments download; when it empties the
  player stalls until the segment being fetched arrives.
- Before a request that would take the buffer above ``max_buffer_s`` (60 s, Pensieve's
  BUFFER_THRESH) the player idles until it fits (Sabre's rule); the trace moves on meanwhile.
- The session ends when the last segment has played out.

Each session checks its own conservation when it finishes: the bytes the link carried are
the sum of the chosen segments' sizes, the link's clock is the session's, and after startup
played + stalled time is the elapsed time, exactly up to float rounding.
"""

from __future__ import annotations

import functools
import math
import operator
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from player.abr.base import AbrContext, AbrRule, Download
from player.qoe import SegmentRecord, SessionMetrics, mean_metrics, session_metrics
from player.traces import Trace, TraceCursor, load_traces
from player.video import Video, pensieve_video, video_from_manifest
from streamcdn.errors import UserError


@dataclass(frozen=True, slots=True)
class SimConfig:
    max_buffer_s: float = 60.0  # no request that would buffer more (Pensieve's BUFFER_THRESH)
    startup_segments: int = 1  # playback starts once this many segments are in
    history: int = 20  # recent downloads shown to the rule

    def check(self, video: Video) -> None:
        if self.startup_segments < 1:
            raise ValueError(f"startup_segments must be >= 1, got {self.startup_segments}")
        if self.history < 1:
            raise ValueError(f"history must be >= 1, got {self.history}")
        if self.max_buffer_s < self.startup_segments * video.segment_s:
            raise ValueError(
                f"max_buffer_s must hold the startup segments "
                f"({self.startup_segments} x {video.segment_s} s), got {self.max_buffer_s}"
            )


class SimulationError(RuntimeError):
    """A rule answered out of range, or a session broke one of its invariants."""


@dataclass(frozen=True, slots=True)
class SessionResult:
    rule: str
    trace: str
    segments: tuple[SegmentRecord, ...]
    startup_s: float
    end_s: float  # the last segment has played out
    bytes: int
    metrics: SessionMetrics


def simulate(
    rule_factory: Callable[[], AbrRule],
    traces: Iterable[Trace],
    video: Video,
    config: SimConfig = SimConfig(),
) -> list[SessionResult]:
    """One session per trace, each with a fresh rule from ``rule_factory``."""
    return [simulate_session(rule_factory(), trace, video, config) for trace in traces]


def simulate_session(
    rule: AbrRule,
    trace: Trace,
    video: Video,
    config: SimConfig = SimConfig(),
) -> SessionResult:
    config.check(video)
    link = TraceCursor(trace)
    ladder, sizes, segments = video.bitrates_kbps, video.sizes, video.segments
    history: deque[Download] = deque(maxlen=config.history)
    records: list[SegmentRecord] = []
    state = rule.initial_state()
    now_s = buffer_s = 0.0
    startup_s: float | None = None
    last: int | None = None
    for i in range(segments):
        media_s = video.duration_of(i)
        wait_s = 0.0
        if startup_s is not None and buffer_s + media_s > config.max_buffer_s:
            wait_s = buffer_s + media_s - config.max_buffer_s
            link.advance(wait_s)
            now_s += wait_s
            buffer_s -= wait_s
        ctx = AbrContext(
            bitrates_kbps=ladder,
            segment_s=video.segment_s,
            buffer_s=buffer_s,
            max_buffer_s=config.max_buffer_s,
            now_s=now_s,
            downloads=tuple(history),
            last_index=last,
            segment_index=i,
            segments_total=segments,
            next_sizes=sizes[i:],
            playing=startup_s is not None,
        )
        choice, state = rule.choose(ctx, state)
        rung = _checked_rung(rule.name, i, choice, len(ladder))
        size = sizes[i][rung]
        download_s = link.fetch(size)
        now_s += download_s
        stall_s = 0.0
        if startup_s is not None:
            stall_s = max(0.0, download_s - buffer_s)
            buffer_s = max(0.0, buffer_s - download_s)
        buffer_s += media_s
        if startup_s is None and (i + 1 >= config.startup_segments or i + 1 == segments):
            startup_s = now_s
        records.append(
            SegmentRecord(i, rung, size, media_s, wait_s, download_s, stall_s, buffer_s, now_s)
        )
        history.append(Download(size, download_s, now_s, rung))
        last = rung
    assert startup_s is not None  # set by the last segment at the latest
    result = SessionResult(
        rule=rule.name,
        trace=trace.name,
        segments=tuple(records),
        startup_s=startup_s,
        end_s=now_s + buffer_s,
        bytes=link.fetched_bytes,
        metrics=session_metrics(records, startup_s, ladder),
    )
    _check_conservation(result, video, config, link.elapsed_s)
    return result


def _checked_rung(rule: str, segment: int, choice: Any, rungs: int) -> int:
    try:
        rung = operator.index(choice)
    except TypeError:
        raise SimulationError(
            f"rule {rule}: segment {segment}: chose {choice!r}, not a rung number"
        ) from None
    if not 0 <= rung < rungs:
        raise SimulationError(
            f"rule {rule}: segment {segment}: chose rung {rung} of 0..{rungs - 1}"
        )
    return rung


def _check_conservation(
    result: SessionResult, video: Video, config: SimConfig, link_clock_s: float
) -> None:
    def fail(what: str) -> SimulationError:
        return SimulationError(f"rule {result.rule} on trace {result.trace}: {what}")

    # Times agree up to float rounding over a few hundred additions (relative: a session
    # over a nearly dead trace can last days).
    segments = result.segments
    chosen = sum(video.sizes[s.index][s.rung] for s in segments)
    if result.bytes != chosen:
        raise fail(f"the link carried {result.bytes} bytes, the segments hold {chosen}")
    clock_s = sum(s.wait_s + s.download_s for s in segments)
    if not (
        math.isclose(clock_s, segments[-1].end_s, rel_tol=1e-9, abs_tol=1e-6)
        and math.isclose(link_clock_s, segments[-1].end_s, rel_tol=1e-9, abs_tol=1e-6)
    ):
        raise fail(
            f"clocks disagree: session {segments[-1].end_s}, waits + downloads "
            f"{clock_s}, link {link_clock_s}"
        )
    played_s = sum(s.media_s for s in segments)
    stalled_s = sum(s.stall_s for s in segments)
    if not math.isclose(
        result.startup_s + played_s + stalled_s, result.end_s, rel_tol=1e-9, abs_tol=1e-6
    ):
        raise fail(
            f"startup {result.startup_s} + played {played_s} + stalled {stalled_s} "
            f"!= elapsed {result.end_s}"
        )
    if any(not 0 <= s.buffer_s <= config.max_buffer_s * (1 + 1e-9) for s in segments):
        raise fail(f"the buffer left [0, {config.max_buffer_s}] s")


# -- what the CLI runs -------------------------------------------------------------------


def load_video(video: str) -> Video:
    """``"pensieve"`` for :func:`pensieve_video`, else the path of a title's manifest.json."""
    return pensieve_video() if video == "pensieve" else video_from_manifest(Path(video))


def run_simulation(abr_names: list[str], traces_dir: Path, video: str) -> dict[str, Any]:
    """Every named rule (or ``["all"]``) on every trace in ``traces_dir``: mean metrics.

    ``{"<rule>": {"qoe_lin": x, ..., "startup_s": x, "sessions": n}, "default": "<rule>"}``.
    """
    from player.abr import DEFAULT_RULE, RULES, make_rule  # written apart from the simulator

    names = list(RULES) if "all" in abr_names else list(dict.fromkeys(abr_names))
    unknown = [name for name in names if name not in RULES]
    if unknown:
        raise UserError(f"unknown ABR rule {unknown[0]!r}; known: {', '.join(RULES)}")
    traces = load_traces(traces_dir)
    loaded = load_video(video)
    result: dict[str, Any] = {}
    for name in names:
        sessions = simulate(functools.partial(make_rule, name), traces, loaded)
        mean = mean_metrics([s.metrics for s in sessions])
        result[name] = {**asdict(mean), "sessions": len(sessions)}
    result["default"] = DEFAULT_RULE
    return result


def format_table(result: dict[str, Any]) -> Table:
    """One row per rule of a :func:`run_simulation` result; the default rule in bold."""
    default = result.get("default")
    table = Table(title="ABR rules, mean per session (* = default)")
    for column, justify in COLUMNS:
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for name, m in result.items():
        if name == "default":
            continue
        table.add_row(
            f"{name} *" if name == default else name,
            f"{m['qoe_lin']:.3f}",
            f"{m['qoe_log']:.3f}",
            f"{m['rebuffer_ratio'] * 100:.2f}",
            f"{m['stalls_per_hour']:.1f}",
            f"{m['avg_kbps']:.0f}",
            f"{m['switches_per_min']:.2f}",
            f"{m['startup_s']:.2f}",
            str(m["sessions"]),
            style="bold" if name == default else None,
        )
    return table


COLUMNS = (
    ("rule", "left"),
    ("QoE lin", "right"),
    ("QoE log", "right"),
    ("rebuffer %", "right"),
    ("stalls/h", "right"),
    ("avg kbps", "right"),
    ("switches/min", "right"),
    ("startup s", "right"),
    ("sessions", "right"),
)
