from pathlib import Path

import pytest

from media.mp4 import avc_codec_string, check_init_segment, check_media_segment, top_level_boxes


def test_real_segments_pass_and_truncated_ones_fail(title_dir: Path, tmp_path: Path) -> None:
    seg = title_dir / "360p" / "seg_00000.m4s"
    check_media_segment(seg)
    check_init_segment(title_dir / "360p" / "init.mp4")
    assert "moof" in top_level_boxes(seg.read_bytes())
    for cut in (1, 7, 100, seg.stat().st_size // 2, seg.stat().st_size - 1):
        short = tmp_path / "short.m4s"
        short.write_bytes(seg.read_bytes()[:cut])
        with pytest.raises(ValueError):
            check_media_segment(short)


def test_an_init_segment_is_not_a_media_segment(title_dir: Path) -> None:
    with pytest.raises(ValueError, match="not a media fragment"):
        check_media_segment(title_dir / "360p" / "init.mp4")


def test_codec_string_comes_from_avcc() -> None:
    fake = b"\x00\x00\x00\x10avcC\x01\x64\x00\x28\xff\xe1"
    assert avc_codec_string(fake) == "avc1.640028"
    with pytest.raises(ValueError):
        avc_codec_string(b"no such box")
