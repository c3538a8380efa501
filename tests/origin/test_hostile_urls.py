"""Generated request targets against a running origin: never a 5xx, never a byte outside a title."""

import socket
import subprocess
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import TITLE, free_port, streamcdn_cmd, wait_for_port

SEGMENT_CHARS = st.sampled_from(
    [
        "..",
        ".",
        "",
        "%2e%2e",
        "%2f",
        "%00",
        "%5c",
        "etc",
        "passwd",
        "360p",
        "seg_00000.m4s",
        "manifest.json",
        TITLE,
        "~",
        "%",
        "%zz",
    ]
)


@pytest.fixture(scope="module")
def origin(tmp_path_factory, store):
    """One origin process for the whole module (hypothesis runs many examples per test)."""
    port = free_port()
    proc = subprocess.Popen(
        streamcdn_cmd("serve", "origin", "--store", str(store.root), "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    yield port
    proc.terminate()
    proc.wait(timeout=15)


def get(port: int, target: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send the request exactly as given (control bytes and all) and read the whole answer."""
    lines = [f"GET {target} HTTP/1.1", "Host: origin", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(
        st.one_of(
            SEGMENT_CHARS,
            st.text(
                alphabet=st.characters(codec="ascii", exclude_characters=" \r\n#?"), max_size=12
            ),
        ),
        min_size=0,
        max_size=6,
    )
)
def test_generated_paths_never_crash_or_escape(origin: int, store, parts: list[str]) -> None:
    target = f"/titles/{TITLE}/" + "/".join(parts)
    status, body = get(origin, target)
    assert status < 500, target
    assert b"root:" not in body
    if status == 200:
        rel = "/".join(parts)
        assert unquote(rel) in store.manifest(TITLE)["files"] or unquote(rel) == "manifest.json"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    value=st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=60)
)
def test_generated_range_and_validator_headers_never_crash(origin: int, value: str) -> None:
    for name in ("Range", "If-None-Match", "If-Range"):
        status, _ = get(
            origin,
            f"/titles/{TITLE}/360p/seg_00000.m4s",
            {name: value, "Range": "bytes=0-9"} if name == "If-Range" else {name: value},
        )
        assert status in (200, 206, 304, 400, 416), (name, value, status)


def test_percent_encoded_title_ids_are_checked_after_decoding(origin: int) -> None:
    assert get(origin, f"/titles/{quote('../' + TITLE)}/master.m3u8")[0] in (400, 404)
