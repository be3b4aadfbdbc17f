"""The browser tests' harness: the real service on loopback, Debian's Chromium driven by
Playwright, axe-core loaded from disk, screenshots in the test's temporary directory.

A missing browser or axe-core FAILS the tests (``make test`` installs both first:
scripts/ensure-chromium, scripts/ensure-axe); nothing here skips.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright
from sqlalchemy import update

from tests.site_data import fill
from tests.smtp_sink import Sink, free_port, start_sink
from warnsvc.config import parse_config
from warnsvc.model import new_event_id
from warnsvc.service import Service
from warnsvc.store import schema
from warnsvc.store.db import Store
from warnsvc.store.webhooks import WEBHOOKS_CHANNEL, test_event

AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = (1280, 375)
PARTNER_KEY = "partner-key-for-the-browser-test-0123"
CONSOLE_TOKEN = "console-token-for-the-browser-test-0123"


def chromium() -> str:
    path = os.environ.get("WARNSVC_CHROMIUM", "/usr/bin/chromium")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no Chromium at {path}: run scripts/ensure-chromium (make test does)")
    return path


def axe_source() -> str:
    if not AXE.is_file():
        pytest.fail(f"no axe-core at {AXE}: run scripts/ensure-axe (make test does)")
    return AXE.read_text(encoding="utf-8")


@dataclass
class Running:
    service: Service
    base: str
    sink: Sink
    dead_letter: int
    """A webhook delivery to NGO A's endpoint that was dead-lettered."""
    endpoint: str


async def add_dead_letter(store: Store) -> tuple[str, int]:
    """NGO A's endpoint and one of its deliveries, dead after eight answers of HTTP 500."""
    now = datetime.now(UTC)
    endpoint, _ = await store.endpoints.create(
        url="http://127.0.0.1:9/hook", partner_id="ngo-a", description="Field office", now=now
    )
    event = test_event(service="Atrocity alerts", now=now, event_id=new_event_id(now))
    (delivery,) = await store.record_event(event, {WEBHOOKS_CHANNEL: [endpoint.id]})
    outbox = schema.outbox
    async with store.engine.begin() as conn:
        await conn.execute(
            update(outbox)
            .where(outbox.c.id == delivery)
            .values(status="dead", attempts=8, last_status=500, last_error="HTTP 500")
        )
    return endpoint.id, delivery


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def sink(smtp_port: int) -> Iterator[Sink]:
    handler = Sink()
    controller = start_sink(handler, smtp_port)
    try:
        yield handler
    finally:
        controller.stop()


@pytest.fixture
async def running(
    tmp_path: Path, sink: Sink, smtp_port: int, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Running]:
    """The service on a free port, its store holding the situations of ``tests.site_data``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WARNSVC_CONSOLE_TOKEN", CONSOLE_TOKEN)
    port = free_port()
    url = f"sqlite+aiosqlite:///{tmp_path}/warnsvc.db"
    store = await Store.open(url)
    await fill(store)
    endpoint, dead_letter = await add_dead_letter(store)
    await store.close()
    text = f"""
service:
  name: Atrocity alerts
  base_url: http://127.0.0.1:{port}
  http: {{host: 127.0.0.1, port: {port}}}
  shutdown_timeout: 3s
  pid_file: null
  watch_config: false
storage: {{url: "{url}"}}
feeds: {{dir: "{tmp_path}/feeds", title: Atrocity alerts}}
sources:
  - {{id: gcr2p, kind: gcr2p-index, url: "http://127.0.0.1:9/populations-at-risk/",
     enabled: false}}
email:
  from_address: "Atrocity alerts <alerts@example.org>"
  rate: 0
  smtp: {{host: 127.0.0.1, port: {smtp_port}, security: none, timeout: 2s}}
webhooks:
  allow_hosts: [127.0.0.1]
  partners:
    - {{id: ngo-a, name: NGO A, api_key: "{PARTNER_KEY}"}}
"""
    service = Service(parse_config(text, filename="browser.yaml"))
    await service.start()
    try:
        yield Running(service, f"http://127.0.0.1:{port}", sink, dead_letter, endpoint)
    finally:
        await service.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    executable = chromium()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    opened = await context.new_page()
    dialogs: list[str] = []
    opened.on("dialog", lambda dialog: dialogs.append(dialog.message))
    try:
        yield opened
    finally:
        await context.close()
    assert dialogs == [], "a page ran script from a source"


Check = Callable[[Page, str], Awaitable[None]]

_AXE_RUN = """async (exclude) => {
  const result = await axe.run({exclude: exclude}, {resultTypes: ['violations']});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help,
    nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 5)}));
}"""


@pytest.fixture
def check(tmp_path: Path) -> Check:
    """Check the page as it is: axe-core finds no serious or critical violation, in light and
    dark schemes, at 1280 and 375 px, where nothing is wider than the screen; a screenshot of
    each width goes to the test's temporary directory."""
    source = axe_source()
    shots = tmp_path / "screenshots"
    shots.mkdir(exist_ok=True)

    async def run(page: Page, name: str) -> None:
        for width, scheme in zip(WIDTHS, ("light", "dark"), strict=True):
            await page.set_viewport_size({"width": width, "height": 900})
            await page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
            await page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
            if not await page.evaluate("() => typeof axe !== 'undefined'"):
                await page.evaluate(source)
            # Chromium's own notice on pages made by XSLT is the browser's, not ours
            found: list[dict[str, Any]] = await page.evaluate(_AXE_RUN, [["xslt-warning-banner"]])
            bad = [v for v in found if v["impact"] in ("serious", "critical")]
            assert bad == [], f"{name} at {width} px ({scheme}): {bad}"
            overflow = await page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{name} at {width} px is {overflow} px wider than the screen"
        await page.set_viewport_size({"width": 1280, "height": 900})

    return run


async def wait_for(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
