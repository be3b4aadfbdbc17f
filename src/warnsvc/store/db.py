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
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, cast

from sqlalchemy import (
    Connection,
    RowMapping,
    bindparam,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

from warnsvc.errors import StoreConflictError, StoreError, StoreUnavailableError
from warnsvc.model import Event, SituationState, Status
from warnsvc.store import schema
from warnsvc.store.aio import AsyncConnection, AsyncEngine, create_async_engine
from warnsvc.store.guard import store_errors
from warnsvc.store.locks import STARTUP_LOCK
from warnsvc.store.migrations import current_revisions, head_revisions, upgrade
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


@dataclass(frozen=True, slots=True, kw_only=True)
class PollWrite:
    """What one successful poll of one source records (see :meth:`Store.apply_polls`).

    ``states``: the situations' states to write, each guarded by the revision it was read at;
    a state the poll did not change need not be among them. Every event's situation must be.
    ``warnings`` (items the poll skipped, with why) become the source's ``last_warning``.
    """

    source_id: str
    scale: str
    states: Sequence[SituationState] = ()
    history: Sequence[HistoryEntry] = ()
    events: Sequence[Event] = ()
    observations: int = 0
    warnings: Sequence[str] = ()
    now: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class PollSnapshot:
    """What a poll cycle reads before it detects: its sources' health, their states."""

    health: Mapping[str, SourceHealth]
    """By source id; a source never recorded has none."""
    states: Mapping[str, Mapping[str, SituationState]]
    """By namespace, then situation id: every situation whose id starts with ``namespace:``."""
    scales: Mapping[str, str]
    """The scale each situation was stored on, by situation id."""


_IN_CHUNK = 900
"""Values bound in one ``IN (...)`` list: below SQLite's oldest limit of 999 variables."""


def _chunks(values: Sequence[str], size: int = _IN_CHUNK) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


WAL_SWITCH_SECONDS = 10.0
"""How long an opener keeps trying to switch a SQLite file to WAL while others hold it."""


async def _use_wal(engine: AsyncEngine) -> None:
    """Put the SQLite file in WAL mode, which it then keeps (every later opener only reads it).

    The switch needs the file to itself, and while another connection is writing to it SQLite
    answers "database is locked" at once instead of waiting ``busy_timeout``: an opener that
    meets a writer (a replica starting beside it, migrating) tries again for up to
    :data:`WAL_SWITCH_SECONDS`, and is done as soon as the file is in WAL mode, whoever
    switched it.
    """
    deadline = time.monotonic() + WAL_SWITCH_SECONDS
    pause = 0.005
    while True:
        async with engine.connect() as conn:
            try:
                mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
                if str(mode).lower() != "wal":
                    # switched, or a database with no WAL mode (one in memory) left as it is
                    await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
                return
            except OperationalError as exc:
                if "locked" not in str(exc.orig) or time.monotonic() + pause > deadline:
                    raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.1)


class _PagesAhead:
    """Cached pages of some URLs, read together in one query when the first is asked for."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.urls = urls
        self._read: asyncio.Future[dict[str, CachedPage]] | None = None

    async def take(self, store: Store, url: str) -> CachedPage | None:
        if self._read is None:
            self._read = asyncio.ensure_future(store._read_pages(self.urls))
        # shielded: a poll cancelled while it waits leaves the read to the others
        pages = await asyncio.shield(self._read)
        return pages.pop(url, None)  # handed out once: a body is not kept longer than needed


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=10000")  # WAL: see _use_wal, run once per open
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def _run_migrations(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # replicas starting together: the first migrates, the others wait and find it done
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": STARTUP_LOCK})
    if current_revisions(connection) != head_revisions():  # Alembic is loaded only then
        upgrade(connection)


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
        self._pages_ahead: dict[str, _PagesAhead] = {}
        """Cached pages a poll cycle is about to ask for, by URL (see :meth:`expect_pages`)."""

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
            if self.engine_name == "sqlite":
                await _use_wal(self.engine)
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
        except SQLAlchemyError as exc:  # upgrade() words Alembic's refusals itself
            raise StoreError(f"cannot migrate the database: {exc}") from exc

    async def schema_behind(self) -> bool:
        """Whether :meth:`migrate` has work to do (a new database, or an older schema)."""
        return await self.schema_revisions() != head_revisions()

    async def schema_revisions(self) -> frozenset[str]:
        """The migrations the database is stamped with: none for a new database."""
        async with self.engine.connect() as conn:
            return await conn.run_sync(current_revisions)

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

    async def situation_history(
        self, event_id: str, *, limit: int = 1000
    ) -> list[dict[str, Any]] | None:
        """The payloads of an event's situation up to and including it (the newest ``limit``),
        oldest first; None when there is no such event (operators' notices are no events)."""
        table = schema.events
        async with self.engine.connect() as conn:
            found = (
                await conn.execute(
                    select(table.c.seq, table.c.situation_id, table.c.payload).where(
                        table.c.id == event_id, table.c.type != OPERATOR_NOTICE
                    )
                )
            ).first()
            if found is None:
                return None
            seq, situation_id, payload = found
            if situation_id is None:
                return [dict(payload)]
            query = (
                select(table.c.payload)
                .where(
                    table.c.situation_id == situation_id,
                    table.c.seq <= seq,
                    table.c.type != OPERATOR_NOTICE,
                )
                .order_by(table.c.seq.desc())
                .limit(limit)
            )
            rows = (await conn.execute(query)).scalars().all()
        return [dict(row) for row in reversed(rows)]

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
        so an event that exists is delivered. Raises :class:`StoreConflictError` when another
        writer moved one of the situations on since its state was read.
        """
        write = PollWrite(
            source_id=source_id,
            scale=scale,
            states=states,
            history=history,
            events=events,
            observations=observations,
            warnings=warnings,
            now=now,
        )
        refused = await self.apply_polls([write], recipients)
        if source_id in refused:
            raise refused[source_id]

    async def apply_polls(
        self, writes: Sequence[PollWrite], recipients: Recipients
    ) -> dict[str, StoreError]:
        """Write many successful polls in ONE transaction (see :meth:`apply_poll` for one).

        Should one of them clash with what is stored (another writer moved a situation on),
        each poll is then written in a transaction of its own, so the others are kept and only
        that one is refused: the answer maps its source id to the :class:`StoreError`, a
        :class:`StoreConflictError` when another writer was first. A failure of the database
        itself raises :class:`StoreError` and writes nothing.
        """
        if not writes:
            return {}
        try:
            async with self.engine.begin() as conn:
                await _record_successes(conn, writes)
                for write in writes:
                    await _write_poll(conn, write, recipients)
            return {}
        except IntegrityError as exc:
            if len(writes) == 1:
                write = writes[0]
                if await self._moved_on(_revisions(write)):
                    # the unique transition key or the revision check: another writer was first
                    conflict = StoreConflictError(
                        f"another replica recorded the poll of {write.source_id!r} first"
                    )
                    conflict.__cause__ = exc
                    return {write.source_id: conflict}
                raise StoreError(f"cannot record the poll of {write.source_id!r}: {exc}") from exc
        except SQLAlchemyError as exc:
            named = repr(writes[0].source_id) if len(writes) == 1 else f"{len(writes)} sources"
            raise StoreError(f"cannot record the poll of {named}: {exc}") from exc
        refused: dict[str, StoreError] = {}
        for write in writes:  # one of them clashed: keep the others
            try:
                refused.update(await self.apply_polls([write], recipients))
            except StoreError as exc:
                refused[write.source_id] = exc
        return refused

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
        return (await self.record_failures({source_id: error}, now=now))[source_id]

    async def record_failures(
        self, errors: Mapping[str, str], *, now: datetime
    ) -> dict[str, SourceHealth]:
        """Mark each source unhealthy with its reason, in one transaction; their new health."""
        table = schema.source_health
        ids = sorted(errors)
        if not ids:
            return {}
        health: dict[str, SourceHealth] = {}
        async with self.engine.begin() as conn:
            await _ensure_health_rows(conn, ids)
            await conn.execute(
                update(table)
                .where(table.c.source_id == bindparam("b_source"))
                .values(
                    healthy=False,
                    consecutive_failures=table.c.consecutive_failures + 1,
                    last_error=bindparam("b_error"),
                    last_poll_at=now,
                    last_failure_at=now,
                ),
                [{"b_source": sid, "b_error": errors[sid][:2000]} for sid in ids],
            )
            for chunk in _chunks(ids):
                rows = await conn.execute(select(table).where(table.c.source_id.in_(chunk)))
                health.update((row["source_id"], SourceHealth(**row)) for row in rows.mappings())
        return health

    # -- a poll cycle ------------------------------------------------------------------------

    async def poll_snapshot(
        self, source_ids: Iterable[str], namespaces: Iterable[str]
    ) -> PollSnapshot:
        """The health of these sources and the states of these namespaces, on one connection
        (a few queries, whatever their number)."""
        ids = sorted(set(source_ids))
        spaces = sorted(set(namespaces))
        health_table, table = schema.source_health, schema.situations
        health: dict[str, SourceHealth] = {}
        states: dict[str, dict[str, SituationState]] = {ns: {} for ns in spaces}
        scales: dict[str, str] = {}
        prefixes: dict[int, list[str]] = {}  # by length: one IN list per length of prefix
        for ns in spaces:
            prefixes.setdefault(len(ns) + 1, []).append(f"{ns}:")
        async with self.engine.connect() as conn:
            for chunk in _chunks(ids):
                query = select(health_table).where(health_table.c.source_id.in_(chunk))
                rows = (await conn.execute(query)).mappings()
                health.update((row["source_id"], SourceHealth(**row)) for row in rows)
            for length, wanted in prefixes.items():
                for chunk in _chunks(wanted):
                    # not LIKE: "_" and "%" would be wildcards, and SQLite's LIKE ignores case
                    query = select(table).where(func.substr(table.c.id, 1, length).in_(chunk))
                    for row in (await conn.execute(query)).mappings():
                        states[row["id"][: length - 1]][row["id"]] = _state_from_row(row)
                        scales[row["id"]] = row["scale"]
        return PollSnapshot(health=health, states=states, scales=scales)

    # -- fetch cache -------------------------------------------------------------------------

    def expect_pages(self, urls: Iterable[str], *, together: int = 32) -> None:
        """Say that the cached pages of ``urls`` are about to be asked for (a poll cycle).

        They are then read ``together`` at a time: the first :meth:`cached_page` of a group
        reads the whole group in one query, and each page is handed out once. Pages never
        asked for are dropped by :meth:`forget_pages`.
        """
        fresh = [url for url in dict.fromkeys(urls) if url not in self._pages_ahead]
        for chunk in _chunks(fresh, together):
            ahead = _PagesAhead(chunk)
            self._pages_ahead.update((url, ahead) for url in chunk)

    def forget_pages(self, urls: Iterable[str]) -> None:
        """Drop what :meth:`expect_pages` planned to read for ``urls`` and was not asked for."""
        for url in urls:
            self._pages_ahead.pop(url, None)

    async def cached_page(self, url: str) -> CachedPage | None:
        ahead = self._pages_ahead.pop(url, None)
        if ahead is not None:
            return await ahead.take(self, url)
        return (await self._read_pages([url])).get(url)

    async def _read_pages(self, urls: Sequence[str]) -> dict[str, CachedPage]:
        table = schema.fetch_cache
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(table).where(table.c.url.in_(urls)))).mappings()
            return {
                row["url"]: CachedPage(
                    url=row["url"],
                    etag=row["etag"],
                    last_modified=row["last_modified"],
                    content_type=row["content_type"],
                    body=row["body"],
                )
                for row in rows
            }

    async def save_page(self, page: CachedPage, *, now: datetime) -> None:
        table = schema.fetch_cache
        values = {
            "etag": page.etag,
            "last_modified": page.last_modified,
            "content_type": page.content_type,
            "body": page.body,
            "fetched_at": now,
        }
        self._pages_ahead.pop(page.url, None)  # a copy read ahead would be older than this
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
        # every endpoint, with every event: through the driver, as the outbox's hot path
        result = await self._conn.exec_driver_sql(
            "SELECT id, CAST(filters AS TEXT) FROM webhook_endpoints WHERE enabled"
        )
        return cast(list[tuple[str, str | None]], result.all())

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


async def _ensure_health_rows(conn: AsyncConnection, source_ids: Sequence[str]) -> None:
    """Insert a (healthy, never polled) health row for each source that has none."""
    table = schema.source_health
    found: set[str] = set()
    for chunk in _chunks(source_ids):
        query = select(table.c.source_id).where(table.c.source_id.in_(chunk))
        found.update((await conn.execute(query)).scalars())
    missing = [sid for sid in dict.fromkeys(source_ids) if sid not in found]
    if missing:
        await conn.execute(
            table.insert(),
            [
                {
                    "source_id": sid,
                    "healthy": True,
                    "consecutive_failures": 0,
                    "observations": 0,
                    "baseline_done": False,
                }
                for sid in missing
            ],
        )


async def _record_successes(conn: AsyncConnection, writes: Sequence[PollWrite]) -> None:
    """Mark each poll's source healthy, in one statement for all of them."""
    table = schema.source_health
    await _ensure_health_rows(conn, [write.source_id for write in writes])
    await conn.execute(
        update(table)
        .where(table.c.source_id == bindparam("b_source"))
        .values(
            healthy=True,
            consecutive_failures=0,
            last_error=None,
            last_poll_at=bindparam("b_now"),
            last_success_at=bindparam("b_now"),
            observations=bindparam("b_observations"),
            baseline_done=True,
            last_warning=bindparam("b_warning"),
        ),
        [
            {
                "b_source": write.source_id,
                "b_now": write.now,
                "b_observations": write.observations,
                "b_warning": "; ".join(write.warnings)[:2000] or None,
            }
            for write in writes
        ],
    )


def _revisions(write: PollWrite) -> dict[str, int]:
    return {state.situation: state.revision for state in write.states}


async def _write_poll(conn: AsyncConnection, write: PollWrite, recipients: Recipients) -> None:
    """A poll's states (guarded by their revisions), events with their outbox rows, history."""
    revisions = _revisions(write)
    changed = {event_.situation for event_ in write.events}
    now = write.now
    for state in write.states:
        bump = state.situation in changed
        await _upsert_state(conn, state, scale=write.scale, now=now, bump=bump)
    for event_ in write.events:
        if event_.situation not in revisions:
            raise ValueError(f"event {event_.id} comes without its situation's state")
        await insert_event(conn, event_, recipients, now=now, revision=revisions[event_.situation])
    if write.history:
        await conn.execute(
            schema.level_history.insert(),
            [
                {
                    "situation_id": entry.situation,
                    "source_id": entry.source_id,
                    "level": entry.level,
                    "status": entry.status.value,
                    "page_date": entry.page_date,
                    "event_id": entry.event_id,
                    "recorded_at": now,
                }
                for entry in write.history
            ],
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
