"""Tests of the feeds writer: files are read back with feedparser and the XML parser."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import feedparser
import pytest

from warnsvc.channels.feeds import FeedSettings, build_feeds, entry_title
from warnsvc.model import GCR2P_SCALE, Event, EventType, Scale, Status

ATOM = "{http://www.w3.org/2005/Atom}"
SCALES: Mapping[str, Scale] = {"gcr2p": GCR2P_SCALE}
BASE = datetime(2023, 8, 31, 9, 0, 0, tzinfo=UTC)
NK = "gcr2p:nagorno-karabakh"
NK_NAME = "Nagorno-Karabakh (Armenia/Azerbaijan)"
NK_URL = "https://www.globalr2p.org/countries/nagorno-karabakh/"
SUDAN = "gcr2p:sudan"
TAG = "tag:warnsvc.local,2024:event:"
ABOUT = "http://127.0.0.1:8080/api/v1/schemas/event.json"

LEVEL_FILES = [
    "levels/current-crisis.atom",
    "levels/imminent-risk.atom",
    "levels/serious-concern.atom",
]


def payload(
    event_id: str,
    type_: EventType = EventType.ESCALATED,
    *,
    level: str | None = "imminent-risk",
    previous: str | None = "serious-concern",
    minutes: int = 0,
    situation: str = NK,
    name: str = NK_NAME,
    url: str | None = NK_URL,
    summary: str = "The blockade of the Lachin corridor continues.",
    risk_factors: tuple[str, ...] = ("Blockade", "Shelling"),
    status: Status = Status.ASSESSED,
) -> dict[str, Any]:
    """An event payload exactly as the events table holds it, ``minutes`` after BASE."""
    event = Event(
        id=event_id,
        type=type_,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation=situation,
        situation_name=name,
        situation_url=url,
        scale="gcr2p",
        level=GCR2P_SCALE.get(level) if level else None,
        previous_level=GCR2P_SCALE.get(previous) if previous else None,
        occurred_at=BASE - timedelta(hours=9),
        detected_at=BASE + timedelta(minutes=minutes),
        summary=summary,
        risk_factors=risk_factors,
        status=status,
    )
    return event.payload()


def settings(out_dir: Path, **overrides: Any) -> FeedSettings:
    return FeedSettings(**{"out_dir": out_dir, "base_url": "http://127.0.0.1:8080", **overrides})


def parse(path: Path) -> Any:
    parsed = feedparser.parse(path.read_bytes())
    assert parsed.bozo == 0, parsed.get("bozo_exception")
    return parsed


def entry_ids(path: Path) -> list[str]:
    return [entry.id for entry in parse(path).entries]


def atom_entries(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall(f"{ATOM}entry")


def relative(paths: list[Path], root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in paths)


class TagCollector(HTMLParser):
    """Collects the start tags of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def html_tags(fragment: str) -> list[str]:
    collector = TagCollector()
    collector.feed(fragment)
    collector.close()
    return collector.tags


# --------------------------------------------------------------------------- titles


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            payload("e1"),
            "Nagorno-Karabakh (Armenia/Azerbaijan): Serious Concern -> Imminent Risk",
        ),
        (
            payload("e2", EventType.DEESCALATED, level="imminent-risk", previous="current-crisis"),
            "Nagorno-Karabakh (Armenia/Azerbaijan): Current Crisis -> Imminent Risk",
        ),
        (
            payload("e3", EventType.LISTED, previous=None),
            "Nagorno-Karabakh (Armenia/Azerbaijan): listed at Imminent Risk",
        ),
        (
            payload(
                "e4",
                EventType.DELISTED,
                level=None,
                previous="current-crisis",
                status=Status.DELISTED,
            ),
            "Nagorno-Karabakh (Armenia/Azerbaijan): delisted (was Current Crisis)",
        ),
        (
            payload(
                "e5",
                EventType.DELISTED,
                level=None,
                previous="current-crisis",
                status=Status.PREVIOUSLY_STUDIED,
            ),
            "Nagorno-Karabakh (Armenia/Azerbaijan): no longer assessed (was Current Crisis)",
        ),
        (
            payload("e6", EventType.UPDATED, previous="imminent-risk"),
            "Nagorno-Karabakh (Armenia/Azerbaijan): analysis updated (Imminent Risk)",
        ),
    ],
)
def test_entry_title_reads_at_a_glance(event: dict[str, Any], expected: str) -> None:
    assert entry_title(event) == expected


def test_entry_title_ignores_unknown_keys_and_survives_missing_ones() -> None:
    extended = payload("e1") | {"corrects": "e0", "reason": "typo"}
    assert entry_title(extended) == (
        "Nagorno-Karabakh (Armenia/Azerbaijan): Serious Concern -> Imminent Risk"
    )
    manual = payload("e1") | {"manual": True, "note": "Field reports."}
    assert entry_title(manual) == (
        "[manual] Nagorno-Karabakh (Armenia/Azerbaijan): Serious Concern -> Imminent Risk"
    )
    retraction = payload("e2") | {"type": "event.retracted", "manual": True, "retracts": "e1"}
    assert entry_title(retraction) == (
        "[manual] Nagorno-Karabakh (Armenia/Azerbaijan): correction: event e1 is retracted"
    )
    assert entry_title({}) == "Unknown situation: event"
    assert entry_title({"type": "risk.escalated", "situation": None, "level": "x"}) == (
        "Unknown situation: escalated"
    )


def test_entry_title_strips_control_characters_and_folds_whitespace() -> None:
    event = payload("e1", name="Sudan\x1b[31m \n (North)\x00")
    assert entry_title(event) == "Sudan[31m (North): Serious Concern -> Imminent Risk"


# --------------------------------------------------------------------------- files and rebuilds


def test_build_writes_every_feed_file(tmp_path: Path) -> None:
    events = [payload("e2", minutes=2, situation=SUDAN, name="Sudan"), payload("e1")]

    written = build_feeds(events, SCALES, settings(tmp_path))

    assert relative(written, tmp_path) == sorted(
        [
            "alerts.atom",
            "alerts.json",
            "alerts.rss",
            "situations/gcr2p:nagorno-karabakh.atom",
            "situations/gcr2p:sudan.atom",
            *LEVEL_FILES,
        ]
    )


def test_rebuild_with_same_events_keeps_bytes_and_mtime(tmp_path: Path) -> None:
    events = [payload("e2", minutes=2), payload("e1")]
    build_feeds(events, SCALES, settings(tmp_path))
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    past = 1_000_000_000
    for path in files:  # an old mtime makes any rewrite visible, however fast the test runs
        os.utime(path, ns=(past, past))
    before = {p: p.read_bytes() for p in files}

    assert build_feeds(list(events), SCALES, settings(tmp_path)) == []

    assert {p: p.read_bytes() for p in files} == before
    assert [p.stat().st_mtime_ns for p in files] == [past] * len(files)


def test_new_event_rewrites_only_the_feeds_it_belongs_to(tmp_path: Path) -> None:
    old = payload("e1")
    build_feeds([old], SCALES, settings(tmp_path))
    new = payload("e2", EventType.LISTED, previous=None, minutes=5, situation=SUDAN, name="Sudan")
    new["level"] = GCR2P_SCALE.get("serious-concern").to_json()

    written = build_feeds([new, old], SCALES, settings(tmp_path))

    assert relative(written, tmp_path) == [
        "alerts.atom",
        "alerts.json",
        "alerts.rss",
        "levels/serious-concern.atom",
        "situations/gcr2p:sudan.atom",
    ]


def test_entry_ids_are_tag_uris_stable_across_feeds_and_builds(tmp_path: Path) -> None:
    build_feeds([payload("e1")], SCALES, settings(tmp_path))
    first = entry_ids(tmp_path / "alerts.atom")

    build_feeds([payload("e2", minutes=1), payload("e1")], SCALES, settings(tmp_path))

    assert first == [f"{TAG}e1"]
    expected = [f"{TAG}e2", f"{TAG}e1"]
    assert entry_ids(tmp_path / "alerts.atom") == expected
    assert entry_ids(tmp_path / "alerts.rss") == expected
    assert entry_ids(tmp_path / "situations/gcr2p:nagorno-karabakh.atom") == expected
    assert entry_ids(tmp_path / "levels/imminent-risk.atom") == expected
    items = json.loads((tmp_path / "alerts.json").read_text(encoding="utf-8"))["items"]
    assert [item["id"] for item in items] == expected


def test_id_authorities_are_configurable(tmp_path: Path) -> None:
    custom = settings(tmp_path, id_authority="example.org,2025", entry_id_authority="e.org,2023")
    build_feeds([payload("e1")], SCALES, custom)

    assert entry_ids(tmp_path / "alerts.atom") == ["tag:e.org,2023:event:e1"]
    root = ET.parse(tmp_path / "alerts.atom").getroot()
    assert root.findtext(f"{ATOM}id") == "tag:example.org,2025:feed:alerts"


def feed_id(path: Path) -> str | None:
    return ET.parse(path).getroot().findtext(f"{ATOM}id")


def test_feed_ids_belong_to_the_deployment_and_entry_ids_never_change(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    events = [payload("e1")]
    build_feeds(events, SCALES, settings(ours, base_url="https://Alerts.Example.ORG:8443/warn/"))
    build_feeds(events, SCALES, settings(theirs, base_url="https://warn.other.example"))

    assert feed_id(ours / "alerts.atom") == "tag:alerts.example.org,2024:feed:alerts"
    assert feed_id(ours / "situations/gcr2p:nagorno-karabakh.atom") == (
        "tag:alerts.example.org,2024:feed:situation:gcr2p:nagorno-karabakh"
    )
    assert feed_id(ours / "levels/imminent-risk.atom") == (
        "tag:alerts.example.org,2024:feed:level:imminent-risk"
    )
    assert feed_id(theirs / "alerts.atom") == "tag:warn.other.example,2024:feed:alerts"
    # Entry ids are what readers remember: the same as every earlier release wrote them.
    assert entry_ids(ours / "alerts.atom") == entry_ids(theirs / "alerts.atom") == [f"{TAG}e1"]


@pytest.mark.parametrize(
    ("base_url", "authority"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1,2024"),
        ("https://bücher.example/", "xn--bcher-kva.example,2024"),
        ("https://alerts.example.org./", "alerts.example.org,2024"),
        ("http://[::1]:8080", "warnsvc.local,2024"),  # not a DNS name: the old authority
    ],
)
def test_feed_id_authority_from_the_base_url(tmp_path: Path, base_url: str, authority: str) -> None:
    build_feeds([], SCALES, settings(tmp_path, base_url=base_url), now=BASE)

    assert feed_id(tmp_path / "alerts.atom") == f"tag:{authority}:feed:alerts"


def test_entries_are_newest_first_then_by_id(tmp_path: Path) -> None:
    events = [
        payload("e-a", minutes=1),
        payload("e-c", minutes=5),
        payload("e-b", minutes=1),
        payload("e-d", minutes=-3),
    ]

    build_feeds(events, SCALES, settings(tmp_path))

    expected = [f"{TAG}e-c", f"{TAG}e-b", f"{TAG}e-a", f"{TAG}e-d"]
    assert entry_ids(tmp_path / "alerts.atom") == expected
    assert entry_ids(tmp_path / "alerts.rss") == expected


def test_feed_updated_is_the_newest_detected_at_not_now(tmp_path: Path) -> None:
    build_feeds([payload("e1", minutes=15), payload("e0")], SCALES, settings(tmp_path))

    atom = ET.parse(tmp_path / "alerts.atom").getroot()
    assert atom.findtext(f"{ATOM}updated") == "2023-08-31T09:15:00+00:00"
    entry = atom_entries(tmp_path / "alerts.atom")[0]
    assert entry.findtext(f"{ATOM}updated") == "2023-08-31T09:15:00+00:00"
    assert entry.findtext(f"{ATOM}published") == "2023-08-31T09:15:00+00:00"
    channel = ET.parse(tmp_path / "alerts.rss").getroot().find("channel")
    assert channel is not None
    assert channel.findtext("lastBuildDate") == "Thu, 31 Aug 2023 09:15:00 +0000"


def test_duplicate_event_ids_appear_once(tmp_path: Path) -> None:
    build_feeds([payload("e1"), payload("e1")], SCALES, settings(tmp_path))

    assert entry_ids(tmp_path / "alerts.atom") == [f"{TAG}e1"]


def test_max_entries_keeps_the_newest_in_every_feed(tmp_path: Path) -> None:
    events = [payload(f"e{i}", minutes=i) for i in range(4)]

    build_feeds(events, SCALES, settings(tmp_path, max_entries=2))

    for name in ("alerts.atom", "alerts.rss", "situations/gcr2p:nagorno-karabakh.atom"):
        assert entry_ids(tmp_path / name) == [f"{TAG}e3", f"{TAG}e2"], name
    items = json.loads((tmp_path / "alerts.json").read_text(encoding="utf-8"))["items"]
    assert [item["id"] for item in items] == [f"{TAG}e3", f"{TAG}e2"]


def test_max_entries_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_entries"):
        settings(tmp_path, max_entries=0)


def test_webhook_test_events_never_appear(tmp_path: Path) -> None:
    ping = payload("ping", EventType.WEBHOOK_TEST, minutes=9)

    build_feeds([ping, payload("e1")], SCALES, settings(tmp_path))

    assert entry_ids(tmp_path / "alerts.atom") == [f"{TAG}e1"]
    assert entry_ids(tmp_path / "levels/serious-concern.atom") == [f"{TAG}e1"]


def test_events_with_extra_keys_or_bad_dates_do_not_break_the_build(tmp_path: Path) -> None:
    manual = payload("e2", minutes=1) | {"manual": True, "correction": {"of": "e1"}}
    broken = payload("e3") | {"detected_at": "yesterday"}

    build_feeds([manual, broken, payload("e1")], SCALES, settings(tmp_path))

    assert entry_ids(tmp_path / "alerts.atom") == [f"{TAG}e2", f"{TAG}e1"]


# --------------------------------------------------------------------------- content


def test_untrusted_summary_comes_out_as_text(tmp_path: Path) -> None:
    evil = payload(
        "e1",
        summary="Shelling <script>alert(1)</script> & looting",
        risk_factors=("<b>bold</b> claim", "A & B"),
    )

    build_feeds([evil], SCALES, settings(tmp_path))

    (entry,) = atom_entries(tmp_path / "alerts.atom")
    content = entry.find(f"{ATOM}content")
    assert content is not None
    assert content.get("type") == "html"
    assert content.text == (
        "<p>Shelling &lt;script&gt;alert(1)&lt;/script&gt; &amp; looting</p>\n"
        "<p>Risk factors:</p>\n"
        "<ul><li>&lt;b&gt;bold&lt;/b&gt; claim</li><li>A &amp; B</li></ul>\n"
        f'<p>Source: <a href="{NK_URL}">Global Centre for the Responsibility to Protect</a></p>'
    )
    assert html_tags(content.text) == ["p", "p", "ul", "li", "li", "p", "a"]
    parsed = parse(tmp_path / "alerts.atom").entries[0]
    assert "<script" not in parsed.content[0].value
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; looting" in parsed.content[0].value


def test_rss_description_is_escaped_html_too(tmp_path: Path) -> None:
    build_feeds([payload("e1", summary="<script>alert(1)</script>")], SCALES, settings(tmp_path))

    item = ET.parse(tmp_path / "alerts.rss").getroot().find("channel/item")
    assert item is not None
    description = item.findtext("description")
    assert description is not None
    assert description.startswith("<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>\n")
    assert "script" not in html_tags(description)


def test_characters_illegal_in_xml_are_stripped(tmp_path: Path) -> None:
    event = payload(
        "e1",
        name="Sudan\x00",
        summary="Fighting\x0b in\x1f Darfur\ufffe",
        risk_factors=("\x08Displacement",),
    )

    build_feeds([event], SCALES, settings(tmp_path))

    (entry,) = atom_entries(tmp_path / "alerts.atom")
    assert entry.findtext(f"{ATOM}title") == "Sudan: Serious Concern -> Imminent Risk"
    content = entry.findtext(f"{ATOM}content")
    assert content is not None
    assert content.startswith("<p>Fighting in Darfur</p>\n<p>Risk factors:</p>\n")
    assert "<li>Displacement</li>" in content
    parse(tmp_path / "alerts.rss")


@pytest.mark.parametrize(
    "url",
    ["javascript:alert(1)", "data:text/html,<b>x</b>", "ftp://example.org/", "http://", "/x"],
)
def test_only_http_links_are_kept(tmp_path: Path, url: str) -> None:
    build_feeds([payload("e1", url=url)], SCALES, settings(tmp_path))

    (entry,) = atom_entries(tmp_path / "alerts.atom")
    assert entry.findall(f"{ATOM}link") == []
    content = entry.findtext(f"{ATOM}content")
    assert content == (
        "<p>The blockade of the Lachin corridor continues.</p>\n"
        "<p>Risk factors:</p>\n<ul><li>Blockade</li><li>Shelling</li></ul>"
    )
    (item,) = json.loads((tmp_path / "alerts.json").read_text(encoding="utf-8"))["items"]
    assert "url" not in item


def test_entry_link_and_categories(tmp_path: Path) -> None:
    build_feeds([payload("e1")], SCALES, settings(tmp_path))

    (entry,) = atom_entries(tmp_path / "alerts.atom")
    links = [(link.get("href"), link.get("rel")) for link in entry.findall(f"{ATOM}link")]
    assert links == [(NK_URL, None)]
    terms = [c.get("term") for c in entry.findall(f"{ATOM}category")]
    assert terms == ["risk.escalated", "imminent-risk"]
    parsed = parse(tmp_path / "alerts.rss").entries[0]
    assert parsed.link == NK_URL
    assert [tag.term for tag in parsed.tags] == ["risk.escalated", "imminent-risk"]


def test_feed_self_links_point_under_feeds(tmp_path: Path) -> None:
    build_feeds([payload("e1")], SCALES, settings(tmp_path))

    def self_link(name: str) -> str | None:
        for link in ET.parse(tmp_path / name).getroot().iter(f"{ATOM}link"):
            if link.get("rel") == "self":
                return link.get("href")
        return None

    base = "http://127.0.0.1:8080/feeds/"
    assert self_link("alerts.atom") == base + "alerts.atom"
    assert self_link("alerts.rss") == base + "alerts.rss"
    assert self_link("situations/gcr2p:nagorno-karabakh.atom") == (
        base + "situations/gcr2p:nagorno-karabakh.atom"
    )
    assert self_link("levels/imminent-risk.atom") == base + "levels/imminent-risk.atom"


# --------------------------------------------------------------------------- level feeds


def test_level_feeds_hold_changes_to_or_from_that_level_or_above(tmp_path: Path) -> None:
    events = [
        payload("up", minutes=3),  # serious-concern -> imminent-risk
        payload("down", EventType.DEESCALATED, level="imminent-risk", previous="current-crisis"),
        payload(
            "gone",
            EventType.DELISTED,
            level=None,
            previous="serious-concern",
            status=Status.DELISTED,
            minutes=-1,
        ),
    ]

    build_feeds(events, SCALES, settings(tmp_path))

    assert entry_ids(tmp_path / "levels/serious-concern.atom") == [
        f"{TAG}up",
        f"{TAG}down",
        f"{TAG}gone",
    ]
    assert entry_ids(tmp_path / "levels/imminent-risk.atom") == [f"{TAG}up", f"{TAG}down"]
    assert entry_ids(tmp_path / "levels/current-crisis.atom") == [f"{TAG}down"]


def test_level_feeds_only_take_events_of_their_scale(tmp_path: Path) -> None:
    other = payload("other")
    other["scale"] = "unknown-scale"

    build_feeds([other], SCALES, settings(tmp_path))

    assert entry_ids(tmp_path / "alerts.atom") == [f"{TAG}other"]
    for name in LEVEL_FILES:
        assert entry_ids(tmp_path / name) == [], name


def test_level_feeds_exist_and_are_valid_before_any_event(tmp_path: Path) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    written = build_feeds([], SCALES, settings(tmp_path))

    assert relative(written, tmp_path) == sorted(
        ["alerts.atom", "alerts.json", "alerts.rss", *LEVEL_FILES]
    )
    parsed = parse(tmp_path / "levels/imminent-risk.atom")
    assert parsed.entries == []
    assert parsed.feed.title == "warnsvc alerts: Imminent Risk and above"
    assert parse(tmp_path / "alerts.rss").entries == []
    # Not 1970: an empty feed is dated when it was written.
    updated = datetime.fromisoformat(parsed.feed.updated)
    assert before <= updated <= datetime.now(UTC)
    assert build_feeds([], SCALES, settings(tmp_path)) == []


def feed_updated(path: Path) -> str | None:
    if path.suffix == ".rss":
        return ET.parse(path).getroot().findtext("channel/lastBuildDate")
    return ET.parse(path).getroot().findtext(f"{ATOM}updated")


def test_an_empty_feed_is_dated_when_it_was_first_written_so(tmp_path: Path) -> None:
    built = datetime(2026, 11, 30, 8, 0, 0, 123456, tzinfo=UTC)

    build_feeds([], SCALES, settings(tmp_path), now=built)

    assert feed_updated(tmp_path / "alerts.atom") == "2026-11-30T08:00:00+00:00"
    assert feed_updated(tmp_path / "levels/current-crisis.atom") == "2026-11-30T08:00:00+00:00"
    assert feed_updated(tmp_path / "alerts.rss") == "Mon, 30 Nov 2026 08:00:00 +0000"
    assert parse(tmp_path / "alerts.atom").feed.updated_parsed[:6] == (2026, 11, 30, 8, 0, 0)


def test_an_empty_feed_keeps_its_date_until_it_changes(tmp_path: Path) -> None:
    first = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    build_feeds([], SCALES, settings(tmp_path), now=first)

    later = first + timedelta(days=3)
    assert build_feeds([], SCALES, settings(tmp_path), now=later) == []
    # An event fills some feeds; the still-empty ones keep their date and bytes.
    written = build_feeds([payload("e1")], SCALES, settings(tmp_path), now=later)
    assert "levels/current-crisis.atom" not in relative(written, tmp_path)
    assert feed_updated(tmp_path / "levels/current-crisis.atom") == "2026-11-30T08:00:00+00:00"
    assert feed_updated(tmp_path / "alerts.atom") == "2023-08-31T09:00:00+00:00"  # the entry's
    # A new title changes the empty feed: it is dated by that build.
    renamed = settings(tmp_path, title="Atrocity alerts")
    build_feeds([payload("e1")], SCALES, renamed, now=later)
    assert feed_updated(tmp_path / "levels/current-crisis.atom") == "2026-12-03T08:00:00+00:00"


def test_the_1970_date_of_earlier_releases_is_not_kept(tmp_path: Path) -> None:
    build_feeds([], SCALES, settings(tmp_path), now=datetime(1970, 1, 1, tzinfo=UTC))
    assert feed_updated(tmp_path / "alerts.atom") == "1970-01-01T00:00:00+00:00"

    build_feeds([], SCALES, settings(tmp_path), now=BASE)

    for name in ("alerts.atom", "levels/current-crisis.atom"):
        assert feed_updated(tmp_path / name) == "2023-08-31T09:00:00+00:00", name
    assert feed_updated(tmp_path / "alerts.rss") == "Thu, 31 Aug 2023 09:00:00 +0000"


# --------------------------------------------------------------------------- situation feeds


def test_situation_feeds_hold_only_their_situation(tmp_path: Path) -> None:
    events = [
        payload("s1", minutes=2, situation=SUDAN, name="Sudan", url=None),
        payload("n2", EventType.UPDATED, previous="imminent-risk", minutes=1),
        payload("n1"),
    ]

    build_feeds(events, SCALES, settings(tmp_path))

    nk = parse(tmp_path / "situations/gcr2p:nagorno-karabakh.atom")
    assert [e.id for e in nk.entries] == [f"{TAG}n2", f"{TAG}n1"]
    assert nk.feed.title == f"warnsvc alerts: {NK_NAME}"
    assert nk.feed.id == "tag:127.0.0.1,2024:feed:situation:gcr2p:nagorno-karabakh"
    assert entry_ids(tmp_path / "situations/gcr2p:sudan.atom") == [f"{TAG}s1"]


@pytest.mark.parametrize("bad_id", ["../escape", "gcr2p/../../x", "a\\b", ".hidden", ""])
def test_situation_ids_that_are_not_file_names_get_no_feed(tmp_path: Path, bad_id: str) -> None:
    out = tmp_path / "feeds"

    build_feeds([payload("e1", situation=bad_id)], SCALES, settings(out))

    assert entry_ids(out / "alerts.atom") == [f"{TAG}e1"]
    situations = out / "situations"
    assert not situations.exists() or list(situations.iterdir()) == []
    outside = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert all(p == "feeds" or p.startswith("feeds/") for p in outside), outside


# --------------------------------------------------------------------------- JSON Feed


def test_json_feed_is_valid_and_carries_the_payload(tmp_path: Path) -> None:
    event = payload("e1")
    event["unexpected"] = True  # kept in the payload, ignored by the feed

    build_feeds([event], SCALES, settings(tmp_path))

    document = json.loads((tmp_path / "alerts.json").read_text(encoding="utf-8"))
    assert document["version"] == "https://jsonfeed.org/version/1.1"
    assert document["title"] == "warnsvc alerts"
    assert document["home_page_url"] == "http://127.0.0.1:8080/"
    assert document["feed_url"] == "http://127.0.0.1:8080/feeds/alerts.json"
    assert document["authors"] == [{"name": "warnsvc"}]
    (item,) = document["items"]
    assert item["id"] == f"{TAG}e1"
    assert item["url"] == NK_URL
    assert item["title"] == f"{NK_NAME}: Serious Concern -> Imminent Risk"
    assert item["date_published"] == "2023-08-31T09:00:00Z"
    assert item["tags"] == ["risk.escalated", "imminent-risk"]
    assert item["content_text"] == (
        "The blockade of the Lachin corridor continues.\n\n"
        "Risk factors:\n- Blockade\n- Shelling\n\n"
        f"Source: {NK_URL}"
    )
    assert item["content_html"].startswith(
        "<p>The blockade of the Lachin corridor continues.</p>\n"
    )
    assert item["_warnsvc"] == {"about": ABOUT, **event}


def test_json_feed_extension_has_an_about_url(tmp_path: Path) -> None:
    event = payload("e1") | {"about": "https://evil.example/"}  # a stored payload cannot replace it
    build_feeds([event], SCALES, settings(tmp_path, base_url="https://alerts.example.org/"))

    (item,) = json.loads((tmp_path / "alerts.json").read_text(encoding="utf-8"))["items"]
    extension = item["_warnsvc"]
    assert extension["about"] == "https://alerts.example.org/api/v1/schemas/event.json"
    assert next(iter(extension)) == "about"
    assert {k: v for k, v in extension.items() if k != "about"} == payload("e1")


def test_json_feed_keeps_the_raw_payload_but_escapes_the_html(tmp_path: Path) -> None:
    event = payload("e1", summary="<img src=x onerror=alert(1)> & co\x00")

    build_feeds([event], SCALES, settings(tmp_path))

    (item,) = json.loads((tmp_path / "alerts.json").read_text(encoding="utf-8"))["items"]
    assert item["_warnsvc"]["summary"] == "<img src=x onerror=alert(1)> & co\x00"
    assert item["content_html"].startswith("<p>&lt;img src=x onerror=alert(1)&gt; &amp; co</p>")
    assert "img" not in html_tags(item["content_html"])


# --------------------------------------------------------------------------- writing


def test_every_atom_file_is_well_formed(tmp_path: Path) -> None:
    events = [
        payload("e1"),
        payload("e2", EventType.DELISTED, level=None, previous="imminent-risk", minutes=1),
    ]
    build_feeds(events, SCALES, settings(tmp_path))

    atom_files = sorted(tmp_path.rglob("*.atom"))
    assert len(atom_files) == 5
    for path in atom_files:
        assert ET.parse(path).getroot().tag == f"{ATOM}feed"
        assert parse(path).version == "atom10"
    assert parse(tmp_path / "alerts.rss").version == "rss20"


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    build_feeds([payload("e1")], SCALES, settings(tmp_path))
    build_feeds([payload("e2", minutes=1), payload("e1")], SCALES, settings(tmp_path))

    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names
    assert len(names) == 7


def test_failed_replace_keeps_the_old_file_and_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_feeds([payload("e1")], SCALES, settings(tmp_path))
    before = (tmp_path / "alerts.atom").read_bytes()

    def refuse(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        build_feeds([payload("e2", minutes=1), payload("e1")], SCALES, settings(tmp_path))

    assert (tmp_path / "alerts.atom").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
