"""The persisted retry schedule of the outbox (:class:`warnsvc.outbox.RetryPolicy`)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from warnsvc.outbox import RetryDecision, RetryPolicy

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0


def delay(decision: RetryDecision) -> float:
    assert decision.retry_at is not None
    return (decision.retry_at - NOW).total_seconds()


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.initial, policy.factor, policy.cap, policy.max_attempts) == (
        30.0,
        2.0,
        2 * HOUR,
        20,
    )


def test_ceilings_double_then_cap() -> None:
    policy = RetryPolicy(initial=10.0, factor=2.0, cap=100.0, max_attempts=10)

    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    ceilings = [delay(policy.decide(n, now=NOW, rng=Top())) for n in range(1, 10)]
    assert ceilings == [10.0, 20.0, 40.0, 80.0, 100.0, 100.0, 100.0, 100.0, 100.0]


def test_jitter_stays_within_half_and_full_ceiling() -> None:
    policy = RetryPolicy()
    rng = random.Random(1234)
    for attempts in range(1, policy.max_attempts):
        ceiling = min(policy.cap, policy.initial * 2 ** (attempts - 1))
        delays = [delay(policy.decide(attempts, now=NOW, rng=rng)) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempts, delays)
        assert len(set(delays)) > 1  # jittered, not fixed


def test_delays_grow_until_the_cap() -> None:
    policy = RetryPolicy()
    rng = random.Random(7)
    delays = [delay(policy.decide(n, now=NOW, rng=rng)) for n in range(1, policy.max_attempts)]
    assert delays[0] <= 30.0
    assert max(delays) <= policy.cap
    # a later attempt never waits less than half the ceiling; ceilings double up to the cap
    for n, d in enumerate(delays, start=1):
        assert d >= min(policy.cap, 30.0 * 2 ** (n - 1)) / 2
    assert delays[-1] >= policy.cap / 2


def test_seeded_random_is_reproducible() -> None:
    policy = RetryPolicy()
    first = [policy.decide(n, now=NOW, rng=random.Random(42)) for n in range(1, 8)]
    second = [policy.decide(n, now=NOW, rng=random.Random(42)) for n in range(1, 8)]
    assert first == second


def test_dead_after_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=5)
    rng = random.Random(0)
    assert [policy.decide(n, now=NOW, rng=rng).dead for n in range(1, 8)] == [
        False,
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    assert policy.decide(5, now=NOW) == RetryDecision(retry_at=None)
    assert RetryDecision(retry_at=NOW).dead is False


def test_total_span_is_about_a_day() -> None:
    policy = RetryPolicy()
    span = policy.total_span()
    assert 18 * HOUR <= span <= 36 * HOUR
    # exactly: 30 s doubling for eight retries, then the 2 h cap for the rest
    assert span == 30.0 * (2**8 - 1) + (policy.max_attempts - 9) * policy.cap


def test_a_whole_schedule_ends_dead_within_the_span() -> None:
    policy = RetryPolicy()
    rng = random.Random(2024)
    moment = NOW
    attempts = 0
    while True:
        attempts += 1
        decision = policy.decide(attempts, now=moment, rng=rng)
        if decision.dead:
            break
        assert decision.retry_at is not None
        moment = decision.retry_at
    assert attempts == policy.max_attempts
    waited = (moment - NOW).total_seconds()
    assert policy.total_span() / 2 <= waited <= policy.total_span()
    assert waited >= 12 * HOUR


def test_total_span_of_a_small_policy() -> None:
    policy = RetryPolicy(initial=1.0, factor=3.0, cap=10.0, max_attempts=5)
    assert policy.total_span() == 1.0 + 3.0 + 9.0 + 10.0


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (600.0, 600.0),  # longer than the backoff: wait as asked
        (1.0, None),  # shorter: the backoff wins
        (10 * HOUR, 2 * HOUR),  # longer than the cap: the cap
    ],
)
def test_retry_after_is_respected(retry_after: float, expected: float | None) -> None:
    policy = RetryPolicy()
    rng_seed = 5
    plain = delay(policy.decide(1, now=NOW, rng=random.Random(rng_seed)))
    got = delay(policy.decide(1, now=NOW, retry_after=retry_after, rng=random.Random(rng_seed)))
    assert got == (plain if expected is None else expected)


def test_retry_after_does_not_revive_a_dead_delivery() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.decide(3, now=NOW, retry_after=5.0).dead


def test_huge_attempt_counts_do_not_overflow() -> None:
    policy = RetryPolicy(max_attempts=100_000)
    decision = policy.decide(5_000, now=NOW, rng=random.Random(1))
    assert policy.cap / 2 <= delay(decision) <= policy.cap


def test_retry_at_is_after_now_and_aware() -> None:
    decision = RetryPolicy().decide(3, now=NOW, rng=random.Random(3))
    assert decision.retry_at is not None
    assert decision.retry_at.tzinfo is not None
    assert NOW + timedelta(seconds=60) <= decision.retry_at <= NOW + timedelta(seconds=120)
