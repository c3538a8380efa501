"""`streamcdn demo`: the stack on one machine, each service its own process.

For now the stack is the origin with three sample titles of clearly different
complexity and three cache appliances: ``ix1`` at an exchange point, filling from the
origin, and ``a1``, ``a2`` embedded in an ISP, filling from ``ix1`` and then the origin.
The first run makes and ingests the samples (a few minutes on two cores); later runs
find them and start at once.

A :class:`Supervisor` restarts any service that dies (after 2 s, doubling while it keeps
dying young), as systemd's ``Restart=always`` would for a real fleet; with ``--chaos``
(:mod:`streamcdn.chaos`) a chaos monkey runs against the appliances meanwhile, so the
dashboard shows them fail and come back.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from streamcdn.errors import UserError
from streamcdn.progress import console

if TYPE_CHECKING:
    from streamcdn.chaos import ChaosPlan, Record

SAMPLE_DURATION_S = 30.0
SAMPLE_SIZE = (1920, 1080)
QUICK_DURATION_S = 6.0  # --quick: small samples for a fast first look (and the tests)
QUICK_SIZE = (640, 360)
START_TIMEOUT_S = 20.0
STEERING_OFFSET = 1  # ports: control = base, steering = base + 1, origin = base + 2
ORIGIN_OFFSET = 2
RESTART_DELAY_S = 2.0  # a dead service is started again after this...
RESTART_DELAY_MAX_S = 30.0  # ...doubling up to this while it keeps dying young
STABLE_AFTER_S = 10.0  # a service that served this long before dying was not crash-looping


@dataclass(frozen=True)
class DemoTitle:
    title: str
    name: str
    pattern: str
    tags: tuple[str, ...]


CATALOGUE = (
    DemoTitle("calm", "Calm Gradient", "calm", ("abstract", "relaxing")),
    DemoTitle("testsrc", "Test Pattern", "testsrc", ("test", "classic")),
    DemoTitle("life", "Seeds (cellular automaton)", "life", ("science", "generative")),
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
        ingest_with_progress(source, t.title, store_dir, name=t.name, force=False, tags=t.tags)
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
    with log_path.open("ab") as log:  # the child has its own copy
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamcdn.cli", "serve", *args],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise UserError(f"{name} exited with {proc.returncode}; see {log_path}")
            if _healthy(url):
                return proc
            time.sleep(0.1)
    except KeyboardInterrupt:  # in its own session, it did not get the Ctrl-C
        proc.kill()
        raise
    proc.kill()
    raise UserError(
        f"{name} did not answer at {url} within {START_TIMEOUT_S:.0f} s; see {log_path}"
    )


def stop_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


@dataclass
class Supervised:
    name: str
    args: list[str]
    url: str
    log: Path
    proc: subprocess.Popen[bytes]
    started_at: float
    restart_at: float | None = None  # set when its death is noticed
    delay_s: float = RESTART_DELAY_S
    restarts: int = 0


class Supervisor:
    """Starts services and starts again any that exits, after a delay that doubles (up to
    RESTART_DELAY_MAX_S) while it keeps failing to start or dying within STABLE_AFTER_S:
    what systemd's ``Restart=always`` does for a real fleet. Call :meth:`check` often."""

    def __init__(
        self, say: Callable[[str], None] = console.print, *, delay_s: float = RESTART_DELAY_S
    ) -> None:
        self.say = say
        self.delay_s = delay_s
        self.services: list[Supervised] = []

    def start(self, name: str, args: list[str], url: str, log: Path) -> Supervised:
        proc = start_service(name, args, url, log)
        service = Supervised(name, args, url, log, proc, time.monotonic(), delay_s=self.delay_s)
        self.services.append(service)
        return service

    def check(self) -> None:
        now = time.monotonic()
        for s in self.services:
            if s.proc.poll() is None:
                continue
            if s.restart_at is None:
                if now - s.started_at >= STABLE_AFTER_S:
                    s.delay_s = self.delay_s  # it ran well: not a crash loop
                s.restart_at = now + s.delay_s
                self.say(
                    f"[yellow]{s.name} exited with {s.proc.returncode}; starting it again in "
                    f"{s.delay_s:g} s (its log: {s.log})[/]"
                )
                s.delay_s = min(2 * s.delay_s, RESTART_DELAY_MAX_S)
            elif now >= s.restart_at:
                try:
                    s.proc = start_service(s.name, s.args, s.url, s.log)
                except UserError as exc:
                    s.restart_at = time.monotonic() + s.delay_s
                    self.say(f"[red]{s.name} did not start again: {exc}[/]")
                    s.delay_s = min(2 * s.delay_s, RESTART_DELAY_MAX_S)
                    continue
                s.started_at, s.restart_at = time.monotonic(), None
                s.restarts += 1
                self.say(f"[green]{s.name} is back at {s.url} (restart {s.restarts})[/]")

    def stop_all(self) -> None:
        stop_all([s.proc for s in self.services])


PHASE_SUFFIX = {"end": " ends", "again": " again"}


def _say_chaos(record: Record) -> None:
    what = f"{record.action}{PHASE_SUFFIX.get(record.phase, '')}"
    targets = ", ".join(record.targets) or "-"
    result = "ok" if record.ok else f"[red]{record.detail}[/]"
    console.print(
        f"[magenta]chaos at {record.t_s:.1f} s: {what} on {targets} ({record.why}): {result}[/]"
    )


def start_chaos(plan: ChaosPlan) -> Callable[[], None]:
    """Run a chaos monkey for ``plan`` on a loop of its own thread; returns its stop."""
    import asyncio
    import threading

    from streamcdn.chaos import ChaosMonkey

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="chaos", daemon=True)
    thread.start()
    monkey = ChaosMonkey(plan, on_record=_say_chaos)
    future = asyncio.run_coroutine_threadsafe(monkey.run(), loop)

    def stop() -> None:
        loop.call_soon_threadsafe(future.cancel)
        asyncio.run_coroutine_threadsafe(monkey.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return stop


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@dataclass(frozen=True)
class DemoAppliance:
    id: str
    site: str
    port_offset: int
    parents: tuple[str, ...]  # ids of parent appliances, tried before the origin


# DESIGN.md's topology: two appliances embedded in an ISP fill from the exchange point's.
APPLIANCES = (
    DemoAppliance("ix1", "ix", 22, ()),
    DemoAppliance("a1", "isp-a", 20, ("ix1",)),
    DemoAppliance("a2", "isp-a", 21, ("ix1",)),
)
PLAY_TOKEN_TTL_S = 24 * 3600
DEMO_EMAIL = "demo@streamcdn.test"


def ensure_account(control: str, email: str, password: str) -> None:
    """The demo account, created through control's own API (409: it exists already)."""
    body = json.dumps({"email": email, "password": password}).encode()
    request = urllib.request.Request(
        f"{control}/accounts", data=body, headers={"Content-Type": "application/json"}
    )
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as exc:
        if exc.code != 409:
            raise UserError(f"control refused the demo account: HTTP {exc.code}") from None
    except OSError as exc:
        raise UserError(f"control did not answer: {exc}") from None


def demo_secrets(data: Path) -> dict[str, str]:
    """The demo's signing and admin keys: made once, kept in DIR/secrets.json (mode 600)."""
    path = data / "secrets.json"
    if path.exists():
        kept: dict[str, str] = json.loads(path.read_text())
        if "demo_password" in kept:
            return kept
        path.unlink()  # written by an older demo: make a complete set
    secrets_ = {
        "signing_key": f"demo:{secrets.token_hex(16)}",
        "admin_key": secrets.token_hex(16),
        "demo_password": secrets.token_urlsafe(12),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets_, f, indent=2)
    return secrets_


def deployment_toml(
    data: Path, store: Path, *, host: str, port_base: int, keys: dict[str, str]
) -> str:
    """The demo's deployment file (see examples/deployment.toml for every key, commented)."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        "# Written by `streamcdn demo`; rewritten on every start.",
        "[keys]",
        f"signing = [{q(keys['signing_key'])}]",
        f"admin = {q(keys['admin_key'])}",
        "[origin]",
        f"url = {q(f'http://{host}:{port_base + ORIGIN_OFFSET}')}",
        f"store = {q(str(store))}",
        "[steering]",
        f"url = {q(f'http://{host}:{port_base + STEERING_OFFSET}')}",
        'default_site = "isp-a"',
        "[control]",
        f"url = {q(f'http://{host}:{port_base}')}",
        f"db = {q(str(data / 'control.db'))}",
        f"events_file = {q(str(data / 'events.jsonl'))}",
    ]
    sites = {"isp-a": ("127.0.0.0/8", "::1/128", "10.0.0.0/8"), "ix": ("192.0.2.0/24",)}
    fallbacks = {"isp-a": ("ix",), "ix": ("isp-a",)}
    for name, cidrs in sites.items():
        lines += [
            "[[sites]]",
            f"name = {q(name)}",
            f"cidrs = {json.dumps(list(cidrs))}",
            f"fallbacks = {json.dumps(list(fallbacks[name]))}",
        ]
    for a in APPLIANCES:
        lines += [
            "[[appliances]]",
            f"id = {q(a.id)}",
            f"url = {q(f'http://{host}:{port_base + a.port_offset}')}",
            f"site = {q(a.site)}",
            f"capacity_mbps = {40000 if a.site == 'ix' else 10000}",
            f"upstreams = {json.dumps([*a.parents, 'origin'])}",
            'mem = "256MB"',
            'disk = "2GB"',
            f"cache_dir = {q(str(data / 'cache' / a.id))}",
        ]
    return "\n".join(lines) + "\n"


def run_demo(
    data: Path,
    *,
    port_base: int = 8080,
    host: str = "127.0.0.1",
    quick: bool = False,
    chaos: Sequence[str] | None = None,
) -> None:
    from streamcdn.chaos import ChaosPlan, parse_spec
    from streamcdn.tokens import SigningKey, sign, title_prefix

    actions = parse_spec(chaos, [a.id for a in APPLIANCES]) if chaos else []
    highest = port_base + max(a.port_offset for a in APPLIANCES)
    if highest > 65535:
        raise UserError(f"--port-base {port_base}: the demo uses ports up to +22; at most 65513")
    data = data.resolve()
    # SIGTERM (a service manager, `kill`) stops the demo as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    store_dir = prepare_titles(data, quick=quick)
    keys = demo_secrets(data)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    origin_url = f"http://{host}:{port_base + ORIGIN_OFFSET}"
    steering_url = f"http://{host}:{port_base + STEERING_OFFSET}"
    control_url = f"http://{host}:{port_base}"
    urls = {a.id: f"http://{host}:{port_base + a.port_offset}" for a in APPLIANCES}
    supervisor = Supervisor()
    stop_chaos: Callable[[], None] | None = None
    config = data / "deployment.toml"
    toml = deployment_toml(data, store_dir, host=host, port_base=port_base, keys=keys)
    config.write_text(toml)
    try:
        supervisor.start(
            "origin",
            ["origin", "--config", str(config), "--host", host],
            origin_url,
            logs / "origin.log",
        )
        supervisor.start(
            "steering",
            ["steering", "--config", str(config), "--host", host],
            steering_url,
            logs / "steering.log",
        )
        for a in APPLIANCES:
            supervisor.start(
                a.id,
                ["appliance", "--config", str(config), "--id", a.id, "--host", host],
                urls[a.id],
                logs / f"{a.id}.log",
            )
        supervisor.start(
            "control",
            ["control", "--config", str(config), "--host", host],
            control_url,
            logs / "control.log",
        )
        ensure_account(control_url, DEMO_EMAIL, keys["demo_password"])
        key = SigningKey.parse(keys["signing_key"])
        expires = int(time.time() + PLAY_TOKEN_TTL_S)

        def play_url(appliance: str, title: str) -> str:
            token = sign(title_prefix(title), key, expires=expires)
            return f"{urls[appliance]}/s/{token}/titles/{title}/master.m3u8"

        info = {
            "pid": os.getpid(),
            "control": control_url,
            "steering": steering_url,
            "origin": origin_url,
            "config": str(config),
            "appliances": [
                {
                    "id": a.id,
                    "url": urls[a.id],
                    "site": a.site,
                    "upstreams": [urls[p] for p in a.parents] + [origin_url],
                }
                for a in APPLIANCES
            ],
            "account": {"email": DEMO_EMAIL, "password": keys["demo_password"]},
            "vlc": {t.title: play_url("a1", t.title) for t in CATALOGUE},
            "watch": {t.title: f"{control_url}/watch/{t.title}" for t in CATALOGUE},
            "dashboard": f"{steering_url}/dashboard",
            "secrets": str(data / "secrets.json"),
            "logs": str(logs),
            "titles": {
                t.title: {
                    "name": t.name,
                    "origin_master": f"{origin_url}/titles/{t.title}/master.m3u8",
                    "play": {a.id: play_url(a.id, t.title) for a in APPLIANCES},
                }
                for t in CATALOGUE
            },
        }
        (data / "demo.json").write_text(json.dumps(info, indent=2) + "\n")
        table = Table(title=f"streamcdn demo is up (details in {data / 'demo.json'})")
        for column in ("service", "URL", "what"):
            table.add_column(column, overflow="fold")
        table.add_row("watch", f"{control_url}/", "the catalog and watch pages, in a browser")
        table.add_row("control", f"{control_url}/catalog", "accounts, catalog, POST /play")
        table.add_row("dashboard", f"{steering_url}/dashboard", "the fleet, live, in a browser")
        table.add_row("steering", f"{steering_url}/fleet", "the fleet's health, /steer")
        table.add_row("origin", f"{origin_url}/titles", "the title store")
        for a in APPLIANCES:
            table.add_row(a.id, urls[a.id], f"appliance, site {a.site}")
        table.add_row("account", DEMO_EMAIL, f"password {keys['demo_password']}")
        console.print(table)
        console.print("\nSigned URLs on a1 (valid 24 h):")
        for t in CATALOGUE:
            console.print(f"  {t.title:<8} {info['titles'][t.title]['play']['a1']}")
        first = info["titles"][CATALOGUE[0].title]["play"]["a1"]
        console.print(f"\nPlay one:  vlc {first}\n     or:  ffplay {first}")
        console.print(
            f"Pre-fill a cache:  streamcdn fill --appliance {urls['a2']} "
            f"--admin-key $(jq -r .admin_key {data / 'secrets.json'}) --top 3"
        )
        console.print(f"The fleet:  streamcdn status --steering {steering_url}")
        if actions:
            console.print(
                f"Chaos: {', '.join(a.text for a in actions)}; watch {steering_url}/dashboard"
            )
            stop_chaos = start_chaos(ChaosPlan(actions, urls, keys["admin_key"]))
        console.print("Ctrl-C stops everything.")
        while True:
            # Designed for failure: the rest keep serving while a dead service restarts.
            supervisor.check()
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        if stop_chaos is not None:
            stop_chaos()
        supervisor.stop_all()
