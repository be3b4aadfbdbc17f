"""The outbox in SQL: the one way rows get in (:func:`write_event`, :func:`enqueue`), and how a
dispatcher claims, completes, reschedules and releases them.

Claiming differs by engine. On PostgreSQL a CTE picks due rows ``FOR UPDATE SKIP LOCKED`` (and
is materialised, so it runs once: an ``IN (subquery)`` form lets the planner re-run the
subquery per row and one replica takes every due row); several replicas claim side by side
without waiting on each other. SQLite has one writer at a time, so the plain ``UPDATE ... WHERE
id IN (...)`` is exact there.

The three statements every delivery pays (insert with its event, claim, complete) are the hot
path of a fan-out to thousands of endpoints: they are written in each engine's own SQL and run
through the driver (:meth:`AsyncConnection.exec_driver_sql`), so no row goes through
SQLAlchemy's statement compilation or per-value type processing. Their timestamps are bound in
the form :class:`~warnsvc.store.schema.UTCDateTime` stores (see :func:`_bind_time`); everything
else here is plain SQLAlchemy Core.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import and_, func, select, update

from warnsvc.outbox import DEAD, DELIVERED, IN_FLIGHT, PENDING, Delivery, RetryDecision
from warnsvc.store import schema
from warnsvc.store.aio import AsyncConnection, AsyncEngine
from warnsvc.store.guard import store_errors

_CHUNK = 900
"""Values bound in one ``IN (...)``: under SQLite's old limit of 999 parameters."""


async def write_event(
    conn: AsyncConnection,
    *,
    event_id: str,
    type: str,
    source_id: str,
    situation_id: str | None,
    occurred_at: datetime,
    detected_at: datetime,
    payload: Mapping[str, Any],
    routes: Mapping[str, Iterable[str]],
    now: datetime,
    revision: int | None = None,
) -> None:
    """Insert an event and its outbox rows on an open transaction (the transactional outbox).

    ``revision`` is the situation's revision the event moves on from: the unique key on
    (situation_id, situation_revision) makes a second event for one transition impossible.
    """
    await conn.execute(
        schema.events.insert().values(
            id=event_id,
            type=type,
            source_id=source_id,
            situation_id=situation_id,
            occurred_at=occurred_at,
            detected_at=detected_at,
            payload=dict(payload),
            situation_revision=revision,
        )
    )
    await enqueue(conn, event_id, routes, now=now)


async def enqueue(
    conn: AsyncConnection, event_id: str, routes: Mapping[str, Iterable[str]], *, now: datetime
) -> None:
    """One pending outbox row per (channel, recipient) of a stored event, on an open transaction."""
    postgres = conn.dialect.name == "postgresql"
    at = _bind_time(now, postgres=postgres)
    for channel, targets in routes.items():
        recipients = list(targets)
        if not recipients:
            continue
        if postgres:  # one statement, however many rows: the recipients go as one array
            await conn.exec_driver_sql(_PG_ENQUEUE, (event_id, channel, at, recipients))
        else:
            await conn.exec_driver_sql(
                _SQLITE_ENQUEUE, [(event_id, channel, r, at, at, at) for r in recipients]
            )


_PG_ENQUEUE = f"""
INSERT INTO outbox
    (event_id, channel, recipient, status, attempts, next_attempt_at, created_at, updated_at)
SELECT $1, $2, recipient, '{PENDING}', 0, $3, $3, $3 FROM unnest($4::varchar[]) AS t(recipient)
"""
_SQLITE_ENQUEUE = f"""
INSERT INTO outbox
    (event_id, channel, recipient, status, attempts, next_attempt_at, created_at, updated_at)
VALUES (?, ?, ?, '{PENDING}', 0, ?, ?, ?)
"""
# PostgreSQL: each kind of due row picked through its index and locked as it is picked (ours
# alone until we commit; rows another replica holds are skipped), once (materialised: an
# ``IN (subquery)`` lets the planner re-run it per row, and one replica takes every row).
# Pending rows come oldest due first, walking (status, next_attempt_at) and stopping at the
# limit: ordering by id instead walks every row the channel ever had. The rows are then
# updated by primary key (``= ANY(ARRAY(...))``), never by joining the whole table.
_PG_CLAIM = f"""
WITH expired AS MATERIALIZED (
    SELECT id FROM outbox
    WHERE channel = $1 AND status = '{IN_FLIGHT}' AND lease_until < $3
    LIMIT $4 FOR UPDATE SKIP LOCKED
), due AS MATERIALIZED (
    SELECT id FROM outbox
    WHERE channel = $1 AND status = '{PENDING}' AND next_attempt_at <= $2
    ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED
)
UPDATE outbox SET status = '{IN_FLIGHT}', lease_until = $5, updated_at = $3
WHERE id = ANY(ARRAY(SELECT id FROM expired UNION ALL SELECT id FROM due LIMIT $4))
RETURNING id, event_id, recipient, attempts
"""
# SQLite: one writer at a time, so the rows picked are still due when the same statement
# updates them. The two kinds of due row are picked apart, each walking the (channel, status)
# index, which SQLite keeps in rowid order, so the merge by id stops at the limit; the update
# then finds them by primary key. (With one ``OR`` SQLite walks every row the channel ever
# had, delivered ones kept for days included; the unary ``+`` keeps it off the (status,
# next_attempt_at) index, whose rows would all be sorted by id at every claim.)
_SQLITE_CLAIM = f"""
UPDATE outbox SET status = '{IN_FLIGHT}', lease_until = :lease, updated_at = :now
WHERE id IN (
    SELECT id FROM outbox
    WHERE channel = :channel AND status = '{PENDING}' AND +next_attempt_at <= :due_by
    UNION ALL
    SELECT id FROM outbox
    WHERE channel = :channel AND status = '{IN_FLIGHT}' AND +lease_until < :now
    ORDER BY id LIMIT :limit
)
RETURNING id, event_id, recipient, attempts
"""
_COMPLETE = f"""
UPDATE outbox SET status = '{DELIVERED}', attempts = attempts + 1, delivered_at = {{now}},
    lease_until = NULL, last_error = NULL, last_status = {{status}}, updated_at = {{now}}
WHERE {{which}}
"""
_PG_COMPLETE = _COMPLETE.format(now="$1", status="$2", which="id = ANY($3::integer[])")


def _bind_time(value: datetime, *, postgres: bool) -> datetime | str:
    """``value`` as :class:`~warnsvc.store.schema.UTCDateTime` binds it: an aware datetime for
    PostgreSQL, for SQLite the naive UTC text SQLAlchemy's DATETIME writes (so the two sort and
    compare alike)."""
    if value.tzinfo is None:
        raise ValueError("naive datetime given to a UTC column")
    if postgres:
        return value
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


@store_errors
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
        postgres = self.engine.dialect.name == "postgresql"
        lease_until = now + timedelta(seconds=lease or self.lease)
        async with self.engine.begin() as conn:
            if postgres:
                arguments: tuple[Any, ...] | dict[str, Any] = (
                    channel,
                    due_by or now,
                    now,
                    limit,
                    lease_until,
                )
                statement = _PG_CLAIM
            else:
                arguments = {
                    "channel": channel,
                    "due_by": _bind_time(due_by or now, postgres=False),
                    "now": _bind_time(now, postgres=False),
                    "limit": limit,
                    "lease": _bind_time(lease_until, postgres=False),
                }
                statement = _SQLITE_CLAIM
            result = await conn.exec_driver_sql(statement, arguments)
            claimed = cast(list[tuple[int, str, str, int]], result.all())
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
        postgres = self.engine.dialect.name == "postgresql"
        at = _bind_time(now, postgres=postgres)
        async with self.engine.begin() as conn:
            if postgres:
                await conn.exec_driver_sql(_PG_COMPLETE, (at, status, list(ids)))
                return
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                which = f"id IN ({', '.join('?' * len(chunk))})"
                statement = _COMPLETE.format(now="?", status="?", which=which)
                await conn.exec_driver_sql(statement, (at, status, at, *chunk))

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

    async def requeue(
        self,
        channel: str,
        *,
        now: datetime,
        recipient: str | None = None,
        ids: Sequence[int] | None = None,
        dead_since: datetime | None = None,
    ) -> int:
        """Queue rows of ``channel`` again, with a fresh retry schedule: the rows ``ids``
        (delivered or dead), or every row dead-lettered at or after ``dead_since``;
        ``recipient`` keeps it to one recipient's rows. Returns how many were queued."""
        if (ids is None) == (dead_since is None):
            raise ValueError("requeue wants either ids or dead_since")
        table = schema.outbox
        which = [table.c.channel == channel]
        if recipient is not None:
            which.append(table.c.recipient == recipient)
        if ids is not None:
            which += [table.c.id.in_(list(ids)), table.c.status.in_([DEAD, DELIVERED])]
        else:
            which += [table.c.status == DEAD, table.c.updated_at >= dead_since]
        values = {
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "lease_until": None,
            "delivered_at": None,
            "updated_at": now,
        }
        async with self.engine.begin() as conn:
            result = await conn.execute(update(table).where(*which).values(values))
        return int(result.rowcount or 0)

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
