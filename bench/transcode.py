"""Benchmark: the one-process ladder transcode against one ffmpeg run per rung.

The claim: decoding the source once and encoding every rung plus audio in ONE ffmpeg
process (media/transcode.py) is at least TARGET_RATIO times faster in wall time than
running ffmpeg once per rung, sequentially, with the same encoder settings.

Only the ffmpeg processes are timed, the same way for both modes: the wall time of every
``media.ffmpeg.run`` call. Making the sample, probing it and checking the output
(``finalize``) happen outside the clock. The two modes alternate (A B A B ...) so that
noise from other work on the machine lands on both alike; each run waits for an idle
machine first, and a run that other work disturbed anyway is repeated (same rule for both).

    python bench/transcode.py [--duration 30] [--runs 3] [--pattern testsrc]
                              [--source both|master|delivery] [--preset veryfast]
                              [--workdir bench/out] [--json]

Two sources, by default one after the other: a studio-style master (``streamcdn sample
--master``: 10-bit 4:2:2, intra only), what an origin ingests in production, and an 8-bit
CRF 18 delivery-grade file. Decoding (and converting) the source is the work the one
process does once instead of once per rung, so the gain depends on it: several times
more for the master.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ffmpeg as ffmpeg_graph
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python bench/transcode.py`

from bench.host import cpu_model
from media import ffmpeg
from media.ladder import AUDIO_CHANNELS, AUDIO_KBPS, AUDIO_RATE_HZ, SEGMENT_S, Rung, plan_ladder
from media.probe import MediaInfo, probe
from media.sample import PATTERNS, make_sample
from media.transcode import AUDIO_NAME, DEFAULT_PRESET, INIT, MEDIA_PLAYLIST, ffmpeg_args, finalize
from streamcdn.errors import UserError

TARGET_RATIO = 1.5  # per-rung wall time / one-process wall time
# Other work busier than this (in cores, during a run) makes the wall times suspect.
QUIET_OTHER_CORES = 0.1
ATTEMPTS = 3  # a run disturbed by other work is repeated, up to this many tries in all
QUIET_WAIT_S = 300  # the longest to wait for an idle machine before a run
SAMPLE_SIZE = (1920, 1080)
ONE = "one process"
SOURCES = {True: "master", False: "delivery"}  # streamcdn sample --master, or not
PER_RUNG = "per rung"

console = Console(stderr=True)


@dataclasses.dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float  # user + system time of the ffmpeg processes
    other_cores: float  # average cores busy with anything else on the machine meanwhile
    processes: int
    output_bytes: int


def machine() -> dict[str, object]:
    model = cpu_model()
    version = (
        subprocess.run(
            [ffmpeg.ffmpeg_path(), "-hide_banner", "-version"], capture_output=True, text=True
        )
        .stdout.splitlines()[0]
        .split(" Copyright")[0]
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),  # what `nproc` prints
        "cpu_model": model,
        "ffmpeg": version,
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
    }


def ensure_sample(workdir: Path, duration_s: float, pattern: str, master: bool) -> Path:
    """The sample for these settings, made once and reused by later runs."""
    kind = "-master" if master else ""
    path = workdir / f"sample-{pattern}-{SAMPLE_SIZE[1]}p-{duration_s:g}s{kind}.mp4"
    if not path.exists():
        console.print(f"making {path} ...")
        make_sample(path, duration_s=duration_s, size=SAMPLE_SIZE, pattern=pattern, master=master)
    return path


def audio_args(source: Path, out_dir: Path) -> list[str]:
    """Audio alone, with the AAC and HLS settings the one-process transcode uses."""
    out = ffmpeg_graph.output(
        ffmpeg_graph.input(str(source))["a:0"],
        str(out_dir / "%v" / MEDIA_PLAYLIST),
        **{
            "c:a": "aac", "b:a": f"{AUDIO_KBPS}k", "ac": AUDIO_CHANNELS, "ar": AUDIO_RATE_HZ,
            "f": "hls", "hls_time": SEGMENT_S, "hls_playlist_type": "vod",
            "hls_segment_type": "fmp4", "hls_flags": "independent_segments",
            "hls_fmp4_init_filename": INIT,
            "hls_segment_filename": str(out_dir / "%v" / "seg_%05d.m4s"),
            "var_stream_map": f"a:0,name:{AUDIO_NAME}",
        },
    )  # fmt: skip
    return out.get_args()


def fresh_dir(path: Path, subdirs: list[str]) -> None:
    shutil.rmtree(path, ignore_errors=True)
    for name in subdirs:
        (path / name).mkdir(parents=True)


def machine_busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat, all cores)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait; guest time is already inside user
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def timed(commands: list[list[str]]) -> tuple[float, float, float]:
    """Run the ffmpeg commands one after another.

    Returns wall s, CPU s of the ffmpeg processes, and the average cores that other work
    on the machine kept busy meanwhile: on a shared machine that says how far to trust
    the wall time.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_before = machine_busy_s()
    start = time.perf_counter()
    for args in commands:
        ffmpeg.run(args, what="bench transcode")
    wall = time.perf_counter() - start
    busy = machine_busy_s() - busy_before
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, max(0.0, busy - cpu) / wall


def wait_for_quiet() -> None:
    """Wait (at most QUIET_WAIT_S) until the machine is idle, so a run starts on free cores."""
    deadline = time.monotonic() + QUIET_WAIT_S
    while time.monotonic() < deadline:
        before = machine_busy_s()
        time.sleep(2)
        if (machine_busy_s() - before) / 2 < QUIET_OTHER_CORES:
            return


def run_mode(
    mode: str, source: Path, out_dir: Path, rungs: list[Rung], info: MediaInfo, preset: str
) -> Run:
    fresh_dir(out_dir, [r.name for r in rungs] + [AUDIO_NAME])
    if mode == ONE:
        commands = [ffmpeg_args(source, out_dir, rungs, info, preset)]
    else:
        # Same settings per rung; %v puts each rung in its own directory under out_dir,
        # exactly where the one-process run puts it, so finalize checks both alike.
        silent = dataclasses.replace(info, has_audio=False)
        commands = [ffmpeg_args(source, out_dir, [r], silent, preset) for r in rungs]
        commands.append(audio_args(source, out_dir))
    wall, cpu, other = timed(commands)
    finalize(out_dir, rungs, info)  # raises if a rendition is missing or misaligned
    size = sum(p.stat().st_size for p in out_dir.rglob("*.m4s"))
    size += sum(p.stat().st_size for p in out_dir.rglob(INIT))
    return Run(wall, cpu, other, len(commands), size)


@dataclasses.dataclass(frozen=True)
class Figures:
    """One mode's medians over its runs."""

    processes: int
    wall_s_runs: list[float]
    wall_s: float
    realtime_factor: float  # media seconds per wall second
    cpu_s: float
    cores_busy: float  # average CPU cores the ffmpeg processes kept busy
    other_cores: float  # average cores other work on the machine kept busy meanwhile
    output_mb: float


def figures(runs: list[Run], media_s: float) -> Figures:
    wall = statistics.median(r.wall_s for r in runs)
    cpu = statistics.median(r.cpu_s for r in runs)
    return Figures(
        processes=runs[0].processes,
        wall_s_runs=[round(r.wall_s, 2) for r in runs],
        wall_s=round(wall, 2),
        realtime_factor=round(media_s / wall, 3),
        cpu_s=round(cpu, 2),
        cores_busy=round(cpu / wall, 2),
        other_cores=round(statistics.median(r.other_cores for r in runs), 2),
        output_mb=round(statistics.median(r.output_bytes for r in runs) / 1e6, 2),
    )


def print_report(result: dict, kind: str, measured: dict[str, Any]) -> None:
    out = Console()
    m, s = result["machine"], measured["sample"]
    modes = {name: Figures(**f) for name, f in measured["modes"].items()}
    out.print(f"machine: {m['nproc']} cores, {m['cpu_model']}; {m['ffmpeg']}")
    out.print(
        f"sample: {s['file']} ({s['megabytes']} MB), {s['duration_s']} s "
        f"{s['width']}x{s['height']}, rungs {', '.join(s['rungs'])} + audio, "
        f"preset {result['preset']}"
    )
    table = Table(title=f"ladder transcode from a {kind} source, median of {result['runs']} runs")
    cols = ("mode", "procs", "wall s", "realtime", "CPU s", "cores", "others", "out MB")
    for col in cols:
        table.add_column(col, justify="left" if col == "mode" else "right", no_wrap=True)
    for name, f in modes.items():
        table.add_row(
            name,
            str(f.processes),
            f"{f.wall_s:.1f}",
            f"{f.realtime_factor:.2f}x",
            f"{f.cpu_s:.1f}",
            f"{f.cores_busy:.2f}",
            f"{f.other_cores:.2f}",
            f"{f.output_mb:.1f}",
        )
    out.print(table)
    for name, f in modes.items():
        out.print(f"{name} wall s, each run: {' / '.join(f'{w:.1f}' for w in f.wall_s_runs)}")
    out.print("cores: CPU s / wall s of our ffmpeg; others: cores busy with other work")
    out.print(f"CPU-time ratio (per rung / one process): {measured['cpu_ratio']:.2f}x")
    out.print(
        f"runs repeated because other work disturbed them: {measured['disturbed_runs_repeated']}"
    )
    if max(f.other_cores for f in modes.values()) > QUIET_OTHER_CORES:
        out.print(
            "[yellow]warning: other work shared the CPU during the runs; "
            "wall times are inflated and noisy[/yellow]"
        )
    verdict = "PASS" if measured["pass"] else "FAIL"
    out.print(
        f"ratio (per-rung wall / one-process wall): {measured['ratio']:.2f}x; "
        f"target >= {TARGET_RATIO}x: [bold]{verdict}[/bold]"
    )


def measure(args: argparse.Namespace, master: bool) -> dict[str, Any]:
    """Both modes on one source, interleaved: the result for that source."""
    source = ensure_sample(args.workdir, args.duration, args.pattern, master)
    info = probe(source)
    rungs = plan_ladder(info.width, info.height)
    runs: dict[str, list[Run]] = {ONE: [], PER_RUNG: []}
    repeated = 0
    for i in range(args.runs):
        for mode in (ONE, PER_RUNG):
            out_dir = args.workdir / ("one" if mode == ONE else "per-rung")
            for attempt in range(1, ATTEMPTS + 1):
                wait_for_quiet()
                run = run_mode(mode, source, out_dir, rungs, info, args.preset)
                console.print(
                    f"{source.name} run {i + 1}/{args.runs} {mode}: {run.wall_s:.1f} s wall, "
                    f"{run.cpu_s:.1f} s CPU, others busy {run.other_cores:.2f} cores"
                )
                if run.other_cores <= QUIET_OTHER_CORES or attempt == ATTEMPTS:
                    break
                repeated += 1
                console.print("  disturbed by other work; repeating it")
            runs[mode].append(run)
    modes = {mode: figures(r, info.duration_s) for mode, r in runs.items()}
    ratio = modes[PER_RUNG].wall_s / modes[ONE].wall_s
    return {
        "sample": {
            "file": source.name,
            "pattern": args.pattern,
            "kind": SOURCES[master],
            "megabytes": round(source.stat().st_size / 1e6, 1),
            "duration_s": info.duration_s,
            "width": info.width,
            "height": info.height,
            "rungs": [r.name for r in rungs],
        },
        "disturbed_runs_repeated": repeated,
        "modes": {mode: dataclasses.asdict(f) for mode, f in modes.items()},
        "ratio": round(ratio, 3),
        "cpu_ratio": round(modes[PER_RUNG].cpu_s / modes[ONE].cpu_s, 3),
        "pass": ratio >= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--duration", type=float, default=30.0, help="sample length in seconds (default 30)"
    )
    p.add_argument(
        "--runs", type=int, default=3, help="repetitions of each mode, interleaved (default 3)"
    )
    p.add_argument(
        "--pattern",
        choices=sorted(PATTERNS),
        default="testsrc",
        help="sample pattern (default testsrc)",
    )
    p.add_argument(
        "--source",
        choices=("both", *SOURCES.values()),
        default="both",
        help="master: a 10-bit 4:2:2 intra-only studio master (streamcdn sample --master); "
        "delivery: an 8-bit CRF 18 file; both (default): one after the other",
    )
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, help=f"x264 preset (default {DEFAULT_PRESET})"
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=Path("bench/out"),
        help="sample and outputs go here (default bench/out)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs {args.runs}: expected at least 1")
    kinds = [m for m, kind in SOURCES.items() if args.source in ("both", kind)]
    try:
        args.workdir.mkdir(parents=True, exist_ok=True)
        host = machine()
        measured = {SOURCES[master]: measure(args, master) for master in kinds}
    except UserError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    result = {
        "claim": f"one-process ladder >= {TARGET_RATIO}x faster than one ffmpeg run per rung",
        "date": time.strftime("%Y-%m-%d"),
        "machine": host,
        "preset": args.preset,
        "runs": args.runs,
        "timed": "wall time of the ffmpeg processes only (media.ffmpeg.run), both modes",
        "target_ratio": TARGET_RATIO,
        "sources": measured,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for kind, r in measured.items():
            print_report(result, kind, r)
    return 0  # a measurement: FAIL is a finding, not an error


if __name__ == "__main__":
    sys.exit(main())
