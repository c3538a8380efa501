"""An adaptive concurrency limit: admit what the appliance can serve quickly, shed the rest.

Shaped like Netflix's concurrency-limits library. Every admitted request holds one slot
until it finishes; when all ``limit`` slots are taken, ``try_acquire`` refuses and the
server answers 503 with Retry-After, so overload costs some players a retry (or a
fail-over to their next URL) instead of costing every player a stall.

The limit moves once per *sample window*: at least ``window_min_s``, at least twice the
fastest request in it (so it measures the limit in force, not the one before), and at
least ``window_min_samples`` requests. From the window's average latency, its peak
in-flight count and whether anything was dropped, an algorithm picks the next limit:

- ``gradient2``: compares the window's latency (short RTT) with a slow average of past
  windows (long RTT). Latency within ``rtt_tolerance`` of the long RTT means no queue,
  so the limit grows by a queue allowance; latency above it means requests are queueing,
  so the limit shrinks in proportion (at most by half per window, and smoothed).
- ``aimd``: additive increase after a healthy window, multiplicative decrease after a
  window with drops or with latency above ``aimd_rtt_threshold_s``.

Neither grows the limit while the appliance is not using half of it (an idle server
says nothing about its capacity). The RTT the caller reports must be comparable between
requests, e.g. time to response headers, not the transfer time of bodies of any size.

Where gradient2 differs from concurrency-limits' Gradient2Limit: the queue allowance is
``max(queue_size, sqrt(limit))`` and is added in full when latency is flat (smoothing
slows only decreases), so a limit far below capacity climbs in tens of windows, not
hundreds; the long RTT is averaged in log space, so a few very slow windows barely move
it; and a window with drops never grows the limit. Two properties remain: under steady
overload the limit settles where latency is about ``rtt_tolerance / (1 - queue / limit)``
times the long RTT, and the long RTT slowly follows a lasting latency change (over about
``long_rtt_windows`` windows), which also lets the limit creep up under overload that
lasts that long. The first windows set the long RTT: start at or below the capacity.

A concurrency limit cannot see one kind of overload: a single-threaded server whose CPU
is saturated. Its requests are answered as soon as they are read, so few are ever in
flight; the queue is in the kernel (requests not read yet) and in front of the clients.
What grows instead is the event loop's delay: how late a timer fires, about the time a
newly arrived request waits to be read. ``LagShedder`` sheds a fraction of requests that
follows that delay, with PIE's controller (RFC 8033 4.2) in place of a queue's delay:
the fraction rises while the delay is above ``lag_target_s`` and falls below it, so the
loop keeps up with arrivals, and a 503 costs a small fraction of the answer it replaces.
``try_acquire`` refuses a request when either says so.

Pure: the caller passes each request's RTT, the loop's delay and ``now``; nothing here
reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# The long RTT is a plain mean of the first windows, then an exponential average.
LONG_RTT_WARMUP_WINDOWS = 10
# After a long overload the long RTT is far above the latency seen once it ends: pull it
# down quickly rather than waiting for the slow average (concurrency-limits does the same).
LONG_RTT_RECOVERY_RATIO = 2.0
LONG_RTT_RECOVERY_DECAY = 0.9
MIN_GRADIENT = 0.5  # one noisy window may at most halve the limit
MIN_RTT_S = 1e-6  # below this a latency is clock noise
# PIE (RFC 8033 4.2): the shed fraction changes by alpha x (delay - target) + beta x (delay
# - previous delay) per update of PIE_UPDATE_S, in 1/s; the alpha term scales with the time
# since the last update, since a busy loop measures its delay less often.
PIE_ALPHA = 0.125
PIE_BETA = 1.25
PIE_UPDATE_S = 0.015
PIE_DECAY = 0.98  # per update while the loop is idle, as RFC 8033 does with no queue
# The delay PIE sees is the least of the last few samples, as CoDel looks at the least
# delay over an interval: one stall (a GC pause, the CPU taken by another process) is not
# a standing queue; a saturated loop is late every time.
LAG_SAMPLES = 3


@dataclass(frozen=True)
class LimiterConfig:
    initial_limit: int = 64  # requests in flight; start at or below the expected capacity
    min_limit: int = 8
    max_limit: int = 1024
    window_min_s: float = 1.0  # the limit changes at most once per window
    window_max_s: float = 10.0
    window_min_samples: int = 10  # completed requests needed before a window may close
    # gradient2
    rtt_tolerance: float = 1.5  # short RTT up to 1.5 x long RTT is not queueing
    queue_size: int = 4  # requests allowed to queue; sqrt(limit) if larger; growth per window
    smoothing: float = 0.2  # fraction of a decrease applied per window
    long_rtt_windows: int = 600  # span of the long RTT's exponential average, in windows
    # aimd
    aimd_increase: int = 4  # requests added after a healthy window
    aimd_backoff_ratio: float = 0.9  # limit multiplied by this after a congested window
    aimd_rtt_threshold_s: float = 2.0  # a window averaging slower than this is congested
    retry_after_max_s: int = 30
    # shedding on the event loop's delay (LagShedder)
    lag_target_s: float = 0.02  # loop delay to hold under saturation; ~ the added latency
    max_shed_fraction: float = 0.95  # some requests always get in, and measure the way out

    def __post_init__(self) -> None:
        checks = (
            ("min_limit", self.min_limit >= 1, "at least 1"),
            ("max_limit", self.max_limit >= self.min_limit, "at least min_limit"),
            (
                "initial_limit",
                self.min_limit <= self.initial_limit <= self.max_limit,
                "between min_limit and max_limit",
            ),
            ("window_min_s", self.window_min_s > 0, "more than 0"),
            ("window_max_s", self.window_max_s >= self.window_min_s, "at least window_min_s"),
            ("window_min_samples", self.window_min_samples >= 1, "at least 1"),
            ("rtt_tolerance", self.rtt_tolerance >= 1.0, "at least 1.0"),
            ("queue_size", self.queue_size >= 1, "at least 1"),
            ("smoothing", 0 < self.smoothing <= 1, "more than 0 and at most 1"),
            ("long_rtt_windows", self.long_rtt_windows >= 1, "at least 1"),
            ("aimd_increase", self.aimd_increase >= 1, "at least 1"),
            ("aimd_backoff_ratio", 0.5 <= self.aimd_backoff_ratio < 1, "in [0.5, 1)"),
            ("aimd_rtt_threshold_s", self.aimd_rtt_threshold_s > 0, "more than 0"),
            ("retry_after_max_s", self.retry_after_max_s >= 1, "at least 1"),
            ("lag_target_s", self.lag_target_s > 0, "more than 0"),
            ("max_shed_fraction", 0 <= self.max_shed_fraction < 1, "in [0, 1)"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"LimiterConfig.{name} = {getattr(self, name)!r}: must be {rule}")


@dataclass(frozen=True)
class Window:
    """What one sample window saw."""

    avg_rtt_s: float
    max_in_flight: int
    dropped: int  # requests that failed from overload or timed out


class LimitAlgorithm(Protocol):
    def update(self, limit: float, window: Window) -> float:
        """The next limit (before clamping to [min_limit, max_limit])."""
        ...

    def snapshot(self) -> dict[str, float | None]: ...


def _app_limited(limit: float, window: Window) -> bool:
    return window.max_in_flight < limit / 2


class Gradient2:
    def __init__(self, config: LimiterConfig) -> None:
        self._config = config
        self._long_rtt_s: float | None = None
        self._windows = 0

    def update(self, limit: float, window: Window) -> float:
        cfg = self._config
        short = max(window.avg_rtt_s, MIN_RTT_S)
        self._windows += 1
        # Averaged in log space: a window 40x slower than usual (a stall, a start under
        # overload) moves the baseline by a few percent, not by half.
        if self._long_rtt_s is None:
            self._long_rtt_s = short
        else:
            weight = 1 / self._windows
            if self._windows > LONG_RTT_WARMUP_WINDOWS:
                weight = 2 / (cfg.long_rtt_windows + 1)
            self._long_rtt_s *= (short / self._long_rtt_s) ** weight
        if self._long_rtt_s > LONG_RTT_RECOVERY_RATIO * short:
            self._long_rtt_s *= LONG_RTT_RECOVERY_DECAY

        if _app_limited(limit, window):
            return limit
        gradient = max(MIN_GRADIENT, min(1.0, cfg.rtt_tolerance * self._long_rtt_s / short))
        target = limit * gradient + max(cfg.queue_size, math.sqrt(limit))
        if window.dropped:
            target = min(target, limit)  # never grow while requests fail from overload
        if target < limit:
            target = limit + cfg.smoothing * (target - limit)
        return target

    def snapshot(self) -> dict[str, float | None]:
        return {"long_rtt_s": self._long_rtt_s}


class Aimd:
    def __init__(self, config: LimiterConfig) -> None:
        self._config = config

    def update(self, limit: float, window: Window) -> float:
        cfg = self._config
        if window.dropped or window.avg_rtt_s > cfg.aimd_rtt_threshold_s:
            return limit * cfg.aimd_backoff_ratio
        if _app_limited(limit, window):
            return limit
        return limit + cfg.aimd_increase

    def snapshot(self) -> dict[str, float | None]:
        return {}


ALGORITHMS: dict[str, Callable[[LimiterConfig], LimitAlgorithm]] = {
    "gradient2": Gradient2,
    "aimd": Aimd,
}


class LagShedder:
    """The fraction of requests to shed, from the event loop's delay (PIE, RFC 8033)."""

    def __init__(self, config: LimiterConfig) -> None:
        self._config = config
        self.fraction = 0.0
        self.lag_s = 0.0  # the delay PIE last saw
        self._recent: deque[float] = deque(maxlen=LAG_SAMPLES)
        self._last_at: float | None = None
        self._credit = 0.0

    def observe(self, lag_s: float, now: float) -> None:
        """A timer due at ``now - lag_s`` ran at ``now``."""
        if not lag_s >= 0 or math.isinf(lag_s):
            raise ValueError(f"lag_s = {lag_s!r}: must be a finite number of seconds >= 0")
        cfg = self._config
        self._recent.append(lag_s)
        delay_s = min(self._recent)
        elapsed_s = PIE_UPDATE_S if self._last_at is None else max(0.0, now - self._last_at)
        step = PIE_ALPHA * (delay_s - cfg.lag_target_s) * elapsed_s / PIE_UPDATE_S
        step += PIE_BETA * (delay_s - self.lag_s)
        fraction = self.fraction + step
        if delay_s < cfg.lag_target_s / 2 and self.lag_s < cfg.lag_target_s / 2:
            fraction *= PIE_DECAY
        self.fraction = min(max(fraction, 0.0), cfg.max_shed_fraction)
        self.lag_s, self._last_at = delay_s, now

    def shed(self) -> bool:
        """Whether to refuse the next request: exactly ``fraction`` of them, evenly spread
        (a running credit, not a coin: no runs of refusals, and the tests are exact)."""
        self._credit += self.fraction
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        if not self.fraction:
            self._credit = 0.0
        return False


class AdaptiveLimiter:
    """Admission for one appliance: ``try_acquire`` before serving, ``release`` after."""

    def __init__(self, config: LimiterConfig | None = None, algorithm: str = "gradient2") -> None:
        if algorithm not in ALGORITHMS:
            known = ", ".join(ALGORITHMS)
            raise ValueError(f"limiter algorithm {algorithm!r}: known algorithms are {known}")
        self.config = config or LimiterConfig()
        self.algorithm = algorithm
        self._estimator = ALGORITHMS[algorithm](self.config)
        self._estimate = float(self.config.initial_limit)
        self._lag = LagShedder(self.config)
        self._in_flight = 0
        self._admitted_total = 0
        self._shed_total = 0
        self._refused_total = 0
        self._last_short_rtt_s: float | None = None
        self._last_window_s = self.config.window_min_s
        self._last_admitted = 0
        self._last_shed = 0
        self._start_window(None)

    def _start_window(self, now: float | None) -> None:
        self._window_start = now
        self._samples = 0
        self._rtt_sum_s = 0.0
        self._min_rtt_s = math.inf
        self._dropped = 0
        self._max_in_flight = self._in_flight
        self._admitted = 0
        self._shed = 0

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def shedding(self) -> bool:
        """True if a request was refused in this sample window or the last one."""
        return self._shed > 0 or self._last_shed > 0

    def try_acquire(self) -> bool:
        """Take a slot; False means answer 503 with ``Retry-After: retry_after_s()``."""
        if self._in_flight >= self.limit or self._lag.shed():
            self._shed += 1
            self._shed_total += 1
            return False
        self._in_flight += 1
        self._admitted += 1
        self._admitted_total += 1
        self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return True

    def refuse(self, requests: int = 1) -> None:
        """Count requests refused by the caller's own rule, the appliance's per-turn budget
        (as ``try_acquire`` counts its own; both are in ``shed_total``)."""
        self._shed += requests
        self._shed_total += requests
        self._refused_total += requests

    def cancel(self) -> None:
        """Give back a slot without a latency sample: the request went elsewhere (the caller
        passed it to another path, which acquires for it again)."""
        if self._in_flight == 0:
            raise RuntimeError("cancel() without a matching successful try_acquire()")
        self._in_flight -= 1
        self._admitted -= 1
        self._admitted_total -= 1

    def release(self, rtt_s: float, now: float, *, dropped: bool = False) -> None:
        """Give back the slot of a request that took ``rtt_s``; ``dropped``: it failed from
        overload (timed out, upstream refused), which the AIMD algorithm backs off from."""
        if self._in_flight == 0:
            raise RuntimeError("release() without a matching successful try_acquire()")
        if not rtt_s >= 0 or math.isinf(rtt_s):  # NaN would poison every average after it
            raise ValueError(f"rtt_s = {rtt_s!r}: must be a finite number of seconds >= 0")
        self._in_flight -= 1
        if self._window_start is None:
            self._window_start = now
        self._samples += 1
        self._rtt_sum_s += rtt_s
        self._min_rtt_s = min(self._min_rtt_s, rtt_s)
        self._dropped += dropped
        cfg = self.config
        window_s = min(max(2 * self._min_rtt_s, cfg.window_min_s), cfg.window_max_s)
        if self._samples >= cfg.window_min_samples and now - self._window_start >= window_s:
            self._close_window(now, window_s)

    def observe_lag(self, lag_s: float, now: float) -> None:
        """The event loop ran a timer ``lag_s`` late (see LagShedder)."""
        self._lag.observe(lag_s, now)

    def _close_window(self, now: float, window_s: float) -> None:
        window = Window(self._rtt_sum_s / self._samples, self._max_in_flight, self._dropped)
        cfg = self.config
        new = self._estimator.update(self._estimate, window)
        self._estimate = min(max(new, cfg.min_limit), cfg.max_limit)
        self._last_short_rtt_s = window.avg_rtt_s
        self._last_window_s = window_s
        self._last_admitted = self._admitted
        self._last_shed = self._shed
        self._start_window(now)

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait (RFC 9110 10.2.3 delay-seconds).

        If the last window was offered k times what it admitted, retrying within one window
        would most likely be refused again; spreading the retries over k windows lets them in.
        """
        offered = self._last_admitted + self._last_shed
        overload = offered / self._last_admitted if self._last_admitted else 1.0
        wait_s = math.ceil(self._last_window_s * overload)
        return min(max(wait_s, 1), self.config.retry_after_max_s)

    def snapshot(self) -> dict[str, object]:
        """For /health and /metrics."""
        return {
            "algorithm": self.algorithm,
            "limit": self.limit,
            "in_flight": self._in_flight,
            "shedding": self.shedding,
            "admitted_total": self._admitted_total,
            "shed_total": self._shed_total,
            "shed_last_window": self._last_shed,
            "turn_budget_shed_total": self._refused_total,
            "short_rtt_s": self._last_short_rtt_s,
            "loop_lag_s": round(self._lag.lag_s, 4),
            "lag_shed_fraction": round(self._lag.fraction, 3),
            **self._estimator.snapshot(),
            "retry_after_s": self.retry_after_s(),
        }
