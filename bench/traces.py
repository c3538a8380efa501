"""Synthetic CDN request traces for the eviction-policy benchmark (bench/policies.py).

Two traces, both libCacheSim-style CSV (``time,obj_id,size`` with a header; time in
seconds, size in bytes), written into ``bench/out/`` by default:

- ``zipf.csv``: numeric object ids, independent requests, Zipf popularity, HLS-like
  sizes (a tenth are 1-2 KB playlists, the rest lognormal 0.2-3 MB segments), popularity
  independent of size.
- ``sessions.csv``: the appliance's cache keys as object ids
  (``titles/t007/720p/seg_00012.m4s``, ``titles/t007/720p/index.m3u8``,
  ``titles/t007/master.m3u8``), from viewers playing titles. Each session fetches the master
  and a media playlist, then segments 0, 1, 2, ... every 4 s until it abandons (a few watch
  to the end); the rendition is mostly fixed with occasional switches to a neighbour. Title
  popularity is Zipf over the back catalogue, plus new releases whose popularity spikes at
  release and decays. Half-way, a crawler fetches the top rendition of half the catalogue
  once, in order.

Every parameter is a field of ``ZipfTrace`` / ``SessionTrace`` below; the same seed gives
the same bytes. ``python bench/traces.py [--out DIR]`` writes both and prints a summary.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import itertools
import math
import random
from collections.abc import Iterator
from pathlib import Path

OUT_DIR = Path(__file__).resolve().parent / "out"

Request = tuple[int, int | str, int]  # (time_s, obj_id, size_bytes)


@dataclasses.dataclass(frozen=True)
class ZipfTrace:
    seed: int = 20261123
    objects: int = 100_000
    requests: int = 400_000
    alpha: float = 0.9
    playlist_share: float = 0.1  # of objects
    playlist_min_bytes: int = 1_000
    playlist_max_bytes: int = 2_000
    segment_median_bytes: int = 900_000
    segment_sigma: float = 0.6  # lognormal shape
    segment_min_bytes: int = 200_000
    segment_max_bytes: int = 3_000_000
    requests_per_s: int = 50


@dataclasses.dataclass(frozen=True)
class SessionTrace:
    seed: int = 20261123
    titles: int = 200
    segments_min: int = 100  # per title: 6.7 min ...
    segments_max: int = 900  # ... to 60 min of 4 s segments
    segment_s: int = 4
    # Per rendition: name, bitrate and the share of sessions that start there.
    rendition_names: tuple[str, ...] = ("1080p", "720p", "480p", "360p")
    rendition_kbps: tuple[int, ...] = (5_000, 3_000, 1_200, 600)
    rendition_share: tuple[float, ...] = (0.35, 0.35, 0.2, 0.1)
    switch_per_segment: float = 0.02  # chance to step to a neighbouring rendition
    complexity_sigma: float = 0.3  # per-segment scene complexity (lognormal), all renditions
    segment_max_bytes: int = 3_000_000
    playlist_min_bytes: int = 1_000
    playlist_max_bytes: int = 2_000
    title_alpha: float = 0.8  # Zipf popularity of the back catalogue
    sessions: int = 3_000
    duration_s: int = 6 * 3600  # sessions start uniformly at random in this span
    full_watch_share: float = 0.15  # sessions that watch to the end
    mean_watch_segments: float = 60.0  # geometric watch length of the others
    releases: int = 8  # titles that appear during the trace ...
    release_peak: float = 4.0  # ... as popular as this many top titles at release ...
    release_decay_s: int = 3600  # ... then decaying with this time constant
    crawler_start_s: int = 3 * 3600
    crawler_title_share: float = 0.5  # of the catalogue, top rendition, every segment
    crawler_requests_per_s: int = 25


def zipf_requests(cfg: ZipfTrace) -> Iterator[Request]:
    rng = random.Random(cfg.seed)
    sizes = []
    for _ in range(cfg.objects):
        if rng.random() < cfg.playlist_share:
            sizes.append(rng.randint(cfg.playlist_min_bytes, cfg.playlist_max_bytes))
        else:
            size = rng.lognormvariate(math.log(cfg.segment_median_bytes), cfg.segment_sigma)
            sizes.append(int(min(max(size, cfg.segment_min_bytes), cfg.segment_max_bytes)))
    # Rank r has weight 1 / r**alpha; ids are shuffled so popularity says nothing of id.
    ids = list(range(cfg.objects))
    rng.shuffle(ids)
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** cfg.alpha for rank in range(cfg.objects)))
    ranks = rng.choices(range(cfg.objects), cum_weights=cum, k=cfg.requests)
    for i, rank in enumerate(ranks):
        obj = ids[rank]
        yield i // cfg.requests_per_s, obj, sizes[obj]


def session_requests(cfg: SessionTrace) -> Iterator[Request]:
    rng = random.Random(cfg.seed)
    n_rend = len(cfg.rendition_kbps)
    lengths = [rng.randint(cfg.segments_min, cfg.segments_max) for _ in range(cfg.titles)]
    complexity = [
        [min(max(rng.lognormvariate(0.0, cfg.complexity_sigma), 0.3), 3.0) for _ in range(n)]
        for n in lengths
    ]
    playlist_bytes: dict[str, int] = {}

    def segment_size(title: int, rendition: int, segment: int) -> int:
        nominal = cfg.rendition_kbps[rendition] * 1000 // 8 * cfg.segment_s
        size = int(nominal * complexity[title][segment])
        return min(size, cfg.segment_max_bytes)

    def key(title: int, rendition: int | None = None, segment: int | None = None) -> str:
        if rendition is None:
            return f"titles/t{title:03d}/master.m3u8"
        if segment is None:
            return f"titles/t{title:03d}/{cfg.rendition_names[rendition]}/index.m3u8"
        return f"titles/t{title:03d}/{cfg.rendition_names[rendition]}/seg_{segment:05d}.m4s"

    def playlist(obj: str) -> int:
        if obj not in playlist_bytes:
            playlist_bytes[obj] = rng.randint(cfg.playlist_min_bytes, cfg.playlist_max_bytes)
        return playlist_bytes[obj]

    # Popularity: the back catalogue is Zipf over a random order; release titles add a
    # spike from their release time and do not exist before it.
    order = list(range(cfg.titles))
    rng.shuffle(order)
    base = [0.0] * cfg.titles
    for rank, title in enumerate(order):
        base[title] = 1.0 / (rank + 1) ** cfg.title_alpha
    released = rng.sample(range(cfg.titles), cfg.releases)
    release_at = {
        title: int(cfg.duration_s * (0.1 + 0.7 * k / max(cfg.releases - 1, 1)))
        for k, title in enumerate(released)
    }

    def weights(now: float) -> list[float]:
        w = base.copy()
        for title, at in release_at.items():
            if now < at:
                w[title] = 0.0
            else:
                w[title] += cfg.release_peak * math.exp(-(now - at) / cfg.release_decay_s)
        return w

    requests: list[Request] = []
    starts = sorted(rng.uniform(0, cfg.duration_s) for _ in range(cfg.sessions))
    p_stop = 1.0 / cfg.mean_watch_segments
    for start in starts:
        title = rng.choices(range(cfg.titles), weights=weights(start))[0]
        n = lengths[title]
        if rng.random() < cfg.full_watch_share:
            watch = n
        else:  # geometric, at least one segment
            watch = 1 + int(math.log(1.0 - rng.random()) / math.log(1.0 - p_stop))
        rendition = rng.choices(range(n_rend), weights=cfg.rendition_share)[0]
        t = int(start)
        master = key(title)
        requests.append((t, master, playlist(master)))
        media = key(title, rendition)
        requests.append((t, media, playlist(media)))
        for seg in range(min(watch, n)):
            if rng.random() < cfg.switch_per_segment:
                step = rng.choice((-1, 1))
                rendition = min(max(rendition + step, 0), n_rend - 1)
                media = key(title, rendition)
                requests.append((t, media, playlist(media)))
            requests.append((t, key(title, rendition, seg), segment_size(title, rendition, seg)))
            t += cfg.segment_s

    crawled = rng.sample(range(cfg.titles), int(cfg.titles * cfg.crawler_title_share))
    k = 0
    for title in crawled:
        for seg in range(lengths[title]):
            t = cfg.crawler_start_s + k // cfg.crawler_requests_per_s
            requests.append((t, key(title, 0, seg), segment_size(title, 0, seg)))
            k += 1

    requests.sort(key=lambda r: r[0])  # stable: a session's same-second order is kept
    yield from requests


def write_csv(path: Path, requests: Iterator[Request]) -> dict[str, int]:
    """Write a trace; returns its request count, unique objects and byte footprint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    seen: dict[int | str, int] = {}
    n = total = 0
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(("time", "obj_id", "size"))
        for t, obj, size in requests:
            out.writerow((t, obj, size))
            seen[obj] = size
            n += 1
            total += size
    return {
        "requests": n,
        "objects": len(seen),
        "footprint_bytes": sum(seen.values()),
        "requested_bytes": total,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="directory for the CSVs")
    args = parser.parse_args(argv)
    for name, requests in (
        ("zipf.csv", zipf_requests(ZipfTrace())),
        ("sessions.csv", session_requests(SessionTrace())),
    ):
        stats = write_csv(args.out / name, requests)
        summary = ", ".join(f"{k} {v:,}" for k, v in stats.items())
        print(f"{args.out / name}: {summary}")


if __name__ == "__main__":
    main()
