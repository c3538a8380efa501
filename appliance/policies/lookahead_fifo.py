"""lookahead-fifo, the default: S3-FIFO's queues with a small probation queue, plus viewer
lookahead for HLS segments.

Built for a video CDN's requests: viewers read a title's segments in order from the start
and give up partway, new releases spike, crawlers read everything once, and objects run
from 1 KB playlists to 3 MB segments.

- Probation: new objects enter a FIFO holding PROBATION_SHARE of the bytes (S3-FIFO uses a
  tenth; one-hit wonders and scans need far less room to pass through, and what they do not
  take the main queue keeps). One hit there and an object moves to main when it reaches the
  tail; otherwise it is evicted and its key goes to a ghost FIFO, so that a return soon
  after is admitted straight into main.
- Main: a FIFO with lazy promotion (2-bit hit counter; a counted object at the tail goes back
  to the head with one less instead of being evicted), so the hot set survives scans and
  bursts of large one-timers without per-hit reordering.
- Lookahead: a segment with a live viewer cursor (appliance/policies/cursors.py) at most
  ``horizon`` segments before it counts as hit: that viewer is about to ask for it. The
  horizon is LOOKAHEAD_TURNOVERS times the requests the cache last took to admit its
  capacity in new objects, in segments (the cursors' beat): a viewer farther behind would
  not arrive before the cache has turned over anyway. So a trailing viewer finds what the
  viewer ahead fetched, and segments that nobody is heading for go first.

Size: bytes bound the cache, and decisions are deliberately size-neutral (no cost/size
priority): a byte miss ratio gains nothing from favouring small objects, and large one-timers
cannot flush small hot objects since they only pass through probation. Nothing that fits is
declined, so a warm restart that re-admits what is on disk keeps all of it.
"""

from __future__ import annotations

from typing import ClassVar

from appliance.policies.cursors import Cursors
from appliance.policies.s3fifo import S3FIFO

PROBATION_SHARE = 0.01  # of capacity_bytes
LOOKAHEAD_TURNOVERS = 2.0  # how far ahead of a viewer to protect, in cache turnovers


class LookaheadFIFO(S3FIFO):
    """S3-FIFO's queues and counters (its "small" queue is the probation queue here), with a
    smaller probation share and the viewer lookahead in both evictions."""

    name: ClassVar[str] = "lookahead-fifo"
    small_share: ClassVar[float] = PROBATION_SHARE

    def __init__(self, capacity_bytes: int) -> None:
        super().__init__(capacity_bytes)
        self._cursors = Cursors()
        # Turnover: the requests it took to admit capacity_bytes of new objects, last time;
        # until then, the requests so far.
        self._turnover_ticks = 0
        self._turnover_started_at = 0
        self._admitted_bytes = 0

    def hit(self, key: str) -> bool:
        self._cursors.observe(key)
        return super().hit(key)

    def admit(self, key: str, size: int) -> list[str]:
        evicted = super().admit(key, size)
        if key in self:
            self._count_turnover(size)
        return evicted

    def _count_turnover(self, size: int) -> None:
        self._admitted_bytes += size
        if self._admitted_bytes >= self.capacity_bytes:
            self._turnover_ticks = self._cursors.ticks - self._turnover_started_at
            self._turnover_started_at = self._cursors.ticks
            self._admitted_bytes = 0

    def _wanted(self, key: str) -> bool:
        """A viewer is heading for this segment and will be here before long: within
        LOOKAHEAD_TURNOVERS of the time the cache takes to fill with new objects."""
        turnover = self._turnover_ticks or self._cursors.ticks - self._turnover_started_at
        horizon = LOOKAHEAD_TURNOVERS * turnover / self._cursors.beat_ticks
        return self._cursors.behind(key, horizon)

    def _promote_from_small(self, key: str) -> bool:
        return self._freq[key] > 0 or self._wanted(key)

    def _evict_main(self, evicted: list[str]) -> None:
        # At most len(main) reprieves for being wanted per call, so this ends even when
        # every object in main is ahead of some viewer.
        reprieves = len(self._main)
        while True:
            key, size = self._main.popitem(last=False)
            freq = self._freq[key]
            if freq > 0:
                self._freq[key] = freq - 1
            elif reprieves > 0 and self._wanted(key):
                reprieves -= 1
            else:
                break
            self._main[key] = size  # back to the head
        del self._freq[key]
        self._main_bytes -= size
        self.used_bytes -= size
        evicted.append(key)
