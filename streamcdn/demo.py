"""`streamcdn demo`: the stack on one machine, each service its own process.

For now the stack is the origin with three sample titles of clearly different
complexity. The first run makes and ingests the samples (a few minutes on two
cores); later runs find them and start at once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from streamcdn.errors import UserError
from streamcdn.progress import console

SAMPLE_DURATION_S = 30.0
SAMPLE_SIZE = (1920, 1080)
QUICK_DURATION_S = 6.0  # --quick: small samples for a fast first look (and the tests)
QUICK_SIZE = (640, 360)
START_TIMEOUT_S = 20.0
ORIGIN_OFFSET = 2  # ports: control = base, steering = base + 1, origin = base + 2


@dataclass(frozen=True)
class DemoTitle:
    title: str
    name: str
    pattern: str


CATALOGUE = (
    DemoTitle("calm", "Calm Gradient", "calm"),
    DemoTitle("testsrc", "Test Pattern", "testsrc"),
    DemoTitle("life", "Seeds (cellular automaton)", "life"),
)


def prepare_titles(data: Path, *, quick: bool = False) -> Path:
    """Make and ingest whatever sample title is missing; return the store directory."""
    from media.sample import make_sample
    from origin.store import TitleStore
    from streamcdn.progress import ingest_with_progress, progress_bar

    samples, store_dir = data / "samples", data / "store"
    try:
        samples.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--data {data}: cannot create: {exc.strerror}") from None
    store = TitleStore(store_dir).ensure()
    duration_s, size = (QUICK_DURATION_S, QUICK_SIZE) if quick else (SAMPLE_DURATION_S, SAMPLE_SIZE)
    for t in CATALOGUE:
        if store.exists(t.title):
            continue
        source = samples / f"{t.title}.mp4"
        if not source.exists():
            with progress_bar(f"sample {t.title}", duration_s) as update:
                make_sample(
                    source,
                    duration_s=duration_s,
                    size=size,
                    pattern=t.pattern,
                    on_progress=update,
                )
        ingest_with_progress(source, t.title, store_dir, name=t.name, force=False)
    return store_dir


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def start_service(name: str, args: list[str], url: str, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``streamcdn serve ...`` in its own process; wait until /health answers."""
    if _healthy(url):
        raise UserError(f"{name}: something already answers at {url}; stop it or use --port-base")
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamcdn.cli", "serve", *args],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"{name} exited with {proc.returncode}; see {log_path}")
        if _healthy(url):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise UserError(
        f"{name} did not answer at {url} within {START_TIMEOUT_S:.0f} s; see {log_path}"
    )


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(
    data: Path, *, port_base: int = 8080, host: str = "127.0.0.1", quick: bool = False
) -> None:
    data = data.resolve()
    # SIGTERM (a service manager, `kill`) stops the demo as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    store_dir = prepare_titles(data, quick=quick)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    origin_url = f"http://{host}:{port_base + ORIGIN_OFFSET}"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(
            start_service(
                "origin",
                [
                    "origin",
                    "--store",
                    str(store_dir),
                    "--host",
                    host,
                    "--port",
                    str(port_base + ORIGIN_OFFSET),
                ],
                origin_url,
                logs / "origin.log",
            )
        )
        info = {
            "pid": os.getpid(),
            "origin": origin_url,
            "logs": str(logs),
            "titles": {
                t.title: {"name": t.name, "master": f"{origin_url}/titles/{t.title}/master.m3u8"}
                for t in CATALOGUE
            },
        }
        (data / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
        console.print(f"\n[bold]streamcdn demo is up[/bold] (details in {data / 'demo.json'})")
        console.print(f"  origin     {origin_url}/titles")
        for t in CATALOGUE:
            console.print(f"  {t.title:<10} {info['titles'][t.title]['master']}")
        first = info["titles"][CATALOGUE[0].title]["master"]
        console.print(f"\nPlay one:  vlc {first}\n     or:  ffplay {first}")
        console.print("Ctrl-C stops everything.")
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        dead = next(p for p in procs if p.poll() is not None)
        raise UserError(f"a service exited with {dead.returncode}; see the logs in {logs}")
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stop_all(procs)
