"""Ingest: a video file becomes a published title in the store, or nothing at all."""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from media import ladder as ladders
from media.ffmpeg import ProgressCallback
from media.poster import grab_poster, poster_time_s
from media.probe import MediaInfo, probe
from media.transcode import DEFAULT_PRESET, transcode
from origin.store import TitleStore, build_manifest
from streamcdn.errors import UserError
from streamcdn.ids import check_title_id

MAX_NAME_LEN = 200
MAX_TAGS = 20
_TAG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
POSTER = "poster.jpg"
DISK_FULL_BYTES = 1 << 20  # less free space than this after a failure: the disk filled


def _source_info(info: MediaInfo) -> dict[str, object]:
    return {
        "file": info.path.name,
        "width": info.width,
        "height": info.height,
        "frame_rate": round(info.fps, 3),
        "duration_s": round(info.duration_s, 3),
        "video_codec": info.video_codec,
        "has_audio": info.has_audio,
    }


def check_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """Tags (genres) in the catalog: lower-case words with '-', at most MAX_TAGS."""
    out = tuple(dict.fromkeys(t.strip().lower() for t in tags))
    for tag in out:
        if not _TAG.fullmatch(tag):
            raise UserError(
                f"--tag {tag!r}: use 1-32 of a-z, 0-9 and '-', starting with a letter or digit"
            )
    if len(out) > MAX_TAGS:
        raise UserError(f"--tag: at most {MAX_TAGS} tags")
    return out


def ingest(
    source: Path,
    title: str,
    store: TitleStore,
    *,
    name: str | None = None,
    tags: Sequence[str] = (),
    force: bool = False,
    ladder: tuple[ladders.Rung, ...] = ladders.DEFAULT_LADDER,
    preset: str = DEFAULT_PRESET,
    on_probe: Callable[[MediaInfo, list[ladders.Rung]], None] | None = None,
    on_progress: ProgressCallback | None = None,
) -> dict[str, object]:
    """Transcode ``source`` and publish it as ``title``; return the manifest.

    Every failure (bad input, ffmpeg error, full disk, Ctrl-C) removes the staging
    directory, so the store never shows a partial title or keeps litter.
    """
    check_title_id(title)
    name = title if name is None else name.strip()
    if not name or len(name) > MAX_NAME_LEN or not name.isprintable():
        raise UserError(f"--name: expected 1..{MAX_NAME_LEN} printable characters")
    tags = check_tags(tags)
    store.ensure()
    if store.exists(title) and not force:
        raise UserError(f"title {title!r} already exists; use --force to replace it")
    info = probe(source)
    rungs = ladders.plan_ladder(info.display_width, info.height, ladder)
    if on_probe is not None:
        on_probe(info, rungs)
    staging = store.new_staging(title)
    try:
        result = transcode(source, staging, rungs, info, preset=preset, on_progress=on_progress)
        grab_poster(source, staging / POSTER, at_s=poster_time_s(info.duration_s))
        manifest = build_manifest(
            title, name, result, staging, _source_info(info), tags=tags, poster=POSTER
        )
        store.publish(title, staging, manifest, force=force)
        return manifest
    except UserError:
        # ffmpeg hides failed writes (exit 0, short files); a full disk explains them.
        if shutil.disk_usage(store.root).free < DISK_FULL_BYTES:
            raise UserError(f"store {store.root}: disk full while transcoding {title!r}") from None
        raise
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise UserError(f"store {store.root}: disk full while writing {title!r}") from None
        raise UserError(f"store {store.root}: cannot write {title!r}: {exc.strerror}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
