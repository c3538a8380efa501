"""Playback events: what players report, where it is kept, and what it says about QoE.

Players post batches of events to control's ``POST /events`` (``{"events": [...]}`` or a
bare list). :func:`parse_batch` checks a batch whole and raises :class:`EventError`
naming the index and field of the first bad event (the handler answers 400 with it).
An :class:`EventSink` keeps accepted events: ``append`` returns only once they are
durable, and raises :class:`SinkUnavailable` when they are not (the handler answers
503 so the player retries: an acknowledged event is never lost, though a retried batch
may be stored twice; delivery is at least once). :class:`QoeSummary` folds events
into per-appliance figures for ``GET /events/summary`` and the steering dashboard.

The contract for players:

- ``type``: one of ``start``, ``switch``, ``stall``, ``error``, ``end``.
- ``session``: 1-128 of ``[A-Za-z0-9_-]``; ``ts``: unix seconds, at most a day old and
  at most 5 min ahead of the server's clock.
- ``appliance`` (``[A-Za-z0-9._-]{1,64}``) is required on every event but ``start``: a
  player may report a start before it has fetched a byte from any appliance, but a
  switch, a stall, an error or an end happens while talking to one, and the QoE
  summary is per appliance.
- ``title`` (a title id), ``bitrate_kbps`` (the current rendition), ``throughput_kbps``,
  ``buffer_s``, ``position_s`` are optional on every event; numbers are finite, >= 0
  and capped (:data:`NUMBER_CAPS`). ``null`` is the same as absent.
- ``switch`` needs ``rendition`` (the new one; ``from_rendition`` optional); ``error``
  needs ``error`` (printable, <= 200 chars); ``stall`` may carry ``stall_s`` (how long
  it lasted). These four fields are refused on other types: sending them there is a
  player bug.
- Unknown field names are dropped silently, so players can add fields before the
  server knows them; a known field with a bad value fails the whole batch.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from streamcdn.ids import is_valid_title_id

MAX_EVENTS = 500  # per batch
MAX_AGE_S = 86_400.0  # 1 day: older events are refused
MAX_AHEAD_S = 300.0  # 5 min of player clock skew
MAX_ERROR_LEN = 200  # chars
NUMBER_CAPS: Mapping[str, float] = {  # field -> the largest value accepted
    "bitrate_kbps": 1e6,  # 1 Gbps: far above any rendition
    "throughput_kbps": 1e8,  # 100 Gbps: a measurement on loopback can be large
    "buffer_s": 3600.0,
    "stall_s": 3600.0,
    "position_s": 1e6,  # ~11.6 days into a title
}

_SESSION = re.compile(r"[A-Za-z0-9_-]{1,128}")
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")  # appliances and renditions


class EventType(StrEnum):
    START = "start"
    SWITCH = "switch"  # a rendition switch
    STALL = "stall"
    ERROR = "error"
    END = "end"


_TYPES = {t.value: t for t in EventType}
_ONLY_ON = {  # type-specific fields
    "stall_s": EventType.STALL,
    "error": EventType.ERROR,
    "rendition": EventType.SWITCH,
    "from_rendition": EventType.SWITCH,
}
_REQUIRED_ON = {EventType.SWITCH: "rendition", EventType.ERROR: "error"}


class EventError(ValueError):
    """A batch the server refuses; the message names the first bad event and field."""


class SinkUnavailable(Exception):
    """The sink could not make a batch durable: it is not acknowledged, the player retries.

    Part of it may have been stored (a retry then stores it twice: at least once).
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    type: EventType
    session: str
    ts: float  # unix seconds, the player's clock
    appliance: str | None = None  # None only on start
    title: str | None = None
    bitrate_kbps: float | None = None  # the current rendition's
    throughput_kbps: float | None = None
    buffer_s: float | None = None
    position_s: float | None = None
    stall_s: float | None = None  # stall only: how long it lasted
    rendition: str | None = None  # switch only: the new rendition
    from_rendition: str | None = None  # switch only
    error: str | None = None  # error only

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON object, without absent fields; ``from_json`` reads it back."""
        values = ((f.name, getattr(self, f.name)) for f in fields(self))
        return {name: value for name, value in values if value is not None}

    @classmethod
    def from_json(cls, data: object) -> Event:
        """An event from its JSON object, checked like a posted one except for its age."""
        return _parse_event(data, "event", now=None)


def parse_batch(body: object, *, now: float, max_events: int = MAX_EVENTS) -> list[Event]:
    """The events of a posted batch, or EventError naming the first bad one.

    ``body`` is the decoded JSON: ``{"events": [...]}`` or a bare list. ``now`` is the
    server's clock, unix seconds: events are refused outside its window.
    """
    events = body.get("events") if isinstance(body, dict) else body
    if not isinstance(events, list):
        raise EventError(
            f'body: expected an object with an "events" list, or a list, got {_kind(body)}'
        )
    if not events:
        raise EventError("events: empty batch")
    if len(events) > max_events:
        raise EventError(f"events: {len(events)} events; at most {max_events} per batch")
    return [_parse_event(raw, f"events[{i}]", now) for i, raw in enumerate(events)]


def _parse_event(raw: object, where: str, now: float | None) -> Event:
    if not isinstance(raw, dict):
        raise EventError(f"{where}: expected an object, got {_kind(raw)}")

    def bad(field: str, why: str) -> EventError:
        return EventError(f"{where}.{field}: {why}")

    def text(field: str, ok: Callable[[str], object], expected: str) -> str | None:
        value = raw.get(field)
        if value is not None and not (isinstance(value, str) and ok(value)):
            raise bad(field, f"expected {expected}, got {_show(value)}")
        return value

    def number(field: str) -> float | None:
        return _number(raw.get(field), f"{where}.{field}", NUMBER_CAPS.get(field, math.inf))

    kind = text("type", _TYPES.__contains__, f"one of {', '.join(_TYPES)}")
    if kind is None:
        raise bad("type", "missing")
    type_ = _TYPES[kind]
    session = text("session", _SESSION.fullmatch, "1-128 of [A-Za-z0-9_-]")
    if session is None:
        raise bad("session", "missing")
    ts = number("ts")
    if ts is None:
        raise bad("ts", "missing")
    if now is not None and not now - MAX_AGE_S <= ts <= now + MAX_AHEAD_S:
        raise bad(
            "ts",
            f"expected unix seconds from {MAX_AGE_S:g} s before to {MAX_AHEAD_S:g} s after "
            f"the server's {now:.0f}, got {_show(ts)}",
        )

    for name, only in _ONLY_ON.items():
        if raw.get(name) is not None and type_ is not only:
            raise bad(name, f"only allowed on {only} events")
    required = [_REQUIRED_ON.get(type_), None if type_ is EventType.START else "appliance"]
    for name in filter(None, required):
        if raw.get(name) is None:
            raise bad(name, f"missing (required on {type_} events)")

    rendition_name = "a rendition name (1-64 of [A-Za-z0-9._-])"
    return Event(
        type=type_,
        session=session,
        ts=ts,
        appliance=text("appliance", _ID.fullmatch, "an appliance id (1-64 of [A-Za-z0-9._-])"),
        title=text("title", is_valid_title_id, "a title id"),
        bitrate_kbps=number("bitrate_kbps"),
        throughput_kbps=number("throughput_kbps"),
        buffer_s=number("buffer_s"),
        position_s=number("position_s"),
        stall_s=number("stall_s"),
        rendition=text("rendition", _ID.fullmatch, rendition_name),
        from_rendition=text("from_rendition", _ID.fullmatch, rendition_name),
        error=text(
            "error",
            lambda v: 0 < len(v) <= MAX_ERROR_LEN and v.isprintable(),
            f"1-{MAX_ERROR_LEN} printable characters",
        ),
    )


def _number(value: object, where: str, cap: float) -> float | None:
    """``value`` as a finite float in [0, cap], None when absent, else EventError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError(f"{where}: expected a number >= 0, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int past 1e308
        number = math.inf
    if not math.isfinite(number):
        raise EventError(f"{where}: expected a finite number, got {_show(value)}")
    if number < 0:
        raise EventError(f"{where}: expected a number >= 0, got {_show(value)}")
    if number > cap:
        raise EventError(f"{where}: expected a number <= {cap:g}, got {_show(value)}")
    return number


def _show(value: object, limit: int = 60) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    kinds: dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(value), _show(value))


def _dumps(event: Event) -> str:
    return json.dumps(event.to_json(), separators=(",", ":"))


# -- sinks -------------------------------------------------------------------------------


class EventSink(Protocol):
    """Where accepted events are kept."""

    async def append(self, events: Sequence[Event]) -> None:
        """Return once ``events`` are durable, or raise SinkUnavailable (none acknowledged)."""
        ...

    async def recent(self, limit: int) -> list[Event]:
        """The newest ``limit`` events, oldest first (to rebuild a summary on start)."""
        ...

    async def close(self) -> None: ...


TAIL_CHUNK_BYTES = 64 * 1024  # JsonlSink.recent reads the file backwards in these


class JsonlSink:
    """One JSON object per line in a file, fsynced per batch.

    One sink per file: lines of concurrent batches never interleave because writes are
    serialized by a lock and each batch is one ``write``. A failed write is cut off
    again so the next batch starts on a line of its own; a line torn by a crash is
    skipped by ``recent`` and fenced off by a newline before the next append.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        self._fd: int | None = None

    async def append(self, events: Sequence[Event]) -> None:
        data = "".join(_dumps(e) + "\n" for e in events).encode()
        async with self._lock:
            try:
                await asyncio.to_thread(self._write, data)
            except OSError as err:
                raise SinkUnavailable(f"cannot write events to {self.path}: {err}") from err

    def _write(self, data: bytes) -> None:
        if self._fd is None:
            self._fd = self._open()
        fd = self._fd
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data  # a torn line from a crash: keep it off our first line
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, size)  # e.g. disk full: leave no half batch to merge with the next
            raise

    def _open(self) -> int:
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        if not existed:  # make the new file's name durable too
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return fd

    async def recent(self, limit: int) -> list[Event]:
        return await asyncio.to_thread(self._recent, limit)

    def _recent(self, limit: int) -> list[Event]:
        events: list[Event] = []
        if limit <= 0:
            return events
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return events
        with f:
            for line in _lines_backwards(f):
                try:
                    events.append(Event.from_json(json.loads(line)))
                except ValueError:  # EventError, JSONDecodeError, UnicodeDecodeError
                    continue  # damaged by hand or by a crash: not an event
                if len(events) == limit:
                    break
        events.reverse()
        return events

    async def close(self) -> None:
        async with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _lines_backwards(f: BinaryIO, chunk: int = TAIL_CHUNK_BYTES) -> Iterator[bytes]:
    """The file's newline-terminated lines, newest first, reading only as far back as asked.

    Bytes after the last newline are a torn write and are skipped.
    """
    pos = f.seek(0, os.SEEK_END)
    head = b""  # the end of a line whose start lies before ``pos``
    seen_newline = False
    while pos > 0:
        size = min(chunk, pos)
        pos -= size
        f.seek(pos)
        parts = (f.read(size) + head).split(b"\n")
        if not seen_newline:
            if len(parts) == 1:
                continue  # still inside the torn tail (head stays empty)
            seen_newline = True
            parts.pop()  # the torn tail, or b"" after the final newline
        head = parts[0]
        yield from reversed(parts[1:])
    if seen_newline:
        yield head  # the file's first line


class RedisStreamSink:
    """Events in a Redis stream, shared by every control replica pointing at it.

    One entry per event with a single field, ``json``: the event's JSON object. One
    field keeps the schema in one place (:meth:`Event.to_json`), absent fields absent
    and numbers typed; nothing queries stream fields one by one anyway. The stream is
    trimmed to about ``maxlen`` entries (``MAXLEN ~``, whole radix-tree nodes at a time).
    """

    def __init__(
        self, url: str, *, stream: str = "streamcdn:events", maxlen: int = 1_000_000
    ) -> None:
        import redis.asyncio as redis

        self._redis = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True
        )
        self.stream = stream
        self.maxlen = maxlen

    async def append(self, events: Sequence[Event]) -> None:
        from redis.exceptions import RedisError

        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(
                        self.stream,
                        {"json": _dumps(event)},
                        maxlen=self.maxlen,
                        approximate=True,
                    )
                await pipe.execute()
        except (RedisError, OSError) as err:
            raise SinkUnavailable(
                f"cannot add events to Redis stream {self.stream}: {err}"
            ) from err

    async def recent(self, limit: int) -> list[Event]:
        from redis.exceptions import RedisError

        if limit <= 0:
            return []
        try:
            rows = cast(
                "list[tuple[str, dict[str, str]]]",
                await self._redis.xrevrange(self.stream, count=limit),
            )
        except (RedisError, OSError) as err:
            raise SinkUnavailable(f"cannot read Redis stream {self.stream}: {err}") from err
        events = []
        for _id, entry in reversed(rows):
            try:
                events.append(Event.from_json(json.loads(entry["json"])))
            except (KeyError, ValueError):
                continue  # an entry someone else wrote
        return events

    async def close(self) -> None:
        await self._redis.aclose()


# -- the QoE summary ---------------------------------------------------------------------


@dataclass
class _Session:
    last_ts: float  # the newest event's
    appliance: str | None  # the last one named
    bitrate_kbps: float | None  # the rendition held since last_ts, if known
    ended: bool = False
    appliances: set[str] = field(default_factory=set)  # counted as a session on these


@dataclass
class _ApplianceStats:
    sessions: int = 0
    play_s: float = 0.0
    bitrate_held_s: float = 0.0  # play time with a known bitrate
    kbps_s: float = 0.0  # sum of bitrate x seconds held
    stalls: int = 0
    stall_s: float = 0.0
    errors: int = 0
    last_ts: float = 0.0

    def to_json(self, now: float) -> dict[str, Any]:
        hours = self.play_s / 3600
        return {
            "sessions": self.sessions,
            "play_hours": round(hours, 4),
            "stalls": self.stalls,
            "stall_s": round(self.stall_s, 3),
            "stalls_per_hour": round(self.stalls / hours, 3) if hours else None,
            "avg_bitrate_kbps": (
                round(self.kbps_s / self.bitrate_held_s, 1) if self.bitrate_held_s else None
            ),
            "errors": self.errors,
            "last_ts": self.last_ts,
            "idle_s": round(max(0.0, now - self.last_ts), 3),
        }


class QoeSummary:
    """Per-appliance QoE figures folded from events, in bounded memory.

    - Play time is wall-clock session time, stalls included: each event adds the time
      since its session's previous event, to the appliance it names (the one the
      player was talking to in that interval). A ``start`` adds nothing (time before it
      is not play), nor does anything after an ``end`` until the next ``start``. So a
      session that plays on one appliance adds its first-to-latest event span.
    - The average bitrate is time-weighted: each such interval is weighted by the
      bitrate the session held through it, known from the previous event's
      ``bitrate_kbps`` (``start`` and ``switch`` carry the new rendition's), or else
      from this event's own when it is not a switch. Samples would over-weight
      moments when players report often (around switches and stalls); held time is
      what a viewer saw. ``null`` until some time with a known bitrate is held.
    - Stalls, stall seconds and errors count on the appliance the event names;
      ``stalls_per_hour`` is stalls over play hours (``null`` with no play time).
    - A session counts once on each appliance it names.

    Events are applied in timestamp order within a call. An event older than its
    session's newest adds counts but no time. Figures are as good as delivery: a batch
    stored twice (a retry after a lost reply) counts twice. Only the ``max_sessions`` most recently
    active sessions keep state: an evicted session that comes back counts again and its
    gap adds no time. Past ``max_appliances``, events for new appliances count as
    ``unattributed`` (appliance ids come from players).
    """

    def __init__(self, *, max_sessions: int = 100_000, max_appliances: int = 10_000) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {max_sessions}")
        self.max_sessions = max_sessions
        self.max_appliances = max_appliances
        self.events = 0
        self.unattributed = 0
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._appliances: dict[str, _ApplianceStats] = {}

    @property
    def tracked_sessions(self) -> int:
        return len(self._sessions)

    def add(self, events: Iterable[Event]) -> None:
        for event in sorted(events, key=lambda e: e.ts):
            self._add(event)

    def _add(self, e: Event) -> None:
        self.events += 1
        s = self._sessions.get(e.session)
        elapsed, held_kbps = 0.0, None  # play time this event closes, at what bitrate
        if s is None:
            s = _Session(e.ts, e.appliance, e.bitrate_kbps, ended=e.type is EventType.END)
            self._sessions[e.session] = s
            if len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        elif e.ts >= s.last_ts:  # else late: it counts, but adds no time
            if not s.ended and e.type is not EventType.START:
                elapsed = e.ts - s.last_ts
                held_kbps = s.bitrate_kbps
                if held_kbps is None and e.type is not EventType.SWITCH:
                    held_kbps = e.bitrate_kbps  # the current rendition: held before too
            s.last_ts = e.ts
            s.bitrate_kbps = s.bitrate_kbps if e.bitrate_kbps is None else e.bitrate_kbps
            s.appliance = e.appliance or s.appliance
            if e.type in (EventType.START, EventType.END):
                s.ended = e.type is EventType.END
        self._sessions.move_to_end(e.session)

        name = e.appliance or s.appliance
        if name is None:
            return  # a start before any appliance: the session counts where it plays
        a = self._appliances.get(name)
        if a is None:
            if len(self._appliances) >= self.max_appliances:
                self.unattributed += 1
                return
            a = self._appliances[name] = _ApplianceStats()
        if name not in s.appliances:
            s.appliances.add(name)
            a.sessions += 1
        a.play_s += elapsed
        if held_kbps is not None:
            a.bitrate_held_s += elapsed
            a.kbps_s += held_kbps * elapsed
        if e.type is EventType.STALL:
            a.stalls += 1
            a.stall_s += e.stall_s or 0.0
        elif e.type is EventType.ERROR:
            a.errors += 1
        a.last_ts = max(a.last_ts, e.ts)

    def to_json(self, now: float) -> dict[str, Any]:
        """For ``GET /events/summary``; ``now`` (unix seconds) gives each ``idle_s``."""
        return {
            "appliances": {
                name: self._appliances[name].to_json(now) for name in sorted(self._appliances)
            },
            "events": self.events,
            "unattributed": self.unattributed,
        }
