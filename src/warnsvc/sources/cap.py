"""The ``cap`` kind: Common Alerting Protocol messages (CAP 1.2, 1.1 and 1.0).

A document is either one ``<alert>`` or an index feed (Atom or RSS) of alerts. An index entry
may carry its alert inline (an ``<alert>`` in its content), carry the alert's fields as
CAP-namespaced elements of the entry itself (``cap:severity``, ``cap:msgType`` ...; the entry's
id is the identifier), or only link to the CAP document; the polling source follows such links
(:class:`CapSource`), ``warnsvc parse`` does not.

One observation per *alert*, not per message:

* The situation is the alert a message is about: its own ``identifier`` for an ``Alert``, and
  for an ``Update`` or ``Cancel`` the first message its ``references`` name (followed back
  through the messages of the same document, so a chain of updates lands on the original).
  ``cap:TRI13970876.1`` keys ``cap:tri13970876-1``.
* Of several messages about one alert, the latest ``sent`` wins.
* ``level`` is the severity of the first ``<info>`` block on the scale (by default the built-in
  ``cap-severity``: Minor < Moderate < Severe < Extreme). ``Unknown`` severity gives level null
  and status ``severity-unknown``; a word outside the scale skips the message (reported).
* ``Cancel`` gives status ``cancelled`` and an alert whose ``expires`` has passed status
  ``expired``, with the severity the message states as its level (null when unknown or off the
  scale, never a reason to skip the message). What that means is the detector's call: either
  ends the alert (a ``situation.delisted`` event) whatever the source.
* ``Ack`` and ``Error`` messages, and messages whose ``status`` is not ``Actual`` (exercises,
  tests, drafts, system messages), say nothing about an alert's state and are ignored.

Extra output fields: ``msg_type`` (``alert``/``update``/``cancel``), ``urgency``,
``certainty``, ``expires`` (ISO 8601 or null), ``references`` (the ``sender,identifier,sent``
triples), ``identifier``, ``sender`` and ``event``. XML goes through the hardened parser of
:mod:`warnsvc.sources.xmlsafe` first.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin
from xml.etree.ElementTree import Element

from warnsvc.errors import SourceParseError
from warnsvc.model import CAP_SEVERITY_SCALE, Observation, Scale, Status, normalize_name
from warnsvc.sources.base import Page, PageLoader, ParseMemo, Source, SourceInfo, SourceKind, about
from warnsvc.sources.items import (
    LevelMap,
    day_of,
    parse_when,
    require_readable,
    shown,
    situation_key,
    skipped_item,
)
from warnsvc.sources.worker import DEFAULT_LIMITS, ParseLimits, limits_from_settings, parse_bounded
from warnsvc.sources.xmlsafe import local_name, namespace_of, parse_xml, text_of

CAP_NAMESPACES = frozenset(
    {
        "urn:oasis:names:tc:emergency:cap:1.2",
        "urn:oasis:names:tc:emergency:cap:1.1",
        "http://www.incident.com/cap/1.0",
    }
)
_MSG_TYPES = {"alert", "update", "cancel"}
_IGNORED_TYPES = {"ack", "error"}
_FEED_ROOTS = {"feed", "rss", "RDF"}
_ENTRY_NAMES = {"entry", "item"}
_CAP_LINK_TYPES = ("application/cap+xml", "application/common-alerting-protocol+xml")


@dataclass(frozen=True, slots=True, kw_only=True)
class _Message:
    """The fields of one CAP message that matter here."""

    identifier: str
    sender: str
    sent: datetime | None
    status: str
    msg_type: str
    references: tuple[str, ...]
    infos: tuple[Element, ...]
    namespace: str
    link: str | None = None
    flat: Element | None = None
    """For an index entry with CAP-namespaced fields: the entry itself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CapRules:
    levels: Mapping[str, str] = field(default_factory=dict)
    """Severity words -> level ids of the scale (beyond the scale's own names)."""


DEFAULT_RULES = CapRules()


def parse_cap(
    body: str,
    *,
    url: str | None = None,
    content_type: str | None = None,
    scale: Scale = CAP_SEVERITY_SCALE,
    namespace: str = "cap",
    rules: CapRules = DEFAULT_RULES,
    now: datetime | None = None,
) -> list[Observation]:
    """Every alert a CAP document or CAP index feed describes (see the module docstring).

    Raises UnsafeXmlError for a DTD or entities; SourceParseError for a document that is neither
    a CAP alert nor a feed of them; NoRiskInformationError when no message could be read.
    """
    messages, _links = read_messages(body, url=url)
    return observe_messages(
        messages, url=url, scale=scale, namespace=namespace, rules=rules, now=now
    )


def read_messages(body: str, *, url: str | None) -> tuple[list[_Message], list[str]]:
    """The CAP messages in a document, and the links of index entries that carry none."""
    root, _prefixes = parse_xml(body)
    name = local_name(root.tag)
    if name == "alert":
        return [_message(root)], []
    if name not in _FEED_ROOTS:
        raise SourceParseError(
            f"not a CAP alert or a feed of alerts: the root element is <{name or '?'}>"
        )
    messages: list[_Message] = []
    links: list[str] = []
    for entry in (e for e in root.iter() if local_name(e.tag) in _ENTRY_NAMES and e is not root):
        inline = [e for e in entry.iter() if local_name(e.tag) == "alert" and _is_cap(e)]
        if inline:
            messages.extend(_message(alert) for alert in inline)
        elif any(_is_cap(child) for child in entry):
            messages.append(_flat_message(entry))
        elif link := _cap_link(entry):
            links.append(urljoin(url, link) if url else link)
    return messages, links


def observe_messages(
    messages: Iterable[_Message],
    *,
    url: str | None,
    scale: Scale,
    namespace: str,
    rules: CapRules,
    now: datetime | None = None,
) -> list[Observation]:
    """One observation per alert, the latest message about it winning."""
    moment = now or datetime.now(UTC)
    actual = [m for m in messages if m.status == "actual" and m.msg_type not in _IGNORED_TYPES]
    roots = _roots(actual)
    levels = LevelMap(scale, rules.levels)
    latest: dict[str, tuple[_Message, Observation]] = {}
    problems: list[Observation] = []
    for message in actual:
        observation = _observe(message, roots, url, levels, namespace, moment)
        if observation.problem is not None or observation.situation is None:
            problems.append(observation)
            continue
        kept = latest.get(observation.situation)
        if kept is None or _later(message, kept[0]):
            latest[observation.situation] = (message, observation)
    observations = [obs for _, obs in latest.values()] + problems
    return require_readable(observations, "CAP messages")


def _is_cap(element: Element) -> bool:
    return namespace_of(element.tag) in CAP_NAMESPACES


def _child(element: Element, name: str, namespace: str) -> Element | None:
    for child in element:
        if local_name(child.tag) == name and namespace_of(child.tag) == namespace:
            return child
    return None


def _value(element: Element | None, name: str, namespace: str) -> str:
    return text_of(_child(element, name, namespace)) if element is not None else ""


def _message(alert: Element) -> _Message:
    ns = namespace_of(alert.tag)
    return _Message(
        identifier=_value(alert, "identifier", ns),
        sender=_value(alert, "sender", ns),
        sent=parse_when(_value(alert, "sent", ns)),
        status=_value(alert, "status", ns).lower(),
        msg_type=_value(alert, "msgType", ns).lower(),
        references=tuple(_value(alert, "references", ns).split()),
        infos=tuple(c for c in alert if local_name(c.tag) == "info" and namespace_of(c.tag) == ns),
        namespace=ns,
    )


def _flat_message(entry: Element) -> _Message:
    """An index entry whose CAP fields are its own children (``cap:severity`` ...)."""
    ns = next(namespace_of(c.tag) for c in entry if _is_cap(c))
    own = namespace_of(entry.tag)
    identifier = _value(entry, "identifier", ns) or _value(entry, "id", own)
    identifier = identifier or _value(entry, "guid", own)
    return _Message(
        identifier=identifier,
        sender=_value(entry, "sender", ns),
        sent=parse_when(_value(entry, "sent", ns) or _value(entry, "updated", own)),
        status=(_value(entry, "status", ns) or "Actual").lower(),
        msg_type=(_value(entry, "msgType", ns) or "Alert").lower(),
        references=tuple(_value(entry, "references", ns).split()),
        infos=(),
        namespace=ns,
        link=_entry_link(entry),
        flat=entry,
    )


def _entry_link(entry: Element) -> str | None:
    for child in entry:
        if local_name(child.tag) != "link":
            continue
        href = child.get("href") or text_of(child)
        if href and child.get("rel", "alternate") == "alternate":
            return href
    return None


def _cap_link(entry: Element) -> str | None:
    """The link of an index entry to its CAP document: a CAP media type first."""
    links = [c for c in entry if local_name(c.tag) == "link"]
    for link in links:
        if (link.get("type") or "").split(";")[0].strip().lower() in _CAP_LINK_TYPES:
            return link.get("href")
    return _entry_link(entry)


def _reference_id(reference: str) -> str | None:
    """``sender,identifier,sent`` -> ``identifier``."""
    parts = reference.split(",")
    return parts[1].strip() or None if len(parts) >= 2 else None


def _roots(messages: list[_Message]) -> dict[str, str]:
    """identifier -> the identifier of the original alert, following references back."""
    parent = {
        m.identifier: ref
        for m in messages
        if m.references and (ref := _reference_id(m.references[0])) is not None
    }
    roots: dict[str, str] = {}
    for identifier in parent:
        current, seen = identifier, {identifier}
        while current in parent and parent[current] not in seen:
            current = parent[current]
            seen.add(current)
        roots[identifier] = current
    return roots


def _later(message: _Message, than: _Message) -> bool:
    if message.sent is None or than.sent is None:
        return than.sent is None
    return message.sent >= than.sent


def _observe(
    message: _Message,
    roots: Mapping[str, str],
    url: str | None,
    levels: LevelMap,
    namespace: str,
    now: datetime,
) -> Observation:
    if not message.identifier:
        return skipped_item(namespace, None, "a CAP message without <identifier>")
    if message.msg_type not in _MSG_TYPES:
        problem = f"msgType {shown(message.msg_type)} is not Alert, Update or Cancel"
        return skipped_item(namespace, message.identifier, problem)
    root = roots.get(message.identifier, message.identifier)
    situation = situation_key(namespace, root)
    if situation is None:
        return skipped_item(namespace, message.identifier, "the identifier has no letters")
    info = message.flat if message.flat is not None else _first(message.infos)
    ns = message.namespace
    name = _value(info, "headline", ns) or _value(info, "event", ns) or message.identifier
    expires = parse_when(_value(info, "expires", ns))
    extra = {
        "msg_type": message.msg_type,
        "urgency": _value(info, "urgency", ns) or None,
        "certainty": _value(info, "certainty", ns) or None,
        "expires": expires.isoformat() if expires else None,
        "references": list(message.references),
        "identifier": message.identifier,
        "sender": message.sender or None,
        "event": _value(info, "event", ns) or None,
    }
    base = Observation(
        situation=situation,
        name=name,
        level=None,
        status=Status.ASSESSED,
        date=day_of(message.sent),
        url=_value(info, "web", ns) or message.link or url,
        summary=_value(info, "description", ns),
        extra=extra,
    )
    severity = _value(info, "severity", ns)
    unknown = normalize_name(severity) == "unknown"
    level = levels.find(severity) if severity and not unknown else None
    ending = _ending_status(message, expires, now)
    if ending is not None:  # what the message says; the detector decides what ending means
        return replace(base, level=level.id if level else None, status=ending)
    if info is None:
        return skipped_item(namespace, message.identifier, "an alert without <info>", name=name)
    if unknown:
        return replace(base, status=Status.SEVERITY_UNKNOWN)
    if level is None:
        problem = levels.problem(severity) if severity else "no <severity>"
        return replace(skipped_item(namespace, message.identifier, problem, name=name))
    return replace(base, level=level.id)


def _ending_status(message: _Message, expires: datetime | None, now: datetime) -> Status | None:
    """``cancelled`` for a Cancel, ``expired`` past the message's own end time, else None."""
    if message.msg_type == "cancel":
        return Status.CANCELLED
    if expires is not None and expires <= now:
        return Status.EXPIRED
    return None


def _first(infos: tuple[Element, ...]) -> Element | None:
    return infos[0] if infos else None


# -- the polling source ------------------------------------------------------------------------


class CapSource:
    """A CAP document or index feed; index entries that only link to their alert are followed
    (at most ``max_links`` of them, ``link_delay`` apart)."""

    def __init__(
        self,
        info: SourceInfo,
        loader: PageLoader,
        url: str,
        *,
        rules: CapRules,
        follow_links: bool,
        max_links: int,
        link_delay: float,
        limits: ParseLimits = DEFAULT_LIMITS,
    ) -> None:
        self.info = info
        self.loader = loader
        self.url = url
        self.rules = rules
        self.follow_links = follow_links
        self.max_links = max_links
        self.link_delay = link_delay
        self.limits = limits
        self.memo = ParseMemo()

    async def _read(self, page: Page) -> tuple[tuple[_Message, ...], tuple[str, ...]]:
        async def read() -> tuple[tuple[_Message, ...], tuple[str, ...]]:
            with about(page.requested):
                messages, links = await parse_bounded(
                    read_messages, page.text, limits=self.limits, url=page.url
                )
            return tuple(messages), tuple(links)

        return await self.memo.parse(page, read)

    async def poll(self) -> list[Observation]:
        page = await self.loader.load(self.url)
        read, links = await self._read(page)
        messages = list(read)
        if self.follow_links:
            messages.extend(await self._follow(list(links[: self.max_links])))
        self.memo.sweep()
        with about(self.url):
            return observe_messages(
                messages,
                url=page.url,
                scale=self.info.scale,
                namespace=self.info.namespace,
                rules=self.rules,
            )

    async def _follow(self, links: list[str]) -> list[_Message]:
        found: list[_Message] = []
        for position, link in enumerate(links):
            if position and self.link_delay > 0:
                await asyncio.sleep(self.link_delay)
            page = await self.loader.load(link)
            messages, _ = await self._read(page)
            found.extend(replace(m, link=m.link or link) for m in messages)
        return found


def rules_from_settings(settings: Any) -> CapRules:
    return CapRules(levels=dict(settings.levels))


def _parse_with(settings: Any) -> Any:
    return functools.partial(parse_cap, rules=rules_from_settings(settings))  # pickles


def _parse_default(
    body: str, *, url: str | None, content_type: str | None, scale: Scale, namespace: str
) -> list[Observation]:
    return parse_cap(body, url=url, scale=scale, namespace=namespace)


def _build(settings: Any, info: SourceInfo, loader: PageLoader) -> Source:
    return CapSource(
        replace(info, authoritative=bool(settings.authoritative)),
        loader,
        str(settings.url),
        rules=rules_from_settings(settings),
        follow_links=bool(settings.follow_links),
        max_links=int(settings.max_links),
        link_delay=float(settings.link_delay),
        limits=limits_from_settings(settings),
    )


KIND = SourceKind(
    kind="cap",
    description="CAP 1.2/1.1 alerts, one document or an Atom/RSS index of them; severity levels",
    default_namespace="cap",
    default_scale=CAP_SEVERITY_SCALE.id,
    parse=_parse_default,
    parse_with=_parse_with,
    build=_build,
)
