"""The HTTP app (aiohttp.web): feeds, health and readiness.

Routes::

    GET /                       a small page linking the feeds
    GET /feeds/{path}           the files under the feeds directory, with ETag/Last-Modified
    GET /feeds/cap.atom         the Atom index of the CAP alerts (see warnsvc.web.cap)
    GET /cap/{event_id}.xml     one event as a CAP 1.2 alert
    GET /healthz                the process answers: {"status": "ok", "role": "leader",
                                "instance": "host:pid"}
    GET /readyz                 store reachable, scheduler running, sources healthy: 200 or 503
                                (?scope=replica: this replica only, for load balancers)
    GET /metrics                Prometheus text format

Every error answer is JSON: ``{"error": {"status": 404, "message": "..."}}``.
"""

from __future__ import annotations

import html
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web

from warnsvc import __version__
from warnsvc.metrics import CONTENT_TYPE

log = logging.getLogger(__name__)

Readiness = Callable[[bool], Awaitable[tuple[bool, dict[str, Any]]]]
"""Whether the service is ready, and its checks; the argument: this replica's own state only."""
Metrics = Callable[[], Awaitable[bytes]]
Role = Callable[[], str]

FEEDS_DIR = web.AppKey("feeds_dir", Path)
READINESS: web.AppKey[Readiness] = web.AppKey("readiness")
TITLE = web.AppKey("title", str)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
ROLE: web.AppKey[Role] = web.AppKey("role")
INSTANCE = web.AppKey("instance", str)

_CONTENT_TYPES = {
    ".atom": "application/atom+xml; charset=utf-8",
    ".rss": "application/rss+xml; charset=utf-8",
    ".json": "application/feed+json; charset=utf-8",
}


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    body = {"error": {"status": status, "message": message, **extra}}
    return web.json_response(body, status=status)


@web.middleware
async def json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Answer every HTTP error with a JSON body instead of aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = json_error(exc.status, exc.reason)
        if "Allow" in exc.headers:  # a 405 says which methods the path has
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def healthz(request: web.Request) -> web.Response:
    """The process answers; ``role`` says whether this replica leads (polls) or follows, and
    ``instance`` which process this is: ``host:pid``, the host and pid its heartbeat writes in
    the store's ``replicas`` table, so ``warnsvc status`` can tell its own service from another
    process that happens to listen on the same port."""
    role = request.app[ROLE]()
    body = {"status": "ok", "version": __version__, "role": role, "instance": request.app[INSTANCE]}
    return web.json_response(body)


async def readyz(request: web.Request) -> web.Response:
    """Ready to serve and working. ``?scope=replica`` leaves out what all replicas share (the
    sources' health), for a load balancer choosing among replicas."""
    scope = request.query.get("scope", "service")
    if scope not in ("service", "replica"):
        raise web.HTTPBadRequest(reason="scope must be 'service' or 'replica'")
    ready, checks = await request.app[READINESS](scope == "replica")
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    return web.json_response(body, status=200 if ready else 503)


async def serve_metrics(request: web.Request) -> web.Response:
    body = await request.app[METRICS]()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def feed_file(request: web.Request) -> web.StreamResponse:
    root = request.app[FEEDS_DIR].resolve()
    relative = request.match_info["path"]
    if any(part.startswith(".") for part in relative.split("/")):
        raise web.HTTPNotFound(reason=f"no feed at /feeds/{relative}")
    target = (root / relative).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        raise web.HTTPNotFound(reason=f"no feed at /feeds/{relative}")
    response = web.FileResponse(target)
    content_type = _CONTENT_TYPES.get(target.suffix)
    if content_type:
        response.headers["Content-Type"] = content_type
    response.headers["Cache-Control"] = "public, max-age=60"
    return response


async def index(request: web.Request) -> web.Response:
    root = request.app[FEEDS_DIR]
    title = html.escape(request.app[TITLE])
    links = []
    for name in ("alerts.atom", "alerts.rss", "alerts.json"):
        if (root / name).is_file():
            links.append(f'<li><a href="/feeds/{name}">{name}</a></li>')
    for folder in ("levels", "situations"):
        for path in sorted((root / folder).glob("*.atom")) if (root / folder).is_dir() else []:
            href = f"/feeds/{folder}/{path.name}"
            links.append(f'<li><a href="{html.escape(href)}">{html.escape(href)}</a></li>')
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<link rel='alternate' type='application/atom+xml' href='/feeds/alerts.atom'></head>"
        f"<body><h1>{title}</h1><p>Subscribe to these feeds:</p><ul>{''.join(links)}</ul>"
        f"<p><a href='/healthz'>health</a> · <a href='/readyz'>readiness</a></p></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


def make_app(
    *,
    feeds_dir: Path,
    readiness: Readiness,
    title: str = "warnsvc",
    metrics: Metrics | None = None,
    role: Role = lambda: "leader",
    instance: str | None = None,
    routes: Iterable[web.RouteDef] = (),
) -> web.Application:
    """The app; ``instance`` names this process in ``/healthz`` (default ``host:pid``, as in the
    replica's heartbeat row). ``routes`` (the CAP pages) come before the feed files, so
    ``/feeds/cap.atom`` is theirs."""
    app = web.Application(middlewares=[json_errors], client_max_size=64 * 1024)
    app[ROLE] = role
    app[INSTANCE] = instance or f"{socket.gethostname()}:{os.getpid()}"
    app[FEEDS_DIR] = feeds_dir
    app[READINESS] = readiness
    app[TITLE] = title
    routes = list(routes)
    if not any(getattr(route, "path", None) == "/" for route in routes):  # else the pages' own
        app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if metrics is not None:
        app[METRICS] = metrics
        app.router.add_get("/metrics", serve_metrics)
    app.router.add_routes(routes)
    app.router.add_get("/feeds/{path:.+}", feed_file)
    return app
