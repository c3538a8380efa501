"""Synthetic sample titles: motion and a tone, in patterns of clearly different complexity.

They are the sample catalogue, and their spread of visual complexity is what per-title
encoding later adapts to: a calm gradient compresses to almost nothing, a moving
test pattern is moderate, and a cellular automaton or a Mandelbrot zoom is full
of fine detail that changes every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ffmpeg as ffmpeg_graph

from media import ffmpeg
from streamcdn.errors import UserError

SAMPLE_FPS = 30
SAMPLE_CRF = 18  # near-transparent: the sample is a source, the ladder is encoded from it
# --master: what a studio delivers to a streaming service instead, an intra-only 10-bit
# 4:2:2 master (as AVC-Intra / XAVC Intra are): every frame a keyframe, visually lossless.
MASTER_CRF = 8
MASTER_PIX_FMT = "yuv422p10le"
MAX_SAMPLE_S = 3600


@dataclass(frozen=True)
class Pattern:
    name: str
    complexity: str
    source: str  # lavfi graph with {w}, {h}, {r}; {cw}, {ch}: size / 8
    tone_hz: int


PATTERNS: dict[str, Pattern] = {
    p.name: p
    for p in (
        Pattern(
            "calm",
            "low",
            "gradients=s={w}x{h}:r={r}:speed=0.005:n=3:c0=0x1d2b53:c1=0x7e2553:c2=0x008751:seed=7",
            220,
        ),
        Pattern("testsrc", "medium", "testsrc2=s={w}x{h}:r={r}", 440),
        Pattern(
            "life",
            "high",
            # Seeds (B2/S), a Life-like rule that never settles, in 8x8-pixel cells:
            # Conway's rule decays to still lifes within seconds and becomes easy to encode.
            "life=s={cw}x{ch}:r={r}:rule=B2/S:ratio=0.05:mold=40:seed=1:"
            "life_color=#f0e060:death_color=#802040:mold_color=#102040,"
            "scale={w}:{h}:flags=neighbor",
            660,
        ),
        Pattern(
            "fractal",
            "high",
            "mandelbrot=s={w}x{h}:r={r}:end_scale=0.002:"
            "start_x=-0.743643887037151:start_y=0.131825904205330",
            330,
        ),
    )
}


def parse_size(text: str) -> tuple[int, int]:
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit():
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080")
    width, height = int(w), int(h)
    if not (16 <= width <= 7680 and 16 <= height <= 4320) or width % 2 or height % 2:
        raise UserError(f"--size {text!r}: width and height must be even, 16..7680 x 16..4320")
    return width, height


def make_sample(
    out: Path,
    *,
    duration_s: float = 30.0,
    size: tuple[int, int] = (1920, 1080),
    pattern: str = "testsrc",
    master: bool = False,
    on_progress: ffmpeg.ProgressCallback | None = None,
) -> None:
    """Write an H.264 + AAC MP4 of ``pattern`` at ``size`` lasting ``duration_s`` seconds:
    8-bit 4:2:0 at CRF 18, or with ``master`` a 10-bit 4:2:2 intra-only studio master."""
    if pattern not in PATTERNS:
        raise UserError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    if not 0 < duration_s <= MAX_SAMPLE_S:
        raise UserError(f"--duration {duration_s}: expected 0 < seconds <= {MAX_SAMPLE_S}")
    if out.suffix.lower() != ".mp4":
        raise UserError(f"{out}: the sample is an MP4; name it *.mp4")
    if not out.parent.is_dir():
        raise UserError(f"{out.parent}: no such directory")
    p = PATTERNS[pattern]
    w, h = size
    video = ffmpeg_graph.input(
        p.source.format(w=w, h=h, cw=w // 8, ch=h // 8, r=SAMPLE_FPS), f="lavfi", t=duration_s
    )
    # A soft beep once a second over a steady tone, so audio sync is audible.
    tone = ffmpeg_graph.input(
        f"sine=frequency={p.tone_hz}:beep_factor=2:sample_rate=48000", f="lavfi", t=duration_s
    )
    coding: dict[str, str | int] = (
        {"crf": MASTER_CRF, "profile:v": "high422", "x264-params": "keyint=1"}
        if master
        else {"crf": SAMPLE_CRF}
    )
    graph = ffmpeg_graph.output(
        video.video.filter("format", MASTER_PIX_FMT if master else "yuv420p"),
        tone.audio,
        str(out),
        **{
            "c:v": "libx264",
            "preset": "veryfast",
            **coding,
            "c:a": "aac",
            "b:a": "128k",
            "ac": 2,
            "movflags": "+faststart",
        },
    )
    tmp = out.with_name(f".{out.name}.part")
    try:
        ffmpeg.run(
            [*graph.get_args()[:-1], "-f", "mp4", str(tmp)], on_progress=on_progress, what="sample"
        )
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
