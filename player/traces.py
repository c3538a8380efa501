"""Network throughput traces for the ABR simulator: three readers and a looping cursor.

A :class:`Trace` is a list of periods ``(duration_s, bandwidth_kbps, latency_ms)`` played in
order and from the start again when it runs out. Three formats are read:

- Sabre JSON: ``[{"duration_ms": 1000, "bandwidth_kbps": 1285, "latency_ms": 100}, ...]``.
- Pensieve text: ``time_s throughput_Mbps`` per line (tab or spaces). Sample ``i`` holds from
  its timestamp to the next one; the last sample lasts as long as the one before it (1 s if
  it is the only one). The format has no latency: every period gets ``TEXT_LATENCY_MS``.
- Mahimahi: one millisecond timestamp per line, each a delivery opportunity for one
  1500-byte packet; the trace lasts until its last timestamp. Packets are counted in
  ``MAHIMAHI_PERIOD_MS`` bins, each becoming one period; latency as for Pensieve text.

Every reading error is a :class:`TraceError` whose one-line message names the file and the
line. Zero-bandwidth periods are outages and allowed; a trace with no bandwidth at all, or
no duration, is an error (a download over it would never finish).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from streamcdn.errors import UserError

MAX_FILE_BYTES = 50 * 1024 * 1024  # larger is not a trace (the biggest shared one is ~0.3 MB)
# The Pensieve and Mahimahi formats carry no latency: Pensieve's simulator adds a fixed
# LINK_RTT of 80 ms to every chunk request, so text traces replay the same way.
TEXT_LATENCY_MS = 80.0
MAHIMAHI_PACKET_BYTES = 1500
MAHIMAHI_PERIOD_MS = 1000  # packets are counted per second, like the Pensieve cooked traces
MAHIMAHI_MAX_DIGITS = 15  # 10**15 ms is 31,000 years
MAHIMAHI_SUFFIXES = (".down", ".up", ".mahi", ".mahimahi")
SKIPPED_SUFFIXES = (".md",)  # README.md beside the traces


class TraceError(UserError):
    """A trace file that cannot be used; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        super().__init__(
            f"{path}: {message}" if line is None else f"{path}: line {line}: {message}"
        )
        self.path = str(path)
        self.line = line


class Period(NamedTuple):
    duration_s: float
    bandwidth_kbps: float
    latency_ms: float


@dataclass(frozen=True, slots=True)
class Trace:
    """Periods replayed in order, from the start again when they run out."""

    name: str
    periods: tuple[Period, ...]
    # Derived once, for every TraceCursor over this trace:
    duration_s: float = field(init=False, compare=False)
    bytes_per_loop: float = field(init=False, repr=False, compare=False)
    period_s: tuple[float, ...] = field(init=False, repr=False, compare=False)
    period_bytes_per_s: tuple[float, ...] = field(init=False, repr=False, compare=False)
    period_latency_s: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.periods:
            raise ValueError("periods: a trace needs at least one period")
        for i, p in enumerate(self.periods):
            if not (p.duration_s > 0 and all(math.isfinite(v) and v >= 0 for v in p)):
                raise ValueError(f"periods[{i}]: needs a duration > 0 and finite values >= 0: {p}")
        if not any(p.bandwidth_kbps > 0 for p in self.periods):
            raise ValueError("bandwidth is 0 in every period: no byte would ever arrive")
        durations = tuple(p.duration_s for p in self.periods)
        rates = tuple(p.bandwidth_kbps * 125 for p in self.periods)
        loop = sum(r * d for r, d in zip(rates, durations, strict=True))
        object.__setattr__(self, "duration_s", sum(durations))
        object.__setattr__(self, "bytes_per_loop", loop)
        object.__setattr__(self, "period_s", durations)
        object.__setattr__(self, "period_bytes_per_s", rates)
        object.__setattr__(
            self, "period_latency_s", tuple(p.latency_ms / 1000 for p in self.periods)
        )

    @property
    def mean_kbps(self) -> float:
        return self.bytes_per_loop / self.duration_s / 125


# -- reading ---------------------------------------------------------------------------


def load_traces(directory: Path | str) -> list[Trace]:
    """Every trace file in ``directory`` (not hidden, not ``*.md``), sorted by file name."""
    root = Path(directory)
    if not root.is_dir():
        raise TraceError(root, None, "not a directory of traces")
    files = sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix not in SKIPPED_SUFFIXES
    )
    if not files:
        raise TraceError(root, None, "no trace files in this directory")
    return [load_trace(p) for p in files]


def load_trace(path: Path | str) -> Trace:
    """Read one trace, its format told by its extension and its first non-blank line."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise TraceError(path, 1, f"{size:,} bytes is too big for a trace (> 50 MB)")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise TraceError(path, line, "not UTF-8 text") from None
    except OSError as exc:
        raise TraceError(path, None, f"cannot read: {exc.strerror}") from None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if not first:
        raise TraceError(path, 1, "empty file")
    if path.suffix == ".json" or first.startswith("["):
        periods = _parse_sabre(path, text)
    elif path.suffix in MAHIMAHI_SUFFIXES or len(first.split()) == 1:
        periods = _parse_mahimahi(path, text)
    else:
        periods = _parse_pensieve(path, text)
    return _checked(path, max(1, len(text.splitlines())), periods)


def _checked(path: Path, last_line: int, periods: list[Period]) -> Trace:
    kept = tuple(p for p in periods if p.duration_s > 0)
    if not kept:
        raise TraceError(path, last_line, "the trace lasts 0 s")
    try:
        return Trace(path.name, kept)
    except ValueError as exc:
        raise TraceError(path, last_line, str(exc)) from None


def _number(path: Path, line: int, field: str, value: Any) -> float:
    """A finite, non-negative number, or a TraceError naming the field."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise TraceError(path, line, f"{field}: not a number: {value[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(path, line, f"{field}: not a number: {str(value)[:40]}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise TraceError(path, line, f"{field}: must be finite and >= 0, got {number}")
    return number


def _parse_sabre(path: Path, text: str) -> list[Period]:
    """Entry by entry with ``raw_decode``, so an error can name the entry's line."""
    decoder = json.JSONDecoder()
    line, pos = 1, 0

    def skip_to_token() -> None:
        nonlocal line, pos
        while pos < len(text) and text[pos] in " \t\r\n":
            line += text[pos] == "\n"
            pos += 1

    def expect(chars: str, what: str) -> str:
        nonlocal pos
        skip_to_token()
        if pos >= len(text) or text[pos] not in chars:
            found = repr(text[pos : pos + 20]) if pos < len(text) else "the end of the file"
            raise TraceError(path, line, f"expected {what}, found {found}")
        pos += 1
        return text[pos - 1]

    expect("[", "a JSON list of periods")
    periods: list[Period] = []
    skip_to_token()
    if text.startswith("]", pos):
        raise TraceError(path, line, "the list of periods is empty")
    while True:
        skip_to_token()
        try:
            entry, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise TraceError(path, exc.lineno, f"bad JSON: {exc.msg}") from None
        except (ValueError, RecursionError) as exc:  # a 5,000-digit number, deep nesting
            raise TraceError(path, line, f"bad JSON: {str(exc)[:60]}") from None
        if not isinstance(entry, dict):
            raise TraceError(path, line, f"a period must be an object, got {entry!r:.40}")
        values = []
        for key in ("duration_ms", "bandwidth_kbps", "latency_ms"):
            if key not in entry:
                raise TraceError(path, line, f"the period has no {key}")
            values.append(_number(path, line, key, entry[key]))
        periods.append(Period(values[0] / 1000, values[1], values[2]))
        line += text.count("\n", pos, end)
        pos = end
        if expect(",]", "',' or ']'") == "]":
            break
    skip_to_token()
    if pos < len(text):
        raise TraceError(path, line, f"text after the list: {text[pos : pos + 20]!r}")
    return periods


def _data_lines(text: str) -> list[tuple[int, list[str]]]:
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _parse_pensieve(path: Path, text: str) -> list[Period]:
    samples: list[tuple[int, float, float]] = []
    for n, fields in _data_lines(text):
        if len(fields) != 2:
            raise TraceError(
                path, n, f"expected 'time_s throughput_Mbps', got {len(fields)} fields"
            )
        time_s = _number(path, n, "time_s", fields[0])
        mbps = _number(path, n, "throughput_Mbps", fields[1])
        if samples and time_s <= samples[-1][1]:
            raise TraceError(path, n, f"time_s {time_s} is not after {samples[-1][1]}")
        samples.append((n, time_s, mbps))
    durations = [b[1] - a[1] for a, b in itertools.pairwise(samples)]
    durations.append(durations[-1] if durations else 1.0)
    return [
        Period(d, mbps * 1000, TEXT_LATENCY_MS)
        for d, (_, _, mbps) in zip(durations, samples, strict=True)
    ]


def _parse_mahimahi(path: Path, text: str) -> list[Period]:
    stamps: list[int] = []
    for n, fields in _data_lines(text):
        if len(fields) != 1 or not (fields[0].isascii() and fields[0].isdecimal()):
            raise TraceError(path, n, f"expected one millisecond timestamp, got {fields[:3]}")
        if len(fields[0]) > MAHIMAHI_MAX_DIGITS:  # int() and float division would overflow
            raise TraceError(path, n, f"a timestamp of {len(fields[0])} digits is too large")
        ms = int(fields[0])
        if stamps and ms < stamps[-1]:
            raise TraceError(path, n, f"timestamp {ms} is before {stamps[-1]}")
        stamps.append(ms)
    length_ms = stamps[-1]
    if length_ms == 0:
        raise TraceError(path, len(text.splitlines()), "the trace lasts 0 ms")
    last_bin = math.ceil(length_ms / MAHIMAHI_PERIOD_MS) - 1

    def bin_of(ms: int) -> int:  # a packet at exactly the end belongs to the last bin
        return min(ms // MAHIMAHI_PERIOD_MS, last_bin)

    periods = []
    done_ms = 0
    for k, packets in itertools.groupby(stamps, key=bin_of):
        start_ms = k * MAHIMAHI_PERIOD_MS
        if start_ms > done_ms:  # bins without a packet make one outage, however long
            periods.append(Period((start_ms - done_ms) / 1000, 0.0, TEXT_LATENCY_MS))
        done_ms = min(start_ms + MAHIMAHI_PERIOD_MS, length_ms)
        duration_s = (done_ms - start_ms) / 1000
        kbps = sum(1 for _ in packets) * MAHIMAHI_PACKET_BYTES * 8 / 1000 / duration_s
        periods.append(Period(duration_s, kbps, TEXT_LATENCY_MS))
    return periods


# -- replaying -------------------------------------------------------------------------


class TraceCursor:
    """The link's state at the virtual clock's now: a position in a trace that loops.

    Only time moves it: ``advance`` lets time pass idle, ``fetch`` spends the time a request
    takes (the current period's latency, then the bytes at each period's bandwidth).
    Whole loops of the trace are skipped arithmetically, so a long outage costs nothing.
    """

    def __init__(self, trace: Trace, offset_s: float = 0.0) -> None:
        self._trace = trace
        self._i = 0
        self._left_s = trace.period_s[0]  # left in period _i
        self.elapsed_s = 0.0
        self.advance(offset_s)
        self.elapsed_s = 0.0  # since the offset
        self.fetched_bytes = 0

    def advance(self, seconds: float) -> None:
        self.elapsed_s += seconds
        seconds %= self._trace.duration_s
        durations, i, left = self._trace.period_s, self._i, self._left_s
        while seconds >= left:
            seconds -= left
            i = (i + 1) % len(durations)
            left = durations[i]
        self._i, self._left_s = i, left - seconds

    def fetch(self, nbytes: int) -> float:
        """Seconds from request to last byte of ``nbytes``, starting now; the clock moves on."""
        latency_s = self._trace.period_latency_s[self._i]
        self.advance(latency_s)
        self.fetched_bytes += nbytes
        trace = self._trace
        durations, rates = trace.period_s, trace.period_bytes_per_s
        i, left = self._i, self._left_s
        remaining = float(nbytes)
        transfer_s = 0.0
        if remaining > trace.bytes_per_loop:
            loops = math.ceil(remaining / trace.bytes_per_loop) - 1
            remaining -= loops * trace.bytes_per_loop
            transfer_s += loops * trace.duration_s
        while remaining > 0:
            rate = rates[i]
            if rate * left >= remaining:  # never true of an outage (rate 0)
                dt = remaining / rate
                left -= dt
                transfer_s += dt
                break
            remaining -= rate * left
            transfer_s += left
            i = (i + 1) % len(durations)
            left = durations[i]
        self._i, self._left_s = i, left
        self.elapsed_s += transfer_s
        return latency_s + transfer_s
