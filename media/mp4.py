"""Just enough ISO BMFF (MP4) reading to check what the encoder wrote.

ffmpeg's HLS muxer does not fail when a write fails (seen with a full disk: exit 0,
truncated segments, empty playlists), so every segment is checked here before a
title is published: its boxes must tile the file exactly.
"""

from __future__ import annotations

import struct
from pathlib import Path

AAC_LC = "mp4a.40.2"


def avc_codec_string(init_segment: bytes) -> str:
    """RFC 6381 ``avc1.PPCCLL`` from the avcC box (ISO 14496-15 5.3.3.1)."""
    at = init_segment.find(b"avcC")
    if at < 0 or len(init_segment) < at + 8:
        raise ValueError("no avcC box in the init segment")
    # avcC payload: configurationVersion, AVCProfileIndication, profile_compatibility,
    # AVCLevelIndication.
    profile, compat, level = init_segment[at + 5 : at + 8]
    return f"avc1.{profile:02x}{compat:02x}{level:02x}"


def video_codec_of(init_path: Path) -> str:
    return avc_codec_string(init_path.read_bytes())


def top_level_boxes(data: bytes) -> list[str]:
    """The types of the top-level boxes; ValueError unless they cover ``data`` exactly."""
    types, at = [], 0
    while at < len(data):
        if len(data) - at < 8:
            raise ValueError(f"truncated box header at byte {at}")
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:  # 64-bit largesize follows the type
            if len(data) - at < 16:
                raise ValueError(f"truncated box header at byte {at}")
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:  # box extends to the end of the file
            size = len(data) - at
        if size < header or at + size > len(data):
            raise ValueError(f"box {kind!r} at byte {at} runs past the end of the file")
        types.append(kind.decode("latin-1"))
        at += size
    return types


def check_media_segment(path: Path) -> None:
    """Raise ValueError unless ``path`` is a complete CMAF fragment (moof + mdat)."""
    boxes = top_level_boxes(path.read_bytes())
    if "moof" not in boxes or "mdat" not in boxes:
        raise ValueError(f"{path.name}: not a media fragment (boxes {boxes})")


def check_init_segment(path: Path) -> None:
    boxes = top_level_boxes(path.read_bytes())
    if "moov" not in boxes:
        raise ValueError(f"{path.name}: not an init segment (boxes {boxes})")
