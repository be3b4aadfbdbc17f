"""The feed, cap, page and json kinds: parsing real and written documents, and bad input."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from warnsvc.errors import NoRiskInformationError, SourceParseError, UnsafeXmlError
from warnsvc.model import CAP_SEVERITY_SCALE, GCR2P_SCALE, GDACS_SCALE, Observation, Status
from warnsvc.sources.cap import parse_cap
from warnsvc.sources.feed import FeedRules, ValueRule, parse_feed
from warnsvc.sources.jsonapi import JsonRules, parse_json
from warnsvc.sources.jsonpath import JsonPath
from warnsvc.sources.page import PageRules, Selector, parse_page
from warnsvc.sources.xmlsafe import parse_xml

FIXTURES = Path(__file__).parents[1] / "fixtures"
GDACS_RULES = FeedRules(
    level=ValueRule(element="gdacs:alertlevel"),
    date=ValueRule(element="gdacs:fromdate"),
    levels={"Green": "green", "Orange": "orange", "Red": "red"},
)


def read(path: str) -> str:
    return (FIXTURES / path).read_text(encoding="utf-8")


def gdacs(body: str) -> list[Observation]:
    return parse_feed(body, scale=GDACS_SCALE, namespace="gdacs", rules=GDACS_RULES)


# --------------------------------------------------------------------------- feed


def test_the_real_gdacs_capture_is_refused_as_truncated() -> None:
    with pytest.raises(SourceParseError, match=r"not well-formed XML: .*truncated\?"):
        gdacs(read("gdacs/exxamalte_gdacs-rss-24h_2019-12-30.prefix.xml"))


def test_the_real_gdacs_item_once_the_capture_is_closed() -> None:
    capture = read("gdacs/exxamalte_gdacs-rss-24h_2019-12-30.prefix.xml")
    assert read("gdacs/completed-rss-24h_2019-12-30.xml") == capture + "  </channel>\n</rss>\n"
    [item] = gdacs(read("gdacs/completed-rss-24h_2019-12-30.xml"))
    assert item.situation == "gdacs:dr1012728"
    assert item.level == "orange" and item.status is Status.ASSESSED
    assert item.date is not None and item.date.isoformat() == "2018-10-21"
    assert item.url == "http://www.gdacs.org/report.aspx?eventtype=DR&eventid=1012728"
    assert item.name is not None and item.name.startswith("Drought is on going in Angola")
    assert item.summary == "The Drought alert level is Orange."


def test_gdacs_levels_green_orange_red() -> None:
    items = gdacs(read("gdacs/written-rss-three-levels.xml"))
    assert [(o.situation, o.level) for o in items] == [
        ("gdacs:eq1221830", "green"),
        ("gdacs:dr1012728", "orange"),
        ("gdacs:tc1000641", "red"),
    ]


def test_a_level_word_outside_the_mapping_skips_only_that_item() -> None:
    body = read("gdacs/written-rss-three-levels.xml").replace(">Red</gdacs", ">Purple</gdacs")
    items = gdacs(body)
    assert [o.level for o in items if o.problem is None] == ["green", "orange"]
    [bad] = [o for o in items if o.problem is not None]
    assert bad.situation == "gdacs:tc1000641"
    assert bad.problem is not None and "'Purple'" in bad.problem and "'TC1000641'" in bad.problem


def test_an_item_without_an_id_is_skipped_and_reported() -> None:
    body = read("gdacs/written-rss-three-levels.xml")
    body = re.sub(r"<guid[^>]*>EQ1221830</guid>", "", body)
    body = body.replace(
        "<link>http://www.gdacs.org/report.aspx?eventtype=EQ&amp;eventid=1221830</link>", ""
    )
    items = gdacs(body)
    assert items[0].problem == "an item: no id (field id is missing)"
    assert [o.level for o in items[1:]] == ["orange", "red"]


def test_a_format_change_that_breaks_every_item_fails_the_feed() -> None:
    body = read("gdacs/written-rss-three-levels.xml").replace("gdacs:alertlevel", "gdacs:level")
    with pytest.raises(NoRiskInformationError, match="none of the 3 feed entries"):
        gdacs(body)


def test_atom_categories_and_html() -> None:
    items = parse_feed(read("feeds/written-atom-1.0.xml"), scale=GCR2P_SCALE, namespace="w")
    assert [(o.name, o.level, o.url) for o in items] == [
        ("Mali escalates", "imminent-risk", "https://example.org/mali"),
        ("Sudan", "current-crisis", "https://example.org/sudan"),
    ]
    assert items[0].summary == "Armed groups mass near towns."
    assert items[0].date is not None and items[0].date.isoformat() == "2025-02-28"
    assert items[0].situation == "w:urn-uuid-1225c695-cfb8-4ebb-aaaa-80da344efa6a"


def test_rss_1_0_with_dublin_core() -> None:
    [item] = parse_feed(read("feeds/written-rss-1.0.xml"), scale=GCR2P_SCALE, namespace="w")
    assert (item.situation, item.level) == ("w:https-example-org-mali", "serious-concern")
    assert item.date is not None and item.date.isoformat() == "2025-01-15"


def test_rss_0_91_with_a_regex_over_the_title() -> None:
    rules = FeedRules(level=ValueRule(field="title", regex=re.compile(r":\s*(.+)$")))
    [item] = parse_feed(
        read("feeds/written-rss-0.91.xml"), scale=GCR2P_SCALE, namespace="w", rules=rules
    )
    assert (item.situation, item.level) == ("w:https-example-org-burundi", "imminent-risk")


def test_an_element_attribute() -> None:
    body = read("gdacs/completed-rss-24h_2019-12-30.xml")
    rules = FeedRules(
        level=ValueRule(element="gdacs:alertlevel"),
        name=ValueRule(element="{http://www.gdacs.org}severity", attribute="unit"),
    )
    [item] = parse_feed(body, scale=GDACS_SCALE, namespace="gdacs", rules=rules)
    assert item.name == "km2"


def test_an_empty_feed_has_no_observations() -> None:
    body = "<rss version='2.0'><channel><title>t</title></channel></rss>"
    assert parse_feed(body, scale=GDACS_SCALE, namespace="x") == []


def test_html_is_not_a_feed() -> None:
    with pytest.raises(SourceParseError):
        parse_feed("<html><body><p>hi</p></body></html>", scale=GDACS_SCALE, namespace="x")


# --------------------------------------------------------------------------- hostile XML

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<rss version="2.0"><channel><item><title>&lol3;</title><guid>x</guid></item></channel></rss>"""


@pytest.mark.parametrize(
    "body",
    [
        BILLION_LAUGHS,
        '<!DOCTYPE rss SYSTEM "http://127.0.0.1:9/x.dtd"><rss/>',
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><rss>&x;</rss>',
        '<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        '"http://my.netscape.com/publish/formats/rss-0.91.dtd"><rss version="0.91"/>',
    ],
    ids=["billion-laughs", "external-dtd", "external-entity", "rss-0.91-doctype"],
)
@pytest.mark.parametrize("parser", ["feed", "cap"])
def test_dtds_and_entities_are_refused(body: str, parser: str) -> None:
    with pytest.raises(UnsafeXmlError, match="document type declaration"):
        if parser == "feed":
            parse_feed(body, scale=GDACS_SCALE, namespace="x")
        else:
            parse_cap(body.replace("rss", "alert"))


# --------------------------------------------------------------------------- cap

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_oasis_appendix_a1_advisory() -> None:
    [alert] = parse_cap(read("cap/v1dot2_appendix_adot1.xml"), now=NOW)
    assert (alert.situation, alert.level, alert.status) == (
        "cap:43b080713727",
        "severe",
        Status.ASSESSED,
    )
    out = alert.to_json()
    assert (out["msg_type"], out["urgency"], out["certainty"]) == ("alert", "Immediate", "Likely")
    assert out["expires"] is None and out["references"] == []
    assert out["name"] == "Homeland Security Sets Code ORANGE"
    assert out["date"] == "2003-04-02"


def test_oasis_appendix_a3_update_is_keyed_on_the_alert_it_updates() -> None:
    [update] = parse_cap(read("cap/v1dot2_appendix_adot3.xml"), now=NOW)
    assert update.situation == "cap:tri13970876-1"
    assert update.level == "minor"
    assert update.extra["msg_type"] == "update"
    assert update.extra["references"] == [
        "trinet@caltech.edu,TRI13970876.1,2003-06-11T20:30:00-07:00"
    ]


def test_cap_1_1_alert_and_its_expiry() -> None:
    before = datetime(2003, 6, 17, 22, 0, tzinfo=UTC)
    [alert] = parse_cap(read("cap/written-cap-1.1-alert.xml"), now=before)
    assert (alert.situation, alert.level, alert.status) == (
        "cap:ksto1055887203",
        "severe",
        Status.ASSESSED,
    )
    assert alert.extra["expires"] == "2003-06-17T16:00:00-07:00"
    [expired] = parse_cap(read("cap/written-cap-1.1-alert.xml"), now=NOW)
    assert (expired.level, expired.status) == ("severe", Status.EXPIRED)  # what it states


def test_cap_1_1_cancel_delists_the_referenced_alert() -> None:
    [cancel] = parse_cap(read("cap/written-cap-1.1-cancel.xml"), now=NOW)
    assert (cancel.situation, cancel.level, cancel.status) == (
        "cap:ksto1055887203",
        None,
        Status.CANCELLED,
    )
    assert cancel.extra["msg_type"] == "cancel"


def test_unknown_severity_gives_a_null_level_and_says_so() -> None:
    body = read("cap/v1dot2_appendix_adot1.xml").replace(">Severe<", ">Unknown<")
    [alert] = parse_cap(body, now=NOW)
    assert (alert.level, alert.status.value) == (None, "severity-unknown")


def test_a_severity_outside_the_scale_fails_a_lone_alert() -> None:
    body = read("cap/v1dot2_appendix_adot1.xml").replace(">Severe<", ">Catastrophic<")
    with pytest.raises(NoRiskInformationError, match="'Catastrophic'"):
        parse_cap(body, now=NOW)


def test_an_index_with_an_inline_alert_and_a_chain_of_updates() -> None:
    index = read("cap/written-atom-index.xml")
    update = """<entry><id>urn:u</id><title>u</title><updated>2099-01-01T00:00:00Z</updated>
      <content type="text/xml"><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
        <identifier>A1.3</identifier><sender>x@example.org</sender>
        <sent>2098-12-31T12:00:00+00:00</sent><status>Actual</status><msgType>Update</msgType>
        <scope>Public</scope><references>x@example.org,A1.2,2098-12-31T11:00:00+00:00</references>
        <info><event>Flood</event><urgency>Immediate</urgency><severity>Extreme</severity>
          <certainty>Observed</certainty></info></alert></content></entry>
      <entry><id>urn:m</id><title>m</title><updated>2099-01-01T00:00:00Z</updated>
      <content type="text/xml"><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
        <identifier>A1.2</identifier><sender>x@example.org</sender>
        <sent>2098-12-31T11:00:00+00:00</sent><status>Actual</status><msgType>Update</msgType>
        <scope>Public</scope><references>x@example.org,A1,2098-12-31T10:00:00+00:00</references>
        <info><event>Flood</event><urgency>Expected</urgency><severity>Severe</severity>
          <certainty>Likely</certainty></info></alert></content></entry>
      <entry><id>urn:t</id><title>t</title><updated>2099-01-01T00:00:00Z</updated>
      <content type="text/xml"><alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
        <identifier>T1</identifier><sender>x@example.org</sender>
        <sent>2098-12-31T11:00:00+00:00</sent><status>Test</status><msgType>Alert</msgType>
        <scope>Public</scope><info><event>Test</event><urgency>Past</urgency>
        <severity>Minor</severity><certainty>Observed</certainty></info></alert></content></entry>
    </feed>"""
    observations = parse_cap(index.replace("</feed>", update), now=NOW)
    assert [(o.situation, o.level, o.extra["identifier"]) for o in observations] == [
        ("cap:a1", "extreme", "A1.3")
    ]


def test_a_document_that_is_no_cap() -> None:
    with pytest.raises(SourceParseError, match="not a CAP alert"):
        parse_cap("<html><body/></html>")


# --------------------------------------------------------------------------- page

PAGE = """<!doctype html><html><body>
<article class="s"><h2>Mali</h2><span class="level">Imminent Risk</span>
  <time datetime="2025-02-03">3 Feb</time><a href="/mali">more</a></article>
<article class="s"><h2>Chad</h2><span class="level">Extreme Danger</span></article>
<article class="s"><h2>Niger</h2></article>
</body></html>"""


def page_rules(**overrides: object) -> PageRules:
    base: dict[str, object] = {
        "block": "article.s",
        "title": Selector(css="h2"),
        "level": Selector(css=".level"),
        "date": Selector(css="time", attribute="datetime"),
    }
    base.update(overrides)
    return PageRules(**base)  # type: ignore[arg-type]


def test_page_blocks_with_skipped_ones_reported() -> None:
    found = parse_page(
        PAGE, url="https://example.org/list", scale=GCR2P_SCALE, namespace="p", rules=page_rules()
    )
    good = [o for o in found if o.problem is None]
    assert [(o.situation, o.level, o.url) for o in good] == [
        ("p:mali", "imminent-risk", "https://example.org/mali")
    ]
    assert good[0].date is not None and good[0].date.isoformat() == "2025-02-03"
    problems = [o.problem for o in found if o.problem is not None]
    assert any("'Extreme Danger'" in (p or "") for p in problems)
    assert any("selector '.level' for level matched nothing" in (p or "") for p in problems)


def test_a_block_selector_that_matches_nothing_fails() -> None:
    with pytest.raises(NoRiskInformationError, match=r"block selector 'div\.gone' matched nothing"):
        parse_page(PAGE, scale=GCR2P_SCALE, namespace="p", rules=page_rules(block="div.gone"))


def test_a_single_page_whose_level_selector_matches_nothing_fails() -> None:
    rules = page_rules(block=None, title=Selector(css="h2"), level=Selector(css=".risk"))
    message = r"selector '\.risk' for level matched nothing"
    with pytest.raises(NoRiskInformationError, match=message):
        parse_page(PAGE, scale=GCR2P_SCALE, namespace="p", rules=rules)


def test_a_single_page_read_with_a_regex() -> None:
    body = "<html><body><h1>Burundi</h1><p>Risk level - Serious Concern.</p></body></html>"
    rules = PageRules(
        title=Selector(css="h1"), level=Selector(regex=re.compile(r"Risk level - ([\w ]+)"))
    )
    [only] = parse_page(body, url="https://e.org/b", scale=GCR2P_SCALE, namespace="p", rules=rules)
    assert (only.situation, only.level, only.url) == (
        "p:burundi",
        "serious-concern",
        "https://e.org/b",
    )


# --------------------------------------------------------------------------- json

JSON_RULES = JsonRules(
    items=JsonPath.parse("data.alerts"),
    id=JsonPath.parse("id"),
    name=JsonPath.parse("place.name"),
    level=JsonPath.parse("alertlevel"),
    date=JsonPath.parse("published"),
)


def test_json_items_with_skips() -> None:
    body = json.dumps(
        {
            "data": {
                "alerts": [
                    {"id": "EQ1", "place": {"name": "Chile"}, "alertlevel": "Red",
                     "published": 1700000000},
                    {"id": "EQ2", "place": {"name": "Peru"}, "alertlevel": "Blue"},
                    {"place": {"name": "Nowhere"}, "alertlevel": "Red"},
                    "not an object",
                ]
            }
        }
    )  # fmt: skip
    found = parse_json(body, scale=GDACS_SCALE, namespace="j", rules=JSON_RULES)
    [good] = [o for o in found if o.problem is None]
    assert (good.situation, good.name, good.level) == ("j:eq1", "Chile", "red")
    assert good.date is not None and good.date.isoformat() == "2023-11-14"
    problems = [o.problem for o in found if o.problem is not None]
    assert len(problems) == 3 and "'Blue'" in (problems[0] or "")


def test_a_json_items_path_that_matches_nothing_fails() -> None:
    with pytest.raises(NoRiskInformationError, match=r"items path 'data\.alerts' matched nothing"):
        parse_json('{"data": {}}', scale=GDACS_SCALE, namespace="j", rules=JSON_RULES)


@pytest.mark.parametrize("bad", ["a..b", "a.", "a[x]", '"unclosed'])
def test_malformed_json_paths(bad: str) -> None:
    with pytest.raises(ValueError):
        JsonPath.parse(bad)


# --------------------------------------------------------------------------- garbage in


def parse_everything(body: str) -> list[Observation]:
    """Every XML and JSON parser on one body; any result must be a list of observations."""
    results: list[Observation] = []
    parsers: list[Callable[[], list[Observation]]] = [
        lambda: parse_feed(body, scale=GDACS_SCALE, namespace="g", rules=GDACS_RULES),
        lambda: parse_feed(body, scale=GDACS_SCALE, namespace="g"),
        lambda: parse_cap(body, scale=CAP_SEVERITY_SCALE, now=NOW),
        lambda: parse_json(body, scale=GDACS_SCALE, namespace="j", rules=JSON_RULES),
        lambda: parse_json(body, scale=GDACS_SCALE, namespace="j"),
    ]
    for parse in parsers:
        with contextlib.suppress(SourceParseError):
            results.extend(parse())
    return results


XML_BITS = st.sampled_from(
    [
        "<rss>", "</rss>", "<channel>", "</channel>", "<item>", "</item>", "<guid>", "</guid>",
        "<gdacs:alertlevel>", "</gdacs:alertlevel>", "Red", "Purple", "&amp;", "&lol;",
        "<!DOCTYPE x [<!ENTITY lol 'a'>]>", "<?xml version='1.0'?>", "<alert>", "</alert>",
        '<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">', "<severity>", "</severity>",
        "<msgType>Cancel</msgType>", "<![CDATA[x]]>", "<!--", "-->", "\x00", "<", ">", '"',
        '<rss xmlns:gdacs="http://www.gdacs.org">', "<feed xmlns='http://www.w3.org/2005/Atom'>",
        "<entry>", "</entry>", "</feed>", "<identifier>", "</identifier>", "é", "\ufeff",
    ]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(XML_BITS, max_size=30).map("".join))
def test_malformed_xml_never_escapes_as_another_exception(body: str) -> None:
    for observation in parse_everything(body):
        assert isinstance(observation, Observation)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_no_observation(body: str) -> None:
    assert [o for o in parse_everything(body) if o.problem is None and o.level] == []


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_arbitrary_json_never_escapes_and_never_invents_a_level(value: object) -> None:
    body = json.dumps(value)
    for observation in parse_everything(body):
        assert observation.problem is not None or observation.level in {"green", "orange", "red"}


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=60))
def test_truncated_real_feed_prefixes_fail_cleanly(cut: str) -> None:
    full = read("gdacs/written-rss-three-levels.xml")
    body = full[: len(cut) * 40 % len(full)]
    try:
        items = gdacs(body)
    except SourceParseError:
        return
    assert body == full or all(isinstance(o, Observation) for o in items)


def test_parse_xml_keeps_prefixes() -> None:
    root, prefixes = parse_xml('<a xmlns:g="urn:g"><g:b/></a>')
    assert prefixes == {"g": "urn:g"} and root.tag == "a"
