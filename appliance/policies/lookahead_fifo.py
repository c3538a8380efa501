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
  horizon is what the main queue can afford: LOOKAHEAD_CYCLES main-queue cycles, measured
  in the cursors' beat (one segment duration, in requests). So a trailing viewer finds what
  the one ahead fetched, and segments nobody is heading for go first.

Scan resistance, the S3-FIFO way, and the lookahead, are both byte-neutral: the decisions
do not favour small objects, which is what a byte miss ratio wants. The admission rules
only come into play when room has to be made, so a warm restart re-admitting everything
that fits keeps it all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

from appliance.policies._checks import check_capacity, check_size
from appliance.policies.cursors import Cursors

PROBATION_SHARE = 0.01  # of capacity_bytes
MAX_FREQ = 3  # 2-bit counter
LOOKAHEAD_CYCLES = 1.0  # how far ahead of a viewer to protect, in main-queue cycles
CYCLE_GAIN = 1 / 64  # weight of the newest sample in the moving average of the cycle


class LookaheadFIFO:
    name: ClassVar[str] = "lookahead-fifo"

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = check_capacity(capacity_bytes)
        self.used_bytes = 0
        self._probation_target_bytes = int(capacity_bytes * PROBATION_SHARE)
        # FIFOs of key -> size, oldest (the tail) first; main's values are
        # (size, tick it entered the head) so that its cycle can be measured.
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._main: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._probation_bytes = 0
        self._main_bytes = 0
        self._freq: dict[str, int] = {}  # every resident key
        self._ghost: OrderedDict[str, None] = OrderedDict()  # bounded by len(self)
        self._cursors = Cursors()
        self._cycle_ticks = 0.0  # moving average; 0 until main first cycles

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
            if self._probation_bytes >= self._probation_target_bytes or not self._main:
                self._evict_probation(evicted)
            else:
                self._evict_main(evicted)
        if key in self._ghost:
            del self._ghost[key]
            self._to_main(key, size)
        else:
            self._probation[key] = size
            self._probation_bytes += size
        self._freq[key] = 0
        self.used_bytes += size
        self._trim_ghost()
        return evicted

    def _wanted(self, key: str) -> bool:
        """A viewer is heading for this segment and will be here within a main cycle."""
        if not self._cycle_ticks:
            return False
        horizon = LOOKAHEAD_CYCLES * self._cycle_ticks / self._cursors.beat_ticks
        return self._cursors.behind(key, horizon)

    def _to_main(self, key: str, size: int) -> None:
        self._main[key] = (size, self._cursors.ticks)
        self._main_bytes += size

    def _evict_probation(self, evicted: list[str]) -> None:
        key, size = self._probation.popitem(last=False)
        self._probation_bytes -= size
        if self._freq[key] > 0 or self._wanted(key):  # promote: frees nothing
            self._freq[key] = 0
            self._to_main(key, size)
            return
        del self._freq[key]
        self.used_bytes -= size
        evicted.append(key)
        self._ghost[key] = None

    def _evict_main(self, evicted: list[str]) -> None:
        # Each object gets at most one reprieve for being wanted per call, so this ends
        # even when every object in main is ahead of some viewer.
        reprieves = len(self._main)
        while True:
            key, (size, entered) = self._main.popitem(last=False)
            self._cycle_ticks += CYCLE_GAIN * (self._cursors.ticks - entered - self._cycle_ticks)
            freq = self._freq[key]
            if freq > 0:
                self._freq[key] = freq - 1
            elif reprieves > 0 and self._wanted(key):
                reprieves -= 1
            else:
                break
            self._main[key] = (size, self._cursors.ticks)  # back to the head
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
            size, _ = self._main.pop(key)
            self._main_bytes -= size
        self.used_bytes -= size
        self._trim_ghost()

    def keys(self) -> Iterator[str]:
        return iter(list(self._freq))

    def check_invariants(self) -> None:
        assert 0 <= self.used_bytes <= self.capacity_bytes, (self.used_bytes, self.capacity_bytes)
        assert self._probation_bytes == sum(self._probation.values()), "probation bytes drifted"
        assert self._main_bytes == sum(s for s, _ in self._main.values()), "main bytes drifted"
        assert self.used_bytes == self._probation_bytes + self._main_bytes, "used_bytes drifted"
        assert not self._probation.keys() & self._main.keys(), "a key in probation and main"
        assert self._freq.keys() == self._probation.keys() | self._main.keys(), "freq != residents"
        assert all(0 <= f <= MAX_FREQ for f in self._freq.values()), "freq out of range"
        assert not self._ghost.keys() & self._freq.keys(), "a resident key in the ghost"
        assert len(self._ghost) <= len(self._freq), "ghost over its bound"
