"""Trace readers (Sabre JSON, Pensieve text, Mahimahi), hostile files, the looping cursor."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from player.traces import (
    TEXT_LATENCY_MS,
    Period,
    Trace,
    TraceCursor,
    TraceError,
    load_trace,
    load_traces,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "traces"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


# -- each format round-trips ---------------------------------------------------------------


def test_sabre_json_round_trips(tmp_path: Path) -> None:
    periods = [
        {"duration_ms": 1000, "bandwidth_kbps": 1285, "latency_ms": 100},
        {"duration_ms": 500, "bandwidth_kbps": 0, "latency_ms": 20.5},
        {"duration_ms": 2000, "bandwidth_kbps": 3000.5, "latency_ms": 0},
    ]
    trace = load_trace(write(tmp_path, "a.json", json.dumps(periods, indent=1)))
    assert trace.name == "a.json"
    assert trace.periods == (
        Period(1.0, 1285, 100),
        Period(0.5, 0, 20.5),
        Period(2.0, 3000.5, 0),
    )
    assert trace.duration_s == 3.5


def test_pensieve_text_round_trips(tmp_path: Path) -> None:
    # Tabs or runs of spaces; each sample lasts until the next; the last as long as the one before.
    path = write(tmp_path, "b.txt", "0.0\t1.5\n1.0   2.0\n\n3.0 \t 0.5\n")
    assert load_trace(path).periods == (
        Period(1.0, 1500, TEXT_LATENCY_MS),
        Period(2.0, 2000, TEXT_LATENCY_MS),
        Period(2.0, 500, TEXT_LATENCY_MS),
    )


def test_pensieve_text_with_one_sample_lasts_one_second(tmp_path: Path) -> None:
    assert load_trace(write(tmp_path, "one.txt", "7.5 3\n")).periods == (
        Period(1.0, 3000, TEXT_LATENCY_MS),
    )


def test_mahimahi_counts_packets_per_second(tmp_path: Path) -> None:
    # 3 packets in [0, 1) s, 2 in [1, 2) s, 1 in the last half second (the trace ends at 2.5 s).
    path = write(tmp_path, "c.down", "1\n1\n500\n1000\n1500\n2500\n")
    packet_kbit = 1500 * 8 / 1000
    assert load_trace(path).periods == (
        Period(1.0, 3 * packet_kbit, TEXT_LATENCY_MS),
        Period(1.0, 2 * packet_kbit, TEXT_LATENCY_MS),
        Period(0.5, packet_kbit / 0.5, TEXT_LATENCY_MS),
    )


def test_mahimahi_gap_is_one_outage(tmp_path: Path) -> None:
    # A timestamp hours later makes one zero-bandwidth period, not thousands of bins.
    path = write(tmp_path, "gap.txt", "10\n36000000\n")
    assert load_trace(path).periods == (
        Period(1.0, 12, TEXT_LATENCY_MS),
        Period(35998.0, 0, TEXT_LATENCY_MS),
        Period(1.0, 12, TEXT_LATENCY_MS),
    )


def test_format_is_sniffed_from_content(tmp_path: Path) -> None:
    sabre = json.dumps([{"duration_ms": 1000, "bandwidth_kbps": 8, "latency_ms": 0}])
    assert load_trace(write(tmp_path, "noext", sabre)).periods == (Period(1.0, 8, 0),)
    assert load_trace(write(tmp_path, "mm.txt", "1000\n")).periods == (
        Period(1.0, 12, TEXT_LATENCY_MS),
    )


def test_load_traces_sorted_by_name_skipping_readme_and_hidden(tmp_path: Path) -> None:
    for name in ("b.txt", "a.txt"):
        write(tmp_path, name, "0 1\n1 1\n")
    write(tmp_path, "README.md", "# traces\n")
    write(tmp_path, ".hidden", "garbage")
    assert [t.name for t in load_traces(tmp_path)] == ["a.txt", "b.txt"]


def test_load_traces_of_an_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no trace files"):
        load_traces(tmp_path)


# -- hostile input ------------------------------------------------------------------------

P = '{"duration_ms": 2000, "bandwidth_kbps": 100, "latency_ms": 0}'  # "100": bandwidth only

HOSTILE = [
    # (file name, content, line named, words in the message)
    ("empty.json", "", 1, "empty file"),
    ("blank.txt", "\n  \n\t\n", 1, "empty file"),
    ("binary.txt", b"0 1\n\xff\xfe\x00\x01", 2, "not UTF-8"),
    ("garbage.json", "[{]", 1, "bad JSON"),
    ("garbage.txt", "hello world\n", 1, "not a number"),
    ("object.json", '{"duration_ms": 1}', 1, "expected a JSON list"),
    ("empty-list.json", "[\n]", 2, "empty"),
    ("numbers.json", "[\n1, 2]", 2, "must be an object"),
    ("missing.json", f'[\n{P},\n{{"duration_ms": 1000, "bandwidth_kbps": 1}}]', 3, "no latency_ms"),
    (
        "negative.json",
        f"[\n{P},\n{P.replace('100', '-5')}\n]",
        3,
        "bandwidth_kbps: must be finite and >= 0",
    ),
    ("nan.json", f"[\n{P.replace('100', 'NaN')}]", 2, "bandwidth_kbps: must be finite"),
    ("inf.json", f"[{P.replace('100', '1e999')}]", 1, "must be finite"),
    ("huge-int.json", f"[{P.replace('100', '9' * 5000)}]", 1, "bad JSON"),
    ("bool.json", f"[{P.replace('100', 'true')}]", 1, "not a number"),
    ("string.json", f"[{P.replace('100', chr(34) + 'fast' + chr(34))}]", 1, "not a number"),
    ("trailing-comma.json", f"[\n{P},\n]", 3, "bad JSON"),
    ("unclosed.json", f"[\n{P},\n{P}", 3, "expected ',' or ']'"),
    ("after.json", f"[{P}]\nmore", 2, "text after the list"),
    ("deep.json", "[" * 100_000, 1, "bad JSON"),
    (
        "zero-length.json",
        '[{"duration_ms": 0, "bandwidth_kbps": 5, "latency_ms": 0}]',
        1,
        "lasts 0 s",
    ),
    (
        "all-zero.json",
        f"[\n{P.replace('100', '0')},\n{P.replace('100', '0')}\n]",
        4,
        "bandwidth is 0",
    ),
    ("all-zero.txt", "0 0\n1 0\n", 2, "bandwidth is 0"),
    ("nan.txt", "0 1\n1 nan\n", 2, "throughput_Mbps: must be finite"),
    ("negative.txt", "0 1\n1 -2\n", 2, "throughput_Mbps: must be finite and >= 0"),
    ("negative-time.txt", "-1 1\n", 1, "time_s: must be finite and >= 0"),
    ("backwards.txt", "0 1\n2 1\n1 1\n", 3, "not after"),
    ("fields.txt", "0 1\n1 1 1\n", 2, "got 3 fields"),
    ("zero.down", "0\n0\n", 2, "lasts 0 ms"),
    ("backwards.down", "5\n3\n", 2, "before"),
    ("letters.down", "5\n6x\n", 2, "one millisecond timestamp"),
    ("superscript.down", "5\n\u00b2\n", 2, "one millisecond timestamp"),
]


@pytest.mark.parametrize(("name", "content", "line", "words"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_file(
    tmp_path: Path, name: str, content: str | bytes, line: int, words: str
) -> None:
    path = write(tmp_path, name, content)
    with pytest.raises(TraceError) as caught:
        load_trace(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line {line}: "), message
    assert words in message
    assert "\n" not in message


def test_absurd_size_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("wb") as f:
        f.truncate(50 * 1024 * 1024 + 1)  # sparse: costs no disk
    with pytest.raises(TraceError, match=r"huge\.json: line 1: 52,428,801 bytes is too big"):
        load_trace(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.json: cannot read"):
        load_trace(tmp_path / "nope.json")


def test_trace_checks_its_periods() -> None:
    with pytest.raises(ValueError, match="at least one period"):
        Trace("t", ())
    with pytest.raises(ValueError, match=r"periods\[1\]"):
        Trace("t", (Period(1, 1, 0), Period(0, 1, 0)))


# -- replaying ----------------------------------------------------------------------------


def test_cursor_loops_through_outages() -> None:
    # 1000 B/s for 1 s, then a 1 s outage, again and again.
    trace = Trace("t", (Period(1.0, 8, 0), Period(1.0, 0, 0)))
    link = TraceCursor(trace)
    # 1000 B, outage, 1000 B, outage, 500 B: two whole loops then half a second.
    assert link.fetch(2500) == pytest.approx(4.5)
    # Now 0.5 s into the first period: 500 B there, the outage, 500 B.
    assert link.fetch(1000) == pytest.approx(2.0)
    assert link.elapsed_s == pytest.approx(6.5)
    assert link.fetched_bytes == 3500


def test_cursor_advance_wraps_and_latency_delays_the_first_byte() -> None:
    trace = Trace("t", (Period(1.0, 8, 100), Period(1.0, 80, 10)))
    link = TraceCursor(trace)
    link.advance(5.25)  # 1.25 s into the loop: in the second period, 0.75 s left
    # 10 ms of latency, then 10,000 B/s: 5,000 B in 0.5 s.
    assert link.fetch(5000) == pytest.approx(0.01 + 0.5)
    # 0.24 s left of the fast period: 10 ms of latency, 0.23 s for 2,300 B, then 1000 B/s
    # in the slow period (whose own latency does not apply mid-transfer) for 700 B.
    assert link.fetch(3000) == pytest.approx(0.01 + 0.23 + 0.7)


def test_cursor_starting_at_an_offset() -> None:
    trace = Trace("t", (Period(1.0, 8, 0), Period(1.0, 80, 0)))
    assert TraceCursor(trace, offset_s=1.0).fetch(10_000) == pytest.approx(1.0)


# -- the shared traces ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "files", "median_mbps"),
    [("norway-3g", 86, 0.99), ("ghent-4g", 40, 31.9), ("fcc", 290, 1.13)],
)
def test_shared_traces_all_load(family: str, files: int, median_mbps: float) -> None:
    traces = load_traces(SHARED / family)
    assert len(traces) == files
    assert len({t.name for t in traces}) == files
    # The README's "median of per-trace mean": the units (kbps, Mbps, ms) are read right.
    median = statistics.median(t.mean_kbps for t in traces) / 1000
    assert median == pytest.approx(median_mbps, abs=0.01 * median_mbps + 0.005)
