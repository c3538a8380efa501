"""S3-FIFO: three static FIFO queues (Yang et al., "FIFO queues are all you need for cache
eviction", SOSP 2023), sized in bytes.

New objects enter a small FIFO (a tenth of the bytes). One that is hit while there moves to
the main FIFO when it reaches the tail; one that is not leaves, and its key goes to a ghost
FIFO, so that if it comes back soon it is admitted straight into main. Main is a FIFO with
lazy promotion: a 2-bit counter of hits, and an object at the tail with a non-zero count is
reinserted at the head with the count decremented instead of being evicted. Most one-hit
wonders (and a scan) so pass through the small queue without touching main.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

from appliance.policies._checks import check_capacity, check_size

SMALL_SHARE = 0.1  # of capacity_bytes, as in the paper
MAX_FREQ = 3  # 2-bit counter


class S3FIFO:
    name: ClassVar[str] = "s3fifo"
    small_share: ClassVar[float] = SMALL_SHARE

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = check_capacity(capacity_bytes)
        self.used_bytes = 0
        self._small_target_bytes = int(capacity_bytes * self.small_share)
        # FIFOs of key -> size, oldest (the tail) first.
        self._small: OrderedDict[str, int] = OrderedDict()
        self._main: OrderedDict[str, int] = OrderedDict()
        self._small_bytes = 0
        self._main_bytes = 0
        self._freq: dict[str, int] = {}  # every resident key
        # Keys recently evicted from small, bounded by the count of resident objects.
        self._ghost: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._freq

    def __len__(self) -> int:
        return len(self._freq)

    def hit(self, key: str) -> bool:
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
            if self._small and (self._small_bytes >= self._small_target_bytes or not self._main):
                self._evict_small(evicted)
            else:
                self._evict_main(evicted)
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = size
            self._main_bytes += size
        else:
            self._small[key] = size
            self._small_bytes += size
        self._freq[key] = 0
        self.used_bytes += size
        self._trim_ghost()
        return evicted

    def _evict_small(self, evicted: list[str]) -> None:
        key, size = self._small.popitem(last=False)
        self._small_bytes -= size
        if self._promote_from_small(key):  # frees nothing
            self._freq[key] = 0
            self._main[key] = size
            self._main_bytes += size
            return
        del self._freq[key]
        self.used_bytes -= size
        evicted.append(key)
        self._ghost[key] = None

    def _promote_from_small(self, key: str) -> bool:
        """Whether an object leaving the small queue goes to main: hit while there."""
        return self._freq[key] > 0

    def _trim_ghost(self) -> None:
        while len(self._ghost) > len(self._freq):
            self._ghost.popitem(last=False)

    def _evict_main(self, evicted: list[str]) -> None:
        while True:
            key, size = self._main.popitem(last=False)
            freq = self._freq[key]
            if freq == 0:
                break
            self._freq[key] = freq - 1
            self._main[key] = size  # lazy promotion: back to the head
        del self._freq[key]
        self._main_bytes -= size
        self.used_bytes -= size
        evicted.append(key)

    def remove(self, key: str) -> None:
        if self._freq.pop(key, None) is None:
            return
        if key in self._small:
            size = self._small.pop(key)
            self._small_bytes -= size
        else:
            size = self._main.pop(key)
            self._main_bytes -= size
        self.used_bytes -= size
        self._trim_ghost()

    def keys(self) -> Iterator[str]:
        return iter(list(self._freq))

    def check_invariants(self) -> None:
        assert 0 <= self.used_bytes <= self.capacity_bytes, (self.used_bytes, self.capacity_bytes)
        assert self._small_bytes == sum(self._small.values()), "small bytes drifted"
        assert self._main_bytes == sum(self._main.values()), "main bytes drifted"
        assert self.used_bytes == self._small_bytes + self._main_bytes, "used_bytes drifted"
        assert not self._small.keys() & self._main.keys(), "a key in both small and main"
        assert self._freq.keys() == self._small.keys() | self._main.keys(), "freq != residents"
        assert all(0 <= f <= MAX_FREQ for f in self._freq.values()), "freq out of range"
        assert not self._ghost.keys() & self._freq.keys(), "a resident key in the ghost"
        assert len(self._ghost) <= len(self._freq), "ghost over its bound"
