"""CAP 1.2 alerts and their Atom index, built with lxml from stored event payloads.

One alert per event (``identifier`` = the event id), at ``{base_url}/cap/{event id}.xml``:

- ``sent`` is the event's ``detected_at`` to the second, with its offset (``+00:00``), as CAP
  wants it; ``status`` is always ``Actual`` and ``scope`` ``Public``;
- ``msgType`` is ``Alert`` for the first event of a situation and ``Update`` for a later one,
  whose ``references`` name the situation's previous alert (``sender,identifier,sent``).
  Retracted events and retractions are passed over: an update refers to the newest alert that
  still stands. A retraction (``event.retracted``) is a ``Cancel`` that references the alert it
  retracts, as is an event whose source cancelled its own alert (status ``cancelled``);
- a delisting is an ``Update`` that says so: urgency ``Past``, ``expires`` at ``sent``, and a
  headline that reads "delisted";
- one ``info``: the category (``cap.category``, or the source's ``cap_category``), the scale's
  name as ``event``, urgency/severity/certainty from :mod:`warnsvc.cap.mapping`, the feed
  entry's title as ``headline``, the summary and risk factors as ``description``, the
  situation's page as ``web``, warnsvc's own fields as ``parameter`` pairs, and one ``area``
  whose ``areaDesc`` is the situation's name.

A document depends only on its event and the situation's earlier events (and the ``cap``
settings), so it reads the same every time it is served. Everything that came from a source is
untrusted text: characters XML 1.0 forbids (controls, lone surrogates, U+FFFE/U+FFFF) are
removed before lxml sees them, and lxml escapes the rest (``]]>`` included).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from warnsvc.cap.mapping import CapValues, level_values
from warnsvc.cap.profile import CapProfile
from warnsvc.model import CAP_CERTAINTY, CAP_URGENCY, EventType, Level, Scale, Status

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
CAP_TYPE = "application/cap+xml"
ATOM_TYPE = "application/atom+xml"
ID_YEAR = "2024"

# XML 1.0 allows TAB, LF, CR, U+0020-U+D7FF, U+E000-U+FFFD, U+10000-U+10FFFF; C1 controls
# (U+007F-U+009F) are allowed but discouraged, so they go as well, as in the feeds.
_XML_UNSAFE = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_CAP_TOKEN_UNSAFE = re.compile(r"[\s,<&]")
_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
_HEADLINE_MAX = 160
_ENDED = frozenset({Status.DELISTED, Status.PREVIOUSLY_STUDIED, Status.EXPIRED})
_NOT_ALERTS = frozenset({EventType.RETRACTED.value, EventType.WEBHOOK_TEST.value})


# --------------------------------------------------------------------------- text


def clean(text: str) -> str:
    """``text`` without the characters XML 1.0 forbids (and C1 controls)."""
    return _XML_UNSAFE.sub("", text)


def clean_line(text: str) -> str:
    return " ".join(clean(text).split())


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _token(value: Any) -> str:
    """An identifier or sender as CAP allows it: no spaces, commas, ``<`` or ``&``."""
    return _CAP_TOKEN_UNSAFE.sub("", clean(_text(value)))


def _safe_url(value: Any) -> str | None:
    url = _text(value).strip()
    if not url or len(url) > 2048 or clean_line(url) != url or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme.lower() in ("http", "https") and parts.hostname else None


def cap_time(value: Any) -> str | None:
    """A payload time (``2026-11-30T07:00:00.123Z``) as CAP writes it: to the second, with
    its offset (``2026-11-30T07:00:00+00:00``); None if it is no time."""
    moment = parse_time(value)
    return moment.isoformat() if moment is not None else None


def parse_time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(_text(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.replace(microsecond=0)


# --------------------------------------------------------------------------- msgType


@dataclass(frozen=True, slots=True, kw_only=True)
class _Kind:
    msg_type: str
    references: tuple[Mapping[str, Any], ...] = ()


def is_alert(payload: Mapping[str, Any]) -> bool:
    """Whether an event has a CAP document (every event but partners' test pings)."""
    return _text(payload.get("type")) != EventType.WEBHOOK_TEST.value and bool(
        _token(payload.get("id")) and parse_time(payload.get("detected_at"))
    )


def _standing(earlier: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The earlier alerts that still stand: neither retractions nor retracted."""
    withdrawn = {
        _text(p.get("retracts")) for p in earlier if p.get("type") == EventType.RETRACTED.value
    }
    return [
        p
        for p in earlier
        if _text(p.get("type")) not in _NOT_ALERTS
        and _text(p.get("id")) not in withdrawn
        and is_alert(p)
    ]


def message_kind(history: Sequence[Mapping[str, Any]]) -> _Kind:
    """The msgType and references of the last of ``history`` (a situation's events up to and
    including it, oldest first)."""
    target, earlier = history[-1], history[:-1]
    if target.get("type") == EventType.RETRACTED.value:
        retracted = [p for p in earlier if p.get("id") == target.get("retracts") and is_alert(p)]
        return _Kind(msg_type="Cancel", references=tuple(retracted[-1:]))
    standing = _standing(earlier)
    if not standing:
        return _Kind(msg_type="Alert")
    cancelled = target.get("status") == Status.CANCELLED.value
    return _Kind(msg_type="Cancel" if cancelled else "Update", references=(standing[-1],))


# --------------------------------------------------------------------------- the alert


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, f"{{{CAP_NS}}}{name}")
    if text is not None:
        element.text = text
    return element


def _level(value: Any, scale: Scale | None) -> Level | None:
    level = _mapping(value)
    level_id = _text(level.get("id"))
    if not level_id:
        return None
    for known in scale.levels if scale is not None else ():
        if known.id == level_id:
            return known
    rank = level.get("rank")
    return Level(
        id=level_id,
        name=_text(level.get("name")) or level_id,
        rank=rank if isinstance(rank, int) and not isinstance(rank, bool) else 0,
    )


def cap_values(payload: Mapping[str, Any], profile: CapProfile) -> CapValues:
    """Urgency, severity and certainty of an event (see :mod:`warnsvc.cap.mapping`)."""
    scale = profile.scales.get(_text(payload.get("scale")))
    level = _level(payload.get("level"), scale)
    values = level_values(scale, level, profile.overrides)
    stated = _mapping(payload.get("cap"))  # a CAP source's own words win over the mapping
    if stated:
        values = CapValues(
            urgency=_stated(stated, "urgency", CAP_URGENCY) or values.urgency,
            severity=values.severity,
            certainty=_stated(stated, "certainty", CAP_CERTAINTY) or values.certainty,
        )
    if _status(payload) in _ENDED:
        values = CapValues(urgency="Past", severity=values.severity, certainty=values.certainty)
    return values


def _stated(stated: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str | None:
    value = stated.get(key)
    return value if isinstance(value, str) and value in allowed else None


def _status(payload: Mapping[str, Any]) -> Status | None:
    try:
        return Status(_text(payload.get("status")))
    except ValueError:
        return None


def _references(kind: _Kind, profile: CapProfile) -> str | None:
    triples = [
        f"{profile.sender},{_token(p.get('id'))},{cap_time(p.get('detected_at'))}"
        for p in kind.references
    ]
    return " ".join(triples) or None


def _description(payload: Mapping[str, Any], headline: str) -> str:
    paragraphs = [
        " ".join(p.split()) for p in re.split(r"\n\s*\n", clean(_text(payload.get("summary"))))
    ]
    parts = ["\n\n".join(p for p in paragraphs if p) or headline]
    factors = payload.get("risk_factors")
    if isinstance(factors, Sequence) and not isinstance(factors, str):
        lines = [clean_line(f) for f in factors if isinstance(f, str)]
        if any(lines):
            parts.append("Risk factors:\n" + "\n".join(f"- {line}" for line in lines if line))
    note = clean_line(_text(payload.get("note")))
    if note:
        parts.append(f"Operator's note: {note}")
    return "\n\n".join(parts)


def headline(payload: Mapping[str, Any]) -> str:
    """The feed entry's title, cut to CAP's recommended 160 characters."""
    from warnsvc.channels.feeds import entry_title

    title = clean_line(entry_title(payload))
    if len(title) > _HEADLINE_MAX:
        title = title[: _HEADLINE_MAX - 1].rstrip() + "\u2026"
    return title


def _note(payload: Mapping[str, Any], kind: _Kind) -> str | None:
    note = clean_line(_text(payload.get("note")))
    if payload.get("type") == EventType.RETRACTED.value:
        retracted = clean_line(_text(payload.get("retracts")))
        return f"Retracts {retracted}" + (f": {note}" if note else "")
    if payload.get("manual") is True:
        return "Announced by an operator" + (f": {note}" if note else "")
    if kind.msg_type == "Update" and _status(payload) in _ENDED:
        return "The situation is no longer assessed (delisted)"
    return None


def _parameters(info: etree._Element, payload: Mapping[str, Any]) -> None:
    situation = _mapping(payload.get("situation"))
    pairs = [
        ("warnsvc:event-type", payload.get("type")),
        ("warnsvc:status", payload.get("status")),
        ("warnsvc:situation", situation.get("id")),
        ("warnsvc:scale", payload.get("scale")),
        ("warnsvc:level", _mapping(payload.get("level")).get("id")),
        ("warnsvc:previous-level", _mapping(payload.get("previous_level")).get("id")),
    ]
    for name, value in pairs:
        text = clean_line(_text(value))
        if text:
            parameter = _sub(info, "parameter")
            _sub(parameter, "valueName", name)
            _sub(parameter, "value", text)


def _info(
    alert: etree._Element, payload: Mapping[str, Any], profile: CapProfile, sent: str
) -> None:
    info = _sub(alert, "info")
    _sub(info, "language", "en")
    source_id = _text(_mapping(payload.get("source")).get("id"))
    _sub(info, "category", profile.categories.get(source_id, profile.category))
    scale = profile.scales.get(_text(payload.get("scale")))
    event = scale.name if scale is not None else _text(payload.get("scale"))
    _sub(info, "event", clean_line(event) or "Risk assessment")
    values = cap_values(payload, profile)
    _sub(info, "urgency", values.urgency)
    _sub(info, "severity", values.severity)
    _sub(info, "certainty", values.certainty)
    if _status(payload) in _ENDED:
        _sub(info, "expires", sent)  # the alert is over as of now
    _sub(info, "senderName", clean_line(profile.sender_name) or "warnsvc")
    title = headline(payload)
    _sub(info, "headline", title)
    _sub(info, "description", _description(payload, title))
    situation = _mapping(payload.get("situation"))
    web = _safe_url(situation.get("url")) or profile.base_url.rstrip("/") + "/"
    _sub(info, "web", web)
    _parameters(info, payload)
    area = _sub(info, "area")
    name = clean_line(_text(situation.get("name")) or _text(situation.get("id")))
    _sub(area, "areaDesc", name or "Unknown situation")


def build_alert(history: Sequence[Mapping[str, Any]], profile: CapProfile) -> bytes:
    """The CAP 1.2 document of the last event of ``history`` (its situation's events up to and
    including it, oldest first), as UTF-8 bytes with an XML declaration."""
    if not history or not is_alert(history[-1]):
        raise ValueError("no CAP document for this event")
    payload = history[-1]
    kind = message_kind(history)
    sent = cap_time(payload.get("detected_at"))
    assert sent is not None  # is_alert checked it
    alert = etree.Element(f"{{{CAP_NS}}}alert", nsmap={None: CAP_NS})
    _sub(alert, "identifier", _token(payload.get("id")))
    _sub(alert, "sender", profile.sender)
    _sub(alert, "sent", sent)
    _sub(alert, "status", "Actual")
    _sub(alert, "msgType", kind.msg_type)
    source = clean_line(_text(_mapping(payload.get("source")).get("name")))
    if source:
        _sub(alert, "source", source)
    _sub(alert, "scope", "Public")
    note = _note(payload, kind)
    if note:
        _sub(alert, "note", note)
    references = _references(kind, profile)
    if references:
        _sub(alert, "references", references)
    _info(alert, payload, profile, sent)
    data: bytes = etree.tostring(alert, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return data


# --------------------------------------------------------------------------- the Atom index


def index_id_authority(base_url: str) -> str:
    """``{base_url host},2024``, as the other feeds' ids; ``warnsvc.local,2024`` for a host
    that is not a DNS name."""
    host = urlsplit(base_url).hostname or ""
    try:
        host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        host = ""
    return f"{host},{ID_YEAR}" if _DNS_NAME.fullmatch(host) else f"warnsvc.local,{ID_YEAR}"


def _atom(parent: etree._Element, name: str, text: str | None = None, **attrs: str) -> None:
    element = etree.SubElement(parent, f"{{{ATOM_NS}}}{name}", attrs)
    if text is not None:
        element.text = text


def _atom_time(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def build_index(
    payloads: Sequence[Mapping[str, Any]], profile: CapProfile, *, empty_since: datetime
) -> bytes:
    """The Atom 1.0 index of the newest alerts (``max_entries``), newest first; each entry
    links to its CAP document with ``type="application/cap+xml"``. ``empty_since`` is the
    feed's ``updated`` while it has no entries."""
    alerts = [p for p in payloads if is_alert(p)]
    alerts.sort(key=lambda p: (parse_time(p.get("detected_at")), _text(p.get("id"))), reverse=True)
    alerts = alerts[: profile.max_entries]
    authority = index_id_authority(profile.base_url)
    feed = etree.Element(f"{{{ATOM_NS}}}feed", nsmap={None: ATOM_NS})
    _atom(feed, "id", f"tag:{authority}:feed:cap")
    _atom(feed, "title", clean_line(f"{profile.title}: CAP alerts"))
    newest = parse_time(alerts[0].get("detected_at")) if alerts else None
    _atom(feed, "updated", _atom_time(newest or empty_since.astimezone(UTC).replace(microsecond=0)))
    author = etree.SubElement(feed, f"{{{ATOM_NS}}}author")
    _atom(author, "name", clean_line(profile.sender_name) or "warnsvc")
    _atom(feed, "link", rel="self", type=ATOM_TYPE, href=profile.index_url)
    if profile.hub:
        _atom(feed, "link", rel="hub", href=profile.hub)
    _atom(feed, "link", rel="alternate", href=profile.base_url.rstrip("/") + "/")
    _atom(feed, "generator", "warnsvc")
    for payload in alerts:
        event_id = _token(payload.get("id"))
        sent = parse_time(payload.get("detected_at"))
        assert sent is not None
        entry = etree.SubElement(feed, f"{{{ATOM_NS}}}entry")
        _atom(entry, "id", f"tag:{authority}:cap:{event_id}")
        _atom(entry, "title", headline(payload))
        _atom(entry, "updated", _atom_time(sent))
        _atom(entry, "published", _atom_time(sent))
        _atom(entry, "link", rel="alternate", type=CAP_TYPE, href=profile.document_url(event_id))
        values = cap_values(payload, profile)
        _atom(entry, "summary", f"{values.severity} / {values.urgency} / {values.certainty}")
    data: bytes = etree.tostring(feed, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    return data
