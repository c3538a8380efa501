"""The adaptive concurrency limit: under overload it sheds instead of queueing, and recovers.

The behavioural tests drive the limiter with a simulated appliance in simulated time:
``SLOTS`` requests are served at full speed, and each one beyond that slows everyone
(processor sharing plus thrashing, as disk seeks and memory pressure do), so an
unprotected server's throughput collapses while its latency grows without bound.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.limiter import ALGORITHMS, AdaptiveLimiter, LimiterConfig

SLOTS = 40  # the server's true concurrency capacity, N
SERVICE_S = 0.1  # latency of one request at or below N in flight
CAPACITY_RPS = SLOTS / SERVICE_S
THRASH = 1.0  # at 2N in flight each request runs at N/2N / (1 + 1) = 1/4 of full speed
# AIMD's latency threshold plays the part of gradient2's rtt_tolerance (1.5 x unloaded).
CONFIG = LimiterConfig(aimd_rtt_threshold_s=1.5 * SERVICE_S)


@dataclass
class Phase:
    duration_s: float
    load: float  # offered load as a multiple of CAPACITY_RPS
    service_s: float = SERVICE_S


@dataclass
class Outcome:
    latencies_s: list[float] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)  # the limit after each completion
    admitted: int = 0
    shed: int = 0

    def p99_s(self) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[int(len(ordered) * 0.99)]

    def mean_limit(self) -> float:
        return sum(self.limits) / len(self.limits)

    def shed_fraction(self) -> float:
        return self.shed / (self.admitted + self.shed)


def simulate(limiter: AdaptiveLimiter, phases: list[Phase], *, seed: int = 1) -> list[Outcome]:
    """Poisson arrivals at each phase's load; one Outcome per phase.

    Every admitted request needs the same work, and all in flight share the server equally,
    so they finish in arrival order: track the service each has received on one virtual clock.
    """
    rng = random.Random(seed)
    now = served = 0.0  # served: service received by every request in flight so far, s
    in_service: deque[tuple[float, float]] = deque()  # (served when done, admitted at)
    outcomes = []
    for phase in phases:
        out = Outcome()
        end = now + phase.duration_s
        rate_rps = phase.load * CAPACITY_RPS
        next_arrival = now + rng.expovariate(rate_rps)
        while now < end:
            n = len(in_service)
            speed = 1.0 if n <= SLOTS else (SLOTS / n) / (1 + THRASH * (n - SLOTS) / SLOTS)
            done_at = now + (in_service[0][0] - served) / speed if n else math.inf
            if done_at <= next_arrival:
                served, admitted_at = in_service.popleft()
                now = done_at
                limiter.release(now - admitted_at, now)
                out.latencies_s.append(now - admitted_at)
                out.limits.append(limiter.limit)
            else:
                served += (next_arrival - now) * speed
                now = next_arrival
                if limiter.try_acquire():
                    out.admitted += 1
                    in_service.append((served + phase.service_s, now))
                else:
                    out.shed += 1
                next_arrival = now + rng.expovariate(rate_rps)
        outcomes.append(out)
    return outcomes


@pytest.mark.parametrize("algorithm", ["gradient2", "aimd"])
@pytest.mark.parametrize("initial_limit", [8, 256])
def test_under_3x_overload_the_limit_settles_near_capacity_and_sheds_the_rest(
    algorithm: str, initial_limit: int
) -> None:
    limiter = AdaptiveLimiter(replace(CONFIG, initial_limit=initial_limit), algorithm)
    # A calm start teaches the limiter the unloaded latency, then 3x overload for 80 s.
    *_, settled = simulate(limiter, [Phase(10, 0.5), Phase(60, 3.0), Phase(20, 3.0)])

    # The limit stops growing where latency passes 1.5x unloaded (AIMD's threshold: ~1.2 N on
    # this server) or, for gradient2, rtt_tolerance / (1 - queue / limit) = ~1.8x (~1.4 N).
    # It cannot stay below N, where latency is flat and the limit grows.
    assert 0.8 * SLOTS <= settled.mean_limit() <= 1.5 * SLOTS
    assert min(settled.limits) >= 0.75 * SLOTS and max(settled.limits) <= 1.6 * SLOTS
    # Admitted requests stay fast and most of the capacity is still used ...
    assert settled.p99_s() <= 2.5 * SERVICE_S
    assert len(settled.latencies_s) / 20 >= 0.65 * CAPACITY_RPS
    # ... because the excess is refused: offered 3x, at most ~1/3 can get in.
    assert settled.shed_fraction() >= 0.6
    assert limiter.shedding
    assert 2 <= limiter.retry_after_s() <= 5  # spread retries over the ~3x overload


def test_without_an_adaptive_limit_the_same_overload_makes_latency_explode() -> None:
    fixed = LimiterConfig(initial_limit=1024, min_limit=1024, max_limit=1024)
    _, overload = simulate(AdaptiveLimiter(fixed), [Phase(10, 0.5), Phase(20, 3.0)])
    assert overload.p99_s() > 20 * SERVICE_S
    assert len(overload.latencies_s) / 20 < 0.2 * CAPACITY_RPS  # and throughput collapses


@pytest.mark.parametrize("algorithm", ["gradient2", "aimd"])
def test_the_limit_shrinks_while_the_server_is_slow_and_grows_back_when_load_drops(
    algorithm: str,
) -> None:
    limiter = AdaptiveLimiter(CONFIG, algorithm)
    calm, slow, after, settled = simulate(
        limiter,
        [
            Phase(10, 0.5),
            Phase(20, 3.0, service_s=3 * SERVICE_S),  # a slow disk, and players retrying
            Phase(10, 0.7),
            Phase(10, 0.7),
        ],
    )
    assert calm.shed == 0
    assert slow.limits[-1] < SLOTS < calm.limits[-1]
    assert slow.shed_fraction() > 0.8
    # Once the disk is fast again the limit climbs back over the capacity and nothing is shed.
    assert max(after.limits) > slow.limits[-1]
    assert settled.shed == 0 and min(settled.limits) >= SLOTS
    assert settled.p99_s() <= 1.2 * SERVICE_S
    assert not limiter.shedding
    assert limiter.retry_after_s() == 1


@pytest.mark.parametrize("algorithm", ["gradient2", "aimd"])
def test_an_idle_server_does_not_grow_its_limit(algorithm: str) -> None:
    limiter = AdaptiveLimiter(CONFIG, algorithm)
    (calm,) = simulate(limiter, [Phase(30, 0.2)])  # ~8 in flight, limit 64
    assert set(calm.limits) == {CONFIG.initial_limit}


def _config(**changes: object) -> LimiterConfig:
    """One-sample windows of exactly 1 s, so each ``release`` a second apart closes one."""
    return replace(LimiterConfig(window_min_samples=1), **changes)


def test_aimd_backs_off_multiplicatively_on_drops_down_to_the_minimum() -> None:
    limiter = AdaptiveLimiter(_config(initial_limit=100, min_limit=10), "aimd")
    limits = []
    for second in range(30):
        assert limiter.try_acquire()
        limiter.release(0.01, float(second), dropped=True)
        limits.append(limiter.limit)
    assert limits[:4] == [100, 90, 81, 72]  # the first release only opens the window
    assert limits[-1] == 10
    assert all(b <= a for a, b in itertools.pairwise(limits))


def test_aimd_backs_off_when_latency_passes_its_threshold_even_without_drops() -> None:
    limiter = AdaptiveLimiter(_config(initial_limit=100, aimd_rtt_threshold_s=1.0), "aimd")
    for i in range(3):
        assert limiter.try_acquire()
        limiter.release(1.5, 3.0 * i)  # a window lasts at least twice its fastest request
    assert limiter.limit == 81


def _fill_and_drain(limiter: AdaptiveLimiter, now: float, *, dropped: bool = False) -> None:
    while limiter.try_acquire():
        pass
    for _ in range(limiter.in_flight):
        limiter.release(0.05, now, dropped=dropped)


@pytest.mark.parametrize("algorithm", ["gradient2", "aimd"])
def test_the_limit_grows_while_load_reaches_it_and_latency_is_flat(algorithm: str) -> None:
    limiter = AdaptiveLimiter(_config(initial_limit=10), algorithm)
    limits = []
    for second in range(5):
        _fill_and_drain(limiter, float(second))
        limits.append(limiter.limit)
    assert limits == sorted(limits) and limits[-1] >= 10 + 3 * 4


def test_gradient2_does_not_grow_while_requests_drop() -> None:
    limiter = AdaptiveLimiter(_config(initial_limit=10))
    for second in range(5):
        _fill_and_drain(limiter, float(second), dropped=True)
    assert limiter.limit == 10


def test_release_without_acquire_and_bad_latencies_are_refused() -> None:
    limiter = AdaptiveLimiter()
    with pytest.raises(RuntimeError, match="without a matching"):
        limiter.release(0.1, 0.0)
    assert limiter.try_acquire()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="rtt_s"):
            limiter.release(bad, 0.0)
    assert limiter.in_flight == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"min_limit": 0}, "LimiterConfig.min_limit = 0: must be at least 1"),
        ({"initial_limit": 2000}, "LimiterConfig.initial_limit = 2000: must be between"),
        ({"max_limit": 4}, "LimiterConfig.max_limit = 4: must be at least min_limit"),
        ({"smoothing": 0.0}, "LimiterConfig.smoothing = 0.0"),
        ({"aimd_backoff_ratio": 1.0}, "LimiterConfig.aimd_backoff_ratio = 1.0"),
        ({"window_max_s": 0.5}, "LimiterConfig.window_max_s = 0.5"),
    ],
)
def test_a_bad_config_names_the_field_and_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LimiterConfig(**changes)  # type: ignore[arg-type]


def test_an_unknown_algorithm_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'vegas': known algorithms are gradient2, aimd"):
        AdaptiveLimiter(algorithm="vegas")


def test_the_snapshot_is_json_for_health() -> None:
    limiter = AdaptiveLimiter(CONFIG)
    simulate(limiter, [Phase(5, 3.0)])
    snap = json.loads(json.dumps(limiter.snapshot()))
    assert snap["limit"] == limiter.limit and snap["in_flight"] == limiter.in_flight
    assert snap["shed_total"] > 0 and snap["admitted_total"] > 0
    assert snap["short_rtt_s"] > 0 and snap["long_rtt_s"] > 0


_operations = st.lists(
    st.one_of(
        st.just(None),  # try_acquire
        st.tuples(  # release: rtt, seconds since the last operation, dropped
            st.floats(0, 5), st.floats(0, 3), st.booleans()
        ),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(sorted(ALGORITHMS)),
    bounds=st.lists(st.integers(1, 200), min_size=3, max_size=3).map(sorted),
    min_samples=st.integers(1, 20),
    operations=_operations,
)
def test_invariants_hold_under_any_sequence(
    algorithm: str, bounds: list[int], min_samples: int, operations: list
) -> None:
    low, initial, high = bounds
    config = LimiterConfig(
        initial_limit=initial, min_limit=low, max_limit=high, window_min_samples=min_samples
    )
    limiter = AdaptiveLimiter(config, algorithm)
    now, held, attempts = 0.0, 0, 0
    for op in operations:
        if op is None:
            attempts += 1
            room = limiter.in_flight < limiter.limit
            assert limiter.try_acquire() is room
            held += room
        else:
            rtt_s, step_s, dropped = op
            now += step_s
            if held:
                limiter.release(rtt_s, now, dropped=dropped)
                held -= 1
            else:
                with pytest.raises(RuntimeError):
                    limiter.release(rtt_s, now, dropped=dropped)
        assert limiter.in_flight == held >= 0
        assert low <= limiter.limit <= high
        snap = limiter.snapshot()
        assert snap["admitted_total"] + snap["shed_total"] == attempts
        assert 1 <= limiter.retry_after_s() <= config.retry_after_max_s


# -- shedding on the event loop's delay ---------------------------------------------------
#
# A single-threaded server whose CPU is the bottleneck: every request is answered as soon as
# it is read, so nothing is ever in flight for long and the concurrency limit never binds.
# What grows is the work queued ahead of the loop; a timer waits for all of it.

OK_CPU_S = 0.0005  # CPU one answered request costs (a 2 MB memory hit)
SHED_CPU_S = 0.00003  # CPU one 503 costs
LOOP_CAPACITY_RPS = 1 / OK_CPU_S
TICK_S = 0.01  # the appliance's lag probe


@dataclass
class LoopOutcome:
    lags_s: list[float] = field(default_factory=list)
    answered: int = 0
    shed: int = 0
    fractions: list[float] = field(default_factory=list)


def simulate_loop(limiter: AdaptiveLimiter, phases: list[tuple[float, float]]) -> list[LoopOutcome]:
    """(seconds, offered load as a multiple of LOOP_CAPACITY_RPS) per phase. Requests are
    admitted or shed as they arrive (uniformly), their CPU joins the loop's backlog, and
    the lag probe, due every TICK_S, runs once the backlog ahead of it is done."""
    now = backlog_s = 0.0
    arrivals = 0.0
    outcomes = []
    for duration_s, load in phases:
        out = LoopOutcome()
        for _ in range(round(duration_s / TICK_S)):
            arrivals += load * LOOP_CAPACITY_RPS * TICK_S
            while arrivals >= 1:
                arrivals -= 1
                if limiter.try_acquire():
                    limiter.release(0.0, now)  # answered at once: no concurrency to see
                    out.answered += 1
                    backlog_s += OK_CPU_S
                else:
                    out.shed += 1
                    backlog_s += SHED_CPU_S
            backlog_s = max(0.0, backlog_s - TICK_S)  # one tick of CPU
            now += TICK_S
            limiter.observe_lag(backlog_s, now)
            out.lags_s.append(backlog_s)
            out.fractions.append(limiter.snapshot()["lag_shed_fraction"])  # type: ignore[arg-type]
        outcomes.append(out)
    return outcomes


def test_a_saturated_loop_sheds_the_excess_keeps_its_goodput_and_recovers() -> None:
    limiter = AdaptiveLimiter(CONFIG)
    calm, _, overload = simulate_loop(limiter, [(10, 0.5), (10, 3.0), (20, 3.0)])
    assert calm.shed == 0 and max(calm.lags_s) == 0
    # At 3x: the loop's delay stays near the target instead of growing without bound ...
    assert max(overload.lags_s) <= 4 * CONFIG.lag_target_s
    assert statistics.mean(overload.lags_s) <= 2 * CONFIG.lag_target_s
    # ... the CPU not spent on 503s still answers requests (at most what is left when two
    # thirds of the offered 6,000/s get a 503: 1,745/s), and a little over two thirds are refused.
    offered_rps = 3 * LOOP_CAPACITY_RPS
    best_rps = (1 - offered_rps * SHED_CPU_S) / (OK_CPU_S - SHED_CPU_S)
    assert overload.answered / 20 >= 0.97 * best_rps
    assert 0.67 <= overload.shed / (overload.answered + overload.shed) <= 0.75
    assert limiter.shedding and limiter.retry_after_s() >= 2
    # Once the load drops, shedding stops within a few seconds.
    (after,) = simulate_loop(limiter, [(10, 0.5)])
    assert after.fractions[round(3 / TICK_S)] == 0
    assert after.shed < 0.05 * (after.answered + after.shed)


def test_without_lag_shedding_the_same_overload_makes_the_loop_fall_behind() -> None:
    limiter = AdaptiveLimiter(replace(CONFIG, max_shed_fraction=0.0))
    _, overload = simulate_loop(limiter, [(10, 0.5), (10, 3.0)])
    assert overload.shed == 0
    assert overload.lags_s[-1] > 15  # 2 s of extra work queued per second, and growing


def test_lag_shedding_refuses_exactly_its_fraction_evenly() -> None:
    limiter = AdaptiveLimiter(replace(CONFIG, max_shed_fraction=0.5))
    limiter.observe_lag(10.0, 1.0)  # far over the target: pinned at the maximum
    answers = [limiter.try_acquire() for _ in range(100)]
    assert answers.count(False) == 50
    assert all(a != b for a, b in itertools.pairwise(answers))  # no two refusals in a row


def test_bad_lags_are_refused() -> None:
    limiter = AdaptiveLimiter()
    for bad in (-0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="lag_s"):
            limiter.observe_lag(bad, 0.0)


def test_cancel_gives_the_slot_back_without_a_sample() -> None:
    limiter = AdaptiveLimiter(_config(initial_limit=8))
    assert limiter.try_acquire()
    limiter.cancel()
    assert limiter.in_flight == 0 and limiter.snapshot()["admitted_total"] == 0
    with pytest.raises(RuntimeError, match="without a matching"):
        limiter.cancel()


def test_one_stall_of_the_loop_is_not_overload() -> None:
    limiter = AdaptiveLimiter(CONFIG)
    now = 0.0
    for lag_s in [0.001] * 20 + [0.5] + [0.001] * 20:  # a GC pause, or the CPU taken away
        now += 0.01 + lag_s
        limiter.observe_lag(lag_s, now)
        assert limiter.snapshot()["lag_shed_fraction"] == 0
