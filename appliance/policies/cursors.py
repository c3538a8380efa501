"""Where viewers are: live read positions per rendition, inferred from segment cache keys.

HLS players read a rendition's segments in order, one every segment duration. So a request
for ``titles/calm/720p/seg_00041.m4s`` says a viewer is at segment 41 of
``titles/calm/720p`` and will most likely ask for 42, 43, ... next: a cached segment with
a live cursor a little before it is about to be hit. Policies use that to keep the segments
just ahead of viewers (``Cursors.behind``).

Pure and clockless: time is the count of observed requests ("ticks"). A cursor moves from
n - 1 to n when segment n is requested; the typical ticks between two moves of a cursor
(the beat, one segment duration in requests) is learned as a moving average, and a cursor
that has not moved for ``STALE_BEATS`` beats is taken for an abandoned session.
"""

from __future__ import annotations

INITIAL_BEAT_TICKS = 64.0  # until the first cursor moves
BEAT_GAIN = 1 / 64  # weight of the newest sample in the moving average of the beat
STALE_BEATS = 5.0  # a cursor this many beats without moving counts as gone
MAX_CURSORS = 64  # per rendition, the most recently started kept: bounds the cost of behind()
SWEEP_TICKS = 65_536  # drop renditions with no live cursor this often (bounds memory)


def parse_segment(key: str) -> tuple[str, int] | None:
    """``("titles/calm/720p", 41)`` for ``titles/calm/720p/seg_00041.m4s``; None for other
    keys (playlists, init segments, anything not named ``seg_<number>.<ext>``)."""
    stream, slash, name = key.rpartition("/")
    if not slash or not name.startswith("seg_"):
        return None
    digits = name[4:].partition(".")[0]
    if not digits.isdigit():
        return None
    return stream, int(digits)


class Cursors:
    def __init__(self) -> None:
        self.ticks = 0
        self.beat_ticks = INITIAL_BEAT_TICKS
        self._streams: dict[str, dict[int, int]] = {}  # stream -> {position: tick last read}
        self._next_sweep = SWEEP_TICKS

    def observe(self, key: str) -> None:
        """Count one request; move or start the cursor of a segment request."""
        self.ticks += 1
        if self.ticks >= self._next_sweep:
            self._sweep()
        parsed = parse_segment(key)
        if parsed is None:
            return
        stream, position = parsed
        cursors = self._streams.setdefault(stream, {})
        moved_from = cursors.pop(position - 1, None)
        if moved_from is not None:
            self.beat_ticks += BEAT_GAIN * (self.ticks - moved_from - self.beat_ticks)
        cursors[position] = self.ticks
        if len(cursors) > MAX_CURSORS:
            del cursors[next(iter(cursors))]

    def behind(self, key: str, horizon_segments: float) -> bool:
        """Is a live cursor at most horizon_segments before this segment?"""
        parsed = parse_segment(key)
        if parsed is None:
            return False
        stream, position = parsed
        cursors = self._streams.get(stream)
        if not cursors:
            return False
        live_since = self.ticks - STALE_BEATS * self.beat_ticks
        nearest = position - horizon_segments
        return any(nearest <= p < position and tick >= live_since for p, tick in cursors.items())

    def _sweep(self) -> None:
        live_since = self.ticks - STALE_BEATS * self.beat_ticks
        self._streams = {
            stream: cursors
            for stream, cursors in self._streams.items()
            if any(tick >= live_since for tick in cursors.values())
        }
        self._next_sweep = self.ticks + SWEEP_TICKS

    def __len__(self) -> int:
        """Cursors held (live, or stale and not yet swept), for tests and metrics."""
        return sum(len(cursors) for cursors in self._streams.values())
