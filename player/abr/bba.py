"""BBA-0, the buffer-based rule of Huang et al., "A Buffer-Based Approach to Rate Adaptation:
Evidence from a Large Video Streaming Service", SIGCOMM 2014 (section 4, Algorithm 1).

The rate map f(B) is linear in bitrate: R_min at the reservoir r, R_max at r + cushion. Then,
with Rate+ / Rate- the rungs just above / below the previous one (themselves at the ends):

    B <= r          -> R_min
    B >= r + cu     -> R_max
    f(B) >= Rate+   -> max{R_i : R_i < f(B)}
    f(B) <= Rate-   -> min{R_i : R_i > f(B)}
    otherwise       -> Rate_prev            (the hysteresis: no change inside the step)

Defaults and their sources:

- ``reservoir_s = 5.0`` and ``cushion_s = 10.0``: Pensieve's BB baseline (``RESEVOIR = 5``,
  ``CUSHION = 10`` in hongzimao/pensieve ``test/bb.py``), sized for its 60 s buffer. The paper
  used r = 90 s and cu = 126 s for a 240 s buffer (the last 10 % being the upper reservoir);
  pass those to reproduce it.
- Before the first segment Rate_prev is R_min: BBA-0 starts at the lowest rate.

Pensieve's ``bb.py`` maps the buffer straight to a rung index without the Rate+ / Rate- step;
this follows the paper's Algorithm 1 instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from player.abr.base import AbrContext


@dataclass(frozen=True, slots=True)
class BbaRule:
    reservoir_s: float = 5.0
    cushion_s: float = 10.0

    name = "bba"  # not a field: AbrRule.name is a plain attribute

    def __post_init__(self) -> None:
        if self.reservoir_s < 0:
            raise ValueError(f"reservoir_s must be >= 0, got {self.reservoir_s!r}")
        if self.cushion_s <= 0:
            raise ValueError(f"cushion_s must be > 0, got {self.cushion_s!r}")

    def initial_state(self) -> None:
        return None

    def choose(self, ctx: AbrContext, state: None) -> tuple[int, None]:
        rates = ctx.bitrates_kbps
        top = len(rates) - 1
        buf = ctx.buffer_s
        if buf <= self.reservoir_s:
            return 0, None
        if buf >= self.reservoir_s + self.cushion_s:
            return top, None
        prev = min(max(ctx.last_index or 0, 0), top)
        f = rates[0] + (rates[-1] - rates[0]) * (buf - self.reservoir_s) / self.cushion_s
        rate_up = next((r for r in rates if r > rates[prev]), rates[-1])
        rate_down = next((r for r in reversed(rates) if r < rates[prev]), rates[0])
        if f >= rate_up:
            # max{R_i < f}; f > R_min here, so rung 0 always qualifies.
            return max((i for i, r in enumerate(rates) if r < f), default=0), None
        if f <= rate_down:
            # min{R_i > f}; f < R_max here, so the top rung always qualifies.
            return min((i for i, r in enumerate(rates) if r > f), default=top), None
        return prev, None
