"""The ``feed`` kind: any RSS 0.9x, 1.0 (RDF) or 2.0 feed, or Atom (0.3 and 1.0) feed.

Each entry is one situation observation. Where an entry's id, name, level and date come from is
data (:class:`FeedRules`, from the YAML): a standard field as feedparser normalises it
(``id``, ``title``, ``summary``, ``link``, ``category``, ``published``, ``updated``) or any
element of the entry, namespaced or not (``gdacs:alertlevel``, ``{http://www.gdacs.org}iso3``),
or one of its attributes; optionally narrowed by a regular expression (its ``value`` group, else
its first group, else the whole match). Level words map onto the source's scale through
``levels`` (``{Orange: orange}``), then the scale's own level names.

Parsing is two-step, on purpose. The document is first parsed with the hardened parser of
:mod:`warnsvc.sources.xmlsafe` (a DTD, entities or external references are refused; a document
that is not well-formed fails). Only a document that passed is given to feedparser, which then
never meets an entity declaration, and which gets the bytes in a stream (``feedparser.parse``
given a string would open it as a path or URL). feedparser normalises what differs between feed
formats (ids, links, dates, HTML in summaries); the hardened tree answers element lookups, since
it keeps the document's namespaces exactly. The two see the same entries in the same order; if
they ever disagree the feed fails rather than mixing entries up.

An entry without an id, a level word outside the mapping, or a missing level element skips
that entry and is reported (see :mod:`warnsvc.sources.items`); other entries still count.
"""

from __future__ import annotations

import calendar
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from xml.etree.ElementTree import Element

import feedparser

from warnsvc.errors import SourceParseError
from warnsvc.model import Observation, Scale, Status
from warnsvc.sources.base import rules_kind
from warnsvc.sources.items import (
    LevelMap,
    day_of,
    parse_when,
    require_readable,
    situation_key,
    skipped_item,
)
from warnsvc.sources.text import html_to_lines, looks_like_html
from warnsvc.sources.xmlsafe import local_name, namespace_of, parse_xml, text_of, utf8_document

FIELDS = ("id", "title", "summary", "link", "category", "published", "updated")
"""The standard entry fields a rule may name."""

ATOM = "http://www.w3.org/2005/Atom"
_ROOTS = {"rss", "RDF", "feed", "channel"}
_ITEM_NAMES = {"item", "entry"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ValueRule:
    """Where one value of an entry comes from: a standard ``field`` or an ``element``."""

    field: str | None = None
    element: str | None = None
    attribute: str | None = None
    regex: re.Pattern[str] | None = None

    def describe(self) -> str:
        where = f"element {self.element}" if self.element else f"field {self.field}"
        return where + (f" @{self.attribute}" if self.attribute else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedRules:
    """How entries become observations; the defaults read id, title, category and date."""

    id: ValueRule = ValueRule(field="id")
    name: ValueRule = ValueRule(field="title")
    level: ValueRule = ValueRule(field="category")
    date: ValueRule | None = None
    """None: ``published``, else ``updated``."""
    levels: Mapping[str, str] = field(default_factory=dict)
    namespaces: Mapping[str, str] = field(default_factory=dict)


DEFAULT_RULES = FeedRules()


def parse_feed(
    body: str,
    *,
    url: str | None = None,
    content_type: str | None = None,
    scale: Scale,
    namespace: str,
    rules: FeedRules = DEFAULT_RULES,
) -> list[Observation]:
    """Every entry of an RSS or Atom feed as an observation (unreadable ones carry a problem).

    Raises UnsafeXmlError for a DTD or entities, SourceParseError for anything that is not a
    well-formed RSS or Atom feed, NoRiskInformationError when no entry could be read.
    """
    root, prefixes = parse_xml(body)
    if local_name(root.tag) not in _ROOTS:
        raise SourceParseError(
            f"not an RSS or Atom feed: the root element is <{local_name(root.tag) or '?'}>"
        )
    items = [e for e in root.iter() if local_name(e.tag) in _ITEM_NAMES and e is not root]
    entries = _feedparser_entries(body, url)
    if len(entries) != len(items):
        raise SourceParseError(
            f"feed not understood: {len(items)} item element(s), but {len(entries)} entries read"
        )
    context = _Context(
        scale=scale,
        namespace=namespace,
        rules=rules,
        levels=LevelMap(scale, rules.levels),
        prefixes={**prefixes, **rules.namespaces},
    )
    observations = [
        _observe(entry, item, context) for entry, item in zip(entries, items, strict=True)
    ]
    return require_readable(observations, "feed entries")


def _feedparser_entries(body: str, url: str | None) -> list[Any]:
    headers = {"content-location": url} if url else {}
    try:
        parsed = feedparser.parse(
            io.BytesIO(utf8_document(body)), response_headers=headers, sanitize_html=True
        )
    except Exception as exc:  # feedparser has no error hierarchy of its own
        raise SourceParseError(f"feed not understood: {type(exc).__name__}: {exc}") from None
    return list(parsed.get("entries") or [])


@dataclass(frozen=True, slots=True, kw_only=True)
class _Context:
    scale: Scale
    namespace: str
    rules: FeedRules
    levels: LevelMap
    prefixes: Mapping[str, str]


def _observe(entry: Any, item: Element, context: _Context) -> Observation:
    rules = context.rules
    ids = _values(rules.id, entry, item, context)
    raw_id = ids[0] if ids else None
    if raw_id is None:
        return skipped_item(context.namespace, None, f"no id ({rules.id.describe()} is missing)")
    situation = situation_key(context.namespace, raw_id)
    if situation is None:
        return skipped_item(context.namespace, raw_id, "the id has no letters or digits")
    names = _values(rules.name, entry, item, context)
    name = names[0] if names else raw_id
    words = _values(rules.level, entry, item, context)
    if not words:
        problem = f"no level ({rules.level.describe()} is missing)"
        return skipped_item(context.namespace, raw_id, problem, name=name)
    level = next((lv for lv in map(context.levels.find, words) if lv is not None), None)
    if level is None:
        return skipped_item(context.namespace, raw_id, context.levels.problem(words[0]), name=name)
    return Observation(
        situation=situation,
        name=name,
        level=level.id,
        status=Status.ASSESSED,
        date=day_of(_date(entry, item, context)),
        url=_text(entry.get("link")) or None,
        summary=_plain(_text(entry.get("summary"))),
    )


def _date(entry: Any, item: Element, context: _Context) -> datetime | None:
    rule = context.rules.date
    if rule is None:
        return _field_moment(entry, "published") or _field_moment(entry, "updated")
    for value in _values(rule, entry, item, context):
        moment = parse_when(value)
        if moment is not None:
            return moment
    return None


def _values(rule: ValueRule, entry: Any, item: Element, context: _Context) -> list[str]:
    """The non-empty candidate values of ``rule`` for one entry, in order, after its regex."""
    if rule.element is not None:
        raw = _element_values(rule, item, context.prefixes)
    else:
        raw = _field_values(rule.field or "", entry)
    found: list[str] = []
    for value in raw:
        text = " ".join(value.split())
        if rule.regex is not None:
            match = rule.regex.search(text)
            if match is None:
                continue
            text = _group(match)
        if text:
            found.append(text)
    return found


def _group(match: re.Match[str]) -> str:
    if "value" in match.re.groupindex:
        return (match.group("value") or "").strip()
    if match.re.groups:
        return (match.group(1) or "").strip()
    return match.group(0).strip()


def _field_values(name: str, entry: Any) -> list[str]:
    if name == "id":
        return [v for v in (_text(entry.get("id")), _text(entry.get("link"))) if v][:1]
    if name == "category":
        return [_text(tag.get("term")) for tag in entry.get("tags") or [] if isinstance(tag, dict)]
    if name in ("published", "updated"):
        moment = _field_moment(entry, name)
        return [moment.isoformat()] if moment else []
    if name in ("summary", "title"):  # feedparser keeps (sanitised) HTML in both
        return [_plain(_text(entry.get(name)))]
    return [_text(entry.get(name))]


def _field_moment(entry: Any, name: str) -> datetime | None:
    parsed = entry.get(f"{name}_parsed")
    if parsed is None:
        return None
    try:
        return datetime.fromtimestamp(calendar.timegm(parsed), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _element_values(rule: ValueRule, item: Element, prefixes: Mapping[str, str]) -> list[str]:
    wanted = _qualify(rule.element or "", prefixes, namespace_of(item.tag))
    if wanted is None:
        return []
    children = [c for c in item if _matches(c.tag, wanted)]
    matches = children or [c for c in item.iter() if c is not item and _matches(c.tag, wanted)]
    if rule.attribute is None:
        return [text_of(m) for m in matches]
    return [_text(m.get(rule.attribute)) for m in matches if m.get(rule.attribute) is not None]


def _qualify(name: str, prefixes: Mapping[str, str], item_namespace: str) -> tuple[str, ...] | None:
    """The Clark names (``{uri}local``) an element rule may match, or None for an unknown
    prefix. An unprefixed name matches the element without a namespace and the one in the
    entry's own namespace (Atom, RSS 1.0)."""
    if name.startswith("{"):
        return (name,)
    prefix, _, local = name.rpartition(":")
    if prefix:
        uri = prefixes.get(prefix)
        return (f"{{{uri}}}{local}",) if uri else None
    return (local, f"{{{item_namespace}}}{local}") if item_namespace else (local,)


def _matches(tag: object, wanted: tuple[str, ...]) -> bool:
    return isinstance(tag, str) and tag in wanted


def _text(value: object) -> str:
    return " ".join(value.split()) if isinstance(value, str) else ""


def _plain(summary: str) -> str:
    """feedparser's sanitised HTML summary as one line of text."""
    if not summary or not looks_like_html(summary, "text/html"):
        return summary
    return " ".join(html_to_lines(summary))


# -- the polling source ------------------------------------------------------------------------


def value_rule(settings: Any) -> ValueRule:
    """A :class:`ValueRule` from its YAML settings (field, element, attribute, regex)."""
    regex = getattr(settings, "regex", None)
    return ValueRule(
        field=getattr(settings, "field", None),
        element=getattr(settings, "element", None),
        attribute=getattr(settings, "attribute", None),
        regex=re.compile(regex) if regex else None,
    )


def rules_from_settings(settings: Any) -> FeedRules:
    fields = settings.fields
    return FeedRules(
        id=value_rule(fields.id),
        name=value_rule(fields.name),
        level=value_rule(fields.level),
        date=value_rule(fields.date) if fields.date is not None else None,
        levels=dict(settings.levels),
        namespaces=dict(settings.namespaces),
    )


KIND = rules_kind(
    kind="feed",
    description="an RSS or Atom feed: one situation per entry; id, name and level per the YAML",
    default_namespace="feed",
    default_scale="gdacs",
    parse=parse_feed,
    default_rules=DEFAULT_RULES,
    rules_from_settings=rules_from_settings,
)

__all__: Sequence[str] = ("DEFAULT_RULES", "KIND", "FeedRules", "ValueRule", "parse_feed")
