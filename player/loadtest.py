"""Many players in one process against a running stack: egress, errors, QoE and CPU.

:func:`loadtest` starts ``players`` concurrent :func:`player.session.play` loops, each
asking control ``POST /play/{title}`` for a title (picked Zipf-like from the catalog:
the k-th title is chosen with weight 1/k) and playing it; a player whose title ends
starts another, until ``duration_s`` is over. Per player the overhead is one coroutine:
every player shares one aiohttp session (one per source address) with a connection
limit far above the player count, and one :class:`EventPoster`; nothing is printed.

Control's limits (docs/control.md, "Edge") and how the load test lives with them:

- **Plays per account** (1/s, bursts of 10): one account per ``players_per_account``
  (10) players. The first is ``email``; the others are derived from it
  (``name+lt1@domain``, ``name+lt2@domain``, ... with the same password). Each is signed
  up (``POST /accounts``; 409, already there, is fine: later runs reuse them) and
  logged in once; its players share the token.
- **Sign-ups per address** (10, then 1 per 10 s): sign-ups run one at a time per
  source address and wait out ``Retry-After``. Past ten new accounts from one address
  this costs 10 s each on the first run: pass ``source_ips`` (sign-ups and players are
  spread over them) or more ``players_per_account``.
- **Requests per address** (50/s, bursts of 100): starts are staggered by ``stagger_s``
  (25 ms: 40 plays/s), events go in one batch per 2 s for all players, and every 429
  (plays, sign-ups) is retried after its ``Retry-After`` and counted (``throttled``).
- ``source_ips`` also lets one machine act as viewers of several networks (steering
  places viewers by their address; Linux lets any client bind 127.0.0.0/8).

Chaos (``chaos=``, :mod:`streamcdn.chaos`): while the players play, a
:class:`~streamcdn.chaos.ChaosMonkey` runs the plan against the appliances' admin API,
picking targets by where the players are (each player's appliance, from its live
summary); every switch is turned off again at the end. The result's ``chaos`` lists
every step with its time and targets and what the players felt from it until the next
step: stalls, stall seconds, failovers, failed requests and failed plays, each counted
when a player reports it (after the segment that ended it).

CPU: the process's user + system time over the test (``resource.getrusage``), so
``players_per_core`` is ``players / (cpu_s / wall_s)``. Servers running in the same
process (as in the tests) are counted too; run the stack elsewhere to measure players.
"""

from __future__ import annotations

import asyncio
import math
import random
import resource
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from player.abr.base import AbrRule
from player.session import (
    DEFAULT_CONFIG,
    ControlClient,
    EventPoster,
    PlayerConfig,
    PlayerError,
    PlaySummary,
    TraceLike,
    play,
    resolve_rule,
)
from streamcdn.chaos import ChaosMonkey, ChaosPlan, Felt, check_fits
from streamcdn.chaos import report as chaos_report

if TYPE_CHECKING:
    from rich.table import Table

PLAYERS_PER_ACCOUNT = 10  # control allows an account 1 play/s, bursts of 10
STAGGER_S = 0.025  # between player starts: 40 plays/s, under control's 50 requests/s
LOGINS_AT_ONCE = 8  # scrypt costs control ~50 ms each
MIN_PLAY_S = 1.0  # a player with less time left than this starts no new play
SAMPLE_S = 1.0  # egress and active players are sampled this often


def account_emails(email: str, n: int) -> list[str]:
    """``email``, then ``local+lt1@domain``, ``local+lt2@domain``, ...: ``n`` in all."""
    local, at, domain = email.partition("@")
    return [email] + [f"{local}+lt{i}{at}{domain}" for i in range(1, n)]


@dataclass
class _Totals:
    bytes: int = 0
    playing: int = 0
    sessions: list[dict[str, Any]] = field(default_factory=list)
    summaries: list[PlaySummary] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    timeline: list[dict[str, float]] = field(default_factory=list)
    on: dict[int, str] = field(default_factory=dict)  # player -> the appliance it plays from
    felt: list[Felt] = field(default_factory=list)  # changes in stalls, failovers, errors

    def feel(self, t_s: float, summary: PlaySummary, before: Felt) -> Felt:
        """Note what changed in ``summary`` since ``before``; the new totals."""
        now = Felt(
            t_s,
            stalls=summary.stalls,
            stall_s=summary.stall_s,
            failovers=summary.failovers,
            errors=sum(summary.errors.values()),
        )
        change = Felt(
            t_s,
            stalls=now.stalls - before.stalls,
            stall_s=now.stall_s - before.stall_s,
            failovers=now.failovers - before.failovers,
            errors=now.errors - before.errors,
        )
        if change:
            self.felt.append(change)
        return now


def _rule_factory(abr: str | Callable[[], AbrRule] | None) -> tuple[Callable[[], AbrRule], str]:
    if callable(abr):
        rule = abr()
        return abr, getattr(rule, "name", type(rule).__name__)
    if abr is None:
        from player.abr import DEFAULT_RULE

        abr = DEFAULT_RULE
    name: str = abr
    resolve_rule(name)  # an unknown name fails now, listing the known ones
    return lambda: resolve_rule(name), name


def _traces(traces: Sequence[TraceLike] | str | Path | None) -> list[TraceLike]:
    if traces is None:
        return []
    if isinstance(traces, str | Path):
        from player.traces import load_traces

        return list(load_traces(traces))
    return list(traces)


async def _catalog(control: ControlClient) -> list[str]:
    """Playable title ids, in the catalog's order (premium titles left out: derived
    accounts are on the basic plan)."""
    status, body = await control.call("GET", "/catalog?limit=100")
    if status != 200 or not isinstance(body, dict):
        raise PlayerError(f"control: GET /catalog: HTTP {status}")
    return [
        t["id"]
        for t in body.get("titles", [])
        if isinstance(t, dict) and "premium" not in t.get("tags", [])
    ]


async def _tokens(
    controls: Sequence[ControlClient], emails: Sequence[str], password: str
) -> list[str]:
    """Sign every account up (one at a time per source address), then log each in once."""

    async def sign_up_all(k: int) -> None:
        for email in emails[k :: len(controls)]:
            await controls[k].sign_up(email, password)

    await asyncio.gather(*(sign_up_all(k) for k in range(len(controls))))
    gate = asyncio.Semaphore(LOGINS_AT_ONCE)

    async def login(i: int) -> str:
        async with gate:
            return await controls[i % len(controls)].login(emails[i], password)

    return list(await asyncio.gather(*(login(i) for i in range(len(emails)))))


async def loadtest(
    control_url: str,
    players: int,
    duration_s: float,
    *,
    email: str,
    password: str,
    abr: str | Callable[[], AbrRule] | None = None,
    traces: Sequence[TraceLike] | str | Path | None = None,
    stagger_s: float = STAGGER_S,
    titles: Sequence[str] | None = None,
    players_per_account: int = PLAYERS_PER_ACCOUNT,
    source_ips: Sequence[str] = (),
    max_buffer_s: float = 30.0,
    seed: int = 0,
    config: PlayerConfig = DEFAULT_CONFIG,
    chaos: ChaosPlan | None = None,
) -> dict[str, Any]:
    """Run ``players`` players for ``duration_s`` seconds of playing; the result as JSON.

    ``abr``: a rule name (default: the package's default rule) or a factory giving each
    player its own rule. ``traces``: traces (or their directory), dealt to players in
    turn. ``titles``: what to play (default: the catalog). ``chaos``: failures to inject
    meanwhile. See the module for the rest.
    """
    if players < 1:
        raise ValueError(f"players: expected >= 1, got {players}")
    if not duration_s > 0:
        raise ValueError(f"duration_s: expected seconds > 0, got {duration_s}")
    if players_per_account < 1:
        raise ValueError(f"players_per_account: expected >= 1, got {players_per_account}")
    if chaos is not None:
        check_fits(chaos.actions, duration_s)
    make_rule, rule_name = _rule_factory(abr)
    trace_list = _traces(traces)
    limit = 2 * players + 50  # each player holds one connection at a time, events one more
    addresses: list[str | None] = list(source_ips) or [None]
    https = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=limit, local_addr=(ip, 0) if ip else None, keepalive_timeout=30
            )
        )
        for ip in addresses
    ]
    controls = [ControlClient(control_url, http) for http in https]
    events = EventPoster(control_url, https[0])
    totals = _Totals()
    monkey = ChaosMonkey(chaos, serving=lambda: Counter(totals.on.values())) if chaos else None
    try:
        if monkey is not None:
            await monkey.check()
        tokens = await _tokens(
            controls,
            account_emails(email, math.ceil(players / players_per_account)),
            password,
        )
        playable = list(titles) if titles else await _catalog(controls[0])
        if not playable:
            raise PlayerError("no title to play: the catalog is empty (or all premium)")
        weights = [1 / (k + 1) for k in range(len(playable))]
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + duration_s
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)

        async def one_player(i: int) -> None:
            await asyncio.sleep(i * stagger_s)
            rng = random.Random(seed * 1_000_003 + i)
            http, control = https[i % len(https)], controls[i % len(controls)]
            token = tokens[i // players_per_account]
            trace = trace_list[i % len(trace_list)] if trace_list else None
            while deadline - loop.time() > MIN_PLAY_S:
                title = rng.choices(playable, weights)[0]
                try:
                    async with asyncio.timeout_at(deadline):
                        answer = await control.play(token, title)
                except (PlayerError, TimeoutError) as exc:
                    if isinstance(exc, PlayerError):
                        totals.errors["play_refused"] += 1
                        totals.felt.append(Felt(loop.time() - start, player_errors=1))
                        await asyncio.sleep(1.0)
                    continue
                counted = 0
                seen = Felt(0.0)

                def on_status(s: PlaySummary) -> None:
                    nonlocal counted, seen
                    totals.bytes += s.bytes - counted
                    counted = s.bytes
                    seen = totals.feel(loop.time() - start, s, seen)
                    if s.appliances:
                        totals.on[i] = s.appliances[-1]

                totals.playing += 1
                summary: PlaySummary | None = None
                try:
                    summary = await play(
                        answer["urls"],
                        rule=make_rule(),
                        duration_s=deadline - loop.time(),
                        max_buffer_s=max_buffer_s,
                        trace=trace,
                        events=events,
                        on_status=on_status,
                        session=http,
                        session_id=str(answer["session"]),
                        appliances=answer.get("appliances"),
                        config=config,
                    )
                except PlayerError as exc:
                    totals.errors["player_error"] += 1
                    totals.felt.append(Felt(loop.time() - start, player_errors=1))
                    summary = exc.summary
                    if summary is None:
                        await asyncio.sleep(1.0)
                finally:
                    totals.playing -= 1
                    totals.on.pop(i, None)
                if summary is not None:
                    totals.feel(loop.time() - start, summary, seen)
                    totals.bytes += summary.bytes - counted
                    totals.summaries.append(summary)
                    totals.sessions.append({"player": i, **summary.to_json(timeline=False)})

        async def sample() -> None:
            last_bytes, last_t = 0, start
            while True:
                await asyncio.sleep(SAMPLE_S)
                now = loop.time()
                totals.timeline.append(
                    {
                        "t": round(now - start, 3),
                        "players": totals.playing,
                        "egress_mbps": round(
                            (totals.bytes - last_bytes) * 8 / (now - last_t) / 1e6, 3
                        ),
                    }
                )
                last_bytes, last_t = totals.bytes, now

        sampler = asyncio.create_task(sample())
        chaos_task = asyncio.create_task(monkey.run(duration_s, start=start)) if monkey else None
        try:
            await asyncio.gather(*(one_player(i) for i in range(players)))
        finally:
            sampler.cancel()
            if chaos_task is not None:
                chaos_task.cancel()
                await asyncio.gather(chaos_task, return_exceptions=True)
        wall_s = loop.time() - start
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        chaos_result = None
        if monkey is not None:
            cleared = await monkey.clear()
            chaos_result = chaos_report(monkey, totals.felt, wall_s, cleared)
    finally:
        if monkey is not None:
            await monkey.close()
        await events.close()
        for http in https:
            await http.close()

    user_s = cpu_after.ru_utime - cpu_before.ru_utime
    system_s = cpu_after.ru_stime - cpu_before.ru_stime
    cores = (user_s + system_s) / wall_s
    errors = Counter(totals.errors)
    for s in totals.summaries:
        errors.update(s.errors)
    return {
        "players": players,
        "duration_s": duration_s,
        "wall_s": round(wall_s, 3),
        "abr": rule_name,
        "accounts": len(tokens),
        "source_ips": list(source_ips),
        "plays": len(totals.sessions),
        "bytes": totals.bytes,
        "egress_mbps": round(totals.bytes * 8 / wall_s / 1e6, 3),
        "errors": dict(errors),
        "throttled": sum(c.throttled for c in controls),
        "qoe": _aggregate(totals.sessions),
        "cpu": {
            "user_s": round(user_s, 3),
            "system_s": round(system_s, 3),
            "cores_used": round(cores, 3),
            "players_per_core": round(players / cores, 1) if cores > 0 else None,
        },
        "events": events.to_json(),
        "chaos": chaos_result,
        "timeline": totals.timeline,
        "sessions": totals.sessions,
    }


def _aggregate(sessions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the sessions that played a segment, sums of stalls and failovers."""
    played = [s for s in sessions if s["segments"]]

    def mean(key: str) -> float | None:
        values = [s[key] for s in played if s[key] is not None]
        return round(statistics.fmean(values), 4) if values else None

    return {
        "sessions": len(sessions),
        "played": len(played),
        "qoe_lin": mean("qoe_lin"),
        "avg_kbps": mean("avg_kbps"),
        "startup_s": mean("startup_s"),
        "stalls": sum(s["stalls"] for s in sessions),
        "stall_s": round(sum(s["stall_s"] for s in sessions), 3),
        "switches": sum(s["switches"] for s in sessions),
        "failovers": sum(s["failovers"] for s in sessions),
        "segments": sum(s["segments"] for s in sessions),
    }


def format_chaos(chaos: dict[str, Any]) -> Table:
    """The chaos steps of a load test and what the players felt after each, as a table."""
    from rich.table import Table

    table = Table(title=f"chaos: {', '.join(chaos['spec'])}")
    for column in ("from s", "to s", "action", "targets (why)", "result"):
        table.add_column(column)
    for column in ("stalls (s)", "failovers", "errors", "failed plays"):
        table.add_column(column, justify="right")

    def felt(f: dict[str, Any]) -> list[str]:
        return [
            f"{f['stalls']} ({f['stall_s']:.1f})",
            str(f["failovers"]),
            str(f["errors"]),
            str(f["player_errors"]),
        ]

    before = chaos["before"]
    table.add_row("0.0", f"{before['until_s']:.1f}", "(before)", "", "", *felt(before))
    for a in chaos["actions"]:
        name = a["action"] + {"end": " ends", "again": " again"}.get(a["phase"], "")
        targets = f"{', '.join(a['targets']) or '-'} ({a['why']})"
        result = "ok" if a["ok"] else f"[red]{a['detail']}[/]"
        table.add_row(
            f"{a['t_s']:.1f}", f"{a['until_s']:.1f}", name, targets, result, *felt(a["felt"])
        )
    not_cleared = {k: v for k, v in chaos["cleared"].items() if v != "cleared"}
    if not_cleared:
        table.caption = "not cleared: " + "; ".join(f"{k}: {v}" for k, v in not_cleared.items())
    return table


def format_loadtest(result: dict[str, Any]) -> Table:
    """The result as a two-column rich table, for the terminal."""
    from rich.table import Table

    qoe, cpu, events = result["qoe"], result["cpu"], result["events"]

    def num(value: float | None, fmt: str = ".2f") -> str:
        return "-" if value is None else format(value, fmt)

    errors = ", ".join(f"{k} {v}" for k, v in sorted(result["errors"].items())) or "none"
    table = Table(title=f"load test: {result['players']} players, {result['abr']}")
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("wall time", f"{result['wall_s']:.1f} s"),
        ("plays (played a segment)", f"{qoe['sessions']} ({qoe['played']})"),
        ("egress", f"{result['egress_mbps']:.1f} Mbit/s ({result['bytes'] / 1e6:,.1f} MB)"),
        ("QoE lin (mean)", num(qoe["qoe_lin"], ".3f")),
        ("bitrate (mean)", f"{num(qoe['avg_kbps'], '.0f')} kbit/s"),
        ("startup (mean)", f"{num(qoe['startup_s'], '.3f')} s"),
        ("stalls", f"{qoe['stalls']} ({qoe['stall_s']:.1f} s)"),
        ("switches / failovers", f"{qoe['switches']} / {qoe['failovers']}"),
        ("errors", errors),
        ("control 429s waited out", str(result["throttled"])),
        ("events posted (failed posts)", f"{events['posted']} ({events['failed_posts']})"),
        (
            "CPU",
            f"{cpu['cores_used']:.2f} cores, {num(cpu['players_per_core'], '.0f')} players/core",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table
