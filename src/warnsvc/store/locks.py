"""PostgreSQL advisory locks of warnsvc (no-ops on SQLite, where one process owns the file)."""

from __future__ import annotations

from sqlalchemy import text

from warnsvc.store.aio import AsyncConnection

STARTUP_LOCK = 0x7761726E737601
"""Held while migrating and while syncing the YAML's endpoints and subscribers at start."""
LEADER_LOCK = 0x7761726E737602
"""Held, for as long as it leads, by the replica that polls, confirms, digests and prunes."""


async def startup_lock(conn: AsyncConnection) -> None:
    """Serialise start-up work of processes on one database (held until ``conn`` commits).

    PostgreSQL: a transaction advisory lock. SQLite: a first write takes the file's write lock
    at once, so a second process waits (busy timeout) instead of reading what is about to
    change.
    """
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": STARTUP_LOCK})
    else:
        await conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
