"""Built-in chaos: failures injected into a running fleet on a schedule, as Netflix's
Chaos Monkey and FIT do, through the appliances' own admin API (``/admin/chaos``, admin
key required; see docs/reliability.md).

``--chaos SPEC`` (``streamcdn loadtest``, ``streamcdn demo``) is a list of actions,
comma-separated or given with several ``--chaos``::

    SPEC     := ACTION ("," ACTION)*
    ACTION   := NAME (":" PARAM)*
    NAME     := kill-appliance | slow-upstream | drop-heartbeats
    PARAM    := DURATION          slow-upstream: the delay of each upstream fill (required)
              | ID | target=ID    the appliance (default: picked when the action runs)
              | at=DURATION       when it first runs, from the start
              | every=DURATION    run again this often
              | for=DURATION      how long it lasts (slow-upstream, drop-heartbeats)
    DURATION := NUMBER ("ms" | "s" | "m")       e.g. 200ms, 1.5s, 2m

Defaults: ``at`` is ``every`` when that is given, else 10 s for kill-appliance and 0 for
the others (they are conditions from the start); slow-upstream and drop-heartbeats last
to the end unless ``for`` is given, and ``every`` needs ``for`` for them (flapping).
Targets: slow-upstream without one slows every appliance; kill-appliance and
drop-heartbeats without one take the live appliance serving the most players (what the
load test's players say), round-robin by id on a tie or when nobody reports players
(the demo).

The parser and the schedule are pure (:func:`parse_spec`, :func:`steps`,
:func:`pick_target`, :func:`felt`); :class:`ChaosMonkey` runs a schedule over HTTP.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import heapq
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from streamcdn.errors import UserError

DEFAULT_KILL_AT_S = 10.0
MIN_EVERY_S = 1.0  # faster than this is not chaos but a denial of service
MAX_DURATION_S = 7 * 86400.0
MAX_DELAY_MS = 60_000.0  # the appliance's own limit on upstream_delay_ms
ADMIN_TIMEOUT_S = 3.0
KEEP_S = 1.0  # how often standing conditions are checked on their appliances
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}
_NUMBER = re.compile(r"[-+]?(\d+(?:\.\d*)?|\.\d+)")  # a duration without its unit
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ChaosError(UserError):
    """A spec that cannot be run: one line naming the part that is wrong."""


class Kind(enum.StrEnum):
    KILL = "kill-appliance"
    SLOW = "slow-upstream"
    DROP = "drop-heartbeats"


@dataclass(frozen=True)
class Action:
    kind: Kind
    text: str  # as written, for the report
    target: str | None = None  # None: picked when it runs
    at_s: float = 0.0
    every_s: float | None = None
    for_s: float | None = None  # None: to the end (never for kills)
    delay_ms: float | None = None  # slow-upstream only


def parse_duration(text: str) -> float:
    """Seconds in ``200ms``, ``1.5s``, ``2m``; ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if not m:
        raise ValueError(f"bad duration {text!r}: expected a number and ms, s or m, e.g. 200ms")
    value = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not math.isfinite(value) or value > MAX_DURATION_S:
        raise ValueError(f"bad duration {text!r}: at most {MAX_DURATION_S / 86400:.0f} days")
    return value


def parse_spec(specs: str | Iterable[str], appliances: Iterable[str] | None = None) -> list[Action]:
    """The actions of one or more ``--chaos`` values; ChaosError naming the bad part.

    ``appliances``: the fleet's ids, to refuse a target that is not one of them.
    """
    known = None if appliances is None else sorted(appliances)
    texts = [specs] if isinstance(specs, str) else list(specs)
    actions = []
    for text in texts:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts):
            raise ChaosError("--chaos: empty spec; e.g. kill-appliance:every=20s")
        for part in parts:
            if not part:
                raise ChaosError(f"--chaos {text!r}: an empty action between commas")
            try:
                actions.append(_action(part, known))
            except ValueError as exc:
                raise ChaosError(f"--chaos {part!r}: {exc}") from None
    return actions


def _action(text: str, known: list[str] | None) -> Action:
    name, *params = text.split(":")
    try:
        kind = Kind(name.strip())
    except ValueError:
        raise ValueError(
            f"unknown action {name.strip()!r}; known: {', '.join(k.value for k in Kind)}"
        ) from None
    fields: dict[str, Any] = {}
    for param in (p.strip() for p in params):
        key, eq, value = param.partition("=")
        if not eq:  # a bare value: a duration (the delay) if it reads as one, else a target
            looks_timed = _DURATION.fullmatch(param) or _NUMBER.fullmatch(param)
            key, value = ("delay", param) if looks_timed else ("target", param)
        if key not in ("target", "at", "every", "for", "delay"):
            raise ValueError(f"unknown parameter {key!r}; known: target=, at=, every=, for=")
        if key in fields:
            raise ValueError(f"{key} given twice")
        if key == "target":
            if not _ID.fullmatch(value):
                raise ValueError(f"bad appliance id {value!r}")
            if known is not None and value not in known:
                raise ValueError(f"unknown appliance id {value!r}; known: {', '.join(known)}")
            fields[key] = value
        else:
            fields[key] = parse_duration(value)
    delay = fields.pop("delay", None)
    if kind is Kind.SLOW:
        if delay is None:
            raise ValueError("slow-upstream needs its delay, e.g. slow-upstream:200ms")
        if not 0 < delay * 1000 <= MAX_DELAY_MS:
            raise ValueError(f"the delay must be more than 0 and at most {MAX_DELAY_MS:.0f}ms")
    elif delay is not None:
        raise ValueError(f"{kind} takes no bare duration; write at=, every= or for=")
    every, for_s = fields.get("every"), fields.get("for")
    if every is not None and every < MIN_EVERY_S:
        raise ValueError(f"every= at least {MIN_EVERY_S:g}s")
    if kind is Kind.KILL and for_s is not None:
        raise ValueError("kill-appliance takes no for=; its supervisor brings it back")
    if kind is not Kind.KILL and every is not None and (for_s is None or for_s >= every):
        raise ValueError(f"{kind} with every= needs a for= shorter than it")
    if for_s is not None and for_s <= 0:
        raise ValueError("for= must be more than 0")
    default_at = DEFAULT_KILL_AT_S if kind is Kind.KILL else 0.0
    return Action(
        kind=kind,
        text=text,
        target=fields.get("target"),
        at_s=fields.get("at", every if every is not None else default_at),
        every_s=every,
        for_s=for_s,
        delay_ms=None if delay is None else round(delay * 1000, 3),
    )


# -- the schedule (pure) ------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Step:
    """One thing to do at ``t_s``: action ``index`` starts (or, ``start=False``, ends)."""

    t_s: float
    index: int
    occurrence: int  # 0 for the first run of the action, 1 for the second, ...
    start: bool = True


def _steps_of(index: int, action: Action) -> Iterator[Step]:
    for n in itertools.count() if action.every_s is not None else range(1):
        t = action.at_s + n * (action.every_s or 0.0)
        if action.for_s is None:
            yield Step(t, index, n)
        else:  # ends before the next start (the parser checks for < every)
            yield Step(t, index, n)
            yield Step(t + action.for_s, index, n, start=False)


def steps(actions: Sequence[Action]) -> Iterator[Step]:
    """Every step of every action in time order, endless if one repeats."""
    return heapq.merge(*(_steps_of(i, a) for i, a in enumerate(actions)))


def check_fits(actions: Sequence[Action], duration_s: float) -> None:
    """ChaosError for an action that would start only after a run of ``duration_s``."""
    for a in actions:
        if a.at_s >= duration_s:
            raise ChaosError(
                f"--chaos {a.text!r}: starts at {a.at_s:g}s, after the end of the "
                f"{duration_s:g}s run; give at= or a longer --duration"
            )


def pick_target(
    action: Action,
    ids: Sequence[str],
    alive: Iterable[str],
    serving: Mapping[str, int],
    last: str | None,
) -> tuple[list[str], str]:
    """Which appliances an action hits, and why. ``serving``: players per appliance;
    ``last``: the previous automatic pick (round-robin goes on after it)."""
    if action.target is not None:
        return [action.target], "named in the spec"
    if action.kind is Kind.SLOW:
        return list(ids), "every appliance"
    live = [i for i in sorted(ids) if i in set(alive)]
    if not live:
        return [], "no appliance answered"
    most = max(serving.get(i, 0) for i in live)
    candidates = [i for i in live if serving.get(i, 0) == most]
    after = [i for i in candidates if last is not None and i > last]
    chosen = (after or candidates)[0]
    if most > 0 and len(candidates) == 1:
        return [chosen], f"most players ({most})"
    return [chosen], "round-robin" + (f" among the busiest ({most} players)" if most else "")


# -- what the viewers felt (pure) ---------------------------------------------------------

FELT_FIELDS = ("stalls", "stall_s", "failovers", "errors", "player_errors")


@dataclass(frozen=True)
class Felt:
    """A change in what the players report, at ``t_s`` (seconds from the start)."""

    t_s: float
    stalls: int = 0
    stall_s: float = 0.0
    failovers: int = 0
    errors: int = 0  # failed requests (each fails over or retries)
    player_errors: int = 0  # plays that failed outright

    def __bool__(self) -> bool:
        return any(getattr(self, f) for f in FELT_FIELDS)


def felt(times: Sequence[float], changes: Iterable[Felt], end_s: float) -> list[dict[str, Any]]:
    """Sums of ``changes`` in each window between ``times`` (sorted): the first window is
    [0, times[0]), then [times[i], times[i+1]), the last to ``end_s``."""
    edges = [0.0, *times, max(end_s, times[-1] if times else 0.0)]
    sums = [dict.fromkeys(FELT_FIELDS, 0) for _ in range(len(edges) - 1)]
    for c in changes:
        # Window k is [edges[k], edges[k+1]): the last edge <= t, clamped to the windows.
        k = min(max(bisect.bisect_right(edges, c.t_s) - 1, 0), len(sums) - 1)
        for f in FELT_FIELDS:
            sums[k][f] += getattr(c, f)
    for s in sums:
        s["stall_s"] = round(s["stall_s"], 3)
    return sums


# -- running a schedule (I/O) -------------------------------------------------------------


@dataclass
class Record:
    """One step as it happened: when, what, on which appliances, and how it went."""

    t_s: float
    action: Kind
    spec: str
    phase: str  # "start", "end", or "again" (a condition put back on a restarted appliance)
    targets: list[str]
    why: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "t_s": round(self.t_s, 3),
            "action": self.action.value,
            "spec": self.spec,
            "phase": self.phase,
            "targets": self.targets,
            "why": self.why,
            "ok": self.ok,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ChaosPlan:
    """What to do (``actions``), to which fleet (appliance id -> base URL), with which key."""

    actions: Sequence[Action]
    appliances: Mapping[str, str]
    admin_key: str


@dataclass
class ChaosMonkey:
    """Runs a :class:`ChaosPlan` over the appliances' ``/admin/chaos``.

    ``serving`` says how many players each appliance serves now (None: nobody knows);
    ``on_record`` sees every step as it happens. :meth:`run` goes until its duration
    (or forever); :meth:`clear` turns every switch off again; :meth:`close` at the end.
    """

    plan: ChaosPlan
    serving: Callable[[], Mapping[str, int]] | None = None
    on_record: Callable[[Record], None] | None = None
    records: list[Record] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None
    _applied: dict[tuple[int, int], list[str]] = field(default_factory=dict)
    _last_pick: str | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _call(self, appliance: str, method: str, body: object = None) -> tuple[int, str]:
        """(status, text) of ``method /admin/chaos`` on one appliance; status 0: no answer."""
        if self._http is None:
            self._http = aiohttp.ClientSession(
                # No keep-alive: a connection to an appliance killed since would fail.
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S),
                headers={"Authorization": f"Bearer {self.plan.admin_key}"},
            )
        url = f"{self.plan.appliances[appliance].rstrip('/')}/admin/chaos"
        try:
            async with self._http.request(method, url, json=body) as r:
                return r.status, (await r.text())[:200]
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return 0, f"no answer: {type(exc).__name__}"

    async def _probe(self) -> dict[str, tuple[int, str]]:
        """Every appliance's answer to ``GET /admin/chaos``."""
        ids = list(self.plan.appliances)
        answers = await asyncio.gather(*(self._call(i, "GET") for i in ids))
        return dict(zip(ids, answers, strict=True))

    async def check(self) -> None:
        """ChaosError unless some appliance answers and every one that does takes the key."""
        probed = await self._probe()
        if not any(status for status, _ in probed.values()):
            where = ", ".join(f"{i} at {url}" for i, url in self.plan.appliances.items())
            raise ChaosError(f"--chaos: no appliance answered ({where}); is the fleet up?")
        for appliance, (status, text) in probed.items():
            if status == 403 and "chaos is turned off" in text:
                raise ChaosError(f"--chaos: appliance {appliance}: {_error_of(text)}")
            if status in (401, 403):
                raise ChaosError(
                    f"--chaos: appliance {appliance} refused the admin key (HTTP {status}: "
                    f"{text.strip()}); give --admin-key or the deployment file with --config"
                )
            if status == 404:
                raise ChaosError(f"--chaos: appliance {appliance} has no /admin/chaos")

    async def run(self, duration_s: float | None = None, *, start: float | None = None) -> None:
        """Every step until ``duration_s`` after ``start`` (the loop's clock; default now)."""
        loop = asyncio.get_running_loop()
        start = loop.time() if start is None else start
        keeper = asyncio.create_task(self._keep(start))
        try:
            for step in steps(self.plan.actions):
                if duration_s is not None and step.t_s >= duration_s:
                    return
                await asyncio.sleep(max(0.0, start + step.t_s - loop.time()))
                self._note(await self._do(step, loop.time() - start))
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    def _note(self, record: Record) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    async def _keep(self, start: float) -> None:
        """Conditions (a slow upstream, dropped heartbeats) belong to the network, not the
        process: an appliance restarted meanwhile gets them again."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(KEEP_S)
            wanted: dict[str, dict[str, Any]] = {}
            for (index, _), targets in list(self._applied.items()):
                for t in targets:  # in the order they started: the later one wins
                    wanted.setdefault(t, {}).update(_body(self.plan.actions[index], True))
            for target, body in wanted.items():
                status, text = await self._call(target, "GET")
                try:
                    state = json.loads(text) if status == 200 else None
                except ValueError:
                    state = None
                if state is None or all(state.get(k) == v for k, v in body.items()):
                    continue  # down (its supervisor's business) or as wanted
                status, text = await self._call(target, "POST", body)
                kind = Kind.SLOW if "upstream_delay_ms" in body else Kind.DROP
                ok = status == 200
                self._note(
                    Record(
                        loop.time() - start,
                        kind,
                        ", ".join(f"{k}={v}" for k, v in body.items()),
                        "again",
                        [target],
                        "it lost the condition (restarted?)",
                        ok,
                        "ok" if ok else f"HTTP {status} {text}",
                    )
                )

    async def _do(self, step: Step, t_s: float) -> Record:
        action = self.plan.actions[step.index]
        if not step.start:
            targets = self._applied.pop((step.index, step.occurrence), [])
            why = "its for= is over"
        else:
            probed = await self._probe() if action.target is None else {}
            alive = [i for i, (status, _) in probed.items() if status == 200]
            counts = self.serving() if self.serving is not None else {}
            ids = list(self.plan.appliances)
            targets, why = pick_target(action, ids, alive, counts, self._last_pick)
            if action.target is None and action.kind is not Kind.SLOW and targets:
                self._last_pick = targets[0]
            if action.kind is not Kind.KILL:  # a condition: remembered until it ends
                self._applied[(step.index, step.occurrence)] = targets
        body = _body(action, step.start)
        answers = await asyncio.gather(*(self._call(t, "POST", body) for t in targets))
        ok = bool(targets) and all(status in (200, 202) for status, _ in answers)
        detail = "; ".join(
            f"{t}: {'ok' if status in (200, 202) else (f'HTTP {status} ' if status else '') + text}"
            for t, (status, text) in zip(targets, answers, strict=True)
        )
        return Record(
            t_s,
            action.kind,
            action.text,
            "start" if step.start else "end",
            targets,
            why,
            ok,
            detail or why,
        )

    async def clear(self) -> dict[str, str]:
        """``DELETE /admin/chaos`` on every appliance: id -> "cleared" or what went wrong."""
        ids = list(self.plan.appliances)
        answers = await asyncio.gather(*(self._call(i, "DELETE") for i in ids))
        return {
            i: "cleared" if status == 200 else (f"HTTP {status}: " if status else "") + text
            for i, (status, text) in zip(ids, answers, strict=True)
        }


def _error_of(text: str) -> str:
    """The ``error`` of a service's JSON error body, else the text itself."""
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, str) else text.strip()


def _body(action: Action, start: bool) -> dict[str, Any]:
    if action.kind is Kind.KILL:
        return {"kill": True}
    if action.kind is Kind.SLOW:
        return {"upstream_delay_ms": action.delay_ms if start else 0}
    return {"drop_heartbeats": start}


def report(
    monkey: ChaosMonkey, changes: Iterable[Felt], end_s: float, cleared: Mapping[str, str]
) -> dict[str, Any]:
    """The chaos part of a load test's result: every step, with what the players felt
    from it until the next step (or the end), and what they felt before the first."""
    records = monkey.records
    windows = felt([r.t_s for r in records], changes, end_s)
    done: dict[str, int] = {}
    for r in records:
        if r.ok and r.phase == "start":
            done[r.action.value] = done.get(r.action.value, 0) + 1
    return {
        "spec": [a.text for a in monkey.plan.actions],
        "done": done,
        "before": {"until_s": round(records[0].t_s if records else end_s, 3), **windows[0]},
        "actions": [
            {
                **r.to_json(),
                "until_s": round(records[i + 1].t_s if i + 1 < len(records) else end_s, 3),
                "felt": windows[i + 1],
            }
            for i, r in enumerate(records)
        ],
        "cleared": dict(cleared),
    }
