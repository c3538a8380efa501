"""The command line as a user meets it: help, and one clear line for every bad input."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import streamcdn_cmd


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        streamcdn_cmd(*args),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(res: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("streamcdn: error: "), res.stderr
    assert len([ln for ln in lines if "error" in ln]) == 1, res.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


def test_help_lists_the_commands() -> None:
    res = run("--help")
    assert res.returncode == 0
    for command in ("demo", "sample", "ingest", "serve"):
        assert command in res.stdout


def test_sample_then_ingest_then_refuse_a_second_ingest(tmp_path: Path) -> None:
    out = tmp_path / "s.mp4"
    assert (
        run(
            "sample", str(out), "--duration", "2", "--size", "320x180", "--pattern", "calm"
        ).returncode
        == 0
    )
    store = tmp_path / "store"
    res = run("ingest", str(out), "--title", "s", "--store", str(store), "--name", "Calm")
    assert res.returncode == 0, res.stderr
    assert "published 's'" in res.stderr
    assert_one_line_error(
        run("ingest", str(out), "--title", "s", "--store", str(store)), "already exists", "--force"
    )


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("sample", "{tmp}/x.mp4", "--size", "big"), "WIDTHxHEIGHT"),
        (("sample", "{tmp}/x.mp4", "--size", "321x180"), "even"),
        (("sample", "{tmp}/nodir/x.mp4", "--duration", "1"), "no such directory"),
        (("sample", "{tmp}/x.avi", "--duration", "1"), "*.mp4"),
        (("ingest", "{tmp}/missing.mp4", "--title", "t", "--store", "{tmp}/s"), "no such file"),
        (("ingest", "{tmp}/text.mp4", "--title", "t", "--store", "{tmp}/s"), "not a video"),
        (("ingest", "{src}", "--title", "../up", "--store", "{tmp}/s"), "invalid title id"),
        (("ingest", "{src}", "--title", "a b", "--store", "{tmp}/s"), "invalid title id"),
        (("ingest", "{src}", "--title", "x" * 65, "--store", "{tmp}/s"), "at most 64"),
        (("ingest", "{src}", "--title", "t", "--store", "/proc/nope"), "store /proc/nope"),
    ],
)
def test_bad_input_gets_one_clear_line(tmp_path: Path, tiny_source: Path, args, fragment) -> None:
    (tmp_path / "text.mp4").write_text("hello\n")
    argv = [a.format(tmp=tmp_path, src=tiny_source) for a in args]
    res = run(*argv)
    assert_one_line_error(res, fragment)
    assert not (tmp_path / "s").exists() or os.listdir(tmp_path / "s") == []


def test_a_bad_ffmpeg_setting_is_named(tmp_path: Path) -> None:
    res = run("sample", str(tmp_path / "x.mp4"), env={"STREAMCDN_FFMPEG": "/nonexistent/ffmpeg"})
    assert_one_line_error(res, "STREAMCDN_FFMPEG", "/nonexistent/ffmpeg")


def test_no_ffmpeg_anywhere_is_one_line(tmp_path: Path) -> None:
    # imageio-ffmpeg's own override points its lookup at nothing, and PATH has no ffmpeg.
    env = {"PATH": str(tmp_path), "STREAMCDN_FFMPEG": "", "IMAGEIO_FFMPEG_EXE": "/nonexistent"}
    res = run("sample", str(tmp_path / "x.mp4"), "--duration", "1", env=env)
    assert_one_line_error(res, "ffmpeg not found", "STREAMCDN_FFMPEG")
    assert not (tmp_path / "x.mp4").exists()


def test_ffmpeg_is_found_without_path_or_setting(tmp_path: Path) -> None:
    """pip alone is enough: with no ffmpeg on PATH, the imageio-ffmpeg binary is used."""
    env = {"PATH": str(tmp_path), "STREAMCDN_FFMPEG": ""}
    res = run("sample", str(tmp_path / "x.mp4"), "--duration", "1", "--size", "64x64", env=env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "x.mp4").stat().st_size > 0


def test_serve_origin_with_an_unusable_store_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_one_line_error(
        run("serve", "origin", "--store", str(blocker / "store")), "cannot create"
    )


def test_token_prints_a_prefix_that_verifies() -> None:
    import time

    from streamcdn.tokens import Grant, SigningKey, key_ring, verify

    res = run("token", "--title", "calm", "--key", "k1:0123456789abcdef", "--ttl", "60")
    assert res.returncode == 0, res.stderr
    prefix = res.stdout.strip()
    assert prefix.startswith("/s/") and prefix.endswith("/titles/calm/")
    token = prefix.split("/")[2]
    keys = key_ring([SigningKey.parse("k1:0123456789abcdef")])
    grant = verify(token, "titles/calm/master.m3u8", keys=keys, now=time.time())
    assert isinstance(grant, Grant) and time.time() + 50 < grant.expires <= time.time() + 61
    assert_one_line_error(run("token", "--title", "calm", "--key", "short"), "at least 16")
    assert_one_line_error(run("token", "--title", "../x", "--key", "0123456789abcdef"), "title id")
