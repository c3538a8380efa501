"""The HTTP player: plays an HLS title from ranked appliance URLs like a real client.

:func:`play` loads the master playlist (RFC 8216 4.3.4), sorts the video variants by
``BANDWIDTH``, and fetches segment after segment, each video segment followed by the
audio rendition's segment of the same index. Before every segment the ABR rule chooses
a rung from what the player measured (:mod:`player.abr.base`); the buffer drains in
real time (``loop.time()``), so stalls are real. :func:`play_title` logs in to control,
asks ``POST /play/{title}`` where to go and plays its ``urls`` with events posted back.

Choices, with the defaults in :class:`PlayerConfig`:

- **Startup**: playback starts once ``startup_segments`` (1) segments are in; a segment
  is in when its video *and* its audio are, as neither plays without the other. The
  startup delay runs from the call to that moment (master and playlists included).
- **Buffer**: no request while the buffer holds more than ``max_buffer_s`` minus the
  next segment; the player sleeps until it drains to that. When the buffer empties
  during playback the play head stops: a stall, which ends when the next segment is in.
  Running dry after the last segment is the end of the title, not a stall.
- **Throughput**: one sample per segment, video and audio together: their bytes over
  the sum of their request-start-to-last-byte times (a trace's latency included).
  Init segments (``EXT-X-MAP``, fetched once per rendition) are not sampled.
- **Sizes ahead** (``AbrContext.next_sizes``): ``EXT-X-BITRATE`` (kbit/s, RFC 8216bis
  4.4.4.8) x ``EXTINF`` of the rung's video plus the audio's, for rungs whose media
  playlist is loaded (each is loaded when its rung is first used; the lowest and the
  audio at the start, as the lowest gives the segment timeline); for the others, the
  master's ``AVERAGE-BANDWIDTH`` (else ``BANDWIDTH``; both include audio) x duration.
- **Failures**: HTTP status other than 200, timeouts (connect 3 s, 5 s to the first
  byte and between body chunks, 60 s per request), connection errors, truncated bodies
  and digest mismatches are errors, counted by kind (:class:`ErrorKind`). The player
  then fails over to the next ranked URL, resolving the same path inside the title
  against that URL's base (every URL is ``{appliance}/s/{token}/titles/{title}/...``),
  and keeps its buffer. When every URL failed for one object it waits (0.5 s, doubling
  to 4 s) and starts again from the first, while the buffer runs out; after
  ``give_up_s`` (30 s) without any object fetched it raises :class:`PlayerError`.
- **Bad playlists** (no ``#EXTM3U``, attributes that do not parse, no variant, no
  segment, a duration <= 0 or > 60 s) raise :class:`PlayerError` at once: a playlist
  that does not parse is the title's fault, not the server's, so no URL would do better
  (one damaged in transit fails its digest instead, and fails over).
- **Digests**: every body is checked against its ``X-Content-Digest: xxh3-128=<hex>``
  when present, and against ``manifest.json`` next to the master when that is
  reachable at the start (it lists every file of the title with its digest).
- **Trace** (``trace=``): reads are paced by a token bucket that follows the trace's
  bandwidth over wall time, from the first period again when it runs out, and each
  request waits the period's latency first, so a rule sees the trace's throughput over
  a fast loopback.
- **Events**: ``start`` when playback begins, ``switch``, ``stall`` (when it ends, with
  ``stall_s``), ``error`` per failed request, ``end``; batched by an
  :class:`EventPoster` for control's ``POST /events``. Posting never fails a play.

- **QoE**: ``qoe_lin``, ``qoe_log`` and ``avg_kbps`` come from :mod:`player.qoe` over the
  timeline (Pensieve's per-segment score, the startup delay as the first segment's
  stall), with the ladder's declared ``BANDWIDTH`` as each segment's bitrate.
- **The end**: with ``play_out`` (the default) the session lasts until the buffer has
  played out, as a viewer's does; without, it ends when the last segment is in.

Nothing here prints: ``on_status`` gets the live :class:`PlaySummary` after each segment.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import math
import re
import secrets
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import m3u8
import xxhash

from player.abr.base import AbrContext, AbrRule, Download
from streamcdn.digest import ALGORITHM
from streamcdn.ids import is_valid_title_id

if TYPE_CHECKING:
    from player.qoe import SessionMetrics


@dataclass(frozen=True, slots=True)
class PlayerConfig:
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0  # to the first byte, and between two body chunks
    request_timeout_s: float = 60.0  # a whole request, body included
    retry_backoff_s: float = 0.5  # after every URL failed for one object; doubles...
    retry_backoff_max_s: float = 4.0  # ...up to this
    give_up_s: float = 30.0  # no object fetched for this long: PlayerError
    startup_segments: int = 1  # segments in before playback starts
    max_segment_s: float = 60.0  # longer EXTINF durations are refused
    lookahead_segments: int = 5  # AbrContext.next_sizes horizon
    history: int = 20  # downloads the rule sees
    max_playlist_bytes: int = 4 * 1024 * 1024  # playlists and manifest.json
    max_segment_bytes: int = 256 * 1024 * 1024
    paced_chunk_bytes: int = 16 * 1024  # read size when a trace paces the reads
    check_manifest: bool = True  # fetch manifest.json for per-file digests

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, bool):
                continue
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"PlayerConfig.{name}: expected a number > 0, got {value!r}")


DEFAULT_CONFIG = PlayerConfig()
MAX_RUNGS = 32  # more variants than this is not a ladder
MAX_THROUGHPUT_KBPS = 1e8  # control's cap on reported throughput (100 Gbps)
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # rendition and appliance ids in events
_TITLE_IN_URL = re.compile(r"/titles/([^/]+)/")


class PlayerError(Exception):
    """A play that cannot go on; ``summary`` holds what was played until then, if anything."""

    def __init__(self, message: str, summary: PlaySummary | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class ErrorKind(StrEnum):
    HTTP_4XX = "http_4xx"
    HTTP_5XX = "http_5xx"
    HTTP_OTHER = "http_other"  # a status other than 200 below 400, redirects followed
    TIMEOUT = "timeout"
    CONNECTION = "connection"  # refused, reset, closed before the answer
    TRUNCATED = "truncated"  # the body ended before its Content-Length
    DIGEST = "digest"
    TOO_BIG = "too_big"


class FetchError(Exception):
    def __init__(self, kind: ErrorKind, message: str, served_by: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.served_by = served_by


def _kind_of_status(status: int) -> ErrorKind:
    if 400 <= status < 500:
        return ErrorKind.HTTP_4XX
    return ErrorKind.HTTP_5XX if status >= 500 else ErrorKind.HTTP_OTHER


# -- playlists (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    path: str  # relative to the master's base (or absolute)
    duration_s: float
    size_bytes: int | None  # from EXT-X-BITRATE x EXTINF, when given
    init: str | None  # its EXT-X-MAP, same base


@dataclass(slots=True)
class Rendition:
    name: str
    path: str  # its media playlist, relative to the master's base
    bandwidth_bps: int
    average_bps: int | None = None
    segments: tuple[Segment, ...] | None = None  # None until its playlist is loaded

    @property
    def kbps(self) -> float:
        return self.bandwidth_bps / 1000


@dataclass(frozen=True, slots=True)
class Master:
    variants: tuple[Rendition, ...]  # lowest BANDWIDTH first
    audio: Rendition | None


def _load_m3u8(text: str, where: str) -> Any:
    if not text.lstrip("\ufeff").startswith("#EXTM3U"):
        raise PlayerError(f"{where}: not an HLS playlist (its first line is not #EXTM3U)")
    try:
        return m3u8.loads(text)
    except Exception as exc:  # the parser's errors on hostile text vary (ValueError, ...)
        raise PlayerError(f"{where}: malformed playlist: {exc}") from None


def _checked_uri(uri: str, where: str) -> str:
    """``uri`` if it parses as a URL reference; urllib raises ValueError on some that do
    not (``http://[::1``), which would otherwise escape the parser as a crash."""
    try:
        urllib.parse.urlsplit(uri)
    except ValueError as exc:
        raise PlayerError(f"{where}: URI {uri[:80]!r}: {exc}") from None
    return uri


def _rendition_name(path: str, fallback: str) -> str:
    parts = urllib.parse.urlsplit(path).path.split("/")
    name = parts[-2] if len(parts) >= 2 else ""
    return name if _NAME.fullmatch(name) else fallback


def parse_master(text: str, where: str = "master playlist") -> Master:
    """The video variants (lowest BANDWIDTH first) and the audio rendition of a master."""
    m = _load_m3u8(text, where)
    if not m.is_variant:
        raise PlayerError(f"{where}: no #EXT-X-STREAM-INF variant (a media playlist?)")
    variants: dict[str, Rendition] = {}
    audio_group = None
    for v in m.playlists:
        bandwidth = v.stream_info.bandwidth
        if not v.uri or not isinstance(bandwidth, int) or bandwidth <= 0:
            raise PlayerError(
                f"{where}: variant {v.uri!r}: expected BANDWIDTH > 0, got {bandwidth!r}"
            )
        _checked_uri(v.uri, where)
        average = v.stream_info.average_bandwidth
        height = v.stream_info.resolution[1] if v.stream_info.resolution else None
        name = _rendition_name(v.uri, f"{height}p" if height else f"v{len(variants)}")
        variants.setdefault(v.uri, Rendition(name, v.uri, bandwidth, average or None))
        audio_group = audio_group or v.stream_info.audio
    if not variants:
        raise PlayerError(f"{where}: no variant")
    if len(variants) > MAX_RUNGS:
        raise PlayerError(f"{where}: {len(variants)} variants; at most {MAX_RUNGS}")
    ladder = sorted(variants.values(), key=lambda r: r.bandwidth_bps)
    names = [r.name for r in ladder]
    for i, r in enumerate(ladder):  # names tell rungs apart in events
        if names.count(r.name) > 1:
            r.name = f"{r.name}-{i}"
    audio = None
    if audio_group:
        group = [x for x in m.media if x.type == "AUDIO" and x.group_id == audio_group and x.uri]
        chosen = next((x for x in group if x.default == "YES"), group[0] if group else None)
        if chosen is not None:
            uri = _checked_uri(chosen.uri, where)
            audio = Rendition(_rendition_name(uri, "audio"), uri, 1)
    return Master(tuple(ladder), audio)


def parse_media(
    text: str, path: str, where: str, *, max_segment_s: float = DEFAULT_CONFIG.max_segment_s
) -> tuple[Segment, ...]:
    """A media playlist's segments; ``path`` is the playlist's own, relative to the master."""
    m = _load_m3u8(text, where)
    if m.is_variant:
        raise PlayerError(f"{where}: a master playlist where a media playlist was expected")
    segments = []
    for i, s in enumerate(m.segments):
        duration = s.duration
        if not (isinstance(duration, int | float) and 0 < duration <= max_segment_s):
            raise PlayerError(
                f"{where}: segment {i} ({s.uri}): EXTINF {duration!r}; "
                f"expected 0 < seconds <= {max_segment_s:g}"
            )
        if not s.uri:
            raise PlayerError(f"{where}: segment {i} has no URI")
        _checked_uri(s.uri, where)
        bitrate = s.bitrate  # kbit/s (8216bis 4.4.4.8)
        size = round(bitrate * 125 * duration) if isinstance(bitrate, int) and bitrate > 0 else None
        init = s.init_section.uri if s.init_section is not None and s.init_section.uri else None
        if init:
            _checked_uri(init, where)
        segments.append(
            Segment(
                urllib.parse.urljoin(path, s.uri),
                float(duration),
                size,
                urllib.parse.urljoin(path, init) if init else None,
            )
        )
    if not segments:
        raise PlayerError(f"{where}: no segment")
    return tuple(segments)


# -- pacing along a trace (pure) ------------------------------------------------------------


class TraceLike(Protocol):
    """What the player needs of a :class:`player.traces.Trace`."""

    @property
    def periods(self) -> Sequence[Any]: ...  # each with duration_s, bandwidth_kbps, latency_ms


class TracePacer:
    """A link that follows a trace over wall time, from ``start``, looping.

    ``take(n, now)`` books ``n`` bytes on the link and says when the last of them has
    passed it; the reader sleeps until then. Idle time is not banked (a bucket of depth
    zero), as a real link's idle capacity is lost.
    """

    def __init__(self, trace: TraceLike, start: float) -> None:
        periods = [
            (float(p.duration_s), float(p.bandwidth_kbps) * 1000, float(p.latency_ms) / 1000)
            for p in trace.periods
            if p.duration_s > 0
        ]
        if not any(bps > 0 for _, bps, _ in periods):
            raise ValueError("trace: no period with both a duration and a bandwidth")
        self.periods = periods
        self.starts = list(itertools.accumulate((d for d, _, _ in periods), initial=0.0))
        self.cycle_s = self.starts.pop()
        self.start = start
        self.free_at = start

    def _period(self, t: float) -> tuple[float, float, float]:
        """(seconds left in the period at t, its bits/s, its latency in s)."""
        offset = (t - self.start) % self.cycle_s
        i = bisect.bisect_right(self.starts, offset) - 1
        duration, bps, latency = self.periods[i]
        return max(self.starts[i] + duration - offset, 1e-9), bps, latency

    def latency_s(self, now: float) -> float:
        return self._period(now)[2]

    def take(self, nbytes: int, now: float) -> float:
        t = max(now, self.free_at)
        bits = nbytes * 8.0
        while bits > 0:
            left, bps, _ = self._period(t)
            if bps * left >= bits:
                t += bits / bps
                break
            bits -= bps * left
            t += left
        self.free_at = t
        return t


# -- the play head (pure) ---------------------------------------------------------------------


class Playhead:
    """Buffered media and playback over a clock the caller passes in."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.at = t0
        self.buffer_s = 0.0
        self.position_s = 0.0
        self.started_at: float | None = None
        self.stalled_since: float | None = None
        self.complete = False  # every segment is in: running dry is the end, not a stall
        self.stalls = 0
        self.stall_s = 0.0

    @property
    def startup_s(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.t0

    def advance(self, now: float) -> None:
        elapsed, self.at = now - self.at, now
        if self.started_at is None or self.stalled_since is not None or elapsed <= 0:
            return
        if elapsed < self.buffer_s or self.complete:
            played = min(elapsed, self.buffer_s)
        else:
            played = self.buffer_s
            self.stalled_since = now - (elapsed - played)
        self.buffer_s -= played
        self.position_s += played

    def add(self, media_s: float, now: float, *, start: bool) -> float:
        """A segment is in; the stall it ends, in seconds (0 if none). Starts if ``start``."""
        self.advance(now)
        self.buffer_s += media_s
        if self.started_at is None:
            if start:
                self.started_at = now
            return 0.0
        return self._end_stall(now)

    def _end_stall(self, now: float) -> float:
        if self.stalled_since is None:
            return 0.0
        stall = now - self.stalled_since
        self.stalled_since = None
        self.stalls += 1
        self.stall_s += stall
        return stall

    def finish(self, now: float) -> float:
        """Stop at ``now``; the stall in progress then, if any (counted)."""
        self.advance(now)
        return self._end_stall(now)


# -- what a play gives back -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegmentLog:
    """One segment as played: the timeline of a :class:`PlaySummary`."""

    index: int
    rung: int
    rendition: str
    kbps: float  # the rung's declared BANDWIDTH
    bytes: int  # video + audio
    media_s: float
    wait_s: float  # idle before its request (buffer full)
    download_s: float  # video + audio, request start to last byte each
    throughput_kbps: float
    stall_s: float  # the stall it ended (0 before startup)
    buffer_s: float  # just after it arrived
    time_s: float  # session clock when it arrived
    appliance: str

    def to_json(self) -> dict[str, Any]:
        return {
            "time_s": round(self.time_s, 3),
            "index": self.index,
            "rung": self.rung,
            "rendition": self.rendition,
            "kbps": self.kbps,
            "bytes": self.bytes,
            "buffer_s": round(self.buffer_s, 3),
            "throughput_kbps": round(self.throughput_kbps, 1),
            "download_s": round(self.download_s, 4),
            "stall_s": round(self.stall_s, 3),
            "appliance": self.appliance,
        }


@dataclass
class PlaySummary:
    """A session's outcome, live while it plays (``on_status`` sees it after each segment)."""

    session: str
    title: str | None
    rule: str
    ladder_kbps: list[float] = field(default_factory=list)
    segments_total: int | None = None
    timeline: list[SegmentLog] = field(default_factory=list)
    startup_s: float | None = None
    stalls: int = 0
    stall_s: float = 0.0  # after startup
    failovers: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    appliances: list[str] = field(default_factory=list)  # in order, no repeats in a row
    bytes: int = 0  # every body, playlists and init segments included
    wall_s: float = 0.0
    ended: str = ""  # "title", "duration" or "error"
    error: str | None = None

    @property
    def switches(self) -> int:
        return sum(a.rung != b.rung for a, b in zip(self.timeline, self.timeline[1:], strict=False))

    def metrics(self) -> SessionMetrics | None:
        """Pensieve's QoE and friends (:mod:`player.qoe`), None before the first segment."""
        from player.qoe import SegmentRecord, session_metrics

        if not self.timeline:
            return None
        records = [
            SegmentRecord(
                index=s.index,
                rung=s.rung,
                bytes=s.bytes,
                media_s=s.media_s,
                wait_s=s.wait_s,
                download_s=s.download_s,
                stall_s=s.stall_s,
                buffer_s=s.buffer_s,
                end_s=s.time_s,
            )
            for s in self.timeline
        ]
        return session_metrics(records, self.startup_s or 0.0, self.ladder_kbps)

    def to_json(self, *, timeline: bool = True) -> dict[str, Any]:
        m = self.metrics()
        out: dict[str, Any] = {
            "session": self.session,
            "title": self.title,
            "rule": self.rule,
            "ended": self.ended,
            "error": self.error,
            "wall_s": round(self.wall_s, 3),
            "qoe_lin": None if m is None else round(m.qoe_lin, 4),
            "qoe_log": None if m is None else round(m.qoe_log, 4),
            "startup_s": None if self.startup_s is None else round(self.startup_s, 3),
            "stalls": self.stalls,
            "stall_s": round(self.stall_s, 3),
            "avg_kbps": None if m is None else round(m.avg_kbps, 1),
            "switches": self.switches,
            "segments": len(self.timeline),
            "segments_total": self.segments_total,
            "failovers": self.failovers,
            "errors": dict(self.errors),
            "appliances": list(self.appliances),
            "bytes": self.bytes,
            "ladder_kbps": self.ladder_kbps,
        }
        if timeline:
            out["timeline"] = [s.to_json() for s in self.timeline]
        return out


# -- events ----------------------------------------------------------------------------------


class EventPoster:
    """Batches playback events to control's ``POST /events`` every ``interval_s``.

    One poster may serve many sessions (the load test shares one). Batches hold at most
    500 events and 60 KB (control refuses more than 500 events or a 64 KB body). A batch
    that fails (connection, timeout, 5xx, 429) is kept for the next round, up to
    ``max_pending`` events (the oldest are dropped past that); one that control refuses
    (400, 413) is dropped, as a retry would fail the same way. Failures are counted,
    never raised.
    """

    MAX_BATCH = 500  # events per batch: control's limit
    MAX_BATCH_BYTES = 60_000  # control refuses bodies over 64 KB

    def __init__(
        self,
        control_url: str,
        http: aiohttp.ClientSession,
        *,
        interval_s: float = 2.0,
        max_pending: int = 20_000,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = control_url.rstrip("/") + "/events"
        self.http = http
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.pending: deque[str] = deque()  # events as JSON text
        self.posted = 0  # events accepted
        self.failed = 0  # posts that failed (their events retried)
        self.rejected = 0  # events in batches control refused
        self.dropped = 0  # events given up on
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    def add(self, event: dict[str, Any]) -> None:
        self.pending.append(json.dumps(event, separators=(",", ":")))
        if len(self.pending) > self.max_pending:
            self.pending.popleft()
            self.dropped += 1
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.flush()

    def _take_batch(self) -> list[str]:
        batch = [self.pending.popleft()]  # one event alone is always far below the limit
        size = len(batch[0])
        while (
            self.pending
            and len(batch) < self.MAX_BATCH
            and size + len(self.pending[0]) + 1 <= self.MAX_BATCH_BYTES
        ):
            batch.append(self.pending.popleft())
            size += len(batch[-1]) + 1
        return batch

    async def flush(self) -> None:
        while self.pending:
            batch = self._take_batch()
            try:
                if await self._post(batch):
                    continue
            except BaseException:  # cancelled mid-post: the batch is not lost
                self.pending.extendleft(reversed(batch))
                raise
            self.failed += 1
            self.pending.extendleft(reversed(batch))
            return

    async def _post(self, batch: list[str]) -> bool:
        """True when the batch is done with (accepted, or refused for good)."""
        body = '{"events":[' + ",".join(batch) + "]}"
        headers = {"Content-Type": "application/json"}
        try:
            async with self.http.post(
                self.url, data=body.encode(), headers=headers, timeout=self.timeout
            ) as r:
                if r.status == 202:
                    self.posted += len(batch)
                    return True
                self.last_error = f"HTTP {r.status}: {(await r.text())[:200]}"
                if r.status in (400, 413):
                    self.rejected += len(batch)
                    return True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
        return False

    async def close(self) -> None:
        """Stop the timer and post what is left, once; what still fails is dropped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
        self.dropped += len(self.pending)
        self.pending.clear()

    def to_json(self) -> dict[str, Any]:
        return {
            "posted": self.posted,
            "failed_posts": self.failed,
            "rejected": self.rejected,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }


# -- the player -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fetched:
    size: int
    body: bytes | None  # kept for playlists only
    start: float  # loop clock at the request's start (before a trace's latency)
    end: float  # at its last byte
    served_by: str


def _url_name(url: str) -> str:
    """An appliance id for a URL that never said ``X-Served-By``: its host and port."""
    parts = urllib.parse.urlsplit(url)
    name = re.sub(r"[^A-Za-z0-9._-]", "-", parts.netloc)[:64]
    return name or "unknown"


def _served_by(value: str | None) -> str | None:
    return value if value is not None and _NAME.fullmatch(value) else None


def _digest_of(header: str | None) -> str | None:
    """The hex of an ``X-Content-Digest: xxh3-128=<hex>``; None when absent or another kind."""
    if header is None:
        return None
    algorithm, _, value = header.strip().partition("=")
    return value.strip().lower() if algorithm.strip().lower() == ALGORITHM else None


def resolve_rule(rule: AbrRule | str) -> AbrRule:
    """An ABR rule, or one made from its name by :func:`player.abr.make_rule`."""
    if isinstance(rule, str):
        from player.abr import make_rule

        return make_rule(rule)
    return rule


class _Player:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        rule: AbrRule,
        http: aiohttp.ClientSession,
        config: PlayerConfig,
        max_buffer_s: float,
        trace: TraceLike | None,
        events: EventPoster | None,
        on_status: Callable[[PlaySummary], None] | None,
        session_id: str,
        appliances: Sequence[str] | None,
        play_out: bool,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.rule = rule
        self.http = http
        self.config = config
        self.max_buffer_s = max_buffer_s
        self.events = events
        self.on_status = on_status
        self.play_out = play_out
        self.bases = [urllib.parse.urljoin(u, ".") for u in urls]
        self.master_path = urllib.parse.urlsplit(urls[0]).path.rsplit("/", 1)[-1] or "master.m3u8"
        hints = list(appliances or [])
        self.url_ids = [
            _served_by(hints[k] if k < len(hints) else None) or _url_name(u)
            for k, u in enumerate(urls)
        ]
        match = _TITLE_IN_URL.search(urllib.parse.urlsplit(urls[0]).path)
        title = match.group(1) if match and is_valid_title_id(match.group(1)) else None
        self.summary = PlaySummary(session_id, title, getattr(rule, "name", type(rule).__name__))
        self.current = 0  # the URL in use
        self.last_progress = self.t0
        self.timeout = aiohttp.ClientTimeout(
            total=config.request_timeout_s,
            sock_connect=config.connect_timeout_s,
            sock_read=config.read_timeout_s,
        )
        self.pacer = TracePacer(trace, self.t0) if trace is not None else None
        self.playhead = Playhead(self.t0)
        self.manifest: dict[str, str] = {}  # path inside the title -> xxh3-128
        self.inits: set[str] = set()
        self.downloads: deque[Download] = deque(maxlen=config.history)
        self.rendition_kbps: float | None = None  # what is playing, for events

    # -- events --

    def _event(self, type_: str, **fields: Any) -> None:
        if self.events is None:
            return
        event = {
            "type": type_,
            "session": self.summary.session,
            "ts": time.time(),
            "appliance": self.url_ids[self.current],
            "title": self.summary.title,
            "bitrate_kbps": self.rendition_kbps,
            "buffer_s": round(self.playhead.buffer_s, 3),
            "position_s": round(self.playhead.position_s, 3),
            **fields,
        }
        self.events.add({k: v for k, v in event.items() if v is not None})

    # -- fetching --

    async def fetch(self, path: str, max_bytes: int, *, keep: bool = False) -> Fetched:
        """``path`` (inside the title) from the URL in use, failing over on errors."""
        n = len(self.bases)
        backoff = self.config.retry_backoff_s
        failed_in_round = 0
        while True:
            k = self.current
            try:
                got = await self._download(k, path, max_bytes, keep)
            except FetchError as exc:
                self._count_error(k, exc, path)
                failed_in_round += 1
                following = (k + 1) % n
                if failed_in_round >= n:  # every URL failed for this object
                    idle_s = self.loop.time() - self.last_progress
                    if idle_s > self.config.give_up_s:
                        raise PlayerError(
                            f"no URL served {path} for {idle_s:.0f} s; last error: "
                            f"{exc.kind}: {exc}"
                        ) from None
                    await asyncio.sleep(backoff)
                    backoff = min(2 * backoff, self.config.retry_backoff_max_s)
                    failed_in_round, following = 0, 0
                if following != k:
                    self.current = following
                    self.summary.failovers += 1
                continue
            self.last_progress = got.end
            self.summary.bytes += got.size
            self.url_ids[k] = got.served_by
            if not self.summary.appliances or self.summary.appliances[-1] != got.served_by:
                self.summary.appliances.append(got.served_by)
            return got

    def _count_error(self, k: int, exc: FetchError, path: str) -> None:
        self.summary.errors[exc.kind.value] += 1
        if exc.served_by is not None:
            self.url_ids[k] = exc.served_by
        text = "".join(c if c.isprintable() else "?" for c in f"{exc.kind}: {path}: {exc}")
        self._event("error", appliance=self.url_ids[k], error=text[:200])

    async def _download(self, k: int, path: str, max_bytes: int, keep: bool) -> Fetched:
        url = urllib.parse.urljoin(self.bases[k], path)
        start = self.loop.time()
        pacer = self.pacer
        served_by = None
        try:
            if pacer is not None:
                await asyncio.sleep(pacer.latency_s(start))
            async with self.http.get(url, timeout=self.timeout) as r:
                served_by = _served_by(r.headers.get("X-Served-By"))
                if r.status != 200:
                    raise FetchError(_kind_of_status(r.status), f"HTTP {r.status}", served_by)
                if r.content_length is not None and r.content_length > max_bytes:
                    raise FetchError(
                        ErrorKind.TOO_BIG, f"{r.content_length} bytes > {max_bytes}", served_by
                    )
                expected = _digest_of(r.headers.get("X-Content-Digest"))
                hasher = xxhash.xxh3_128()
                parts: list[bytes] = []
                size = 0
                chunks = (
                    r.content.iter_any()
                    if pacer is None
                    else r.content.iter_chunked(self.config.paced_chunk_bytes)
                )
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(ErrorKind.TOO_BIG, f"over {max_bytes} bytes", served_by)
                    hasher.update(chunk)
                    if keep:
                        parts.append(chunk)
                    if pacer is not None:
                        now = self.loop.time()
                        delay = pacer.take(len(chunk), now) - now
                        if delay > 0:
                            await asyncio.sleep(delay)
        except TimeoutError:
            raise FetchError(ErrorKind.TIMEOUT, "timed out", served_by) from None
        except aiohttp.ClientPayloadError as exc:
            raise FetchError(ErrorKind.TRUNCATED, str(exc) or "body cut short", served_by) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise FetchError(
                ErrorKind.CONNECTION, str(exc) or type(exc).__name__, served_by
            ) from None
        end = self.loop.time()
        digest = hasher.hexdigest()
        for source, want in (
            ("X-Content-Digest", expected),
            ("manifest.json", self.manifest.get(path)),
        ):
            if want is not None and digest != want:
                raise FetchError(
                    ErrorKind.DIGEST, f"body hashes to {digest}, {source} says {want}", served_by
                )
        body = b"".join(parts) if keep else None
        return Fetched(size, body, start, end, served_by or self.url_ids[k])

    async def _playlist(self, path: str) -> str:
        got = await self.fetch(path, self.config.max_playlist_bytes, keep=True)
        try:
            return (got.body or b"").decode("utf-8")
        except UnicodeDecodeError:
            raise PlayerError(f"{path}: not UTF-8 text") from None

    async def _load_manifest(self) -> None:
        """Per-file digests from ``manifest.json`` beside the master; quietly none if absent."""
        url = urllib.parse.urljoin(self.bases[self.current], "manifest.json")
        try:
            async with self.http.get(url, timeout=self.timeout) as r:
                if r.status != 200 or (r.content_length or 0) > self.config.max_playlist_bytes:
                    return
                body = await r.content.read(self.config.max_playlist_bytes + 1)
            files = json.loads(body).get("files")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError):
            return
        if isinstance(files, dict):
            self.manifest = {
                path: meta[ALGORITHM]
                for path, meta in files.items()
                if isinstance(meta, dict) and isinstance(meta.get(ALGORITHM), str)
            }

    async def _load(self, r: Rendition) -> tuple[Segment, ...]:
        if r.segments is None:
            text = await self._playlist(r.path)
            r.segments = parse_media(
                text, r.path, f"{r.name} playlist", max_segment_s=self.config.max_segment_s
            )
        return r.segments

    async def _init(self, segment: Segment) -> None:
        if segment.init is not None and segment.init not in self.inits:
            await self.fetch(segment.init, self.config.max_segment_bytes)
            self.inits.add(segment.init)

    # -- playing --

    def _next_sizes(
        self, master: Master, reference: tuple[Segment, ...], i: int
    ) -> tuple[tuple[int, ...], ...]:
        audio = master.audio.segments if master.audio is not None else None
        rows = []
        for j in range(i, min(i + self.config.lookahead_segments, len(reference))):
            row = []
            for r in master.variants:
                if r.segments is not None and j < len(r.segments) and r.segments[j].size_bytes:
                    size = r.segments[j].size_bytes or 0
                    if audio is not None and j < len(audio):
                        size += audio[j].size_bytes or 0
                else:
                    size = round((r.average_bps or r.bandwidth_bps) * reference[j].duration_s / 8)
                row.append(size)
            rows.append(tuple(row))
        return tuple(rows)

    async def run(self) -> None:
        master = parse_master(await self._playlist(self.master_path))
        s = self.summary
        s.ladder_kbps = [r.kbps for r in master.variants]
        if self.config.check_manifest:
            await self._load_manifest()
        audio = await self._load(master.audio) if master.audio is not None else None
        ladder = master.variants
        rule_state = self.rule.initial_state()
        last: int | None = None
        reference = await self._load(ladder[0])  # segment durations, the same on every rung
        s.segments_total = len(reference)
        segment_s = max(x.duration_s for x in reference)
        playhead = self.playhead
        for i in range(len(reference)):
            waited = self.loop.time()
            while playhead.started_at is not None:  # the buffer is full: wait for it to drain
                playhead.advance(self.loop.time())
                room_s = max(self.max_buffer_s - reference[i].duration_s, 0.0)
                excess = playhead.buffer_s - room_s
                if excess <= 1e-3:  # timers may wake a hair early
                    break
                await asyncio.sleep(excess)
            now = self.loop.time()
            waited = now - waited
            playhead.advance(now)
            ctx = AbrContext(
                bitrates_kbps=tuple(r.kbps for r in ladder),
                segment_s=segment_s,
                buffer_s=playhead.buffer_s,
                max_buffer_s=self.max_buffer_s,
                now_s=now - self.t0,
                downloads=tuple(self.downloads),
                last_index=last,
                segment_index=i,
                segments_total=len(reference),
                next_sizes=self._next_sizes(master, reference, i),
                playing=playhead.started_at is not None,
            )
            choice, rule_state = self.rule.choose(ctx, rule_state)
            rung = min(max(int(choice), 0), len(ladder) - 1)
            segments = await self._load(ladder[rung])
            if i >= len(segments):
                break  # this rung's playlist is shorter: its end is the title's
            video = segments[i]
            await self._init(video)
            got = [await self.fetch(video.path, self.config.max_segment_bytes)]
            if audio is not None and i < len(audio):
                await self._init(audio[i])
                got.append(await self.fetch(audio[i].path, self.config.max_segment_bytes))
            size = sum(g.size for g in got)
            download_s = max(sum(g.end - g.start for g in got), 1e-6)
            end = got[-1].end
            self.downloads.append(Download(size, download_s, end - self.t0, rung))
            throughput = min(size * 8 / download_s / 1000, MAX_THROUGHPUT_KBPS)
            if i == len(reference) - 1:
                playhead.complete = True
            starting = playhead.started_at is None
            stall = playhead.add(
                video.duration_s,
                end,
                start=i + 1 >= self.config.startup_segments or playhead.complete,
            )
            kbps = ladder[rung].kbps
            fields = {"throughput_kbps": round(throughput, 1), "bitrate_kbps": kbps}
            if starting and playhead.started_at is not None:
                s.startup_s = playhead.startup_s
                self.rendition_kbps = kbps
                self._event("start", **fields)
            elif stall > 0:
                self._event("stall", stall_s=round(stall, 3), **fields)
            if last is not None and rung != last:
                self._event(
                    "switch",
                    rendition=ladder[rung].name,
                    from_rendition=ladder[last].name,
                    **fields,
                )
            self.rendition_kbps = kbps
            last = rung
            s.stalls, s.stall_s = playhead.stalls, playhead.stall_s
            s.timeline.append(
                SegmentLog(
                    index=i,
                    rung=rung,
                    rendition=ladder[rung].name,
                    kbps=kbps,
                    bytes=size,
                    media_s=video.duration_s,
                    wait_s=waited,
                    download_s=download_s,
                    throughput_kbps=throughput,
                    stall_s=stall,
                    buffer_s=playhead.buffer_s,
                    time_s=end - self.t0,
                    appliance=got[-1].served_by,
                )
            )
            if self.on_status is not None:
                self.on_status(s)
        playhead.complete = True
        if self.play_out:
            playhead.advance(self.loop.time())
            await asyncio.sleep(playhead.buffer_s)

    def finish(self, ended: str, error: str | None = None) -> PlaySummary:
        now = self.loop.time()
        stall = self.playhead.finish(now)
        s = self.summary
        s.stalls, s.stall_s = self.playhead.stalls, self.playhead.stall_s
        s.wall_s = now - self.t0
        s.ended, s.error = ended, error
        if stall > 0:
            self._event("stall", stall_s=round(stall, 3))
        self._event("end")
        return s


async def play(
    urls: Sequence[str],
    *,
    rule: AbrRule | str,
    duration_s: float | None = None,
    max_buffer_s: float = 30.0,
    trace: TraceLike | str | Path | None = None,
    events: EventPoster | None = None,
    on_status: Callable[[PlaySummary], None] | None = None,
    session: aiohttp.ClientSession | None = None,
    session_id: str | None = None,
    appliances: Sequence[str] | None = None,
    play_out: bool = True,
    config: PlayerConfig = DEFAULT_CONFIG,
) -> PlaySummary:
    """Play the HLS master at ``urls`` (ranked, best first) and say how it went.

    ``rule``: an ABR rule or its name. ``duration_s``: stop after this much wall time
    (else at the end of the title). ``trace``: a trace (or its file) to pace reads by.
    ``events``: where playback events go, under ``session_id`` (made up if None).
    ``appliances``: the ids of ``urls`` from control's play answer, for events before a
    server says ``X-Served-By``. ``play_out``: stay until the buffer has played out, as a
    viewer does; False ends as soon as the last segment is in. Raises :class:`PlayerError`
    (with the partial summary) for a title that cannot be played.
    """
    if not urls:
        raise PlayerError("no URL to play")
    if not max_buffer_s > 0:
        raise ValueError(f"max_buffer_s: expected seconds > 0, got {max_buffer_s!r}")
    if isinstance(trace, str | Path):
        from player.traces import load_trace

        trace = load_trace(trace)
    http = session or aiohttp.ClientSession()
    try:
        player = _Player(
            urls,
            rule=resolve_rule(rule),
            http=http,
            config=config,
            max_buffer_s=max_buffer_s,
            trace=trace,
            events=events,
            on_status=on_status,
            session_id=session_id or secrets.token_urlsafe(12),
            appliances=appliances,
            play_out=play_out,
        )
        deadline = None if duration_s is None else player.t0 + duration_s
        try:
            async with asyncio.timeout_at(deadline) as cm:
                await player.run()
        except TimeoutError:
            if not cm.expired():
                raise
            return player.finish("duration")
        except PlayerError as exc:
            exc.summary = player.finish("error", str(exc))
            raise
        return player.finish("title")
    finally:
        if session is None:
            await http.close()


# -- through control ------------------------------------------------------------------------


class ControlClient:
    """Log-ins and plays at control, waiting out its rate limits (429 + ``Retry-After``)."""

    def __init__(
        self,
        control_url: str,
        http: aiohttp.ClientSession,
        *,
        max_wait_s: float = 120.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = control_url.rstrip("/")
        self.http = http
        self.max_wait_s = max_wait_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.throttled = 0  # 429 answers waited out

    async def call(
        self, method: str, path: str, body: object = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text), after waiting out any 429 for up to max_wait_s."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        waited = 0.0
        while True:
            try:
                async with self.http.request(
                    method, self.url + path, json=body, headers=headers, timeout=self.timeout
                ) as r:
                    text = await r.text()
                    retry_after = r.headers.get("Retry-After", "1")
                    status = r.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise PlayerError(f"control {method} {path}: {type(exc).__name__}: {exc}") from None
            if status != 429:
                try:
                    return status, json.loads(text)
                except ValueError:
                    return status, text
            self.throttled += 1
            try:
                wait = min(max(float(retry_after), 0.05), 30.0)
            except ValueError:
                wait = 1.0
            if waited + wait > self.max_wait_s:
                raise PlayerError(
                    f"control {method} {path}: still rate-limited after {waited:.0f} s"
                )
            waited += wait
            await asyncio.sleep(wait)

    async def sign_up(self, email: str, password: str) -> bool:
        """True if the account was made, False if it existed already."""
        status, body = await self.call("POST", "/accounts", {"email": email, "password": password})
        if status not in (201, 409):
            raise PlayerError(f"control: sign-up of {email}: HTTP {status}: {str(body)[:200]}")
        return status == 201

    async def login(self, email: str, password: str) -> str:
        status, body = await self.call("POST", "/sessions", {"email": email, "password": password})
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("token"), str):
            raise PlayerError(f"control: log-in of {email}: HTTP {status}: {str(body)[:200]}")
        return str(body["token"])

    async def play(self, token: str, title: str) -> dict[str, Any]:
        """Control's play answer: ``session``, ``urls``, ``appliances``, ..."""
        quoted = urllib.parse.quote(title, safe="")
        status, body = await self.call("POST", f"/play/{quoted}", token=token)
        if status != 200 or not isinstance(body, dict) or not body.get("urls"):
            raise PlayerError(f"control: play {title}: HTTP {status}: {str(body)[:200]}")
        return body


async def play_title(
    control_url: str,
    title: str,
    email: str,
    password: str,
    *,
    rule: AbrRule | str,
    source_ip: str | None = None,
    session: aiohttp.ClientSession | None = None,
    **options: Any,
) -> PlaySummary:
    """Log in, ``POST /play/{title}``, and play its ranked ``urls`` with events posted to
    control under the play's session id. ``source_ip`` binds a local address (to act as
    a viewer in another network); ``options`` go to :func:`play`."""
    connector = aiohttp.TCPConnector(local_addr=(source_ip, 0)) if source_ip else None
    http = session or aiohttp.ClientSession(connector=connector)
    events = EventPoster(control_url, http)
    try:
        control = ControlClient(control_url, http)
        token = await control.login(email, password)
        answer = await control.play(token, title)
        return await play(
            answer["urls"],
            rule=rule,
            events=events,
            session=http,
            session_id=str(answer["session"]),
            appliances=answer.get("appliances"),
            **options,
        )
    finally:
        await events.close()
        if session is None:
            await http.close()
