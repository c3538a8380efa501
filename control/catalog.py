"""The catalog: what titles exist, their names, tags (genres), renditions and posters.

``Catalog`` is a blocking, thread-safe store over the control service's SQLite file
(the server calls it through ``asyncio.to_thread``), shared with the accounts.

Search uses SQLite's FTS5 over each title's name and tags, ranked by bm25 with the
name weighted above the tags, and folded by the ``unicode61 remove_diacritics 2``
tokenizer so "cafe" finds "Café". FTS5 is required (a clear error at start without it;
there is no slower fallback): Python's bundled SQLite has it. The query
comes from users and is never handed to FTS5 as written: it is cut into word tokens
and rebuilt as quoted prefix terms, all required (see ``fts_query``).

Schema: the tables below, created if missing; their version is the ``catalog`` row of
the ``schema_versions`` table (see ``control.accounts.connect``).
"""

from __future__ import annotations

import builtins
import json
import re
import sqlite3
import threading
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from control.accounts import connect, transaction
from streamcdn.ids import is_valid_rel_path, is_valid_title_id

SCHEMA_VERSION = 1
# ``key`` is an explicit INTEGER PRIMARY KEY so it survives VACUUM: the search index
# and the tags point at it.
SCHEMA = """
CREATE TABLE IF NOT EXISTS titles (
    key INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    duration_s REAL NOT NULL,
    tags TEXT NOT NULL,        -- JSON list, in the entry's order
    renditions TEXT NOT NULL,  -- JSON list of Rendition fields
    poster TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS title_tags (
    tag TEXT NOT NULL,
    title_key INTEGER NOT NULL REFERENCES titles(key) ON DELETE CASCADE,
    PRIMARY KEY (tag, title_key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS titles_by_name ON titles(name COLLATE NOCASE, id);
CREATE VIRTUAL TABLE IF NOT EXISTS title_search USING fts5(
    name, tags, tokenize = 'unicode61 remove_diacritics 2'
)
"""
_COLUMNS = (  # what _entry reads; qualified, as the search index has a name and tags too
    "titles.id, titles.name, titles.duration_s, titles.tags, titles.renditions,"
    " titles.poster, titles.updated_at"
)

NAME_WEIGHT = 10.0  # bm25 column weights: a name match outranks a tag-only match
TAGS_WEIGHT = 1.0
MAX_PAGE = 100  # list/search results per call
DEFAULT_PAGE = 20
MAX_QUERY_TOKENS = 10
MAX_TOKEN_CHARS = 64
MAX_TAG_CHARS = 64
_WORD = re.compile(r"[^\W_]+")  # letters and digits in any script; "_" splits like FTS5


@dataclass(frozen=True)
class Rendition:
    """One rung of a title's ladder, as the player's picker shows it."""

    name: str  # "1080p", "audio"
    width: int | None  # pixels; None for audio
    height: int | None
    bandwidth: int  # peak bit/s
    codecs: str  # RFC 6381 codecs string

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rendition:
        """From a stored row or an origin manifest's rendition (extra keys are ignored)."""
        return cls(d["name"], d.get("width"), d.get("height"), d["bandwidth"], d["codecs"])


@dataclass(frozen=True)
class TitleEntry:
    id: str
    name: str
    duration_s: float
    tags: tuple[str, ...]  # lower-cased, deduplicated on construction; the genres
    renditions: tuple[Rendition, ...]
    poster: str | None  # a path inside the title, e.g. "poster.jpg"
    updated_at: float  # unix seconds

    def __post_init__(self) -> None:
        if not is_valid_title_id(self.id):
            raise ValueError(f"invalid title id {self.id!r}")
        if not self.name.strip() or not self.name.isprintable():
            raise ValueError(f"title name must be printable and non-empty, not {self.name!r}")
        if not self.duration_s >= 0:
            raise ValueError(f"duration_s must be >= 0, not {self.duration_s}")
        if self.poster is not None and not is_valid_rel_path(self.poster):
            raise ValueError(f"poster must be a path inside the title, not {self.poster!r}")
        tags = tuple(dict.fromkeys(t.strip().lower() for t in self.tags if t.strip()))
        for tag in tags:
            if len(tag) > MAX_TAG_CHARS or not tag.isprintable():
                raise ValueError(f"tag must be printable and <= {MAX_TAG_CHARS} chars: {tag!r}")
        object.__setattr__(self, "tags", tags)


def fts_query(q: str) -> str | None:
    """``q`` rebuilt as a safe FTS5 query, or None when it holds no words.

    NFKC folds compatibility forms and composes accents; the words (letters and digits,
    up to MAX_QUERY_TOKENS of them, each cut to MAX_TOKEN_CHARS) become quoted prefix
    terms joined by AND. Quotes, operators (AND, OR, NEAR, ``-``, ``col:``, parentheses),
    SQL and anything else that is not a letter or a digit cannot reach FTS5 as syntax.
    """
    words = _WORD.findall(unicodedata.normalize("NFKC", q))[:MAX_QUERY_TOKENS]
    if not words:
        return None
    return " AND ".join(f'"{word[:MAX_TOKEN_CHARS]}"*' for word in words)


class Catalog:
    """The titles in the SQLite file ``db_path``; safe to call from many threads."""

    def __init__(self, db_path: Path) -> None:
        self._lock = threading.Lock()
        try:
            self._conn = connect(db_path, "catalog", SCHEMA_VERSION, SCHEMA)
        except sqlite3.OperationalError as err:
            if "fts5" in str(err):
                raise RuntimeError(
                    f"this Python's SQLite {sqlite3.sqlite_version} lacks FTS5, "
                    "which the catalog's search needs"
                ) from err
            raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def upsert(self, entry: TitleEntry) -> None:
        """Add the title or replace every field of it; the search index follows atomically."""
        renditions = json.dumps([asdict(r) for r in entry.renditions])
        with self._lock, transaction(self._conn) as conn:
            (key,) = conn.execute(
                "INSERT INTO titles (id, name, duration_s, tags, renditions, poster, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
                " duration_s = excluded.duration_s, tags = excluded.tags,"
                " renditions = excluded.renditions, poster = excluded.poster,"
                " updated_at = excluded.updated_at"
                " RETURNING key",
                (
                    entry.id,
                    entry.name,
                    entry.duration_s,
                    json.dumps(entry.tags),
                    renditions,
                    entry.poster,
                    entry.updated_at,
                ),
            ).fetchone()
            conn.execute("DELETE FROM title_tags WHERE title_key = ?", (key,))
            conn.executemany(
                "INSERT INTO title_tags (tag, title_key) VALUES (?, ?)",
                [(tag, key) for tag in entry.tags],
            )
            conn.execute("DELETE FROM title_search WHERE rowid = ?", (key,))
            conn.execute(
                "INSERT INTO title_search (rowid, name, tags) VALUES (?, ?, ?)",
                (key, entry.name, " ".join(entry.tags)),
            )

    def remove(self, title_id: str) -> bool:
        """Remove the title; whether it was there."""
        with self._lock, transaction(self._conn) as conn:
            row = conn.execute("DELETE FROM titles WHERE id = ? RETURNING key", (title_id,))
            found = row.fetchone()
            if found is None:
                return False
            conn.execute("DELETE FROM title_search WHERE rowid = ?", found)
        return True  # title_tags went with it: ON DELETE CASCADE

    def get(self, title_id: str) -> TitleEntry | None:
        with self._lock:
            row = self._conn.execute(f"SELECT {_COLUMNS} FROM titles WHERE id = ?", (title_id,))
            found = row.fetchone()
        return _entry(found) if found else None

    def ids(self) -> set[str]:
        with self._lock:
            return {id_ for (id_,) in self._conn.execute("SELECT id FROM titles")}

    def list(
        self, *, genre: str | None = None, offset: int = 0, limit: int = DEFAULT_PAGE
    ) -> tuple[list[TitleEntry], int]:
        """One page of titles ordered by name (ASCII case ignored) then id, and how many
        there are in all.

        ``genre`` keeps the titles with that tag; ``limit`` above MAX_PAGE is cut to it.
        """
        if not _is_int(offset) or offset < 0:
            raise ValueError(f"offset must be an integer >= 0, not {offset!r}")
        limit = _page_limit(limit)
        where, params = "", []
        if genre is not None:
            where = " WHERE key IN (SELECT title_key FROM title_tags WHERE tag = ?)"
            params = [genre.strip().lower()]
        with self._lock:
            (total,) = self._conn.execute(f"SELECT count(*) FROM titles{where}", params).fetchone()
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM titles{where}"
                " ORDER BY name COLLATE NOCASE, id LIMIT ? OFFSET ?",
                (*params, limit, offset),
            ).fetchall()
        return [_entry(row) for row in rows], total

    def genres(self) -> builtins.list[tuple[str, int]]:  # builtins: list is a method here
        """Every tag with its number of titles, in alphabetical order."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT tag, count(*) FROM title_tags GROUP BY tag ORDER BY tag"
            ).fetchall()
        return [(tag, count) for tag, count in rows]

    def search(self, q: str, *, limit: int = DEFAULT_PAGE) -> builtins.list[TitleEntry]:
        """Titles whose name or tags hold every word of ``q`` (as a prefix), best first."""
        limit = _page_limit(limit)
        match = fts_query(q)
        if match is None:
            return []
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM title_search"
                " JOIN titles ON titles.key = title_search.rowid"
                " WHERE title_search MATCH ?"
                " ORDER BY bm25(title_search, ?, ?), titles.name COLLATE NOCASE, titles.id LIMIT ?",
                (match, NAME_WEIGHT, TAGS_WEIGHT, limit),
            ).fetchall()
        return [_entry(row) for row in rows]


def _entry(row: tuple[Any, ...]) -> TitleEntry:
    id_, name, duration_s, tags, renditions, poster, updated_at = row
    return TitleEntry(
        id_,
        name,
        duration_s,
        tuple(json.loads(tags)),
        tuple(Rendition.from_dict(r) for r in json.loads(renditions)),
        poster,
        updated_at,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _page_limit(limit: int) -> int:
    if not _is_int(limit) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1, not {limit!r}")
    return min(limit, MAX_PAGE)
