"""CircuitBreaker on an injected clock: closed -> open -> half-open (one trial) -> closed / open."""

from __future__ import annotations

import pytest

from serve.config import BreakerConfig
from serve.router.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(failures: int = 3, cooldown_s: float = 10.0) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerConfig(failures=failures, cooldown_s=cooldown_s), clock), clock


def trip(b: CircuitBreaker) -> None:
    for _ in range(b.config.failures):
        b.failure()


def test_opens_after_n_consecutive_failures_only() -> None:
    b, _ = make()
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED and b.available() and b.failures == 2
    b.failure()
    assert b.state is BreakerState.OPEN and not b.available()


def test_a_success_resets_the_count() -> None:
    b, _ = make()
    b.failure()
    b.failure()
    b.success()
    b.failure()
    b.failure()
    assert b.state is BreakerState.CLOSED and b.failures == 2


def test_half_open_after_cooldown_lets_exactly_one_trial_through() -> None:
    b, clock = make()
    trip(b)
    clock.now += 9.9
    assert b.state is BreakerState.OPEN and b.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert b.state is BreakerState.HALF_OPEN and b.available()
    assert b.acquire() is True
    assert not b.available()  # the trial is out: nobody else until it ends


def test_trial_success_closes() -> None:
    b, clock = make()
    trip(b)
    clock.now += 10
    trial = b.acquire()
    b.success(trial)
    assert b.state is BreakerState.CLOSED and b.failures == 0 and b.acquire() is False


def test_trial_failure_reopens_for_a_full_cooldown() -> None:
    b, clock = make()
    trip(b)
    clock.now += 10
    b.failure(b.acquire())
    assert b.state is BreakerState.OPEN and b.retry_in() == pytest.approx(10.0)
    clock.now += 10
    assert b.state is BreakerState.HALF_OPEN and b.available()


def test_trial_without_verdict_frees_the_slot_for_another() -> None:
    b, clock = make()
    trip(b)
    clock.now += 10
    b.release(b.acquire())
    assert b.state is BreakerState.HALF_OPEN and b.available()


def test_stale_results_do_not_move_an_open_breaker() -> None:
    b, clock = make()
    trip(b)
    b.success()  # a stream that began before the replica broke
    assert b.state is BreakerState.OPEN
    clock.now += 10
    b.acquire()
    b.success(trial=False)  # not the trial: ignored
    b.failure(trial=False)
    assert b.state is BreakerState.HALF_OPEN and not b.available()


def test_probe_acts_as_trial_only_after_the_cooldown() -> None:
    b, clock = make()
    trip(b)
    b.probe(True)  # /health answering says nothing about why requests failed
    assert b.state is BreakerState.OPEN
    clock.now += 10
    b.probe(False)
    assert b.state is BreakerState.OPEN
    clock.now += 10
    b.probe(True)
    assert b.state is BreakerState.CLOSED and b.failures == 0


def test_threshold_of_one_and_zero_cooldown() -> None:
    b, _ = make(failures=1, cooldown_s=0)
    b.failure()
    assert b.state is BreakerState.HALF_OPEN  # open and at once ready for a trial


@pytest.mark.parametrize(("kwargs", "message"), [({"failures": 0}, "failures must be >= 1"),
                                                 ({"cooldown_s": -1}, "cooldown_s must be >= 0")])
def test_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BreakerConfig(**kwargs)


def test_reset_closes_from_any_state() -> None:
    b, _ = make()
    trip(b)
    b.reset()
    assert b.state is BreakerState.CLOSED and b.failures == 0
