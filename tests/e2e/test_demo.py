"""`streamcdn demo --quick` as a user runs it: up, playable, Ctrl-C, and quick the second time."""

import json
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import m3u8
import pytest

from tests.conftest import ffmpeg_read_all, free_ports, streamcdn_cmd


@pytest.fixture
def start_demo():
    """Start `streamcdn demo --quick`; whatever a failing test leaves running is stopped
    with SIGTERM, which makes the demo stop its own services too."""
    procs: list[subprocess.Popen[str]] = []

    def start(data: Path, port_base: int) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            streamcdn_cmd("demo", "--data", str(data), "--port-base", str(port_base), "--quick"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for_demo_json(data: Path, proc: subprocess.Popen[str], timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"demo exited early with {proc.returncode}: {proc.stderr.read()[-800:]}")
        path = data / "demo.json"
        if path.exists():
            info = json.loads(path.read_text())
            if info["pid"] == proc.pid:
                return info
        time.sleep(0.2)
    pytest.fail(f"demo did not come up within {timeout_s} s")


def interrupt(proc: subprocess.Popen[str], signum: int = signal.SIGINT) -> str:
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode in (0, 130), err[-800:]
    assert "Traceback" not in err
    return err


def play_one_segment(control: str, account: dict) -> int:
    """Log in, play a title, fetch the first segment of its first variant; its size."""

    def post(url: str, body: object, token: str | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.load(r)

    token = post(f"{control}/sessions", account)["token"]
    played = post(f"{control}/play/calm", {}, token)
    master = m3u8.load(played["manifest_url"])
    media = m3u8.load(master.playlists[0].absolute_uri)
    with urllib.request.urlopen(media.segments[0].absolute_uri, timeout=10) as r:
        return len(r.read())


def health(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return json.load(r)


def test_demo_serves_signed_titles_through_the_appliance_tree(tmp_path: Path, start_demo) -> None:
    data, port_base = tmp_path / "demo", free_ports(23)
    proc = start_demo(data, port_base)
    info = wait_for_demo_json(data, proc, timeout_s=240)
    assert sorted(info["titles"]) == ["calm", "life", "testsrc"]
    apps = {a["id"]: a for a in info["appliances"]}
    assert {a: v["site"] for a, v in apps.items()} == {
        "a1": "isp-a",
        "a2": "isp-a",
        "ix1": "ix",
    }
    for title in info["titles"].values():
        out = ffmpeg_read_all(title["play"]["a1"])
        assert out.returncode == 0, out.stderr[-800:]
    # a1 filled from its parent ix1, which filled from the origin.
    a1, ix1 = health(apps["a1"]["url"]), health(apps["ix1"]["url"])
    assert a1["tiers"]["memory"]["objects"] > 10 and ix1["tiers"]["memory"]["objects"] > 10
    assert health(apps["a2"]["url"])["tiers"]["memory"]["objects"] == 0
    # Every appliance heartbeats to steering, which steers a local viewer into isp-a.
    deadline = time.monotonic() + 10
    while True:
        with urllib.request.urlopen(f"{info['steering']}/fleet", timeout=5) as r:
            fleet = json.load(r)
        if {a["id"]: a["status"] for a in fleet["appliances"]} == dict.fromkeys(apps, "up"):
            break
        assert time.monotonic() < deadline, fleet
        time.sleep(0.2)
    with urllib.request.urlopen(f"{info['steering']}/steer?title=calm&client_ip=127.0.0.1") as r:
        steer = json.load(r)
    assert steer["site"] == "isp-a" and {a["id"] for a in steer["appliances"][:2]} == {"a1", "a2"}
    # The demo account plays through control: a session master, then a segment via a1.
    assert play_one_segment(info["control"], info["account"]) > 0
    assert set(info["vlc"]) == set(info["titles"])
    err = interrupt(proc)
    assert "vlc http://" in err and "/s/" in err  # the demo told the user how to play a title
    services = [
        info["origin"],
        info["steering"],
        info["control"],
        *(a["url"] for a in apps.values()),
    ]
    for url in services:
        with pytest.raises(OSError):  # every service was stopped with the demo
            urllib.request.urlopen(f"{url}/health", timeout=2)
    manifests = {p: p.stat().st_ino for p in (data / "store").glob("*/manifest.json")}
    assert len(manifests) == 3

    started = time.monotonic()
    proc = start_demo(data, port_base)
    info = wait_for_demo_json(data, proc, timeout_s=30)
    assert time.monotonic() - started < 15  # nothing is made or ingested again
    # The appliances restarted warm: a1's disk tier still holds what it served.
    assert health(apps["a1"]["url"])["tiers"]["disk"]["objects"] > 10
    interrupt(proc, signal.SIGTERM)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{info['origin']}/health", timeout=2)
    assert {p: p.stat().st_ino for p in manifests} == manifests
