"""Bits flipped in every object on an appliance's disk while it was down: after restart none
is served (each is checked against its digest first), each is dropped and filled again from
the origin, and a player sees the title play end to end with no digest error. And bits
flipped while it runs, in objects it has already checked and served from disk: the next
hit sees the file changed (one fstat), checks it again, drops it and fills it again, on
the fast path and on aiohttp's alike."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import aiohttp
import pytest

from appliance.objects import decode_header
from origin.store import TitleStore
from player.session import play
from streamcdn.digest import digest_bytes
from tests.conftest import TITLE
from tests.faults.stack import ApplianceSpec, Stack, wait_until


def disk_objects(cache: Path) -> dict[str, Path]:
    """Key -> file of every object in an appliance's cache dir."""
    out = {}
    for path in (cache / "objects").glob("*/*.obj"):
        meta, _ = decode_header(path.read_bytes())
        out[meta.key] = path
    return out


def flip_a_body_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    _, offset = decode_header(bytes(raw))
    raw[offset + (len(raw) - offset) // 2] ^= 0x55  # the length stays right: only a digest sees it
    path.write_bytes(bytes(raw))


async def test_corrupted_disk_objects_are_never_served_and_are_refilled(
    tmp_path: Path, store: TitleStore
) -> None:
    files = store.manifest(TITLE)["files"]
    rels = [*files, "manifest.json"]
    spec = ApplianceSpec("a1", flags=("--read-ahead", "0"))  # one refill per object, exactly
    async with Stack(tmp_path, store, [spec]) as stack:
        await stack.start("origin", "a1")
        for rel in rels:
            assert (await stack.get(stack.signed("a1", rel)))[0] == 200

        async def all_on_disk() -> bool:
            return (await stack.health("a1"))["tiers"]["disk"]["objects"] == len(rels)

        await wait_until(all_on_disk, "every object written to disk")
        stack.kill("a1", signal.SIGTERM)
        on_disk = disk_objects(stack.cache_dir("a1"))
        assert len(on_disk) == len(rels)
        for path in on_disk.values():
            flip_a_body_byte(path)

        await stack.start("a1")
        origin_before = await stack.origin_fetches()
        started = time.monotonic()
        status, headers, body = await stack.get(stack.signed("a1", "360p/seg_00000.m4s"))
        refill_s = time.monotonic() - started
        assert status == 200 and body == (store.root / TITLE / "360p/seg_00000.m4s").read_bytes()
        assert headers["X-Cache"] == "MISS"  # the corrupt copy was dropped, not served

        # The viewer: checks every body against X-Content-Digest and manifest.json.
        async with aiohttp.ClientSession() as http:
            summary = await play(
                [stack.signed("a1", "master.m3u8")], rule="ours", session=http, play_out=False
            )
        assert summary.ended == "title" and len(summary.timeline) == summary.segments_total
        assert not summary.errors, summary.errors  # no digest error, no error at all

        # Every object now serves true bytes, and each corrupt one cost exactly one refill.
        for rel in files:
            status, _, body = await stack.get(stack.signed("a1", rel))
            assert status == 200 and digest_bytes(body) == files[rel]["xxh3-128"], rel
        assert await stack.origin_fetches() - origin_before == len(rels)
        await wait_until(all_on_disk, "every refilled object written to disk again")
        for key, path in disk_objects(stack.cache_dir("a1")).items():
            raw = path.read_bytes()
            meta, offset = decode_header(raw)
            assert digest_bytes(raw[offset:]) == meta.digest, key  # the bad files are gone
        print(
            f"refill of a corrupted object: {refill_s:.3f} s; {len(rels)} corrupted, all refilled"
        )


@pytest.mark.parametrize("path", ["front", "aiohttp"])
async def test_objects_corrupted_while_it_runs_are_never_served_and_are_refilled(
    tmp_path: Path, store: TitleStore, path: str
) -> None:
    files = store.manifest(TITLE)["files"]
    rels = [rel for rel in files if rel.endswith(".m4s")][:6]
    spec = ApplianceSpec(
        "a1",
        # Every hit from disk (a 1 KB memory tier holds no segment), one refill per object,
        # and no scrubber: the fingerprint check alone must catch these.
        flags=("--read-ahead", "0", "--mem", "1KB"),
        extra="scrub_bytes_per_s = 0",
    )
    # HTTP/1.0 is handed over to aiohttp, which sends disk hits with its own sendfile.
    version = aiohttp.HttpVersion11 if path == "front" else aiohttp.HttpVersion10

    async def fetch(rel: str) -> tuple[int, str, bytes]:
        async with http.get(stack.signed("a1", rel)) as r:
            return r.status, r.headers.get("X-Cache", ""), await r.read()

    async with (
        Stack(tmp_path, store, [spec]) as stack,
        aiohttp.ClientSession(version=version) as http,
    ):
        await stack.start("origin", "a1")
        for rel in rels:
            assert (await fetch(rel))[:2] == (200, "MISS")

        async def all_on_disk() -> bool:
            return (await stack.health("a1"))["tiers"]["disk"]["objects"] == len(rels)

        await wait_until(all_on_disk, "every object written to disk")
        for rel in rels:  # hits from disk, checked when written
            assert (await fetch(rel))[:2] == (200, "HIT")
        for p in disk_objects(stack.cache_dir("a1")).values():
            flip_a_body_byte(p)

        origin_before = await stack.origin_fetches()
        waits = []
        for rel in rels:
            started = time.monotonic()
            status, cache, body = await fetch(rel)
            waits.append(time.monotonic() - started)
            assert status == 200 and digest_bytes(body) == files[rel]["xxh3-128"], rel
            assert cache == "MISS", rel  # dropped and filled again, never the corrupt copy
        assert await stack.origin_fetches() - origin_before == len(rels)
        health = await stack.health("a1")
        assert health["corrupt_objects"] == {"serve": len(rels)}, health["corrupt_objects"]
        await wait_until(all_on_disk, "every refilled object written to disk again")
        for rel in rels:  # the refilled copies are hits again
            status, cache, body = await fetch(rel)
            assert (status, cache) == (200, "HIT")
            assert digest_bytes(body) == files[rel]["xxh3-128"], rel
        print(
            f"{path}: {len(rels)} objects corrupted while running, 0 served corrupt,"
            f" {len(rels)} refilled, slowest {max(waits):.3f} s"
        )
