"""The copy script in docs/deployment.md ("Moving from SQLite to PostgreSQL"), taken from the
page as it is and run on a SQLite store with an event, its deliveries, a subscriber and a
webhook endpoint: every row arrives in PostgreSQL, ids continue after the copied ones, and a
second copy into the same database is refused."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from warnsvc.filters import Filter
from warnsvc.store import schema
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.db import Store
from warnsvc.store.outbox import write_event

ROOT = Path(__file__).resolve().parents[2]
COUNTED = ("events", "outbox", "email_subscribers", "webhook_endpoints")


def copy_script() -> str:
    page = (ROOT / "docs" / "deployment.md").read_text(encoding="utf-8")
    after = page.split("**Copying** keeps all of it.", 1)[1]
    found = re.search(r"```python\n(.*?)```", after, re.DOTALL)
    assert found, "docs/deployment.md: the copy script's code block is gone"
    return found.group(1)


async def fill(store: Store) -> None:
    now = datetime.now(UTC)
    declared = [
        mailstore.Declared(
            address=f"reader{n}@example.org", name=None, mode="immediate", filters=Filter()
        )
        for n in range(3)
    ]
    await store.subscribers.sync_declared(declared, now=now)
    await store.endpoints.create(
        url="https://hooks.example.org/in", partner_id="ngo", now=now, endpoint_id="ep_copied"
    )
    async with store.engine.begin() as conn:
        await write_event(
            conn,
            event_id="evt_copied",
            type="situation.escalated",
            source_id="gcr2p",
            situation_id=None,
            occurred_at=now,
            detected_at=now,
            payload={"id": "evt_copied", "summary": "Tensions rose."},
            routes={"webhook": ["ep_copied"], "email": ["1", "2", "3"]},
            now=now,
        )


async def counts(store: Store) -> dict[str, int]:
    found = {}
    async with store.engine.connect() as conn:
        for name in COUNTED:
            table = schema.metadata.tables[name]
            found[name] = int(await conn.scalar(sa.select(sa.func.count()).select_from(table)))
    return found


async def run_script(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(script), *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=120, check=False
    )


async def test_the_documented_copy_script_moves_every_row(tmp_path: Path, pg_url: str) -> None:
    sqlite_url = f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}"
    source = await Store.open(sqlite_url)
    try:
        await fill(source)
        expected = await counts(source)
    finally:
        await source.close()
    script = tmp_path / "copy-to-postgres.py"
    script.write_text(copy_script(), encoding="utf-8")

    done = await run_script(script, sqlite_url, pg_url)
    assert done.returncode == 0, done.stderr
    assert "outbox: 4 rows" in done.stdout

    target = await Store.open(pg_url)
    try:
        assert (
            await counts(target)
            == expected
            == {
                "events": 1,
                "outbox": 4,
                "email_subscribers": 3,
                "webhook_endpoints": 1,
            }
        )
        async with target.engine.begin() as conn:  # a new row's id follows the copied ones
            new_id = await conn.scalar(
                schema.email_subscribers.insert()
                .values(
                    address="new@example.org",
                    origin="api",
                    status=mailstore.ACTIVE,
                    mode=mailstore.IMMEDIATE,
                    filters={},
                    unsubscribe_token=mailstore.new_token(),
                    hard_failures=0,
                    created_at=datetime.now(UTC),
                    updated_at=datetime.now(UTC),
                )
                .returning(schema.email_subscribers.c.id)
            )
        assert new_id == 4
    finally:
        await target.close()

    again = await run_script(script, sqlite_url, pg_url)
    assert again.returncode != 0
    assert "is not empty: copy into a new database" in again.stderr
