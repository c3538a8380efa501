"""What every ABR rule sees and returns: one small interface, pure.

A rule is a class with ``name``, ``initial_state()`` and ``choose(ctx, state)``. It never
reads a clock, a socket or a file: the simulator and the HTTP player both feed it the
same :class:`AbrContext` before each segment and keep the state it hands back, so a rule
behaves identically under a virtual clock and on a real connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Download:
    """One finished segment download, as measured by the player."""

    bytes: int
    duration_s: float  # from request to last byte (includes the round trip)
    end_s: float  # player clock when it finished
    index: int  # the rung it was fetched at


@dataclass(frozen=True, slots=True)
class AbrContext:
    bitrates_kbps: tuple[float, ...]  # the ladder's declared bitrates, lowest first
    segment_s: float  # nominal segment duration
    buffer_s: float  # media buffered ahead of the play head now
    max_buffer_s: float  # the player stops fetching above this
    now_s: float  # player clock (virtual in the simulator)
    downloads: tuple[Download, ...]  # recent downloads, oldest first (at most ~20)
    last_index: int | None  # the rung of the previous segment; None before the first
    segment_index: int  # the segment about to be fetched, 0-based
    segments_total: int | None  # None for an endless stream
    # Sizes of the upcoming segments per rung, when known (EXT-X-BITRATE or a manifest):
    # next_sizes[k][i] = bytes of segment segment_index + k at rung i.
    next_sizes: tuple[tuple[int, ...], ...] | None = None
    playing: bool = True  # False during startup (before playback has begun)


class AbrRule(Protocol):
    name: str

    def initial_state(self) -> Any: ...

    def choose(self, ctx: AbrContext, state: Any) -> tuple[int, Any]:
        """The rung (0 = lowest) for segment ctx.segment_index, and the state to keep."""
        ...
