"""Reads on the hot path that go through the driver rather than SQLAlchemy's row processing.

A claimed batch of a thousand outbox rows needs the rows of the endpoints or subscribers it
names; read through :meth:`~warnsvc.store.aio.AsyncConnection.exec_driver_sql`, they pay
no per-value type processing. Each engine takes the list of ids its own way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from warnsvc.store.aio import AsyncConnection

IN_CHUNK = 500
"""Ids per query: within SQLite's limit on placeholders with room to spare."""


async def rows_with_ids(
    conn: AsyncConnection, statement: str, ids: Sequence[Any], *, sql_type: str
) -> list[Any]:
    """The rows of ``statement`` for ``ids``, :data:`IN_CHUNK` ids per query, as plain tuples.

    ``statement`` has ``{which}`` where the condition on ``id`` goes: PostgreSQL takes the ids
    as one array (``id = ANY($1::<sql_type>[])``), SQLite as one placeholder each.
    """
    rows: list[Any] = []
    postgres = conn.dialect.name == "postgresql"
    for start in range(0, len(ids), IN_CHUNK):
        chunk = list(ids[start : start + IN_CHUNK])
        if postgres:
            which = f"id = ANY($1::{sql_type}[])"
            result = await conn.exec_driver_sql(statement.format(which=which), (chunk,))
        else:
            which = f"id IN ({', '.join('?' * len(chunk))})"
            result = await conn.exec_driver_sql(statement.format(which=which), tuple(chunk))
        rows.extend(result.all())
    return rows
