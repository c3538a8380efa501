"""RobustMPC: Yin, Jindal, Sekar, Sinopoli, "A Control-Theoretic Approach for Dynamic Adaptive
Video Streaming over HTTP", SIGCOMM 2015, as Pensieve's baseline runs it (Mao, Netravali,
Alizadeh, SIGCOMM 2017; hongzimao/pensieve ``test/mpc.py``).

Defaults and their sources (all Pensieve ``test/mpc.py``):

- ``horizon = 5`` (``MPC_FUTURE_CHUNK_COUNT``), shortened near the end of the video.
- ``window = 5``: the throughput prediction is the harmonic mean of the last 5 samples divided
  by ``1 + max`` of the last 5 relative prediction errors ``|predicted - actual| / actual``,
  where "predicted" is the plain harmonic mean made at the previous decision. The errors and
  that last prediction are the rule's state.
- QoE_lin, summed over the horizon: ``bitrate (Mbps) - 4.3 x rebuffer (s) - 1 x |bitrate
  change| (Mbps)`` (``REBUF_PENALTY = 4.3``, ``SMOOTH_PENALTY = 1``).
- Buffer model per step: ``buffer - download time`` (the shortfall is rebuffering, the buffer
  floors at 0), then ``+ segment_s``; no cap at the max buffer, as in Pensieve.
- Segment sizes: ``ctx.next_sizes`` when given (Pensieve reads the real chunk sizes), else
  bitrate x segment_s.
- Ties go to the lexicographically last rung sequence, as Pensieve's ``reward >= max_reward``
  over ``itertools.product`` order does.

Search: the same maximum as Pensieve's exhaustive loop over all n^horizon sequences, found by
a depth-first branch and bound that visits sequences in descending order and drops a subtree
when an upper bound on its QoE is below the best found. The bound adds the best bitrate minus
switching cost still reachable (ignoring rebuffering) to the least rebuffering still possible
(always the fastest download); both hold for every completion because the buffer after a step
only shrinks as the download grows. Leaves are scored with Pensieve's own arithmetic, so the
choice, ties included, is the exhaustive one.

Before any sample with bytes the rule picks the lowest rung; Pensieve starts from a fixed
``DEFAULT_QUALITY = 1`` of its own six-rung ladder. Zero-byte samples carry no throughput and
are skipped; durations under 50 ms count as 50 ms, as in hls.js (Pensieve's simulated
downloads always include an 80 ms round trip, so it never meets them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from player.abr.base import AbrContext
from player.abr.throughput import sample_kbps


@dataclass(frozen=True, slots=True)
class MpcState:
    errors: tuple[float, ...] = ()  # relative errors of the last predictions, oldest first
    last_prediction_kbps: float | None = None  # harmonic mean made at the previous decision
    seen_until_s: float = -math.inf  # end_s of the newest sample already scored


@dataclass(frozen=True, slots=True)
class RobustMpcRule:
    horizon: int = 5
    window: int = 5
    rebuffer_penalty: float = 4.3
    smooth_penalty: float = 1.0

    name = "robust-mpc"  # not a field: AbrRule.name is a plain attribute

    def __post_init__(self) -> None:
        for field in ("horizon", "window"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)!r}")

    def initial_state(self) -> MpcState:
        return MpcState()

    def choose(self, ctx: AbrContext, state: MpcState) -> tuple[int, MpcState]:
        samples = [d for d in ctx.downloads if d.bytes > 0]
        if not samples:
            return 0, state
        kbps = [sample_kbps(d) for d in samples[-self.window :]]
        harmonic = len(kbps) / sum(1 / x for x in kbps)
        errors = state.errors
        newest = samples[-1]
        if newest.end_s > state.seen_until_s:
            actual = kbps[-1]
            last = state.last_prediction_kbps
            error = 0.0 if last is None else abs(last - actual) / actual
            errors = (*errors, error)[-self.window :]
        predicted = harmonic / (1 + max(errors, default=0.0))
        state = MpcState(errors, harmonic, max(state.seen_until_s, newest.end_s))

        steps = self.horizon
        if ctx.segments_total is not None:
            steps = max(1, min(steps, ctx.segments_total - ctx.segment_index))
        n = len(ctx.bitrates_kbps)
        known = ctx.next_sizes or ()
        download_s = []
        for k in range(steps):
            if k < len(known) and len(known[k]) == n:
                sizes_kbit = [size * 8 / 1000 for size in known[k]]
            else:
                sizes_kbit = [b * ctx.segment_s for b in ctx.bitrates_kbps]
            download_s.append([kbit / predicted for kbit in sizes_kbit])
        last = ctx.last_index
        first = plan(
            ctx.bitrates_kbps,
            download_s,
            ctx.buffer_s,
            ctx.segment_s,
            last if last is not None and 0 <= last < n else None,
            self.rebuffer_penalty,
            self.smooth_penalty,
        )
        return first, state


def plan(
    bitrates_kbps: tuple[float, ...],
    download_s: list[list[float]],
    buffer_s: float,
    segment_s: float,
    last_index: int | None,
    rebuffer_penalty: float = 4.3,
    smooth_penalty: float = 1.0,
) -> int:
    """The first rung of the rung sequence with the best QoE_lin over ``len(download_s)`` steps.

    ``download_s[k][i]`` is the predicted download time of the k-th next segment at rung i.
    """
    n = len(bitrates_kbps)
    steps = len(download_s)
    fastest = [min(row) for row in download_s]
    # reach[k][r]: the best sum of bitrate - smooth_penalty x switch (Mbps) over steps k.. after
    # rung r, ignoring rebuffering: an upper bound for what those steps can add.
    reach = [[0.0] * n for _ in range(steps + 1)]
    for k in range(steps - 1, -1, -1):
        for r in range(n):
            reach[k][r] = max(
                (bitrates_kbps[i] - smooth_penalty * abs(bitrates_kbps[i] - bitrates_kbps[r]))
                / 1000
                + reach[k + 1][i]
                for i in range(n)
            )

    def least_rebuffer_s(k: int, buf: float) -> float:
        rebuffer = 0.0
        for j in range(k, steps):
            if buf < fastest[j]:
                rebuffer += fastest[j] - buf
                buf = 0.0
            else:
                buf -= fastest[j]
            buf += segment_s
        return rebuffer

    best_reward = -math.inf
    best_first = 0

    def visit(
        k: int,
        prev: int | None,
        buf0: float,
        rebuf0: float,
        rate0: float,
        smooth0: float,
        first: int,
    ) -> None:
        nonlocal best_reward, best_first
        row = download_s[k]
        for i in range(n - 1, -1, -1):  # descending: the first best found is Pensieve's pick
            # Pensieve's arithmetic, step by step, so rewards match its loop bit for bit.
            download = row[i]
            rebuf = rebuf0
            if buf0 < download:
                rebuf += download - buf0
                buf = 0.0
            else:
                buf = buf0 - download
            buf += segment_s
            rate = rate0 + bitrates_kbps[i]
            smooth = smooth0
            if prev is not None:
                smooth += abs(bitrates_kbps[i] - bitrates_kbps[prev])
            head = i if k == 0 else first
            if k == steps - 1:
                reward = rate / 1000 - rebuffer_penalty * rebuf - smooth_penalty * smooth / 1000
                if reward > best_reward:
                    best_reward, best_first = reward, head
                continue
            bound = (
                rate / 1000
                - rebuffer_penalty * (rebuf + least_rebuffer_s(k + 1, buf))
                - smooth_penalty * smooth / 1000
                + reach[k + 1][i]
            )
            # A small margin keeps rounding in the bound from cutting a true optimum.
            if bound < best_reward - 1e-9 * (1 + abs(best_reward)):
                continue
            visit(k + 1, i, buf, rebuf, rate, smooth, head)

    visit(0, last_index, buffer_s, 0.0, 0.0, 0.0, 0)
    return best_first
