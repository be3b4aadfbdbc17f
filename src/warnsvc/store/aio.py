"""SQLAlchemy Core on asyncio, without the ORM.

SQLAlchemy's own asyncio layer (:mod:`sqlalchemy.ext.asyncio`) imports the ORM for its
``AsyncSession``: about 6 MB of an idle ``warnsvc run`` and 0.15 s of every start-up, for a
service that uses Core only. This module is the part of that layer's ``AsyncEngine`` and
``AsyncConnection`` the store uses, on the same mechanism:

- the engine is a plain Core :class:`~sqlalchemy.engine.Engine` over an asyncio driver
  (aiosqlite, asyncpg), created the way ``create_async_engine`` creates it;
- every call into it runs in a greenlet (:func:`sqlalchemy.util.concurrency.greenlet_spawn`),
  where the driver's coroutines are awaited on the running event loop;
- every result is fully buffered before it is returned, and its driver cursor closed (awaited,
  as SQLAlchemy's layer does), so reading rows never touches the driver again.

The names and signatures match SQLAlchemy's, so code and tests read the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar, TypeVarTuple, overload

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Connection, CursorResult, Dialect, Engine, ScalarResult
from sqlalchemy.pool import Pool
from sqlalchemy.sql import Executable
from sqlalchemy.sql.selectable import TypedReturnsRows
from sqlalchemy.util.concurrency import greenlet_spawn

__all__ = ["AsyncConnection", "AsyncEngine", "AsyncTransaction", "create_async_engine"]

_P = ParamSpec("_P")
_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
DriverParameters = Mapping[str, Any] | Sequence[Any] | Sequence[Mapping[str, Any]] | None

_BUFFERED: Mapping[str, Any] = {"prebuffer_rows": True}


def create_async_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An engine for an asyncio driver's URL (``sqlite+aiosqlite://``, ``postgresql+asyncpg://``),
    taking :func:`sqlalchemy.create_engine`'s options."""
    options["_is_async"] = True  # what SQLAlchemy's create_async_engine sets: an asyncio pool
    return AsyncEngine(create_engine(url, **options))


class AsyncEngine:
    """A Core engine whose connections are used with ``await``."""

    def __init__(self, sync_engine: Engine) -> None:
        self.sync_engine = sync_engine

    @property
    def dialect(self) -> Dialect:
        return self.sync_engine.dialect

    @property
    def url(self) -> URL:
        return self.sync_engine.url

    @property
    def pool(self) -> Pool:
        return self.sync_engine.pool

    def connect(self) -> AsyncConnection:
        """A connection, checked out of the pool when entered (``async with``) or awaited."""
        return AsyncConnection(self)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """A connection in a transaction, committed on leaving the block or rolled back on an
        exception, then returned to the pool."""
        async with self.connect() as conn, conn.begin():
            yield conn

    async def dispose(self, close: bool = True) -> None:
        """Close the pool's connections (``close=False``: forget them, as after a fork)."""
        await greenlet_spawn(self.sync_engine.dispose, close=close)


class AsyncConnection:
    """One pooled connection: statements run with ``await``, results come back buffered."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sync: Connection | None = None

    @property
    def sync_connection(self) -> Connection:
        if self._sync is None:
            raise RuntimeError("the connection is not started: use 'async with' or 'await'")
        return self._sync

    @property
    def dialect(self) -> Dialect:
        return self.engine.dialect

    @property
    def closed(self) -> bool:
        return self._sync is None or self._sync.closed

    async def start(self) -> AsyncConnection:
        if self._sync is not None:
            raise RuntimeError("the connection is already started")
        self._sync = await greenlet_spawn(self.engine.sync_engine.connect)
        return self

    def __await__(self) -> Generator[Any, None, AsyncConnection]:
        return self.start().__await__()

    async def __aenter__(self) -> AsyncConnection:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        # a task cancelled here still hands its connection back before it goes
        await _run_to_completion(self.close())

    def begin(self) -> AsyncTransaction:
        """A transaction, as ``async with conn.begin():`` (commits, or rolls back on error)."""
        return AsyncTransaction(self)

    @overload
    async def execute(
        self,
        statement: TypedReturnsRows[*_Ts],
        parameters: Parameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[*_Ts]: ...

    @overload
    async def execute(
        self,
        statement: Executable,
        parameters: Parameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[*tuple[Any, ...]]: ...

    async def execute(
        self,
        statement: Executable,
        parameters: Parameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[*tuple[Any, ...]]:
        return await self._buffered(
            self.sync_connection.execute, statement, parameters, execution_options
        )

    async def exec_driver_sql(
        self,
        statement: str,
        parameters: DriverParameters = None,
        *,
        execution_options: Mapping[str, Any] | None = None,
    ) -> CursorResult[Any]:
        """A statement in the driver's own SQL and parameter style, with no compilation."""
        return await self._buffered(
            self.sync_connection.exec_driver_sql, statement, parameters, execution_options
        )

    async def _buffered(
        self,
        method: Callable[..., CursorResult[Any]],
        statement: Any,
        parameters: Any,
        options: Mapping[str, Any] | None,
    ) -> CursorResult[Any]:
        """``method(statement, parameters)`` in a greenlet, its rows buffered and the driver's
        cursor closed, as SQLAlchemy's own asyncio layer leaves a result: reading it then never
        calls the driver, which only a greenlet may."""
        buffered = _BUFFERED if not options else {**options, **_BUFFERED}
        result = await greenlet_spawn(method, statement, parameters, execution_options=buffered)
        # The asyncio drivers' cursor adapters close asynchronously; a result that returned no
        # rows has closed its cursor already (None).
        soft_close: Callable[[], Coroutine[Any, Any, None]] | None = getattr(
            result.cursor, "_async_soft_close", None
        )
        if soft_close is not None:
            await soft_close()
        return result

    async def scalar(self, statement: Executable, parameters: Parameters = None) -> Any:
        return (await self.execute(statement, parameters)).scalar()

    @overload
    async def scalars(
        self, statement: TypedReturnsRows[_T], parameters: Parameters = None
    ) -> ScalarResult[_T]: ...

    @overload
    async def scalars(
        self, statement: Executable, parameters: Parameters = None
    ) -> ScalarResult[Any]: ...

    async def scalars(
        self, statement: Executable, parameters: Parameters = None
    ) -> ScalarResult[Any]:
        return (await self.execute(statement, parameters)).scalars()

    async def run_sync(
        self,
        fn: Callable[Concatenate[Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Call ``fn(sync_connection, ...)`` in a greenlet: synchronous Core code (Alembic's
        migrations, say) that awaits the driver underneath."""
        return await greenlet_spawn(fn, self.sync_connection, *args, _require_await=False, **kwargs)

    async def execution_options(self, **options: Any) -> AsyncConnection:
        """Set options on this connection (``isolation_level="AUTOCOMMIT"``, say); returns it."""
        await greenlet_spawn(self.sync_connection.execution_options, **options)
        return self

    async def commit(self) -> None:
        await greenlet_spawn(self.sync_connection.commit)

    async def rollback(self) -> None:
        await greenlet_spawn(self.sync_connection.rollback)

    async def invalidate(self) -> None:
        """Mark the connection unusable (a lost server): the pool discards it."""
        await greenlet_spawn(self.sync_connection.invalidate)

    async def close(self) -> None:
        """Return the connection to the pool, rolling back what was not committed."""
        sync, self._sync = self._sync, None
        if sync is not None:
            await greenlet_spawn(sync.close)


class AsyncTransaction:
    """The transaction of ``async with conn.begin():``."""

    def __init__(self, connection: AsyncConnection) -> None:
        self.connection = connection

    async def __aenter__(self) -> AsyncTransaction:
        transaction = await greenlet_spawn(self.connection.sync_connection.begin)
        self._exit = transaction.__exit__
        transaction.__enter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await greenlet_spawn(self._exit, *exc)


async def _run_to_completion(coro: Coroutine[Any, Any, _T]) -> _T:
    """Await ``coro`` in a task of its own that a cancellation of the caller does not stop;
    the cancellation is raised once it is done (cleanup that must finish: closing)."""
    task = asyncio.ensure_future(coro)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                raise
            cancelled = exc
        else:
            break
    if cancelled is not None:
        raise cancelled
    return result
