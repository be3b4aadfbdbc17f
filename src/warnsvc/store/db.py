"""The store: the one door to the database. Every other module calls it; none holds SQL.

One :class:`Store` wraps one SQLAlchemy async engine, on SQLite (the embedded default, WAL mode
with a busy timeout so the web app reads while the poller writes) or PostgreSQL (several
replicas on one database). It answers for situations, events, level history, source health
and the fetch cache itself, and hands out the rest by part::

    store.outbox        enqueue (with events), claim, complete, fail, release, counts, prune
    store.endpoints     webhook endpoints, their health and deliveries, redelivery
    store.subscribers   email subscribers, confirmations and digests
    store.notices       what operators must hear about, forwarded once
    store.replicas      the processes on this database, their heartbeats, who leads

Start-up on PostgreSQL takes an advisory lock around the migrations (and around syncing the
YAML's endpoints and subscribers), so replicas that start together migrate once.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from alembic import command
from alembic.config import Config
from alembic.util import CommandError as AlembicError
from sqlalchemy import Connection, RowMapping, Text, cast, event, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from warnsvc.errors import StoreConflictError, StoreError, StoreUnavailableError
from warnsvc.model import Event, SituationState, Status
from warnsvc.store import schema
from warnsvc.store.guard import store_errors
from warnsvc.store.locks import STARTUP_LOCK
from warnsvc.store.notices import OPERATOR_NOTICE, NoticeStore
from warnsvc.store.outbox import Outbox, write_event
from warnsvc.store.replicas import Leadership, ReplicaStore
from warnsvc.store.subscriptions import Subscriber, SubscriberStore, active_subscribers
from warnsvc.store.subscriptions import add_digest_items as _add_digest_items
from warnsvc.store.webhooks import EndpointStore

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
MIN_POSTGRESQL = (14,)
__all__ = ["OPERATOR_NOTICE", "RouteContext", "Router", "Store"]


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
        # first: switching a new file to WAL takes a lock another opener may hold for a moment
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # replicas starting together: the first migrates, the others wait and find it done
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": STARTUP_LOCK})
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "heads")


_MIGRATION_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _migration_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _MIGRATION_LOCKS.get(loop)
    if lock is None:
        lock = _MIGRATION_LOCKS[loop] = asyncio.Lock()
    return lock


def _masked(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _reason(exc: BaseException) -> str:
    """The driver's own words for a failed connection, on one line."""
    inner = getattr(exc, "orig", None) or exc.__cause__ or exc
    words = str(inner).strip().splitlines()
    return (words[0] if words else type(inner).__name__)[:300]


@store_errors
class Store:
    """The database behind warnsvc."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.outbox = Outbox(engine)
        self.endpoints = EndpointStore(engine)
        self.subscribers = SubscriberStore(engine)
        self.notices = NoticeStore(engine)
        self.replicas = ReplicaStore(engine)

    def leadership(self, *, failover: float) -> Leadership:
        """Who leads among the replicas on this database (see :class:`Leadership`)."""
        return Leadership(self.engine, failover=failover)

    @property
    def engine_name(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @property
    def shared(self) -> bool:
        """Whether other processes may use this database at once (replicas)."""
        return self.engine_name != "sqlite"

    @classmethod
    async def open(cls, url: str, *, migrate: bool = True) -> Store:
        """Connect to ``url`` (creating a SQLite file's directory) and migrate the schema.

        Raises :class:`StoreUnavailableError` (``storage.url: cannot connect: ...``) when the
        database cannot be reached: wrong password, unknown host, missing database.
        """
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {}
        if backend == "postgresql":
            options = {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 10}
            options["connect_args"] = {"timeout": 10, "command_timeout": 60}
        engine = create_async_engine(url, **options)
        if backend == "sqlite":
            _configure_sqlite(engine)
        store = cls(engine)
        try:
            await store._connect_once(url)
            if migrate:
                await store.migrate()
        except BaseException:
            await engine.dispose()
            raise
        return store

    async def _connect_once(self, url: str) -> None:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(select(1))
                version = conn.dialect.server_version_info
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailableError(
                f"storage.url: cannot connect: {_reason(exc)} ({_masked(url)})"
            ) from exc
        if self.shared and version is not None and version < MIN_POSTGRESQL:
            found = ".".join(str(n) for n in version)
            raise StoreUnavailableError(
                f"storage.url: PostgreSQL {found} is too old: warnsvc needs 14 or newer "
                f"(leadership relies on idle_session_timeout) ({_masked(url)})"
            )

    async def migrate(self) -> None:
        try:
            # Alembic keeps its context in module globals: one migration at a time per process
            # (replicas in other processes wait on the database's advisory lock instead)
            async with _migration_lock(), self.engine.begin() as conn:
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
        except (SQLAlchemyError, OSError, TimeoutError):
            return False
        return True

    async def last_event_seq(self) -> int:
        """The newest event's sequence number (0 when there is none): feeds rebuild on change."""
        async with self.engine.connect() as conn:
            value = (await conn.execute(select(func.max(schema.events.c.seq)))).scalar_one()
        return int(value or 0)

    async def last_changes(self) -> dict[str, datetime]:
        """When each situation last changed (its newest level-history row with an event)."""
        history = schema.level_history
        query = (
            select(history.c.situation_id, func.max(history.c.recorded_at))
            .where(history.c.event_id.is_not(None))
            .group_by(history.c.situation_id)
        )
        async with self.engine.connect() as conn:
            return {sid: when for sid, when in (await conn.execute(query)).all()}

    async def record_event(
        self, event_: Event, routes: Recipients, *, now: datetime | None = None
    ) -> list[int]:
        """Store an event that moves no situation on (a webhook test) with its outbox rows;
        returns the new rows' ids. ``routes``: recipients by channel, or a :class:`Router`."""
        now = now or event_.detected_at
        outbox = schema.outbox
        async with self.engine.begin() as conn:
            await insert_event(conn, event_, routes, now=now, revision=None)
            query = select(outbox.c.id).where(outbox.c.event_id == event_.id).order_by(outbox.c.id)
            return list((await conn.execute(query)).scalars().all())

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
                await _upsert_state(conn, state, scale=scale, now=now, bump=True)
                await insert_event(conn, event, recipients, now=now, revision=state.revision)
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
        except IntegrityError as exc:
            if await self._moved_on({state.situation: state.revision}):
                raise StoreConflictError(
                    f"{state.situation} changed while the manual event was written; try again"
                ) from exc
            raise StoreError(f"cannot record the manual event: {exc}") from exc
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
        revisions = {state.situation: state.revision for state in states}
        changed = {event_.situation for event_ in events}
        try:
            async with self.engine.begin() as conn:
                for state in states:
                    await _upsert_state(
                        conn, state, scale=scale, now=now, bump=state.situation in changed
                    )
                for event_ in events:
                    if event_.situation not in revisions:
                        raise ValueError(f"event {event_.id} comes without its situation's state")
                    revision = revisions[event_.situation]
                    await insert_event(conn, event_, recipients, now=now, revision=revision)
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
        except IntegrityError as exc:
            if await self._moved_on(revisions):
                # the unique transition key or the revision check: another writer was first
                raise StoreConflictError(
                    f"another replica recorded the poll of {source_id!r} first"
                ) from exc
            raise StoreError(f"cannot record the poll of {source_id!r}: {exc}") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot record the poll of {source_id!r}: {exc}") from exc

    async def _moved_on(self, revisions: Mapping[str, int]) -> bool:
        """Whether another writer moved any of these situations past the revision read."""
        table = schema.situations
        wanted = sorted(revisions)
        found: dict[str, int] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(wanted), 900):
                query = select(table.c.id, table.c.revision).where(
                    table.c.id.in_(wanted[start : start + 900])
                )
                found.update((sid, rev) for sid, rev in await conn.execute(query))
        return any(sid in found and found[sid] != rev for sid, rev in revisions.items())

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
        self, *, limit: int = 100, situation: str | None = None, exclude_types: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Event payloads, newest first (operators' notices are not events of a situation).

        ``exclude_types`` (event types, e.g. ``webhook.test``) are left out in the query, before
        the limit, so that many of them never push the others out of the answer."""
        table = schema.events
        query = (
            select(table.c.payload)
            .where(table.c.type.not_in([OPERATOR_NOTICE, *exclude_types]))
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


class RouteContext:
    """What routing may read, and record, on the transaction that writes an event.

    Channels decide their recipients through it (see ``Channel.recipients``), so an endpoint
    registered or a subscriber confirmed a moment before the event is either routed in full or
    not at all, and no channel holds a connection.
    """

    def __init__(self, conn: AsyncConnection, *, now: datetime) -> None:
        self._conn = conn
        self.now = now

    async def webhook_routes(self) -> list[tuple[str, str | None]]:
        """Every enabled endpoint's id and filters as stored JSON text (see ``filters_of``)."""
        table = schema.webhook_endpoints
        query = select(table.c.id, cast(table.c.filters, Text)).where(table.c.enabled.is_(True))
        return [(endpoint_id, raw) for endpoint_id, raw in await self._conn.execute(query)]

    async def active_subscribers(self, mode: str) -> list[Subscriber]:
        return await active_subscribers(self._conn, mode)

    async def add_digest_items(self, subscriber_ids: Sequence[int], event_id: str) -> None:
        """Remember that the event belongs in these subscribers' next digests."""
        await _add_digest_items(self._conn, subscriber_ids, event_id, now=self.now)


class Router(Protocol):
    """Who receives an event, by channel; runs on the transaction that writes the event."""

    async def __call__(self, routes: RouteContext, event: Event) -> Mapping[str, Sequence[str]]: ...


Recipients = Mapping[str, Sequence[str]] | Router


async def insert_event(
    conn: AsyncConnection,
    event_: Event,
    recipients: Recipients,
    *,
    now: datetime,
    revision: int | None,
) -> None:
    """Insert an event and its outbox rows on an open transaction."""
    routes: Mapping[str, Iterable[str]] = (
        await recipients(RouteContext(conn, now=now), event_)
        if callable(recipients)
        else recipients
    )
    await write_event(
        conn,
        event_id=event_.id,
        type=event_.type.value,
        source_id=event_.source_id,
        situation_id=event_.situation,
        occurred_at=event_.occurred_at,
        detected_at=event_.detected_at,
        payload=event_.payload(),
        routes=routes,
        now=now,
        revision=revision,
    )


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
    conn: AsyncConnection, state: SituationState, *, scale: str, now: datetime, bump: bool = False
) -> None:
    """Write a situation's state if nobody changed it since it was read (its revision).

    ``bump``: an event comes with this state, so the revision moves on. A state that another
    writer moved on meanwhile raises :class:`IntegrityError`, like the event's unique key.
    """
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
        "revision": state.revision + 1 if bump else state.revision,
        "updated_at": now,
    }
    result = await conn.execute(
        update(table)
        .where(table.c.id == state.situation, table.c.revision == state.revision)
        .values(values)
    )
    if result.rowcount == 0:
        # new, or moved on by another writer: then the primary key refuses the insert
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
        revision=row["revision"],
    )
