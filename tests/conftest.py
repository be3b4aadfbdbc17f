"""Shared fixtures: a GCR2P-like site on loopback whose pages the tests change between polls."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SEED = FIXTURES / "gcr2p" / "seed-nagorno-karabakh-2023-08-31.txt"


def country_html(
    name: str,
    *,
    level: str | None,
    date: str | None = "1 June 2022",
    summary: str = "Populations face atrocity crimes.",
    factors: Iterable[str] = ("A factor.",),
) -> str:
    """An ordinary GCR2P country page, current layout, with a nav menu that repeats levels."""
    parts = [
        f"<!doctype html><html><head><title>{html.escape(name)} - Global Centre for the "
        "Responsibility to Protect</title></head><body><header><nav><ul>"
        "<li><a href='/populations-at-risk/'>Populations at Risk</a></li>"
        "<li><a href='#'>Current Crisis</a></li><li><a href='#'>Imminent Risk</a></li>"
        f"</ul></nav></header><main><h1>{html.escape(name)}</h1>"
    ]
    if date:
        parts.append(f"<p>{html.escape(date)}</p>")
    if level:
        parts.append(f"<p><span>Risk Level:</span> <strong>{html.escape(level)}</strong></p>")
    items = "".join(f"<li>{html.escape(f)}</li>" for f in factors)
    parts.append(
        f"<p>{html.escape(summary)}</p><h2>BACKGROUND</h2><p>Some background.</p>"
        f"<h2>Atrocity Risk Factors</h2><ul>{items}</ul></main>"
        "<footer><p>Global Centre for the Responsibility to Protect</p></footer></body></html>"
    )
    return "".join(parts)


def index_html(sections: dict[str, list[tuple[str, str]]]) -> str:
    """The populations-at-risk index: level headings, then cards (slug, name) under each."""
    parts = []
    for heading, cards in sections.items():
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for slug, name in cards:
            parts.append(
                f"<div class='card'><h3>{html.escape(name)}</h3>"
                f"<p>Populations in {html.escape(name)} are at risk.</p>"
                f"<a href='/countries/{slug}/'>Continue Reading</a></div>"
            )
    return (
        "<!doctype html><html><head><title>Populations At Risk - Global Centre for the "
        "Responsibility to Protect</title></head><body><main><h1>Populations At Risk</h1>"
        + "".join(parts)
        + "</main></body></html>"
    )


@dataclass
class Reply:
    body: bytes | str = b""
    status: int = 200
    content_type: str = "text/html"
    delay: float = 0.0
    etag: str | None = None


@dataclass
class Site:
    """Pages by path; tests replace them between polls. Counts hits per path."""

    pages: dict[str, Reply] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    server: TestServer | None = None

    def set(self, path: str, body: bytes | str, **kwargs: object) -> None:
        self.pages[path] = Reply(body=body, **kwargs)  # type: ignore[arg-type]

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        self.hits[path] = self.hits.get(path, 0) + 1
        reply = self.pages.get(path)
        if reply is None:
            raise web.HTTPNotFound()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = {"ETag": reply.etag} if reply.etag else {}
        if reply.etag and request.headers.get("If-None-Match") == reply.etag:
            return web.Response(status=304, headers=headers)
        body = reply.body.encode() if isinstance(reply.body, str) else reply.body
        return web.Response(
            body=body,
            status=reply.status,
            headers=headers,
            content_type=reply.content_type,
            charset="utf-8",
        )


@pytest.fixture
async def site(aiohttp_server) -> Site:
    state = Site()
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", state.handle)
    state.server = await aiohttp_server(app)
    return state


# -- The throw-away PostgreSQL server (tests/pgserver.py, docs/testing.md) ----------------------

import re  # noqa: E402
import secrets  # noqa: E402
from collections.abc import Iterator  # noqa: E402

from tests.pgserver import PostgresServer  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole session, started on first use.

    ``$WARNSVC_TEST_PG_URL`` if set, else a throw-away server. One that cannot start raises, so
    every test asking for it errors: a missing PostgreSQL fails the run, it never skips.
    """
    server = PostgresServer.for_tests()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """The ``postgresql+asyncpg://`` URL of a new, empty database for this test alone."""
    slug = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    name = f"t{secrets.token_hex(3)}_{slug}"[:63]
    url = postgres.new_database(name)
    yield url
    postgres.drop_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the server ``postgres``, so ``-m postgres`` selects them all."""
    for item in items:
        if "postgres" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database, once on each engine: a SQLite file, then a fresh
    PostgreSQL database on the session's server. Tests that take it run on both."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url
