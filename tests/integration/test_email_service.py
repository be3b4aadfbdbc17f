"""The running service with email on: YAML subscribers, the API on the real port, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Site, country_html, index_html
from tests.smtp_sink import Sink, free_port, start_sink
from warnsvc.config import parse_config
from warnsvc.service import Service


def publish(site: Site, level: str) -> None:
    site.set("/populations-at-risk/", index_html({level: [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level=level, summary="Mali <b>now</b>."))


def service_for(tmp_path: Path, site: Site, port: int) -> Service:
    text = f"""
service:
  base_url: https://alerts.example.org
  http: {{host: 127.0.0.1, port: 0}}
  shutdown_timeout: 5s
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/s.db"}}
detection: {{confirmations: 1, announce_initial: true}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {site.url("/populations-at-risk/")}
    interval: 1h
    jitter: 0s
    page_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
email:
  from_address: "warnsvc <alerts@example.org>"
  rate: 0
  smtp: {{host: 127.0.0.1, port: {port}, security: none, timeout: 2s}}
  subscribers:
    - {{address: desk@example.org, name: Desk, min_level: imminent-risk}}
    - {{address: calm@example.org, min_level: current-crisis}}
"""
    return Service(parse_config(text, filename="test.yaml"))


async def wait_for(predicate: Callable[[], Awaitable[bool]], limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture
def smtp_port() -> int:
    return free_port()


async def test_the_service_mails_yaml_subscribers_and_serves_the_api(
    tmp_path: Path, site: Site, smtp_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sink = Sink()
    controller = start_sink(sink, smtp_port)
    publish(site, "Imminent Risk")
    service = service_for(tmp_path, site, smtp_port)
    await service.start()
    try:

        async def mailed() -> bool:
            return len(sink.received) >= 1

        await wait_for(mailed)  # the first poll announces Mali; the dispatcher mails the desk
        [received] = sink.received
        assert received.rcpt_tos == ["desk@example.org"]
        msg = received.message()
        assert msg["Subject"] == "[Imminent Risk, newly listed] Mali"
        assert "Mali &lt;b&gt;now&lt;/b&gt;." in msg.get_body(("html",)).get_content()  # type: ignore[union-attr]

        base = f"http://127.0.0.1:{service.port}"
        async with aiohttp.ClientSession() as http:
            body = {"address": "new@example.org", "mode": "digest"}
            async with http.post(f"{base}/api/v1/subscriptions", json=body) as resp:
                assert resp.status == 202
            async with http.post(f"{base}/api/v1/subscriptions", json={"address": "x"}) as resp:
                assert resp.status == 400
                assert (await resp.json())["error"]["field"] == "address"
            async with http.get(f"{base}/subscribe") as resp:
                assert resp.status == 200 and 'value="gcr2p:mali"> Mali<' in await resp.text()

        async def confirmation_sent() -> bool:
            return len(sink.received) == 2

        await wait_for(confirmation_sent)  # the email worker is woken by the request
        assert sink.received[1].rcpt_tos == ["new@example.org"]
    finally:
        await service.stop()
        controller.stop()
