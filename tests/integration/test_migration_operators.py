"""Upgrading keeps operators' notices that were still queued: the retired ``operators``
channel's waiting rows move to the email and webhooks channels that send notices now, on
both engines (a crash, restart or upgrade never drops a queued delivery)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text

from warnsvc.store.aio import create_async_engine
from warnsvc.store.migrations import MIGRATIONS

URL_HOOK = "https://ops.example.org/hook"


def _alembic(connection: Connection, target: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, target)


async def test_queued_operator_rows_move_to_the_channels_that_send_notices_now(
    database_url: str,
) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.begin() as conn:
            moved = await conn.run_sync(_scenario)
    finally:
        await engine.dispose()
    hook = "ops_" + hashlib.sha256(URL_HOOK.encode()).hexdigest()[:16]
    assert moved == [
        ("email", "mailto:ops@example.org", "pending"),
        ("webhooks", hook, "pending"),
        ("operators", "mailto:old@example.org", "delivered"),
        ("operators", "https://gone.example.org/", "dead"),
    ]


def _scenario(conn: Connection) -> list[tuple[str, str, str]]:
    _alembic(conn, "0007_replicas")
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).replace(tzinfo=None)
    execute = conn.execute
    execute(
        text(
            "INSERT INTO events (id, type, source_id, occurred_at, detected_at, payload)"
            " VALUES ('evt_ops', 'operator.notice', 'warnsvc', :now, :now, '{}')"
        ),
        {"now": now},
    )
    for recipient, status in (
        ("mailto:ops@example.org", "pending"),
        (URL_HOOK, "in_flight"),
        ("mailto:old@example.org", "delivered"),
        ("https://gone.example.org/", "dead"),
    ):
        execute(
            text(
                "INSERT INTO outbox (event_id, channel, recipient, status, attempts,"
                " next_attempt_at, lease_until, created_at, updated_at)"
                " VALUES ('evt_ops', 'operators', :recipient, :status, 0, :now, :now, :now, :now)"
            ),
            {"recipient": recipient, "status": status, "now": now},
        )
    _alembic(conn, "heads")
    rows = execute(
        text("SELECT channel, recipient, status, lease_until FROM outbox ORDER BY id")
    ).all()
    assert all(r[3] is None for r in rows if r[2] == "pending")
    return [(r[0], r[1], r[2]) for r in rows]
