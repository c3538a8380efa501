"""Ingest either publishes a whole title or leaves the store exactly as it was."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from media import ffmpeg
from origin.ingest import ingest
from origin.store import TitleStore
from streamcdn.errors import UserError
from tests.conftest import streamcdn_cmd


def store_entries(store: TitleStore) -> list[str]:
    return sorted(os.listdir(store.root)) if store.root.exists() else []


@pytest.mark.parametrize(
    "title",
    ["a/b", "..", "../x", "has space", "x" * 65, "", ".hidden", "a..b", "caf\u00e9", "tab\tname"],
)
def test_bad_title_ids_are_refused_before_any_work(
    tmp_path: Path, tiny_source: Path, title: str
) -> None:
    store = TitleStore(tmp_path / "store")
    with pytest.raises(UserError, match="title id"):
        ingest(tiny_source, title, store)
    assert store_entries(store) == []


def test_a_64_character_title_id_is_fine() -> None:
    from streamcdn.ids import check_title_id

    assert check_title_id("x" * 64) == "x" * 64


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"just text, not a video\n" * 100, "not a video file"),
        (None, "no such file"),
    ],
)
def test_non_video_and_missing_files_publish_nothing(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    source = tmp_path / "input.mp4"
    if content is not None:
        source.write_bytes(content)
    store = TitleStore(tmp_path / "store")
    with pytest.raises(UserError, match=message):
        ingest(source, "t", store)
    assert store_entries(store) == []


def test_a_truncated_video_is_refused_and_publishes_nothing(
    tmp_path: Path, tiny_source: Path
) -> None:
    data = tiny_source.read_bytes()  # faststart: the index is at the front, media after it
    source = tmp_path / "truncated.mp4"
    source.write_bytes(data[: len(data) // 3])
    store = TitleStore(tmp_path / "store")
    with pytest.raises(UserError, match=r"truncated or corrupt|failed"):
        ingest(source, "t", store)
    assert store_entries(store) == []


def test_an_existing_title_needs_force(tmp_path: Path, tiny_source: Path) -> None:
    short = tmp_path / "short.mp4"
    ffmpeg.run(["-i", str(tiny_source), "-t", "4", "-c", "copy", str(short)])
    store = TitleStore(tmp_path / "store")
    ingest(short, "t", store, name="First")
    with pytest.raises(UserError, match="already exists; use --force"):
        ingest(short, "t", store, name="Second")
    assert store.manifest("t")["name"] == "First"
    ingest(short, "t", store, name="Second", force=True)
    assert store.manifest("t")["name"] == "Second"
    assert store_entries(store) == ["t"]  # the old copy and the staging dir are gone


def test_a_disk_that_fills_during_transcode_leaves_nothing(
    tiny_tmpfs: Path, tiny_source: Path
) -> None:
    store = TitleStore(tiny_tmpfs / "store")
    with pytest.raises(UserError, match="disk full"):
        ingest(tiny_source, "t", store)
    assert store_entries(store) == []


@pytest.fixture(scope="module")
def long_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough that an ingest caught at its first segment is surely still transcoding
    (the tiny title can finish, poster and all, before a signal lands on a busy machine)."""
    from media.sample import make_sample

    out = tmp_path_factory.mktemp("long") / "long.mp4"
    make_sample(out, duration_s=60.0, size=(640, 360), pattern="testsrc")
    return out


def start_ingest_and_wait_for_segments(store_dir: Path, source: Path) -> subprocess.Popen[str]:
    """A CLI ingest, caught while ffmpeg is writing segments into the staging directory."""
    proc = subprocess.Popen(
        streamcdn_cmd("ingest", str(source), "--title", "t", "--store", str(store_dir)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(store_dir.glob(".ingest-*/360p/seg_*")):
        time.sleep(0.02)
    return proc


def test_a_killed_ingest_leaves_litter_that_the_next_one_sweeps(
    tmp_path: Path, long_source: Path
) -> None:
    store_dir = tmp_path / "store"
    proc = start_ingest_and_wait_for_segments(store_dir, long_source)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert not (store_dir / "t").exists()
    assert TitleStore(store_dir).titles() == []
    # kill -9 ran no cleanup; the next user of the store sweeps the dead process's staging dir.
    TitleStore(store_dir).ensure()
    assert store_entries(TitleStore(store_dir)) == []


def test_ctrl_c_during_ingest_publishes_nothing_and_cleans_up(
    tmp_path: Path, long_source: Path
) -> None:
    store_dir = tmp_path / "store"
    proc = start_ingest_and_wait_for_segments(store_dir, long_source)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert store_entries(TitleStore(store_dir)) == []


def test_tags_and_a_poster_frame_are_published_with_the_title(
    tmp_path: Path, tiny_source: Path
) -> None:
    store = TitleStore(tmp_path / "store")
    manifest = ingest(tiny_source, "t1", store, tags=["Drama", "sci-fi", "drama"])
    assert manifest["tags"] == ["drama", "sci-fi"] and manifest["poster"] == "poster.jpg"
    poster = store.root / "t1" / "poster.jpg"
    assert poster.read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    assert manifest["files"]["poster.jpg"]["size"] == poster.stat().st_size  # digest-checked too
    for bad in (["-x"], ["has space"], ["a" * 33], [f"t{i}" for i in range(21)]):
        with pytest.raises(UserError, match="--tag"):
            ingest(tiny_source, "t2", store, tags=bad)
    assert not store.exists("t2")
