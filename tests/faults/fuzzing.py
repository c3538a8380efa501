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
