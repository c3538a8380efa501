"""The ``streamcdn`` command: every subcommand is wired here and nowhere else."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from streamcdn import __version__
from streamcdn.errors import UserError
from streamcdn.progress import console, ingest_with_progress, progress_bar

DEFAULT_STORE = "store"
DEFAULT_HOST = "127.0.0.1"
ORIGIN_PORT = 8082
STEERING_PORT = 8081
CONTROL_PORT = 8080
T = TypeVar("T")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0..65535, got {text!r}")
    return int(text)


# -- commands ----------------------------------------------------------------------


def cmd_sample(args: argparse.Namespace) -> None:
    from media.sample import make_sample, parse_size

    size = parse_size(args.size)
    with progress_bar(f"sample {args.out.name}", args.duration) as update:
        make_sample(
            args.out,
            duration_s=args.duration,
            size=size,
            pattern=args.pattern,
            master=args.master,
            on_progress=update,
        )
    console.print(f"wrote {args.out}")


def cmd_ingest(args: argparse.Namespace) -> None:
    manifest = ingest_with_progress(
        args.file, args.title, args.store, name=args.name, force=args.force, tags=args.tag
    )
    console.print(
        f"published {args.title!r} in {args.store}: {manifest['duration_s']} s, "
        f"{len(manifest['renditions'])} renditions, {len(manifest['files'])} files"
    )


def cmd_token(args: argparse.Namespace) -> None:
    import time

    from streamcdn.ids import check_title_id
    from streamcdn.tokens import SigningKey, sign, title_prefix

    check_title_id(args.title)
    try:
        key = SigningKey.parse(args.key)
        token = sign(
            title_prefix(args.title), key, expires=int(time.time() + args.ttl), cidr=args.cidr or ""
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    prefix = f"/s/{token}/{title_prefix(args.title)}"
    print(f"{args.base.rstrip('/')}{prefix}master.m3u8" if args.base else prefix)


def cmd_fill(args: argparse.Namespace) -> None:
    from appliance.fill_client import run_fill

    run_fill(
        args.appliance,
        args.admin_key,
        titles=args.title,
        top=args.top,
        renditions=args.rendition,
        rate_mbps=args.rate_mbps,
    )


def load_deployment(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The deployment file given with --config, or None."""
    from streamcdn.config import load

    return load(args.config) if args.config else None


def required_deployment(args: argparse.Namespace, needs: str):  # type: ignore[no-untyped-def]
    """The --config deployment of a service that cannot run without one; checks --redis."""
    deployment = load_deployment(args)
    if deployment is None:
        raise UserError(f"serve {args.service} needs --config FILE: {needs}")
    if args.redis and not args.redis.startswith(("redis://", "rediss://", "unix://")):
        raise UserError(f"--redis {args.redis!r}: expected redis://host:port/db")
    return deployment


def listen_port(args: argparse.Namespace, configured_url: str | None, default: int) -> int:
    """--port, else the port of the service's URL in the deployment file, else the default."""
    from streamcdn.config import port_of

    port = pick(args.port, port_of(configured_url) if configured_url else None, default)
    assert port is not None  # the default is not None
    return port


def pick(flag: T | None, *fallbacks: T | None) -> T | None:
    """A flag's value if given, else the first configured value, else None."""
    for value in (flag, *fallbacks):
        if value is not None:
            return value
    return None


def cmd_serve_origin(args: argparse.Namespace) -> None:
    from origin.server import create_app
    from streamcdn import service

    deployment = load_deployment(args)
    store = pick(args.store, deployment and deployment.origin_store, Path(DEFAULT_STORE))
    port = listen_port(args, deployment.origin_url if deployment else None, ORIGIN_PORT)
    assert store is not None
    app = create_app(store)
    service.run(app, host=args.host, port=port, access_log=args.access_log)


def cmd_serve_appliance(args: argparse.Namespace) -> None:
    from appliance.config import APPLIANCE_PORT, ApplianceConfig
    from appliance.server import create_app
    from streamcdn import service
    from streamcdn.tokens import SigningKey
    from streamcdn.units import parse_size

    deployment = load_deployment(args)
    entry = deployment.appliance(args.id) if deployment else None
    try:
        keys = tuple(SigningKey.parse(k) for k in args.key)
        mem = parse_size(args.mem) if args.mem else None
        disk = parse_size(args.disk) if args.disk else None
    except ValueError as exc:
        raise UserError(str(exc)) from None
    cache_dir = pick(args.cache_dir, entry and entry.cache_dir)
    if cache_dir is None:
        raise UserError("--cache-dir is required (or cache_dir in the appliance's config entry)")
    upstreams = tuple(args.upstream) or (entry.upstreams if entry else ())
    if not upstreams:
        raise UserError("--upstream is required (or upstreams in the appliance's config entry)")
    config = ApplianceConfig(
        id=args.id,
        cache_dir=cache_dir,
        upstreams=upstreams,
        mem_bytes=pick(mem, entry and entry.mem_bytes, ApplianceConfig.mem_bytes),
        disk_bytes=pick(disk, entry and entry.disk_bytes, ApplianceConfig.disk_bytes),
        host=args.host,
        port=pick(args.port, entry and entry.port, APPLIANCE_PORT),
        site=pick(args.site, entry and entry.site, ApplianceConfig.site),
        policy=pick(args.policy, entry and entry.policy, ApplianceConfig.policy),
        keys=keys or (deployment.signing_keys if deployment else ()),
        heartbeat_key=deployment.heartbeat_key(args.id) if deployment else None,
        admin_key=pick(args.admin_key, deployment and deployment.admin_key),
        previous_admin_keys=deployment.admin_keys[1:] if deployment and not args.admin_key else (),
        open=args.open or bool(entry and entry.open),
        chaos=not args.no_chaos and (entry is None or entry.chaos),
        steering=pick(args.steering, deployment and deployment.steering_url),
        url=pick(args.url, entry and entry.url),
        read_ahead_segments=args.read_ahead,
        lock_timeout_s=pick(entry and entry.lock_timeout_s, ApplianceConfig.lock_timeout_s),
        upstream_head_timeout_s=pick(
            entry and entry.upstream_head_timeout_s, ApplianceConfig.upstream_head_timeout_s
        ),
        upstream_hedge_after_s=pick(
            entry and entry.upstream_hedge_after_s, ApplianceConfig.upstream_hedge_after_s
        ),
        upstream_min_body_bps=pick(
            entry and entry.upstream_min_body_bps, ApplianceConfig.upstream_min_body_bps
        ),
        scrub_bytes_per_s=pick(
            entry and entry.scrub_bytes_per_s, ApplianceConfig.scrub_bytes_per_s
        ),
        limiter_initial=pick(entry and entry.limiter_initial, ApplianceConfig.limiter_initial),
        limiter_max=pick(entry and entry.limiter_max, ApplianceConfig.limiter_max),
        limiter_lag_target_s=pick(
            entry and entry.limiter_lag_target_s, ApplianceConfig.limiter_lag_target_s
        ),
        capacity_mbps=entry.capacity_mbps if entry else None,
        heartbeat_interval_s=deployment.heartbeat_interval_s if deployment else 1.0,
    )  # type: ignore[arg-type]  # pick() of a non-None default is not None
    try:
        config.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--cache-dir {config.cache_dir}: {exc.strerror}") from None
    service.run(create_app(config), host=config.host, port=config.port, access_log=args.access_log)


def cmd_serve_steering(args: argparse.Namespace) -> None:
    from steering.server import create_app
    from streamcdn import service

    deployment = required_deployment(args, "the sites and appliances it steers")
    port = listen_port(args, deployment.steering_url, STEERING_PORT)
    app = create_app(deployment, redis_url=args.redis)
    service.run(app, host=args.host, port=port, access_log=args.access_log)


def cmd_serve_control(args: argparse.Namespace) -> None:
    import ssl

    from control.server import create_app
    from streamcdn import service

    deployment = required_deployment(args, "keys, origin, steering and sites")
    context = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise UserError("--tls-cert and --tls-key go together")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise UserError(f"--tls-cert/--tls-key: cannot load: {exc}") from None
    db = pick(args.db, deployment.control_db, Path("control.db"))
    assert db is not None
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--db {db}: {exc.strerror}") from None
    port = listen_port(args, deployment.control_url, CONTROL_PORT)
    try:
        app = create_app(deployment, db_path=db, redis_url=args.redis, tls=context is not None)
    except ValueError as exc:
        raise UserError(f"{deployment.path}: {exc}") from None
    service.run(app, host=args.host, port=port, access_log=args.access_log, ssl_context=context)


def cmd_simulate(args: argparse.Namespace) -> None:
    import json

    from player.simulate import format_table, run_simulation

    names = [n.strip() for n in args.abr.split(",") if n.strip()]
    if not names:
        raise UserError("--abr: name at least one rule, or 'all'")
    if not args.traces.is_dir():
        raise UserError(f"--traces {args.traces}: not a folder")
    result = run_simulation(names, args.traces, args.video)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        console.print(format_table(result))


def cmd_play(args: argparse.Namespace) -> None:
    import asyncio
    import json

    from rich.live import Live
    from rich.text import Text

    from player.session import PlayerError, play, play_title
    from player.traces import load_trace
    from streamcdn.ids import is_valid_title_id

    rule = check_abr(args.abr)
    trace = load_trace(args.trace) if args.trace else None
    line = Text("starting...")

    def status(s) -> None:  # type: ignore[no-untyped-def]
        last = s.timeline[-1] if s.timeline else None
        if last is not None:
            where = s.appliances[-1] if s.appliances else "?"
            line.plain = (
                f"{s.wall_s:6.1f} s  segment {len(s.timeline)}/{s.segments_total or '?'}  "
                f"{last.kbps:6.0f} kbps  buffer {last.buffer_s:5.1f} s  "
                f"throughput {last.throughput_kbps:7.0f} kbps  stalls {s.stalls}  via {where}"
            )

    options = {"rule": rule, "duration_s": args.duration, "trace": trace, "on_status": status}
    if args.target.startswith(("http://", "https://")):
        run = play([args.target], **options)
    elif is_valid_title_id(args.target):
        run = play_title(
            args.control.rstrip("/"), args.target, args.email, viewer_password(args), **options
        )
    else:
        raise UserError(f"{args.target!r}: expected a master URL (http://...) or a title id")
    try:
        with Live(line, console=console, transient=True, refresh_per_second=4):
            summary = asyncio.run(run)
    except PlayerError as exc:
        raise UserError(str(exc)) from None
    if args.plot:
        from player.plot import plot_session

        plot_session(summary, args.plot)
    out = summary.to_json(timeline=False)
    if not out["segments"] and not args.json:
        errors = ", ".join(f"{k} x{n}" for k, n in out["errors"].items()) or "none"
        raise UserError(f"played nothing in {out['wall_s']:.1f} s (errors: {errors})")
    if args.json:
        print(json.dumps(out))
        return
    console.print(
        f"{out['segments']} segments in {out['wall_s']:.1f} s with {rule}: QoE_lin "
        f"{out['qoe_lin']}, {out['avg_kbps']} kbps on average, startup {out['startup_s']} s, "
        f"{out['stalls']} stalls ({out['stall_s']} s), {out['switches']} switches, "
        f"{out['failovers']} failovers, errors {out['errors'] or 'none'}, "
        f"appliances {' -> '.join(out['appliances']) or '-'}"
    )


def cmd_loadtest(args: argparse.Namespace) -> None:
    import asyncio
    import json

    from player.loadtest import format_chaos, format_loadtest, loadtest
    from player.session import PlayerError

    if not 1 <= args.players <= 10_000:
        raise UserError("--players: expected 1..10000")
    if args.trace is not None and not args.trace.is_dir():
        raise UserError(f"--trace {args.trace}: not a folder of traces")
    chaos = chaos_plan(args) if args.chaos else None
    try:
        result = asyncio.run(
            loadtest(
                args.control.rstrip("/"),
                args.players,
                args.duration,
                email=args.email,
                password=viewer_password(args),
                abr=check_abr(args.abr),
                traces=args.trace,
                chaos=chaos,
            )
        )
    except PlayerError as exc:  # control unreachable, login refused, no title
        raise UserError(str(exc)) from None
    if args.plot:
        from player.plot import plot_loadtest

        plot_loadtest(result, args.plot)
    if args.json:
        print(json.dumps(result))
    else:
        console.print(format_loadtest(result))
        if result["chaos"] is not None:
            console.print(format_chaos(result["chaos"]))


DEMO_DEPLOYMENT = Path(".demo") / "deployment.toml"


def chaos_plan(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The --chaos plan of a load test: the fleet and its admin key from the deployment
    file (--config, else the demo's), the actions checked against it."""
    import os

    from streamcdn.chaos import ChaosPlan, check_fits, parse_spec
    from streamcdn.config import load

    path = args.config or (DEMO_DEPLOYMENT if DEMO_DEPLOYMENT.exists() else None)
    if path is None:
        raise UserError("--chaos needs the fleet's deployment file: --config FILE")
    deployment = load(path)
    appliances = {a.id: a.url for a in deployment.appliances}
    if not appliances:
        raise UserError(f"--chaos: {path} lists no appliance")
    key = args.admin_key or os.environ.get("STREAMCDN_ADMIN_KEY") or deployment.admin_key
    if not key:
        raise UserError(
            "--chaos needs the admin key: --admin-key, $STREAMCDN_ADMIN_KEY "
            f"or keys.admin in {path}"
        )
    if not key.isprintable():
        raise UserError("the admin key: control characters cannot go in an HTTP header")
    actions = parse_spec(args.chaos, appliances)
    check_fits(actions, args.duration)
    return ChaosPlan(actions, appliances, key)


def cmd_status(args: argparse.Namespace) -> None:
    from streamcdn.status import show_status

    show_status(args.steering, as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> None:
    from streamcdn.demo import run_demo

    run_demo(args.data, port_base=args.port_base, quick=args.quick, chaos=args.chaos)


# -- parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from media.sample import PATTERNS

    parser = argparse.ArgumentParser(
        prog="streamcdn",
        description="A video CDN with adaptive-bitrate streaming, shaped like Open Connect.",
    )
    parser.add_argument("--version", action="version", version=f"streamcdn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("demo", help="run the stack on this machine with sample titles")
    p.add_argument(
        "--data",
        type=Path,
        default=Path(".demo"),
        help="where samples, the store and demo.json live (default .demo)",
    )
    p.add_argument(
        "--port-base",
        type=port_number,
        default=8080,
        help="control's port; the others follow it (default 8080, origin +2)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="make small samples (6 s, 640x360) instead of 30 s 1080p ones, for a fast look",
    )
    add_chaos_arg(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("sample", help="make a synthetic sample title (MP4 with motion and a tone)")
    p.add_argument("out", type=Path, metavar="OUT.mp4")
    p.add_argument("--duration", type=positive_float, default=30.0, help="seconds (default 30)")
    p.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT (default 1920x1080)")
    p.add_argument(
        "--pattern",
        default="testsrc",
        choices=list(PATTERNS),
        help="calm (low complexity), testsrc (medium), life and fractal (high)",
    )
    p.add_argument(
        "--master",
        action="store_true",
        help="a studio-style master: 10-bit 4:2:2, every frame a keyframe, visually lossless "
        "(about 30 Mbit/s for testsrc at 1080p, 4x the file, several times the decode)",
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("ingest", help="transcode a video into an HLS ladder and publish it")
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--title", required=True, help="title id: letters, digits, '.', '_', '-'")
    p.add_argument("--name", help="display name (default: the title id)")
    p.add_argument(
        "--tag",
        action="append",
        default=[],
        metavar="TAG",
        help="a tag or genre for the catalog, e.g. drama (repeatable)",
    )
    p.add_argument(
        "--store",
        type=Path,
        default=Path(DEFAULT_STORE),
        help=f"title store directory (default ./{DEFAULT_STORE})",
    )
    p.add_argument("--force", action="store_true", help="replace an existing title")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("token", help="print a signed path prefix for one title")
    p.add_argument("--title", required=True, help="the title the token covers")
    p.add_argument("--key", required=True, help="signing key: SECRET or KEYID:SECRET")
    p.add_argument(
        "--ttl",
        type=positive_float,
        default=6 * 3600,
        help="seconds until it expires (default 6 h)",
    )
    p.add_argument("--cidr", help="only valid for clients in this network, e.g. 127.0.1.0/24")
    p.add_argument("--base", help="an appliance URL: print the title's full master URL instead")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("fill", help="pre-fill an appliance's cache with titles")
    p.add_argument("--appliance", required=True, metavar="URL", help="the appliance to fill")
    p.add_argument("--admin-key", required=True, help="the appliance's admin key")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--title", action="append", metavar="ID", help="a title (repeatable)")
    which.add_argument("--top", type=int, metavar="N", help="the N titles the origin served most")
    p.add_argument(
        "--rendition",
        action="append",
        metavar="NAME",
        help="only these renditions, e.g. 720p (repeatable; default all)",
    )
    p.add_argument("--rate-mbps", type=positive_float, help="cap on fill traffic (default 400)")
    p.set_defaults(func=cmd_fill)

    serve = sub.add_parser("serve", help="run one service").add_subparsers(
        dest="service", metavar="SERVICE", required=True
    )
    p = serve.add_parser("origin", help="serve the title store over HTTP")
    add_listen_args(p, ORIGIN_PORT)
    p.add_argument(
        "--store",
        type=Path,
        help=f"title store directory (default: the config's, else ./{DEFAULT_STORE})",
    )
    p.set_defaults(func=cmd_serve_origin)

    p = serve.add_parser("appliance", help="a cache appliance in front of an origin or a parent")
    add_listen_args(p, 8100)
    p.add_argument("--id", required=True, help="this appliance's name, e.g. a1")
    p.add_argument("--cache-dir", type=Path, help="where the disk tier lives")
    p.add_argument("--mem", help="memory tier size (default 256MB)")
    p.add_argument("--disk", help="disk tier size (default 20GB)")
    p.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="URL",
        help="where misses go, in order (a parent appliance, then the origin)",
    )
    p.add_argument("--site", help="the site this appliance belongs to (default 'default')")
    p.add_argument("--policy", help="eviction policy of both tiers (default: our own best)")
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="[KEYID:]SECRET",
        help="a URL signing key; repeat while keys rotate",
    )
    p.add_argument("--admin-key", help="the key for /admin/ (at least 16 characters)")
    p.add_argument("--open", action="store_true", help="also serve unsigned /titles/... URLs")
    p.add_argument(
        "--no-chaos",
        action="store_true",
        help="refuse failure injection on /admin/chaos (403), whatever the config says",
    )
    p.add_argument(
        "--read-ahead",
        type=int,
        default=2,
        metavar="N",
        help="segments after each one asked for to bring into memory (default 2)",
    )
    p.add_argument("--steering", metavar="URL", help="steering service to send heartbeats to")
    p.add_argument(
        "--url", help="the URL players reach this appliance at (default http://HOST:PORT)"
    )
    p.set_defaults(func=cmd_serve_appliance)

    p = serve.add_parser("steering", help="the fleet registry and the steering decisions")
    add_listen_args(p, STEERING_PORT)
    p.add_argument(
        "--redis",
        metavar="URL",
        help="keep the fleet view in Redis, shared by several replicas (redis://host:port/db)",
    )
    p.set_defaults(func=cmd_serve_steering)

    p = serve.add_parser("control", help="accounts, catalog, the playback API and events")
    add_listen_args(p, CONTROL_PORT)
    p.add_argument(
        "--db", type=Path, help="control's SQLite file (default: the config's, else ./control.db)"
    )
    p.add_argument("--redis", metavar="URL", help="append playback events to a Redis Stream")
    p.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve HTTPS with this certificate")
    p.add_argument("--tls-key", type=Path, metavar="PEM", help="the certificate's private key")
    p.set_defaults(func=cmd_serve_control)

    p = sub.add_parser("simulate", help="trace-driven ABR simulation: every rule, QoE per rule")
    p.add_argument(
        "--abr", default="all", metavar="NAMES", help="rules, comma-separated, or 'all' (default)"
    )
    p.add_argument("--traces", type=Path, required=True, metavar="DIR", help="a folder of traces")
    p.add_argument(
        "--video",
        default="pensieve",
        metavar="pensieve|MANIFEST",
        help="the Pensieve reference video (default) or a title's manifest.json",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("play", help="play a title (through control) or a master URL, headless")
    p.add_argument("target", metavar="URL|TITLE", help="a master playlist URL, or a title id")
    add_viewer_args(p)
    p.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    p.add_argument("--trace", type=Path, metavar="FILE", help="pace reads to replay this trace")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="bitrate, buffer, throughput")
    p.set_defaults(func=cmd_play)

    p = sub.add_parser("loadtest", help="N headless players against a fleet, through control")
    add_viewer_args(p)
    p.add_argument("--players", type=int, required=True, metavar="N", help="concurrent players")
    p.add_argument("--duration", type=positive_float, required=True, metavar="S", help="seconds")
    p.add_argument("--trace", type=Path, metavar="DIR", help="traces dealt to players in turn")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="egress and QoE over players")
    add_chaos_arg(p)
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the deployment file, for --chaos: appliances and admin key "
        f"(default ./{DEMO_DEPLOYMENT} when it exists)",
    )
    p.add_argument(
        "--admin-key",
        help="the appliances' admin key, for --chaos "
        "(default $STREAMCDN_ADMIN_KEY, else the config's)",
    )
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("status", help="the fleet as steering sees it, as a table")
    p.add_argument("--steering", required=True, metavar="URL", help="the steering service")
    p.add_argument("--json", action="store_true", help="print /fleet's JSON instead")
    p.set_defaults(func=cmd_status)
    return parser


def add_chaos_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chaos",
        action="append",
        metavar="SPEC",
        help="failures to inject, e.g. kill-appliance:every=20s, slow-upstream:200ms, "
        "drop-heartbeats:a1 (comma-separated or repeated; see docs/reliability.md)",
    )


def add_viewer_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--control", default="http://127.0.0.1:8080", help="control (default the demo's)"
    )
    p.add_argument("--email", default="demo@streamcdn.test", help="account (default the demo's)")
    p.add_argument(
        "--password",
        help="its password (default $STREAMCDN_PASSWORD, else the demo's in .demo/secrets.json)",
    )
    p.add_argument("--abr", help="ABR rule (default: ours); see streamcdn simulate")


def viewer_password(args: argparse.Namespace) -> str:
    import json
    import os

    if args.password:
        return str(args.password)
    if os.environ.get("STREAMCDN_PASSWORD"):
        return os.environ["STREAMCDN_PASSWORD"]
    secrets = Path(".demo") / "secrets.json"
    try:
        return str(json.loads(secrets.read_text())["demo_password"])
    except (OSError, ValueError, KeyError):
        raise UserError(
            "--password: not given, no $STREAMCDN_PASSWORD, and no demo in ./.demo"
        ) from None


def check_abr(name: str | None) -> str:
    from player.abr import DEFAULT_RULE, RULES

    if name is None:
        return DEFAULT_RULE
    if name not in RULES:
        raise UserError(f"--abr {name!r}: known rules are {', '.join(RULES)}")
    return name


def add_listen_args(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the deployment file (TOML); flags override what it says",
    )
    p.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="log no line per request (metrics still count them)",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument(
        "--port", type=port_number, help=f"port (default: the config's, else {default_port})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    # A shell script that starts us in the background leaves SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: Ctrl-C (or a SIGINT from a supervisor or a
    # test) would do nothing. Every command here stops cleanly on it, so take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"streamcdn: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamcdn: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
