"""BOLA-E: BOLA with the placeholder buffer, BOLA-O and the insufficient buffer rule.

Papers: Spiteri, Urgaonkar, Sitaraman, "BOLA: Near-Optimal Bitrate Adaptation for Online
Videos", INFOCOM 2016 / ToN 2020; Spiteri, Sitaraman, Sparacio, "From Theory to Practice:
Improving Bitrate Adaptation in the DASH Reference Player", MMSys 2018 (BOLA-E).
Code followed: dash.js v3 ``src/streaming/rules/abr/BolaRule.js`` (parameters, placeholder,
startup, BOLA-O) and Sabre ``src/sabre.py`` class ``BolaEnh`` (insufficient buffer rule).

Defaults and their sources:

- Utilities ``ln(bitrate / lowest) + 1``: dash.js normalises ``ln(bitrate)`` so the lowest rung
  has utility 1, which its formulas for V and gamma*p assume.
- ``minimum_buffer_s = 10.0`` (``MINIMUM_BUFFER_S``) and ``minimum_buffer_per_level_s = 2.0``
  (``MINIMUM_BUFFER_PER_BITRATE_LEVEL_S``): dash.js and Sabre. The buffer target is
  ``max(ctx.max_buffer_s, 10 + 2 x rungs)`` (dash.js puts its stable buffer time where we put
  the player's max buffer; Sabre uses its max buffer too). Then, as dash.js computes them,
  ``gp = (u_max - 1) / (target / minimum_buffer - 1)`` and ``Vp = minimum_buffer / gp``: the
  lowest rung is preferred up to 10 s of buffer and the top one from the target.
- ``placeholder_decay = 0.99``: ``PLACEHOLDER_BUFFER_DECAY``, applied per finished segment.
- ``safety_factor = 0.9``: dash.js ``bandwidthSafetyFactor``; startup and BOLA-O use
  throughput x 0.9 ("safe throughput").
- ``fast_half_life_s = 3.0``, ``slow_half_life_s = 8.0``: Sabre's default EWMA throughput
  (``-hl 3 8``, minimum of the two, duration-weighted), the same as dash.js's settings
  ``ewma.throughputFastHalfLifeSeconds`` / ``throughputSlowHalfLifeSeconds``; the estimator is
  the one in :mod:`player.abr.throughput`.
- ``ibr_safety_init = 0.9``, ``ibr_safety_min = 0.5``: Sabre ``BolaEnh``
  ``low_buffer_safety_factor_init`` / ``low_buffer_safety_factor``; the factor starts at 0.9 when
  steady play begins and decays x0.9 per decision to 0.5.

Behaviour (dash.js ``getMaxIndex``):

- No throughput sample yet: keep the current rung (rung 0 at first), as dash.js returns
  NO_CHANGE and Sabre its last quality.
- Startup: the rung the safe throughput sustains; the placeholder is set so that BOLA's buffer
  level equals the least that makes BOLA choose that rung. Steady once the buffer holds a
  segment.
- Steady: the rung maximising ``(Vp (u_i + gp) - (buffer + placeholder)) / bitrate_i``; BOLA-O:
  an up-switch above the safe-throughput rung is cut to ``max(that rung, previous)``; if the
  effective buffer exceeds what the chosen rung wants, the placeholder absorbs the excess first
  (dash.js and Sabre would delay the next request by the rest below the top rung; not
  modelled, the player waits only when its buffer is full).
- Insufficient buffer rule (Sabre): no rung above one whose segment (bitrate x segment_s) is
  larger than ``ibr_safety x buffer x throughput``; the placeholder is trimmed to match.

The placeholder, without events or a clock: the context carries ``now_s`` and each download's
``end_s``, so the time the player sat idle before this decision (a full buffer, or a live edge)
is ``now_s - max(end of the newest download, time of the previous decision)``. That idle time
is added to the placeholder at each steady decision, exactly as dash.js's
``updatePlaceholderBuffer`` adds ``Date.now() - lastSegmentFinishTimeMs`` (or since its last
call). For each newly finished segment the placeholder decays by 0.99 and is capped so the
effective buffer at that segment's request stays within what its rung allows (dash.js
``checkNewSegment``); the buffer at that request is estimated from the buffer now, the time
since and the segments added since. A stall (buffer empty while steady) zeroes the placeholder
(``onBufferEmpty``): the buffer is empty now, or the newest download took longer than the
buffer held when it was requested (the player stalled, then the segment refilled it). A seek
(a segment index other than the previous one or the next) restarts startup
(``onPlaybackSeeking``).

Not modelled: abandoning a download in flight, replacement segments (fast switching),
rescaling the placeholder when the buffer target changes, and dash.js's latency correction of
the throughput (``Download.duration_s`` already includes the round trip). Where Sabre's
``BolaEnh`` differs from dash.js (no placeholder decay, BOLA-U by default, ...) we follow
dash.js; docs/player.md "Checked against Sabre" lists the differences and
tests/player/test_sabre_reference.py the figures compared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from player.abr.base import AbrContext, Download
from player.abr.throughput import BandwidthEstimator


@dataclass(frozen=True, slots=True)
class BolaParams:
    utilities: tuple[float, ...]
    vp: float
    gp: float

    def score(self, i: int, level_s: float, bitrate: float) -> float:
        return (self.vp * (self.utilities[i] + self.gp) - level_s) / bitrate

    def max_level_s(self, i: int) -> float:
        """The highest effective buffer at which BOLA would still download rung i, not wait."""
        return self.vp * (self.utilities[i] + self.gp)

    def min_level_s(self, i: int, bitrates: tuple[float, ...]) -> float:
        """The lowest effective buffer at which BOLA prefers rung i to every lower rung."""
        level = 0.0
        for j in range(i):
            if self.utilities[j] < self.utilities[i]:
                b_i, b_j = bitrates[i], bitrates[j]
                u_i, u_j = self.utilities[i], self.utilities[j]
                level = max(level, self.vp * (self.gp + (b_i * u_j - b_j * u_i) / (b_i - b_j)))
        return level


@dataclass(frozen=True, slots=True)
class BolaState:
    estimator: BandwidthEstimator
    steady: bool = False
    placeholder_s: float = 0.0
    last_quality: int = 0
    ibr_safety: float = 0.9
    last_call_s: float | None = None  # now_s of the previous decision
    last_segment_index: int | None = None
    buffer_at_call_s: float | None = None  # buffer_s of the previous decision, if playing


@dataclass(frozen=True, slots=True)
class BolaERule:
    minimum_buffer_s: float = 10.0
    minimum_buffer_per_level_s: float = 2.0
    placeholder_decay: float = 0.99
    safety_factor: float = 0.9
    fast_half_life_s: float = 3.0
    slow_half_life_s: float = 8.0
    ibr_safety_init: float = 0.9
    ibr_safety_min: float = 0.5

    name = "bola-e"  # not a field: AbrRule.name is a plain attribute

    def initial_state(self) -> BolaState:
        estimator = BandwidthEstimator.new(self.fast_half_life_s, self.slow_half_life_s)
        return BolaState(estimator, ibr_safety=self.ibr_safety_init)

    def params(self, bitrates: tuple[float, ...], max_buffer_s: float) -> BolaParams | None:
        """V and gamma*p as dash.js computes them; None when no rung beats the lowest."""
        utilities = tuple(math.log(b / bitrates[0]) + 1 for b in bitrates)
        if max(utilities) <= utilities[0]:
            return None
        target_s = max(
            max_buffer_s, self.minimum_buffer_s + self.minimum_buffer_per_level_s * len(bitrates)
        )
        gp = (max(utilities) - 1) / (target_s / self.minimum_buffer_s - 1)
        return BolaParams(utilities, vp=self.minimum_buffer_s / gp, gp=gp)

    def choose(self, ctx: AbrContext, state: BolaState) -> tuple[int, BolaState]:
        bitrates = ctx.bitrates_kbps
        top = len(bitrates) - 1
        prev_segment = state.last_segment_index
        new = state.estimator.unseen(ctx.downloads)
        # The download asked for at the previous decision outlasted the buffer held then.
        held_s = state.buffer_at_call_s
        stalled = held_s is not None and bool(new) and new[0].duration_s > held_s
        state = replace(
            state,
            estimator=state.estimator.observe(ctx.downloads),
            last_segment_index=ctx.segment_index,
            buffer_at_call_s=ctx.buffer_s if ctx.playing else None,
        )
        if ctx.last_index is not None:
            state = replace(state, last_quality=_clamp(ctx.last_index, top))
        p = self.params(bitrates, ctx.max_buffer_s) if bitrates[0] > 0 else None
        if p is None:
            return 0, state

        if prev_segment is not None and ctx.segment_index not in (prev_segment, prev_segment + 1):
            state = replace(state, steady=False, placeholder_s=0.0, last_call_s=None)  # a seek
        state = self._on_new_segments(ctx, state, p, new)

        tput = state.estimator.estimate_kbps()
        if tput is None:
            return state.last_quality, state
        q_tput = _quality_for_bitrate(bitrates, tput * self.safety_factor)
        buf = ctx.buffer_s

        if not state.steady:
            placeholder = max(0.0, p.min_level_s(q_tput, bitrates) - buf)
            steady = buf >= ctx.segment_s
            state = replace(
                state,
                steady=steady,
                placeholder_s=placeholder,
                last_quality=q_tput,
                ibr_safety=self.ibr_safety_init if steady else state.ibr_safety,
                last_call_s=ctx.now_s,
            )
            return q_tput, state

        emptied = buf <= 0 or stalled  # dash.js onBufferEmpty
        placeholder = (0.0 if emptied else state.placeholder_s) + _idle_s(ctx, state)
        level = buf + placeholder
        q = max(range(top + 1), key=lambda i: (p.score(i, level, bitrates[i]), i))
        if q > state.last_quality and q > q_tput:
            q = max(q_tput, state.last_quality)  # BOLA-O: no up-switch past what throughput holds
        excess = level - p.max_level_s(q)
        if excess > 0:
            placeholder -= min(excess, placeholder)

        safe_kbit = state.ibr_safety * buf * tput
        for i in range(q):
            if bitrates[i + 1] * ctx.segment_s > safe_kbit:
                q = i
                placeholder = min(placeholder, max(0.0, p.min_level_s(q, bitrates) - buf))
                break
        state = replace(
            state,
            placeholder_s=placeholder,
            last_quality=q,
            ibr_safety=max(self.ibr_safety_min, state.ibr_safety * self.ibr_safety_init),
            last_call_s=ctx.now_s,
        )
        return q, state

    def _on_new_segments(
        self, ctx: AbrContext, state: BolaState, p: BolaParams, new: tuple[Download, ...]
    ) -> BolaState:
        """Decay the placeholder per finished segment and cap it by that segment's rung."""
        placeholder = state.placeholder_s
        top = len(ctx.bitrates_kbps) - 1
        for k, d in enumerate(new):
            # Back from the buffer now: undo the play-out since the request, remove this
            # segment and those fetched after it.
            drained_s = (ctx.now_s - d.end_s + d.duration_s) if ctx.playing else 0.0
            segments_since = len(new) - k
            level_at_request = max(0.0, ctx.buffer_s + drained_s - ctx.segment_s * segments_since)
            cap = max(0.0, p.max_level_s(_clamp(d.index, top)) - level_at_request)
            placeholder = min(placeholder * self.placeholder_decay, cap)
        return replace(state, placeholder_s=placeholder)


def _idle_s(ctx: AbrContext, state: BolaState) -> float:
    """Time the player waited since the newest download ended or the previous decision."""
    since = max((d.end_s for d in ctx.downloads), default=-math.inf)
    if state.last_call_s is not None:
        since = max(since, state.last_call_s)
    return max(0.0, ctx.now_s - since) if math.isfinite(since) else 0.0


def _quality_for_bitrate(bitrates: tuple[float, ...], kbps: float) -> int:
    """The highest rung at or below ``kbps`` (dash.js ``getQualityForBitrate``), else 0."""
    return max((i for i, b in enumerate(bitrates) if b <= kbps), default=0)


def _clamp(i: int, top: int) -> int:
    return min(max(i, 0), top)
