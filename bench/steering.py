"""Benchmark: steering decisions (client IP -> site -> ranked appliances) per second per core.

The claim: one core makes >= 20,000 full decisions per second in-process, p99 < 2 ms. A
decision is ``SiteMap.site_for(client_ip)`` then ``RankingIndex.rank(title, site, n=5)``,
the work the steering server does for ``GET /steer`` before it writes JSON.

The fleet (seeded): 1,000 appliances in 50 sites; each site has 2-4 IPv4 /16s and one IPv6
/48 and falls back to 2 other sites; capacities 10-100 Gbit/s; about 5% of appliances are
unusable (down or breaker open) and 5% overloaded (past the load bound or shedding).
Requests: random titles from a 10,000-title catalogue; client IPs 80% IPv4 and 15% IPv6 from
the sites' networks, 5% from no site's (they go to the default site).

Throughput is timed over the whole request list with no per-decision timer; latency is a
second pass timing each decision. Each figure is the median of --runs runs, in one process
pinned to one CPU.

    python bench/steering.py [--decisions 50000] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steering.ranking import ApplianceState, RankingIndex, Site, SiteMap

SITES = 50
APPLIANCES = 1_000
TITLES = 10_000
N = 5  # appliances per decision, as the server returns them
UNUSABLE = 0.05  # fraction down or breaker-open
OVERLOADED = 0.05  # fraction past the load bound or shedding
CAPACITIES_MBPS = (10_000, 20_000, 40_000, 100_000)
TARGET_PER_S = 20_000
TARGET_P99_MS = 2.0


@dataclass(frozen=True)
class Fleet:
    sites: list[Site]
    appliances: list[ApplianceState]
    default_site: str


def make_fleet(rng: random.Random) -> Fleet:
    slash16s = rng.sample(range(256), 256)  # second octets of 10.x.0.0/16, each used once
    sites = []
    for i in range(SITES):
        cidrs = [f"10.{slash16s.pop()}.0.0/16" for _ in range(rng.randint(2, 4))]
        cidrs.append(f"2001:db8:{i:x}::/48")
        others = [j for j in range(SITES) if j != i]
        fallbacks = tuple(f"site-{j:02}" for j in rng.sample(others, 2))
        sites.append(Site(f"site-{i:02}", tuple(cidrs), fallbacks))
    appliances = []
    for k in range(APPLIANCES):
        capacity = rng.choice(CAPACITIES_MBPS)
        roll = rng.random()  # [0, UNUSABLE): unusable; then [.., + OVERLOADED): overloaded
        appliances.append(
            ApplianceState(
                id=f"oca-{k:04}",
                url=f"http://oca-{k:04}.example:8100",
                site=sites[k % SITES].name,
                capacity_mbps=capacity,
                up=roll >= UNUSABLE / 2,
                breaker_open=UNUSABLE / 2 <= roll < UNUSABLE,
                shedding=UNUSABLE <= roll < UNUSABLE + OVERLOADED / 2,
                egress_mbps=capacity
                * (0.95 if UNUSABLE + OVERLOADED / 2 <= roll < UNUSABLE + OVERLOADED else 0.5),
            )
        )
    return Fleet(sites, appliances, default_site=sites[0].name)


def make_requests(fleet: Fleet, count: int, rng: random.Random) -> list[tuple[str, str]]:
    """(client IP, title) pairs."""
    v4 = [ipaddress.ip_network(c) for s in fleet.sites for c in s.cidrs if ":" not in c]
    v6 = [ipaddress.ip_network(c) for s in fleet.sites for c in s.cidrs if ":" in c]
    requests = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.80:
            net = rng.choice(v4)
        elif roll < 0.95:
            net = rng.choice(v6)
        else:  # no site's: TEST-NET-3 or an IPv6 documentation /48 that no site has
            net = ipaddress.ip_network(rng.choice(("203.0.113.0/24", "2001:db8:ffff::/48")))
        ip = net[rng.randrange(net.num_addresses)]
        requests.append((str(ip), f"title-{rng.randrange(TITLES):05}"))
    return requests


def measure_in_process(
    site_map: SiteMap, index: RankingIndex, requests: list[tuple[str, str]]
) -> dict[str, float]:
    """One run: decisions per second over all requests, then each decision's latency."""
    site_for, rank = site_map.site_for, index.rank
    start = time.perf_counter()
    for ip, title in requests:
        rank(title, site_for(ip), N)
    elapsed = time.perf_counter() - start
    latencies_us = []
    clock = time.perf_counter_ns
    for ip, title in requests:
        t0 = clock()
        rank(title, site_for(ip), N)
        latencies_us.append((clock() - t0) / 1e3)
    cuts = statistics.quantiles(latencies_us, n=100)
    return {"decisions_per_s": len(requests) / elapsed, "p50_us": cuts[49], "p99_us": cuts[98]}


def measure_build(fleet: Fleet) -> dict[str, float]:
    """Milliseconds to build the SiteMap and a RankingIndex (one per fleet snapshot)."""
    start = time.perf_counter()
    site_map = SiteMap(fleet.sites, fleet.default_site)
    mid = time.perf_counter()
    RankingIndex(site_map.sites, fleet.appliances)
    end = time.perf_counter()
    return {"site_map_ms": (mid - start) * 1e3, "ranking_index_ms": (end - mid) * 1e3}


def machine() -> dict[str, object]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {"cores": os.cpu_count(), "cpu_model": model, "python": platform.python_version()}


def pin_to_one_cpu() -> int | None:
    """Pin this process to one CPU, so the figures are per core; the CPU, or None if unable."""
    try:
        cpu = max(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        return None
    return cpu


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=50_000, help="decisions per run")
    parser.add_argument("--runs", type=int, default=3, help="runs; figures are their median")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fleet and requests")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.decisions < 100 or args.runs < 1:
        parser.error("--decisions must be >= 100 and --runs >= 1")
    console = Console(stderr=args.json)
    cpu = pin_to_one_cpu()
    rng = random.Random(args.seed)
    fleet = make_fleet(rng)
    requests = make_requests(fleet, args.decisions, rng)
    site_map = SiteMap(fleet.sites, fleet.default_site)
    index = RankingIndex(site_map.sites, fleet.appliances)
    info = {
        **machine(),
        "pinned_cpu": cpu,
        "command": shlex.join(["python", *sys.argv]),
        "fleet": {
            "sites": len(fleet.sites),
            "appliances": len(fleet.appliances),
            "unusable": sum(not a.usable for a in fleet.appliances),
            "overloaded": sum(a.usable and a.overloaded() for a in fleet.appliances),
        },
    }
    console.print(
        f"{info['cores']} cores ({info['cpu_model']}), Python {info['python']}, "
        f"pinned to CPU {cpu}; {info['fleet']}",
        soft_wrap=True,
    )
    console.print(f"command: {info['command']}", soft_wrap=True)

    results: dict[str, dict[str, float]] = {}
    runs = [measure_in_process(site_map, index, requests) for _ in range(args.runs)]
    results["in-process"] = median_of(runs)
    # HTTP section (to come): time GET /steer?title=&client_ip= against a running steering
    # server with the same fleet and requests, and add it as results["http"].
    build = median_of([measure_build(fleet) for _ in range(args.runs)])

    ok = all(
        r["decisions_per_s"] >= TARGET_PER_S and r["p99_us"] < TARGET_P99_MS * 1e3
        for r in results.values()
    )
    if args.json:
        print(json.dumps({**info, "results": results, "build": build, "pass": ok}, indent=2))
    else:
        table = Table(title=f"site_for + rank(n={N}), median of {args.runs} runs")
        for column in ("path", "decisions/s", "p50 (us)", "p99 (us)"):
            table.add_column(column, justify="left" if column == "path" else "right")
        for path, r in results.items():
            table.add_row(
                path, f"{r['decisions_per_s']:,.0f}", f"{r['p50_us']:.1f}", f"{r['p99_us']:.1f}"
            )
        console.print(table)
    console.print(
        f"build per fleet snapshot: SiteMap {build['site_map_ms']:.2f} ms, "
        f"RankingIndex {build['ranking_index_ms']:.2f} ms"
    )
    console.print(
        f"target >= {TARGET_PER_S:,} decisions/s per core, p99 < {TARGET_P99_MS} ms: "
        + ("PASS" if ok else "FAIL"),
        style="green" if ok else "red",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
