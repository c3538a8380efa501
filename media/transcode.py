"""The ladder transcode: ONE ffmpeg process per title decodes the source once, splits it,
scales it to every rung and encodes all rungs plus one audio rendition into CMAF (fMP4) HLS.

Keyframes are aligned across renditions so a player can switch at any segment
boundary: a fixed GOP of exactly one segment (``-g``/``-keyint_min``), forced
keyframes every SEGMENT_S seconds and no scene-cut keyframes (``-sc_threshold 0``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg as ffmpeg_graph
import m3u8

from media import ffmpeg
from media.ladder import (
    AUDIO_CHANNELS,
    AUDIO_KBPS,
    AUDIO_RATE_HZ,
    MAX_FPS,
    SEGMENT_S,
    Rung,
)
from media.mp4 import AAC_LC, check_init_segment, check_media_segment, video_codec_of
from media.playlist import (
    AudioRendition,
    MediaPlaylist,
    Segment,
    VideoVariant,
    render_master_playlist,
    render_media_playlist,
)
from media.probe import MediaInfo
from streamcdn.errors import UserError

AUDIO_NAME = "audio"
MASTER = "master.m3u8"
MEDIA_PLAYLIST = "index.m3u8"
INIT = "init.mp4"
DEFAULT_PRESET = "veryfast"
# A decode that ends this much before the probed duration means a truncated or corrupt source.
TRUNCATION_TOLERANCE_S = SEGMENT_S


@dataclass(frozen=True)
class Rendition:
    """One encoded rendition, as the origin manifest describes it."""

    name: str
    kind: str  # "video" or "audio"
    codecs: str
    bandwidth: int  # peak segment bit rate, bit/s
    average_bandwidth: int  # bit/s
    segments: int
    width: int | None = None
    height: int | None = None
    frame_rate: float | None = None


@dataclass(frozen=True)
class Ladder:
    duration_s: float
    renditions: tuple[Rendition, ...]


def output_rate(info: MediaInfo) -> Fraction:
    rate = info.frame_rate
    return rate / 2 if rate > MAX_FPS else rate


def encoder_threads(rungs: list[Rung], cores: int) -> list[int]:
    """Threads per x264 encoder when they all run at once, in proportion to their pixels.

    Left alone, every encoder takes 1.5 threads per core (15 on two cores for five rungs),
    and they trip over each other; measured on two cores, 2/1/1/1/1 for the default
    ladder is 5-8% faster (bench/README.md). Twice the cores are shared out so the big
    rungs, which are most of the work, keep some parallelism.
    """
    pixels = [r.width * r.height for r in rungs]
    total = sum(pixels)
    return [max(1, round(2 * cores * p / total)) for p in pixels]


def ffmpeg_args(
    source: Path, out_dir: Path, rungs: list[Rung], info: MediaInfo, preset: str = DEFAULT_PRESET
) -> list[str]:
    """The arguments (without the ffmpeg binary) for the one-process ladder transcode."""
    rate = output_rate(info)
    gop = max(1, round(SEGMENT_S * rate))
    src = ffmpeg_graph.input(str(source))
    # Constant frame rate out, whatever comes in (phones record VFR), so every segment
    # has the same frame count and the fixed GOP never adds a keyframe mid-segment.
    video = src["v:0"].filter("fps", fps=str(rate)).filter("format", "yuv420p")
    branches = video.split() if len(rungs) > 1 else None
    streams = [
        (branches[i] if branches is not None else video)
        .filter("scale", r.width, r.height)
        .filter("setsar", "1")
        for i, r in enumerate(rungs)
    ]
    kwargs: dict[str, str | int] = {
        "c:v": "libx264",
        "preset": preset,
        "g": gop,
        "keyint_min": gop,
        "sc_threshold": 0,
        "force_key_frames": f"expr:gte(t,n_forced*{SEGMENT_S})",
    }
    for i, r in enumerate(rungs):
        kwargs[f"b:v:{i}"] = f"{r.video_kbps}k"
        kwargs[f"maxrate:v:{i}"] = f"{r.maxrate_kbps}k"
        kwargs[f"bufsize:v:{i}"] = f"{r.bufsize_kbit}k"
        kwargs[f"profile:v:{i}"] = r.profile
        kwargs[f"level:v:{i}"] = r.level
    if len(rungs) > 1:
        for i, threads in enumerate(encoder_threads(rungs, os.cpu_count() or 1)):
            kwargs[f"threads:v:{i}"] = threads
    stream_map = [f"v:{i},name:{r.name}" for i, r in enumerate(rungs)]
    if info.has_audio:
        streams.append(src["a:0"])
        kwargs.update(
            {"c:a": "aac", "b:a": f"{AUDIO_KBPS}k", "ac": AUDIO_CHANNELS, "ar": AUDIO_RATE_HZ}
        )
        stream_map.append(f"a:0,name:{AUDIO_NAME}")
    kwargs.update(
        {
            "f": "hls",
            "hls_time": SEGMENT_S,
            "hls_playlist_type": "vod",
            "hls_segment_type": "fmp4",
            "hls_flags": "independent_segments",
            "hls_fmp4_init_filename": INIT,
            "hls_segment_filename": str(out_dir / "%v" / "seg_%05d.m4s"),
            "var_stream_map": " ".join(stream_map),
        }
    )
    out = ffmpeg_graph.output(*streams, str(out_dir / "%v" / MEDIA_PLAYLIST), **kwargs)
    return out.get_args()


def _read_ffmpeg_playlist(rendition_dir: Path) -> MediaPlaylist:
    """Parse and check ffmpeg's media playlist, rename its init segment, measure segments.

    Every check matters: ffmpeg exits 0 even when its writes failed.
    """
    name = rendition_dir.name
    parsed = m3u8.loads((rendition_dir / MEDIA_PLAYLIST).read_text(errors="replace"))
    init_uri = parsed.segment_map[0].uri if parsed.segment_map else None
    if not init_uri or not parsed.segments or not parsed.is_endlist:
        raise UserError(f"ffmpeg left an incomplete playlist for {name}")
    if init_uri != INIT:  # ffmpeg names it init_<n>.mp4 when there are several variants
        (rendition_dir / init_uri).rename(rendition_dir / INIT)
    try:
        check_init_segment(rendition_dir / INIT)
        for s in parsed.segments:
            check_media_segment(rendition_dir / s.uri)
    except (OSError, ValueError) as exc:
        raise UserError(f"ffmpeg wrote a broken {name} rendition: {exc}") from None
    segments = tuple(
        Segment(s.uri, float(s.duration), (rendition_dir / s.uri).stat().st_size)
        for s in parsed.segments
    )
    return MediaPlaylist(INIT, segments)


def finalize(out_dir: Path, rungs: list[Rung], info: MediaInfo) -> Ladder:
    """Rewrite ffmpeg's playlists with per-segment bitrates, write the master, check alignment."""
    fps = float(output_rate(info))
    variants = []
    renditions = []
    for r in rungs:
        d = out_dir / r.name
        playlist = _read_ffmpeg_playlist(d)
        codecs = video_codec_of(d / INIT)
        (d / MEDIA_PLAYLIST).write_text(render_media_playlist(playlist))
        variants.append(
            VideoVariant(f"{r.name}/{MEDIA_PLAYLIST}", playlist, r.width, r.height, codecs, fps)
        )
        renditions.append(
            Rendition(
                r.name,
                "video",
                codecs,
                playlist.peak_bps,
                playlist.average_bps,
                len(playlist.segments),
                r.width,
                r.height,
                round(fps, 3),
            )
        )
    # Aligned keyframes mean every video rendition is cut at the same times.
    cuts = {tuple(round(s.duration_s, 3) for s in v.playlist.segments) for v in variants}
    if len(cuts) != 1:
        raise UserError("renditions were cut at different times; keyframes are not aligned")
    audio = None
    if info.has_audio:
        d = out_dir / AUDIO_NAME
        playlist = _read_ffmpeg_playlist(d)
        (d / MEDIA_PLAYLIST).write_text(render_media_playlist(playlist))
        audio = AudioRendition(f"{AUDIO_NAME}/{MEDIA_PLAYLIST}", playlist, AAC_LC, AUDIO_CHANNELS)
        renditions.append(
            Rendition(
                AUDIO_NAME,
                "audio",
                AAC_LC,
                playlist.peak_bps,
                playlist.average_bps,
                len(playlist.segments),
            )
        )
    (out_dir / MASTER).write_text(render_master_playlist(variants, audio))
    duration = variants[0].playlist.duration_s
    if duration < info.duration_s - TRUNCATION_TOLERANCE_S:
        raise UserError(
            f"{info.path}: decoded only {duration:.1f} s of {info.duration_s:.1f} s; "
            "the file is truncated or corrupt"
        )
    return Ladder(round(duration, 3), tuple(renditions))


def transcode(
    source: Path,
    out_dir: Path,
    rungs: list[Rung],
    info: MediaInfo,
    *,
    preset: str = DEFAULT_PRESET,
    on_progress: ffmpeg.ProgressCallback | None = None,
) -> Ladder:
    """Encode ``source`` into an HLS ladder in ``out_dir`` (which must exist and be empty)."""
    if not rungs:
        raise ValueError("no rungs to encode")
    names = [r.name for r in rungs]
    if len(set(names)) != len(names) or AUDIO_NAME in names:
        raise ValueError(f"rendition names must be unique and not {AUDIO_NAME!r}: {names}")
    for name in [*names, AUDIO_NAME]:
        (out_dir / name).mkdir()
    ffmpeg.run(
        ffmpeg_args(source, out_dir, rungs, info, preset), on_progress=on_progress, what="transcode"
    )
    if not info.has_audio:
        (out_dir / AUDIO_NAME).rmdir()
    return finalize(out_dir, rungs, info)
