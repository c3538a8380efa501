"""Scrubbing: disk objects re-hashed in the background, slowly, to find silent bit rot.

A disk hit checks only its file's stamp (inode, size, mtime: one fstat), which catches a
file rewritten or truncated under the appliance but not a bit the disk itself flipped.
The scrubber reads every object again at a low byte rate (``scrub_bytes_per_s``, 20 MB/s
by default: a full 20 GB disk in about 17 minutes, a small share of a disk's bandwidth),
compares it with its digest, and hands the bad ones to ``on_corrupt``, which drops them
(the next request fills them again).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import xxhash

from appliance.tiers import DiskEntry, DiskTier, Stamp, stamp_of

log = logging.getLogger("streamcdn.appliance.scrub")

CHUNK_BYTES = 1 << 20
MIN_PASS_S = 5.0  # a pass over a small (or empty) disk is spread over at least this long


@dataclass
class ScrubStats:
    passes: int = 0  # complete passes over the disk tier
    objects: int = 0  # objects re-hashed
    bytes: int = 0  # body bytes read
    corrupt: int = 0  # objects found not to match their digest


def _open_blocking(entry: DiskEntry) -> tuple[int, Stamp]:
    fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, stamp_of(os.fstat(fd))
    except OSError:
        os.close(fd)
        raise


class Scrubber:
    def __init__(
        self,
        disk: DiskTier,
        *,
        bytes_per_s: float,
        on_corrupt: Callable[[str], Awaitable[None]],
    ) -> None:
        self.disk = disk
        self.bytes_per_s = bytes_per_s
        self.on_corrupt = on_corrupt
        self.stats = ScrubStats()

    def snapshot(self) -> dict[str, object]:
        return {"bytes_per_s": self.bytes_per_s, **asdict(self.stats)}

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            await self.scrub_pass()
            await asyncio.sleep(max(0.0, MIN_PASS_S - (time.monotonic() - started)))

    async def scrub_pass(self) -> None:
        for key, _ in self.disk.sizes():  # a snapshot: the index changes meanwhile
            entry = self.disk.peek(key)
            if entry is not None:
                await self.check(entry)
        self.stats.passes += 1

    async def check(self, entry: DiskEntry) -> bool | None:
        """Re-hash one object at the scrub rate: True if it matches its digest, False if it
        did not (and went to ``on_corrupt``), None if it left the index meanwhile."""
        try:
            fd, stamp = await asyncio.to_thread(_open_blocking, entry)
        except OSError:
            return None  # evicted since the listing
        h, pos, end = xxhash.xxh3_128(), entry.body_offset, entry.body_offset + entry.meta.size
        try:
            while pos < end:
                chunk = await asyncio.to_thread(os.pread, fd, min(CHUNK_BYTES, end - pos), pos)
                if not chunk:
                    break
                h.update(chunk)
                pos += len(chunk)
                self.stats.bytes += len(chunk)
                await asyncio.sleep(len(chunk) / self.bytes_per_s)
        except OSError:
            pass  # unreadable (EIO): as bad as corrupt
        finally:
            os.close(fd)
        self.stats.objects += 1
        if self.disk.peek(entry.meta.key) is not entry:
            return None  # evicted, purged or replaced while it was read
        if stamp[1] == end and pos == end and h.hexdigest() == entry.meta.digest:
            entry.stamp = stamp  # read after the stamp was taken: any later change shows
            return True
        self.stats.corrupt += 1
        log.error("scrub found a corrupt object", extra={"key": entry.meta.key})
        await self.on_corrupt(entry.meta.key)
        return False
