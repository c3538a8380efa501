"""The scrubber: silent bit rot (a file whose inode, size and mtime did not change) is found
by re-hashing at a bounded byte rate, and the object is handed over to be dropped."""

from __future__ import annotations

import os
import time
from pathlib import Path

from appliance.objects import ObjectMeta
from appliance.scrub import Scrubber
from appliance.tiers import DiskTier, stamp_of
from streamcdn.digest import digest_bytes


def disk_with(root: Path, bodies: dict[str, bytes]) -> DiskTier:
    disk = DiskTier(root, 10**9, "lru")
    entries, report = disk.load_blocking()
    disk.adopt(entries, report)
    for key, body in bodies.items():
        meta = ObjectMeta(key, len(body), digest_bytes(body), "video/mp4", "", time.time())
        assert disk.admit(disk.write_blocking(meta, body)) == []
    return disk


def rot(path: Path) -> None:
    """Flip a body bit in place and put the mtime back: only a re-hash can see it."""
    st = os.stat(path)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x01
    path.write_bytes(bytes(raw))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stamp_of(os.stat(path)) == stamp_of(st)


async def test_the_scrubber_finds_silent_rot_and_hands_it_over(tmp_path: Path) -> None:
    bodies = {f"titles/t/360p/seg_{i:05d}.m4s": os.urandom(200_000) for i in range(5)}
    disk = disk_with(tmp_path, bodies)
    bad = "titles/t/360p/seg_00002.m4s"
    entry = disk.peek(bad)
    assert entry is not None
    rot(entry.path)
    dropped: list[str] = []

    async def on_corrupt(key: str) -> None:
        dropped.append(key)
        disk.remove(key)

    scrubber = Scrubber(disk, bytes_per_s=2 * 10**6, on_corrupt=on_corrupt)
    started = time.monotonic()
    await scrubber.scrub_pass()
    took = time.monotonic() - started
    assert dropped == [bad] and bad not in disk and len(disk) == 4
    stats = scrubber.snapshot()
    assert stats["objects"] == 5 and stats["bytes"] == 10**6 and stats["corrupt"] == 1
    assert stats["passes"] == 1
    assert took >= 0.45  # 1 MB at 2 MB/s: the rate bounds the disk bandwidth it takes


async def test_the_scrubber_passes_over_whole_objects_and_stamps_them(tmp_path: Path) -> None:
    disk = disk_with(tmp_path, {"titles/t/a.m4s": b"a" * 5000})
    entry = disk.peek("titles/t/a.m4s")
    assert entry is not None
    entry.stamp = None  # as if loaded at start, never checked

    async def on_corrupt(key: str) -> None:
        raise AssertionError(f"{key} is not corrupt")

    scrubber = Scrubber(disk, bytes_per_s=10**9, on_corrupt=on_corrupt)
    assert await scrubber.check(entry) is True
    assert entry.stamp == stamp_of(os.stat(entry.path))  # now a fast-path hit
    entry.path.unlink()  # evicted under it: nothing to say
    assert await scrubber.check(entry) is None
