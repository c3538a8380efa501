"""Hostile trace files fed to player/traces.py: a one-line TraceError or a sound Trace.

Files are Sabre JSON, Pensieve text or Mahimahi timestamps, built entry by entry with
plausible or hostile values (wrong types, NaN, 1e999, negative or 5,000-digit numbers,
strings holding newlines, out-of-order times), then mutated (lines deleted or repeated,
characters inserted, the file cut short), or arbitrary text and bytes; each under a
suffix that picks its reader or not. ``load_trace`` gives a TraceError whose message
is one line and names the file, or a Trace whose periods keep the simulator's
invariants; never another exception.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from player.traces import Trace, TraceError, load_trace
from tests.faults.fuzzing import fuzz, mutate

NUMBERS = st.one_of(
    st.integers(0, 10**6).map(str),
    st.floats(0, 1e6).map(repr),
    st.sampled_from(
        ["NaN", "Infinity", "-1", "1e999", "-0", "0", "1" + "0" * 400, "9" * 5000, "1e-400",
         '"100"', '"x"', '"a\\nb"', "true", "null", "[]", "{}", '"\\ud800"', "1_000", '"1e999"']
    ),
)  # fmt: skip
ENTRY = st.lists(
    st.tuples(st.sampled_from(["duration_ms", "bandwidth_kbps", "latency_ms", "x", ""]), NUMBERS),
    max_size=5,
).map(lambda kv: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in kv) + "}")
SABRE = st.lists(st.one_of(ENTRY, NUMBERS), max_size=8).map(
    lambda es: "[\n" + ",\n".join(es) + "\n]"
)
TEXT_NUMBER = st.one_of(
    st.integers(-10, 10**6).map(str),
    st.floats().map(repr),
    st.sampled_from(["nan", "inf", "1e999", "9" * 5000, "9" * 400, "\u0661", "1_0", "0x10", ""]),
)
PENSIEVE = st.lists(st.lists(TEXT_NUMBER, min_size=1, max_size=3).map(" ".join), max_size=10).map(
    "\n".join
)
MAHIMAHI = st.lists(TEXT_NUMBER, max_size=12).map("\n".join)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("delete"), st.integers(0, 20)),
        st.tuples(st.just("dup"), st.integers(0, 20), st.sampled_from([2, 500])),
        st.tuples(st.just("chars"), st.integers(0, 500), st.text(max_size=6)),
        st.tuples(st.just("cut"), st.integers(0, 500)),
    ),
    max_size=3,
)
REAL = {
    ".json": '[{"duration_ms": 1000, "bandwidth_kbps": 1285, "latency_ms": 100},\n'
    ' {"duration_ms": 500, "bandwidth_kbps": 0, "latency_ms": 80}]\n',
    ".txt": "0.0 1.5\n1.0 2.25\n2.5 0.0\n3.0 4\n",
    ".down": "0\n3\n3\n1200\n2500\n2501\n4000\n",
}


CONTENT = st.one_of(
    SABRE,
    PENSIEVE,
    MAHIMAHI,
    st.tuples(st.sampled_from(list(REAL.values())), OPS).map(lambda b: mutate(*b, end="")),
    st.text(max_size=200),
    st.binary(max_size=200),
)
SUFFIXES = st.sampled_from([".json", ".txt", ".down", ".up", ".mahi", "", ".log", ".JSON"])


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-traces-") as d:
        yield Path(d)


@fuzz(2000)
@given(content=CONTENT, suffix=SUFFIXES)
@example(content=REAL[".json"], suffix=".json")
@example(content=REAL[".txt"], suffix=".txt")
@example(content=REAL[".down"], suffix=".down")
@example(content='[\n"a\\nb"]', suffix=".json")  # was: a message of two lines
@example(content="0\n" + "9" * 5000, suffix=".down")  # was: ValueError from int()
@example(content="0\n1" + "0" * 400, suffix=".down")  # was: OverflowError in a division
def test_hostile_trace_files_give_a_one_line_trace_error_or_a_sound_trace(
    workdir: Path, content: str | bytes, suffix: str
) -> None:
    path = workdir / f"trace{suffix}"
    if isinstance(content, str):
        content = content.encode("utf-8", "surrogatepass")
    path.write_bytes(content)
    try:
        trace = load_trace(path)
    except TraceError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message and "\r" not in message
        return
    assert isinstance(trace, Trace) and trace.periods
    for p in trace.periods:
        assert p.duration_s > 0 and all(math.isfinite(v) and v >= 0 for v in p)
    assert any(p.bandwidth_kbps > 0 for p in trace.periods)
