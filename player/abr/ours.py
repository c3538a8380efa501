"""``ours``: streamcdn's own ABR rule, the default: stalls first, bitrate second.

It is model-predictive control (Yin et al., SIGCOMM 2015) made more robust where the
reference rules fail on real networks:

1. **What throughput to plan with.** The harmonic mean of the last ``window`` downloads
   (it discounts the odd fast sample, as RobustMPC's does), lowered by the recent
   *relative* prediction error, but by its mean rather than its maximum: RobustMPC's
   maximum makes one bad guess pin the plan down for five segments, and on 3G that
   keeps it at the bottom rungs long after the network recovered. The throughput is
   also capped by the slowest of the last few downloads scaled by ``floor_factor``
   when the buffer is short: near the stall line only what the network surely does counts.
   A level shift up (the last ``shift_samples`` downloads all faster than ``shift_ratio``
   times every earlier one in the window) restarts the estimate from those downloads,
   with only the newest prediction error: the harmonic mean would otherwise take the
   whole window to follow a link that got faster (a Wi-Fi handover, a cell with room).
2. **What a plan is worth.** Every sequence of rungs over the next ``horizon`` segments
   is scored with the QoE the evaluation uses (bitrate in Mbps, minus 4.3 per second of
   stall, minus the size of each switch in Mbps), using the real sizes of the next
   segments when the playlist gives them (``#EXT-X-BITRATE``), plus a value for the
   buffer left at the end of the horizon (``buffer_value`` per second, up to
   ``buffer_target_s``): a plan that drains the buffer to win bitrate now pays for the
   stalls it sets up after the horizon, which a 5-segment horizon alone cannot see.
   Near the end of a title that value fades: buffer still held when the last segment
   is in is bandwidth the title never used (with a 40 s buffer at the end of a 192 s
   title, a fifth of it), so buffer is worth nothing beyond the media left after the
   horizon plus a safety margin. The margin is learned from the session's own network:
   the worst drawdown of the last ``margin_window`` downloads, the longest stretch, in
   seconds, by which they fell behind the pace of their own mean throughput, i.e. the
   buffer it took to ride out the worst slow spell seen. A steady link has almost none
   and spends its buffer on bitrate towards the end; a link with outages keeps enough
   for one more. Until two downloads are in, the margin is ``end_margin_s``.
3. **Latency.** Each download's round trip is estimated from the fastest recent
   download (time minus bytes at the planned throughput) and added to every planned
   fetch, so small segments on high-latency links are not over-estimated.

The first segment, before any measurement, is the lowest rung: the startup wait counts
as stall, and nothing is known yet. All plans of one decision are scored at once with
numpy (6^5 = 7,776 plans in about a millisecond).

Pure: the rule keeps its recent predictions in its state; no clock, no I/O.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np

from player.abr.base import AbrContext, Download

REBUFFER_PENALTY = 4.3  # QoE_lin: per second of stall, in Mbps-equivalents (Pensieve)


@dataclass(frozen=True, slots=True)
class OursState:
    predictions: tuple[tuple[float, float], ...] = ()  # (predicted kbps, then measured kbps)
    pending: float | None = None  # the prediction made for the download in flight


@dataclass(frozen=True)
class Ours:
    name: str = "ours"
    horizon: int = 5  # segments planned ahead
    window: int = 5  # downloads in the throughput estimate
    error_window: int = 5  # predictions whose error lowers the estimate
    buffer_value: float = 0.6  # Mbps-equivalent per second of buffer left at the horizon
    buffer_target_s: float = 40.0  # buffer beyond this is worth nothing more
    floor_factor: float = 1.0  # near the stall line, plan with the slowest recent download
    short_buffer_s: float = 8.0  # ... when the buffer is below this
    end_margin_s: float = 40.0  # buffer kept at the end before the network is measured
    margin_window: int = 20  # downloads whose worst drawdown is the end margin
    shift_samples: int = 2  # downloads that, all faster than the rest, are a level shift
    shift_ratio: float = 1.5  # ... by this factor over the fastest earlier one

    def initial_state(self) -> OursState:
        return OursState()

    def choose(self, ctx: AbrContext, state: OursState) -> tuple[int, OursState]:
        rungs = len(ctx.bitrates_kbps)
        state = _record(state, ctx.downloads)
        samples = [_kbps(d) for d in ctx.downloads[-self.window :] if d.duration_s > 0]
        samples = [s for s in samples if s > 0]
        if not samples or rungs == 1:
            return 0, state
        predictions = state.predictions[-self.error_window :]
        if _shifted_up(samples, self.shift_samples, self.shift_ratio):
            samples = samples[-self.shift_samples :]
            predictions = predictions[-(self.shift_samples - 1) :] if self.shift_samples > 1 else ()
        harmonic = len(samples) / sum(1 / s for s in samples)
        errors = [abs(p - m) / m for p, m in predictions if m > 0]
        error = sum(errors) / len(errors) if errors else 0.0
        estimate = harmonic / (1 + error)
        if ctx.buffer_s < self.short_buffer_s:
            estimate = min(estimate, self.floor_factor * min(samples[-3:]))
        latency_s = _latency(ctx.downloads[-self.window :], harmonic)
        recent = [d for d in ctx.downloads[-self.margin_window :] if d.duration_s > 0]
        margin_s = _worst_drawdown_s(recent) if len(recent) >= 2 else self.end_margin_s
        index = self._plan(ctx, estimate, latency_s, margin_s)
        return index, OursState(state.predictions, pending=estimate)

    def _plan(self, ctx: AbrContext, kbps: float, latency_s: float, margin_s: float) -> int:
        rungs = len(ctx.bitrates_kbps)
        left = (
            ctx.segments_total - ctx.segment_index
            if ctx.segments_total is not None
            else self.horizon
        )
        horizon = max(1, min(self.horizon, left))
        plans = _plans(rungs, horizon)  # (horizon, P) rung indices
        mbps = np.asarray(ctx.bitrates_kbps, dtype=float) / 1000
        sizes = _sizes(ctx, horizon)  # (horizon, rungs) bytes
        fetch_s = latency_s + sizes[np.arange(horizon)[:, None], plans] * 8 / 1000 / kbps
        buffer = np.full(plans.shape[1], ctx.buffer_s)
        score = np.zeros(plans.shape[1])
        previous = mbps[ctx.last_index] if ctx.last_index is not None else mbps[plans[0]]
        for step in range(horizon):
            stall = np.maximum(fetch_s[step] - buffer, 0.0)
            if not ctx.playing and step == 0:
                stall = fetch_s[step]  # startup: the wait is the stall
            buffer = np.maximum(buffer - fetch_s[step], 0.0) + ctx.segment_s
            buffer = np.minimum(buffer, ctx.max_buffer_s)
            rate = mbps[plans[step]]
            score += rate - REBUFFER_PENALTY * stall - np.abs(rate - previous)
            previous = rate
        target_s = self.buffer_target_s
        if ctx.segments_total is not None:  # buffer left when the title is all in is waste
            target_s = min(target_s, (left - horizon) * ctx.segment_s + margin_s)
        score += self.buffer_value * np.minimum(buffer, target_s)
        best = int(np.argmax(score))  # ties: the first, i.e. the lower first rung
        return int(plans[0, best])


@functools.cache
def _plans(rungs: int, horizon: int) -> np.ndarray:
    """Every sequence of rungs over the horizon, one per column."""
    return np.array(list(itertools.product(range(rungs), repeat=horizon)), dtype=np.intp).T


def _sizes(ctx: AbrContext, horizon: int) -> np.ndarray:
    """Bytes of the next ``horizon`` segments per rung: the known sizes, else the bitrate."""
    nominal = [b * 1000 / 8 * ctx.segment_s for b in ctx.bitrates_kbps]
    known = list(ctx.next_sizes or ())
    rows = [known[k] if k < len(known) and len(known[k]) == len(nominal) else nominal
            for k in range(horizon)]  # fmt: skip
    return np.asarray(rows, dtype=float)


MIN_DURATION_S = 1e-3  # a download measured faster than this is timed at this


def _kbps(d: Download) -> float:
    return d.bytes * 8 / 1000 / max(d.duration_s, MIN_DURATION_S)


def _shifted_up(kbps: list[float], newest: int, ratio: float) -> bool:
    """The newest ``newest`` samples are all ``ratio`` times faster than every older one."""
    if newest < 1 or len(kbps) <= newest:
        return False
    return min(kbps[-newest:]) > ratio * max(kbps[:-newest])


def _worst_drawdown_s(downloads: list[Download]) -> float:
    """The most seconds the downloads, in order, fell behind the pace of their mean
    throughput (a run of slow ones adds up; a fast one pays some back)."""
    mean = sum(_kbps(d) for d in downloads) / len(downloads)
    if mean <= 0:
        return 0.0
    behind = worst = 0.0
    for d in downloads:
        behind = max(0.0, behind + d.duration_s - d.bytes * 8 / 1000 / mean)
        worst = max(worst, behind)
    return worst


def _latency(downloads: tuple[Download, ...] | list[Download], kbps: float) -> float:
    """The round trip, from the download that spent the least time beyond its bytes."""
    if kbps <= 0:
        return 0.0
    extra = [d.duration_s - d.bytes * 8 / 1000 / kbps for d in downloads if d.duration_s > 0]
    return max(0.0, min(extra, default=0.0))


def _record(state: OursState, downloads: tuple[Download, ...]) -> OursState:
    """Pair the prediction made for the last download with what it measured."""
    if state.pending is None or not downloads or downloads[-1].duration_s <= 0:
        return state
    measured = _kbps(downloads[-1])
    kept = (*state.predictions, (state.pending, measured))[-20:]
    return OursState(kept, None)
