"""Building HLS playlists (RFC 8216 and its successor draft, 8216bis). Pure: values in, text out.

ffmpeg's HLS muxer writes media playlists without per-segment bitrates and a master
without AVERAGE-BANDWIDTH or FRAME-RATE, so streamcdn writes both itself from the
segments ffmpeg cut and their measured sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HLS_VERSION = 7  # EXT-X-MAP in a playlist without I-frames only needs 6; 7 for fMP4 tooling


@dataclass(frozen=True)
class Segment:
    uri: str
    duration_s: float
    size_bytes: int

    @property
    def kbps(self) -> float:
        return self.size_bytes * 8 / self.duration_s / 1000 if self.duration_s > 0 else 0.0


@dataclass(frozen=True)
class MediaPlaylist:
    init_uri: str
    segments: tuple[Segment, ...]

    @property
    def duration_s(self) -> float:
        return sum(s.duration_s for s in self.segments)

    @property
    def peak_bps(self) -> int:
        return math.ceil(max(s.kbps for s in self.segments) * 1000)

    @property
    def average_bps(self) -> int:
        total_bits = sum(s.size_bytes for s in self.segments) * 8
        return math.ceil(total_bits / self.duration_s)


def render_media_playlist(playlist: MediaPlaylist) -> str:
    """A VOD media playlist with EXT-X-MAP and an EXT-X-BITRATE before every segment."""
    if not playlist.segments:
        raise ValueError("a media playlist needs at least one segment")
    # RFC 8216 4.3.3.1: each EXTINF, rounded to the nearest integer, <= TARGETDURATION.
    target = max(round(s.duration_s) for s in playlist.segments)
    lines = [
        "#EXTM3U",
        f"#EXT-X-VERSION:{HLS_VERSION}",
        f"#EXT-X-TARGETDURATION:{target}",
        "#EXT-X-MEDIA-SEQUENCE:0",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        "#EXT-X-INDEPENDENT-SEGMENTS",
        f'#EXT-X-MAP:URI="{playlist.init_uri}"',
    ]
    for seg in playlist.segments:
        # 8216bis 4.4.4.8: EXT-X-BITRATE is the segment's approximate rate in kbit/s.
        lines.append(f"#EXT-X-BITRATE:{max(1, round(seg.kbps))}")
        lines.append(f"#EXTINF:{seg.duration_s:.6f},")
        lines.append(seg.uri)
    lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class VideoVariant:
    uri: str
    playlist: MediaPlaylist
    width: int
    height: int
    codecs: str
    frame_rate: float


@dataclass(frozen=True)
class AudioRendition:
    uri: str
    playlist: MediaPlaylist
    codecs: str
    channels: int
    group_id: str = "audio"
    name: str = "audio"
    language: str = "und"


def render_master_playlist(
    variants: list[VideoVariant], audio: AudioRendition | None = None
) -> str:
    """A master playlist, variants highest bandwidth first.

    RFC 8216 4.3.4.2: BANDWIDTH is the peak segment bit rate of the variant and
    AVERAGE-BANDWIDTH its average; with a separate audio group both include the
    audio rendition's rates, and CODECS lists the audio codec too.
    """
    if not variants:
        raise ValueError("a master playlist needs at least one video variant")
    lines = ["#EXTM3U", f"#EXT-X-VERSION:{HLS_VERSION}", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio is not None:
        lines.append(
            f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{audio.group_id}",NAME="{audio.name}",'
            f'LANGUAGE="{audio.language}",DEFAULT=YES,AUTOSELECT=YES,'
            f'CHANNELS="{audio.channels}",URI="{audio.uri}"'
        )
    for v in sorted(variants, key=lambda v: v.playlist.peak_bps, reverse=True):
        peak, average, codecs = v.playlist.peak_bps, v.playlist.average_bps, v.codecs
        attrs = []
        if audio is not None:
            peak += audio.playlist.peak_bps
            average += audio.playlist.average_bps
            codecs = f"{codecs},{audio.codecs}"
        attrs += [
            f"BANDWIDTH={peak}",
            f"AVERAGE-BANDWIDTH={average}",
            f"RESOLUTION={v.width}x{v.height}",
            f'CODECS="{codecs}"',
            f"FRAME-RATE={v.frame_rate:.3f}",
        ]
        if audio is not None:
            attrs.append(f'AUDIO="{audio.group_id}"')
        lines.append("#EXT-X-STREAM-INF:" + ",".join(attrs))
        lines.append(v.uri)
    return "\n".join(lines) + "\n"
