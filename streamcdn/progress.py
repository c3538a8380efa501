"""Terminal progress for long media jobs (samples, ingest): rich bars over media seconds."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# URLs must stay whole to be copied; piped to a file, tables get room for their columns
# (rich would squeeze them into 80) unless COLUMNS says otherwise.
PIPED_WIDTH = 160
console = Console(
    stderr=True,
    soft_wrap=True,
    width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else PIPED_WIDTH,
)


@contextmanager
def progress_bar(label: str, total_s: float) -> Iterator[Callable[[float], None]]:
    """A rich progress bar over ``total_s`` seconds of media; yields the update callback."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[speed]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total_s, speed="")

        def update(done_s: float) -> None:
            elapsed = progress.tasks[0].elapsed or 0
            speed = f"{done_s / elapsed:.2f}x" if elapsed > 0.5 else ""
            progress.update(task, completed=min(done_s, total_s), speed=speed)

        yield update
        progress.update(task, completed=total_s)


def ingest_with_progress(
    source: Path,
    title: str,
    store_dir: Path,
    *,
    name: str | None,
    force: bool,
    tags: Sequence[str] = (),
) -> dict[str, object]:
    # Lazy: streamcdn/ imports no service at import time; only the CLI's wiring runs this.
    from media.ladder import Rung
    from media.probe import MediaInfo
    from origin.ingest import ingest
    from origin.store import TitleStore

    bar: list[Callable[[float], None]] = []
    with ExitStack() as stack:

        def on_probe(info: MediaInfo, rungs: list[Rung]) -> None:
            console.print(
                f"{source.name}: {info.width}x{info.height} {info.fps:.3f} fps "
                f"{info.duration_s:.1f} s -> {', '.join(r.name for r in rungs)}"
            )
            bar.append(stack.enter_context(progress_bar(f"ingest {title}", info.duration_s)))

        manifest = ingest(
            source,
            title,
            TitleStore(store_dir),
            name=name,
            tags=tags,
            force=force,
            on_probe=on_probe,
            on_progress=lambda s: bar[0](s) if bar else None,
        )
    return manifest
