"""Sequential read-ahead: what it does to the segment latency a player sees on a cold cache.

A real origin sits behind a small "far away" link (an HTTP relay in this script that adds
a round-trip delay and caps throughput, like an origin a continent away), and a real
appliance fills from it. A player reads one rendition's playlist, then its segments in
order with a pause between them (as a player with a full buffer does), once with the
appliance's read-ahead off and once with it on, the cache purged before each run.
Reports the median and p90 time to fetch a whole segment, and how many were hits.

    .venv/bin/python bench/readahead.py [--runs 3] [--rtt-ms 80] [--mbps 200] [--gap-ms 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.coalesce import ADMIN, prepare, serve  # noqa: E402
from tests.conftest import free_port  # noqa: E402

TITLE = "bench1080long"
DURATION_S = 48  # 12 segments
RENDITION = "1080p"


async def relay(origin: str, port: int, rtt_s: float, mbps: float) -> web.AppRunner:
    """Forward GETs to the origin after one round trip, at most ``mbps`` per response."""
    session = aiohttp.ClientSession()

    async def forward(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(rtt_s)
        async with session.get(f"{origin}{request.path_qs}") as up:
            body = await up.read()
            headers = {
                k: v
                for k, v in up.headers.items()
                if k.lower()
                in ("x-content-digest", "content-type", "cache-control", "etag", "x-not-found")
            }
            resp = web.StreamResponse(status=up.status, headers=headers)
            resp.content_length = len(body)
            await resp.prepare(request)
            chunk = 64 * 1024
            for i in range(0, len(body), chunk):
                await resp.write(body[i : i + chunk])
                await asyncio.sleep(chunk * 8 / (mbps * 1e6))
            return resp

    app = web.Application()
    app.router.add_get("/{tail:.*}", forward)
    app.on_cleanup.append(lambda _: session.close())
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def play(appliance: str, gap_s: float) -> tuple[list[float], int]:
    base = f"{appliance}/titles/{TITLE}/{RENDITION}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{base}/index.m3u8") as r:
            playlist = await r.text()
        segments = [ln for ln in playlist.splitlines() if ln and not ln.startswith("#")]
        times, hits = [], 0
        for seg in segments:
            started = time.perf_counter()
            async with s.get(f"{base}/{seg}") as r:
                await r.read()
                hits += r.headers.get("X-Cache") == "HIT"
            times.append(time.perf_counter() - started)
            await asyncio.sleep(gap_s)
    return times, hits


async def run(args: argparse.Namespace, origin_url: str) -> dict:
    relay_port = free_port()
    runner = await relay(origin_url, relay_port, args.rtt_ms / 1000, args.mbps)
    results: dict[str, dict] = {}
    try:
        for read_ahead in (0, 2):
            cache = ROOT / "bench" / "out" / "readahead" / f"cache-{read_ahead}"
            proc, url = serve(
                "appliance",
                "--id",
                f"ra{read_ahead}",
                "--cache-dir",
                str(cache),
                "--upstream",
                f"http://127.0.0.1:{relay_port}",
                "--open",
                "--admin-key",
                ADMIN,
                "--read-ahead",
                str(read_ahead),
            )
            try:
                all_times, all_hits = [], 0
                for _ in range(args.runs):
                    async with (
                        aiohttp.ClientSession() as s,
                        s.delete(
                            f"{url}/admin/cache/titles/{TITLE}",
                            headers={"Authorization": f"Bearer {ADMIN}"},
                        ) as r,
                    ):
                        assert r.status == 200
                    times, hits = await play(url, args.gap_ms / 1000)
                    all_times += times
                    all_hits += hits
                all_times.sort()
                results[f"read_ahead={read_ahead}"] = {
                    "segments": len(all_times),
                    "median_ms": round(statistics.median(all_times) * 1000, 1),
                    "p90_ms": round(all_times[int(0.9 * (len(all_times) - 1))] * 1000, 1),
                    "hits": all_hits,
                }
            finally:
                proc.terminate()
                proc.wait()
    finally:
        await runner.cleanup()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rtt-ms", type=float, default=80.0)
    parser.add_argument("--mbps", type=float, default=200.0)
    parser.add_argument("--gap-ms", type=float, default=300.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    store = prepare(TITLE, DURATION_S)
    origin, origin_url = serve("origin", "--store", str(store))
    try:
        result = asyncio.run(run(args, origin_url))
    finally:
        origin.terminate()
        origin.wait()
    result["setup"] = {
        "rtt_ms": args.rtt_ms,
        "mbps": args.mbps,
        "gap_ms": args.gap_ms,
        "runs": args.runs,
        "machine": f"{os.cpu_count()} cores",
    }
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
