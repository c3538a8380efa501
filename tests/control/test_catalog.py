from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control.accounts import Accounts, ScryptParams
from control.catalog import Catalog, Rendition, TitleEntry, fts_query

T0 = 1_700_000_000.0
LADDER = (
    Rendition("720p", 1280, 720, 3_000_000, "avc1.64001f"),
    Rendition("audio", None, None, 128_000, "mp4a.40.2"),
)


def title(id_: str, name: str, *tags: str, updated_at: float = T0) -> TitleEntry:
    return TitleEntry(id_, name, 60.0, tags, LADDER, "poster.jpg", updated_at)


SHELF = [
    title("calm", "Calm Gradient", "ambient", "premium"),
    title("cafe", "Café Society", "drama"),
    title("storm", "Storm Front", "drama", "calm"),
    title("xylo", "Xylophone Nights", "music"),
    title("tokyo", "東京物語", "drama"),
]


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    c = Catalog(tmp_path / "control.db")
    for entry in SHELF:
        c.upsert(entry)
    yield c
    c.close()


def ids(entries: list[TitleEntry]) -> list[str]:
    return [e.id for e in entries]


def test_upsert_get_round_trips(catalog: Catalog) -> None:
    assert catalog.get("calm") == SHELF[0]
    assert catalog.get("missing") is None
    assert catalog.ids() == {e.id for e in SHELF}


def test_entries_normalise_tags_and_validate_fields() -> None:
    entry = title("x", "X", " Drama ", "drama", "SCI-FI", "")
    assert entry.tags == ("drama", "sci-fi")
    for bad in [
        dict(id="../etc"),
        dict(name=" "),
        dict(duration_s=-1.0),
        dict(poster="/abs.jpg"),
        dict(tags=("a\x00b",)),
    ]:
        fields = dict(id="x", name="X", duration_s=1.0, tags=(), poster=None) | bad
        with pytest.raises(ValueError):
            TitleEntry(**fields, renditions=(), updated_at=T0)


def test_rendition_from_an_origin_manifest() -> None:
    manifest_rendition = {
        "name": "audio",
        "kind": "audio",
        "codecs": "mp4a.40.2",
        "bandwidth": 130_000,
        "average_bandwidth": 128_000,
        "segments": 3,
    }
    assert Rendition.from_dict(manifest_rendition) == Rendition(
        "audio", None, None, 130_000, "mp4a.40.2"
    )


def test_list_orders_by_name_and_pages_with_totals(catalog: Catalog) -> None:
    names = sorted(e.name for e in SHELF)
    page, total = catalog.list(limit=2)
    assert [e.name for e in page] == names[:2] and total == 5
    page, total = catalog.list(offset=4, limit=2)
    assert [e.name for e in page] == names[4:] and total == 5
    assert catalog.list(offset=10) == ([], 5)


def test_list_by_genre(catalog: Catalog) -> None:
    page, total = catalog.list(genre="Drama", limit=2)
    assert ids(page) == ["cafe", "storm"] and total == 3
    assert catalog.list(genre="drama", offset=2)[0][0].id == "tokyo"
    assert catalog.list(genre="western") == ([], 0)


def test_list_ties_on_name_break_by_id(catalog: Catalog) -> None:
    catalog.upsert(title("b-twin", "Twin"))
    catalog.upsert(title("a-twin", "Twin"))
    catalog.upsert(title("apple", "apple pie"))  # case does not split the order
    page, _ = catalog.list(limit=100)
    assert ids(page) == ["apple", "cafe", "calm", "storm", "a-twin", "b-twin", "xylo", "tokyo"]


@pytest.mark.parametrize(
    "kwargs", [dict(offset=-1), dict(limit=0), dict(limit=-5), dict(offset=1.5), dict(limit=True)]
)
def test_list_refuses_bad_paging(catalog: Catalog, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        catalog.list(**kwargs)


def test_list_caps_the_limit(catalog: Catalog) -> None:
    for i in range(120):
        catalog.upsert(title(f"t{i:03}", f"Title {i:03}"))
    page, total = catalog.list(limit=1000)
    assert len(page) == 100 and total == 125


def test_genres_count_titles_per_tag(catalog: Catalog) -> None:
    assert catalog.genres() == [
        ("ambient", 1),
        ("calm", 1),
        ("drama", 3),
        ("music", 1),
        ("premium", 1),
    ]


def test_search_ranks_a_name_match_above_a_tag_only_match(catalog: Catalog) -> None:
    assert ids(catalog.search("calm")) == ["calm", "storm"]


def test_search_matches_prefixes_case_and_accents(catalog: Catalog) -> None:
    assert ids(catalog.search("cal")) == ["calm", "storm"]
    assert ids(catalog.search("CAFE")) == ["cafe"]
    assert ids(catalog.search("café")) == ["cafe"]
    assert ids(catalog.search("cafe\u0301")) == ["cafe"]  # decomposed accent
    assert ids(catalog.search("東京")) == ["tokyo"]


def test_search_requires_every_word(catalog: Catalog) -> None:
    assert ids(catalog.search("storm drama")) == ["storm"]
    assert ids(catalog.search("storm music")) == []


def test_search_limit(catalog: Catalog) -> None:
    assert len(catalog.search("drama", limit=2)) == 2
    with pytest.raises(ValueError):
        catalog.search("drama", limit=0)


def test_update_replaces_tags_in_search_and_genres(catalog: Catalog) -> None:
    catalog.upsert(title("xylo", "Xylophone Nights", "jazz", updated_at=T0 + 1))
    assert catalog.search("music") == []
    assert ids(catalog.search("jazz")) == ["xylo"]
    assert ("music", 1) not in catalog.genres() and ("jazz", 1) in catalog.genres()
    assert catalog.get("xylo").updated_at == T0 + 1


def test_remove_drops_from_search_list_and_genres(catalog: Catalog) -> None:
    assert catalog.remove("xylo")
    assert not catalog.remove("xylo")
    assert catalog.search("xylophone") == []
    assert catalog.list()[1] == 4
    assert "music" not in dict(catalog.genres())


def test_catalog_persists_and_shares_a_file_with_accounts(tmp_path: Path) -> None:
    db = tmp_path / "control.db"
    catalog, accounts = Catalog(db), Accounts(db, scrypt=ScryptParams(n=2**8))
    catalog.upsert(SHELF[0])
    accounts.create("a@example.com", "password", now=T0)
    catalog.close()
    accounts.close()
    reopened = Catalog(db)
    assert ids(reopened.search("gradient")) == ["calm"]
    reopened.close()


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("", []),
        ("   ", []),
        ('"', []),
        ("'; DROP TABLE titles; --", []),
        ("%", []),
        ("_", []),
        ("*", []),
        ("(", []),
        ('"calm', ["calm", "storm"]),
        ("calm'", ["calm", "storm"]),
        ("calm*", ["calm", "storm"]),
        ("-calm", ["calm", "storm"]),
        ("^calm", ["calm", "storm"]),
        ("(calm", ["calm", "storm"]),
        ("\x00calm", ["calm", "storm"]),
        ("\u202ecalm", ["calm", "storm"]),  # right-to-left override
        ("calm\u0301", ["calm", "storm"]),  # a combining mark with nothing to combine with
        ("🎻 calm 🎻", ["calm", "storm"]),
        ("calm + gradient", ["calm"]),
        ("tags:drama", []),  # operators are words, and every word must match
        ("calm OR music", []),
        ("calm AND", []),
        ("NEAR(calm gradient)", []),
    ],
)
def test_search_treats_syntax_as_text(catalog: Catalog, q: str, expected: list[str]) -> None:
    assert ids(catalog.search(q)) == expected


def test_fts_query_quotes_and_caps_tokens() -> None:
    assert fts_query("") is None
    assert fts_query("'; --") is None
    assert fts_query('Calm "x" OR y') == '"Calm"* AND "x"* AND "OR"* AND "y"*'
    assert fts_query(" ".join("w" * 100 for _ in range(20))) == " AND ".join(
        ['"' + "w" * 64 + '"*'] * 10
    )


@pytest.fixture(scope="module")
def shared_catalog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Catalog]:
    c = Catalog(tmp_path_factory.mktemp("catalog") / "control.db")
    for entry in SHELF:
        c.upsert(entry)
    yield c
    c.close()


HOSTILE = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),  # any scalar value: NUL, controls, marks, RTL, emoji
        st.sampled_from(list("\"'*%_;-:()^+.{}[]\\/")),
    )
) | st.lists(
    st.sampled_from(["NEAR", "OR", "AND", "NOT", "-", "name:", "(", ")", '"', "*", "calm", "é"])
).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(q=HOSTILE)
def test_search_never_raises_and_returns_only_real_entries(shared_catalog: Catalog, q: str) -> None:
    results = shared_catalog.search(q)
    assert {e.id for e in results} <= {e.id for e in SHELF}
    assert len(results) == len({e.id for e in results})
