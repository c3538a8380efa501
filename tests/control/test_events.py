"""Playback events: batch checks, the JSONL and Redis sinks, and the QoE summary."""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from control.events import (
    Event,
    EventError,
    EventType,
    JsonlSink,
    QoeSummary,
    RedisStreamSink,
    SinkUnavailable,
    parse_batch,
)
from tests.conftest import RedisServer

NOW = 1_700_000_000.0


TYPICAL: dict[str, dict[str, Any]] = {  # fields each type usually carries
    "start": {"title": "tiny", "bitrate_kbps": 3000},
    "switch": {"rendition": "1080p", "from_rendition": "720p", "bitrate_kbps": 6000},
    "stall": {"stall_s": 1.5, "buffer_s": 0},
    "error": {"error": "HTTP 503 from a1"},
    "end": {"position_s": 600},
}


def raw(type_: str = "stall", **fields: Any) -> dict[str, Any]:
    """A valid posted event of ``type_``; ``fields`` override (None: leave the field out)."""
    base = {"type": type_, "session": "s1", "ts": NOW - 10, "appliance": "a1"}
    base |= TYPICAL[type_] | fields
    return {k: v for k, v in base.items() if v is not None}


def ev(type_: str, ts: float, session: str = "s1", **fields: Any) -> Event:
    return Event(type=EventType(type_), session=session, ts=ts, **fields)


# -- parse_batch -------------------------------------------------------------------------


def test_a_valid_batch_of_every_type() -> None:
    body = {
        "events": [
            raw("start", appliance=None, ts=NOW - 86_400),
            raw("switch"),
            raw("stall", throughput_kbps=12_000.5),
            raw("error"),
            raw("end", ts=NOW + 300),
        ]
    }
    events = parse_batch(body, now=NOW)
    assert [e.type for e in events] == ["start", "switch", "stall", "error", "end"]
    start, switch, stall, error, end = events
    assert start.appliance is None and start.title == "tiny" and start.bitrate_kbps == 3000.0
    assert (switch.rendition, switch.from_rendition) == ("1080p", "720p")
    assert (stall.stall_s, stall.buffer_s, stall.throughput_kbps) == (1.5, 0.0, 12_000.5)
    assert error.error == "HTTP 503 from a1"
    assert end.ts == NOW + 300 and end.position_s == 600.0
    assert parse_batch(body["events"], now=NOW) == events  # a bare list too
    for event in events:
        assert Event.from_json(json.loads(json.dumps(event.to_json()))) == event


def test_unknown_fields_are_dropped_and_null_is_absent() -> None:
    plain = parse_batch([raw("stall")], now=NOW)
    assert parse_batch([raw("stall", fps=24, cdn={"x": 1}, title=None)], now=NOW) == plain
    assert "fps" not in plain[0].to_json() and "title" not in plain[0].to_json()


def test_the_message_names_index_and_field() -> None:
    batch = [raw("start"), raw("switch"), raw("end"), raw("stall", bitrate_kbps="x")]
    with pytest.raises(EventError) as err:
        parse_batch({"events": batch}, now=NOW)
    assert str(err.value) == "events[3].bitrate_kbps: expected a number >= 0, got 'x'"


@pytest.mark.parametrize(
    ("event", "field", "why"),
    [
        (raw(type="pause"), "type", "expected one of start, switch, stall, error, end"),
        (raw(type=3), "type", "got 3"),
        (raw(type=["stall"]), "type", "expected one of"),
        ({"session": "s1", "ts": NOW}, "type", "missing"),
        (raw(session=""), "session", "expected 1-128 of"),
        (raw(session="s" * 129), "session", "expected 1-128 of"),
        (raw(session="a b"), "session", "expected 1-128 of"),
        (raw(session="caf\u00e9"), "session", "expected 1-128 of"),
        (raw(session="a.b"), "session", "expected 1-128 of"),
        (raw(session=12), "session", "got 12"),
        ({"type": "end", "ts": NOW, "appliance": "a1"}, "session", "missing"),
        (raw(ts="x"), "ts", "expected a number >= 0, got 'x'"),
        (raw(ts=True), "ts", "expected a number"),
        (raw(ts=float("nan")), "ts", "expected a finite number, got nan"),
        (raw(ts=float("inf")), "ts", "expected a finite number"),
        (raw(ts=10**400), "ts", "expected a finite number"),
        (raw(ts=-1), "ts", "expected a number >= 0"),
        (raw(ts=NOW - 86_401), "ts", "from 86400 s before to 300 s after"),
        (raw(ts=NOW + 301), "ts", "from 86400 s before to 300 s after"),
        (raw(ts=None), "ts", "missing"),
        (raw("stall", appliance=None), "appliance", "missing (required on stall events)"),
        (raw("end", appliance=None), "appliance", "missing (required on end events)"),
        (raw(appliance="a/b"), "appliance", "expected an appliance id"),
        (raw(appliance="a" * 65), "appliance", "expected an appliance id"),
        (raw(appliance=7), "appliance", "got 7"),
        (raw(title="../etc"), "title", "expected a title id"),
        (raw(title="a b"), "title", "expected a title id"),
        (raw(bitrate_kbps=-1), "bitrate_kbps", "expected a number >= 0, got -1"),
        (raw(bitrate_kbps=float("nan")), "bitrate_kbps", "expected a finite number"),
        (raw(bitrate_kbps=float("-inf")), "bitrate_kbps", "expected a finite number"),
        (raw(bitrate_kbps=1e6 + 1), "bitrate_kbps", "expected a number <= 1e+06"),
        (raw(bitrate_kbps=True), "bitrate_kbps", "got True"),
        (raw(bitrate_kbps=[1]), "bitrate_kbps", "got [1]"),
        (raw(bitrate_kbps="3000"), "bitrate_kbps", "got '3000'"),
        (raw(throughput_kbps=1e9), "throughput_kbps", "expected a number <= 1e+08"),
        (raw(buffer_s=3601), "buffer_s", "expected a number <= 3600"),
        (raw(buffer_s=-0.5), "buffer_s", "expected a number >= 0"),
        (raw(stall_s=3600.5), "stall_s", "expected a number <= 3600"),
        (raw(position_s=1e7), "position_s", "expected a number <= 1e+06"),
        (raw("stall", stall_s={}), "stall_s", "expected a number"),
        (raw("error", error="x" * 201), "error", "expected 1-200 printable characters"),
        (raw("error", error=""), "error", "expected 1-200 printable characters"),
        (raw("error", error="bad\nline"), "error", "expected 1-200 printable characters"),
        (raw("error", error=500), "error", "got 500"),
        (raw("error", error=None), "error", "missing (required on error events)"),
        (raw("switch", rendition=None), "rendition", "missing (required on switch events)"),
        (raw("switch", rendition="1080 p"), "rendition", "expected a rendition name"),
        (raw("switch", from_rendition="x" * 65), "from_rendition", "expected a rendition name"),
        (raw("stall", rendition="720p"), "rendition", "only allowed on switch events"),
        (raw("start", from_rendition="720p"), "from_rendition", "only allowed on switch"),
        (raw("end", stall_s=2), "stall_s", "only allowed on stall events"),
        (raw("stall", error="boom"), "error", "only allowed on error events"),
    ],
)
def test_every_bad_field_is_named(event: dict[str, Any], field: str, why: str) -> None:
    batch = [raw("start"), raw("switch"), event, raw("end")]
    with pytest.raises(EventError) as err:
        parse_batch({"events": batch}, now=NOW)
    message = str(err.value)
    assert message.startswith(f"events[2].{field}: "), message
    assert why in message, message
    assert len(message) < 200  # a huge bad value is cut short


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"events": []}, "events: empty batch"),
        ([], "events: empty batch"),
        ([raw()] * 501, "events: 501 events; at most 500 per batch"),
        ("events", 'body: expected an object with an "events" list, or a list, got a string'),
        (None, "got null"),
        (42, "got 42"),
        ({"event": [raw()]}, "got an object"),
        ({"events": {"0": raw()}}, "got an object"),
        ([raw(), ["stall"]], "events[1]: expected an object, got a list"),
        ([raw(), "stall"], "events[1]: expected an object, got a string"),
    ],
)
def test_bad_batches(body: object, why: str) -> None:
    with pytest.raises(EventError) as err:
        parse_batch(body, now=NOW)
    assert why in str(err.value)


def test_max_events_is_a_parameter() -> None:
    assert len(parse_batch([raw()] * 500, now=NOW)) == 500
    assert len(parse_batch([raw()] * 3, now=NOW, max_events=3)) == 3
    with pytest.raises(EventError, match="4 events; at most 3"):
        parse_batch([raw()] * 4, now=NOW, max_events=3)


# -- JsonlSink ---------------------------------------------------------------------------


def batch(n: int, session: str = "s1", t0: float = NOW) -> list[Event]:
    return [ev("stall", t0 + i, session, appliance="a1", stall_s=0.5) for i in range(n)]


async def test_jsonl_append_then_recent(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    assert await sink.recent(10) == []  # no file yet
    first, second = batch(3, "s1"), batch(2, "s2")
    await sink.append(first)
    await sink.append(second)
    assert await sink.recent(10) == first + second
    assert await sink.recent(2) == second
    assert await sink.recent(0) == []
    await sink.close()
    reopened = JsonlSink(path)  # a restart reads what was acknowledged
    assert await reopened.recent(4) == first[1:] + second
    await reopened.append(first)
    assert await reopened.recent(100) == first + second + first
    await reopened.close()
    assert all(json.loads(line) for line in path.read_text().splitlines())


async def test_jsonl_concurrent_appends_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    long = "x" * 100  # long lines: a torn write would show
    batches = [batch(500, f"{long}-{b}") for b in range(8)]
    await asyncio.gather(*(sink.append(b) for b in batches))
    await sink.close()
    sessions = [json.loads(line)["session"] for line in path.read_text().splitlines()]
    assert len(sessions) == 8 * 500
    runs = [sessions[i : i + 500] for i in range(0, len(sessions), 500)]
    assert all(len(set(run)) == 1 for run in runs)  # each batch whole, in one piece
    assert sorted(run[0] for run in runs) == sorted(b[0].session for b in batches)


async def test_jsonl_skips_a_torn_last_line_and_appends_past_it(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(path)
    before = batch(3)
    await sink.append(before)
    await sink.close()
    with path.open("ab") as f:  # a crash in the middle of a write
        f.write(b'{"type":"stall","session":"s1","ts":17')
    after_crash = JsonlSink(path)
    assert await after_crash.recent(10) == before
    later = batch(2, "s2")
    await after_crash.append(later)
    assert await after_crash.recent(10) == before + later
    await after_crash.close()


async def test_jsonl_recent_reads_only_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = [
        ev("switch", NOW + i / 10, f"s{i}", appliance="a1", rendition="720p") for i in range(50_000)
    ]
    path.write_bytes(b"".join(json.dumps(e.to_json()).encode() + b"\n" for e in events))
    sink = JsonlSink(path)
    started = time.perf_counter()
    assert await sink.recent(10) == events[-10:]
    assert time.perf_counter() - started < 1.0
    assert await sink.recent(5_000) == events[-5_000:]  # across many chunk boundaries
    assert await sink.recent(60_000) == events  # the whole file, the first line included

    # An 8 GiB file (sparse: a hole, then the lines) cannot be read whole in a test's memory.
    huge = tmp_path / "huge.jsonl"
    with huge.open("wb") as f:
        f.truncate(8 << 30)
        f.seek(8 << 30)
        f.write(path.read_bytes()[-200_000:])
    started = time.perf_counter()
    assert await JsonlSink(huge).recent(10) == events[-10:]
    assert time.perf_counter() - started < 1.0


async def test_jsonl_full_disk_loses_nothing_acknowledged(tiny_tmpfs: Path) -> None:
    path = tiny_tmpfs / "events.jsonl"
    sink = JsonlSink(path)
    filler = tiny_tmpfs / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
    acknowledged: list[Event] = []
    with pytest.raises(SinkUnavailable, match="cannot write events"):
        for b in range(1000):
            events = batch(100, f"s{b}")
            await sink.append(events)
            acknowledged += events
    assert acknowledged  # some fitted before the disk filled
    assert await sink.recent(100_000) == acknowledged  # and no half batch is left behind
    filler.unlink()
    more = batch(5, "after")
    await sink.append(more)
    assert await sink.recent(100_000) == acknowledged + more
    await sink.close()


# -- RedisStreamSink ---------------------------------------------------------------------


async def test_redis_append_then_recent(redis_server: RedisServer) -> None:
    sink = RedisStreamSink(redis_server.url, stream="test:events")
    assert await sink.recent(10) == []
    first = [ev("start", NOW, "s1", title="tiny", bitrate_kbps=3000.0), *batch(2)]
    second = [ev("error", NOW + 5, "s2", appliance="ix1", error="HTTP 503 from ix1")]
    await sink.append(first)
    await sink.append(second)
    assert await sink.recent(10) == first + second
    assert await sink.recent(2) == [first[-1], *second]
    await sink.close()


async def test_redis_trims_to_about_maxlen(redis_server: RedisServer) -> None:
    sink = RedisStreamSink(redis_server.url, stream="test:trim", maxlen=100)
    events = batch(2_000)
    for i in range(0, len(events), 250):
        await sink.append(events[i : i + 250])
    kept = await sink.recent(10_000)
    assert 100 <= len(kept) <= 250  # "~": whole nodes of up to 100 entries go at once
    assert kept == events[-len(kept) :]
    await sink.close()


async def test_redis_down_is_unavailable_and_recovers(redis_server: RedisServer) -> None:
    sink = RedisStreamSink(redis_server.url)
    await sink.append(batch(2))
    redis_server.stop()
    with pytest.raises(SinkUnavailable, match="cannot add events to Redis stream"):
        await sink.append(batch(3, "lost"))
    with pytest.raises(SinkUnavailable, match="cannot read Redis stream"):
        await sink.recent(10)
    redis_server.start()  # the same port, empty (no persistence)
    again = batch(3, "again")
    await sink.append(again)
    assert await sink.recent(10) == again
    await sink.close()


# -- QoeSummary --------------------------------------------------------------------------

T0 = NOW - 3600

# Session s1 plays on a1: 600 s at 3000 kbps, then 1200 s at 6000 kbps, one stall of 2 s.
# Session s2 starts before it knows an appliance, plays 120 s at 1000 kbps on a1 (a 3.5 s
# stall, then an error), fails over to a2 and plays 480 s more there (a stall, no duration).
SESSIONS = [
    ev("start", T0, "s1", appliance="a1", bitrate_kbps=3000.0),
    ev("switch", T0 + 600, "s1", appliance="a1", rendition="1080p", bitrate_kbps=6000.0),
    ev("stall", T0 + 900, "s1", appliance="a1", stall_s=2.0, bitrate_kbps=6000.0),
    ev("end", T0 + 1800, "s1", appliance="a1"),
    ev("start", T0, "s2"),
    ev("stall", T0 + 60, "s2", appliance="a1", bitrate_kbps=1000.0, stall_s=3.5),
    ev("error", T0 + 120, "s2", appliance="a1", error="HTTP 503"),
    ev("stall", T0 + 300, "s2", appliance="a2", bitrate_kbps=1000.0),
    ev("end", T0 + 600, "s2", appliance="a2"),
]


def test_summary_of_hand_made_sessions() -> None:
    shuffled = SESSIONS[:]
    random.Random(7).shuffle(shuffled)
    at_once, one_by_one = QoeSummary(), QoeSummary()
    at_once.add(shuffled)  # applied in timestamp order
    for event in SESSIONS:
        one_by_one.add([event])
    summary = at_once.to_json(now=T0 + 1900)
    assert summary == one_by_one.to_json(now=T0 + 1900)
    a1 = 1920 / 3600  # hours: all of s1, 120 s of s2
    assert summary == {
        "appliances": {
            "a1": {
                "sessions": 2,
                "play_hours": round(a1, 4),
                "stalls": 2,
                "stall_s": 5.5,
                "stalls_per_hour": 3.75,  # 2 / (1920 / 3600)
                # time-weighted: (600 * 3000 + 1200 * 6000 + 120 * 1000) / 1920;
                # the mean of the samples (3000, 6000, 6000, 1000) would say 4000
                "avg_bitrate_kbps": 4750.0,
                "errors": 1,
                "last_ts": T0 + 1800,
                "idle_s": 100.0,
            },
            "a2": {
                "sessions": 1,
                "play_hours": round(480 / 3600, 4),
                "stalls": 1,
                "stall_s": 0.0,
                "stalls_per_hour": 7.5,
                "avg_bitrate_kbps": 1000.0,
                "errors": 0,
                "last_ts": T0 + 600,
                "idle_s": 1300.0,
            },
        },
        "events": 9,
        "unattributed": 0,
    }


def test_summary_time_after_end_and_late_events() -> None:
    summary = QoeSummary()
    summary.add([ev("start", T0, "s", appliance="a1", bitrate_kbps=2000.0)])
    summary.add([ev("end", T0 + 360, "s", appliance="a1")])
    summary.add([ev("error", T0 + 7200, "s", appliance="a1", error="late report")])
    summary.add([ev("stall", T0 + 100, "s", appliance="a1", stall_s=1.0)])  # late: no time
    a1 = summary.to_json(now=T0 + 7200)["appliances"]["a1"]
    assert (a1["play_hours"], a1["stalls"], a1["errors"], a1["sessions"]) == (0.1, 1, 1, 1)
    assert (a1["stalls_per_hour"], a1["avg_bitrate_kbps"]) == (10.0, 2000.0)


def test_summary_without_play_time_says_null() -> None:
    summary = QoeSummary()
    summary.add([ev("start", T0, "s", appliance="a1"), ev("start", T0, "t")])
    assert summary.to_json(now=T0)["appliances"]["a1"] == {
        "sessions": 1,
        "play_hours": 0.0,
        "stalls": 0,
        "stall_s": 0.0,
        "stalls_per_hour": None,
        "avg_bitrate_kbps": None,
        "errors": 0,
        "last_ts": T0,
        "idle_s": 0.0,
    }
    assert summary.to_json(now=T0)["events"] == 2


def test_summary_memory_is_bounded() -> None:
    summary = QoeSummary(max_sessions=100, max_appliances=2)
    summary.add(
        [ev("start", T0, "kept", appliance="a1"), ev("start", T0, "evicted", appliance="a1")]
    )
    for i in range(1000):
        summary.add([ev("start", T0 + i, f"other{i}", appliance="a1")])
        if i % 50 == 0:  # recently active: kept however many sessions come after
            summary.add([ev("stall", T0 + i, "kept", appliance="a1")])
        assert summary.tracked_sessions <= 100
    assert summary.tracked_sessions == 100
    summary.add([ev("end", T0 + 3600, "kept", appliance="a1")])  # its whole hour counts
    summary.add([ev("end", T0 + 3600, "evicted", appliance="a1")])  # forgotten: no time
    a1 = summary.to_json(now=T0 + 3600)["appliances"]["a1"]
    assert a1["play_hours"] == 1.0
    assert a1["sessions"] == 1002 + 1  # the evicted session counts again

    summary.add([ev("start", T0, "x", appliance=name) for name in ("a2", "a3", "a4")])
    assert sorted(summary.to_json(now=T0)["appliances"]) == ["a1", "a2"]
    assert summary.unattributed == 2
