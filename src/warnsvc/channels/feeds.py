"""Feeds: Atom 1.0, RSS 2.0 and JSON Feed 1.1 files built from stored event payloads.

:func:`build_feeds` turns event payloads (the shape of :meth:`warnsvc.model.Event.payload`)
into files under ``FeedSettings.out_dir``, served by the web app at ``/feeds/<same path>``::

    alerts.atom, alerts.rss, alerts.json      every event
    situations/{situation id}.atom            the events of one situation
    levels/{level id}.atom                    events at or above a level, either side of the change

The output depends on the events only, entry ids are stable ``tag:`` URIs, and a file is
replaced atomically and only when its bytes change, so the ETag and Last-Modified served from it
stay stable and readers never see duplicates after a rebuild. The one exception to "events only"
is a feed without entries: Atom requires an ``updated`` date, and the truthful one is when that
empty feed was first written, which later rebuilds keep (see :func:`build_feeds`).

Ids (``tag:`` URIs, RFC 4151):

- a feed's id is ``tag:{host},2024:feed:...``, ``host`` being ``service.base_url``'s host, so
  two deployments never share a feed id. It changes only if ``base_url`` moves to another host,
  and then the feeds' URLs change too.
- an entry's id is ``tag:warnsvc.local,2024:event:{event id}``, for every deployment, as it has
  been since the first release. An entry id is what a feed reader remembers to tell a new item
  from one already shown: moving entries to the deployment's host would make every reader show
  every entry in every feed again, as new, i.e. re-send up to ``max_entries`` old alerts. Event
  ids are unique on their own (time plus 64 random bits), so entry ids are unique across
  deployments even under the shared authority.

Everything in a payload came from a source and is untrusted: text is stripped of characters
that XML 1.0 forbids and HTML-escaped; a link is kept only if it is an http(s) URL.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, urlsplit

from warnsvc.channels.base import BaseChannel, ChannelContext, ChannelKind, Outcome, Plugged
from warnsvc.filters import Levels
from warnsvc.model import Event, EventType, Scale, Status
from warnsvc.outbox import Delivery

if TYPE_CHECKING:
    from warnsvc.channels.websub import WebSubChannel
    from warnsvc.config import Settings
    from warnsvc.store.db import RouteContext

__all__ = ["FeedChannel", "FeedSettings", "build_feeds", "entry_title"]

log = logging.getLogger(__name__)

JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
EXTENSION_KEY = "_warnsvc"
ENTRY_ID_AUTHORITY = "warnsvc.local,2024"
"""The authority of entry ids: kept from the first release so that no entry id ever changes."""
FEED_ID_YEAR = "2024"
"""The date part of the feed ids' authority (``{base_url host},2024``): fixed, as a date from the
clock would change the ids, and the year of the authority the ids have always had."""
_PLACEHOLDER_DATE = datetime(1970, 1, 1, tzinfo=UTC)
"""What earlier releases wrote as the date of an empty feed: never kept."""
EXTENSION_DOCS_PATH = "/api/v1/schemas/event.json"
"""Where, under ``base_url``, the ``_warnsvc`` extension is described (its ``about``): the event
JSON Schema the service serves to anyone, matching the version that wrote the feed."""

_ATOM_TYPE = "application/atom+xml"
_RSS_TYPE = "application/rss+xml"
_JSON_TYPE = "application/feed+json"

# XML 1.0 allows TAB, LF, CR, U+0020-U+D7FF, U+E000-U+FFFD and U+10000-U+10FFFF; the C1
# controls (U+007F-U+009F) are allowed but discouraged, so they go as well.
_XML_UNSAFE = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SAFE_FILE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_MAX_URL_LENGTH = 2048


@dataclass(frozen=True, slots=True, kw_only=True)
class FeedSettings:
    """Where feeds are written and how they describe themselves."""

    out_dir: Path
    base_url: str
    """Public base URL of the service; feed self links are ``base_url + "/feeds/..."``."""
    title: str = "warnsvc alerts"
    author: str = "warnsvc"
    max_entries: int = 100
    """Entries per feed, newest kept."""
    id_authority: str | None = None
    """The authority of feed ids (``tag:{authority}:feed:...``); None: ``base_url``'s host and
    :data:`FEED_ID_YEAR`, see :func:`feed_id_authority`."""
    entry_id_authority: str = ENTRY_ID_AUTHORITY
    """The authority of entry ids (``tag:{authority}:event:{event id}``)."""
    hub: str | None = None
    """A WebSub hub (``feeds.websub.hub``): the feeds carry ``<link rel="hub">``."""

    def __post_init__(self) -> None:
        if self.max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {self.max_entries}")


# --------------------------------------------------------------------------- ids

_DNS_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def feed_id_authority(settings: FeedSettings) -> str:
    """The ``tag:`` authority of the feed ids: ``settings.id_authority``, else
    ``{host},2024`` from ``base_url`` (lower case, IDNA-encoded).

    A host that is not a DNS name as RFC 4151 wants it (an IPv6 literal) falls back to the
    entry ids' authority: such a deployment's feed ids are not unique, as before.
    """
    if settings.id_authority is not None:
        return settings.id_authority
    host = urlsplit(settings.base_url).hostname or ""
    try:
        host = host.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        host = ""
    if not _DNS_NAME.fullmatch(host):
        return settings.entry_id_authority
    return f"{host},{FEED_ID_YEAR}"


def _feed_id(settings: FeedSettings, specific: str) -> str:
    return f"tag:{feed_id_authority(settings)}:feed:{specific}"


# --------------------------------------------------------------------------- text helpers


def _clean(text: str) -> str:
    """``text`` without the characters that XML 1.0 forbids (and C1 controls)."""
    return _XML_UNSAFE.sub("", text)


def _clean_line(text: str) -> str:
    """``text`` cleaned and folded onto one line with single spaces."""
    return " ".join(_clean(text).split())


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _safe_url(value: Any) -> str | None:
    """``value`` if it is an absolute http(s) URL without spaces or control characters."""
    url = _text(value).strip()
    if not url or len(url) > _MAX_URL_LENGTH or _clean_line(url) != url or " " in url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return url


def _safe_file_stem(name: str) -> bool:
    """Whether ``name`` may be used as a file name: no separators, no ``..``, not hidden."""
    return _SAFE_FILE_STEM.fullmatch(name) is not None and ".." not in name


# --------------------------------------------------------------------------- titles


def _level_name(value: Any) -> str:
    level = _mapping(value)
    return _clean_line(_text(level.get("name")) or _text(level.get("id")))


def _situation_name(payload: Mapping[str, Any]) -> str:
    situation = _mapping(payload.get("situation"))
    name = _clean_line(_text(situation.get("name")) or _text(situation.get("id")))
    return name or "Unknown situation"


def _change_text(kind: str, level: str, previous: str) -> str:
    if previous and level:
        return f"{previous} -> {level}"
    verb = "escalated" if kind == EventType.ESCALATED else "de-escalated"
    return f"{verb} to {level}" if level else verb


def _delisted_text(payload: Mapping[str, Any], level: str, previous: str) -> str:
    studied = payload.get("status") == Status.PREVIOUSLY_STUDIED
    verb = "no longer assessed" if studied else "delisted"
    was = previous or level
    return f"{verb} (was {was})" if was else verb


def _title_detail(payload: Mapping[str, Any]) -> str:
    kind = _text(payload.get("type"))
    level = _level_name(payload.get("level"))
    previous = _level_name(payload.get("previous_level"))
    if kind in (EventType.ESCALATED, EventType.DEESCALATED):
        return _change_text(kind, level, previous)
    if kind == EventType.LISTED:
        return f"listed at {level}" if level else "listed"
    if kind == EventType.DELISTED:
        return _delisted_text(payload, level, previous)
    if kind == EventType.UPDATED:
        return f"analysis updated ({level})" if level else "analysis updated"
    if kind == EventType.RETRACTED:
        return f"correction: event {_clean_line(_text(payload.get('retracts')))} is retracted"
    if kind == EventType.WEBHOOK_TEST:
        return "test event"
    return _clean_line(kind) or "event"


def entry_title(payload: Mapping[str, Any]) -> str:
    """A one-line title for an event, e.g. ``"Nagorno-Karabakh (Armenia/Azerbaijan): Serious
    Concern -> Imminent Risk"``. Unknown keys are ignored; missing ones never raise. An
    operator's announcement is marked ``[manual]``."""
    title = f"{_situation_name(payload)}: {_title_detail(payload)}"
    return f"[manual] {title}" if payload.get("manual") is True else title


# --------------------------------------------------------------------------- entries


@dataclass(frozen=True, slots=True, kw_only=True)
class _Entry:
    """One event, prepared once and shared by every feed it appears in."""

    id: str
    event_id: str
    title: str
    detected_at: datetime
    link: str | None
    summary: str
    content_text: str
    content_html: str
    categories: tuple[str, ...]
    situation: str
    situation_name: str
    scale: str
    top_rank: int | None
    """The higher rank of the event's level and previous level, on the event's scale."""
    payload: Mapping[str, Any]


def _parse_time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(_text(value))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _rank(value: Any, scale: Scale | None) -> int | None:
    """The rank of a payload level: the scale's rank for its id, else the payload's own."""
    level = _mapping(value)
    if not level:
        return None
    level_id = level.get("id")
    for known in scale.levels if scale else ():
        if known.id == level_id:
            return known.rank
    rank = level.get("rank")
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


def _top_rank(payload: Mapping[str, Any], scale: Scale | None) -> int | None:
    ranks = [
        r
        for r in (_rank(payload.get("level"), scale), _rank(payload.get("previous_level"), scale))
        if r is not None
    ]
    return max(ranks) if ranks else None


def _risk_factors(payload: Mapping[str, Any]) -> list[str]:
    factors = payload.get("risk_factors")
    if not isinstance(factors, Sequence) or isinstance(factors, str):
        return []
    return [line for line in (_clean_line(f) for f in factors if isinstance(f, str)) if line]


def _paragraphs(summary: str) -> list[str]:
    return [line for line in (_clean_line(p) for p in _PARAGRAPH_BREAK.split(summary)) if line]


def _source_name(payload: Mapping[str, Any]) -> str:
    source = _mapping(payload.get("source"))
    return _clean_line(_text(source.get("name")) or _text(source.get("id")))


def _content_html(
    title: str, paragraphs: list[str], factors: list[str], link: str | None, source: str
) -> str:
    parts = [f"<p>{_esc(p)}</p>" for p in paragraphs] or [f"<p>{_esc(title)}</p>"]
    if factors:
        items = "".join(f"<li>{_esc(f)}</li>" for f in factors)
        parts.append(f"<p>Risk factors:</p>\n<ul>{items}</ul>")
    if link:
        parts.append(f'<p>Source: <a href="{_esc(link)}">{_esc(source or link)}</a></p>')
    return "\n".join(parts)


def _content_text(title: str, paragraphs: list[str], factors: list[str], link: str | None) -> str:
    parts = ["\n\n".join(paragraphs) or title]
    if factors:
        parts.append("Risk factors:\n" + "\n".join(f"- {f}" for f in factors))
    if link:
        parts.append(f"Source: {link}")
    return "\n\n".join(parts)


def _categories(payload: Mapping[str, Any]) -> tuple[str, ...]:
    terms = (_text(payload.get("type")), _text(_mapping(payload.get("level")).get("id")))
    return tuple(t for t in (_clean_line(term) for term in terms) if t)


def _prepare(
    payload: Mapping[str, Any], scales: Mapping[str, Scale], settings: FeedSettings
) -> _Entry | None:
    """The entry for one payload, or None if it has no place in a feed."""
    if payload.get("type") == EventType.WEBHOOK_TEST:
        return None
    event_id = _clean_line(_text(payload.get("id")))
    detected_at = _parse_time(payload.get("detected_at"))
    if not event_id or detected_at is None:
        log.warning("feeds: skipping event without id or detected_at: %r", payload.get("id"))
        return None
    situation = _mapping(payload.get("situation"))
    scale_id = _text(payload.get("scale"))
    title = entry_title(payload)
    link = _safe_url(situation.get("url"))
    paragraphs = _paragraphs(_text(payload.get("summary")))
    factors = _risk_factors(payload)
    return _Entry(
        id=f"tag:{settings.entry_id_authority}:event:{event_id}",
        event_id=event_id,
        title=title,
        detected_at=detected_at,
        link=link,
        summary="\n\n".join(paragraphs),
        content_text=_content_text(title, paragraphs, factors, link),
        content_html=_content_html(title, paragraphs, factors, link, _source_name(payload)),
        categories=_categories(payload),
        situation=_text(situation.get("id")),
        situation_name=_situation_name(payload),
        scale=scale_id,
        top_rank=_top_rank(payload, scales.get(scale_id)),
        payload=payload,
    )


def _prepare_all(
    events: Sequence[Mapping[str, Any]], scales: Mapping[str, Scale], settings: FeedSettings
) -> list[_Entry]:
    """Entries for every event that belongs in feeds, newest first (detected_at, then id)."""
    entries: dict[str, _Entry] = {}
    for payload in events:
        entry = _prepare(payload, scales, settings)
        if entry is not None:
            entries.setdefault(entry.id, entry)
    return sorted(entries.values(), key=lambda e: (e.detected_at, e.event_id), reverse=True)


# --------------------------------------------------------------------------- feed specs


@dataclass(frozen=True, slots=True, kw_only=True)
class _Feed:
    """One feed to write: its path under out_dir (without suffix) and its entries."""

    path: str
    id: str
    title: str
    subtitle: str
    entries: list[_Entry]
    empty_since: datetime | None = None
    """For a feed without entries: when it was first written so (see :func:`build_feeds`)."""

    @property
    def updated(self) -> datetime:
        """The newest entry's date; for an empty feed, when it was first written empty."""
        if self.entries:
            return self.entries[0].detected_at
        if self.empty_since is None:
            raise ValueError(f"feed {self.path}: no entries and no empty_since")
        return self.empty_since


def _limited(entries: list[_Entry], settings: FeedSettings) -> list[_Entry]:
    return entries[: settings.max_entries]


def _global_feed(entries: list[_Entry], settings: FeedSettings) -> _Feed:
    return _Feed(
        path="alerts",
        id=_feed_id(settings, "alerts"),
        title=_clean_line(settings.title) or "warnsvc alerts",
        subtitle="Confirmed changes in risk assessments",
        entries=_limited(entries, settings),
    )


def _situation_feeds(entries: list[_Entry], settings: FeedSettings) -> list[_Feed]:
    by_situation: dict[str, list[_Entry]] = {}
    for entry in entries:
        by_situation.setdefault(entry.situation, []).append(entry)
    feeds = []
    for situation, members in sorted(by_situation.items()):
        if not _safe_file_stem(situation):
            log.warning("feeds: no situation feed for unsafe id %r", situation)
            continue
        feeds.append(
            _Feed(
                path=f"situations/{situation}",
                id=_feed_id(settings, f"situation:{situation}"),
                title=_clean_line(f"{settings.title}: {members[0].situation_name}"),
                subtitle=f"Confirmed changes for {members[0].situation_name}",
                entries=_limited(members, settings),
            )
        )
    return feeds


def _at_or_above(entry: _Entry, level_id: str, levels: Levels) -> bool:
    return levels.at_or_above(level_id, entry.scale, [entry.top_rank])


def _level_feeds(
    entries: list[_Entry], scales: Mapping[str, Scale], settings: FeedSettings
) -> list[_Feed]:
    feeds = []
    levels = Levels(scales)
    for level_id in sorted(levels):
        if not _safe_file_stem(level_id):
            log.warning("feeds: no level feed for unsafe level id %r", level_id)
            continue
        level = levels.level(level_id)
        name = level.name if level is not None else level_id
        feeds.append(
            _Feed(
                path=f"levels/{level_id}",
                id=_feed_id(settings, f"level:{level_id}"),
                title=_clean_line(f"{settings.title}: {name} and above"),
                subtitle=f"Changes to or from {name} or a higher level",
                entries=_limited(
                    [e for e in entries if _at_or_above(e, level_id, levels)], settings
                ),
            )
        )
    return feeds


# --------------------------------------------------------------------------- rendering


def _url(settings: FeedSettings, path: str) -> str:
    return settings.base_url.rstrip("/") + "/feeds/" + quote(path, safe="/:")


def _home_url(settings: FeedSettings) -> str:
    return settings.base_url.rstrip("/") + "/"


# Atom and RSS are written as text, element by element, the way lxml's pretty printer lays
# them out (two-space indents, one element per line, text inline), so that files written by
# earlier releases through feedgen keep their exact bytes (and their ETags) after an upgrade.
# Writing them directly spares the service lxml and feedgen (some 4 MB resident).

_XML_DECLARATION = "<?xml version='1.0' encoding='UTF-8'?>"
_ATOM_NS = "http://www.w3.org/2005/Atom"
_CONTENT_NS = "http://purl.org/rss/1.0/modules/content/"
_RSS_DOCS = "http://www.rssboard.org/rss-specification"
_GENERATOR = "warnsvc"
_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTRIBUTE_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;"}
    | {"\r": "&#13;"}
)


def _xml_text(text: str) -> str:
    """Character data, escaped as libxml2 escapes it."""
    return _clean(text).translate(_TEXT_ESCAPES)


def _xml_attributes(attributes: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f' {name}="{_clean(value).translate(_ATTRIBUTE_ESCAPES)}"' for name, value in attributes
    )


def _leaf(indent: str, name: str, text: str, *attributes: tuple[str, str]) -> str:
    return f"{indent}<{name}{_xml_attributes(attributes)}>{_xml_text(text)}</{name}>"


def _empty(indent: str, name: str, *attributes: tuple[str, str]) -> str:
    return f"{indent}<{name}{_xml_attributes(attributes)}/>"


def _document(lines: list[str]) -> bytes:
    return ("\n".join([_XML_DECLARATION, *lines]) + "\n").encode("utf-8")


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment)  # English names whatever the locale, as RSS wants


def _hub_links(indent: str, name: str, settings: FeedSettings) -> list[str]:
    """``<link rel="hub">`` when a WebSub hub is configured (see ``channels/websub.py``)."""
    return [_empty(indent, name, ("href", settings.hub), ("rel", "hub"))] if settings.hub else []


def _atom_bytes(feed: _Feed, settings: FeedSettings) -> bytes:
    self_url = _url(settings, feed.path + ".atom")
    lines = [
        f'<feed xmlns="{_ATOM_NS}">',
        _leaf("  ", "id", feed.id),
        _leaf("  ", "title", _clean(feed.title)),
        _leaf("  ", "updated", feed.updated.isoformat()),
        "  <author>",
        _leaf("    ", "name", _clean_line(settings.author) or "warnsvc"),
        "  </author>",
        _empty("  ", "link", ("href", self_url), ("rel", "self"), ("type", _ATOM_TYPE)),
        *_hub_links("  ", "link", settings),
        _empty("  ", "link", ("href", _home_url(settings)), ("rel", "alternate")),
        _leaf("  ", "generator", _GENERATOR),
    ]
    if feed.subtitle:
        lines.append(_leaf("  ", "subtitle", _clean(feed.subtitle)))
    for entry in feed.entries:
        lines += [
            "  <entry>",
            _leaf("    ", "id", entry.id),
            _leaf("    ", "title", entry.title),
            _leaf("    ", "updated", entry.detected_at.isoformat()),
            # no summary: the content (escaped HTML) serves as both, in RSS too
            _leaf("    ", "content", entry.content_html, ("type", "html")),
        ]
        if entry.link:
            lines.append(_empty("    ", "link", ("href", entry.link)))
        lines += [_empty("    ", "category", ("term", term)) for term in entry.categories]
        lines += [_leaf("    ", "published", entry.detected_at.isoformat()), "  </entry>"]
    return _document([*lines, "</feed>"])


def _rss_bytes(feed: _Feed, settings: FeedSettings) -> bytes:
    self_url = _url(settings, feed.path + ".rss")
    lines = [
        f'<rss xmlns:atom="{_ATOM_NS}" xmlns:content="{_CONTENT_NS}" version="2.0">',
        "  <channel>",
        _leaf("    ", "title", _clean(feed.title)),
        _leaf("    ", "link", _home_url(settings)),
        _leaf("    ", "description", _clean(feed.subtitle)),
        _empty("    ", "atom:link", ("href", self_url), ("rel", "self"), ("type", _RSS_TYPE)),
        *_hub_links("    ", "atom:link", settings),
        _leaf("    ", "docs", _RSS_DOCS),
        _leaf("    ", "generator", _GENERATOR),
        _leaf("    ", "lastBuildDate", _rfc2822(feed.updated)),
    ]
    for entry in feed.entries:
        lines += ["    <item>", _leaf("      ", "title", entry.title)]
        if entry.link:
            lines.append(_leaf("      ", "link", entry.link))
        lines += [
            _leaf("      ", "description", entry.content_html),
            _leaf("      ", "guid", entry.id, ("isPermaLink", "false")),
            *(_leaf("      ", "category", term) for term in entry.categories),
            _leaf("      ", "pubDate", _rfc2822(entry.detected_at)),
            "    </item>",
        ]
    return _document([*lines, "  </channel>", "</rss>"])


def _plain(value: Any) -> Any:
    """``value`` with every mapping turned into a dict and every sequence into a list."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _extension(entry: _Entry, settings: FeedSettings) -> dict[str, Any]:
    """The ``_warnsvc`` object: ``about`` (JSON Feed 1.1 asks extensions for one), then the
    event payload as the webhook body carries it."""
    about = settings.base_url.rstrip("/") + EXTENSION_DOCS_PATH
    payload = {k: v for k, v in _plain(entry.payload).items() if k != "about"}
    return {"about": about, **payload}


def _json_item(entry: _Entry, settings: FeedSettings) -> dict[str, Any]:
    item: dict[str, Any] = {"id": entry.id}
    if entry.link:
        item["url"] = entry.link
    item.update(
        title=entry.title,
        content_text=entry.content_text,
        content_html=entry.content_html,
        date_published=_iso(entry.detected_at),
        tags=list(entry.categories),
    )
    if entry.summary:
        item["summary"] = entry.summary
    item[EXTENSION_KEY] = _extension(entry, settings)
    return item


def _json_bytes(feed: _Feed, settings: FeedSettings) -> bytes:
    document = {
        "version": JSON_FEED_VERSION,
        "title": feed.title,
        "home_page_url": _home_url(settings),
        "feed_url": _url(settings, feed.path + ".json"),
        "description": feed.subtitle,
        "authors": [{"name": _clean_line(settings.author) or "warnsvc"}],
        **({"hubs": [{"type": "WebSub", "url": settings.hub}]} if settings.hub else {}),
        "items": [_json_item(entry, settings) for entry in feed.entries],
    }
    text = json.dumps(document, ensure_ascii=False, indent=2, default=str)
    return (text + "\n").encode("utf-8")


# --------------------------------------------------------------------------- writing


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` through a synced temp file in the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


_Renderer = Callable[[_Feed, FeedSettings], bytes]

_UPDATED_IN = {
    ".atom": (re.compile(rb"<updated>([^<]{1,64})</updated>"), datetime.fromisoformat),
    ".rss": (re.compile(rb"<lastBuildDate>([^<]{1,64})</lastBuildDate>"), parsedate_to_datetime),
}


def _written_updated(path: Path, old: bytes) -> datetime | None:
    """The feed-level date in a file written for an empty feed (it has no other date)."""
    found = _UPDATED_IN.get(path.suffix)
    match = found[0].search(old) if found else None
    if found is None or match is None:
        return None
    try:
        moment = found[1](match.group(1).decode("ascii"))
    except (ValueError, TypeError, UnicodeDecodeError):
        return None
    if moment.tzinfo is None or moment <= _PLACEHOLDER_DATE:
        return None
    return moment


def _render(
    path: Path,
    render: _Renderer,
    feed: _Feed,
    settings: FeedSettings,
    old: bytes | None,
    now: datetime,
) -> bytes:
    """The bytes of ``feed``; an empty feed keeps the date of the file it would not change."""
    if feed.entries:
        return render(feed, settings)
    previous = _written_updated(path, old) if old is not None else None
    if previous is not None:
        data = render(replace(feed, empty_since=previous), settings)
        if data == old:
            return data
    return render(replace(feed, empty_since=now), settings)


def _outputs(
    entries: list[_Entry], scales: Mapping[str, Scale], settings: FeedSettings
) -> list[tuple[str, _Renderer, _Feed]]:
    """Every file to write: (relative path, renderer, feed)."""
    alerts = _global_feed(entries, settings)
    outputs: list[tuple[str, _Renderer, _Feed]] = [
        ("alerts.atom", _atom_bytes, alerts),
        ("alerts.rss", _rss_bytes, alerts),
        ("alerts.json", _json_bytes, alerts),
    ]
    for feed in (*_situation_feeds(entries, settings), *_level_feeds(entries, scales, settings)):
        outputs.append((feed.path + ".atom", _atom_bytes, feed))
    return outputs


def feed_paths(
    payload: Mapping[str, Any], scales: Mapping[str, Scale], settings: FeedSettings
) -> list[str]:
    """The feed files (under ``out_dir``) an event appears in; their URLs: :func:`feed_url`."""
    entry = _prepare(payload, scales, settings)
    if entry is None:
        return []
    paths = ["alerts.atom", "alerts.rss", "alerts.json"]
    if _safe_file_stem(entry.situation):
        paths.append(f"situations/{entry.situation}.atom")
    levels = Levels(scales)
    for level_id in sorted(levels):
        if _safe_file_stem(level_id) and _at_or_above(entry, level_id, levels):
            paths.append(f"levels/{level_id}.atom")
    return paths


def feed_url(settings: FeedSettings, path: str) -> str:
    """The public URL of the feed file at ``path`` (its ``rel="self"`` link)."""
    return _url(settings, path)


def build_feeds(
    events: Sequence[Mapping[str, Any]],
    scales: Mapping[str, Scale],
    settings: FeedSettings,
    *,
    now: datetime | None = None,
) -> list[Path]:
    """Write every feed for ``events`` under ``settings.out_dir``; return the files that changed.

    ``events`` are event payloads in any order (newest first as they come from the events
    table); ``scales`` maps scale ids to scales and decides which level feeds exist. Files
    whose bytes would not change are left alone, so rebuilding is cheap and keeps mtimes.

    A feed's ``updated`` is its newest entry's ``detected_at``. A feed without entries has
    none, yet Atom requires the element (RFC 4287 4.1.1) and RSS readers use
    ``lastBuildDate``: it gets ``now`` (the current time by default) when it is first written
    empty or changes while empty, and keeps that date on later rebuilds that change nothing
    else, so an empty feed is as stable as any other.
    """
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    entries = _prepare_all(events, scales, settings)
    written = []
    for relative, render, feed in _outputs(entries, scales, settings):
        path = settings.out_dir / relative
        old = _read(path)
        data = _render(path, render, feed, settings, old, moment)
        if data != old:
            _write_atomically(path, data)
            written.append(path)
    if written:
        log.info("feeds: wrote %d file(s) under %s", len(written), settings.out_dir)
    return written


# --------------------------------------------------------------------------- the channel

FEEDS_CHANNEL = "feeds"
FEEDS_RECIPIENT = "files"
_HISTORY_LIMIT = 10_000


class EventSource(Protocol):
    async def recent_events(
        self,
        *,
        limit: int = 100,
        situation: str | None = None,
        exclude_types: Iterable[str] = (),
    ) -> list[dict[str, Any]]: ...


class FeedChannel(BaseChannel):
    """The feed builder as an outbox recipient: one rebuild covers a whole batch of events.

    Every event gets one ``feeds`` row; when rows are claimed the files are rebuilt from the
    stored events (the newest ``_HISTORY_LIMIT``), so a crash between the event and the rebuild
    only delays the feeds, and a rebuild is idempotent.
    """

    name = FEEDS_CHANNEL

    def __init__(
        self, events: EventSource, scales: Mapping[str, Scale], settings: FeedSettings
    ) -> None:
        self.events = events
        self.scales = scales
        self.settings = settings
        self.history = _HISTORY_LIMIT
        """How many of the newest events a rebuild reads."""
        self._rebuilding = asyncio.Lock()

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        return [] if event.type is EventType.WEBHOOK_TEST else [FEEDS_RECIPIENT]

    async def rebuild(self) -> list[Path]:
        # one at a time: a rebuild that read fewer events never writes over a newer one's files
        async with self._rebuilding:
            # partner test pings are in no feed: left out before the limit, so that many pings
            # never push real events out of the feeds
            payloads = await self.events.recent_events(
                limit=self.history, exclude_types=(EventType.WEBHOOK_TEST.value,)
            )
            return await asyncio.to_thread(build_feeds, payloads, self.scales, self.settings)

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        try:
            written = await self.rebuild()
        except OSError as exc:
            error = f"cannot write feeds under {self.settings.out_dir}: {exc}"
            return [Outcome(delivery_id=d.id, ok=False, error=error) for d in deliveries]
        log.info(
            "feeds rebuilt: %d files changed for %d events",
            len(written),
            len(deliveries),
            extra={"action": "feeds_rebuilt", "files": len(written)},
        )
        return [Outcome(delivery_id=d.id, ok=True) for d in deliveries]


# --------------------------------------------------------------------------- wiring


def feed_settings(settings: Settings) -> FeedSettings:
    return FeedSettings(
        out_dir=settings.feeds.dir,
        base_url=settings.service.base_url,
        title=settings.feeds.title,
        author=settings.service.name,
        max_entries=settings.feeds.max_entries,
        hub=settings.feeds.websub.hub if settings.feeds.websub is not None else None,
    )


class Feeds(Plugged):
    """The feed files, and the WebSub pings that announce them (``feeds.websub``): the
    ``websub`` channel routes nothing until a hub is set, also by a reload."""

    def __init__(self, feeds: FeedChannel, websub: WebSubChannel) -> None:
        super().__init__(feeds, websub)
        self.feeds = feeds
        self.websub = websub

    async def reconfigure(self, old: Settings, new: Settings) -> list[str]:
        self.feeds.scales = new.scale_map()
        self.feeds.settings = feed_settings(new)
        await self.websub.reconfigure(new)
        return []


async def build(settings: Settings, context: ChannelContext) -> Feeds:
    from warnsvc.channels.websub import build_websub

    feeds = FeedChannel(context.store, settings.scale_map(), feed_settings(settings))
    return Feeds(feeds, build_websub(settings, feeds, user_agent=context.user_agent))


KIND = ChannelKind(name=FEEDS_CHANNEL, build=build)
