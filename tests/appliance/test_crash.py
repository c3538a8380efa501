"""`kill -9` of an appliance in the middle of fills: after restart, nothing partial is visible
and the index matches the disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from appliance.objects import decode_header
from origin.store import TitleStore
from streamcdn.digest import digest_bytes
from tests.appliance.conftest import KEY
from tests.conftest import TITLE, free_port, streamcdn_cmd, wait_for_port

ADMIN = "admin-key-0123456789"


def start_appliance(cache: Path, port: int, origin: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        streamcdn_cmd(
            "serve",
            "appliance",
            "--id",
            "a1",
            "--port",
            str(port),
            "--cache-dir",
            str(cache),
            "--upstream",
            origin,
            "--key",
            "k1:test-signing-key-0123456789",
            "--admin-key",
            ADMIN,
            "--disk",
            "1GB",
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, proc)
    return proc


def http_json(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode() if body else None,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def test_kill_9_during_fills_leaves_no_partial_object(
    tmp_path: Path, store: TitleStore, origin_process: str
) -> None:
    assert KEY.key_id == "k1"
    cache, port = tmp_path / "cache", free_port()
    proc = start_appliance(cache, port, origin_process)
    base = f"http://127.0.0.1:{port}"
    http_json(f"{base}/admin/fill", {"titles": [TITLE], "rate_mbps": 20})  # slow: many writes
    time.sleep(0.4)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    on_disk_before = list((cache / "objects").glob("*/*.obj"))

    proc = start_appliance(cache, port, origin_process)
    try:
        health = http_json(f"{base}/health")
        objects = sorted((cache / "objects").glob("*/*.obj"))
        assert list((cache / "tmp").iterdir()) == []  # partial writes were swept
        assert health["tiers"]["disk"]["objects"] == len(objects)
        assert len(on_disk_before) >= 1  # the kill did land in the middle of the fill
        files = store.manifest(TITLE)["files"]
        for path in objects:  # every visible object is whole and true
            raw = path.read_bytes()
            meta, offset = decode_header(raw)
            body = raw[offset:]
            rel = meta.key.removeprefix(f"titles/{TITLE}/")
            assert len(body) == meta.size
            assert (
                digest_bytes(body) == meta.digest == files.get(rel, {}).get("xxh3-128", meta.digest)
            )
    finally:
        proc.terminate()
        proc.wait(timeout=15)
