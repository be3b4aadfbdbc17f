"""The running service while a source's document is parsed: it keeps answering, and a parse
past its limits marks the source unhealthy, naming the limit, and sends nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.unit.test_parse_worker import feed
from warnsvc.config import parse_config
from warnsvc.service import Service
from warnsvc.store.db import SourceHealth

pytestmark = pytest.mark.slow


def big_feed(entries: int) -> bytes:
    """A feed that feedparser needs many seconds to read, well under fetch.max_bytes."""
    return feed(entries).encode()


class FeedSite:
    """Serves one document, and says when it has been sent in full."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.served = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = web.Response(body=self.body, content_type="application/rss+xml")
        await response.prepare(request)
        await response.write_eof()
        self.served.set()
        return response


def service_for(tmp_path: Path, url: str, parse: str) -> Service:
    text = f"""
service: {{http: {{host: 127.0.0.1, port: 0}}, shutdown_timeout: 5s}}
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/s.db"}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: big
    kind: feed
    url: {url}
    scale: gdacs
    levels: {{Orange: orange}}
    interval: 1h
    jitter: 0s
    fetch: {{retries: 0}}
    parse: {parse}
"""
    return Service(parse_config(text, filename="test.yaml"))


async def health_of(service: Service) -> SourceHealth | None:
    assert service.parts is not None
    return await service.parts.store.source_health("big")


async def test_health_answers_while_a_source_parses_and_an_overrun_names_the_limit(
    tmp_path: Path, aiohttp_server
) -> None:
    site = FeedSite(big_feed(12_000))  # about 1.6 MB: seconds of feedparser
    app = web.Application()
    app.router.add_get("/feed.xml", site.handle)
    server: TestServer = await aiohttp_server(app)
    service = service_for(tmp_path, str(server.make_url("/feed.xml")), "{timeout: 1s}")
    await service.start()
    try:
        await asyncio.wait_for(site.served.wait(), 30)  # the first poll runs at start
        base = f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        assert await health_of(service) is None, "the poll ended before /healthz answered"

        async def failed() -> SourceHealth | None:
            health = await health_of(service)
            return health if health is not None and not health.healthy else None

        health = None
        for _ in range(600):
            if health := await failed():
                break
            await asyncio.sleep(0.05)
        assert health is not None, "the source was not marked unhealthy"
        assert "parse.timeout" in (health.last_error or "")
        assert service.parts is not None
        assert await service.parts.store.count_events() == 0
        async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
    finally:
        await service.stop()
