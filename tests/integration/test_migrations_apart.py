"""Migrations without Alembic in the service's process: the heads read from the scripts, the
check of a database against them, and the child process that migrates (on both engines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from warnsvc.errors import StoreError
from warnsvc.store.db import MIGRATIONS, Store
from warnsvc.store.migrations import head_revisions, upgrade_apart

ROOT = Path(__file__).resolve().parents[2]


def test_heads_read_from_the_scripts_are_alembics() -> None:
    assert head_revisions() == frozenset(ScriptDirectory(str(MIGRATIONS)).get_heads())


async def test_a_new_database_is_behind_then_current(database_url: str) -> None:
    store = await Store.open(database_url, migrate=False)
    try:
        assert await store.schema_behind()
        await upgrade_apart(database_url)  # in a child process
        assert not await store.schema_behind()
        assert await store.count_events() == 0  # the schema is there
    finally:
        await store.close()


async def test_a_database_from_a_newer_warnsvc_is_refused_with_alembics_words(
    database_url: str,
) -> None:
    store = await Store.open(database_url)
    try:
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
        assert await store.schema_behind()
    finally:
        await store.close()
    with pytest.raises(StoreError, match=r"cannot migrate the database: .*9999_future"):
        await upgrade_apart(database_url)


PROBE = """
import asyncio, json, sys
from warnsvc.store.db import Store

async def main() -> None:
    store = await Store.open(sys.argv[1])
    await store.close()

asyncio.run(main())
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("alembic", "mako"))))
"""


def modules_after_open(url: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded: list[str] = json.loads(done.stdout)
    return loaded


def test_opening_a_current_database_does_not_load_alembic(database_url: str) -> None:
    assert modules_after_open(database_url) != []  # a new database: migrated in process
    assert modules_after_open(database_url) == []  # now current: nothing to run
