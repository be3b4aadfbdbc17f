"""The pipeline end to end against a real loopback site: fetch, parse, detect, store, feeds."""

from __future__ import annotations

from pathlib import Path

import feedparser
import pytest

from tests.conftest import Site, country_html, index_html
from warnsvc.config import Settings, parse_config
from warnsvc.model import EventType
from warnsvc.service import Components, build_components


def make_settings(
    tmp_path: Path,
    url: str,
    *,
    kind: str = "gcr2p-index",
    follow: bool = True,
    confirmations: int = 2,
    max_bytes: str = "1MB",
) -> Settings:
    extra = (
        f"    follow_pages: {str(follow).lower()}\n    page_delay: 0s\n"
        if kind == "gcr2p-index"
        else ""
    )
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
detection: {{confirmations: {confirmations}, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
  - id: gcr2p
    kind: {kind}
    url: {url}
{extra}    fetch: {{timeout: 1s, retries: 0, max_bytes: {max_bytes}}}
"""
    return parse_config(text, filename="test.yaml")


def publish(site: Site, levels: dict[str, str], *, dates: dict[str, str] | None = None) -> None:
    """Serve an index with these situations (name -> level) and their country pages."""
    sections: dict[str, list[tuple[str, str]]] = {}
    for name, level in levels.items():
        slug = name.lower().replace(" ", "-")
        sections.setdefault(level, []).append((slug, name))
        page_level = None if level == "Previously Studied Situations" else level
        date = (dates or {}).get(name, "1 June 2022")
        site.set(f"/countries/{slug}/", country_html(name, level=page_level, date=date))
    site.set("/populations-at-risk/", index_html(sections))


@pytest.fixture
async def parts(tmp_path: Path, site: Site):
    components = await build_components(make_settings(tmp_path, site.url("/populations-at-risk/")))
    yield components
    await components.close()


async def test_baseline_then_confirmed_escalation_reaches_the_feeds(parts: Components, site: Site):
    publish(site, {"Ukraine": "Current Crisis", "Mali": "Imminent Risk"})
    first = await parts.poller.poll("gcr2p")
    assert first.ok and first.baseline and first.events == []
    assert {o.situation for o in first.observations} == {"gcr2p:ukraine", "gcr2p:mali"}

    publish(site, {"Ukraine": "Current Crisis", "Mali": "Current Crisis"})
    seen = await parts.poller.poll("gcr2p")
    assert seen.events == [] and seen.pending == ["gcr2p:mali"]
    confirmed = await parts.poller.poll("gcr2p")
    assert [(e.type, e.situation) for e in confirmed.events] == [
        (EventType.ESCALATED, "gcr2p:mali")
    ]
    event = confirmed.events[0]
    assert (event.previous_level and event.previous_level.id, event.level and event.level.id) == (
        "imminent-risk",
        "current-crisis",
    )
    assert event.summary == "Populations face atrocity crimes."
    assert event.risk_factors == ("A factor.",)

    again = await parts.poller.poll("gcr2p")
    assert again.events == [] and again.pending == []  # the same page twice: no duplicate

    assert await parts.dispatcher.drain() == 1
    feed = feedparser.parse(parts.settings.feeds.dir / "alerts.atom")
    assert feed.bozo == 0
    assert [e.title for e in feed.entries] == ["Mali: Imminent Risk -> Current Crisis"]
    history = await parts.store.level_history("gcr2p:mali")
    assert [(h["level"], h["event_id"]) for h in history] == [
        ("imminent-risk", None),
        ("current-crisis", event.id),
    ]


async def test_a_level_that_flips_for_one_poll_emits_nothing(parts: Components, site: Site):
    publish(site, {"Mali": "Imminent Risk"})
    await parts.poller.poll("gcr2p")
    publish(site, {"Mali": "Serious Concern"})
    glitch = await parts.poller.poll("gcr2p")
    assert glitch.pending == ["gcr2p:mali"]
    publish(site, {"Mali": "Imminent Risk"})
    back = await parts.poller.poll("gcr2p")
    assert back.events == [] and back.pending == []
    assert await parts.store.count_events() == 0
    states = await parts.store.situation_states("gcr2p")
    assert states["gcr2p:mali"].level == "imminent-risk"
    assert not states["gcr2p:mali"].has_pending


async def test_listing_and_delisting_only_from_the_index(parts: Components, site: Site):
    publish(site, {"Mali": "Imminent Risk"})
    await parts.poller.poll("gcr2p")
    publish(site, {"Mali": "Imminent Risk", "Sudan": "Current Crisis"})
    await parts.poller.poll("gcr2p")
    listed = await parts.poller.poll("gcr2p")
    assert [(e.type, e.situation) for e in listed.events] == [(EventType.LISTED, "gcr2p:sudan")]

    publish(site, {"Sudan": "Current Crisis", "Mali": "Previously Studied Situations"})
    await parts.poller.poll("gcr2p")
    moved = await parts.poller.poll("gcr2p")
    assert [(e.type, e.situation) for e in moved.events] == [(EventType.DELISTED, "gcr2p:mali")]
    assert moved.events[0].previous_level is not None
    assert moved.events[0].previous_level.id == "imminent-risk"

    publish(site, {"Mali": "Previously Studied Situations"})  # Sudan disappears
    await parts.poller.poll("gcr2p")
    gone = await parts.poller.poll("gcr2p")
    assert [(e.type, e.situation) for e in gone.events] == [(EventType.DELISTED, "gcr2p:sudan")]


async def test_a_newer_page_date_is_an_update(parts: Components, site: Site):
    publish(site, {"Mali": "Imminent Risk"}, dates={"Mali": "1 March 2025"})
    await parts.poller.poll("gcr2p")
    publish(site, {"Mali": "Imminent Risk"}, dates={"Mali": "1 July 2025"})
    report = await parts.poller.poll("gcr2p")
    assert [(e.type, e.situation) for e in report.events] == [(EventType.UPDATED, "gcr2p:mali")]
    assert report.events[0].occurred_at.date().isoformat() == "2025-07-01"


async def test_conditional_get_reuses_the_cached_page(parts: Components, site: Site):
    publish(site, {"Mali": "Imminent Risk"})
    index = site.pages["/populations-at-risk/"]
    index.etag = '"v1"'
    await parts.poller.poll("gcr2p")
    cached = await parts.store.cached_page(site.url("/populations-at-risk/"))
    assert cached is not None and cached.etag == '"v1"'
    second = await parts.poller.poll("gcr2p")
    assert second.ok and [o.situation for o in second.observations] == ["gcr2p:mali"]
    assert site.hits["/populations-at-risk/"] == 2


BROKEN = {
    "no risk line": lambda s: s.set("/page", "<html><body><h1>Mali</h1><p>Text.</p></body></html>"),
    "unknown level": lambda s: s.set("/page", country_html("Mali", level="Extreme Danger")),
    "html garbage": lambda s: s.set("/page", "<<<>>><html><<p>&&&\x00\x01</div></table>"),
    "truncated body": lambda s: s.set("/page", country_html("Mali", level="Current Crisis")[:300]),
    "server error": lambda s: s.set("/page", "oops", status=500),
    "timeout": lambda s: s.set("/page", country_html("Mali", level="Current Crisis"), delay=3),
    "10 MB body": lambda s: s.set("/page", b"<p>" + b"x" * (10 * 1024 * 1024)),
}

REASONS = {
    "no risk line": "no 'Risk Level:' line",
    "unknown level": "Extreme Danger",
    "html garbage": "no 'Risk Level:' line",
    "truncated body": "no 'Risk Level:' line",
    "server error": "HTTP 500",
    "timeout": "timed out",
    "10 MB body": "larger than",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
async def test_a_broken_page_marks_the_source_unhealthy_and_emits_nothing(
    case: str, tmp_path: Path, site: Site
):
    parts = await build_components(make_settings(tmp_path, site.url("/page"), kind="gcr2p-page"))
    try:
        site.set("/page", country_html("Mali", level="Imminent Risk"))
        assert (await parts.poller.poll("gcr2p")).ok
        BROKEN[case](site)
        failed = await parts.poller.poll("gcr2p")
        assert not failed.ok and failed.events == []
        assert failed.error is not None and REASONS[case] in failed.error
        health = await parts.store.source_health("gcr2p")
        assert health is not None and not health.healthy and health.consecutive_failures == 1
        assert health.last_error == failed.error
        states = await parts.store.situation_states("gcr2p")
        assert (
            states["gcr2p:mali"].level == "imminent-risk" and not states["gcr2p:mali"].has_pending
        )

        site.set("/page", country_html("Mali", level="Imminent Risk"))
        recovered = await parts.poller.poll("gcr2p")
        assert recovered.ok and recovered.events == []
        health = await parts.store.source_health("gcr2p")
        assert health is not None and health.healthy and health.consecutive_failures == 0
        assert await parts.store.count_events() == 0
    finally:
        await parts.close()


async def test_a_broken_country_page_fails_the_whole_index_poll(parts: Components, site: Site):
    publish(site, {"Mali": "Imminent Risk", "Sudan": "Current Crisis"})
    await parts.poller.poll("gcr2p")
    publish(site, {"Mali": "Current Crisis", "Sudan": "Current Crisis"})
    site.set("/countries/sudan/", "down", status=503)
    report = await parts.poller.poll("gcr2p")
    assert not report.ok and "HTTP 503" in (report.error or "")
    states = await parts.store.situation_states("gcr2p")
    assert not states["gcr2p:mali"].has_pending  # a half-read index is never a change


async def test_a_dead_country_page_keeps_the_index_level(parts: Components, site: Site):
    publish(site, {"Mali": "Imminent Risk", "Sudan": "Current Crisis"})
    await parts.poller.poll("gcr2p")
    publish(site, {"Mali": "Imminent Risk", "Sudan": "Imminent Risk"})
    del site.pages["/countries/sudan/"]  # the site answers 404 for it now
    await parts.poller.poll("gcr2p")
    report = await parts.poller.poll("gcr2p")
    assert report.ok
    assert [(e.type, e.situation) for e in report.events] == [
        (EventType.DEESCALATED, "gcr2p:sudan")
    ]
    # the stored analysis of the page is kept, not replaced by the index blurb
    assert report.events[0].summary == "Populations face atrocity crimes."
