import m3u8
import pytest

from media.playlist import (
    AudioRendition,
    MediaPlaylist,
    Segment,
    VideoVariant,
    render_master_playlist,
    render_media_playlist,
)

VIDEO = MediaPlaylist(
    "init.mp4",
    (
        Segment("a.m4s", 4.0, 500_000),
        Segment("b.m4s", 4.0, 1_000_000),
        Segment("c.m4s", 1.5, 100_000),
    ),
)
AUDIO = MediaPlaylist(
    "init.mp4",
    (
        Segment("a.m4s", 4.01, 64_000),
        Segment("b.m4s", 4.01, 64_000),
        Segment("c.m4s", 1.51, 24_000),
    ),
)


def test_media_playlist_carries_every_segments_bitrate() -> None:
    parsed = m3u8.loads(render_media_playlist(VIDEO))
    assert parsed.target_duration == 4
    assert parsed.is_endlist and parsed.playlist_type == "vod"
    assert parsed.segment_map[0].uri == "init.mp4"
    assert [s.bitrate for s in parsed.segments] == [1000, 2000, 533]
    assert [s.duration for s in parsed.segments] == [4.0, 4.0, 1.5]


def test_target_duration_covers_the_longest_rounded_segment() -> None:
    pl = MediaPlaylist("init.mp4", (Segment("a.m4s", 4.6, 1000),))
    assert m3u8.loads(render_media_playlist(pl)).target_duration == 5


def test_master_bandwidth_is_peak_and_average_including_audio() -> None:
    low = MediaPlaylist(
        "init.mp4", tuple(Segment(s.uri, s.duration_s, s.size_bytes // 2) for s in VIDEO.segments)
    )
    text = render_master_playlist(
        [
            VideoVariant("low/index.m3u8", low, 640, 360, "avc1.4d401e", 30.0),
            VideoVariant("high/index.m3u8", VIDEO, 1280, 720, "avc1.64001f", 30.0),
        ],
        AudioRendition("audio/index.m3u8", AUDIO, "mp4a.40.2", 2),
    )
    parsed = m3u8.loads(text)
    high, low_v = parsed.playlists
    assert high.uri == "high/index.m3u8"  # highest first
    assert high.stream_info.bandwidth == 2_000_000 + 127_681  # 1 MB in 4 s + 64 kB in 4.01 s
    assert high.stream_info.average_bandwidth == VIDEO.average_bps + AUDIO.average_bps
    assert high.stream_info.resolution == (1280, 720)
    assert high.stream_info.codecs == "avc1.64001f,mp4a.40.2"
    assert high.stream_info.frame_rate == 30.0
    assert high.stream_info.audio == "audio"
    assert low_v.stream_info.bandwidth < high.stream_info.bandwidth
    [audio] = parsed.media
    assert (audio.type, audio.group_id, audio.uri) == ("AUDIO", "audio", "audio/index.m3u8")


def test_empty_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        render_media_playlist(MediaPlaylist("init.mp4", ()))
    with pytest.raises(ValueError):
        render_master_playlist([])
