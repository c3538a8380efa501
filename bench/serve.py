"""Benchmark: the appliance against nginx, serving the same objects.

The claims (issue 3): on a 2 MB segment the appliance moves at least as many bytes per
second as nginx (sendfile on, one worker), both from its memory tier and from its disk
tier (page cache warm); on a 1 KB playlist it answers at least a third of nginx's
requests per second.

The objects are a small title in an origin store; nginx serves the title's directory,
and two appliances (one whose memory tier holds the segment, one whose memory tier is
too small for it, so it is served from disk with sendfile) fill from the origin once
and then serve hits. Each server process is pinned to core 0, wrk (one thread, the same
connections for every target) to core 1; targets alternate run by run and the table
shows medians. Appliances run with --no-access-log, as nginx runs with access_log off.

    .venv/bin/python bench/serve.py [--runs 3] [--duration-s 10] [--connections 16] [--json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sendfile import (  # noqa: E402
    SERVER_CORE,
    Sample,
    free_port,
    machine,
    measure,
    start_nginx,
    wait_for_port,
    wait_until_quiet,
)
from streamcdn.digest import ALGORITHM, digest_bytes  # noqa: E402

TITLE = "servebench"
OBJECTS = {"seg.m4s": 2 * 1000 * 1000, "index.m3u8": 1000}  # a segment, a playlist


def make_title(store: Path) -> None:
    """A title whose files are random bytes of the sizes above, with a valid manifest."""
    title = store / TITLE
    title.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, size in OBJECTS.items():
        data = os.urandom(size)
        (title / name).write_bytes(data)
        files[name] = {"size": size, ALGORITHM: digest_bytes(data)}
    (title / "manifest.json").write_text(
        json.dumps(
            {
                "version": 1,
                "title": TITLE,
                "name": TITLE,
                "duration_s": 4.0,
                "master": "index.m3u8",
                "renditions": [],
                "files": files,
            }
        )
    )


def start(*args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, "-m", "streamcdn.cli", "serve", *args,
         "--port", str(port), "--no-access-log"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for_port(port, proc)
    return proc, port


def warm(url: str, expect: str) -> None:
    for _ in range(3):  # fill, then hit until it comes from the tier we mean to measure
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()
            cache = r.headers["X-Cache"]
    if cache != expect:
        raise RuntimeError(f"{url} answered X-Cache {cache}, not {expect}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "serve")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    note = wait_until_quiet()
    out = args.workdir.resolve()
    store = out / "store"
    make_title(store)
    procs = []
    try:
        nginx, nginx_port = start_nginx(out, store)
        origin, origin_port = start("origin", "--store", str(store))
        upstream = f"http://127.0.0.1:{origin_port}"
        mem, mem_port = start(
            "appliance",
            "--id",
            "mem",
            "--cache-dir",
            str(out / "cache-mem"),
            "--upstream",
            upstream,
            "--open",
            "--mem",
            "256MB",
        )
        disk, disk_port = start(
            "appliance",
            "--id",
            "disk",
            "--cache-dir",
            str(out / "cache-disk"),
            "--upstream",
            upstream,
            "--open",
            "--mem",
            "10KB",
        )
        procs = [nginx, origin, mem, disk]
        path = f"/titles/{TITLE}"
        warm(f"http://127.0.0.1:{mem_port}{path}/seg.m4s", "HIT")
        warm(f"http://127.0.0.1:{mem_port}{path}/index.m3u8", "HIT")
        warm(f"http://127.0.0.1:{disk_port}{path}/seg.m4s", "HIT")
        targets = {
            ("segment", "nginx"): (f"http://127.0.0.1:{nginx_port}/{TITLE}/seg.m4s", nginx),
            ("segment", "memory tier"): (f"http://127.0.0.1:{mem_port}{path}/seg.m4s", mem),
            ("segment", "disk tier"): (f"http://127.0.0.1:{disk_port}{path}/seg.m4s", disk),
            ("playlist", "nginx"): (f"http://127.0.0.1:{nginx_port}/{TITLE}/index.m3u8", nginx),
            ("playlist", "memory tier"): (f"http://127.0.0.1:{mem_port}{path}/index.m3u8", mem),
        }
        samples: dict[tuple[str, str], list[Sample]] = {k: [] for k in targets}
        for run in range(args.runs):
            for key, (url, proc) in targets.items():
                sample = measure(url, proc.pid, args.connections, args.duration_s)
                samples[key].append(sample)
                print(
                    f"run {run + 1}: {key[0]:<8} {key[1]:<12} {sample.rps:>10.0f} req/s "
                    f"(server {sample.server_cores:.2f} cores, other {sample.other_cores:.2f})",
                    file=sys.stderr,
                )
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    rps = {k: statistics.median(s.rps for s in v) for k, v in samples.items()}
    size = {"segment": OBJECTS["seg.m4s"], "playlist": OBJECTS["index.m3u8"]}

    seg_mem = round(rps[("segment", "memory tier")] / rps[("segment", "nginx")], 2)
    seg_disk = round(rps[("segment", "disk tier")] / rps[("segment", "nginx")], 2)
    playlist = round(rps[("playlist", "memory tier")] / rps[("playlist", "nginx")], 2)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "connections": args.connections,
        "duration_s": args.duration_s,
        "runs": args.runs,
        "note": note,
        "targets": {
            f"{obj} / {who}": {"req_per_s": round(r), "GB_per_s": round(r * size[obj] / 1e9, 3)}
            for (obj, who), r in rps.items()
        },
        "ratios": {
            "segment memory / nginx (bytes/s)": seg_mem,
            "segment disk / nginx (bytes/s)": seg_disk,
            "playlist memory / nginx (req/s)": playlist,
        },
    }
    targets_met = {
        "segment memory >= 1.0x": seg_mem >= 1.0,
        "segment disk >= 1.0x": seg_disk >= 1.0,
        "playlist >= 0.33x": playlist >= 0.33,
    }
    result["targets_met"] = targets_met
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
