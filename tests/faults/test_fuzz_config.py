"""Mutated deployment files: a one-line ConfigError or a sound Deployment, nothing else.

Every case starts from examples/deployment.toml. Structure-aware cases change its
parsed document (any key set to any TOML value: wrong types, huge integers, NaN, dates,
nested tables, unicode and newlines in strings; keys deleted; unknown keys added, some
with newlines in their names; tables and list items duplicated) and hand it to
``config.parse``; text cases change the file itself (lines deleted, repeated or cut,
characters and bytes inserted) and read it with ``config.load``. Each gives a
ConfigError whose message is one line naming the file, or a Deployment whose
cross-references hold.
"""

from __future__ import annotations

import copy
import datetime as dt
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from streamcdn.config import ConfigError, Deployment, load, parse
from tests.faults.fuzzing import fuzz

EXAMPLE = Path(__file__).parents[2] / "examples" / "deployment.toml"
TEXT = EXAMPLE.read_text()
DOC = tomllib.loads(TEXT)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key and list index in the document, parents before children."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, dict | list):
            yield from paths(v, (*prefix, k))


def _at(doc: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        doc = doc[k]
    return doc


PATHS = list(paths(DOC))
TOML_SCALARS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        ["", "origin", "isp-a", "ix", "a1", "http://", "http://[::1", "http://h:99999",
         "https://h/x?q=1", "redis://x", "0.0.0.0/0", "10.0.0.1/8", "::/0", "1GB", "-1MB",
         "1e999GB", "9" * 400 + "MB", "k1:", ":secret", "k1:short", "a\nb", "\u202e", "\x00"]
    ),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.datetimes(timezones=st.none() | st.just(dt.UTC)),
    st.dates(),
    st.times(),
)  # fmt: skip
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
DOC_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.sampled_from(PATHS), TOML_VALUES),
        st.tuples(st.just("delete"), st.sampled_from(PATHS)),
        st.tuples(
            st.just("add"),
            st.sampled_from([(), *(p for p in PATHS if isinstance(_at(DOC, p), dict))]),
            st.one_of(st.sampled_from(["polcy", "a\nb", "", "keys", "url"]), st.text(max_size=8)),
            TOML_VALUES,
        ),
        st.tuples(
            st.just("dup"), st.sampled_from([p for p in PATHS if isinstance(_at(DOC, p), list)])
        ),
    ),
    min_size=1,
    max_size=4,
)


def apply(ops: list[tuple[Any, ...]]) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    for op, path, *args in ops:
        try:
            parent = _at(doc, path[:-1]) if op != "add" else _at(doc, path)
            if op == "set":
                parent[path[-1]] = args[0]
            elif op == "delete":
                del parent[path[-1]]
            elif op == "add" and isinstance(parent, dict):
                parent[args[0]] = args[1]
            elif op == "dup" and isinstance(parent[path[-1]], list) and parent[path[-1]]:
                parent[path[-1]].append(copy.deepcopy(parent[path[-1]][0]))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier op moved the ground: this one does nothing
    return doc


def check(path: Path, read: Any) -> None:
    """``read()`` gives a ConfigError of one line naming ``path``, or a sound Deployment."""
    try:
        d = read()
    except ConfigError as exc:
        message = str(exc)
        assert str(path) in message and "\n" not in message and "\r" not in message, message
        return
    assert isinstance(d, Deployment)
    names = [s.name for s in d.sites]
    assert len(set(names)) == len(names)
    assert all(f in names for s in d.sites for f in s.fallbacks)
    assert d.default_site in names or not names
    ids = [a.id for a in d.appliances]
    assert len(set(ids)) == len(ids)
    for a in d.appliances:
        assert a.site in names and a.capacity_mbps > 0 and a.upstreams
        assert 0 < a.port <= 65535
    assert 0 < d.heartbeat_interval_s <= 60 and 1 <= d.down_after_missed <= 100


@fuzz(1500)
@given(ops=DOC_OPS)
@example(ops=[("add", ("steering",), "a\nb", 1)])  # was: a message of two lines
def test_mutated_deployment_documents_give_a_one_line_config_error_or_a_sound_deployment(
    ops: list[tuple[Any, ...]],
) -> None:
    check(EXAMPLE, lambda: parse(apply(ops), EXAMPLE))


TEXT_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("delete"), st.integers(0, 200)),
        st.tuples(st.just("dup"), st.integers(0, 200)),
        st.tuples(st.just("chars"), st.integers(0, 5000), st.text(max_size=6)),
        st.tuples(st.just("bytes"), st.integers(0, 5000), st.binary(min_size=1, max_size=3)),
        st.tuples(st.just("cut"), st.integers(0, 5000)),
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as d:
        yield Path(d)


@fuzz(1000)
@given(ops=TEXT_OPS)
def test_mutated_deployment_files_give_a_one_line_config_error_or_a_sound_deployment(
    workdir: Path, ops: list[tuple[Any, ...]]
) -> None:
    data = TEXT.encode()
    for op, at, *args in ops:
        lines = data.split(b"\n")
        if op == "delete":
            del lines[at % len(lines)]
            data = b"\n".join(lines)
        elif op == "dup":
            i = at % len(lines)
            data = b"\n".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
        elif op in ("chars", "bytes"):
            extra = args[0] if op == "bytes" else args[0].encode("utf-8", "surrogatepass")
            i = at % (len(data) + 1)
            data = data[:i] + extra + data[i:]
        else:
            data = data[: at % (len(data) + 1)]
    path = workdir / "deployment.toml"
    path.write_bytes(data)
    check(path, lambda: load(path))
