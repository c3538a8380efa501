"""The HTTP player against real servers on loopback: appliances, an origin, control, and
small aiohttp servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web

from appliance.config import ApplianceConfig
from appliance.server import create_app as create_appliance
from origin.server import create_app as create_origin
from origin.store import TitleStore
from player.abr.base import AbrContext
from player.plot import plot_session
from player.session import (
    EventPoster,
    PlayerConfig,
    PlayerError,
    Playhead,
    PlaySummary,
    TracePacer,
    parse_master,
    parse_media,
    play,
    play_title,
)
from streamcdn import service
from streamcdn.digest import digest_bytes, header_value
from streamcdn.tokens import SigningKey, sign, title_prefix
from tests.conftest import TITLE, publish_sample
from tests.control.conftest import PASSWORD, sign_up_and_login, start_stack

KEY = SigningKey.parse("k1:player-test-signing-key-0123")
FAST = PlayerConfig(read_timeout_s=0.5, retry_backoff_s=0.05, give_up_s=1.0)


# -- tiny rules and traces of our own (the real ones live in player/abr and player/traces) --


class FixedRule:
    name = "fixed"

    def __init__(self, rung: int = 0) -> None:
        self.rung = rung

    def initial_state(self) -> None:
        return None

    def choose(self, ctx: AbrContext, state: None) -> tuple[int, None]:
        return min(self.rung, len(ctx.bitrates_kbps) - 1), state


class LastThroughputRule:
    """The highest rung below 80% of the last download's throughput."""

    name = "last-throughput"

    def initial_state(self) -> None:
        return None

    def choose(self, ctx: AbrContext, state: None) -> tuple[int, None]:
        if not ctx.downloads:
            return 0, state
        d = ctx.downloads[-1]
        kbps = d.bytes * 8 / d.duration_s / 1000
        fits = [i for i, b in enumerate(ctx.bitrates_kbps) if b < 0.8 * kbps]
        return (fits[-1] if fits else 0), state


@dataclass(frozen=True)
class Period:
    duration_s: float
    bandwidth_kbps: float
    latency_ms: float = 0.0


@dataclass(frozen=True)
class Trace:
    periods: tuple[Period, ...]


# -- a synthetic title with short segments, and a server that misbehaves on request --------


def synthetic_title(
    segments: int = 6, segment_s: float = 0.5, sizes: tuple[int, ...] = (20_000, 60_000)
) -> dict[str, bytes]:
    """master.m3u8, one media playlist per rung and audio, init and segment bodies, and
    manifest.json: the files of a title, by path. The player never decodes media."""
    files: dict[str, bytes] = {}
    renditions = [(f"r{i}", size) for i, size in enumerate(sizes)] + [("audio", 2_000)]
    for name, size in renditions:
        lines = [
            "#EXTM3U",
            "#EXT-X-VERSION:7",
            "#EXT-X-TARGETDURATION:1",
            '#EXT-X-MAP:URI="init.mp4"',
        ]
        files[f"{name}/init.mp4"] = os.urandom(500)
        for i in range(segments):
            files[f"{name}/seg_{i:05d}.m4s"] = os.urandom(size)
            lines += [
                f"#EXT-X-BITRATE:{round(size * 8 / segment_s / 1000)}",
                f"#EXTINF:{segment_s},",
                f"seg_{i:05d}.m4s",
            ]
        files[f"{name}/index.m3u8"] = ("\n".join([*lines, "#EXT-X-ENDLIST"]) + "\n").encode()
    master = [
        "#EXTM3U",
        '#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aud",NAME="audio",DEFAULT=YES,URI="audio/index.m3u8"',
    ]
    for name, size in reversed(renditions[:-1]):  # highest first, as ours are
        bandwidth = round((size + 2_000) * 8 / segment_s)
        master += [f'#EXT-X-STREAM-INF:BANDWIDTH={bandwidth},AUDIO="aud"', f"{name}/index.m3u8"]
    files["master.m3u8"] = ("\n".join(master) + "\n").encode()
    manifest = {p: {"size": len(b), "xxh3-128": digest_bytes(b)} for p, b in files.items()}
    files["manifest.json"] = json.dumps({"files": manifest}).encode()
    return files


EVENTS = web.AppKey("events", list[dict[str, Any]])


def title_app(
    files: dict[str, bytes],
    *,
    name: str = "fake",
    faults: dict[str, Any] | None = None,
    digests: bool = True,
) -> web.Application:
    """Serves ``files`` under ``/t/``; ``faults[path]`` makes that path misbehave: an HTTP
    status, ``"bad-digest"`` (a wrong X-Content-Digest), ``"corrupt"`` (other bytes, and a
    digest that matches them), ``"stall"`` (half the body, then nothing), ``"truncate"``
    (half the body, then the connection closes), or seconds to wait before answering.
    ``POST /events`` collects events in ``app[EVENTS]``."""
    faults = faults or {}
    events: list[dict[str, Any]] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        fault = faults.get(path)
        headers = {"X-Served-By": name}
        if isinstance(fault, int):
            return web.Response(status=fault, headers=headers)
        if path not in files:
            return web.Response(status=404, headers=headers)
        body = files[path]
        if fault == "corrupt":
            body = bytes(len(body))
        if digests:
            headers["X-Content-Digest"] = header_value(
                digest_bytes(b"not it" if fault == "bad-digest" else body)
            )
        if isinstance(fault, float):
            await asyncio.sleep(fault)
        if fault in ("stall", "truncate"):
            response = web.StreamResponse(headers=headers)
            response.content_length = len(body)
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            if fault == "truncate":
                assert request.transport is not None
                request.transport.close()
                return response
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.05)  # until the player gives up on us
            return response
        return web.Response(body=body, headers=headers)

    async def post_events(request: web.Request) -> web.Response:
        batch = (await request.json())["events"]
        events.extend(batch)
        return web.json_response({"accepted": len(batch)}, status=202)

    app = web.Application(client_max_size=64 * 1024)  # as control's
    app[EVENTS] = events
    app.router.add_get("/t/{path:.+}", serve)
    app.router.add_post("/events", post_events)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """Start a title_app on loopback; returns (base URL, app)."""
    running: list[service.Running] = []

    async def start(files: dict[str, bytes], **kw: Any) -> tuple[str, web.Application]:
        app = title_app(files, **kw)
        r = await service.start(app, host="127.0.0.1", port=0, access_log=False)
        running.append(r)
        return r.make_url(""), app

    yield start
    for r in running:
        await r.close()


# -- real appliances in front of a real origin ----------------------------------------------


async def start_appliance(tmp: Path, origin: str, id_: str) -> service.Running:
    config = ApplianceConfig(
        id=id_,
        cache_dir=tmp / f"cache-{id_}",
        upstreams=(origin,),
        keys=(KEY,),
        mem_bytes=64 * 10**6,
        disk_bytes=256 * 10**6,
        limiter_lag_target_s=0.0,  # the loop is shared with the player: its delay is not load
    )
    return await service.start(create_appliance(config), host="127.0.0.1", port=0, access_log=False)


def master_url(appliance: service.Running, title: str) -> str:
    token = sign(title_prefix(title), KEY, expires=2**31 - 1)
    return appliance.make_url(f"/s/{token}/titles/{title}/master.m3u8")


@pytest.fixture
async def origin_url(store: TitleStore) -> AsyncIterator[str]:
    running = await service.start(
        create_origin(store.root), host="127.0.0.1", port=0, access_log=False
    )
    yield running.make_url("")
    await running.close()


LONG = "long"


@pytest.fixture(scope="module")
def long_store(tmp_path_factory: pytest.TempPathFactory) -> TitleStore:
    """A 40 s title at 320x180 (one rung and audio): long enough to buffer 10 s."""
    return publish_sample(tmp_path_factory.mktemp("long"), LONG, duration_s=40.0, size=(320, 180))


# -- pure parts -------------------------------------------------------------------------------


def test_master_variants_sort_by_bandwidth_and_find_their_audio() -> None:
    master = parse_master(synthetic_title()["master.m3u8"].decode())
    assert [r.name for r in master.variants] == ["r0", "r1"]
    assert master.variants[0].bandwidth_bps < master.variants[1].bandwidth_bps
    assert master.audio is not None and master.audio.path == "audio/index.m3u8"


def test_media_playlist_gives_paths_sizes_and_init() -> None:
    text = synthetic_title()["r1/index.m3u8"].decode()
    segments = parse_media(text, "r1/index.m3u8", "r1")
    assert len(segments) == 6
    assert segments[0].path == "r1/seg_00000.m4s" and segments[0].init == "r1/init.mp4"
    assert segments[0].duration_s == 0.5
    assert segments[0].size_bytes == pytest.approx(60_000, rel=0.01)  # from EXT-X-BITRATE


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("#EXT-X-STREAM-INF:BANDWIDTH=1\nv.m3u8\n", "#EXTM3U"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=fast\nv.m3u8\n", "malformed"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1,RESOLUTION=axb\nv.m3u8\n", "malformed"),
        ("#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=0\nv.m3u8\n", "BANDWIDTH"),
        ("#EXTM3U\n#EXT-X-VERSION:7\n", "no #EXT-X-STREAM-INF"),
        ("", "#EXTM3U"),
    ],
)
def test_hostile_masters_are_clear_errors(text: str, why: str) -> None:
    with pytest.raises(PlayerError, match=why):
        parse_master(text)


@pytest.mark.parametrize("extinf", ["0", "-4", "61", "1e9", "nan", "inf", "four"])
def test_absurd_durations_are_clear_errors(extinf: str) -> None:
    text = f"#EXTM3U\n#EXTINF:{extinf},\nseg.m4s\n#EXT-X-ENDLIST\n"
    with pytest.raises(PlayerError, match=r"EXTINF|malformed"):
        parse_media(text, "v/index.m3u8", "v")


def test_playhead_counts_stalls_but_not_the_end_of_the_title() -> None:
    p = Playhead(t0=100.0)
    assert p.add(4.0, 101.0, start=True) == 0.0  # startup: 1 s
    assert p.startup_s == 1.0
    p.advance(103.0)
    assert p.buffer_s == pytest.approx(2.0)
    assert p.add(4.0, 107.0, start=True) == pytest.approx(2.0)  # dry at 105, stalled 2 s
    assert (p.stalls, p.stall_s, p.position_s) == (1, pytest.approx(2.0), pytest.approx(4.0))
    p.complete = True
    assert p.finish(120.0) == 0.0  # played out: not a stall
    assert p.stalls == 1 and p.position_s == pytest.approx(8.0)


def test_pacer_follows_the_trace_and_loops() -> None:
    trace = Trace((Period(1.0, 8_000), Period(1.0, 0), Period(1.0, 16_000, 50)))
    pacer = TracePacer(trace, start=0.0)
    assert pacer.take(500_000, 0.0) == pytest.approx(0.5)  # 4 Mbit at 8 Mbps
    assert pacer.take(1_000_000, 0.5) == pytest.approx(2.25)  # 0.5 s, the outage, 0.25 s
    assert pacer.latency_s(2.5) == pytest.approx(0.05)
    assert pacer.take(1_000, 9.0) == pytest.approx(9.001)  # the first period again
    assert pacer.take(1_000, 10.0) == pytest.approx(11.0005)  # waits out the outage
    with pytest.raises(ValueError):
        TracePacer(Trace((Period(1.0, 0),)), start=0.0)


# -- playing -----------------------------------------------------------------------------------


async def test_plays_a_title_through_an_appliance(
    tmp_path: Path, origin_url: str, title_dir: Path
) -> None:
    appliance = await start_appliance(tmp_path, origin_url, "a1")
    statuses: list[int] = []
    try:
        summary = await play(
            [master_url(appliance, TITLE)],
            rule=LastThroughputRule(),
            play_out=False,
            on_status=lambda s: statuses.append(len(s.timeline)),
        )
    finally:
        await appliance.close()
    out = summary.to_json()
    assert (out["segments"], out["segments_total"], statuses) == (3, 3, [1, 2, 3])
    assert (out["stalls"], out["failovers"], out["errors"]) == (0, 0, {})
    assert out["appliances"] == ["a1"] and out["ended"] == "title" and out["title"] == TITLE
    assert out["startup_s"] < 2 and out["qoe_lin"] > 0 and out["avg_kbps"] > 0
    media = sum(f.stat().st_size for f in title_dir.glob("*/*.m4s"))
    assert out["bytes"] > media / 3  # playlists, inits, one rung's segments and the audio
    assert [s["index"] for s in out["timeline"]] == [0, 1, 2]
    assert {"time_s", "rung", "kbps", "buffer_s", "throughput_kbps"} <= out["timeline"][0].keys()
    json.dumps(out)
    assert plot_session(summary, tmp_path / "session.png").stat().st_size > 1000


@pytest.mark.parametrize("fault", ["bad-digest", "corrupt"])  # the header or manifest.json tells
async def test_a_wrong_digest_is_an_error_and_fails_over(serve: Any, fault: str) -> None:
    files = synthetic_title()
    a, _ = await serve(files, name="bad", faults={"r0/seg_00002.m4s": fault})
    b, _ = await serve(files, name="good")
    summary = await play(
        [f"{a}/t/master.m3u8", f"{b}/t/master.m3u8"], rule=FixedRule(0), play_out=False
    )
    assert summary.errors == {"digest": 1}
    assert summary.failovers == 1 and summary.appliances == ["bad", "good"]
    assert len(summary.timeline) == 6 and summary.timeline[2].appliance == "good"


@pytest.mark.parametrize(
    ("path", "fault", "kind"),
    [
        ("r0/seg_00001.m4s", 404, "http_4xx"),
        ("audio/seg_00003.m4s", 500, "http_5xx"),
        ("r0/init.mp4", 503, "http_5xx"),
        ("r0/seg_00001.m4s", "stall", "timeout"),
        ("audio/seg_00002.m4s", "truncate", "truncated"),
    ],
)
async def test_a_failing_request_fails_over_and_keeps_playing(
    serve: Any, path: str, fault: Any, kind: str
) -> None:
    files = synthetic_title()
    a, _ = await serve(files, name="a", faults={path: fault})
    b, _ = await serve(files, name="b")
    async with asyncio.timeout(10):
        summary = await play(
            [f"{a}/t/master.m3u8", f"{b}/t/master.m3u8"],
            rule=FixedRule(0),
            play_out=False,
            config=FAST,
        )
    assert summary.errors == {kind: 1}  # the player stays on b after failing over
    assert summary.failovers == 1 and summary.appliances == ["a", "b"]
    assert len(summary.timeline) == 6


async def test_when_every_url_fails_it_retries_then_gives_up(serve: Any) -> None:
    files = synthetic_title(segment_s=0.25)
    urls = [
        f"{(await serve(files, name=n, faults={'r0/seg_00003.m4s': 500}))[0]}/t/master.m3u8"
        for n in "ab"
    ]
    config = PlayerConfig(retry_backoff_s=0.05, give_up_s=1.0)  # longer than the 0.75 s buffered
    async with asyncio.timeout(10):
        with pytest.raises(PlayerError, match=r"no URL served r0/seg_00003\.m4s") as caught:
            await play(urls, rule=FixedRule(0), play_out=False, config=config)
    summary = caught.value.summary
    assert summary is not None and summary.ended == "error"
    assert len(summary.timeline) == 3 and summary.errors["http_5xx"] >= 4  # several rounds
    assert summary.stalls == 1  # the buffer ran out while it retried


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("master.m3u8", b"#EXT-X-STREAM-INF:BANDWIDTH=1\nr0/index.m3u8\n"),
        ("r0/index.m3u8", b"#EXTM3U\n#EXTINF:3600,\nseg_00000.m4s\n"),
        ("r0/index.m3u8", b"#EXTM3U\n#EXT-X-ENDLIST\n"),
        ("master.m3u8", b"\xff\xfe not text"),
    ],
)
async def test_a_bad_playlist_is_a_player_error(serve: Any, path: str, body: bytes) -> None:
    files = {**synthetic_title(), path: body}
    files.pop("manifest.json")
    base, _ = await serve(files)
    async with asyncio.timeout(5):
        with pytest.raises(PlayerError):
            await play([f"{base}/t/master.m3u8"], rule=FixedRule(0), play_out=False, config=FAST)


async def test_a_slow_segment_stalls_playback_and_events_say_so(serve: Any) -> None:
    files = synthetic_title(segments=4, segment_s=0.25)
    base, app = await serve(files, faults={"r0/seg_00002.m4s": 0.8})
    http = ClientSession()
    events = EventPoster(base, http, interval_s=0.2)
    try:
        summary = await play(
            [f"{base}/t/master.m3u8"],
            rule=FixedRule(0),
            max_buffer_s=0.5,  # seg 2 is asked for with 0.25 s buffered, and takes 0.8 s
            events=events,
            session=http,
            session_id="s1",
        )
    finally:
        await events.close()
        await http.close()
    assert summary.stalls == 1 and 0.35 < summary.stall_s < 0.8
    assert summary.timeline[2].stall_s == pytest.approx(summary.stall_s)
    assert summary.ended == "title"
    assert summary.wall_s >= 1.0 + summary.stall_s  # played out to the end
    types = [e["type"] for e in app[EVENTS]]
    assert types == ["start", "stall", "end"]
    assert all(e["session"] == "s1" and e["appliance"] == "fake" for e in app[EVENTS])
    assert events.posted == 3 and events.failed == 0


async def test_event_batches_stay_within_control_limits(serve: Any) -> None:
    base, app = await serve({})
    async with ClientSession() as http:
        events = EventPoster(base, http)
        for i in range(1200):  # ~230 bytes each: 500 would be over 64 KB
            events.add({"type": "error", "session": f"s{i}", "ts": 1.0, "error": "x" * 150})
        await events.close()
    assert (events.posted, events.rejected, events.failed) == (1200, 0, 0)
    assert len(app[EVENTS]) == 1200


async def test_event_posting_failures_never_fail_the_play(serve: Any) -> None:
    base, _ = await serve(synthetic_title())
    async with ClientSession() as http:
        events = EventPoster("http://127.0.0.1:9", http)  # nothing listens there
        summary = await play(
            [f"{base}/t/master.m3u8"],
            rule=FixedRule(0),
            events=events,
            session=http,
            play_out=False,
        )
        await events.close()
    assert summary.ended == "title" and events.posted == 0
    assert events.failed == 1 and events.dropped == 2  # start and end


async def test_duration_stops_the_session(serve: Any) -> None:
    base, _ = await serve(synthetic_title(segments=40))
    summary = await play(
        [f"{base}/t/master.m3u8"], rule=FixedRule(1), duration_s=1.0, max_buffer_s=2.0
    )
    assert summary.ended == "duration" and summary.wall_s == pytest.approx(1.0, abs=0.2)
    assert summary.stalls == 0 and 40 > len(summary.timeline) > 0


async def test_a_trace_paces_the_measured_throughput(serve: Any) -> None:
    base, _ = await serve(synthetic_title(segments=5, sizes=(100_000,)))
    trace = Trace((Period(1.0, 2_000),))
    summary = await play([f"{base}/t/master.m3u8"], rule=FixedRule(0), trace=trace, play_out=False)
    measured = statistics.median(s.throughput_kbps for s in summary.timeline)
    assert measured == pytest.approx(2_000, rel=0.2)


async def test_killing_the_first_appliance_fails_over_without_a_stall(
    tmp_path: Path, long_store: TitleStore
) -> None:
    origin = await service.start(
        create_origin(long_store.root), host="127.0.0.1", port=0, access_log=False
    )
    a1 = await start_appliance(tmp_path, origin.make_url(""), "a1")
    a2 = await start_appliance(tmp_path, origin.make_url(""), "a2")
    killed: list[float] = []
    kills: list[asyncio.Task[None]] = []

    def kill_when_buffered(s: PlaySummary) -> None:
        if not kills and s.timeline[-1].buffer_s >= 10:
            killed.append(s.timeline[-1].buffer_s)
            kills.append(asyncio.create_task(a1.close()))

    trace = Trace((Period(1.0, 8_000),))  # ~13x the title's rate: 10 s buffered in ~1 s
    try:
        async with asyncio.timeout(30):
            summary = await play(
                [master_url(a1, LONG), master_url(a2, LONG)],
                rule=FixedRule(0),
                trace=trace,
                on_status=kill_when_buffered,
                max_buffer_s=60.0,
                play_out=False,
            )
    finally:
        await asyncio.gather(*kills)
        for running in (a1, a2, origin):
            await running.close()
    assert killed and summary.ended == "title"
    assert len(summary.timeline) == summary.segments_total == 10
    assert summary.appliances == ["a1", "a2"] and summary.failovers == 1
    assert sum(summary.errors.values()) == summary.errors["connection"] >= 1
    assert summary.stalls == 0


async def test_play_title_posts_events_to_control(tmp_path: Path, store: TitleStore) -> None:
    stack = await start_stack(tmp_path, store)
    try:
        await sign_up_and_login(stack.control, "player@example.com")
        summary = await play_title(
            stack.control, TITLE, "player@example.com", PASSWORD, rule=FixedRule(1), play_out=False
        )
        assert summary.ended == "title" and len(summary.timeline) == 3
        assert summary.appliances == ["a1"]
        async with ClientSession() as s, s.get(f"{stack.control}/events/summary") as r:
            qoe = await r.json()
    finally:
        for running in reversed(list(stack.running.values())):
            await running.close()
    assert qoe["events"] == 2  # start and end
    a1 = qoe["appliances"]["a1"]
    assert a1["sessions"] == 1 and a1["stalls"] == 0 and a1["errors"] == 0


def test_summary_json_without_segments() -> None:
    out = PlaySummary("s", None, "fixed").to_json()
    assert out["qoe_lin"] is None and out["segments"] == 0 and out["timeline"] == []
