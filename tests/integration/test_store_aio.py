"""The store's asyncio layer over SQLAlchemy Core (``warnsvc.store.aio``), on real SQLite and
PostgreSQL: transactions commit or roll back, results are read after their connection is
gone, a cancelled task still hands its connection back, and no process loads the ORM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import QueuePool

from warnsvc.store.aio import AsyncEngine, create_async_engine

NOTES = sa.table("aio_notes", sa.column("n", sa.Integer), sa.column("word", sa.String))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE IF EXISTS aio_notes")
        await conn.exec_driver_sql("CREATE TABLE aio_notes (n INTEGER PRIMARY KEY, word TEXT)")
    yield engine
    await engine.dispose()


def checked_out(engine: AsyncEngine) -> int:
    pool = engine.pool
    assert isinstance(pool, QueuePool)  # both engines' files and servers are pooled
    return pool.checkedout()


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(NOTES)))


async def test_begin_commits_a_block_and_rolls_back_a_failed_one(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(NOTES.insert(), [{"n": 1, "word": "one"}, {"n": 2, "word": "two"}])
    with pytest.raises(RuntimeError):
        async with engine.begin() as conn:
            await conn.execute(NOTES.insert().values(n=3, word="three"))
            raise RuntimeError("after the insert")
    assert await count(engine) == 2
    assert checked_out(engine) == 0


async def test_results_are_read_after_their_connection_went_back(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(NOTES.insert(), [{"n": n, "word": f"w{n}"} for n in range(50)])
    async with engine.connect() as conn:
        rows = await conn.execute(sa.select(NOTES.c.n, NOTES.c.word).order_by(NOTES.c.n))
        words = await conn.scalars(sa.select(NOTES.c.word).where(NOTES.c.n < 3))
        driver = await conn.exec_driver_sql("SELECT count(*) FROM aio_notes")
    assert conn.closed
    assert [(n, w) for n, w in rows] == [(n, f"w{n}") for n in range(50)]
    assert sorted(words) == ["w0", "w1", "w2"]
    assert driver.scalar_one() == 50
    async with engine.begin() as conn:
        changed = await conn.execute(sa.update(NOTES).where(NOTES.c.n >= 40).values(word="x"))
    assert changed.rowcount == 10


async def test_a_task_cancelled_inside_a_transaction_hands_its_connection_back(
    engine: AsyncEngine,
) -> None:
    inside = asyncio.Event()

    async def writer() -> None:
        async with engine.begin() as conn:
            await conn.execute(NOTES.insert().values(n=1, word="lost"))
            inside.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(writer())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert checked_out(engine) == 0
    assert await count(engine) == 0  # rolled back, and the table is not left locked


async def test_run_sync_and_execution_options_reach_the_sync_connection(
    engine: AsyncEngine,
) -> None:
    conn = await engine.connect()
    try:
        same = await conn.execution_options(isolation_level="AUTOCOMMIT")
        assert same is conn
        options = await conn.run_sync(lambda sync: sync.get_execution_options())
        assert options["isolation_level"] == "AUTOCOMMIT"
        await conn.execute(NOTES.insert().values(n=7, word="kept"))
    finally:
        await conn.close()
    assert await count(engine) == 1  # autocommit: kept without a commit


def test_the_store_loads_no_orm() -> None:
    probe = "import sys, warnsvc.store.db; print('sqlalchemy.orm' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
