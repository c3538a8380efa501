"""Quality of experience of a playback session, from its per-segment records. Pure.

The two QoE scores are Pensieve's (Mao et al., "Neural Adaptive Video Streaming with
Pensieve", SIGCOMM 2017, section 5.1; the reward in the authors' ``test/rl_no_training.py``):
for each segment ``n``, ``q(R_n) - mu * T_n - |q(R_n) - q(R_n-1)|``, averaged over segments,
where ``R_n`` is the segment's bitrate and ``T_n`` the stall its download caused.

- QoE_lin: ``q(R) = R`` in Mbps, ``mu = 4.3`` (1 s of stall costs as much as the top rung).
- QoE_log: ``q(R) = log(R / R_min)`` with ``R_min`` the ladder's lowest rung, ``mu = 2.66``.

The startup wait counts as stall of the first segment, as in Pensieve's simulator where the
buffer starts empty. The first segment pays no smoothness penalty (Pensieve charges it
against its default rung, 750 kbps; we charge nothing, as there was no previous segment).

Stall time elsewhere (rebuffer ratio, stalls per hour) is after startup only, like the
industry's rebuffering ratio; startup delay is reported by itself.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

LIN_REBUFFER_PENALTY = 4.3  # per second of stall, in Mbps of bitrate
LOG_REBUFFER_PENALTY = 2.66  # per second of stall, in log(R / R_min) units


@dataclass(frozen=True, slots=True)
class SegmentRecord:
    """What happened to one segment of a session."""

    index: int  # segment number, 0-based
    rung: int  # 0 = lowest
    bytes: int
    media_s: float  # seconds of media it holds
    wait_s: float  # idle before its request, the buffer being full
    download_s: float  # request to last byte, latency included
    stall_s: float  # playback stalled while it downloaded (0 before startup)
    buffer_s: float  # buffered media just after it arrived
    end_s: float  # session clock when it arrived


@dataclass(frozen=True, slots=True)
class SessionMetrics:
    qoe_lin: float
    qoe_log: float
    rebuffer_ratio: float  # stall / (stall + play), after startup
    stalls_per_hour: float  # stall events per hour of stall + play
    avg_kbps: float  # declared bitrate of the rungs played, weighted by media time
    switches_per_min: float  # rung changes per minute of media
    startup_s: float  # request of the first segment to the start of playback


def qoe(
    segments: Sequence[SegmentRecord], startup_s: float, quality: Sequence[float], penalty: float
) -> float:
    """Mean per segment of ``quality[rung] - penalty * stall - |quality change|``."""
    total = -penalty * startup_s  # the first segment's wait
    previous = quality[segments[0].rung]  # so the first segment pays no change
    for s in segments:
        q = quality[s.rung]
        total += q - penalty * s.stall_s - abs(q - previous)
        previous = q
    return total / len(segments)


def qoe_lin(
    segments: Sequence[SegmentRecord], startup_s: float, ladder_kbps: Sequence[float]
) -> float:
    return qoe(segments, startup_s, [kbps / 1000 for kbps in ladder_kbps], LIN_REBUFFER_PENALTY)


def qoe_log(
    segments: Sequence[SegmentRecord], startup_s: float, ladder_kbps: Sequence[float]
) -> float:
    quality = [math.log(kbps / ladder_kbps[0]) for kbps in ladder_kbps]
    return qoe(segments, startup_s, quality, LOG_REBUFFER_PENALTY)


def session_metrics(
    segments: Sequence[SegmentRecord], startup_s: float, ladder_kbps: Sequence[float]
) -> SessionMetrics:
    """Every metric of one session; ``ladder_kbps`` is the whole ladder, lowest first."""
    if not segments:
        raise ValueError("segments: a session needs at least one segment")
    play_s = sum(s.media_s for s in segments)
    stall_s = sum(s.stall_s for s in segments)
    stalls = sum(1 for s in segments if s.stall_s > 0)
    switches = sum(1 for a, b in itertools.pairwise(segments) if a.rung != b.rung)
    return SessionMetrics(
        qoe_lin=qoe_lin(segments, startup_s, ladder_kbps),
        qoe_log=qoe_log(segments, startup_s, ladder_kbps),
        rebuffer_ratio=stall_s / (stall_s + play_s),
        stalls_per_hour=stalls * 3600 / (stall_s + play_s),
        avg_kbps=sum(ladder_kbps[s.rung] * s.media_s for s in segments) / play_s,
        switches_per_min=switches * 60 / play_s,
        startup_s=startup_s,
    )


def mean_metrics(sessions: Sequence[SessionMetrics]) -> SessionMetrics:
    """Each metric's mean over sessions (every session weighs the same)."""
    if not sessions:
        raise ValueError("sessions: nothing to average")
    return SessionMetrics(
        **{
            f.name: sum(getattr(s, f.name) for s in sessions) / len(sessions)
            for f in fields(SessionMetrics)
        }
    )
