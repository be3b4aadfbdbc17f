"""Durable deliveries: the transactional outbox.

An event is written with one outbox row per (event, channel, recipient) in the same transaction
(:func:`warnsvc.store.db.insert_event`). A dispatcher then *claims* due rows (status ``pending``
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warnsvc.store import schema

PENDING = "pending"
IN_FLIGHT = "in_flight"
DELIVERED = "delivered"
DEAD = "dead"

_CHUNK = 900
"""Values bound in one ``IN (...)``: under SQLite's old limit of 999 parameters."""


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


class Outbox:
    """Claim, complete and reschedule outbox rows."""

    def __init__(self, engine: AsyncEngine, *, lease: float = 60.0) -> None:
        self.engine = engine
        self.lease = lease

    async def claim(
        self,
        channel: str,
        *,
        now: datetime,
        limit: int = 100,
        lease: float | None = None,
        due_by: datetime | None = None,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due rows of ``channel`` for this process, with a lease.

        ``lease`` (seconds, default the outbox's) lets a channel whose sends take longer, or
        shorter, hold its rows for as long as one batch can take. ``due_by`` (default ``now``)
        claims only pending rows due by then, so a one-off drain ends.
        """
        table = schema.outbox
        due = and_(
            table.c.channel == channel,
            or_(
                and_(table.c.status == PENDING, table.c.next_attempt_at <= (due_by or now)),
                and_(table.c.status == IN_FLIGHT, table.c.lease_until < now),
            ),
        )
        candidates = (
            select(table.c.id)
            .where(due)
            .order_by(table.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)  # PostgreSQL; SQLite ignores it
        )
        async with self.engine.begin() as conn:
            # One statement picks and leases the rows. The outer ``due`` is checked again on
            # each row as it is updated, so only rows this UPDATE moved are ours: another
            # dispatcher may have claimed some of the candidates first.
            claimed = (
                await conn.execute(
                    update(table)
                    .where(and_(table.c.id.in_(candidates), due))
                    .values(
                        status=IN_FLIGHT,
                        lease_until=now + timedelta(seconds=lease or self.lease),
                        updated_at=now,
                    )
                    .returning(table.c.id, table.c.event_id, table.c.recipient, table.c.attempts)
                )
            ).all()
            if not claimed:
                return []
            payloads = await _payloads(conn, {event_id for _, event_id, _, _ in claimed})
        # Every row of one event shares its decoded payload: read it, never change it.
        return [
            Delivery(
                id=row_id,
                event_id=event_id,
                channel=channel,
                recipient=recipient,
                attempts=attempts,
                payload=payloads[event_id],
            )
            # by id, as selected (a key: comparing SQLAlchemy rows is slow)
            for row_id, event_id, recipient, attempts in sorted(claimed, key=itemgetter(0))
        ]

    async def complete(
        self, ids: Sequence[int], *, now: datetime, status: int | None = None
    ) -> None:
        table = schema.outbox
        async with self.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.id.in_(ids))
                .values(
                    status=DELIVERED,
                    attempts=table.c.attempts + 1,
                    delivered_at=now,
                    lease_until=None,
                    last_error=None,
                    last_status=status,
                    updated_at=now,
                )
            )

    async def fail(
        self,
        delivery: Delivery,
        *,
        error: str,
        decision: RetryDecision,
        now: datetime,
        status: int | None = None,
    ) -> None:
        """Record a failed attempt: reschedule it, or dead-letter it when the decision says so."""
        table = schema.outbox
        values: dict[str, Any] = {
            "attempts": delivery.attempts + 1,
            "lease_until": None,
            "last_error": error[:2000],
            "last_status": status,
            "updated_at": now,
        }
        if decision.retry_at is None:
            values["status"] = DEAD
        else:
            values["status"] = PENDING
            values["next_attempt_at"] = decision.retry_at
        async with self.engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == delivery.id).values(values))

    async def release(self, ids: Sequence[int], *, now: datetime) -> None:
        """Give claimed rows back untouched (graceful shutdown)."""
        table = schema.outbox
        async with self.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(and_(table.c.id.in_(ids), table.c.status == IN_FLIGHT))
                .values(status=PENDING, lease_until=None, updated_at=now)
            )

    async def counts(self) -> dict[tuple[str, str], int]:
        """Rows by (channel, status)."""
        table = schema.outbox
        query = select(table.c.channel, table.c.status, func.count()).group_by(
            table.c.channel, table.c.status
        )
        async with self.engine.connect() as conn:
            return {(c, s): int(n) for c, s, n in (await conn.execute(query)).all()}

    async def next_due(self, channel: str) -> datetime | None:
        """When the earliest pending row of ``channel`` becomes due, if any."""
        table = schema.outbox
        query = select(func.min(table.c.next_attempt_at)).where(
            table.c.channel == channel, table.c.status == PENDING
        )
        async with self.engine.connect() as conn:
            value: datetime | None = (await conn.execute(query)).scalar_one_or_none()
        return value

    async def oldest_pending(self) -> dict[str, datetime]:
        """When the oldest row still pending or in flight was created, by channel."""
        table = schema.outbox
        query = (
            select(table.c.channel, func.min(table.c.created_at))
            .where(table.c.status.in_([PENDING, IN_FLIGHT]))
            .group_by(table.c.channel)
        )
        async with self.engine.connect() as conn:
            return {channel: when for channel, when in (await conn.execute(query)).all()}

    async def prune(self, *, before: datetime) -> int:
        """Delete delivered rows delivered before ``before``; pending and dead rows stay."""
        table = schema.outbox
        async with self.engine.begin() as conn:
            result = await conn.execute(
                table.delete().where(table.c.status == DELIVERED, table.c.delivered_at < before)
            )
        return int(result.rowcount or 0)


async def _payloads(conn: AsyncConnection, event_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The payload of each event, read and decoded once however many rows it has."""
    events = schema.events
    wanted = sorted(event_ids)
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        query = select(events.c.id, events.c.payload).where(events.c.id.in_(chunk))
        found.update((row.id, dict(row.payload)) for row in await conn.execute(query))
    return found
