"""A circuit breaker: stop calling a dependency that keeps failing, and probe it now and then.

CLOSED lets every call through and counts consecutive failures; ``failure_threshold`` of
them OPEN it. OPEN refuses calls (the caller tries its next upstream, or answers at once)
until the open time has passed; then HALF_OPEN lets ``half_open_max_probes`` calls through.
A probe that succeeds closes the breaker; one that fails opens it again with the open time
doubled, up to ``max_open_s``, so a dependency that stays down is probed less and less
often; closing resets it to ``open_s``. Set ``max_open_s = open_s`` for a fixed open time.

Results that arrive while OPEN (before a probe went out) came from calls made before it
opened, and are ignored.
A probe whose result never arrives (its caller was cancelled) would leave the breaker
half-open with no probes left for ever, so probes unanswered for the current open time are
presumed lost and a new round is allowed.

Pure: every method takes ``now`` (any monotonic clock, in seconds); nothing reads a clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

BACKOFF_FACTOR = 2.0  # open time multiplier for each failed probe in a row


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures that open the breaker
    open_s: float = 5.0  # how long it stays open before the first probe
    half_open_max_probes: int = 1  # calls let through while half-open
    max_open_s: float = 60.0  # cap on the doubled open time after failed probes

    def __post_init__(self) -> None:
        checks = (
            ("failure_threshold", self.failure_threshold >= 1, "at least 1"),
            ("open_s", self.open_s > 0, "more than 0"),
            ("half_open_max_probes", self.half_open_max_probes >= 1, "at least 1"),
            ("max_open_s", self.max_open_s >= self.open_s, "at least open_s"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"BreakerConfig.{name} = {getattr(self, name)!r}: must be {rule}")


class CircuitBreaker:
    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self._state = BreakerState.CLOSED
        self._failures = 0  # consecutive; reset when the breaker closes
        self._opened_at: float | None = None
        self._open_s = self.config.open_s  # the current open time, grown by failed probes
        self._probes = 0  # let through in this half-open round
        self._probes_since = 0.0
        self._trips = 0  # times opened, for /health

    @property
    def state(self) -> BreakerState:
        """As of the last call that passed ``now``; ``state_at(now)`` for the current one."""
        return self._state

    def state_at(self, now: float) -> BreakerState:
        if self._state is BreakerState.OPEN and now >= self._retry_at():
            return BreakerState.HALF_OPEN
        return self._state

    def _retry_at(self) -> float:
        assert self._opened_at is not None
        return self._opened_at + self._open_s

    def allow(self, now: float) -> bool:
        """May a call go through now? In HALF_OPEN a True uses up one probe."""
        if self._state is BreakerState.OPEN:
            if now < self._retry_at():
                return False
            self._state = BreakerState.HALF_OPEN
            self._start_probes(now)
        if self._state is BreakerState.HALF_OPEN:
            if self._probes >= self.config.half_open_max_probes:
                if now - self._probes_since < self._open_s:
                    return False
                self._start_probes(now)  # the earlier probes are presumed lost
            self._probes += 1
        return True

    def _start_probes(self, now: float) -> None:
        self._probes = 0
        self._probes_since = now

    def record_success(self, now: float) -> None:
        if self._state is BreakerState.OPEN:
            return
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = None
        self._open_s = self.config.open_s

    def record_failure(self, now: float) -> None:
        if self._state is BreakerState.OPEN:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open(now, min(self._open_s * BACKOFF_FACTOR, self.config.max_open_s))
            return
        self._failures += 1
        if self._failures >= self.config.failure_threshold:
            self._open(now, self.config.open_s)

    def _open(self, now: float, open_s: float) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = now
        self._open_s = open_s
        self._trips += 1

    def snapshot(self, now: float) -> dict[str, object]:
        """For /health."""
        state = self.state_at(now)
        return {
            "state": state.value,
            "consecutive_failures": self._failures,
            "opened_at": self._opened_at,
            "open_s": self._open_s,
            "retry_at": None if self._opened_at is None else self._retry_at(),
            "trips": self._trips,
        }
