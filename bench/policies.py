"""Benchmark: our eviction policies against libCacheSim's on a request trace, by miss ratio.

The claim (issue 3): the default policy's byte miss ratio is at most that of the best of
libCacheSim's LRU, ARC, S3FIFO, Sieve, WTinyLFU, TwoQ and LIRS at every cache size.

Cache sizes are fractions of the trace's footprint (the sum of its unique objects' sizes).
Our policies run the way the appliance drives them: ``hit = p.hit(key)``, and on a miss
``p.admit(key, size)``; each checks its invariants after the run. libCacheSim's run in C
through its own CSV reader and ``process_trace``. Both count a byte miss ratio as
missed bytes / requested bytes and a request miss ratio as misses / requests; our LRU and
libCacheSim's LRU are printed side by side as the check that the two agree.

    python bench/traces.py                       # writes bench/out/{zipf,sessions}.csv
    python bench/policies.py --trace bench/out/zipf.csv [--sizes 0.01,0.05,0.1,0.2] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import libcachesim as lcs
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.policies import DEFAULT_POLICY, POLICIES, make_policy

LIBCACHESIM = ("LRU", "ARC", "S3FIFO", "Sieve", "WTinyLFU", "TwoQ", "LIRS")
DEFAULT_SIZES = "0.01,0.05,0.1,0.2"

Request = tuple[str, int]
Result = dict[str, float]


def read_trace(path: Path) -> list[Request]:
    """(key, size) per request from a ``time,obj_id,size`` CSV with a header."""
    with path.open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        if header[:3] != ["time", "obj_id", "size"]:
            raise SystemExit(f"{path}: expected the header time,obj_id,size, got {header}")
        return [(obj, int(size)) for _, obj, size, *_ in rows]


def footprint_bytes(requests: list[Request]) -> int:
    return sum(dict(requests).values())


def simulate(name: str, capacity_bytes: int, requests: list[Request]) -> Result:
    policy = make_policy(name, capacity_bytes)
    hit, admit = policy.hit, policy.admit
    misses = missed_bytes = total_bytes = 0
    for key, size in requests:
        total_bytes += size
        if not hit(key):
            misses += 1
            missed_bytes += size
            admit(key, size)
    policy.check_invariants()
    return {"byte_miss": missed_bytes / total_bytes, "req_miss": misses / len(requests)}


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """libCacheSim's C code prints warnings on fd 1; keep them out of --json output."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def simulate_libcachesim(name: str, capacity_bytes: int, path: Path) -> Result:
    with path.open() as f:
        next(f)
        numeric_ids = next(f).split(",")[1].isdigit()  # else libCacheSim hashes the strings
    params = lcs.ReaderInitParam(
        has_header=True,
        has_header_set=True,
        delimiter=",",
        obj_id_is_num=numeric_ids,
        obj_id_is_num_set=True,
    )
    params.time_field, params.obj_id_field, params.obj_size_field = 1, 2, 3  # 1-based columns
    reader = lcs.TraceReader(str(path), lcs.TraceType.CSV_TRACE, params)
    with stdout_to_stderr():
        cache = getattr(lcs, name)(capacity_bytes)
        req_miss, byte_miss = cache.process_trace(reader)
    return {"byte_miss": byte_miss, "req_miss": req_miss}


def run(path: Path, sizes: list[str], console: Console) -> dict[str, dict[str, Result]]:
    requests = read_trace(path)
    footprint = footprint_bytes(requests)
    console.print(
        f"{path}: {len(requests):,} requests, {len(dict(requests)):,} objects, "
        f"footprint {footprint / 1e9:.1f} GB"
    )
    results: dict[str, dict[str, Result]] = {}
    for size in sizes:
        capacity = int(float(size) * footprint)
        for name in POLICIES:
            start = time.perf_counter()
            results.setdefault(f"ours:{name}", {})[size] = simulate(name, capacity, requests)
            elapsed = time.perf_counter() - start
            console.print(f"  size {size}: ours:{name} in {elapsed:.1f} s", style="dim")
        for name in LIBCACHESIM:
            results.setdefault(name, {})[size] = simulate_libcachesim(name, capacity, path)
    return results


def verdicts(results: dict[str, dict[str, Result]], sizes: list[str]) -> dict[str, bool]:
    ours = results[f"ours:{DEFAULT_POLICY}"]
    return {
        size: ours[size]["byte_miss"]
        <= min(results[name][size]["byte_miss"] for name in LIBCACHESIM)
        for size in sizes
    }


def tables(results: dict[str, dict[str, Result]], sizes: list[str], console: Console) -> None:
    for metric, title in (("byte_miss", "byte miss ratio"), ("req_miss", "request miss ratio")):
        table = Table(title=f"{title} by cache size (fraction of footprint)")
        table.add_column("policy")
        for size in sizes:
            table.add_column(size, justify="right")
        for name, by_size in results.items():
            best = {s: min(r[s][metric] for r in results.values()) for s in sizes}
            cells = [
                f"[bold]{by_size[s][metric]:.4f}[/]"
                if by_size[s][metric] == best[s]
                else f"{by_size[s][metric]:.4f}"
                for s in sizes
            ]
            table.add_row(name, *cells)
        console.print(table)


def summary(results: dict[str, dict[str, Result]], sizes: list[str], console: Console) -> None:
    lru_gap = max(
        abs(results["ours:lru"][s]["byte_miss"] - results["LRU"][s]["byte_miss"]) for s in sizes
    )
    console.print(
        f"ours:lru vs libCacheSim LRU: largest byte-miss difference {lru_gap:.5f}", soft_wrap=True
    )
    for size, ok in verdicts(results, sizes).items():
        ours = results[f"ours:{DEFAULT_POLICY}"][size]["byte_miss"]
        best_name = min(LIBCACHESIM, key=lambda name: results[name][size]["byte_miss"])
        best = results[best_name][size]["byte_miss"]
        console.print(
            f"size {size}: ours:{DEFAULT_POLICY} {ours:.4f} vs best libCacheSim "
            f"{best_name} {best:.4f} ({ours - best:+.4f}): " + ("PASS" if ok else "FAIL"),
            style="green" if ok else "red",
            soft_wrap=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, required=True, help="time,obj_id,size CSV")
    parser.add_argument(
        "--sizes", default=DEFAULT_SIZES, help="cache sizes as fractions of the footprint"
    )
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        if not 0 < float(size) <= 1:
            parser.error(f"--sizes: each size must be in (0, 1], got {size}")
    console = Console(stderr=args.json)
    results = run(args.trace, sizes, console)
    if args.json:
        print(json.dumps({**results, "default": DEFAULT_POLICY}, indent=2))
    else:
        tables(results, sizes, console)
    summary(results, sizes, console)
    return 0 if all(verdicts(results, sizes).values()) else 1


if __name__ == "__main__":
    sys.exit(main())
