"""Sequential read-ahead: which objects a player will ask for next.

Viewers read a rendition's segments in order. When segment i is requested, segments
i+1..i+n of the same rendition are worth having in memory before they are asked for.
The order comes from the rendition's media playlist, which every player fetches
through this appliance first. Pure: playlist text in, keys out.
"""

from __future__ import annotations

import posixpath

import m3u8

MAX_PLAYLIST_BYTES = 4 * 1024 * 1024


def rendition_of(key: str) -> str:
    """``titles/T/720p/seg_00003.m4s`` -> ``titles/T/720p``."""
    return posixpath.dirname(key)


def segment_keys(playlist_key: str, text: str) -> list[str]:
    """The keys of a media playlist's segments, in order ([] for a master or bad playlist)."""
    if len(text) > MAX_PLAYLIST_BYTES:
        return []
    try:
        parsed = m3u8.loads(text)
    except Exception:  # m3u8 raises assorted errors on hostile text; none of them matter here
        return []
    base = posixpath.dirname(playlist_key)
    keys = []
    for seg in parsed.segments:
        uri = seg.uri or ""
        if "://" in uri or uri.startswith("/") or ".." in uri.split("/"):
            continue  # only plain relative URIs name objects of this title
        keys.append(posixpath.join(base, uri))
    return keys


def next_keys(order: list[str], key: str, count: int) -> list[str]:
    """Up to ``count`` keys after ``key`` in ``order`` ([] if ``key`` is not in it)."""
    try:
        i = order.index(key)
    except ValueError:
        return []
    return order[i + 1 : i + 1 + count]
