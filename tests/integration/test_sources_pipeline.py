"""The feed, cap, page and json kinds through the real pipeline, against a loopback site."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Site
from warnsvc.config import Settings, parse_config
from warnsvc.model import EventType, Status
from warnsvc.service import Components, build_components

FIXTURES = Path(__file__).parents[1] / "fixtures"
THREE_LEVELS = (FIXTURES / "gdacs" / "written-rss-three-levels.xml").read_text(encoding="utf-8")


def make_settings(tmp_path: Path, sources: str, *, confirmations: int = 2) -> Settings:
    text = f"""
storage: {{url: "sqlite+aiosqlite:///{tmp_path}/t.db"}}
detection: {{confirmations: {confirmations}, confirm_delay: 1s}}
feeds: {{dir: "{tmp_path}/feeds"}}
sources:
{sources}
"""
    return parse_config(text, filename="test.yaml", environ={})


def gdacs_source(url: str) -> str:
    return f"""
  - id: gdacs
    kind: feed
    url: {url}
    scale: gdacs
    fields:
      level: {{element: "gdacs:alertlevel"}}
      date: {{element: "gdacs:fromdate"}}
    levels: {{Green: green, Orange: orange, Red: red}}
    fetch: {{timeout: 2s, retries: 0}}
"""


@pytest.fixture
async def gdacs(tmp_path: Path, site: Site):
    parts = await build_components(make_settings(tmp_path, gdacs_source(site.url("/rss.xml"))))
    yield parts
    await parts.close()


async def test_gdacs_feed_baseline_then_a_confirmed_escalation(gdacs: Components, site: Site):
    site.set("/rss.xml", THREE_LEVELS, content_type="application/rss+xml")
    first = await gdacs.poller.poll("gdacs")
    assert first.ok and first.baseline
    assert [(o.situation, o.level) for o in first.observations] == [
        ("gdacs:eq1221830", "green"),
        ("gdacs:dr1012728", "orange"),
        ("gdacs:tc1000641", "red"),
    ]
    site.set("/rss.xml", THREE_LEVELS.replace(">Green<", ">Orange<"))
    assert (await gdacs.poller.poll("gdacs")).pending == ["gdacs:eq1221830"]
    confirmed = await gdacs.poller.poll("gdacs")
    [event] = confirmed.events
    assert (event.type, event.situation, event.scale) == (
        EventType.ESCALATED,
        "gdacs:eq1221830",
        "gdacs",
    )
    assert event.previous_level is not None and event.previous_level.id == "green"
    assert event.level is not None and event.level.id == "orange"
    assert await gdacs.dispatcher.drain() == 1


async def test_a_bad_item_is_skipped_reported_in_health_and_others_still_count(
    gdacs: Components, site: Site
):
    site.set("/rss.xml", THREE_LEVELS)
    await gdacs.poller.poll("gdacs")
    broken = THREE_LEVELS.replace(">Red</gdacs", ">Purple</gdacs").replace(">Green<", ">Red<")
    site.set("/rss.xml", broken)
    await gdacs.poller.poll("gdacs")
    report = await gdacs.poller.poll("gdacs")
    assert report.ok
    assert [(e.type, e.situation) for e in report.events] == [
        (EventType.ESCALATED, "gdacs:eq1221830")
    ]
    assert len(report.skipped) == 1 and "'Purple'" in report.skipped[0]
    health = await gdacs.store.source_health("gdacs")
    assert health is not None and health.healthy and health.observations == 2
    assert health.last_warning is not None and "'Purple'" in health.last_warning
    assert "TC1000641" in health.last_warning
    states = await gdacs.store.situation_states("gdacs")
    assert states["gdacs:tc1000641"].level == "red"  # the skipped item keeps its state

    site.set("/rss.xml", THREE_LEVELS.replace(">Green<", ">Red<"))
    await gdacs.poller.poll("gdacs")
    health = await gdacs.store.source_health("gdacs")
    assert health is not None and health.last_warning is None


async def test_a_feed_that_changes_format_marks_the_source_unhealthy(gdacs: Components, site: Site):
    site.set("/rss.xml", THREE_LEVELS)
    await gdacs.poller.poll("gdacs")
    site.set("/rss.xml", THREE_LEVELS.replace("gdacs:alertlevel", "gdacs:level"))
    report = await gdacs.poller.poll("gdacs")
    assert not report.ok and "none of the 3 feed entries" in (report.error or "")
    health = await gdacs.store.source_health("gdacs")
    assert health is not None and not health.healthy


# --------------------------------------------------------------------------- hostile XML


def hostile_documents(marker_file: Path, site: Site) -> dict[str, str]:
    file_uri = marker_file.as_uri()
    entity_url = site.url("/entity.txt")
    dtd_url = site.url("/evil.dtd")
    return {
        "external entity (file)": f"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY x SYSTEM "{file_uri}">]>
<rss version="2.0" xmlns:gdacs="http://www.gdacs.org"><channel><item><title>&x;</title>
<guid>G1</guid><gdacs:alertlevel>Red</gdacs:alertlevel></item></channel></rss>""",
        "external entity (http)": f"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY x SYSTEM "{entity_url}">]>
<rss version="2.0" xmlns:gdacs="http://www.gdacs.org"><channel><item><title>&x;</title>
<guid>G1</guid><gdacs:alertlevel>Red</gdacs:alertlevel></item></channel></rss>""",
        "external DTD": f"""<?xml version="1.0"?>
<!DOCTYPE rss SYSTEM "{dtd_url}">
<rss version="2.0"><channel><item><title>t</title><guid>G1</guid></item></channel></rss>""",
        "parameter entity": f"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY % p SYSTEM "{entity_url}"> %p;]>
<rss version="2.0"><channel/></rss>""",
        "billion laughs": """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>
<rss version="2.0"><channel><item><title>&lol2;</title><guid>G1</guid></item></channel></rss>""",
    }


@pytest.mark.parametrize(
    "case",
    [
        "external entity (file)",
        "external entity (http)",
        "external DTD",
        "parameter entity",
        "billion laughs",
    ],
)
@pytest.mark.parametrize("kind", ["feed", "cap"])
async def test_hostile_xml_is_refused_and_nothing_is_read(
    case: str, kind: str, tmp_path: Path, site: Site
):
    marker = "MARKER-7f3a9c"
    marker_file = tmp_path / "secret.txt"
    marker_file.write_text(marker)
    site.set("/entity.txt", marker)
    site.set("/evil.dtd", f'<!ENTITY x "{marker}">')
    body = hostile_documents(marker_file, site)[case]
    if kind == "cap":
        body = body.replace("rss", "alert")
    site.set("/doc.xml", body, content_type="application/xml")
    source = (
        gdacs_source(site.url("/doc.xml"))
        if kind == "feed"
        else f"  - {{id: alerts, kind: cap, url: {site.url('/doc.xml')}}}\n"
    )
    parts = await build_components(make_settings(tmp_path, source))
    try:
        source_id = "gdacs" if kind == "feed" else "alerts"
        report = await parts.poller.poll(source_id)
        assert not report.ok and report.observations == []
        assert "document type declaration" in (report.error or "")
        assert "refused" in (report.error or "")
        assert marker not in (report.error or "")
        health = await parts.store.source_health(source_id)
        assert health is not None and not health.healthy
        assert site.hits.get("/entity.txt", 0) == 0
        assert site.hits.get("/evil.dtd", 0) == 0
        assert site.hits["/doc.xml"] == 1
    finally:
        await parts.close()


# --------------------------------------------------------------------------- CAP

CAP = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier><sender>w@example.org</sender>
  <sent>{sent}</sent><status>Actual</status><msgType>{msg_type}</msgType><scope>Public</scope>
  {references}
  <info><category>Safety</category><event>Violence</event><urgency>Expected</urgency>
    <severity>{severity}</severity><certainty>Likely</certainty>
    <expires>{expires}</expires>
    <headline>Attacks on civilians in the north</headline>
    <description>{description}</description></info>
</alert>"""


def cap(
    identifier: str,
    *,
    msg_type: str = "Alert",
    severity: str = "Moderate",
    sent: str = "2099-01-01T10:00:00+00:00",
    expires: str = "2099-12-31T00:00:00+00:00",
    references: str = "",
    description: str = "Armed groups gather.",
) -> str:
    refs = f"<references>{references}</references>" if references else ""
    return CAP.format(
        identifier=identifier,
        msg_type=msg_type,
        severity=severity,
        sent=sent,
        expires=expires,
        references=refs,
        description=description,
    )


def index(*paths: str) -> str:
    entries = "".join(
        f"<entry><id>urn:{p}</id><title>{p}</title><updated>2099-01-01T00:00:00Z</updated>"
        f'<link rel="alternate" type="application/cap+xml" href="{p}"/></entry>'
        for p in paths
    )
    return (
        '<feed xmlns="http://www.w3.org/2005/Atom"><id>urn:i</id><title>i</title>'
        f"<updated>2099-01-01T00:00:00Z</updated>{entries}</feed>"
    )


@pytest.fixture
async def alerts(tmp_path: Path, site: Site):
    source = f"""
  - id: alerts
    kind: cap
    url: {site.url("/index.atom")}
    link_delay: 0s
    fetch: {{timeout: 2s, retries: 0}}
"""
    parts = await build_components(make_settings(tmp_path, source, confirmations=1))
    yield parts
    await parts.close()


async def test_cap_alert_update_and_cancel(alerts: Components, site: Site):
    site.set("/index.atom", index("/cap/a1.xml"), content_type="application/atom+xml")
    site.set("/cap/a1.xml", cap("A1"))
    site.set("/cap/other.xml", cap("B1", severity="Minor"))
    first = await alerts.poller.poll("alerts")
    assert first.ok and first.baseline
    assert [(o.situation, o.level) for o in first.observations] == [("alerts:a1", "moderate")]

    a1 = "w@example.org,A1,2099-01-01T10:00:00+00:00"
    site.set("/index.atom", index("/cap/a1.xml", "/cap/a1-u1.xml", "/cap/other.xml"))
    site.set(
        "/cap/a1-u1.xml",
        cap("A1.1", msg_type="Update", severity="Extreme", sent="2099-01-01T11:00:00+00:00",
            references=a1),
    )  # fmt: skip
    escalated = await alerts.poller.poll("alerts")
    assert {(e.type, e.situation) for e in escalated.events} == {
        (EventType.LISTED, "alerts:b1"),
        (EventType.ESCALATED, "alerts:a1"),
    }
    # the source's own CAP words travel with the event, for warnsvc's CAP output
    assert [e.payload()["cap"] for e in escalated.events] == [
        {"urgency": "Expected", "certainty": "Likely"}
    ] * 2

    site.set(
        "/cap/a1-u2.xml",
        cap("A1.2", msg_type="Update", severity="Extreme", sent="2099-01-02T11:00:00+00:00",
            references=a1, description="More armed groups gather."),
    )  # fmt: skip
    site.set("/index.atom", index("/cap/a1.xml", "/cap/a1-u2.xml", "/cap/other.xml"))
    updated = await alerts.poller.poll("alerts")
    assert [(e.type, e.situation) for e in updated.events] == [(EventType.UPDATED, "alerts:a1")]

    site.set(
        "/cap/a1-c.xml",
        cap("A1.3", msg_type="Cancel", sent="2099-01-03T11:00:00+00:00", references=a1),
    )
    site.set("/index.atom", index("/cap/a1-c.xml", "/cap/other.xml"))
    cancelled = await alerts.poller.poll("alerts")
    [event] = cancelled.events
    assert (event.type, event.situation, event.status) == (
        EventType.DELISTED,
        "alerts:a1",
        Status.CANCELLED,
    )
    assert event.previous_level is not None and event.previous_level.id == "extreme"


async def test_cap_expiry_ends_an_alert_while_it_is_still_listed(alerts: Components, site: Site):
    site.set("/index.atom", index("/cap/a1.xml"))
    site.set("/cap/a1.xml", cap("A1"))
    await alerts.poller.poll("alerts")
    site.set("/cap/a1.xml", cap("A1", expires="2001-01-01T00:00:00+00:00"))
    report = await alerts.poller.poll("alerts")
    [event] = report.events
    assert (event.type, event.status) == (EventType.DELISTED, Status.EXPIRED)


async def test_cancel_ends_an_alert_even_from_a_non_authoritative_source(
    tmp_path: Path, site: Site
):
    source = f"""
  - {{id: alerts, kind: cap, url: {site.url("/alert.xml")}, authoritative: false}}
"""
    parts = await build_components(make_settings(tmp_path, source, confirmations=1))
    try:
        site.set("/alert.xml", cap("A1"))
        await parts.poller.poll("alerts")
        site.set(
            "/alert.xml",
            cap("A2", msg_type="Cancel", references="w@example.org,A1,2099-01-01T10:00:00+00:00"),
        )
        report = await parts.poller.poll("alerts")
        assert [(e.type, e.situation) for e in report.events] == [(EventType.DELISTED, "alerts:a1")]
    finally:
        await parts.close()


# --------------------------------------------------------------------------- page and json


async def test_a_page_selector_that_stops_matching_turns_the_source_unhealthy(
    tmp_path: Path, site: Site
):
    source = f"""
  - id: watch
    kind: page
    url: {site.url("/watch")}
    scale: gcr2p
    block: article.situation
    fields:
      title: {{css: h2}}
      level: {{css: .risk}}
"""
    parts = await build_components(make_settings(tmp_path, source))
    try:
        site.set(
            "/watch",
            "<html><body><article class='situation'><h2>Mali</h2>"
            "<p class='risk'>Imminent Risk</p></article></body></html>",
        )
        first = await parts.poller.poll("watch")
        assert first.ok and [(o.situation, o.level) for o in first.observations] == [
            ("watch:mali", "imminent-risk")
        ]
        site.set("/watch", "<html><body><div class='card'><h2>Mali</h2></div></body></html>")
        report = await parts.poller.poll("watch")
        assert not report.ok
        assert "block selector 'article.situation' matched nothing" in (report.error or "")
        health = await parts.store.source_health("watch")
        assert health is not None and not health.healthy
    finally:
        await parts.close()


async def test_a_json_api_source(tmp_path: Path, site: Site):
    source = f"""
  - id: api
    kind: json
    url: {site.url("/api")}
    scale: gdacs
    items: data
    fields: {{id: code, name: title, level: alert.level}}
"""
    parts = await build_components(make_settings(tmp_path, source))
    try:
        site.set(
            "/api",
            '{"data": [{"code": "X1", "title": "Floods", "alert": {"level": "Orange"}}]}',
            content_type="application/json",
        )
        report = await parts.poller.poll("api")
        assert report.ok
        assert [(o.situation, o.name, o.level) for o in report.observations] == [
            ("api:x1", "Floods", "orange")
        ]
    finally:
        await parts.close()
