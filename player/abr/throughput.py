"""Throughput rule: hls.js's bandwidth estimator and level choice, as pure values.

Follows hls.js v1.0 (`src/utils/ewma.ts`, `src/utils/ewma-bandwidth-estimator.ts`,
`src/controller/abr-controller.ts` `_nextABRAutoLevel` / `_findBestLevel`, `src/config.ts`).

Defaults and their sources (hls.js `src/config.ts` unless noted):

- ``fast_half_life_s = 3.0`` and ``slow_half_life_s = 9.0``: ``abrEwmaFastVoD`` / ``abrEwmaSlowVoD``
  (the live values are the same, 3 and 9). Each sample is weighted by its download duration in
  seconds and the estimate is the *minimum* of the two averages (ewma-bandwidth-estimator.ts).
- ``default_estimate_kbps = 500.0``: ``abrEwmaDefaultEstimate: 5e5`` (500 kbps), used until the
  samples' total weight reaches ``MIN_WEIGHT_S = 0.001`` (``minWeight_``).
- ``MIN_DELAY_S = 0.05``: ``minDelayMs_ = 50``; shorter downloads count as 50 ms.
- ``bw_factor = 0.95``: ``abrBandWidthFactor``, for the current rung and those below it.
- ``bw_up_factor = 0.7``: ``abrBandWidthUpFactor``, for rungs above the current one.
- ``max_starvation_delay_s = 4.0``: ``maxStarvationDelay``.

The level choice, as in ``_findBestLevel``: from the top down, the first rung whose bitrate is
*strictly* below the factored estimate and whose fetch time (bitrate x segment / factored
estimate) is below the buffer ahead. If none fits, a second pass allows the fetch to eat
``min(segment_s, max_starvation_delay_s)`` more than the buffer; if still none, rung 0. For a
live stream (``segments_total is None``) the fetch-time condition is dropped, as hls.js does.
Before the first segment the "current" rung is 0, as ``lastLoadedFragLevel`` starts at 0.

Simplified: no bitrate-test fragment (``bitrateTestDelay``), no ``abrMaxWithRealBitrate``, no
emergency abandonment of a download in flight (the interface decides between segments), no
playback-rate scaling, and samples use ``Download.duration_s`` (request to last byte) where
hls.js measures request to end of parsing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from player.abr.base import AbrContext, Download

MIN_WEIGHT_S = 0.001
MIN_DELAY_S = 0.05


def sample_kbps(d: Download) -> float:
    """Throughput of one download in kbit/s, its duration floored at MIN_DELAY_S as hls.js does."""
    return d.bytes * 8 / 1000 / max(d.duration_s, MIN_DELAY_S)


@dataclass(frozen=True, slots=True)
class Ewma:
    """An exponentially weighted moving average whose samples carry weights (hls.js ewma.ts)."""

    half_life_s: float
    estimate: float = 0.0
    total_weight: float = 0.0

    def sample(self, weight: float, value: float) -> Ewma:
        adj_alpha = 0.5 ** (weight / self.half_life_s)
        estimate = value * (1 - adj_alpha) + adj_alpha * self.estimate
        return replace(self, estimate=estimate, total_weight=self.total_weight + weight)

    def value(self) -> float:
        # Undo the bias towards the initial zero while few samples have been seen.
        zero_factor = 1 - 0.5 ** (self.total_weight / self.half_life_s)
        return self.estimate / zero_factor if zero_factor > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BandwidthEstimator:
    """Two EWMAs of throughput; the estimate is the lower one (adapts down fast, up slowly)."""

    fast: Ewma
    slow: Ewma
    seen_until_s: float = -math.inf  # end_s of the newest download already sampled

    @classmethod
    def new(cls, fast_half_life_s: float, slow_half_life_s: float) -> BandwidthEstimator:
        return cls(Ewma(fast_half_life_s), Ewma(slow_half_life_s))

    def sample(self, d: Download) -> BandwidthEstimator:
        weight = max(d.duration_s, MIN_DELAY_S)
        kbps = sample_kbps(d)
        return replace(
            self, fast=self.fast.sample(weight, kbps), slow=self.slow.sample(weight, kbps)
        )

    def unseen(self, downloads: tuple[Download, ...]) -> tuple[Download, ...]:
        """The downloads that finished after the newest one sampled so far."""
        return tuple(d for d in downloads if d.end_s > self.seen_until_s)

    def observe(self, downloads: tuple[Download, ...]) -> BandwidthEstimator:
        """Sample each download once."""
        est = self
        for d in self.unseen(downloads):
            est = est.sample(d)
        newest = max((d.end_s for d in downloads), default=self.seen_until_s)
        return replace(est, seen_until_s=max(newest, self.seen_until_s))

    def estimate_kbps(self) -> float | None:
        """The estimate, or None before any sample has weight (hls.js ``canEstimate``)."""
        if self.fast.total_weight < MIN_WEIGHT_S:
            return None
        return min(self.fast.value(), self.slow.value())


@dataclass(frozen=True, slots=True)
class ThroughputRule:
    fast_half_life_s: float = 3.0
    slow_half_life_s: float = 9.0
    default_estimate_kbps: float = 500.0
    bw_factor: float = 0.95
    bw_up_factor: float = 0.7
    max_starvation_delay_s: float = 4.0

    name = "throughput"  # not a field: AbrRule.name is a plain attribute

    def initial_state(self) -> BandwidthEstimator:
        return BandwidthEstimator.new(self.fast_half_life_s, self.slow_half_life_s)

    def choose(self, ctx: AbrContext, state: BandwidthEstimator) -> tuple[int, BandwidthEstimator]:
        state = state.observe(ctx.downloads)
        bw = state.estimate_kbps()
        if bw is None:
            bw = self.default_estimate_kbps
        current = ctx.last_index if ctx.last_index is not None else 0
        live = ctx.segments_total is None
        best = self._best_level(ctx, bw, current, max_fetch_s=ctx.buffer_s, live=live)
        if best is None:
            # Rebuffering looks unavoidable: accept a fetch that stalls for a bounded time.
            starvation_s = min(ctx.segment_s, self.max_starvation_delay_s)
            best = self._best_level(ctx, bw, current, ctx.buffer_s + starvation_s, live)
        return (best if best is not None else 0), state

    def _best_level(
        self, ctx: AbrContext, bw: float, current: int, max_fetch_s: float, live: bool
    ) -> int | None:
        for i in range(len(ctx.bitrates_kbps) - 1, -1, -1):
            adjusted = (self.bw_factor if i <= current else self.bw_up_factor) * bw
            bitrate = ctx.bitrates_kbps[i]
            if adjusted <= bitrate:
                continue
            fetch_s = bitrate * ctx.segment_s / adjusted
            if not fetch_s or live or fetch_s < max_fetch_s:
                return i
        return None
