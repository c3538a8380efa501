"""Benchmark: serving a file from disk under uvloop, against nginx with sendfile.

The question: how fast appliance/sendfile.py serves a page-cached 2 MiB segment from
disk, against nginx (sendfile on, one worker), bytes held in RAM, and aiohttp's
FileResponse, which under uvloop falls back to read + write in a thread. Figures and
the verdict are in bench/README.md.

Each server runs as its own process pinned to core 0 (``taskset -c 0``); wrk runs on
core 1 with one thread and the same connections for every target. Targets alternate
(A B C ... A B C ...) so that noise lands on all alike; the table shows medians.

    python bench/sendfile.py [--runs 3] [--duration-s 10] [--connections 16]
                             [--workdir bench/out/sendfile]

``python bench/sendfile.py serve --dir DIR --port P`` is the aiohttp side, on uvloop:
/fast/NAME (send_file_region, SENDFILE), /copy/NAME (send_file_region, COPY),
/mmap/NAME (a rejected candidate: an mmap written as one memoryview), /ram/NAME (bytes
held in memory, as a memory-tier hit) and /fileresponse/NAME (aiohttp's FileResponse).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import mmap
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # appliance/ is not installed
from appliance.sendfile import Transfer, send_file_region

FILES = {"seg": 2 * 1024 * 1024, "small": 1024}  # bytes: an HLS segment, a playlist-sized object
SERVER_CORE, WRK_CORE = "0", "1"
OTHER_BENCHES = r"bench/\w+\.py"  # wait while any other benchmark of this repo runs
QUIET_POLL_S, QUIET_WAIT_MAX_S = 30, 20 * 60
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
AIOHTTP_TARGETS = ("fast", "copy", "mmap", "ram", "fileresponse")

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {out}/nginx.pid;
error_log {out}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    sendfile on;
    tcp_nopush on;
    access_log off;
    keepalive_requests 100000000;  # like aiohttp, never close a busy keep-alive connection
    client_body_temp_path {out}/tmp;
    proxy_temp_path {out}/tmp;
    fastcgi_temp_path {out}/tmp;
    uwsgi_temp_path {out}/tmp;
    scgi_temp_path {out}/tmp;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


# --- the aiohttp server -------------------------------------------------------------


def make_app(root: Path) -> web.Application:
    in_ram = {p.name: p.read_bytes() for p in root.iterdir()}

    async def region(request: web.Request) -> web.StreamResponse:
        fd = os.open(root / request.match_info["name"], os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            response = web.StreamResponse()
            response.content_length = size
            prefer = Transfer.COPY if request.path.startswith("/copy/") else Transfer.SENDFILE
            await send_file_region(request, response, fd, 0, size, prefer=prefer)
        finally:
            os.close(fd)
        return response

    async def from_mmap(request: web.Request) -> web.StreamResponse:
        # The candidate not taken (see bench/README.md): no copy in Python either, but it
        # pays a page-table set-up and tear-down per request, the map cannot be closed
        # while uvloop still holds slices of it, and a file truncated meanwhile is SIGBUS.
        fd = os.open(root / request.match_info["name"], os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, mmap.MAP_SHARED | mmap.MAP_POPULATE, mmap.PROT_READ)
        finally:
            os.close(fd)
        response = web.StreamResponse()
        response.content_length = size
        await response.prepare(request)
        await response.write(memoryview(mapped))  # unmapped by GC once uvloop lets go
        await response.write_eof()
        return response

    async def from_ram(request: web.Request) -> web.Response:
        return web.Response(body=in_ram[request.match_info["name"]])

    async def file_response(request: web.Request) -> web.FileResponse:
        return web.FileResponse(root / request.match_info["name"])

    app = web.Application()
    app.router.add_get("/fast/{name}", region)
    app.router.add_get("/copy/{name}", region)
    app.router.add_get("/mmap/{name}", from_mmap)
    app.router.add_get("/ram/{name}", from_ram)
    app.router.add_get("/fileresponse/{name}", file_response)
    return app


def serve(root: Path, port: int) -> None:
    # wrk stops mid-body at the end of every run; aiohttp would log each as a server error.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    web.run_app(
        make_app(root),
        host="127.0.0.1",
        port=port,
        loop=uvloop.new_event_loop(),
        access_log=None,
        print=None,
    )


# --- the driver ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port}")


def other_benchmarks() -> list[str]:
    found = subprocess.run(["pgrep", "-af", OTHER_BENCHES], capture_output=True, text=True)
    mine = {os.getpid(), os.getppid()}  # a wrapper (timeout, a shell) names this script too
    return [line for line in found.stdout.splitlines() if int(line.split()[0]) not in mine]


def wait_until_quiet() -> str:
    """Wait for other benchmarks to finish; returns a note for the README if they did not."""
    deadline = time.monotonic() + QUIET_WAIT_MAX_S
    while busy := other_benchmarks():
        if time.monotonic() > deadline:
            return f"ran while other benchmarks were running: {'; '.join(busy)}"
        print(f"waiting for other benchmarks to finish: {busy}", file=sys.stderr)
        time.sleep(QUIET_POLL_S)
    return ""


def make_files(root: Path) -> dict[str, bytes]:
    root.mkdir(parents=True, exist_ok=True)
    files = {name: os.urandom(size) for name, size in FILES.items()}
    for name, data in files.items():
        (root / name).write_bytes(data)
        (root / name).read_bytes()  # page cache warm
    return files


def start_nginx(out: Path, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        sys.exit("nginx not found: apt-get install -y nginx wrk")
    port = free_port()
    (out / "tmp").mkdir(exist_ok=True)
    conf = out / "nginx.conf"
    conf.write_text(NGINX_CONF.format(out=out, port=port, root=root))
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, nginx, "-p", str(out), "-e", str(out / "nginx-error.log"),
         "-c", str(conf)]
    )  # fmt: skip
    wait_for_port(port, proc)
    return proc, port


def start_aiohttp(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen(
        ["taskset", "-c", SERVER_CORE, sys.executable, __file__, "serve", "--dir", str(root),
         "--port", str(port)]
    )  # fmt: skip
    wait_for_port(port, proc)
    return proc, port


def machine_busy_s() -> float:
    """CPU seconds spent busy so far, summed over every core (/proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq = map(
        int, Path("/proc/stat").read_text().split(maxsplit=8)[1:8]
    )
    return (user + nice + system + irq + softirq) / TICKS_PER_S


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and of its children (an nginx worker)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / TICKS_PER_S
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return own + sum(process_cpu_s(int(child)) for child in children)


def wrk_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk runs are the waited-for children
    return usage.ru_utime + usage.ru_stime


@dataclasses.dataclass(frozen=True)
class Sample:
    rps: float
    server_cores: float  # < 1 means the server was not the bottleneck: wrk was
    client_cores: float
    other_cores: float  # anything else on the machine: noise


def measure(url: str, server_pid: int, connections: int, duration_s: int) -> Sample:
    before = machine_busy_s(), process_cpu_s(server_pid), wrk_cpu_s(), time.monotonic()
    rps = wrk(url, connections, duration_s)
    after = machine_busy_s(), process_cpu_s(server_pid), wrk_cpu_s(), time.monotonic()
    busy, server, client, wall = (a - b for a, b in zip(after, before, strict=True))
    return Sample(rps, server / wall, client / wall, max(0.0, busy - server - client) / wall)


def wrk(url: str, connections: int, duration_s: int) -> float:
    """Requests per second; fails on any error, since a fast wrong server is no result."""
    out = subprocess.run(
        ["taskset", "-c", WRK_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors on {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None:
        raise RuntimeError(f"no Requests/sec in wrk output for {url}:\n{out}")
    return float(match.group(1))


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    return (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"uvloop {uvloop.__version__}, {nginx.removeprefix('nginx version: ')}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve", help="run the aiohttp side (used by the driver)")
    serve_cmd.add_argument("--dir", type=Path, required=True)
    serve_cmd.add_argument("--port", type=int, required=True)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration-s", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path("bench/out/sendfile"))
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.dir, args.port)
        return

    out = args.workdir.resolve()
    root = out / "files"
    files = make_files(root)
    note = wait_until_quiet()
    nginx, nginx_port = start_nginx(out, root)
    server, port = start_aiohttp(root)
    try:
        bases = {"nginx": f"http://127.0.0.1:{nginx_port}"} | {
            target: f"http://127.0.0.1:{port}/{target}" for target in AIOHTTP_TARGETS
        }
        pids = {"nginx": nginx.pid} | dict.fromkeys(AIOHTTP_TARGETS, server.pid)
        for target, base in bases.items():  # a fast wrong answer is no answer
            for name, data in files.items():
                with urllib.request.urlopen(f"{base}/{name}") as resp:
                    if resp.read() != data:
                        raise RuntimeError(f"{target} served {name} wrong")
        samples: dict[tuple[str, str], list[Sample]] = {}
        for run in range(args.runs):
            for name in files:
                for target, base in bases.items():
                    sample = measure(
                        f"{base}/{name}", pids[target], args.connections, args.duration_s
                    )
                    samples.setdefault((name, target), []).append(sample)
                    print(f"run {run + 1} {name} {target}: {sample}", file=sys.stderr)
    finally:
        for proc in (server, nginx):
            proc.terminate()
            proc.wait(timeout=15)
    if not note and other_benchmarks():
        note = "another benchmark started during the run"

    print(f"date {datetime.date.today()}; {machine()}")
    print(
        f"wrk -t1 -c{args.connections} -d{args.duration_s}s on core {WRK_CORE}, servers on "
        f"core {SERVER_CORE}; median of {args.runs} interleaved runs{'; ' + note if note else ''}"
    )
    for name, size in FILES.items():
        nginx_rps = statistics.median(s.rps for s in samples[(name, "nginx")])
        print(f"\n{name} ({size:,} bytes)\n")
        print(
            "| server | req/s | GB/s | vs nginx | server CPU µs/req | runs (req/s) "
            "| cores: server, wrk, other |"
        )
        print("|---|---:|---:|---:|---:|---|---|")
        for target in bases:
            runs = samples[(name, target)]
            rps = statistics.median(s.rps for s in runs)
            cpu_us = statistics.median(s.server_cores / s.rps * 1e6 for s in runs)
            cores = [
                statistics.median(getattr(s, f) for s in runs)
                for f in ("server_cores", "client_cores", "other_cores")
            ]
            print(
                f"| {target} | {rps:,.0f} | {rps * size / 1e9:.2f} | {rps / nginx_rps:.2f}x "
                f"| {cpu_us:,.0f} | {', '.join(f'{s.rps:,.0f}' for s in runs)} "
                f"| {', '.join(f'{c:.2f}' for c in cores)} |"
            )


if __name__ == "__main__":
    main()
