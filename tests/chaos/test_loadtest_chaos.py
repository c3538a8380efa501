"""`streamcdn loadtest --chaos kill-appliance:every=7s` against a stack of real processes,
with the demo's supervisor restarting what is killed: the report counts the kills with
their times and targets, and the players ride through them by failing over.

A player with a full buffer asks for one segment every 4 s, so an appliance must stay
dead longer than that for every player to notice: the supervisor waits 4 s."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from origin.store import TitleStore
from streamcdn.demo import Supervisor
from tests.conftest import free_port, publish_sample, streamcdn_cmd
from tests.control.conftest import PASSWORD, deployment_text

PLAYERS = 4
DURATION_S = 21  # kills at 7 and 14 s; the one at 14 s is back before the end
EVERY_S = 7
RESTART_DELAY_S = 4.0
FAILOVER_ERRORS = {"connection", "truncated", "timeout"}  # what a killed appliance looks like


@pytest.fixture(scope="module")
def long_store(tmp_path_factory: pytest.TempPathFactory) -> TitleStore:
    # Longer than the test plus a full buffer: players are mid-title at every kill.
    return publish_sample(
        tmp_path_factory.mktemp("chaos"), "long", duration_s=60.0, size=(320, 180)
    )


@pytest.fixture
def stack(tmp_path: Path, long_store: TitleStore) -> Iterator[tuple[Path, str, list[str]]]:
    """Origin, steering, appliances a1 (the viewers' site) and ix1 (its fallback) and
    control, each its own process under the demo's supervisor."""
    ports = {name: free_port() for name in ("origin", "steering", "control", "a1", "ix1")}
    config = tmp_path / "deploy.toml"
    config.write_text(deployment_text(ports, tmp_path, None))
    said: list[str] = []
    supervisor = Supervisor(said.append, delay_s=RESTART_DELAY_S)
    stop = threading.Event()
    watcher = threading.Thread(target=lambda: [supervisor.check() for _ in iter(lambda: stop.wait(0.2), True)])  # fmt: skip
    try:
        url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        common = ["--config", str(config), "--no-access-log"]
        supervisor.start("origin", ["origin", *common, "--store", str(long_store.root)], url["origin"], tmp_path / "origin.log")  # fmt: skip
        supervisor.start("steering", ["steering", *common], url["steering"], tmp_path / "steering.log")  # fmt: skip
        for a in ("a1", "ix1"):
            supervisor.start(a, ["appliance", *common, "--id", a], url[a], tmp_path / f"{a}.log")
        supervisor.start("control", ["control", *common], url["control"], tmp_path / "control.log")  # fmt: skip
        watcher.start()
        deadline = time.monotonic() + 15
        while not catalog_lists_a_title(url["control"]):
            assert time.monotonic() < deadline, "control's catalog stayed empty"
            time.sleep(0.1)
        yield config, url["control"], said
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(10)
        supervisor.stop_all()


def catalog_lists_a_title(control: str) -> bool:
    try:
        with urllib.request.urlopen(f"{control}/catalog", timeout=2) as r:
            return json.load(r)["total"] > 0
    except OSError:
        return False


def test_loadtest_counts_the_kills_and_the_players_fail_over(
    stack: tuple[Path, str, list[str]],
) -> None:
    config, control, said = stack
    run = subprocess.run(
        streamcdn_cmd(
            "loadtest", "--control", control, "--players", str(PLAYERS),
            "--duration", str(DURATION_S), "--password", PASSWORD, "--config", str(config),
            "--chaos", f"kill-appliance:every={EVERY_S}s", "--json",
        ),
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    chaos = result["chaos"]
    assert chaos["spec"] == [f"kill-appliance:every={EVERY_S}s"]
    kills = chaos["actions"]
    assert [round(k["t_s"]) for k in kills] == [EVERY_S, 2 * EVERY_S], kills
    assert chaos["done"] == {"kill-appliance": 2}
    # Every player starts on a1 (steering's pick for 127.0.0.1), so a1 goes first; then
    # they are all on ix1, which goes next (a1 is back by then, restarted).
    assert [k["targets"] for k in kills] == [["a1"], ["ix1"]], kills
    assert all(k["ok"] and k["phase"] == "start" for k in kills)
    assert kills[0]["why"] == f"most players ({PLAYERS})"
    assert sum("exited with -9" in line for line in said) == 2, said
    assert chaos["cleared"] == {"a1": "cleared", "ix1": "cleared"}  # both back and reset
    # What the players felt: nothing before the first kill, failovers after each, and
    # never a failed play, a stall or a wrong byte.
    assert chaos["before"]["failovers"] == chaos["before"]["errors"] == 0
    for k in kills:
        assert k["felt"]["failovers"] >= 1, kills
        assert k["felt"]["player_errors"] == 0 and k["felt"]["stalls"] == 0, kills
    assert set(result["errors"]) <= FAILOVER_ERRORS, result["errors"]
    assert result["qoe"]["stalls"] == 0 and result["qoe"]["failovers"] >= 2
    assert result["qoe"]["sessions"] == PLAYERS  # one play each: nobody had to start over
