"""Benchmark: every ABR rule on each trace family with the Pensieve video, by QoE.

The claim: on every family, the default rule's mean QoE_lin is at least 1.05x the best other
rule's (where that is negative: higher by 5% of its magnitude), with a rebuffer ratio no
higher than that same best other rule's. The best other rule is the one with the highest
mean QoE_lin.

Each rule plays the Pensieve video (6 rungs, 300-4300 kbps, 48 x 4 s, constant bit rate)
once per trace, from the trace's start, in the simulator of player/simulate.py; the figures
are means over a family's sessions (player/qoe.py defines them).

    python bench/abr.py [--traces ../shared/traces] [--families norway-3g,ghent-4g,fcc] [--json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.host import machine
from player.simulate import run_simulation

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
FAMILIES = "norway-3g,ghent-4g,fcc"
MARGIN = 0.05  # the default must beat the best other rule's QoE_lin by 5% of its magnitude


def verdict(result: dict[str, Any]) -> dict[str, Any]:
    """PASS/FAIL of one family's run_simulation result, and against which rule."""
    default = result["default"]
    others = {name: m for name, m in result.items() if name not in ("default", default)}
    if default not in result or not others:
        return {"pass": False, "best_other": None, "why": "needs the default and another rule"}
    best = max(others, key=lambda name: others[name]["qoe_lin"])
    ours, theirs = result[default], others[best]
    needed = theirs["qoe_lin"] + MARGIN * abs(theirs["qoe_lin"])
    qoe_ok = ours["qoe_lin"] >= needed
    rebuffer_ok = ours["rebuffer_ratio"] <= theirs["rebuffer_ratio"]
    return {
        "pass": qoe_ok and rebuffer_ok,
        "best_other": best,
        "why": (
            f"{default} QoE_lin {ours['qoe_lin']:.3f} vs needed {needed:.3f} "
            f"({best} {theirs['qoe_lin']:.3f}): {'ok' if qoe_ok else 'short'}; "
            f"rebuffer {ours['rebuffer_ratio']:.4f} vs {theirs['rebuffer_ratio']:.4f}: "
            f"{'ok' if rebuffer_ok else 'higher'}"
        ),
    }


def table(family: str, result: dict[str, Any], elapsed_s: float) -> Table:
    default = result["default"]
    rules = [name for name in result if name != "default"]
    sessions = result[rules[0]]["sessions"]
    out = Table(
        title=f"{family}: {sessions} traces x {len(rules)} rules in {elapsed_s:.1f} s "
        "(mean per session; * = default)"
    )
    for column in ("rule", "QoE lin", "rebuffer %", "avg kbps", "switches/min", "startup s"):
        out.add_column(column, justify="left" if column == "rule" else "right")
    for name in rules:
        m = result[name]
        out.add_row(
            f"{name} *" if name == default else name,
            f"{m['qoe_lin']:.3f}",
            f"{m['rebuffer_ratio'] * 100:.2f}",
            f"{m['avg_kbps']:.0f}",
            f"{m['switches_per_min']:.2f}",
            f"{m['startup_s']:.2f}",
            style="bold" if name == default else None,
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=Path, default=TRACES, help="folder of trace families")
    parser.add_argument("--families", default=FAMILIES, help="comma-separated sub-folders")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    missing = [f for f in families if not (args.traces / f).is_dir()]
    if missing:
        parser.error(f"--families: no folder {args.traces / missing[0]}")
    console = Console(stderr=args.json)
    info = {**machine(), "command": shlex.join(["python", *sys.argv])}
    console.print(
        f"{info['cores']} cores ({info['cpu_model']}), Python {info['python']}", soft_wrap=True
    )
    console.print(f"command: {info['command']}", soft_wrap=True)

    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    verdicts: dict[str, dict[str, Any]] = {}
    for family in families:
        family_start = time.perf_counter()
        results[family] = run_simulation(["all"], args.traces / family, "pensieve")
        elapsed = time.perf_counter() - family_start
        verdicts[family] = verdict(results[family])
        if not args.json:
            console.print(table(family, results[family], elapsed))
    runtime_s = time.perf_counter() - started

    for family, v in verdicts.items():
        console.print(
            f"{family}: {v['why']}: " + ("PASS" if v["pass"] else "FAIL"),
            style="green" if v["pass"] else "red",
            soft_wrap=True,
        )
    console.print(f"runtime: {runtime_s:.1f} s", soft_wrap=True)
    if args.json:
        report = {**info, "runtime_s": runtime_s, "families": results, "verdicts": verdicts}
        print(json.dumps(report, indent=2))
    return 0 if all(v["pass"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
