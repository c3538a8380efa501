"""The bitrate ladder: which renditions a title is encoded into.

One table, top rung first. Bitrates follow Apple's HLS authoring guidance for
H.264 at 30 fps; the encode is constrained VBR (``maxrate`` / ``bufsize`` below)
so that no segment bursts far above the rung's nominal rate.
"""

from __future__ import annotations

from dataclasses import dataclass

SEGMENT_S = 4  # every rendition is cut at the same 4 s keyframes
AUDIO_KBPS = 128
AUDIO_RATE_HZ = 48_000
AUDIO_CHANNELS = 2
MAX_FPS = 60  # sources above this are halved
MAXRATE_FACTOR = 1.2  # peak rate cap relative to the nominal rate
BUFSIZE_S = 2.0  # VBV buffer, in seconds of the nominal rate


@dataclass(frozen=True)
class Rung:
    name: str
    width: int
    height: int
    video_kbps: int
    profile: str  # H.264 profile for libx264
    level: str  # H.264 level

    @property
    def maxrate_kbps(self) -> int:
        return round(self.video_kbps * MAXRATE_FACTOR)

    @property
    def bufsize_kbit(self) -> int:
        return round(self.video_kbps * BUFSIZE_S)


DEFAULT_LADDER: tuple[Rung, ...] = (
    Rung("1080p", 1920, 1080, 5000, "high", "4.0"),
    Rung("720p", 1280, 720, 3000, "high", "3.1"),
    Rung("540p", 960, 540, 1800, "main", "3.1"),
    Rung("360p", 640, 360, 800, "main", "3.0"),
    Rung("240p", 426, 240, 400, "main", "3.0"),
)


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def plan_ladder(
    source_width: int, source_height: int, ladder: tuple[Rung, ...] = DEFAULT_LADDER
) -> list[Rung]:
    """The rungs to encode for a source of the given size, top first, never upscaling.

    Rungs taller than the source are dropped; each kept rung keeps the source's
    aspect ratio at the rung's height. A source smaller than every rung gets one
    rung at its own (even) size with the bottom rung's bitrate.
    """

    def fit(rung: Rung, height: int, name: str | None = None) -> Rung:
        width = _even(source_width * height / source_height)
        return Rung(
            name or rung.name, width, _even(height), rung.video_kbps, rung.profile, rung.level
        )

    kept = [fit(r, r.height) for r in ladder if r.height <= source_height]
    if not kept:
        bottom = ladder[-1]
        kept = [fit(bottom, source_height, name=f"{_even(source_height)}p")]
    return kept
