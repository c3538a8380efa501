"""DYNAMIC: dash.js's default strategy, throughput-based while the buffer is short, BOLA once it
is long.

Follows dash.js v4 ``AbrController._updateDynamicAbrStrategy``: BOLA takes over when the buffer
reaches ``bufferTimeDefault`` and hands back when it falls below half of it (hysteresis, "to
avoid oscillating rules"); it starts on the throughput rule.

Defaults and their sources:

- ``switch_on_s = 18.0``: dash.js v4 ``streaming.buffer.bufferTimeDefault`` (18 s).
- ``switch_off_s = 9.0``: ``0.5 * bufferTimeDefault``.
- The comparison is ``buffer >= threshold``, as in dash.js v4 (v3 used ``>``).

Both rules see every decision, so the throughput estimate and BOLA's placeholder stay current
whichever one is in charge (dash.js feeds both from the same download events); the active
one's rung is returned. Differences from dash.js: the throughput half is
:class:`~player.abr.throughput.ThroughputRule` (hls.js's rule) rather than dash.js's
ThroughputRule, and dash.js's other rules (InsufficientBufferRule, DroppedFramesRule,
SwitchHistoryRule), which it combines by taking the lowest rung, are not run; BOLA-E carries
its own insufficient-buffer rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from player.abr.base import AbrContext
from player.abr.bola import BolaERule, BolaState
from player.abr.throughput import BandwidthEstimator, ThroughputRule


@dataclass(frozen=True, slots=True)
class DynamicState:
    using_bola: bool
    bola: BolaState
    throughput: BandwidthEstimator


@dataclass(frozen=True, slots=True)
class DynamicRule:
    switch_on_s: float = 18.0
    switch_off_s: float = 9.0
    bola: BolaERule = field(default_factory=BolaERule)
    throughput: ThroughputRule = field(default_factory=ThroughputRule)

    name = "dynamic"  # not a field: AbrRule.name is a plain attribute

    def __post_init__(self) -> None:
        if not 0 <= self.switch_off_s <= self.switch_on_s:
            raise ValueError(
                f"need 0 <= switch_off_s <= switch_on_s, got {self.switch_off_s!r} "
                f"and {self.switch_on_s!r}"
            )

    def initial_state(self) -> DynamicState:
        return DynamicState(False, self.bola.initial_state(), self.throughput.initial_state())

    def choose(self, ctx: AbrContext, state: DynamicState) -> tuple[int, DynamicState]:
        threshold = self.switch_off_s if state.using_bola else self.switch_on_s
        using_bola = ctx.buffer_s >= threshold
        bola_index, bola_state = self.bola.choose(ctx, state.bola)
        tput_index, tput_state = self.throughput.choose(ctx, state.throughput)
        index = bola_index if using_bola else tput_index
        return index, DynamicState(using_bola, bola_state, tput_state)
