"""Replicas on one database: their heartbeats, and which one leads.

Every ``warnsvc run`` on a database writes a ``replicas`` row and refreshes it every few
seconds (its heartbeat), with the digest of its sources and scales, so ``warnsvc status``
lists the replicas and a replica whose config disagrees with the leader's can say so.

Leadership on PostgreSQL is a session advisory lock held on a dedicated connection: the
database lets go of it the moment that connection ends, so when the leader is killed
(``kill -9``) the lock is free at once, and when it is cut off the server ends the idle session
after ``idle_session_timeout`` (set on that connection from the failover time). The leader pings
its connection; a ping that fails or hangs means it has lost the lock, and it steps down before
another replica can take it. On SQLite one process owns the file, and it always leads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from warnsvc.store import schema
from warnsvc.store.aio import AsyncConnection, AsyncEngine
from warnsvc.store.guard import store_errors
from warnsvc.store.locks import LEADER_LOCK

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Replica:
    """One process on this database, as its last heartbeat described it."""

    id: str
    host: str
    pid: int
    url: str
    version: str
    config_digest: str
    leader: bool
    started_at: datetime
    seen_at: datetime


@store_errors
class ReplicaStore:
    """Heartbeats of the replicas."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def beat(self, replica: Replica) -> None:
        """Write (or refresh) this replica's row."""
        table = schema.replicas
        values = {
            "host": replica.host,
            "pid": replica.pid,
            "url": replica.url,
            "version": replica.version,
            "config_digest": replica.config_digest,
            "leader": replica.leader,
            "started_at": replica.started_at,
            "seen_at": replica.seen_at,
        }
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(table).where(table.c.id == replica.id).values(values)
            )
            if result.rowcount == 0:
                await conn.execute(table.insert().values(id=replica.id, **values))
            if replica.leader:  # a leader that died left its flag: only one row says leader
                await conn.execute(
                    update(table)
                    .where(table.c.id != replica.id, table.c.leader.is_(True))
                    .values(leader=False)
                )

    async def all(self) -> list[Replica]:
        """Every replica that has beaten, newest heartbeat first."""
        table = schema.replicas
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(table).order_by(table.c.seen_at.desc()))
            return [Replica(**row) for row in rows.mappings().all()]

    async def remove(self, replica_id: str) -> None:
        """A clean stop: the replica leaves the list."""
        table = schema.replicas
        async with self.engine.begin() as conn:
            await conn.execute(delete(table).where(table.c.id == replica_id))

    async def forget(self, *, silent_since: datetime) -> int:
        """Remove replicas whose last heartbeat is older than ``silent_since``."""
        table = schema.replicas
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.seen_at < silent_since))
        return int(result.rowcount or 0)


class Leadership:
    """Who leads: always this process on SQLite; the advisory lock's holder on PostgreSQL.

    ``failover`` (seconds) bounds how long the replicas go leaderless after the leader dies or
    is cut off: followers try for the lock every ``failover / 6`` seconds, the leader pings its
    connection as often and gives up the lead when a ping fails or takes ``failover / 3``, and
    the server ends the leader's idle session after ``failover / 2`` without a ping.
    """

    def __init__(self, engine: AsyncEngine, *, failover: float = 30.0) -> None:
        self.engine = engine
        self.failover = failover
        self._conn: AsyncConnection | None = None
        self.leading = not self.shared

    @property
    def shared(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def interval(self) -> float:
        """How often to try for the lead, or to check that it is still held."""
        return max(self.failover / 6, 0.2)

    async def check(self) -> bool:
        """Try for the lead (a follower) or make sure it is still held (the leader)."""
        if not self.shared:
            return True
        if self.leading:
            if not await self._alive():
                await self._drop("the leader's database connection was lost")
            return self.leading
        await self._try()
        return self.leading

    async def _try(self) -> None:
        try:
            if self._conn is None:
                # autocommit: the session is never left idle inside a transaction, where
                # idle_session_timeout would not end it
                conn = await self.engine.connect()
                self._conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                timeout = max(int(self.failover * 1000 / 2), 1000)
                for setting in ("idle_session_timeout", "idle_in_transaction_session_timeout"):
                    await self._conn.execute(text(f"SET {setting} = {timeout}"))
            got = (
                await self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK}
                )
            ).scalar_one()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            await self._drop(f"cannot reach the database: {exc}")
            return
        self.leading = bool(got)

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None:
            return False
        try:
            async with asyncio.timeout(max(self.failover / 3, 0.5)):
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError, TimeoutError):
            return False
        return True

    async def _drop(self, reason: str) -> None:
        was = self.leading
        self.leading = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                # a lost connection cannot be closed cleanly: invalidate it, do not wait on it
                await asyncio.wait_for(conn.invalidate(), timeout=1)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=1)
        if was:
            log.warning("no longer the leader: %s", reason, extra={"action": "leader_lost"})

    async def release(self) -> None:
        """Give up the lead (clean stop): another replica takes it at its next try."""
        if not self.shared:
            return
        conn = self._conn
        if conn is not None and self.leading:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": LEADER_LOCK}
                    )
        self.leading = False
        self._conn = None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=2)


def stale_before(now: datetime, interval: float) -> datetime:
    """Heartbeats older than this are a replica gone (three missed beats)."""
    return now - timedelta(seconds=3 * interval)
