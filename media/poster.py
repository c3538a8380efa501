"""Poster frames: one still image per title, for the catalog and the watch page."""

from __future__ import annotations

from pathlib import Path

from media.ffmpeg import run
from streamcdn.errors import UserError

POSTER_WIDTH = 640
JPEG_MAGIC = b"\xff\xd8\xff"


def poster_time_s(duration_s: float) -> float:
    """A tenth of the way in, at most 10 s: past fades from black, early enough to be quick."""
    return max(0.0, min(duration_s * 0.1, 10.0))


def grab_poster(source: Path, out: Path, *, at_s: float, width: int = POSTER_WIDTH) -> None:
    """Write one frame of ``source`` at ``at_s`` seconds to ``out`` as a JPEG ``width`` wide
    (never upscaled; the display aspect ratio kept, square pixels)."""
    scale = f"scale='min({width},iw*sar)':-2,setsar=1"
    args = ["-ss", f"{at_s:.3f}", "-i", str(source), "-frames:v", "1", "-an", "-vf", scale]
    args += ["-q:v", "4", "-f", "image2", "-update", "1", str(out)]
    run(args, what="ffmpeg (poster)")
    try:
        with out.open("rb") as f:
            ok = f.read(3) == JPEG_MAGIC
    except OSError:
        ok = False
    if not ok:
        raise UserError(f"{source.name}: no frame at {at_s:.1f} s for a poster")
