"""Eviction policies for the cache tiers: one small interface, a registry by name.

A policy is pure bookkeeping over keys and byte sizes: it does no I/O and reads no clock.
The tier drives it, and deletes the data of whatever it evicts::

    if policy.hit(key):
        ...serve from the tier...
    else:
        ...fetch...
        for victim in policy.admit(key, size):
            ...delete victim's data...
        if key in policy:
            ...store the object...
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Protocol

from appliance.policies.lookahead_fifo import LookaheadFIFO
from appliance.policies.lru import LRU
from appliance.policies.s3fifo import S3FIFO


class EvictionPolicy(Protocol):
    name: ClassVar[str]
    capacity_bytes: int
    used_bytes: int  # sum of the sizes of resident objects

    def __init__(self, capacity_bytes: int) -> None: ...

    def __contains__(self, key: str) -> bool: ...

    def __len__(self) -> int: ...

    def hit(self, key: str) -> bool:
        """Record an access; True if the key is resident (a hit)."""
        ...

    def admit(self, key: str, size: int) -> list[str]:
        """After a miss, make key (size bytes) resident and return the keys evicted for it.

        A policy may decline (size > capacity_bytes, or its admission filter): key is then
        not resident afterwards. Admitting a resident key replaces it, with the new size.
        """
        ...

    def remove(self, key: str) -> None:
        """Forget key (purge, corrupt data); nothing happens if it is not resident."""
        ...

    def keys(self) -> Iterator[str]:
        """The resident keys, in no promised order."""
        ...

    def check_invariants(self) -> None:
        """Raise AssertionError unless used_bytes <= capacity_bytes, used_bytes is the sum of
        the resident sizes, and the policy's own structures agree with each other."""
        ...


POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy for policy in (LookaheadFIFO, LRU, S3FIFO)
}
DEFAULT_POLICY = LookaheadFIFO.name  # bench/README.md has the figures that chose it


def make_policy(name: str, capacity_bytes: int) -> EvictionPolicy:
    try:
        policy = POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown eviction policy {name!r}; known: {known}") from None
    return policy(capacity_bytes)


__all__ = ["DEFAULT_POLICY", "POLICIES", "EvictionPolicy", "make_policy"]
