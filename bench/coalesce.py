"""Coalesced misses: time to first byte of 100 simultaneous cold requests.

Starts a real origin and a real appliance (separate processes, loopback). Each run purges
the title and asks for one cold 1080p segment once, then warm once; then purges again
and sends 100 requests at once for it cold, then 100 warm (all hits). The warm crowd is
the reference: it costs the same connections and bytes, with no fill at all, so
"cold crowd p99 / warm crowd p99" near 1 means the 100th waiter of a fill gets its first
byte about as soon as it would from a cache hit. Also counts origin requests per cold
crowd (from the origin's own metrics): it must be 1.

    .venv/bin/python bench/coalesce.py [--runs 5] [--waiters 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.sample import make_sample  # noqa: E402
from origin.ingest import ingest  # noqa: E402
from origin.store import TitleStore  # noqa: E402
from tests.conftest import free_port, wait_for_port  # noqa: E402

OUT = ROOT / "bench" / "out" / "coalesce"
TITLE = "bench1080"
SEGMENT = "1080p/seg_00001.m4s"
ADMIN = "bench-admin-key-0123456789"


def prepare(title: str = TITLE, duration_s: float = 12) -> Path:
    """A store under bench/out with a 1080p title of the Seeds pattern (made once)."""
    store = OUT / "store"
    if not TitleStore(store).exists(title):
        OUT.mkdir(parents=True, exist_ok=True)
        source = OUT / f"{title}.mp4"
        if not source.exists():
            make_sample(source, duration_s=duration_s, size=(1920, 1080), pattern="life")
        ingest(source, title, TitleStore(store))
    return store


def serve(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcdn.cli", "serve", *args, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return proc, f"http://127.0.0.1:{port}"


async def ttfb(session: aiohttp.ClientSession, url: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.get(url) as r:
        await r.content.readany()
        first = time.perf_counter() - started
        size = len(await r.read())
    assert r.status == 200, r.status
    return first, size


async def origin_gets(session: aiohttp.ClientSession, origin: str) -> int:
    async with session.get(f"{origin}/metrics") as r:
        text = await r.text()
    m = re.search(r'route="/titles/\{title\}/\{path\}",status="200"\} ([0-9.]+)', text)
    return int(float(m.group(1))) if m else 0


async def crowd(session: aiohttp.ClientSession, url: str, waiters: int) -> list[float]:
    return sorted(t for t, _ in await asyncio.gather(*(ttfb(session, url) for _ in range(waiters))))


def pct(runs: list[list[float]], q: float) -> float:
    """Median over runs of each run's q-quantile, in ms."""
    return round(statistics.median(ts[min(len(ts) - 1, int(q * len(ts)))] for ts in runs) * 1000, 2)


async def measure(appliance: str, origin: str, runs: int, waiters: int) -> dict:
    """Cold (purged) and warm (cached) rounds, alternated; one request and a crowd of each."""
    url = f"{appliance}/titles/{TITLE}/{SEGMENT}"
    purge = f"{appliance}/admin/cache/titles/{TITLE}"
    auth = {"Authorization": f"Bearer {ADMIN}"}
    single = {"cold": [], "warm": []}
    crowds: dict[str, list[list[float]]] = {"cold": [], "warm": []}
    origin_per_crowd = []
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        for _ in range(runs):
            for mode in ("single", "crowd"):
                async with s.delete(purge, headers=auth) as r:
                    assert r.status == 200
                before = await origin_gets(s, origin)
                if mode == "single":
                    single["cold"].append((await ttfb(s, url))[0])
                    single["warm"].append((await ttfb(s, url))[0])
                else:
                    crowds["cold"].append(await crowd(s, url, waiters))
                    origin_per_crowd.append(await origin_gets(s, origin) - before)
                    crowds["warm"].append(await crowd(s, url, waiters))
    return {
        "runs": runs,
        "waiters": waiters,
        "single_cold_ttfb_ms": round(statistics.median(single["cold"]) * 1000, 2),
        "single_warm_ttfb_ms": round(statistics.median(single["warm"]) * 1000, 2),
        "crowd_cold_p50_ms": pct(crowds["cold"], 0.5),
        "crowd_cold_p99_ms": pct(crowds["cold"], 0.99),
        "crowd_warm_p50_ms": pct(crowds["warm"], 0.5),
        "crowd_warm_p99_ms": pct(crowds["warm"], 0.99),
        "cold_over_warm_p99": round(pct(crowds["cold"], 0.99) / pct(crowds["warm"], 0.99), 2),
        "origin_requests_per_cold_crowd": max(origin_per_crowd),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--waiters", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store = prepare()
    origin, origin_url = serve("origin", "--store", str(store))
    cache = OUT / "cache"
    appliance, appliance_url = serve(
        "appliance",
        "--id",
        "bench",
        "--cache-dir",
        str(cache),
        "--upstream",
        origin_url,
        "--open",
        "--admin-key",
        ADMIN,
    )
    try:
        result = asyncio.run(measure(appliance_url, origin_url, args.runs, args.waiters))
    finally:
        for p in (appliance, origin):
            p.terminate()
            p.wait()
    result["machine"] = f"{os.cpu_count()} cores"
    if args.json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        print(f"{k:>28}  {v}")


if __name__ == "__main__":
    main()
