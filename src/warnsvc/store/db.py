"""The store: opens the database, runs migrations, and answers the queries of the service.

One :class:`Store` wraps one SQLAlchemy async engine. SQLite (the default) runs in WAL mode
with a busy timeout so the web app can read while the poller writes. Every query here is plain
SQLAlchemy Core, portable to PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from alembic import command
from alembic.config import Config
from alembic.util import CommandError as AlembicError
from sqlalchemy import Connection, RowMapping, event, func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from warnsvc.errors import StoreError
from warnsvc.model import Event, SituationState, Status
from warnsvc.store import schema

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
OPERATOR_NOTICE = "operator.notice"
"""The type of the events rows that carry operators' notices (see warnsvc.operators)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceHealth:
    """How a source's polls have gone lately."""

    source_id: str
    healthy: bool
    consecutive_failures: int
    last_error: str | None
    last_poll_at: datetime | None
    last_success_at: datetime | None
    last_failure_at: datetime | None
    observations: int
    baseline_done: bool
    last_warning: str | None = None
    """What the last good poll skipped (unreadable items, with the offending values)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedPage:
    """The last good body of a URL and its validators, for conditional GET."""

    url: str
    etag: str | None
    last_modified: str | None
    content_type: str | None
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryEntry:
    situation: str
    source_id: str
    level: str | None
    status: Status
    page_date: Any
    event_id: str | None


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()


def _run_migrations(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


class Store:
    """The database behind warnsvc."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` (creating a SQLite file's directory) and migrate the schema."""
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url)
        if parsed.get_backend_name() == "sqlite":
            _configure_sqlite(engine)
        store = cls(engine)
        if migrate:
            try:
                await store.migrate()
            except BaseException:
                await engine.dispose()
                raise
        return store

    async def migrate(self) -> None:
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(_run_migrations)
        except (SQLAlchemyError, AlembicError) as exc:
            # AlembicError: e.g. a database stamped by a newer warnsvc with an unknown revision
            raise StoreError(f"cannot migrate the database: {exc}") from exc

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(select(1))
        except (SQLAlchemyError, OSError):
            return False
        return True

    # -- situations ---------------------------------------------------------------------------

    async def situation_states(self, namespace: str) -> dict[str, SituationState]:
        """Every known situation whose id starts with ``namespace:``."""
        table = schema.situations
        prefix = f"{namespace}:"
        # not LIKE: "_" and "%" in a namespace would be wildcards, and SQLite's LIKE ignores case
        query = select(table).where(func.substr(table.c.id, 1, len(prefix)) == prefix)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return {row["id"]: _state_from_row(row) for row in rows}

    async def all_situations(self) -> list[SituationState]:
        table = schema.situations
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(table).order_by(table.c.id))).mappings().all()
        return [_state_from_row(row) for row in rows]

    async def situation(self, situation: str) -> tuple[SituationState, str] | None:
        """One situation's state and the id of its scale, or None."""
        table = schema.situations
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == situation))).mappings()
            found = row.first()
        return (_state_from_row(found), found["scale"]) if found else None

    async def event_payload(self, event_id: str) -> dict[str, Any] | None:
        table = schema.events
        async with self.engine.connect() as conn:
            value = (
                await conn.execute(select(table.c.payload).where(table.c.id == event_id))
            ).scalar_one_or_none()
        return dict(value) if value is not None else None

    async def apply_manual(
        self,
        *,
        state: SituationState,
        scale: str,
        event: Event,
        recipients: Recipients,
        now: datetime,
    ) -> None:
        """Write an operator's event with the state it sets, in ONE transaction."""
        try:
            async with self.engine.begin() as conn:
                await _upsert_state(conn, state, scale=scale, now=now)
                await insert_event(conn, event, recipients, now=now)
                await conn.execute(
                    schema.level_history.insert().values(
                        situation_id=state.situation,
                        source_id="manual",
                        level=state.level,
                        status=state.status.value,
                        page_date=state.date,
                        event_id=event.id,
                        recorded_at=now,
                    )
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the manual event: {exc}") from exc

    async def level_history(self, situation: str) -> list[dict[str, Any]]:
        table = schema.level_history
        query = select(table).where(table.c.situation_id == situation).order_by(table.c.id)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def apply_poll(
        self,
        *,
        source_id: str,
        scale: str,
        states: Sequence[SituationState],
        history: Sequence[HistoryEntry],
        events: Sequence[Event],
        recipients: Recipients,
        observations: int,
        now: datetime,
        warnings: Sequence[str] = (),
    ) -> None:
        """Write one successful poll in ONE transaction: states, history, events, outbox, health.

        ``warnings`` (items the poll skipped, with why) become the source's ``last_warning``.

        ``recipients`` maps a channel name to the recipients of an event (or is a
        :class:`Router` that says so per event, reading endpoints and subscribers on the same
        transaction); one outbox row per (event, channel, recipient) is created with the event,
        so an event that exists is delivered.
        """
        try:
            async with self.engine.begin() as conn:
                for state in states:
                    await _upsert_state(conn, state, scale=scale, now=now)
                for event_ in events:
                    await insert_event(conn, event_, recipients, now=now)
                for entry in history:
                    await conn.execute(
                        schema.level_history.insert().values(
                            situation_id=entry.situation,
                            source_id=entry.source_id,
                            level=entry.level,
                            status=entry.status.value,
                            page_date=entry.page_date,
                            event_id=entry.event_id,
                            recorded_at=now,
                        )
                    )
                await _record_success(
                    conn, source_id, observations=observations, now=now, warnings=warnings
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the poll of {source_id!r}: {exc}") from exc

    # -- source health -----------------------------------------------------------------------

    async def source_health(self, source_id: str) -> SourceHealth | None:
        table = schema.source_health
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(table).where(table.c.source_id == source_id)))
                .mappings()
                .first()
            )
        return SourceHealth(**row) if row else None

    async def all_source_health(self) -> list[SourceHealth]:
        table = schema.source_health
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(table).order_by(table.c.source_id))).mappings()
            return [SourceHealth(**row) for row in rows.all()]

    async def record_failure(self, source_id: str, error: str, *, now: datetime) -> SourceHealth:
        """Mark a source unhealthy with the reason; nothing else changes."""
        table = schema.source_health
        async with self.engine.begin() as conn:
            await _ensure_health_row(conn, source_id)
            await conn.execute(
                update(table)
                .where(table.c.source_id == source_id)
                .values(
                    healthy=False,
                    consecutive_failures=table.c.consecutive_failures + 1,
                    last_error=error[:2000],
                    last_poll_at=now,
                    last_failure_at=now,
                )
            )
        health = await self.source_health(source_id)
        assert health is not None
        return health

    # -- fetch cache -------------------------------------------------------------------------

    async def cached_page(self, url: str) -> CachedPage | None:
        table = schema.fetch_cache
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.url == url))).mappings().first()
        if row is None:
            return None
        return CachedPage(
            url=row["url"],
            etag=row["etag"],
            last_modified=row["last_modified"],
            content_type=row["content_type"],
            body=row["body"],
        )

    async def save_page(self, page: CachedPage, *, now: datetime) -> None:
        table = schema.fetch_cache
        values = {
            "etag": page.etag,
            "last_modified": page.last_modified,
            "content_type": page.content_type,
            "body": page.body,
            "fetched_at": now,
        }
        async with self.engine.begin() as conn:
            result = await conn.execute(update(table).where(table.c.url == page.url).values(values))
            if result.rowcount == 0:
                await conn.execute(table.insert().values(url=page.url, **values))

    # -- events ------------------------------------------------------------------------------

    async def recent_events(
        self, *, limit: int = 100, situation: str | None = None
    ) -> list[dict[str, Any]]:
        """Event payloads, newest first (operators' notices are not events of a situation)."""
        table = schema.events
        query = (
            select(table.c.payload)
            .where(table.c.type != OPERATOR_NOTICE)
            .order_by(table.c.seq.desc())
            .limit(limit)
        )
        if situation is not None:
            query = query.where(table.c.situation_id == situation)
        async with self.engine.connect() as conn:
            return [dict(row[0]) for row in (await conn.execute(query)).all()]

    async def count_events(self) -> int:
        async with self.engine.connect() as conn:
            return int(
                (
                    await conn.execute(
                        select(func.count())
                        .select_from(schema.events)
                        .where(schema.events.c.type != OPERATOR_NOTICE)
                    )
                ).scalar_one()
            )


class Router(Protocol):
    """Who receives an event, by channel; runs on the transaction that writes the event."""

    async def __call__(
        self, conn: AsyncConnection, event: Event
    ) -> Mapping[str, Sequence[str]]: ...


Recipients = Mapping[str, Sequence[str]] | Router


async def insert_event(
    conn: AsyncConnection,
    event_: Event,
    recipients: Recipients,
    *,
    now: datetime,
) -> None:
    """Insert an event and its outbox rows on an open transaction."""
    routes: Mapping[str, Iterable[str]] = (
        await recipients(conn, event_) if callable(recipients) else recipients
    )
    await conn.execute(
        schema.events.insert().values(
            id=event_.id,
            type=event_.type.value,
            source_id=event_.source_id,
            situation_id=event_.situation,
            occurred_at=event_.occurred_at,
            detected_at=event_.detected_at,
            payload=event_.payload(),
        )
    )
    rows = [
        {
            "event_id": event_.id,
            "channel": channel,
            "recipient": recipient,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
        }
        for channel, targets in routes.items()
        for recipient in targets
    ]
    if rows:
        await conn.execute(schema.outbox.insert(), rows)


async def _ensure_health_row(conn: AsyncConnection, source_id: str) -> None:
    table = schema.source_health
    exists = (
        await conn.execute(select(table.c.source_id).where(table.c.source_id == source_id))
    ).first()
    if exists is None:
        await conn.execute(
            table.insert().values(
                source_id=source_id,
                healthy=True,
                consecutive_failures=0,
                observations=0,
                baseline_done=False,
            )
        )


async def _record_success(
    conn: AsyncConnection,
    source_id: str,
    *,
    observations: int,
    now: datetime,
    warnings: Sequence[str] = (),
) -> None:
    table = schema.source_health
    await _ensure_health_row(conn, source_id)
    await conn.execute(
        update(table)
        .where(table.c.source_id == source_id)
        .values(
            healthy=True,
            consecutive_failures=0,
            last_error=None,
            last_poll_at=now,
            last_success_at=now,
            observations=observations,
            baseline_done=True,
            last_warning="; ".join(warnings)[:2000] or None,
        )
    )


async def _upsert_state(
    conn: AsyncConnection, state: SituationState, *, scale: str, now: datetime
) -> None:
    table = schema.situations
    values = {
        "source_id": state.source_id,
        "name": state.name,
        "url": state.url,
        "scale": scale,
        "level": state.level,
        "status": state.status.value,
        "page_date": state.date,
        "summary": state.summary,
        "risk_factors": list(state.risk_factors),
        "content_hash": state.content_hash,
        "pending_level": state.pending_level,
        "pending_status": state.pending_status.value if state.pending_status else None,
        "pending_count": state.pending_count,
        "pending_since": state.pending_since,
        "updated_at": now,
    }
    result = await conn.execute(update(table).where(table.c.id == state.situation).values(values))
    if result.rowcount == 0:
        await conn.execute(table.insert().values(id=state.situation, first_seen_at=now, **values))


def _state_from_row(row: RowMapping) -> SituationState:
    return SituationState(
        situation=row["id"],
        source_id=row["source_id"],
        name=row["name"],
        level=row["level"],
        status=Status(row["status"]),
        date=row["page_date"],
        url=row["url"],
        summary=row["summary"],
        risk_factors=tuple(row["risk_factors"] or ()),
        content_hash=row["content_hash"],
        pending_level=row["pending_level"],
        pending_status=Status(row["pending_status"]) if row["pending_status"] else None,
        pending_count=row["pending_count"],
        pending_since=row["pending_since"],
    )
