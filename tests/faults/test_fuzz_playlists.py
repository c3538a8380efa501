"""Hostile playlists fed to the player: its own PlayerError or a sound parse, never a crash.

Most cases go straight to the parse layer (player/session.py's ``parse_master`` and
``parse_media``): arbitrary text, and mutations of a real master and media playlist
(lines deleted, duplicated thousands of times, swapped or replaced by tags with hostile
attributes: absurd durations and bandwidths, broken quoting, URIs that are not URLs,
5,000-digit numbers; characters inserted; the text cut short). Each gives a PlayerError
or a parse whose invariants hold, within a second. A few cases go through ``play()``
against a real HTTP server that serves the mutated master and media playlists.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from aiohttp import web
from hypothesis import example, given
from hypothesis import strategies as st

from player.session import (
    DEFAULT_CONFIG,
    MAX_RUNGS,
    PlayerConfig,
    PlayerError,
    PlaySummary,
    parse_master,
    parse_media,
    play,
)
from streamcdn import service
from tests.faults.fuzzing import LoopThread, fuzz, mutate

MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="audio",LANGUAGE="und",DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",URI="audio/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=1011660,AVERAGE-BANDWIDTH=911660,RESOLUTION=640x360,CODECS="avc1.4d401e,mp4a.40.2",FRAME-RATE=30.000,AUDIO="audio"
360p/index.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=561660,AVERAGE-BANDWIDTH=461660,RESOLUTION=426x240,CODECS="avc1.4d401e,mp4a.40.2",FRAME-RATE=30.000,AUDIO="audio"
240p/index.m3u8
"""
MEDIA = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-TARGETDURATION:4
#EXT-X-MEDIA-SEQUENCE:0
#EXT-X-PLAYLIST-TYPE:VOD
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MAP:URI="init.mp4"
#EXT-X-BITRATE:829
#EXTINF:4.000000,
seg_00000.m4s
#EXT-X-BITRATE:790
#EXTINF:4.000000,
seg_00001.m4s
#EXTINF:2.000000,
seg_00002.m4s
#EXT-X-ENDLIST
"""

URIS = st.sampled_from(
    ["http://[::1", "http://[", "//[x/y", "http://host:99999/x", "http://h:port/a", "data:,x",
     "../../../etc/passwd", " ", "%zz", "\\\\..\\..", "..%2f..%2f", "http://a b/", "?", "#",
     "seg_00000.m4s", "https://[fe80::1%25eth0]/a", "file:///etc/passwd", "\x00"]
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(
        ["0", "-1", "1e309", "-1e309", "nan", "inf", "99999999999999999999999", "9" * 5000, "",
         "abc", '"', '""', "1x1", "0x0", "-5x-5", "99999x99999", "4.0.0", "1,2", "0x1F",
         "YES", "NO", "\u202e", "=", ",", "#EXTM3U"]
    ),
    URIS,
    st.integers(-(2**70), 2**70).map(str),
    st.floats().map(str),
    st.text(max_size=20),
)  # fmt: skip
TAGS = st.sampled_from(
    ["#EXT-X-STREAM-INF:BANDWIDTH={v},RESOLUTION=640x360,AUDIO=\"audio\"",
     "#EXT-X-STREAM-INF:BANDWIDTH=800000,AVERAGE-BANDWIDTH={v},RESOLUTION={v}",
     "#EXT-X-STREAM-INF:BANDWIDTH=800000,CODECS={v},AUDIO={v}",
     "#EXT-X-STREAM-INF:{v}",
     "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=\"audio\",DEFAULT={v},URI=\"{v}\"",
     "#EXT-X-MEDIA:TYPE={v},GROUP-ID={v},URI={v}",
     "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH={v},URI=\"{v}\"",
     "#EXTINF:{v},", "#EXTINF:{v},{v}", "#EXTINF:4,\n{v}", "#EXT-X-BYTERANGE:{v}",
     "#EXT-X-BYTERANGE:{v}@{v}", "#EXT-X-MAP:URI=\"{v}\"", "#EXT-X-MAP:URI={v},BYTERANGE=\"{v}\"",
     "#EXT-X-BITRATE:{v}", "#EXT-X-TARGETDURATION:{v}", "#EXT-X-MEDIA-SEQUENCE:{v}",
     "#EXT-X-DISCONTINUITY-SEQUENCE:{v}", "#EXT-X-PROGRAM-DATE-TIME:{v}",
     "#EXT-X-KEY:METHOD={v},URI=\"{v}\",IV={v}", "#EXT-X-DATERANGE:ID=\"{v}\",START-DATE=\"{v}\"",
     "#EXT-X-PART:DURATION={v},URI=\"{v}\"", "#EXT-X-SKIP:SKIPPED-SEGMENTS={v}",
     "#EXT-X-START:TIME-OFFSET={v}", "#EXT-X-VERSION:{v}", "#EXT-X-PLAYLIST-TYPE:{v}",
     "#EXT-X-CONTENT-STEERING:SERVER-URI=\"{v}\"", "#EXT-X-SESSION-DATA:DATA-ID={v}",
     "#EXT-X-GAP", "#EXT-X-ENDLIST", "#EXT-X-DISCONTINUITY", "#EXTM3U", "#"]
)  # fmt: skip
HOSTILE_LINE = st.tuples(st.one_of(TAGS, st.just("{v}")), VALUES).map(
    lambda tv: tv[0].replace("{v}", tv[1])
)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("delete"), st.integers(0, 40)),
        st.tuples(st.just("dup"), st.integers(0, 40), st.sampled_from([2, 40, 1500])),
        st.tuples(st.just("swap"), st.integers(0, 40), st.integers(0, 40)),
        st.tuples(st.just("replace"), st.integers(0, 40), HOSTILE_LINE),
        st.tuples(st.just("insert"), st.integers(0, 40), HOSTILE_LINE),
        st.tuples(st.just("chars"), st.integers(0, 2000), st.text(max_size=8)),
        st.tuples(st.just("cut"), st.integers(0, 2000)),
    ),
    max_size=6,
)


PLAYLISTS = st.one_of(
    st.tuples(st.sampled_from([MASTER, MEDIA]), OPS).map(lambda b: mutate(*b)),
    st.text(max_size=300),
    st.text(max_size=300).map(lambda t: "#EXTM3U\n" + t),
    st.lists(HOSTILE_LINE, max_size=20).map(lambda ls: "#EXTM3U\n" + "\n".join(ls)),
)


def parse_both(text: str) -> None:
    """Each parser gives a PlayerError or a result that keeps the player's invariants."""
    started = time.monotonic()
    try:
        master = parse_master(text)
    except PlayerError as exc:
        assert str(exc)
    else:
        assert 1 <= len(master.variants) <= MAX_RUNGS
        assert all(r.bandwidth_bps > 0 for r in master.variants)
        assert [r.bandwidth_bps for r in master.variants] == sorted(
            r.bandwidth_bps for r in master.variants
        )
        assert len({r.name for r in master.variants}) == len(master.variants)
    try:
        segments = parse_media(text, "360p/index.m3u8", "360p playlist")
    except PlayerError as exc:
        assert str(exc)
    else:
        assert segments
        for s in segments:
            assert 0 < s.duration_s <= DEFAULT_CONFIG.max_segment_s and s.path
            assert s.size_bytes is None or s.size_bytes >= 0
    assert time.monotonic() - started < 1.0, "a playlist this small took over a second"


@fuzz(2500)
@given(text=PLAYLISTS)
@example(text=MASTER)
@example(text=MEDIA)
# Each was a ValueError from urllib (an unparsable URL) escaping the parser:
@example(text=MEDIA.replace("seg_00001.m4s", "http://[::1"))
@example(text=MEDIA.replace('URI="init.mp4"', 'URI="http://["'))
@example(text=MASTER.replace("240p/index.m3u8", "http://[::1/240p/index.m3u8"))
@example(text=MASTER.replace('URI="audio/index.m3u8"', 'URI="http://["'))
def test_hostile_playlists_give_a_player_error_or_a_sound_parse(text: str) -> None:
    parse_both(text)


# -- through play() and a real HTTP server ------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, bytes], LoopThread]]:
    """Serves ``files`` (path -> body) under /t/, and a few bytes for any other path."""
    files: dict[str, bytes] = {}

    async def handle(request: web.Request) -> web.Response:
        return web.Response(body=files.get(request.match_info["path"], b"\x00" * 100))

    app = service.create_app("fuzz-playlists")
    app.router.add_get("/t/{path:.+}", handle)
    loop = LoopThread()
    running = loop.run(service.start(app, host="127.0.0.1", port=0, access_log=False))
    try:
        yield running.make_url("/t/"), files, loop
    finally:
        loop.run(running.close())
        loop.close()


QUICK = PlayerConfig(give_up_s=0.5, retry_backoff_s=0.05, check_manifest=False)


@fuzz(60)
@given(
    master=st.one_of(st.tuples(st.just(MASTER), OPS).map(lambda b: mutate(*b)), PLAYLISTS),
    media=st.one_of(st.tuples(st.just(MEDIA), OPS).map(lambda b: mutate(*b)), PLAYLISTS),
)
@example(master=MASTER, media=MEDIA)
@example(master=MASTER, media=MEDIA.replace("seg_00001.m4s", "http://[::1"))
def test_play_of_hostile_playlists_ends_in_a_summary_or_a_player_error(
    server: tuple[str, dict[str, bytes], LoopThread], master: str, media: str
) -> None:
    base, files, loop = server
    files.clear()
    files["master.m3u8"] = master.encode("utf-8", "surrogatepass")
    for path in ("360p/index.m3u8", "240p/index.m3u8", "audio/index.m3u8"):
        files[path] = media.encode("utf-8", "surrogatepass")

    async def run() -> PlaySummary | PlayerError:
        try:
            return await play(
                [base + "master.m3u8"], rule="bba", duration_s=1.0, play_out=False, config=QUICK
            )
        except PlayerError as exc:
            return exc

    started = time.monotonic()
    outcome = loop.run(run(), timeout_s=10)
    assert isinstance(outcome, PlaySummary | PlayerError)
    assert time.monotonic() - started < 5.0
