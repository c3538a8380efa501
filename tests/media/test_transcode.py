"""The ladder a real ffmpeg run produced for the tiny title, checked file by file."""

import re
import subprocess
from pathlib import Path

import m3u8
import pytest

from media import ffmpeg
from media.ffmpeg import ffmpeg_path
from media.ladder import SEGMENT_S
from media.mp4 import video_codec_of
from media.probe import probe
from media.sample import make_sample
from origin.ingest import ingest
from origin.store import MANIFEST, TitleStore
from streamcdn.digest import digest_file
from tests.conftest import ffmpeg_read_all

VIDEO_RUNGS = ["360p", "240p"]


def join_segment(title_dir: Path, rendition: str, segment: str, tmp_path: Path) -> Path:
    """init + one segment: a small fragmented MP4 that ffmpeg can open on its own."""
    joined = tmp_path / f"{rendition}-{segment}.mp4"
    joined.write_bytes(
        (title_dir / rendition / "init.mp4").read_bytes()
        + (title_dir / rendition / segment).read_bytes()
    )
    return joined


def keyframe_flags(segment_mp4: Path) -> list[bool]:
    """Each decoded frame's key flag, in order."""
    out = subprocess.run(
        [
            ffmpeg_path(),
            "-hide_banner",
            "-nostdin",
            "-i",
            str(segment_mp4),
            "-map",
            "0:v:0",
            "-vf",
            "showinfo",
            "-f",
            "null",
            "-",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return [m == "1" for m in re.findall(r"iskey:(\d)", out)]


def test_master_playlist_describes_each_rendition_truthfully(
    title_dir: Path, tmp_path: Path
) -> None:
    master = m3u8.load(str(title_dir / "master.m3u8"))
    variants = {p.uri.split("/")[0]: p for p in master.playlists}
    assert sorted(variants) == sorted(VIDEO_RUNGS)  # no upscaled 540p/720p/1080p
    [audio] = master.media
    assert (audio.type, audio.uri) == ("AUDIO", "audio/index.m3u8")
    for name, v in variants.items():
        info = v.stream_info
        media = m3u8.load(str(title_dir / name / "index.m3u8"))
        audio_pl = m3u8.load(str(title_dir / "audio" / "index.m3u8"))
        peak = max(s.bitrate for s in media.segments) + max(s.bitrate for s in audio_pl.segments)
        assert info.bandwidth == pytest.approx(peak * 1000, rel=0.01)
        assert 0 < info.average_bandwidth <= info.bandwidth
        assert info.codecs == f"{video_codec_of(title_dir / name / 'init.mp4')},mp4a.40.2"
        assert info.frame_rate == 30.0
        assert info.audio == audio.group_id
        first = probe(join_segment(title_dir, name, "seg_00000.m4s", tmp_path))
        assert info.resolution == (first.width, first.height)
    assert variants["360p"].stream_info.resolution == (640, 360)


def test_each_segment_carries_its_measured_bitrate(title_dir: Path) -> None:
    for name in [*VIDEO_RUNGS, "audio"]:
        media = m3u8.load(str(title_dir / name / "index.m3u8"))
        assert media.segment_map[0].uri == "init.mp4"
        for seg in media.segments:
            size = (title_dir / name / seg.uri).stat().st_size
            assert seg.bitrate == round(size * 8 / seg.duration / 1000)


def test_renditions_are_cut_at_the_same_times(title_dir: Path) -> None:
    cuts = {
        name: [s.duration for s in m3u8.load(str(title_dir / name / "index.m3u8")).segments]
        for name in VIDEO_RUNGS
    }
    assert cuts["360p"] == cuts["240p"] == [SEGMENT_S, SEGMENT_S, 2.0]
    audio = [s.duration for s in m3u8.load(str(title_dir / "audio" / "index.m3u8")).segments]
    assert len(audio) == 3 and all(
        abs(a - v) < 0.05 for a, v in zip(audio, cuts["360p"], strict=True)
    )


def test_every_segment_is_one_gop_starting_with_a_keyframe(title_dir: Path, tmp_path: Path) -> None:
    for name in VIDEO_RUNGS:
        for seg in m3u8.load(str(title_dir / name / "index.m3u8")).segments:
            flags = keyframe_flags(join_segment(title_dir, name, seg.uri, tmp_path))
            assert flags[0], f"{name}/{seg.uri} does not start with a keyframe"
            assert flags.count(True) == 1, f"{name}/{seg.uri} has a keyframe inside the segment"
            assert len(flags) == round(seg.duration * 30)


def test_manifest_lists_every_file_with_its_digest(store: TitleStore, title_dir: Path) -> None:
    manifest = store.manifest("tiny")
    on_disk = {p.relative_to(title_dir).as_posix() for p in title_dir.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {MANIFEST}
    for rel, entry in manifest["files"].items():
        assert entry["size"] == (title_dir / rel).stat().st_size
        assert entry["xxh3-128"] == digest_file(title_dir / rel)
    assert [r["name"] for r in manifest["renditions"]] == [*VIDEO_RUNGS, "audio"]
    assert manifest["duration_s"] == pytest.approx(10.0)


def test_a_source_without_audio_gets_no_audio_group(tmp_path: Path, tiny_source: Path) -> None:
    silent = tmp_path / "silent.mp4"
    ffmpeg.run(["-i", str(tiny_source), "-an", "-t", "4", "-c:v", "copy", str(silent)])
    store = TitleStore(tmp_path / "store")
    ingest(silent, "silent", store)
    master = m3u8.load(str(store.root / "silent" / "master.m3u8"))
    assert not master.media
    assert all(p.stream_info.audio is None for p in master.playlists)
    assert all("mp4a" not in p.stream_info.codecs for p in master.playlists)
    assert not (store.root / "silent" / "audio").exists()


def test_the_ladder_plays_end_to_end_in_ffmpeg(title_dir: Path) -> None:
    out = ffmpeg_read_all(str(title_dir / "master.m3u8"))
    assert out.returncode == 0, out.stderr[-500:]
    assert "error" not in out.stderr.lower()


def test_anamorphic_sources_come_out_with_square_pixels(tmp_path: Path) -> None:
    """A 640x360 picture with 4:3 pixels is shown 853 wide: the ladder keeps that shape."""
    source = tmp_path / "anamorphic.mp4"
    ffmpeg.run(
        [
            "-f",
            "lavfi",
            "-i",
            "testsrc2=s=640x360:r=25",
            "-t",
            "4",
            "-vf",
            "setsar=4/3",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            str(source),
        ]
    )
    info = probe(source)
    assert info.display_width == 853
    store = TitleStore(tmp_path / "store")
    ingest(source, "wide", store)
    master = m3u8.load(str(store.root / "wide" / "master.m3u8"))
    assert [p.stream_info.resolution for p in master.playlists] == [(852, 360), (568, 240)]
    assert master.playlists[0].stream_info.frame_rate == 25.0
    out = probe(join_segment(store.root / "wide", "360p", "seg_00000.m4s", tmp_path))
    assert (out.width, out.height, out.sample_aspect) == (852, 360, 1)


def test_a_studio_master_source_becomes_an_ordinary_8_bit_ladder(tmp_path: Path) -> None:
    """`streamcdn sample --master` writes a 10-bit 4:2:2 intra-only master (each frame a
    keyframe); ingest decodes it once and every rung comes out 8-bit 4:2:0 at the rung's own
    profile, which every player can decode, with 4 s GOPs."""
    source = tmp_path / "master.mp4"
    make_sample(source, duration_s=4, size=(640, 360), pattern="testsrc", master=True)
    banner = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-i", str(source)], capture_output=True, text=True
    ).stderr
    assert "High 4:2:2 Intra" in banner and "yuv422p10le" in banner, banner
    assert keyframe_flags(source).count(False) == 0  # intra only
    store = TitleStore(tmp_path / "store")
    ingest(source, "master", store)
    title = store.root / "master"
    for rendition, profile in (("360p", "4d"), ("240p", "4d")):  # Main (the ladder's table)
        assert video_codec_of(title / rendition / "init.mp4").startswith(f"avc1.{profile}")
        segment = join_segment(title, rendition, "seg_00000.m4s", tmp_path)
        flags = keyframe_flags(segment)
        assert flags[0] and flags.count(True) == 1 and len(flags) == 120
        seg_banner = subprocess.run(
            [ffmpeg_path(), "-hide_banner", "-i", str(segment)], capture_output=True, text=True
        ).stderr
        assert "yuv420p" in seg_banner and "10le" not in seg_banner, seg_banner
