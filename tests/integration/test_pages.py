"""The public pages over HTTP: what they show, that source text stays text, the headers."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.integration.email_harness import Harness, options
from tests.site_data import HOSTILE, filled_store
from tests.smtp_sink import free_port
from warnsvc.config import Settings, parse_config
from warnsvc.store.db import Store
from warnsvc.web.app import make_app
from warnsvc.web.pages import Site, ago, level_tone, with_stylesheet
from warnsvc.web.security import CSP
from warnsvc.web.subscriptions import FORM_CHOICES, SubscriptionPages, add_subscription_routes

Client = TestClient[Any, Any]
BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"

CONFIG = """
service: {name: Alerts test}
sources:
  - {id: gcr2p, kind: gcr2p-index, url: "https://example.org/populations-at-risk/"}
  - {id: quakes, kind: feed, url: "https://example.org/gdacs.xml", scale: gdacs,
     namespace: gdacs, enabled: false}
"""


def settings() -> Settings:
    return parse_config(CONFIG, filename="test.yaml")


async def ready(replica_only: bool = False) -> tuple[bool, dict[str, Any]]:
    return True, {}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with filled_store(tmp_path) as opened:
        yield opened


@pytest.fixture
async def client(aiohttp_client: Any, store: Store, tmp_path: Path) -> AsyncIterator[Client]:
    feeds = tmp_path / "feeds"
    (feeds / "situations").mkdir(parents=True)
    (feeds / "alerts.atom").write_bytes(
        b"<?xml version='1.0' encoding='UTF-8'?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\">"
        b"<title>t</title></feed>\n"
    )
    (feeds / "situations" / "gcr2p:sudan.atom").write_bytes(b"<feed/>")
    config = settings()
    site = Site(
        store=store,
        settings=lambda: config,
        feeds_dir=feeds,
        next_polls=lambda: {"gcr2p": "2030-01-01T00:00:00+00:00"},
        signup=lambda: True,
    )
    app = make_app(feeds_dir=feeds, readiness=ready, routes=site.routes())
    harness = Harness.build(store, options(free_port()))
    scales = config.scale_map()
    add_subscription_routes(
        app,
        SubscriptionPages(
            subscribers=store.subscribers,
            templates=harness.mailer.templates,
            service_name="Alerts test",
            scales=scales,
            sources={"gcr2p": "GCR2P"},
            digest_hour=7,
            confirm_within=3600.0,
            resend_after=600.0,
            requests_per_minute=100,
        ),
    )
    app[FORM_CHOICES] = site.form_choices
    try:
        yield await aiohttp_client(app)
    finally:
        await harness.mailer.close()


def assert_page(text: str) -> None:
    assert text.startswith("<!doctype html>")
    assert '<html lang="en">' in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert '<link rel="stylesheet" href="/static/style.css">' in text
    assert "<script" not in text and HOSTILE not in text  # source text stays text
    assert " style=" not in text  # no inline style: the CSP allows none


async def test_home_groups_situations_by_level_highest_first(client: Client) -> None:
    response = await client.get("/")
    assert response.status == 200
    assert response.headers["Content-Security-Policy"] == CSP
    text = await response.text()
    assert_page(text)
    headings = re.findall(r'<span class="level tone-(\d)">([^<]+)</span>', text)
    assert headings == [("3", "Current Crisis"), ("1", "Serious Concern"), ("0", "Not listed")]
    assert '<a href="/situations/gcr2p%3Asudan">Sudan</a>' in text
    assert "escalated" in text and "&lt;script&gt;" in text
    assert '<a href="/subscribe">' in text
    assert re.search(r"gcr2p</a>:\s*last read \d+ days ago; next read in \d+ days", text)
    assert "quakes" not in text  # a disabled source is not shown


async def test_a_situation_page_has_a_chart_with_a_text_alternative(client: Client) -> None:
    response = await client.get("/situations/gcr2p:sudan")
    assert response.status == 200
    text = await response.text()
    assert_page(text)
    svg = text[text.index("<svg") : text.index("</svg>")]
    assert 'role="img"' in svg and 'aria-labelledby="chart-title chart-desc"' in svg
    assert re.search(r"<desc[^>]*>Imminent Risk from 5 Jan 2026, 09:00 UTC; Current Crisis", svg)
    assert svg.count("<circle") == 2  # two steps: the first reading, the escalation
    for level in ("Not listed", "Serious Concern", "Imminent Risk", "Current Crisis"):
        assert f">{level}</text>" in svg
    table = text[text.index('<table class="history">') : text.index("</table>")]
    assert table.index("Current Crisis") < table.index("Imminent Risk")  # newest first
    assert 'href="/subscribe?situation=gcr2p%3Asudan"' in text
    assert 'href="/feeds/situations/gcr2p:sudan.atom"' in text
    assert 'href="https://example.org/countries/sudan/"' in text


async def test_hostile_source_text_is_escaped_everywhere(client: Client) -> None:
    text = await (await client.get("/situations/gcr2p:hostile")).text()
    assert_page(text)
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in text


async def test_an_unknown_situation_is_a_404_page(client: Client) -> None:
    response = await client.get("/situations/gcr2p:nowhere")
    assert response.status == 404
    assert response.content_type == "text/html"
    assert_page(await response.text())


async def test_a_browser_gets_the_feed_with_its_stylesheet_a_reader_gets_the_file(
    client: Client,
) -> None:
    page = await client.get("/feeds/alerts.atom", headers={"Accept": BROWSER})
    assert page.status == 200 and page.content_type == "application/xml"
    assert page.headers["Vary"] == "Accept"
    body = await page.read()
    assert body.startswith(
        b"<?xml version='1.0' encoding='UTF-8'?>\n"
        b'<?xml-stylesheet href="/static/feed.xsl" type="text/xsl"?>\n<feed'
    )
    reader = await client.get("/feeds/alerts.atom", headers={"Accept": "application/atom+xml"})
    assert reader.content_type == "application/atom+xml"
    assert b"xml-stylesheet" not in await reader.read()
    assert reader.headers["Vary"] == "Accept" and "ETag" in reader.headers
    missing = await client.get("/feeds/nothing.rss", headers={"Accept": BROWSER})
    assert missing.status == 404
    escape = await client.get("/feeds/..%2Fwarnsvc.db.rss", headers={"Accept": BROWSER})
    assert escape.status == 404
    xsl = await client.get("/static/feed.xsl")
    assert xsl.status == 200 and b"How to follow this feed" in await xsl.read()


async def test_static_files_are_only_ours(client: Client) -> None:
    css = await client.get("/static/style.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert b"prefers-color-scheme: dark" in await css.read()
    again = await client.get("/static/style.css", headers={"If-None-Match": css.headers["ETag"]})
    assert again.status == 304
    assert (await client.get("/static/warnsvc.db")).status == 404


async def test_subscribe_offers_situations_by_name_and_only_used_levels(client: Client) -> None:
    response = await client.get("/subscribe?situation=gcr2p:sudan")
    assert response.status == 200
    text = await response.text()
    assert_page(text)
    assert response.headers["Cache-Control"] == "no-store"
    box = r"<input type=\"checkbox\" name=\"situations\" value=\"([^\"]+)\"( checked)?>"
    boxes = re.findall(box, text)
    assert ("gcr2p:sudan", " checked") in boxes and ("gcr2p:gone", "") in boxes
    assert "> Sudan</label>" in text
    levels = re.findall(r'<option value="([a-z-]+)"', text)
    assert levels == ["serious-concern", "imminent-risk", "current-crisis"]  # no GDACS, no CAP


def test_level_tones_and_times() -> None:
    from datetime import UTC, datetime, timedelta

    from warnsvc.model import GCR2P_SCALE

    tones = [level_tone(level, GCR2P_SCALE) for level in GCR2P_SCALE.levels]
    assert tones == [1, 2, 3]
    assert level_tone(None, GCR2P_SCALE) == 0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert ago(now - timedelta(hours=2, minutes=5), now) == "2 h ago"
    assert ago(now + timedelta(minutes=30), now) == "in 30 min"
    assert ago(None, now) == "never"
    assert with_stylesheet(b"<rss/>").startswith(b"<?xml-stylesheet")
