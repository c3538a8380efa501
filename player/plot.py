"""PNG plots of a play session and of a load test (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from player.session import PlaySummary


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_session(summary: PlaySummary | dict[str, Any], path: Path | str) -> Path:
    """Bitrate and measured throughput (top) and buffer level (bottom) over the session,
    one point per segment as it arrived; stalls are shaded. Takes a summary or its JSON."""
    data = summary.to_json() if isinstance(summary, PlaySummary) else summary
    timeline = data.get("timeline", [])
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    try:
        t = [s["time_s"] for s in timeline]
        top.step(t, [s["kbps"] for s in timeline], where="pre", label="bitrate (rung)")
        top.plot(t, [s["throughput_kbps"] for s in timeline], ".", alpha=0.6, label="throughput")
        for kbps in data.get("ladder_kbps", []):
            top.axhline(kbps, color="grey", linewidth=0.5, alpha=0.4)
        top.set_ylabel("kbit/s")
        top.set_yscale("symlog", linthresh=100)
        top.legend(loc="upper left")
        top.set_title(
            f"{data.get('title') or 'session'} ({data.get('rule')}): QoE lin "
            f"{data.get('qoe_lin')}, {data.get('stalls')} stalls, {data.get('switches')} switches"
        )
        bottom.plot(t, [s["buffer_s"] for s in timeline], marker=".", label="buffer after arrival")
        for s in timeline:
            if s["stall_s"] > 0:
                bottom.axvspan(s["time_s"] - s["stall_s"], s["time_s"], color="red", alpha=0.2)
        bottom.set_ylabel("buffer (s)")
        bottom.set_xlabel("session time (s)")
        bottom.legend(loc="upper left")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out


def plot_loadtest(result: dict[str, Any], path: Path | str) -> Path:
    """Egress and active players over time (top); per-play mean bitrate and QoE (bottom)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    try:
        samples = result.get("timeline", [])
        t = [s["t"] for s in samples]
        top.plot(t, [s["egress_mbps"] for s in samples], label="egress (Mbit/s)")
        top.set_xlabel("time (s)")
        top.set_ylabel("Mbit/s")
        players = top.twinx()
        players.plot(t, [s["players"] for s in samples], color="tab:orange", label="players")
        players.set_ylabel("players playing")
        top.set_title(
            f"{result.get('players')} players ({result.get('abr')}): "
            f"{result.get('egress_mbps')} Mbit/s, {result.get('cpu', {}).get('cores_used')} cores"
        )
        played = [s for s in result.get("sessions", []) if s.get("segments")]
        bottom.scatter(
            [s["avg_kbps"] for s in played],
            [s["qoe_lin"] for s in played],
            c=[s["stall_s"] for s in played],
            cmap="Reds",
            s=12,
        )
        bottom.set_xlabel("mean bitrate per play (kbit/s)")
        bottom.set_ylabel("QoE lin per play")
        fig.tight_layout()
        out = Path(path)
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
