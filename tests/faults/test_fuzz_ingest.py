"""Corrupt and truncated video files fed to `streamcdn ingest`, the real CLI and ffmpeg.

A small real sample (2 s, 320x180, H.264 and AAC in MP4) is cut short, has bits
flipped, a run zeroed or junk spliced in. Each run either exits 0 having published a
title whose every listed file is on disk with its size, or exits non-zero with one
`streamcdn: error:` line last on stderr and no traceback; and either way the store
holds nothing half-made: no staging or trash directory, no title without a manifest.
Each case runs ffmpeg, so there are only a few dozen.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from media.sample import make_sample
from origin.store import TitleStore
from tests.conftest import streamcdn_cmd
from tests.faults.fuzzing import fuzz

COUNTER = itertools.count()


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("fuzz-ingest-src") / "sample.mp4"
    make_sample(path, duration_s=2.0, size=(320, 180), pattern="testsrc")
    return path.read_bytes()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-ingest")


CORRUPTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("cut"), st.floats(0, 1)),
        st.tuples(st.just("flip"), st.floats(0, 1), st.integers(0, 7)),
        st.tuples(st.just("zero"), st.floats(0, 1), st.integers(1, 4096)),
        st.tuples(st.just("splice"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    ),
    min_size=1,
    max_size=4,
)


def corrupt(data: bytes, ops: list[tuple]) -> bytes:  # type: ignore[type-arg]
    buf = bytearray(data)
    for op, where, *args in ops:
        at = int(where * len(buf))
        if op == "cut":
            del buf[at:]
        elif op == "flip" and at < len(buf):
            buf[at] ^= 1 << args[0]
        elif op == "zero":
            buf[at : at + args[0]] = bytes(len(buf[at : at + args[0]]))
        elif op == "splice":
            buf[at:at] = args[0]
    return bytes(buf)


@fuzz(30)
@given(ops=CORRUPTIONS)
@example(ops=[("cut", 0.0)])  # an empty file
@example(ops=[("cut", 0.05)])  # the header only
@example(ops=[("cut", 0.5)])  # half the media
@example(ops=[("zero", 0.0, 4096)])  # no file type box
def test_corrupt_videos_publish_a_whole_title_or_fail_in_one_line_leaving_no_litter(
    sample: bytes,
    workdir: Path,
    ops: list[tuple],  # type: ignore[type-arg]
) -> None:
    source = workdir / "source.mp4"
    source.write_bytes(corrupt(sample, ops))
    title = f"fuzz-{next(COUNTER)}"
    root = workdir / "store"
    run = subprocess.run(
        streamcdn_cmd("ingest", str(source), "--title", title, "--store", str(root)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in run.stderr, run.stderr
    store = TitleStore(root)
    if run.returncode == 0:
        manifest = store.manifest(title)
        assert manifest is not None, run.stderr
        for rel, meta in manifest["files"].items():
            assert (root / title / rel).stat().st_size == meta["size"], rel
    else:
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("streamcdn: error: ") and run.stderr.count("streamcdn: error:") == 1
        assert not (root / title).exists()
    litter = [p.name for p in root.iterdir() if p.name.startswith(".") or not store.exists(p.name)]
    assert litter == []
