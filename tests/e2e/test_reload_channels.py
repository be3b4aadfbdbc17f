"""A reload reaches the channels: a static webhook endpoint and a YAML email subscriber added
to the file of a running `warnsvc run` get the next event; queued rows are not duplicated."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import Site, country_html, index_html
from tests.e2e.test_cli import free_port
from tests.smtp_sink import Sink, start_sink

pytestmark = pytest.mark.slow

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def config_text(
    tmp_path: Path,
    site: Site,
    *,
    port: int,
    smtp: int,
    hook: str | None,
    subscriber: bool,
    interval: str = "1h",
) -> str:
    endpoints = (
        f'  endpoints:\n    - {{id: desk, url: "{hook}", secret: "{SECRET}"}}\n' if hook else ""
    )
    subscribers = "  subscribers:\n    - {address: desk@example.org}\n" if subscriber else ""
    return f"""service:
  base_url: http://127.0.0.1:{port}
  http: {{host: 127.0.0.1, port: {port}}}
  pid_file: {tmp_path}/warnsvc.pid
  watch_config: false
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/warnsvc.db"}}
detection: {{confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
webhooks:
  allow_networks: [127.0.0.0/8]
{endpoints}email:
  from_address: warnsvc@example.org
  smtp: {{host: 127.0.0.1, port: {smtp}, security: none}}
{subscribers}sources:
  - id: gcr2p
    kind: gcr2p-index
    url: {site.url("/populations-at-risk/")}
    interval: {interval}
    jitter: 0s
    page_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
"""


async def until(check: Callable[[], Awaitable[bool]], what: str, limit: float = 20) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_reload_adds_a_static_endpoint_and_a_subscriber(
    tmp_path: Path, site: Site, aiohttp_server
) -> None:
    received: list[Any] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(json.loads(await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    hook_url = str((await aiohttp_server(app)).make_url("/hook"))
    sink, smtp_port = Sink(), free_port()
    controller = start_sink(sink, smtp_port)
    port = free_port()
    site.set("/populations-at-risk/", index_html({"Imminent Risk": [("mali", "Mali")]}))
    site.set("/countries/mali/", country_html("Mali", level="Imminent Risk"))
    config = tmp_path / "warnsvc.yaml"
    config.write_text(
        config_text(tmp_path, site, port=port, smtp=smtp_port, hook=None, subscriber=False)
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "warnsvc",
        "run",
        "-c",
        str(config),
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"

    async def ready() -> Any:
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as resp:
                return await resp.json()
        except aiohttp.ClientError:
            return {}

    try:
        # recorded, not only fetched: a reload that re-times the source while the baseline is
        # still being written would make the next poll the baseline, with nothing to announce
        await until(lambda: _recorded(base), "the baseline poll")
        site.set("/populations-at-risk/", index_html({"Current Crisis": [("mali", "Mali")]}))
        site.set("/countries/mali/", country_html("Mali", level="Current Crisis"))
        # The edit adds both recipients and re-times the source, which makes it poll at once.
        config.write_text(
            config_text(
                tmp_path,
                site,
                port=port,
                smtp=smtp_port,
                hook=hook_url,
                subscriber=True,
                interval="2h",
            )
        )
        proc.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            checks = (await ready()).get("checks", {})
            return bool(checks.get("config", {}).get("last_reload") == "ok")

        await until(reloaded, "the reload")

        async def both_told() -> bool:
            return bool(received) and bool(sink.received)

        await until(both_told, "the webhook and the mail of the escalation")
        await asyncio.sleep(1.5)  # a duplicate, if there were one, would arrive by now
        assert [r["type"] for r in received] == ["risk.escalated"]
        assert [r.rcpt_tos for r in sink.received] == [["desk@example.org"]]
        subject = sink.received[0].message()["Subject"]
        assert "Mali" in subject and "Current Crisis" in subject
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), timeout=15)
        controller.stop()


async def _recorded(base: str) -> bool:
    """Whether a poll of source gcr2p has been recorded (``/metrics`` counts it then)."""
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as resp:
            text = await resp.text()
    except aiohttp.ClientError:
        return False
    return any(
        line.startswith("warnsvc_polls_total{")
        and 'source="gcr2p"' in line
        and 'result="ok"' in line
        and float(line.rsplit(" ", 1)[1]) >= 1
        for line in text.splitlines()
    )
