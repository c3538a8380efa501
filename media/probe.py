"""Probing a media file with ffmpeg alone (the imageio-ffmpeg wheel ships no ffprobe).

``ffmpeg -i FILE`` with no output prints the container and stream banner and exits 1;
that banner is stable across releases for the fields we need: duration, the first
video stream's codec, size and frame rate, and whether there is audio.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from media.ffmpeg import ffmpeg_path
from streamcdn.errors import UserError

PROBE_TIMEOUT_S = 30
MAX_DIMENSION_PX = 8192
MAX_DURATION_S = 6 * 3600

_DURATION = re.compile(r"^\s*Duration: (\d+):(\d{2}):(\d{2}(?:\.\d+)?)", re.M)
_STREAM = re.compile(r"^\s*Stream #\d+:\d+[^:]*: (Video|Audio): (.*)$", re.M)
_SIZE = re.compile(r"(?<![\w.])(\d{1,5})x(\d{1,5})(?![\w.])")
_FPS = re.compile(r"([\d.]+)(k?) (fps|tbr)")
_RATE_HZ = re.compile(r"(\d+) Hz")
_ROTATION = re.compile(r"rotation of (-?[\d.]+) degrees")
_SAR = re.compile(r"\[SAR (\d+):(\d+) DAR")


@dataclass(frozen=True)
class MediaInfo:
    path: Path
    duration_s: float
    video_codec: str
    width: int
    height: int
    frame_rate: Fraction
    has_audio: bool
    audio_rate_hz: int | None = None
    sample_aspect: Fraction = Fraction(1)  # pixel shape; 1 = square pixels

    @property
    def display_width(self) -> int:
        """The width at which the picture is meant to be shown (anamorphic sources differ)."""
        return round(self.width * self.sample_aspect)

    @property
    def fps(self) -> float:
        return float(self.frame_rate)


def _frame_rate(text: str) -> Fraction | None:
    rates = {kind: float(v) * (1000 if k else 1) for v, k, kind in _FPS.findall(text)}
    value = rates.get("fps") or rates.get("tbr")
    if not value or value <= 0 or value > 1000:
        return None
    # 29.97 -> 30000/1001: keep the NTSC rates exact, round the rest to the millihertz.
    for base in (24, 30, 60, 120):
        if abs(value - base * 1000 / 1001) < 0.01:
            return Fraction(base * 1000, 1001)
    return Fraction(value).limit_denominator(1000)


def parse_banner(path: Path, banner: str) -> MediaInfo:
    """Turn ffmpeg's input banner into a MediaInfo; raise UserError if it is not usable video."""
    video = audio = None
    for kind, desc in _STREAM.findall(banner):
        if kind == "Video" and video is None and "attached pic" not in desc:
            video = desc
        elif kind == "Audio" and audio is None:
            audio = desc
    if video is None:
        raise UserError(f"{path}: no video stream found")
    size = _SIZE.search(video)
    if not size:
        raise UserError(f"{path}: cannot read the video size")
    width, height = int(size.group(1)), int(size.group(2))
    sar = _SAR.search(video)
    sample_aspect = Fraction(1)
    if sar and int(sar.group(1)) > 0 and int(sar.group(2)) > 0:
        sample_aspect = Fraction(int(sar.group(1)), int(sar.group(2)))
        if not Fraction(1, 4) <= sample_aspect <= 4:
            sample_aspect = Fraction(1)  # nonsense metadata: trust the pixels
    rotation = _ROTATION.search(banner)
    if rotation and round(abs(float(rotation.group(1)))) % 180 == 90:
        width, height = height, width  # ffmpeg autorotates while decoding
        sample_aspect = 1 / sample_aspect
    if not (16 <= width <= MAX_DIMENSION_PX and 16 <= height <= MAX_DIMENSION_PX):
        raise UserError(f"{path}: video size {width}x{height} is outside 16..{MAX_DIMENSION_PX}")
    rate = _frame_rate(video)
    if rate is None:
        raise UserError(f"{path}: cannot read the video frame rate")
    m = _DURATION.search(banner)
    if not m:
        raise UserError(f"{path}: cannot read the duration")
    duration = int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    if not 0 < duration <= MAX_DURATION_S:
        raise UserError(f"{path}: duration {duration:.1f} s is outside 0..{MAX_DURATION_S} s")
    rate_hz = _RATE_HZ.search(audio) if audio else None
    return MediaInfo(
        path=path,
        duration_s=duration,
        video_codec=video.split()[0].rstrip(","),
        width=width,
        height=height,
        frame_rate=rate,
        has_audio=audio is not None,
        audio_rate_hz=int(rate_hz.group(1)) if rate_hz else None,
        sample_aspect=sample_aspect,
    )


def probe(path: str | Path) -> MediaInfo:
    """Probe ``path``; raise UserError with one line if it is missing, unreadable or not video."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        proc = subprocess.run(
            [ffmpeg_path(), "-hide_banner", "-nostdin", "-i", str(path)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"{path}: probing took over {PROBE_TIMEOUT_S} s; not a usable video"
        ) from None
    banner = proc.stderr
    if "Input #0" not in banner:
        reason = "not a video file ffmpeg can read"
        if "Invalid data found" in banner:
            reason = "not a video file (invalid data)"
        raise UserError(f"{path}: {reason}")
    return parse_banner(path, banner)
