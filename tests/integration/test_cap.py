"""CAP 1.2 output over a real loopback server: every document valid against the OASIS schema,
msgType and references along a situation's history, hostile text, the Atom index, and a round
trip through warnsvc's own ``cap`` source kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from warnsvc.cap.mapping import severity_levels
from warnsvc.cap.profile import CapProfile
from warnsvc.model import (
    BUILTIN_SCALES,
    CAP_SEVERITY_SCALE,
    GCR2P_SCALE,
    Event,
    EventType,
    Level,
    Status,
)
from warnsvc.sources.cap import CapRules, observe_messages, read_messages
from warnsvc.store.db import Store
from warnsvc.web.app import make_app
from warnsvc.web.cap import CapPages

XSD = Path(__file__).resolve().parents[1] / "fixtures" / "cap" / "xsd" / "CAP-v1.2.xsd"
CAP = "{urn:oasis:names:tc:emergency:cap:1.2}"
ATOM = "{http://www.w3.org/2005/Atom}"
T0 = datetime(2026, 11, 30, 7, 0, 0, 250_000, tzinfo=UTC)
LATER = T0 + timedelta(days=30)  # when the alerts are read back
SERIOUS, IMMINENT, CURRENT = GCR2P_SCALE.levels
HOSTILE = "bad\x00\x01\x0b\x1f\x7f\x85 ]]> <b>&amp;</b> \ud800 lone \udfff \ufffe end"


def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


def event(
    n: int,
    kind: EventType,
    level: Level | None,
    previous: Level | None,
    *,
    situation: str = "gcr2p:sudan",
    name: str = "Sudan",
    status: Status = Status.ASSESSED,
    scale: str = "gcr2p",
    summary: str = "Populations face atrocity crimes.",
    **extra: Any,
) -> Event:
    return Event(
        id=f"evt_{n:04d}",
        type=kind,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation=situation,
        situation_name=name,
        situation_url=f"https://www.globalr2p.org/countries/{situation.split(':')[1]}/",
        scale=scale,
        level=level,
        previous_level=previous,
        occurred_at=T0 + timedelta(days=n),
        detected_at=T0 + timedelta(days=n),
        summary=summary,
        risk_factors=("A factor.", "Another."),
        status=status,
        **extra,
    )


HISTORY = [
    event(1, EventType.LISTED, SERIOUS, None),
    event(2, EventType.ESCALATED, IMMINENT, SERIOUS),
    event(3, EventType.UPDATED, IMMINENT, None),
    event(4, EventType.ESCALATED, CURRENT, IMMINENT, manual=True, note="Seen on the ground"),
    event(5, EventType.RETRACTED, IMMINENT, CURRENT, manual=True, retracts="evt_0004"),
    event(6, EventType.DEESCALATED, SERIOUS, IMMINENT),
    event(7, EventType.DELISTED, None, SERIOUS, status=Status.DELISTED),
    event(8, EventType.LISTED, CURRENT, None, situation="gcr2p:x", name=HOSTILE, summary=HOSTILE),
    event(
        9, EventType.LISTED, None, None, situation="cap:q", name="Quake", scale="cap-severity"
    ),  # a CAP source's alert of unknown severity
    event(
        10,
        EventType.LISTED,
        CAP_SEVERITY_SCALE.levels[2],
        None,
        situation="cap:f",
        scale="cap-severity",
    ),
    event(
        11,
        EventType.DELISTED,
        CAP_SEVERITY_SCALE.levels[2],
        CAP_SEVERITY_SCALE.levels[2],
        situation="cap:f",
        scale="cap-severity",
        status=Status.CANCELLED,
    ),
    event(
        12,
        EventType.LISTED,
        CAP_SEVERITY_SCALE.levels[3],
        None,
        situation="cap:g",
        scale="cap-severity",
        cap={"urgency": "Immediate", "certainty": "Observed"},
    ),  # a CAP source that stated its urgency and certainty
]
PROFILE = CapProfile(
    base_url="https://alerts.example.org",
    sender="alerts.example.org",
    sender_name="warnsvc test",
    categories={"gcr2p": "Security"},
    scales={scale.id: scale for scale in BUILTIN_SCALES},
)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'warnsvc.db'}")
    for item in HISTORY:
        await store.record_event(item, {})
    await store.record_event(
        event(99, EventType.WEBHOOK_TEST, None, None, situation="test:ping"), {}
    )
    profile = PROFILE
    pages = CapPages(store, lambda: profile)
    app = make_app(feeds_dir=tmp_path / "feeds", readiness=_ready, routes=pages.routes())
    async with TestClient(TestServer(app, host="127.0.0.1")) as test_client:
        yield test_client
    await store.close()


async def _ready(replica_only: bool) -> tuple[bool, dict[str, Any]]:
    return True, {}


async def fetch_alert(client: TestClient[Any, Any], event_id: str) -> etree._Element:
    response = await client.get(f"/cap/{event_id}.xml")
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("application/cap+xml")
    return etree.fromstring(await response.read())


def value(alert: etree._Element, path: str) -> str | None:
    found = alert.find(path.replace("cap:", CAP))
    return found.text if found is not None else None


async def test_every_document_is_valid_cap_1_2(client: TestClient[Any, Any]) -> None:
    xsd = schema()
    for item in HISTORY:
        alert = await fetch_alert(client, item.id)
        xsd.assertValid(alert)
        assert value(alert, "cap:identifier") == item.id
        assert value(alert, "cap:sender") == "alerts.example.org"
        assert value(alert, "cap:status") == "Actual"
        assert value(alert, "cap:scope") == "Public"
        sent = value(alert, "cap:sent")
        assert sent == (T0 + timedelta(days=int(item.id[4:]))).replace(microsecond=0).isoformat()
        assert sent is not None and sent.endswith("+00:00")


async def test_the_schema_refuses_what_it_should(client: TestClient[Any, Any]) -> None:
    alert = await fetch_alert(client, "evt_0001")
    severity = alert.find(f"{CAP}info/{CAP}severity")
    assert severity is not None
    severity.text = "Huge"
    assert not schema().validate(alert)


async def test_msg_types_and_references_follow_the_situation(client: TestClient[Any, Any]) -> None:
    kinds = {}
    for item in HISTORY[:7]:
        alert = await fetch_alert(client, item.id)
        kinds[item.id] = (value(alert, "cap:msgType"), value(alert, "cap:references"))
    ref = "alerts.example.org,{},2026-12-0{}T07:00:00+00:00".format
    assert kinds == {
        "evt_0001": ("Alert", None),
        "evt_0002": ("Update", ref("evt_0001", 1)),
        "evt_0003": ("Update", ref("evt_0002", 2)),
        "evt_0004": ("Update", ref("evt_0003", 3)),
        "evt_0005": ("Cancel", ref("evt_0004", 4)),  # the retraction cancels what it retracts
        "evt_0006": ("Update", ref("evt_0003", 3)),  # the retracted alert no longer stands
        "evt_0007": ("Update", ref("evt_0006", 6)),
    }


async def test_info_says_what_the_level_means(client: TestClient[Any, Any]) -> None:
    listed = await fetch_alert(client, "evt_0002")
    assert value(listed, "cap:info/cap:category") == "Security"  # the source's own category
    assert value(listed, "cap:info/cap:event") == GCR2P_SCALE.name
    qualifiers = [value(listed, f"cap:info/cap:{n}") for n in ("urgency", "severity", "certainty")]
    assert qualifiers == ["Expected", "Severe", "Likely"]
    assert value(listed, "cap:info/cap:area/cap:areaDesc") == "Sudan"
    assert value(listed, "cap:info/cap:web") == "https://www.globalr2p.org/countries/sudan/"
    delisted = await fetch_alert(client, "evt_0007")
    assert value(delisted, "cap:info/cap:urgency") == "Past"
    assert value(delisted, "cap:info/cap:expires") == value(delisted, "cap:sent")
    assert "delisted" in (value(delisted, "cap:info/cap:headline") or "")
    unknown = await fetch_alert(client, "evt_0009")
    assert value(unknown, "cap:info/cap:severity") == "Unknown"
    cancelled = await fetch_alert(client, "evt_0011")
    assert value(cancelled, "cap:msgType") == "Cancel"


async def test_hostile_text_still_gives_a_valid_document(client: TestClient[Any, Any]) -> None:
    alert = await fetch_alert(client, "evt_0008")
    schema().assertValid(alert)
    area = value(alert, "cap:info/cap:area/cap:areaDesc")
    description = value(alert, "cap:info/cap:description")
    assert area == "bad ]]> <b>&amp;</b> lone end"
    assert description is not None and "]]> <b>&amp;</b>" in description
    for text in (area, description):
        assert not any(ord(c) < 0x20 and c not in "\t\n\r" for c in text or "")


async def test_unknown_ids_and_test_pings_have_no_alert(client: TestClient[Any, Any]) -> None:
    for event_id in ("evt_nope", "evt_0099", "..%2Fetc", "a" * 80):
        response = await client.get(f"/cap/{event_id}.xml")
        assert response.status == 404
        body = await response.json()
        assert body["error"]["status"] == 404


async def test_documents_are_cacheable(client: TestClient[Any, Any]) -> None:
    first = await client.get("/cap/evt_0002.xml")
    etag = first.headers["ETag"]
    assert "max-age" in first.headers["Cache-Control"]
    assert first.headers["Last-Modified"] == "Wed, 02 Dec 2026 07:00:00 GMT"
    again = await client.get("/cap/evt_0002.xml", headers={"If-None-Match": etag})
    assert again.status == 304
    assert (await client.get("/cap/evt_0002.xml")).headers["ETag"] == etag  # same bytes


async def test_the_atom_index_links_every_alert_newest_first(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/feeds/cap.atom")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/atom+xml")
    body = await response.read()
    parsed = feedparser.parse(body)
    assert not parsed.bozo, parsed.get("bozo_exception")
    feed = etree.fromstring(body)
    for required in ("id", "title", "updated", "author/" + ATOM + "name"):
        assert feed.find(ATOM + required) is not None, required
    self_link = feed.find(f"{ATOM}link[@rel='self']")
    assert self_link is not None
    assert self_link.get("href") == "https://alerts.example.org/feeds/cap.atom"
    entries = feed.findall(f"{ATOM}entry")
    ids = [e.findtext(f"{ATOM}id") or "" for e in entries]
    assert [i.rsplit(":", 1)[1] for i in ids] == [
        f"evt_{n:04d}" for n in range(len(HISTORY), 0, -1)
    ]
    for entry in entries:
        for required in ("id", "title", "updated"):
            assert entry.findtext(ATOM + required), required
        (link,) = entry.findall(f"{ATOM}link")
        assert link.get("type") == "application/cap+xml"
        assert link.get("rel") == "alternate"
        path = (link.get("href") or "").removeprefix("https://alerts.example.org")
        assert path.startswith("/cap/")
        assert (await client.get(path)).status == 200


async def test_warnsvcs_own_cap_source_reads_the_alerts_back(
    client: TestClient[Any, Any],
) -> None:
    """The round trip: level and status come back as they went out (a delisting comes back
    as an expired alert, which ends the situation just the same)."""
    index = await (await client.get("/feeds/cap.atom")).text()
    url = str(client.make_url("/feeds/cap.atom"))
    messages, links = read_messages(index, url=url)
    assert messages == [] and len(links) == len(HISTORY)
    for link in links:
        assert link.startswith(PROFILE.base_url)
        document = await client.get(link.removeprefix(PROFILE.base_url))
        found, _ = read_messages(await document.text(), url=link)
        messages.extend(found)

    sudan = [m for m in messages if int(m.identifier[4:]) <= 7]
    rules = CapRules(levels=severity_levels(GCR2P_SCALE, {}))
    for upto in range(1, 8):
        step = [m for m in sudan if int(m.identifier[4:]) <= upto]
        (observation,) = observe_messages(
            step, url=url, scale=GCR2P_SCALE, namespace="back", rules=rules, now=LATER
        )
        original = HISTORY[upto - 1]
        assert observation.situation == "back:evt-0001"  # one situation, as in warnsvc
        if original.type is EventType.RETRACTED:
            assert observation.status is Status.CANCELLED
        elif original.status is Status.DELISTED:
            assert (observation.level, observation.status) == (None, Status.EXPIRED)
        else:
            assert original.level is not None
            assert (observation.level, observation.status) == (original.level.id, Status.ASSESSED)
    caps = [m for m in messages if m.identifier in ("evt_0009", "evt_0010", "evt_0011")]
    back = {
        o.extra["identifier"]: (o.level, o.status)
        for o in observe_messages(
            caps, url=url, scale=CAP_SEVERITY_SCALE, namespace="c", rules=CapRules(), now=LATER
        )
    }
    assert back == {
        "evt_0009": (None, Status.SEVERITY_UNKNOWN),
        "evt_0011": ("severe", Status.CANCELLED),  # evt_0010's alert, cancelled by its source
    }


async def test_a_cap_sources_own_urgency_and_certainty_go_out_as_they_came_in(
    client: TestClient[Any, Any],
) -> None:
    alert = await fetch_alert(client, "evt_0012")
    assert value(alert, "cap:info/cap:urgency") == "Immediate"
    assert value(alert, "cap:info/cap:certainty") == "Observed"
    assert value(alert, "cap:info/cap:severity") == "Extreme"  # the level, on its scale
    schema().assertValid(alert)
    plain = await fetch_alert(client, "evt_0010")  # stated nothing: the mapping's words
    assert value(plain, "cap:info/cap:urgency") not in (None, "Immediate")
