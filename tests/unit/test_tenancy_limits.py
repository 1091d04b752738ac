"""Per-key limits on an injected clock: token buckets, the concurrency cap, charge-then-settle for
tokens, and OpenAI's header formats."""

from __future__ import annotations

import pytest

from serve.tenancy.keys import KeySpec, hash_key
from serve.tenancy.limits import (
    Refusal,
    TenantLimiter,
    Ticket,
    TokenBucket,
    duration,
    estimate_tokens,
    retry_after,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def spec(**limits: int) -> KeySpec:
    return KeySpec(id="k", hash=hash_key("secret"), **limits)  # type: ignore[arg-type]


def test_bucket_starts_full_refills_evenly_and_caps_at_capacity() -> None:
    clock = Clock()
    b = TokenBucket(60, clock)  # 1 token per second
    assert b.level() == 60
    b.charge(60)
    assert b.level() == 0
    clock.t += 10
    assert b.level() == pytest.approx(10)
    clock.t += 1000
    assert b.level() == 60  # never above capacity


def test_bucket_goes_negative_and_reports_waits() -> None:
    clock = Clock()
    b = TokenBucket(120, clock)  # 2 per second
    b.charge(150)
    assert b.level() == pytest.approx(-30)
    assert b.wait_s(1) == pytest.approx(15.5)
    assert b.reset_s() == pytest.approx(75)
    b.charge(-1000)  # a refund cannot overfill
    assert b.level() == 120 and b.wait_s(1) == 0


def test_requests_per_minute_refuses_then_recovers() -> None:
    clock = Clock()
    lim = TenantLimiter(spec(requests_per_minute=2), clock)
    assert isinstance(lim.admit(1), Ticket) and isinstance(lim.admit(1), Ticket)
    refused = lim.admit(1)
    assert isinstance(refused, Refusal)
    assert refused.retry_after_s == pytest.approx(30) and "requests per minute" in refused.message
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.t += 29.9
    assert isinstance(lim.admit(1), Refusal)
    clock.t += 0.1
    assert isinstance(lim.admit(1), Ticket)


def test_tokens_are_estimated_up_front_and_settled_with_real_usage() -> None:
    clock = Clock()
    lim = TenantLimiter(spec(tokens_per_minute=600), clock)  # 10 per second
    t = lim.admit(100)
    assert isinstance(t, Ticket) and lim.tokens is not None
    assert lim.tokens.level() == pytest.approx(500)
    t.settle(250)  # the request really used 250
    assert lim.tokens.level() == pytest.approx(350)
    t.settle(10_000)  # settling twice changes nothing
    assert lim.tokens.level() == pytest.approx(350)
    failed = lim.admit(100)
    assert isinstance(failed, Ticket)
    failed.settle(None)  # no usage (it failed): the estimate comes back
    assert lim.tokens.level() == pytest.approx(350)


def test_one_request_may_overdraw_tokens_and_the_next_waits_for_the_debt() -> None:
    clock = Clock()
    lim = TenantLimiter(spec(tokens_per_minute=60), clock)  # 1 per second
    t = lim.admit(10)
    assert isinstance(t, Ticket)
    t.settle(90)  # 30 over the budget
    refused = lim.admit(10)
    assert isinstance(refused, Refusal) and "tokens per minute" in refused.message
    assert refused.retry_after_s == pytest.approx(30, abs=0.01)
    assert retry_after(refused.retry_after_s) in {"30", "31"}  # whole seconds, rounded up
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    clock.t += 30.5
    assert isinstance(lim.admit(10), Ticket)


def test_concurrency_cap_and_a_refusal_costs_nothing() -> None:
    clock = Clock()
    lim = TenantLimiter(spec(max_concurrent=1, requests_per_minute=10), clock)
    first = lim.admit(1)
    assert isinstance(first, Ticket)
    refused = lim.admit(1)
    assert isinstance(refused, Refusal) and "concurrent" in refused.message
    assert lim.requests is not None and lim.requests.level() == pytest.approx(9)  # the refusal took nothing
    first.settle(5)
    assert isinstance(lim.admit(1), Ticket) and lim.in_flight == 1


def test_formats() -> None:
    assert [duration(s) for s in (0.0, 0.0201, 1.0, 59.2, 60.0, 361.0)] == ["0ms", "21ms", "1s", "1m0s", "1m0s", "6m1s"]
    assert [retry_after(s) for s in (0.0, 0.2, 1.0, 1.01)] == ["1", "1", "1", "2"]
    assert [estimate_tokens(b) for b in (None, 0, 3, 400)] == [1, 1, 1, 100]
