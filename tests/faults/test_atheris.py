"""Coverage-guided fuzzing (atheris) of the appliance's own HTTP head parsing against
aiohttp's parser, and of signed tokens and heartbeat signatures: see
tests/faults/atheris_front.py and atheris_tokens.py for what each input must satisfy.

libFuzzer runs in a process of its own (it exits when done), from a seed corpus of
requests a player, a browser and an attacker send, with a dictionary of the tokens the
parsers look for. A fixed seed makes a run repeatable; a failing input is kept under
pytest's tmp_path, and its bytes are in the assertion message.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

RUNS = 300_000
ROOT = Path(__file__).resolve().parents[2]
SEEDS = [
    b"GET /titles/t1/360p/seg_00001.m4s HTTP/1.1\r\nHost: a\r\nRange: bytes=0-99\r\n\r\n",
    b"HEAD /s/abc_DEF-1/titles/t1/master.m3u8 HTTP/1.1\r\nHost: a\r\nConnection: keep-alive"
    b'\r\nIf-None-Match: "x"\r\n\r\n',
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.0\r\nHost: a\r\n\r\n",
    b"POST /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nRange: bytes=0-1\r\n continued\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k1.123.abc\r\n"
    b'If-Range: "e"\r\n\r\n',
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nRange : bytes=0-1\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\r\nX-Any: \x01\r\n\r\n",
    b"GET /titles/t1/a.m4s HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
    # What this fuzzer found, kept as seeds (as OSS-Fuzz keeps its reproducers): a bare LF
    # before a body header, refused quickly without reading the body; an NBSP before
    # "close", and before a Range, which str.strip() took for blank space where aiohttp
    # (decoding the bytes differently) did not.
    b"GET /titles/t1/a.m4s HTTP/1.1\r\n\xb8\x90\x8c\nContent-Length: 5\r\n\r\n",
    b"GET /titles/t1/s HTTP/1.1\r\nHost: a\r\nConnection:\xa0close\r\n\r\n",
    b"GET /titles/t1/s HTTP/1.1\r\nHost: a\r\nRange:\xa0bytes=0-99\r\n\r\n",
]
DICTIONARY = [
    b"\r\n", b"\r\n\r\n", b"\n", b"\r", b": ", b":", b"\t", b",", b" HTTP/1.1", b" HTTP/1.0",
    b"GET ", b"HEAD ", b"POST ", b"/titles/", b"/s/", b"Host: ", b"Connection: ", b"close",
    b"keep-alive", b"upgrade", b"Content-Length: ", b"Transfer-Encoding: ", b"chunked",
    b"Expect: ", b"100-continue", b"Upgrade: ", b"Range: ", b"bytes=0-", b"If-None-Match: ",
    b"If-Range: ", b"Authorization: Bearer ", b"\xa0", b"\x0b", b"\x0c", b"\x85", b"\x1c",
    b"W/", b'"3f2a-1c"', b"bytes=", b"*", b"\xd9\xa3",
]  # fmt: skip


def dictionary_entry(token: bytes) -> str:
    return '"' + "".join(f"\\x{b:02x}" for b in token) + '"'


def fuzz(harness: str, tmp_path: Path, seeds: Path, extra: tuple[str, ...] = ()) -> None:
    """Run ``tests/faults/{harness}.py`` under libFuzzer for RUNS inputs from ``seeds``;
    fails with the input's exception if any input raised."""
    corpus, crashes = tmp_path / "corpus", tmp_path / "crashes"
    corpus.mkdir()
    crashes.mkdir()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            f"tests.faults.{harness}",
            str(corpus),  # libFuzzer adds what it finds to the first directory
            str(seeds),
            f"-runs={RUNS}",
            "-seed=1",
            "-max_len=4096",
            f"-artifact_prefix={crashes}/",
            "-max_total_time=240",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    # atheris prints the exception the input raised just after this banner.
    output = res.stdout + res.stderr
    failure = re.search(r"=== Uncaught Python exception: ===\n(.*)", output)
    assert res.returncode == 0, failure.group(1) if failure else output[-3000:]
    done = re.search(r"^Done (\d+) runs", res.stderr, re.MULTILINE)
    assert done is not None and int(done.group(1)) == RUNS, res.stderr[-2000:]
    coverage = re.findall(r"DONE\s+cov: (\d+) ft: (\d+)", res.stderr)
    print(f"atheris {harness}: {RUNS} inputs, 0 failures; coverage {coverage}")


def test_the_fast_path_reads_every_head_as_aiohttp_does(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    for i, seed in enumerate(SEEDS):
        (seeds / f"{i:02d}").write_bytes(seed)
    tokens = tmp_path / "http.dict"
    tokens.write_text("\n".join(dictionary_entry(t) for t in DICTIONARY) + "\n")
    fuzz("atheris_front", tmp_path, seeds, (f"-dict={tokens}",))


def test_no_token_or_signature_crashes_or_passes_unsigned(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds"
    subprocess.run(
        [sys.executable, "-m", "tests.faults.atheris_tokens", "--write-seeds", str(seeds)],
        check=True,
        capture_output=True,
        timeout=60,
        cwd=ROOT,
    )
    assert len(list(seeds.iterdir())) == 3
    fuzz("atheris_tokens", tmp_path, seeds)
