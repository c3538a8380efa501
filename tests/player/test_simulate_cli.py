"""`streamcdn simulate`: the table, the JSON shape, and one-line errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import streamcdn_cmd


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(streamcdn_cmd(*args), capture_output=True, text=True, timeout=120)


def test_json_has_every_rule_and_the_default(tmp_path: Path) -> None:
    traces = tmp_path / "traces"
    traces.mkdir()
    for i, mbps in enumerate((0.8, 3.0, 12.0)):
        (traces / f"t{i}.txt").write_text("".join(f"{s}\t{mbps}\n" for s in range(60)))
    res = run("simulate", "--traces", str(traces), "--json")
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["default"] == "ours"
    for rule in ("throughput", "bba", "bola-e", "robust-mpc", "dynamic", "ours"):
        r = result[rule]
        assert r["sessions"] == 3 and r["avg_kbps"] > 0 and 0 <= r["rebuffer_ratio"] < 1
        assert {"qoe_lin", "switches_per_min", "startup_s"} <= set(r)
    table = run("simulate", "--traces", str(traces), "--abr", "ours,bba")
    assert table.returncode == 0 and "ours" in table.stdout + table.stderr


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("not a trace\n")
    for args, fragment in (
        (("--traces", str(tmp_path / "missing")), "not a folder"),
        (("--traces", str(tmp_path)), "bad.txt: line 1"),
        (("--traces", str(tmp_path), "--abr", "nope"), "unknown ABR rule 'nope'"),
    ):
        res = run("simulate", *args)
        assert res.returncode == 1 and fragment in res.stderr and res.stderr.count("\n") == 1


def test_play_of_an_unreachable_url_is_one_clear_error() -> None:
    res = run("play", "http://127.0.0.1:9/titles/x/master.m3u8", "--duration", "1")
    assert res.returncode == 1 and res.stderr.count("\n") == 1
    assert "played nothing" in res.stderr and "connection" in res.stderr
