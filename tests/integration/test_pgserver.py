"""The throw-away PostgreSQL server: reachable through SQLAlchemy and asyncpg, one database each."""

from __future__ import annotations

import os

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.pgserver import ENV_URL, PostgresError, PostgresServer, asyncpg_dsn
from warnsvc.store.aio import create_async_engine

pytestmark = pytest.mark.postgres


async def test_sqlalchemy_and_asyncpg_reach_the_server(pg_url: str) -> None:
    url = make_url(pg_url)
    assert url.drivername == "postgresql+asyncpg"
    assert url.database and url.database.startswith("t")

    engine = create_async_engine(pg_url)
    try:
        async with engine.connect() as db:
            version = (await db.execute(text("SELECT version()"))).scalar_one()
            database = (await db.execute(text("SELECT current_database()"))).scalar_one()
            encoding = (await db.execute(text("SHOW server_encoding"))).scalar_one()
    finally:
        await engine.dispose()
    assert version.startswith("PostgreSQL ")
    assert database == url.database
    assert encoding == "UTF8"

    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        assert await conn.fetchval("SELECT version()") == version
        assert await conn.fetchval("SELECT current_database()") == url.database
    finally:
        await conn.close()


async def test_each_database_starts_empty_and_stays_apart(
    pg_url: str, postgres: PostgresServer
) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        tables = await conn.fetchval(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE alerts (id serial PRIMARY KEY, body text NOT NULL)")
        await conn.execute("INSERT INTO alerts (body) VALUES ('first'), ('second')")
        assert await conn.fetchval("SELECT count(*) FROM alerts") == 2
    finally:
        await conn.close()

    other_name = f"{make_url(pg_url).database}_other"[:63]
    other_url = postgres.new_database(other_name)
    try:
        assert other_url != pg_url
        engine = create_async_engine(other_url)
        try:
            async with engine.begin() as other:
                absent = await other.execute(text("SELECT to_regclass('public.alerts')"))
                assert absent.scalar_one() is None
                await other.execute(text("CREATE TABLE alerts (id serial, body text)"))
                rows = await other.execute(text("SELECT count(*) FROM alerts"))
                assert rows.scalar_one() == 0
        finally:
            await engine.dispose()
    finally:
        postgres.drop_database(other_name)

    # The first database kept its rows.
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        assert await conn.fetchval("SELECT count(*) FROM alerts") == 2
    finally:
        await conn.close()


async def test_dropping_a_database_ends_its_connections(postgres: PostgresServer) -> None:
    name = "t_drop_check"
    url = postgres.new_database(name)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        postgres.drop_database(name)  # not refused for the open connection
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    postgres.drop_database(name)  # already gone: no error
    with pytest.raises(ValueError, match="database name"):
        postgres.new_database('bad"name')


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get(ENV_URL)), reason=f"{ENV_URL} set: no local server")
def test_a_server_that_cannot_start_raises_with_its_log() -> None:
    with pytest.raises(PostgresError) as failure:
        PostgresServer.start(server_options=["shared_buffers=nonsense"])
    message = str(failure.value)
    assert "did not start" in message
    assert "shared_buffers" in message  # from the server's log
