"""Least recently used: evict the object whose last access is oldest."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import ClassVar

from appliance.policies._checks import check_capacity, check_size


class LRU:
    name: ClassVar[str] = "lru"

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = check_capacity(capacity_bytes)
        self.used_bytes = 0
        self._sizes: OrderedDict[str, int] = OrderedDict()  # least recent first

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def hit(self, key: str) -> bool:
        if key in self._sizes:
            self._sizes.move_to_end(key)
            return True
        return False

    def admit(self, key: str, size: int) -> list[str]:
        self.remove(key)
        if check_size(size) > self.capacity_bytes:
            return []
        evicted = []
        while self.used_bytes + size > self.capacity_bytes:
            victim, victim_size = self._sizes.popitem(last=False)
            self.used_bytes -= victim_size
            evicted.append(victim)
        self._sizes[key] = size
        self.used_bytes += size
        return evicted

    def remove(self, key: str) -> None:
        size = self._sizes.pop(key, None)
        if size is not None:
            self.used_bytes -= size

    def keys(self) -> Iterator[str]:
        return iter(list(self._sizes))

    def check_invariants(self) -> None:
        assert 0 <= self.used_bytes <= self.capacity_bytes, (self.used_bytes, self.capacity_bytes)
        assert self.used_bytes == sum(self._sizes.values()), "used_bytes != sum of sizes"
