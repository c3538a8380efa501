"""The circuit breaker: opens on consecutive failures, probes when the open time is up."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streamcdn.breaker import BreakerConfig, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def tripped(config: BreakerConfig, now: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker(config)
    for _ in range(config.failure_threshold):
        assert breaker.allow(now)
        breaker.record_failure(now)
    assert breaker.state_at(now) is OPEN
    return breaker


def test_it_opens_after_the_threshold_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3))
    for now in (0.0, 1.0):
        breaker.record_failure(now)
        assert breaker.allow(now) and breaker.state is CLOSED
    breaker.record_failure(2.0)
    assert breaker.state is OPEN
    assert not breaker.allow(2.0)


def test_a_success_resets_the_count() -> None:
    breaker = CircuitBreaker(BreakerConfig(failure_threshold=3))
    for _ in range(10):
        breaker.record_failure(0.0)
        breaker.record_failure(0.0)
        breaker.record_success(0.0)
    assert breaker.state is CLOSED and breaker.allow(0.0)
    assert breaker.snapshot(0.0)["consecutive_failures"] == 0


def test_it_refuses_every_call_until_the_open_time_is_up() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0), now=100.0)
    assert not any(breaker.allow(100.0 + t / 10) for t in range(50))
    assert breaker.state_at(104.99) is OPEN and breaker.state_at(105.0) is HALF_OPEN
    assert breaker.allow(105.0)


@pytest.mark.parametrize("probes", [1, 3])
def test_half_open_lets_exactly_the_configured_probes_through(probes: int) -> None:
    breaker = tripped(BreakerConfig(open_s=5.0, half_open_max_probes=probes))
    allowed = [breaker.allow(5.0 + i / 100) for i in range(10)]
    assert allowed == [True] * probes + [False] * (10 - probes)
    assert breaker.state is HALF_OPEN


def test_a_probe_success_closes_it() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0))
    assert breaker.allow(5.0)
    breaker.record_success(5.2)
    assert breaker.state is CLOSED
    assert all(breaker.allow(5.3) for _ in range(20))
    # and it takes a full threshold of failures to open again
    for _ in range(4):
        breaker.record_failure(6.0)
    assert breaker.allow(6.0)


def test_a_probe_failure_reopens_it_with_the_timer_restarted_and_doubled() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0, max_open_s=60.0))
    assert breaker.allow(5.0)
    breaker.record_failure(5.5)
    assert breaker.state is OPEN
    assert not breaker.allow(14.0)  # 5.5 + 10 s: the open time doubled
    assert breaker.allow(15.5)


def test_the_open_time_doubles_per_failed_probe_up_to_the_cap_and_resets_on_close() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0, max_open_s=30.0))
    now, waits = 0.0, []
    for _ in range(5):
        wait = breaker.snapshot(now)["open_s"]
        waits.append(wait)
        now += wait
        assert not breaker.allow(now - 0.01) and breaker.allow(now)
        breaker.record_failure(now)
    assert waits == [5.0, 10.0, 20.0, 30.0, 30.0]
    now += 30.0
    assert breaker.allow(now)
    breaker.record_success(now)
    for _ in range(5):
        breaker.record_failure(now)
    assert breaker.state is OPEN and breaker.snapshot(now)["open_s"] == 5.0


def test_a_fixed_open_time_when_the_cap_equals_it() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0, max_open_s=5.0))
    for now in (5.0, 10.0, 15.0):
        assert breaker.allow(now)
        breaker.record_failure(now)
    assert breaker.snapshot(15.0)["retry_at"] == 20.0


def test_late_results_from_before_it_opened_change_nothing() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0))
    breaker.record_success(1.0)  # a slow call started while closed
    breaker.record_failure(2.0)
    assert breaker.state_at(4.9) is OPEN
    assert breaker.snapshot(4.9)["retry_at"] == 5.0


def test_a_probe_whose_result_never_comes_does_not_wedge_it_half_open() -> None:
    breaker = tripped(BreakerConfig(open_s=5.0))
    assert breaker.allow(5.0)  # this probe's caller is cancelled and never reports
    assert not breaker.allow(9.9)
    assert breaker.allow(10.0)
    breaker.record_success(10.1)
    assert breaker.state is CLOSED


def test_the_snapshot_is_json_for_health() -> None:
    breaker = tripped(BreakerConfig(failure_threshold=2, open_s=5.0), now=50.0)
    assert json.loads(json.dumps(breaker.snapshot(51.0))) == {
        "state": "open",
        "consecutive_failures": 2,
        "opened_at": 50.0,
        "open_s": 5.0,
        "retry_at": 55.0,
        "trips": 1,
    }
    assert breaker.snapshot(55.0)["state"] == "half_open"
    assert CircuitBreaker().snapshot(0.0)["state"] == "closed"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"failure_threshold": 0}, "BreakerConfig.failure_threshold = 0: must be at least 1"),
        ({"open_s": 0.0}, "BreakerConfig.open_s = 0.0: must be more than 0"),
        ({"half_open_max_probes": 0}, "BreakerConfig.half_open_max_probes = 0"),
        ({"max_open_s": 1.0}, "BreakerConfig.max_open_s = 1.0: must be at least open_s"),
    ],
)
def test_a_bad_config_names_the_field_and_value(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerConfig(**changes)  # type: ignore[arg-type]


@given(
    st.lists(
        st.tuples(st.sampled_from(["allow", "success", "failure"]), st.floats(0, 10)),
        max_size=200,
    )
)
def test_closed_always_allows_open_never_does_and_the_open_time_stays_bounded(
    ops: list[tuple[str, float]],
) -> None:
    config = BreakerConfig(failure_threshold=3, open_s=5.0, half_open_max_probes=2, max_open_s=40.0)
    breaker = CircuitBreaker(config)
    now = 0.0
    for op, step_s in ops:
        now += step_s
        before, stored = breaker.state_at(now), breaker.state
        if op == "allow":
            allowed = breaker.allow(now)
            assert allowed if before is CLOSED else not (before is OPEN and allowed)
        elif op == "success":
            breaker.record_success(now)
            # a result is ignored until a probe has gone out, and otherwise closes it
            assert breaker.state is (OPEN if stored is OPEN else CLOSED)
        else:
            breaker.record_failure(now)
        snap = breaker.snapshot(now)
        assert config.open_s <= snap["open_s"] <= config.max_open_s
        assert 0 <= snap["consecutive_failures"] <= config.failure_threshold
