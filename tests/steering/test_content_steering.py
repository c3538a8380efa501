import json
import math

import m3u8
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.playlist import (
    AudioRendition,
    MediaPlaylist,
    Segment,
    VideoVariant,
    render_master_playlist,
)
from steering.content_steering import (
    Pathway,
    SteeringQuery,
    check_pathway_id,
    manifest_uri,
    parse_steering_query,
    pathway_priority,
    session_master,
    steering_manifest,
)
from streamcdn.tokens import SigningKey, sign, title_prefix

TITLE = "t1"
KEY = SigningKey("k1", b"0123456789abcdef0123")
STEERING_URI = "http://127.0.0.1:8081/content-steering/sess-1.json"


def _pathway(pathway_id: str, port: int) -> Pathway:
    token = sign(title_prefix(TITLE), KEY, expires=2_000_000_000)
    return Pathway(pathway_id, f"http://127.0.0.1:{port}/s/{token}/{title_prefix(TITLE)}")


PATHWAYS = (_pathway("a1", 8100), _pathway("a2", 8101), _pathway("ix1", 8102))


def _playlist(kbytes_per_segment: int) -> MediaPlaylist:
    return MediaPlaylist(
        "init.mp4",
        tuple(Segment(f"{i}.m4s", 4.0, kbytes_per_segment * 1000) for i in range(3)),
    )


MASTER = render_master_playlist(
    [
        VideoVariant("720p/index.m3u8", _playlist(1500), 1280, 720, "avc1.64001f", 30.0),
        VideoVariant("360p/index.m3u8", _playlist(400), 640, 360, "avc1.4d401e", 29.97),
        VideoVariant("240p/index.m3u8", _playlist(200), 426, 240, "avc1.4d401e", 25.0),
    ],
    AudioRendition("audio/index.m3u8", _playlist(64), "mp4a.40.2", 2),
)
VARIANT_URIS = ["720p/index.m3u8", "360p/index.m3u8", "240p/index.m3u8"]


def _steer(master: str = MASTER, pathways: tuple[Pathway, ...] = PATHWAYS, **kw: str) -> str:
    return session_master(master, pathways, steering_uri=STEERING_URI, **kw)


# -- session_master --------------------------------------------------------------------


def test_every_variant_appears_once_per_pathway_on_that_pathways_base_url() -> None:
    parsed = m3u8.loads(_steer())
    got = [(v.stream_info.pathway_id, v.uri) for v in parsed.playlists]
    assert got == [(p.id, p.base_url + uri) for p in PATHWAYS for uri in VARIANT_URIS]
    assert parsed.playlists[0].uri.startswith("http://127.0.0.1:8100/s/")


def test_each_pathways_variants_use_an_audio_group_on_the_same_pathway() -> None:
    parsed = m3u8.loads(_steer())
    by_id = {p.id: p for p in PATHWAYS}
    for variant in parsed.playlists:
        group = [m for m in parsed.media if m.group_id == variant.stream_info.audio]
        assert len(group) == 1 and group[0].type == "AUDIO"
        base = by_id[variant.stream_info.pathway_id].base_url
        assert group[0].uri == base + "audio/index.m3u8"
    assert len({m.group_id for m in parsed.media}) == len(PATHWAYS)


def test_content_steering_tag_names_the_server_and_the_first_pathway() -> None:
    text = _steer()
    steering = m3u8.loads(text).content_steering
    assert (steering.uri, steering.pathway_id) == (STEERING_URI, "a1")
    tags = [line for line in text.splitlines() if line.startswith("#EXT-X-CONTENT-STEERING")]
    assert tags == [f'#EXT-X-CONTENT-STEERING:SERVER-URI="{STEERING_URI}",PATHWAY-ID="a1"']


def test_default_pathway_can_be_chosen_and_must_exist() -> None:
    assert m3u8.loads(_steer(default_pathway="ix1")).content_steering.pathway_id == "ix1"
    with pytest.raises(ValueError, match="'zz'"):
        _steer(default_pathway="zz")


def test_variant_attributes_are_kept_byte_for_byte() -> None:
    out = _steer().splitlines()
    assert MASTER.count("#EXT-X-STREAM-INF:") == len(VARIANT_URIS)
    for line in MASTER.splitlines():
        if line.startswith("#EXT-X-STREAM-INF:"):
            for p in PATHWAYS:
                expected = line.replace('AUDIO="audio"', f'AUDIO="audio@{p.id}"')
                assert f'{expected},PATHWAY-ID="{p.id}"' in out


def test_global_tags_appear_once_and_first() -> None:
    lines = _steer().splitlines()
    assert lines[:3] == ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    assert lines.count("#EXT-X-VERSION:7") == lines.count("#EXT-X-INDEPENDENT-SEGMENTS") == 1


def test_subtitles_captions_and_iframe_variants_are_steered_too() -> None:
    master = "\n".join(
        [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            "# a comment, dropped",
            '#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="en",URI="subs/en.m3u8"',
            '#EXT-X-MEDIA:TYPE=CLOSED-CAPTIONS,GROUP-ID="cc",NAME="cc1",INSTREAM-ID="CC1"',
            '#EXT-X-STREAM-INF:BANDWIDTH=800000,SUBTITLES="subs",CLOSED-CAPTIONS="cc"',
            "low/index.m3u8",
            "#EXT-X-STREAM-INF:BANDWIDTH=900000,CLOSED-CAPTIONS=NONE",
            "mid/index.m3u8",
            '#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=90000,URI="low/iframes.m3u8"',
        ]
    )
    two = PATHWAYS[:2]
    parsed = m3u8.loads(_steer(master, two))
    assert [(m.group_id, m.uri) for m in parsed.media] == [
        ("subs@a1", two[0].base_url + "subs/en.m3u8"),
        ("cc@a1", None),
        ("subs@a2", two[1].base_url + "subs/en.m3u8"),
        ("cc@a2", None),
    ]
    assert [v.stream_info.subtitles for v in parsed.playlists] == ["subs@a1", None, "subs@a2", None]
    assert [(i.iframe_stream_info.pathway_id, i.uri) for i in parsed.iframe_playlists] == [
        (p.id, p.base_url + "low/iframes.m3u8") for p in two
    ]
    assert "CLOSED-CAPTIONS=NONE" in _steer(master, two)


HEAD = "#EXTM3U\n#EXT-X-VERSION:7\n"
AUDIO = '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="audio",NAME="a",URI="audio/index.m3u8"\n'
VARIANT = '#EXT-X-STREAM-INF:BANDWIDTH=100,CODECS="avc1.4d401e"\n'


@pytest.mark.parametrize(
    ("master", "message"),
    [
        ("", "#EXTM3U"),
        ("#EXT-X-VERSION:7\n" + VARIANT + "v/index.m3u8\n", "#EXTM3U"),
        (HEAD + AUDIO, "no variants"),
        (HEAD + VARIANT + "http://evil.example/x.m3u8\n", "absolute"),
        (HEAD + VARIANT + "//evil.example/x.m3u8\n", "absolute"),
        (HEAD + VARIANT + "/titles/t1/v/index.m3u8\n", "absolute"),
        (HEAD + VARIANT + "../other/index.m3u8\n", "leaves the title"),
        (HEAD + VARIANT + 'v/in"dex.m3u8\n', "characters"),
        (HEAD + VARIANT + "v/in dex.m3u8\n", "characters"),
        (HEAD + VARIANT + "v/{$x}.m3u8\n", "characters"),
        (HEAD + '#EXT-X-STREAM-INF:BANDWIDTH=100,CODECS="avc1"x"\nv.m3u8\n', "malformed"),
        (HEAD + '#EXT-X-STREAM-INF:BANDWIDTH=100,CODECS="a"b",c"\nv.m3u8\n', "malformed"),
        (HEAD + "#EXT-X-STREAM-INF:BANDWIDTH=1,BANDWIDTH=2\nv.m3u8\n", "twice"),
        (HEAD + '#EXT-X-STREAM-INF:CODECS="avc1.4d401e"\nv.m3u8\n', "BANDWIDTH"),
        (HEAD + "#EXT-X-STREAM-INF:BANDWIDTH=x1\nv.m3u8\n", "BANDWIDTH"),
        (HEAD + VARIANT, "not followed by its URI"),
        (HEAD + VARIANT + VARIANT + "v.m3u8\n", "not followed by its URI"),
        (HEAD + "v/index.m3u8\n", "does not follow"),
        (HEAD + "#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg.m4s\n", "media playlist"),
        (HEAD + '#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO="nope"\nv.m3u8\n', "AUDIO"),
        (
            HEAD + AUDIO + '#EXT-X-STREAM-INF:BANDWIDTH=1,VIDEO="audio"\nv.m3u8\n',
            'VIDEO="audio" names no',
        ),
        (HEAD + AUDIO + "#EXT-X-STREAM-INF:BANDWIDTH=1,AUDIO=audio\nv.m3u8\n", "AUDIO"),
        (
            HEAD + '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",URI="/abs.m3u8"\n' + VARIANT + "v\n",
            "absolute",
        ),
        (HEAD + "#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID=a\n" + VARIANT + "v\n", "GROUP-ID"),
        (HEAD + '#EXT-X-MEDIA:TYPE=MUSIC,GROUP-ID="a"\n' + VARIANT + "v\n", "TYPE"),
        (HEAD + '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="a",NAME="x\x07"\n' + VARIANT + "v\n", "control"),
        (HEAD + '#EXT-X-STREAM-INF:BANDWIDTH=1,PATHWAY-ID="a1"\nv.m3u8\n', "already"),
        (HEAD + '#EXT-X-CONTENT-STEERING:SERVER-URI="x"\n' + VARIANT + "v\n", "already"),
        (HEAD + '#EXT-X-SESSION-KEY:METHOD=AES-128,URI="k"\n' + VARIANT + "v\n", "URI"),
        (HEAD + '#EXT-X-DEFINE:NAME="x",VALUE="y"\n' + VARIANT + "v\n", "EXT-X-DEFINE"),
        (HEAD + "#EXT-X-I-FRAME-STREAM-INF:BANDWIDTH=1\n" + VARIANT + "v\n", "URI"),
    ],
)
def test_hostile_masters_are_refused_with_a_reason(master: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _steer(master)


@pytest.mark.parametrize("bad_id", ["", "a b", "a/b", 'a"b', "a,b", "é", "a\n", "a@b"])
def test_illegal_pathway_ids_are_refused_by_name(bad_id: str) -> None:
    with pytest.raises(ValueError, match="pathway id"):
        Pathway(bad_id, "http://127.0.0.1:8100/s/t/titles/t1/")
    with pytest.raises(ValueError, match="pathway id"):
        check_pathway_id(bad_id)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://127.0.0.1:8100/s/t/titles/t1",  # no trailing slash
        "ftp://127.0.0.1/titles/t1/",
        "/s/t/titles/t1/",
        "http://127.0.0.1:8100/titles/t1/?x=1/",
        'http://127.0.0.1:8100/s/"/titles/t1/',
        "http://127.0.0.1:8100/s/t t/titles/t1/",
    ],
)
def test_bad_base_urls_are_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        Pathway("a1", base_url)


def test_pathway_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="at least one pathway"):
        _steer(pathways=())
    with pytest.raises(ValueError, match="unique"):
        _steer(pathways=(PATHWAYS[0], PATHWAYS[0]))
    with pytest.raises(ValueError, match="steering_uri"):
        session_master(MASTER, PATHWAYS, steering_uri='http://x/"a')


_IDS = st.text("abcXYZ019._-", min_size=1, max_size=8)


@given(
    ids=st.lists(_IDS, min_size=1, max_size=5, unique=True),
    variants=st.lists(
        st.tuples(
            st.integers(1, 50_000_000),  # BANDWIDTH
            st.sampled_from(["avc1.64001f", "avc1.4d401e,mp4a.40.2", "hvc1.1.6.L93.B0"]),
            st.integers(0, 2),  # which audio group, 2 = none
        ),
        min_size=1,
        max_size=8,
    ),
    groups=st.lists(st.text("ab@-_.", min_size=1, max_size=4), min_size=2, max_size=2, unique=True),
)
def test_any_master_steers_into_a_parsable_playlist_with_every_variant_on_every_pathway(
    ids: list[str], variants: list[tuple[int, str, int]], groups: list[str]
) -> None:
    lines = ["#EXTM3U", "#EXT-X-VERSION:7"]
    lines += [
        f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{g}",NAME="{g}",URI="audio{i}/index.m3u8"'
        for i, g in enumerate(groups)
    ]
    for i, (bandwidth, codecs, group) in enumerate(variants):
        audio = f',AUDIO="{groups[group]}"' if group < 2 else ""
        lines += [f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},CODECS="{codecs}"{audio}', f"v{i}.m3u8"]
    pathways = [
        Pathway(pid, f"http://10.0.0.{n}:8100/s/tok/titles/t1/") for n, pid in enumerate(ids)
    ]

    parsed = m3u8.loads(session_master("\n".join(lines), pathways, steering_uri=STEERING_URI))

    assert [
        (v.stream_info.pathway_id, v.uri, v.stream_info.bandwidth) for v in parsed.playlists
    ] == [
        (p.id, f"{p.base_url}v{i}.m3u8", bw)
        for p in pathways
        for i, (bw, _, _) in enumerate(variants)
    ]
    media = {m.group_id: m for m in parsed.media}
    assert len(media) == len(groups) * len(pathways)  # no two pathways share a group
    by_id = {p.id: p for p in pathways}
    for v in parsed.playlists:
        if v.stream_info.audio is not None:
            assert media[v.stream_info.audio].uri.startswith(
                by_id[v.stream_info.pathway_id].base_url
            )
    assert parsed.content_steering.pathway_id == ids[0]


# -- steering_manifest -----------------------------------------------------------------


def test_manifest_has_the_specs_fields_and_types() -> None:
    manifest = steering_manifest(["a2", "a1"], ttl_s=10, reload_uri=STEERING_URI)
    assert json.loads(json.dumps(manifest)) == {
        "VERSION": 1,
        "TTL": 10,
        "RELOAD-URI": STEERING_URI,
        "PATHWAY-PRIORITY": ["a2", "a1"],
    }
    assert type(manifest["VERSION"]) is int and type(manifest["TTL"]) is int


def test_manifest_without_reload_uri_omits_it() -> None:
    assert "RELOAD-URI" not in steering_manifest(["a1"], ttl_s=300, reload_uri=None)


@pytest.mark.parametrize(
    ("priority", "ttl_s", "reload_uri", "message"),
    [
        (["a1"], 0, None, "ttl_s"),
        (["a1"], -5, None, "ttl_s"),
        (["a1"], 1.5, None, "ttl_s"),
        (["a1"], True, None, "ttl_s"),
        (["a1"], "30", None, "ttl_s"),
        ([], 10, None, "at least one"),
        (["a1", "a1"], 10, None, "unique"),
        (["a 1"], 10, None, "pathway id"),
        (["a1"], 10, "", "reload_uri"),
        (["a1"], 10, 'http://x/"', "reload_uri"),
    ],
)
def test_manifest_validation(
    priority: list[str], ttl_s: int, reload_uri: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        steering_manifest(priority, ttl_s=ttl_s, reload_uri=reload_uri)


def test_manifest_uri() -> None:
    assert manifest_uri("http://127.0.0.1:8081/", "Ab-_9") == (
        "http://127.0.0.1:8081/content-steering/Ab-_9.json"
    )
    for session in ["", "a/b", "a.b", "../x", "x" * 129]:
        with pytest.raises(ValueError, match="session"):
            manifest_uri("http://127.0.0.1:8081", session)
    with pytest.raises(ValueError, match="base_url"):
        manifest_uri("127.0.0.1:8081", "s")


# -- pathway_priority and the client's query ---------------------------------------------

KNOWN = {"a1", "a2", "ix1"}


def test_without_client_hints_the_ranking_decides() -> None:
    assert pathway_priority(["a2", "a1", "ix1"], known=KNOWN) == ["a2", "a1", "ix1"]


def test_a_downed_pathway_leaves_the_priority() -> None:
    assert pathway_priority(["ix1", "a2"], current="a1", known=KNOWN) == ["ix1", "a2"]


def test_unknown_and_repeated_ids_are_dropped() -> None:
    assert pathway_priority(["zz", "a1", "a1", "ix1"], known=KNOWN) == ["a1", "ix1"]


def test_nothing_healthy_gives_an_empty_priority() -> None:
    assert pathway_priority([], current="a1", known=KNOWN) == []


def test_current_pathway_stays_first_while_in_the_top_two() -> None:
    assert pathway_priority(["a1", "a2", "ix1"], current="a2", known=KNOWN) == ["a2", "a1", "ix1"]
    assert pathway_priority(["a1", "a2", "ix1"], current="a1", known=KNOWN) == ["a1", "a2", "ix1"]


def test_current_pathway_ranked_third_is_left() -> None:
    assert pathway_priority(["a1", "a2", "ix1"], current="ix1", known=KNOWN) == ["a1", "a2", "ix1"]


def test_a_starved_client_is_not_kept_sticky() -> None:
    ranked = ["a1", "a2", "ix1"]
    slow = pathway_priority(
        ranked, current="a2", throughput_bps=1e6, sufficient_bps=5e6, known=KNOWN
    )
    fast = pathway_priority(
        ranked, current="a2", throughput_bps=9e6, sufficient_bps=5e6, known=KNOWN
    )
    unknown_need = pathway_priority(ranked, current="a2", throughput_bps=1e6, known=KNOWN)
    assert slow == ["a1", "a2", "ix1"]
    assert fast == unknown_need == ["a2", "a1", "ix1"]


@given(
    ranked=st.lists(st.sampled_from(["a1", "a2", "ix1", "zz"]), max_size=6),
    current=st.none() | st.sampled_from(["a1", "a2", "ix1", "zz"]),
    throughput=st.none() | st.floats(1, 1e9),
)
def test_priority_is_always_the_healthy_known_pathways_once(
    ranked: list[str], current: str | None, throughput: float | None
) -> None:
    order = pathway_priority(
        ranked, current=current, throughput_bps=throughput, sufficient_bps=5e6, known=KNOWN
    )
    healthy = [p for p in dict.fromkeys(ranked) if p in KNOWN]
    assert sorted(order) == sorted(healthy)
    assert not order or order[0] in (healthy[0], current)


def test_steering_query_reads_the_clients_parameters() -> None:
    query = {"_HLS_pathway": "a2", "_HLS_throughput": "5000000"}
    assert parse_steering_query(query, known=KNOWN) == SteeringQuery("a2", 5_000_000.0)
    assert parse_steering_query({"_HLS_throughput": "1234.5"}, known=KNOWN) == SteeringQuery(
        None, 1234.5
    )
    assert parse_steering_query({}, known=KNOWN) == SteeringQuery()


@pytest.mark.parametrize(
    "throughput",
    ["", "0", "0.0", "-5", "+5", "nan", "inf", "1e9", "5 ", " 5", "1_000", "9" * 30, "0x10", "٣"],
)
def test_hostile_throughput_is_ignored(throughput: str) -> None:
    query = {"_HLS_pathway": "a1", "_HLS_throughput": throughput}
    assert parse_steering_query(query, known=KNOWN) == SteeringQuery("a1", None)


@pytest.mark.parametrize("pathway", ["", "zz", "a1 ", 'a1"', "A1", "a1,a2"])
def test_unknown_pathway_is_ignored(pathway: str) -> None:
    query = {"_HLS_pathway": pathway, "_HLS_throughput": "100"}
    assert parse_steering_query(query, known=KNOWN) == SteeringQuery(None, 100.0)


@given(st.dictionaries(st.sampled_from(["_HLS_pathway", "_HLS_throughput", "x"]), st.text()))
def test_steering_query_never_raises_and_only_believes_sane_values(query: dict[str, str]) -> None:
    parsed = parse_steering_query(query, known=KNOWN)
    assert parsed.pathway is None or parsed.pathway in KNOWN
    assert parsed.throughput_bps is None or (
        math.isfinite(parsed.throughput_bps) and parsed.throughput_bps > 0
    )
