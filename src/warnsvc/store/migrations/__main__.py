"""``python -m warnsvc.store.migrations LEVEL FORMAT``: bring the database whose URL comes on
stdin to the newest schema, then exit. What went wrong is printed on stdout, exit status 1.

``warnsvc run`` migrates through this child process (see :func:`upgrade_apart`), so that the
long-running service never holds Alembic in memory.
"""

from __future__ import annotations

import asyncio
import sys

from warnsvc.errors import WarnsvcError
from warnsvc.logs import setup_logging
from warnsvc.store.db import Store


async def _migrate(url: str) -> None:
    store = await Store.open(url)  # connects, then migrates (on PostgreSQL, under the lock)
    await store.close()


def main(argv: list[str]) -> int:
    setup_logging(argv[0] if argv else "info", argv[1] if len(argv) > 1 else "text")
    try:
        asyncio.run(_migrate(sys.stdin.read()))
    except WarnsvcError as exc:
        print(exc, flush=True)  # noqa: T201 - the parent reads it
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
