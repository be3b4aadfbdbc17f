"""Errors at the store's edge: the driver's exceptions become :class:`StoreError`.

Callers of the store handle one exception, whatever the engine: a database that is down, a
query that timed out, a connection cut mid-statement are each a ``StoreError`` naming the
operation, with the driver's error chained.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.exc import SQLAlchemyError

from warnsvc.errors import StoreError

T = TypeVar("T")


def _guard(name: str, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return await method(*args, **kwargs)
        except StoreError:
            raise
        except (SQLAlchemyError, OSError) as exc:
            words = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            reason = words[0][:300] if words else type(exc).__name__
            raise StoreError(f"{name}: {reason}") from exc

    return guarded


def store_errors(cls: type[T]) -> type[T]:
    """Wrap every public coroutine method of ``cls`` so that driver errors become StoreError."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(member):
            setattr(cls, name, _guard(f"{cls.__name__}.{name}", member))
    return cls
