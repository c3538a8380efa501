from fractions import Fraction
from pathlib import Path

import pytest

from media.probe import parse_banner, probe
from media.sample import make_sample
from streamcdn.errors import UserError
from tests.conftest import TINY_DURATION_S, TINY_SIZE


def test_probe_reads_size_rate_duration_and_audio(tiny_source: Path) -> None:
    info = probe(tiny_source)
    assert (info.width, info.height) == TINY_SIZE
    assert info.frame_rate == 30
    assert info.duration_s == pytest.approx(TINY_DURATION_S, abs=0.1)
    assert info.has_audio and info.audio_rate_hz == 48000
    assert info.video_codec == "h264"


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"hello, I am not a video\n", "not a video file"), (b"", "not a video file")],
)
def test_probe_rejects_files_that_are_not_video(
    tmp_path: Path, content: bytes, expected: str
) -> None:
    f = tmp_path / "fake.mp4"
    f.write_bytes(content)
    with pytest.raises(UserError, match=expected):
        probe(f)


def test_probe_rejects_missing_files_and_directories(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        probe(tmp_path / "missing.mp4")
    with pytest.raises(UserError, match="not a regular file"):
        probe(tmp_path)


def test_probe_rejects_audio_only_files(tmp_path: Path, tiny_source: Path) -> None:
    from media import ffmpeg

    audio = tmp_path / "a.m4a"
    ffmpeg.run(["-i", str(tiny_source), "-vn", "-c:a", "copy", str(audio)])
    with pytest.raises(UserError, match="no video stream"):
        probe(audio)


def test_probe_sees_a_source_without_audio(tmp_path: Path, tiny_source: Path) -> None:
    from media import ffmpeg

    silent = tmp_path / "silent.mp4"
    ffmpeg.run(["-i", str(tiny_source), "-an", "-c:v", "copy", str(silent)])
    assert not probe(silent).has_audio


BANNER = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'phone.mov':
  Duration: 00:01:02.50, start: 0.000000, bitrate: 8000 kb/s
  Stream #0:0[0x1](und): Video: h264 (High) (avc1 / 0x31637661), yuv420p(tv, bt709), 1920x1080, 7800 kb/s, 29.97 fps, 29.97 tbr, 600 tbn (default)
      Side data:
        displaymatrix: rotation of -90.00 degrees
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 44100 Hz, stereo, fltp, 192 kb/s (default)
"""


def test_parse_banner_handles_rotation_and_ntsc_rates() -> None:
    info = parse_banner(Path("phone.mov"), BANNER)
    assert (info.width, info.height) == (1080, 1920)  # ffmpeg autorotates while decoding
    assert info.frame_rate == Fraction(30000, 1001)
    assert info.duration_s == pytest.approx(62.5)
    assert info.audio_rate_hz == 44100


def test_parse_banner_rejects_absurd_sizes() -> None:
    with pytest.raises(UserError, match="outside"):
        parse_banner(Path("x"), BANNER.replace("1920x1080", "99999x8"))


def test_samples_of_each_pattern_differ_in_complexity(tmp_path: Path) -> None:
    """The patterns are the sample catalogue's spread of complexity: calm << testsrc << life."""
    sizes = {}
    for pattern in ("calm", "testsrc", "life"):
        out = tmp_path / f"{pattern}.mp4"
        make_sample(out, duration_s=2, size=(320, 180), pattern=pattern)
        assert probe(out).duration_s == pytest.approx(2, abs=0.1)
        sizes[pattern] = out.stat().st_size
    assert sizes["calm"] * 2 < sizes["testsrc"] < sizes["life"]


def test_parse_banner_reads_the_pixel_aspect() -> None:
    dvd = BANNER.replace("1920x1080,", "720x480 [SAR 32:27 DAR 16:9],").replace(
        "displaymatrix: rotation of -90.00 degrees", ""
    )
    info = parse_banner(Path("dvd.mpg"), dvd)
    assert (info.width, info.display_width) == (720, 853)
