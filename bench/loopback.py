"""What the benchmarks share to stand up loopback servers: a free port, and an aiohttp site
served in a child process (so the server never shares the measured process's GIL)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

Handler = Callable[[Any], Awaitable[Any]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_forever(port: int, routes: Sequence[tuple[str, str, Handler]], ready: Any) -> None:
    """Serve ``routes`` ((method, path, handler)) on 127.0.0.1:``port`` until killed; set
    ``ready`` (a multiprocessing Event) once listening. Runs in the child process."""
    from aiohttp import web

    async def main() -> None:
        app = web.Application()
        for method, path, handler in routes:
            app.router.add_route(method, path, handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())
