"""Benchmark: steering decisions (client IP -> site -> ranked appliances) per second per core.

The claim: one core makes >= 20,000 full decisions per second in-process, p99 < 2 ms. A
decision is ``SiteMap.site_for(client_ip)`` then ``RankingIndex.rank(title, site, n=5)``,
the work the steering server does for ``GET /steer`` before it writes JSON. Only the
in-process figure decides PASS or FAIL; the HTTP figure below is for information.

The fleet (seeded): 1,000 appliances in 50 sites; each site has 2-4 IPv4 /16s and one IPv6
/48 and falls back to 2 other sites; capacities 10-100 Gbit/s; about 5% of appliances are
unusable (down or breaker open) and 5% overloaded (past the load bound or shedding).
Requests: random titles from a 10,000-title catalogue; client IPs 80% IPv4 and 15% IPv6 from
the sites' networks, 5% from no site's (they go to the default site).

In-process: throughput is timed over the whole request list with no per-decision timer;
latency is a second pass timing each decision; one process pinned to one CPU.

HTTP: the same fleet as a deployment file (in a new directory under bench/out/steering/)
served by ``streamcdn serve steering --no-access-log`` pinned to core 0. Every usable
appliance sends one signed heartbeat before each run (with heartbeat_interval_s = 60 it
stays up for 180 s); the unusable ones send none, so they are down, as in-process (a
breaker cannot be set by heartbeat; down ranks the same). 200 answers are checked against
in-process ``rank()`` first. Then wrk (one thread, 16 connections, pinned to core 1) cycles
through ``GET /steer?title=ID&client_ip=IP&n=5`` for the first 5,000 requests; decisions/s
is wrk's requests/s and p50/p99 its latencies, which include queueing behind the other
connections. Needs wrk (``apt-get install wrk``); --no-http skips it.

Each figure is the median of --runs runs.

    python bench/steering.py [--decisions 50000] [--runs 3] [--duration-s 10] [--no-http]
                             [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.host import machine
from bench.sendfile import SERVER_CORE, WRK_CORE, free_port, process_cpu_s, wait_for_port
from steering.ranking import ApplianceState, RankingIndex, Site, SiteMap
from streamcdn import config
from streamcdn.tokens import SIGNATURE_HEADER, SigningKey, sign_body

SITES = 50
APPLIANCES = 1_000
TITLES = 10_000
N = 5  # appliances per decision, as the server returns them
UNUSABLE = 0.05  # fraction down or breaker-open
OVERLOADED = 0.05  # fraction past the load bound or shedding
CAPACITIES_MBPS = (10_000, 20_000, 40_000, 100_000)
TARGET_PER_S = 20_000
TARGET_P99_MS = 2.0

OUT = Path(__file__).resolve().parent / "out" / "steering"
HEARTBEAT_INTERVAL_S = 60.0  # one heartbeat keeps an appliance up for the whole run...
DOWN_AFTER_MISSED = 3  # ...of at most 3 x 60 s
MAX_DURATION_S = 120  # a run must end before its heartbeats go stale
HTTP_PATHS = 5_000  # requests wrk cycles through
HTTP_SAMPLE = 200  # answers checked against in-process rank() before timing
CONNECTIONS = 16
FLEET_WAIT_S = 10.0  # for the server's view (rebuilt every 0.5 s) to show the heartbeats
WRK_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6}


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


# -- HTTP: the same decisions through a steering server ------------------------------------


def deployment_toml(fleet: Fleet, signing_key: str) -> str:
    """The bench fleet as a deployment file; json.dumps writes valid TOML basic strings."""
    q = json.dumps
    lines = [
        "[keys]",
        f"signing = [{q(signing_key)}]",
        "\n[origin]",
        'url = "http://127.0.0.1:9"',  # never fetched: steering only reads the file
        "\n[steering]",
        f"default_site = {q(fleet.default_site)}",
        f"heartbeat_interval_s = {HEARTBEAT_INTERVAL_S}",
        f"down_after_missed = {DOWN_AFTER_MISSED}",
    ]
    for site in fleet.sites:
        lines += [
            "\n[[sites]]",
            f"name = {q(site.name)}",
            f"cidrs = {q(list(site.cidrs))}",
            f"fallbacks = {q(list(site.fallbacks))}",
        ]
    for a in fleet.appliances:
        lines += [
            "\n[[appliances]]",
            f"id = {q(a.id)}",
            f"url = {q(a.url)}",
            f"site = {q(a.site)}",
            f"capacity_mbps = {a.capacity_mbps}",
        ]
    return "\n".join(lines) + "\n"


def steer_path(ip: str, title: str) -> str:
    return f"/steer?title={title}&client_ip={urllib.parse.quote(ip, safe='')}&n={N}"


def wrk_script(paths: list[str]) -> str:
    """Lua for wrk: each request is the next path, round and round."""
    listed = ",\n".join(json.dumps(p) for p in paths)  # URL-quoted: no Lua escapes needed
    return (
        f"local paths = {{\n{listed}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\nend\n'
    )


def call(conn: http.client.HTTPConnection, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer; RuntimeError on any status but 200."""
    conn.request(method, path, **kwargs)
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {body[:200]!r}")
    return json.loads(body)


@contextlib.contextmanager
def steering_server(deployment: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of ``streamcdn serve steering`` on SERVER_CORE, stopped on exit."""
    port = free_port()
    with open(deployment.parent / "steering.log", "wb") as log:
        server = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "streamcdn.cli", "serve",
             "steering", "--config", str(deployment), "--port", str(port), "--no-access-log"],
            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent,
        )  # fmt: skip
    try:
        wait_for_port(port, server)
        yield port, server.pid
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def send_heartbeats(conn: http.client.HTTPConnection, fleet: Fleet, key: SigningKey) -> int:
    """One signed heartbeat from each usable appliance; how many appliances should be up."""
    usable = [a for a in fleet.appliances if a.usable]
    for a in usable:
        body = json.dumps(
            {
                "id": a.id,
                "status": "ok",
                "sent_at": time.time(),
                "egress_bps": a.egress_mbps * 1e6,
                "limiter": {"shedding": a.shedding},
            }
        ).encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign_body(body, key)}
        call(conn, "POST", "/heartbeat", body=body, headers=headers)
    return len(usable)


def wait_for_fleet(conn: http.client.HTTPConnection, up: int) -> None:
    deadline = time.monotonic() + FLEET_WAIT_S
    while True:
        statuses = [a["status"] for a in call(conn, "GET", "/fleet")["appliances"]]
        if statuses.count("up") == up:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"/fleet shows {statuses.count('up')} appliances up, not {up}")
        time.sleep(0.1)


def check_answers(
    conn: http.client.HTTPConnection,
    site_map: SiteMap,
    index: RankingIndex,
    requests: list[tuple[str, str]],
) -> None:
    """The server's answers must be the in-process decisions: a fast wrong server is no result."""
    for ip, title in requests:
        got = call(conn, "GET", steer_path(ip, title))
        want = index.rank(title, site_map.site_for(ip), N)
        got_ids = [a["id"] for a in got["appliances"]]
        want_ids = [a.id for a in want.appliances]
        if (got["site"], got_ids) != (want.site, want_ids):
            raise RuntimeError(
                f"GET {steer_path(ip, title)} answered site {got['site']} {got_ids}; "
                f"in-process: site {want.site} {want_ids}"
            )


def wrk(port: int, script: Path, duration_s: int) -> dict[str, float]:
    """Requests/s and p50/p99 latency; fails on any error or non-2xx answer."""
    command = ["taskset", "-c", WRK_CORE, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s",
               "--latency", "-s", str(script), f"http://127.0.0.1:{port}"]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if rps is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    result = {"decisions_per_s": float(rps.group(1))}
    for pct in (50, 99):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)$", out, re.M)
        if m is None:
            raise RuntimeError(f"no {pct}% latency in wrk's output:\n{out}")
        result[f"p{pct}_us"] = float(m.group(1)) * WRK_UNITS_US[m.group(2)]
    return result


def measure_http(
    fleet: Fleet,
    site_map: SiteMap,
    index: RankingIndex,
    requests: list[tuple[str, str]],
    runs: int,
    duration_s: int,
) -> list[dict[str, float]]:
    """Each run's figures through a real steering server, plus its CPU use (cores busy)."""
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=OUT))
    deployment = workdir / "deployment.toml"
    deployment.write_text(deployment_toml(fleet, f"bench:{secrets.token_hex(16)}"))
    key = config.load(deployment).signing_keys[0]  # ConfigError if the file is wrong
    sample = requests[:HTTP_PATHS]
    script = workdir / "steer.lua"
    script.write_text(wrk_script([steer_path(ip, title) for ip, title in sample]))
    results: list[dict[str, float]] = []
    with steering_server(deployment) as (port, pid):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        call(conn, "GET", "/health")
        for _ in range(runs):
            wait_for_fleet(conn, send_heartbeats(conn, fleet, key))
            if not results:
                check_answers(conn, site_map, index, sample[:HTTP_SAMPLE])
            cpu_before, start = process_cpu_s(pid), time.monotonic()
            result = wrk(port, script, duration_s)
            cores = (process_cpu_s(pid) - cpu_before) / (time.monotonic() - start)
            results.append({**result, "server_cores": cores})
        conn.close()
    return results


def measure_build(fleet: Fleet) -> dict[str, float]:
    """Milliseconds to build the SiteMap and a RankingIndex (one per fleet snapshot)."""
    start = time.perf_counter()
    site_map = SiteMap(fleet.sites, fleet.default_site)
    mid = time.perf_counter()
    RankingIndex(site_map.sites, fleet.appliances)
    end = time.perf_counter()
    return {"site_map_ms": (mid - start) * 1e3, "ranking_index_ms": (end - mid) * 1e3}


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
    parser.add_argument("--duration-s", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP measurement")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.decisions < 100 or args.runs < 1:
        parser.error("--decisions must be >= 100 and --runs >= 1")
    if not 1 <= args.duration_s <= MAX_DURATION_S:
        parser.error(f"--duration-s must be 1..{MAX_DURATION_S}")
    if not args.no_http and not (shutil.which("wrk") and shutil.which("taskset")):
        sys.exit("the HTTP measurement needs wrk and taskset: apt-get install wrk (or --no-http)")
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
    if not args.no_http:
        runs = measure_http(fleet, site_map, index, requests, args.runs, args.duration_s)
        results["http"] = median_of(runs)
        console.print(
            f"http: wrk -t1 -c{CONNECTIONS} -d{args.duration_s}s --latency on core {WRK_CORE}, "
            f"steering server on core {SERVER_CORE}, {min(len(requests), HTTP_PATHS):,} "
            f"requests cycled; {min(len(requests), HTTP_SAMPLE)} answers = in-process; "
            f"server CPU {results['http']['server_cores']:.2f} cores",
            soft_wrap=True,
        )
    build = median_of([measure_build(fleet) for _ in range(args.runs)])

    measured = results["in-process"]  # the target is for in-process decisions only
    ok = measured["decisions_per_s"] >= TARGET_PER_S and measured["p99_us"] < TARGET_P99_MS * 1e3
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
        f"target (in-process) >= {TARGET_PER_S:,} decisions/s per core, "
        f"p99 < {TARGET_P99_MS} ms: " + ("PASS" if ok else "FAIL"),
        style="green" if ok else "red",
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
