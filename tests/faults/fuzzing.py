"""What the fuzzers share: their Hypothesis settings, and a loop thread for servers.

Hypothesis runs a synchronous test function many times; the servers under test are
aiohttp apps. They run in-process on loopback, on the loop of a thread of their own,
while each generated case talks to them over a real socket from the test's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings

T = TypeVar("T")


def fuzz(cases: int) -> settings:
    """``cases`` generated cases, however long each takes (servers and ffmpeg are slow)."""
    return settings(
        max_examples=cases,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60) -> T:
        """Run ``coro`` on the thread's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def mutate(text: str, ops: list[tuple], end: str = "\n") -> str:  # type: ignore[type-arg]
    """``text`` after line and character edits: ``(op, index, ...)`` with op one of delete,
    dup (n times), swap, replace, insert (a line), chars (inserted at a character), cut."""
    lines = text.splitlines()
    for op, *args in ops:
        if not lines:
            break
        i = args[0] % len(lines)
        if op == "delete":
            del lines[i]
        elif op == "dup":
            lines[i:i] = [lines[i]] * args[1]
        elif op == "swap":
            j = args[1] % len(lines)
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "replace":
            lines[i] = args[1]
        elif op == "insert":
            lines.insert(i, args[1])
        elif op == "chars":
            joined = "\n".join(lines)
            at = args[0] % (len(joined) + 1)
            lines = (joined[:at] + args[1] + joined[at:]).splitlines()
        elif op == "cut":
            lines = "\n".join(lines)[: args[0]].splitlines()
    return "\n".join(lines) + end
