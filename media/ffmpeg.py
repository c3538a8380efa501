"""Finding the ffmpeg binary and running it with a progress callback.

Lookup order: ``$STREAMCDN_FFMPEG``, then ``ffmpeg`` on PATH, then the static binary
inside the ``imageio-ffmpeg`` wheel, so that ``pip install`` alone is enough. That
wheel ships no ffprobe, which is why :mod:`media.probe` reads ffmpeg's own banner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path

from streamcdn.errors import UserError

ENV_VAR = "STREAMCDN_FFMPEG"

# Called with the seconds of media written so far (from ffmpeg's -progress output).
ProgressCallback = Callable[[float], None]


class FfmpegError(UserError):
    """ffmpeg ran and failed; the message carries its last meaningful stderr line."""


def _executable(path: str) -> bool:
    return Path(path).is_file() and os.access(path, os.X_OK)


@cache
def ffmpeg_path() -> str:
    """The ffmpeg binary to use; raise a UserError naming every place looked at."""
    env = os.environ.get(ENV_VAR)
    if env:
        if _executable(env):
            return env
        raise UserError(f"${ENV_VAR} is set to {env!r}, which is not an executable file")
    on_path = shutil.which("ffmpeg")
    if on_path:
        return on_path
    try:
        import imageio_ffmpeg

        wheel = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as exc:
        wheel, why = None, str(exc)
    else:
        why = f"{wheel} is not an executable file"
    if wheel and _executable(wheel):
        return wheel
    raise UserError(
        f"ffmpeg not found: ${ENV_VAR} is unset, there is no ffmpeg on PATH, and the "
        f"imageio-ffmpeg wheel gave none ({why}); install ffmpeg or set ${ENV_VAR}"
    )


def _last_error_line(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    # ffmpeg ends with generic lines ("Conversion failed!"); the cause is usually just above.
    generic = ("Conversion failed!", "Exiting normally", "Error opening output files")
    for line in reversed(lines):
        if not line.startswith(generic):
            return line
    return lines[-1] if lines else "no output"


def run(
    args: Sequence[str],
    *,
    on_progress: ProgressCallback | None = None,
    what: str = "ffmpeg",
) -> None:
    """Run ffmpeg with ``args`` (without the binary); raise FfmpegError on failure.

    With ``on_progress``, ffmpeg writes ``-progress`` key=value lines to stdout and
    the callback gets the output time in seconds each time ffmpeg reports.
    stderr goes to a temporary file so a chatty ffmpeg can never fill a pipe and stall.
    """
    cmd = [ffmpeg_path(), "-hide_banner", "-nostdin", "-y"]
    if on_progress is not None:
        cmd += ["-progress", "pipe:1", "-nostats"]
    cmd += list(args)
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE if on_progress else subprocess.DEVNULL,
            stderr=err,
            text=True,
        )
        try:
            if on_progress is not None and proc.stdout is not None:
                for line in proc.stdout:
                    key, _, value = line.strip().partition("=")
                    # out_time_us is the output timestamp in microseconds ("N/A" at first).
                    if key == "out_time_us" and value.lstrip("-").isdigit():
                        on_progress(max(0.0, int(value) / 1e6))
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            err.seek(0)
            raise FfmpegError(f"{what} failed: {_last_error_line(err.read())}")
