"""Durable deliveries: the transactional outbox's rows and retry policy (pure data, no I/O).

An event is written with one outbox row per (event, channel, recipient) in the same transaction
(:mod:`warnsvc.store.outbox` holds the SQL). A dispatcher then *claims* due rows (status ``pending``
and ``next_attempt_at`` passed, or ``in_flight`` with an expired lease after a crash), hands them
to a channel, and marks each one ``delivered``, schedules a retry, or moves it to ``dead``.

Row states::

    pending --claim--> in_flight --complete--> delivered
       ^                   |
       +----- retry -------+--- give up ---> dead

The retry policy is data (:class:`RetryPolicy` -> :class:`RetryDecision`): the decision is
stored on the row, so a crash or restart loses nothing. Short in-process retries for blips
belong to the channel (tenacity); this module handles the persisted schedule.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

PENDING = "pending"
IN_FLIGHT = "in_flight"
DELIVERED = "delivered"
DEAD = "dead"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One outbox row, as claimed by a dispatcher.

    ``payload`` is the event's, decoded once per claim and shared by every row of that event
    in the batch: read it, never change it.
    """

    id: int
    event_id: str
    channel: str
    recipient: str
    attempts: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDecision:
    """What to do after a failed attempt: retry at ``retry_at``, or give up when it is None."""

    retry_at: datetime | None

    @property
    def dead(self) -> bool:
        return self.retry_at is None


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, over a bounded number of attempts.

    The defaults (30 s doubling to a 2 h cap, 20 attempts) spread retries over about a day:
    at most 24 h from the first failure to dead-letter, about 18 h on average with the jitter.
    """

    initial: float = 30.0
    factor: float = 2.0
    cap: float = 2 * 3600.0
    max_attempts: int = 20

    def decide(
        self,
        attempts: int,
        *,
        now: datetime,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        """Decide after ``attempts`` failed attempts (1 after the first failure)."""
        if attempts >= self.max_attempts:
            return RetryDecision(retry_at=None)
        ceiling = self._ceiling(attempts)
        delay = (rng or random).uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.cap))
        return RetryDecision(retry_at=now + timedelta(seconds=delay))

    def total_span(self) -> float:
        """The longest time from the first failure to dead-letter, in seconds."""
        return sum(self._ceiling(n) for n in range(1, self.max_attempts))

    def _ceiling(self, attempts: int) -> float:
        """The longest delay after ``attempts`` failures (no overflow for large counts)."""
        try:
            return min(self.cap, self.initial * self.factor ** (attempts - 1))
        except OverflowError:
            return self.cap
