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

from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

from appliance.policies._checks import check_capacity, check_size
from appliance.policies.cursors import Cursors

PROBATION_SHARE = 0.01  # of capacity_bytes
MAX_FREQ = 3  # 2-bit counter
LOOKAHEAD_TURNOVERS = 2.0  # how far ahead of a viewer to protect, in cache turnovers


class LookaheadFIFO:
    name: ClassVar[str] = "lookahead-fifo"

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = check_capacity(capacity_bytes)
        self.used_bytes = 0
        self._probation_target_bytes = int(capacity_bytes * PROBATION_SHARE)
        # FIFOs of key -> size, oldest (the tail) first.
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._main: OrderedDict[str, int] = OrderedDict()
        self._probation_bytes = 0
        self._main_bytes = 0
        self._freq: dict[str, int] = {}  # every resident key
        self._ghost: OrderedDict[str, None] = OrderedDict()  # bounded by len(self)
        self._cursors = Cursors()
        # Turnover: the requests it took to admit capacity_bytes of new objects, last time;
        # until then, the requests so far.
        self._turnover_ticks = 0
        self._turnover_started_at = 0
        self._admitted_bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def hit(self, key: str) -> bool:
        self._cursors.observe(key)
        freq = self._freq.get(key)
        if freq is None:
            return False
        if freq < MAX_FREQ:
            self._freq[key] = freq + 1
        return True

    def admit(self, key: str, size: int) -> list[str]:
        self.remove(key)
        if check_size(size) > self.capacity_bytes:
            return []
        evicted: list[str] = []
        while self.used_bytes + size > self.capacity_bytes:
            if self._probation and (
                self._probation_bytes >= self._probation_target_bytes or not self._main
            ):
                self._evict_probation(evicted)
            else:
                self._evict_main(evicted)
        self._count_turnover(size)
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = size
            self._main_bytes += size
        else:
            self._probation[key] = size
            self._probation_bytes += size
        self._freq[key] = 0
        self.used_bytes += size
        self._trim_ghost()
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

    def _evict_probation(self, evicted: list[str]) -> None:
        key, size = self._probation.popitem(last=False)
        self._probation_bytes -= size
        if self._freq[key] > 0 or self._wanted(key):  # promote: frees nothing
            self._freq[key] = 0
            self._main[key] = size
            self._main_bytes += size
            return
        del self._freq[key]
        self.used_bytes -= size
        evicted.append(key)
        self._ghost[key] = None

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

    def _trim_ghost(self) -> None:
        while len(self._ghost) > len(self._freq):
            self._ghost.popitem(last=False)

    def remove(self, key: str) -> None:
        if self._freq.pop(key, None) is None:
            return
        if key in self._probation:
            size = self._probation.pop(key)
            self._probation_bytes -= size
        else:
            size = self._main.pop(key)
            self._main_bytes -= size
        self.used_bytes -= size
        self._trim_ghost()

    def keys(self) -> Iterator[str]:
        return iter(list(self._freq))

    def check_invariants(self) -> None:
        assert 0 <= self.used_bytes <= self.capacity_bytes, (self.used_bytes, self.capacity_bytes)
        assert self._probation_bytes == sum(self._probation.values()), "probation bytes drifted"
        assert self._main_bytes == sum(self._main.values()), "main bytes drifted"
        assert self.used_bytes == self._probation_bytes + self._main_bytes, "used_bytes drifted"
        assert not self._probation.keys() & self._main.keys(), "a key in probation and main"
        assert self._freq.keys() == self._probation.keys() | self._main.keys(), "freq != residents"
        assert all(0 <= f <= MAX_FREQ for f in self._freq.values()), "freq out of range"
        assert not self._ghost.keys() & self._freq.keys(), "a resident key in the ghost"
        assert len(self._ghost) <= len(self._freq), "ghost over its bound"
