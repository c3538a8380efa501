"""`streamcdn serve origin` as its own process, read end to end by a real HLS client (ffmpeg)."""

import json
import signal
import subprocess
import urllib.request

from tests.conftest import TITLE, ffmpeg_read_all, free_port, streamcdn_cmd, wait_for_port


def test_ffmpeg_plays_a_whole_title_from_the_origin(origin_process: str) -> None:
    url = f"{origin_process}/titles/{TITLE}/master.m3u8"
    out = ffmpeg_read_all(url)
    assert out.returncode == 0, out.stderr[-800:]
    # Every rendition was opened and read to the end: 10 s of each video rung and of audio.
    assert out.stderr.count("Opening '") >= 3 * 3
    assert "time=00:00:09" in out.stderr or "time=00:00:10" in out.stderr


def test_the_origin_stops_cleanly_on_sigterm(store) -> None:
    port = free_port()
    proc = subprocess.Popen(
        streamcdn_cmd("serve", "origin", "--store", str(store.root), "--port", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_port(port, proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        assert json.load(r)["status"] == "ok"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert "listening" in messages and "stopped" in messages  # structured JSON logs
    assert any(e["msg"] == "request" and e["path"] == "/health" for e in logs)
    assert "Traceback" not in err
