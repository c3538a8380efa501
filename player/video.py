"""What the simulated player fetches: a bitrate ladder and every segment's size per rung."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from streamcdn.errors import UserError

# The video of the Pensieve paper's simulator (Mao et al., SIGCOMM 2017): six rungs,
# 48 chunks of 4 s. Its real chunk sizes vary; ours are constant bit rate.
PENSIEVE_BITRATES_KBPS = (300, 750, 1200, 1850, 2850, 4300)
PENSIEVE_SEGMENTS = 48
PENSIEVE_SEGMENT_S = 4.0
# Written by media/transcode.py (ffmpeg's hls_segment_filename "%v/seg_%05d.m4s", from 0).
SEGMENT_FILE = "{rendition}/seg_{index:05d}.m4s"
# A probed duration a little past the last cut (rounding) still ends in a full segment.
LAST_SEGMENT_SLACK_S = 0.5


@dataclass(frozen=True, slots=True)
class Video:
    """``sizes[segment][rung]`` in bytes; rungs lowest bitrate first.

    Every segment lasts ``segment_s`` but the last, which lasts ``last_segment_s`` when
    given (a title rarely ends on a segment boundary).
    """

    bitrates_kbps: tuple[float, ...]
    segment_s: float
    sizes: tuple[tuple[int, ...], ...]
    last_segment_s: float | None = None

    def __post_init__(self) -> None:
        rates = self.bitrates_kbps
        if not rates or rates[0] <= 0 or any(b <= a for a, b in itertools.pairwise(rates)):
            raise ValueError(f"bitrates_kbps must be positive and increasing, got {rates}")
        if not self.segment_s > 0:
            raise ValueError(f"segment_s must be > 0, got {self.segment_s}")
        if self.last_segment_s is not None and not 0 < self.last_segment_s <= self.segment_s:
            raise ValueError(f"last_segment_s must be in (0, segment_s], got {self.last_segment_s}")
        if not self.sizes:
            raise ValueError("sizes: a video needs at least one segment")
        for i, row in enumerate(self.sizes):
            if len(row) != len(rates) or any(s <= 0 for s in row):
                raise ValueError(f"sizes[{i}] must be {len(rates)} positive sizes, got {row}")

    @property
    def segments(self) -> int:
        return len(self.sizes)

    def duration_of(self, segment: int) -> float:
        """Seconds of media in ``segment``."""
        if segment == len(self.sizes) - 1 and self.last_segment_s is not None:
            return self.last_segment_s
        return self.segment_s

    @property
    def duration_s(self) -> float:
        return sum(self.duration_of(i) for i in range(self.segments))


def pensieve_video() -> Video:
    """The Pensieve ladder at constant bit rate: bitrate x 4 s / 8 bytes per segment."""
    row = tuple(int(kbps * 1000 * PENSIEVE_SEGMENT_S / 8) for kbps in PENSIEVE_BITRATES_KBPS)
    return Video(PENSIEVE_BITRATES_KBPS, PENSIEVE_SEGMENT_S, (row,) * PENSIEVE_SEGMENTS)


def video_from_manifest(path: Path | str, segment_s: float | None = None) -> Video:
    """A published title's ladder from its origin ``manifest.json``, with real segment sizes.

    Video renditions only, lowest first; audio is ignored (it is one fixed rendition that
    every rung shares, so it adds the same bytes whatever the rule chooses). A rung's
    bitrate is its ``average_bandwidth`` (what it spends on average; ``bandwidth`` is its
    peak segment). Init segments, fetched once per rendition, are left out. Segments last
    ``segment_s`` (media/ladder.py's SEGMENT_S by default), the last one whatever remains
    of the title's ``duration_s``.
    """
    path = Path(path)
    if segment_s is None:
        from media.ladder import SEGMENT_S

        segment_s = float(SEGMENT_S)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
        duration_s = float(manifest["duration_s"])
        renditions = sorted(
            (r for r in manifest["renditions"] if r["kind"] == "video"),
            key=lambda r: r["average_bandwidth"],
        )
        if not renditions:
            raise UserError(f"{path}: no video rendition")
        count = renditions[0]["segments"]
        if any(r["segments"] != count for r in renditions):
            raise UserError(f"{path}: renditions have different segment counts")
        columns = [
            [files[SEGMENT_FILE.format(rendition=r["name"], index=i)]["size"] for i in range(count)]
            for r in renditions
        ]
        bitrates = tuple(r["average_bandwidth"] / 1000 for r in renditions)
    except OSError as exc:
        raise UserError(f"{path}: cannot read: {exc.strerror}") from None
    except ValueError as exc:
        raise UserError(f"{path}: not a manifest: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a title manifest (missing {exc})") from None
    last_s = duration_s - (count - 1) * segment_s
    if not 0 < last_s <= segment_s + LAST_SEGMENT_SLACK_S:
        raise UserError(f"{path}: {count} segments of {segment_s} s cannot last {duration_s} s")
    try:
        return Video(bitrates, segment_s, tuple(zip(*columns, strict=True)), min(last_s, segment_s))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
