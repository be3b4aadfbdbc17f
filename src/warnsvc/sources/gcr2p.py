"""Parsers of the GCR2P (Global Centre for the Responsibility to Protect) country pages and index.

Both parsers are pure functions of a page body, served as HTML or captured as plain text; both
read the page's *text structure* (its lines, see :mod:`warnsvc.sources.text`), never its CSS
classes, so a redesign of the site's markup does not break them.

Country pages, :func:`parse_country_page`
    *Current layout* (``/countries/<slug>/``): a title line (the situation, countries in
    brackets), the page date (``31 August 2023``, ``01 June 2022`` or ``June 1, 2022``), and
    ``Risk Level: <level>`` (any case and spacing; the level may stand on the next line). A
    short key figure may follow (``More than 10 million displaced since 24 February``), then the
    one-paragraph summary, then ``BACKGROUND:`` (standalone or glued to its text) and the rest.

    *Older layout* (``/regions/<slug>``): no date, a breadcrumb line
    ``Populations at Risk <level>`` (or ``... Previously Studied Situations``) above the title,
    which may be missing, then the summary.

    The risk factors are the bullet list (``•``, ``-``, ``*`` or ``<li>``) under a heading that
    mentions risk factors, else the first list of sentence-like items after the summary.
    A missing title line is made up for by the HTML ``<title>`` (``<name> - Global Centre for
    the Responsibility to Protect``), the caller's name hint, or the URL slug, in that order.

The index, :func:`parse_index_page` (``/populations-at-risk/``)
    Level headings (a line that is exactly a level name, or ``Previously Studied Situations``),
    each followed by situation blocks: an optional name heading, a one-paragraph blurb and a
    ``Continue Reading`` link to ``/countries/<slug>/``. In HTML a block is found by its link;
    in plain text by its ``Continue Reading`` line. A last blurb cut off by the end of a
    truncated capture still counts.

A level that the scale does not know raises :class:`~warnsvc.errors.UnknownLevelError` (never a
guess); a page without risk information raises :class:`~warnsvc.errors.NoRiskInformationError`.
No other exception escapes for any input.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from warnsvc.errors import NoRiskInformationError, PageGoneError, UnknownLevelError
from warnsvc.model import GCR2P_SCALE, Level, Observation, Scale, Status, normalize_name
from warnsvc.model import situation_id as make_situation_id
from warnsvc.sources.base import PageLoader, ParseMemo, Source, SourceInfo, SourceKind
from warnsvc.sources.text import Link, looks_like_html, render_html, text_to_lines
from warnsvc.sources.worker import DEFAULT_LIMITS, ParseLimits, limits_from_settings

log = logging.getLogger(__name__)

_NO_RISK_INFO = "no 'Risk Level:' line or level breadcrumb found"
_NO_SITUATIONS = "no situation listed under a level section"

_MONTHS = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"),
            ("may",), ("june", "jun"), ("july", "jul"), ("august", "aug"),
            ("september", "sep", "sept"), ("october", "oct"), ("november", "nov"),
            ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}  # fmt: skip
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE_PREFIX = (
    r"(?:(?:last\s+)?updated|published|posted|date)?\s*:?\s*"
    r"(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day,?\s+)?"
)
_DAY_FIRST = re.compile(rf"{_DATE_PREFIX}(\d{{1,2}})\s+({_MONTH})\.?,?\s+(\d{{4}})", re.I)
_ISO_DATE = re.compile(rf"{_DATE_PREFIX}(\d{{4}})-(\d{{1,2}})-(\d{{1,2}})", re.I)
_MONTH_FIRST = re.compile(
    rf"{_DATE_PREFIX}({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?,?\s+(\d{{4}})", re.I
)

_RISK_LINE = re.compile(
    r"(?P<before>.{0,40}?)\s*\brisk[\s_-]*level(?:\s*[:：]\s*|\s+[-–—]\s*|\s*$)(?P<level>.*)",
    re.I,
)
_BREADCRUMB = re.compile(
    r"(?:home\s*[»>/|›:]\s*)?populations\s*at\s*risk\s*[»>/|›:\-–—]*\s*(?P<rest>\S.*)", re.I
)
_CRUMB_SEPARATOR = re.compile(r"\s*[»>/|›]\s*")
_PREVIOUSLY_STUDIED = re.compile(r"previously studied(?: situations?)?")
_BULLET = re.compile(r"(?:[•·▪◦●‣∙]\s*|[-*–—]\s+)(?P<item>\S.*)")
_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_BRACKETED_TAIL = re.compile(r"\s*\([^()]*\)\s*$")
_SENTENCE_END = (".", "!", "?", ";", ",", ":", "…")
_SITUATION_PATH = re.compile(r"/(?:countries|regions|country|region)/(?P<slug>[^/?#]+)/?$", re.I)
_SLUG_PARENTS = frozenset({"countries", "regions", "country", "region"})
_SMALL_WORDS = frozenset({"and", "the", "of", "in", "for", "on", "at", "to", "a", "an"})
_TITLE_SEPARATOR = re.compile(r"\s+-\s+|\s*[|–—]\s*")
_PUBLISHER_MARKS = ("global centre", "global center", "responsibility to protect", "gcr2p")
_GENERIC_NAMES = frozenset(
    {"populations at risk", "home", "global r2p", "globalr2p", "share", "share this", "print"}
    | {"tweet", "email", "download", "download pdf", "menu", "search", "close", "back"}
    | {
        "facebook",
        "twitter",
        "linkedin",
        "share on facebook",
        "share on twitter",
        "skip to content",
    }
)
_READ_MORE = frozenset({"continue reading", "read more", "learn more", "more", "continue"})
_BODY_SECTIONS = (
    "background", "analysis", "necessary action", "risk assessment", "risk factor",
    "recent development", "key development", "international response", "timeline",
)  # fmt: skip
_GLUED_LABEL = re.compile(r"(?P<label>[^\W\d_][^\W\d_ '&/-]*(?:[ '&/-]+[^\W\d_]+){0,4})\s*:\s*\S")
_INLINE_SECTION = re.compile(
    r"(?<=[.!?\"”’)])\s*(?:BACKGROUND|ANALYSIS|NECESSARY ACTION|ATROCITY RISK ASSESSMENT|"
    r"RISK FACTORS|RECENT DEVELOPMENTS|KEY DEVELOPMENTS|INTERNATIONAL RESPONSE)\s*:.*$"
)
_NUMBER_WORDS = ("million", "thousand", "hundred", "billion")
_LINK_RUN_GAP = 6
"""Links to the same page at most this many lines apart belong to the same block."""


# --------------------------------------------------------------------------- public API


def parse_country_page(
    body: str,
    *,
    url: str | None = None,
    content_type: str | None = None,
    scale: Scale = GCR2P_SCALE,
    namespace: str = "gcr2p",
    name_hint: str | None = None,
) -> Observation:
    """The observation a GCR2P country page carries (see the module docstring).

    Raises NoRiskInformationError when the page has no risk line, no level breadcrumb and no
    status; UnknownLevelError when its level is not on ``scale``.
    """
    context = _Context(url=url, scale=scale, namespace=namespace, name_hint=name_hint)
    if not looks_like_html(body, content_type):
        return _country_from_lines(text_to_lines(body), context)
    rendered = render_html(body, prefer_main=True)
    context = replace(context, html_title=rendered.title)
    try:
        return _country_from_lines(rendered.lines, context)
    except NoRiskInformationError:
        if not rendered.used_main:
            raise
    return _country_from_lines(render_html(body, prefer_main=False).lines, context)


def parse_index_page(
    body: str,
    *,
    url: str | None = None,
    content_type: str | None = None,
    scale: Scale = GCR2P_SCALE,
    namespace: str = "gcr2p",
) -> list[Observation]:
    """Every situation the populations-at-risk index lists, with its level, in page order.

    Raises NoRiskInformationError when no situation stands under a level section, and
    UnknownLevelError never (a line that is not a level is simply not a section heading).
    """
    context = _Context(url=url, scale=scale, namespace=namespace)
    if not looks_like_html(body, content_type):
        return _index_from_lines(text_to_lines(body), None, context)
    rendered = render_html(body, prefer_main=True)
    try:
        return _index_from_lines(rendered.lines, rendered.links, context)
    except NoRiskInformationError:
        if not rendered.used_main:
            raise
    whole = render_html(body, prefer_main=False)
    return _index_from_lines(whole.lines, whole.links, context)


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True, slots=True, kw_only=True)
class _Context:
    url: str | None
    scale: Scale
    namespace: str
    name_hint: str | None = None
    html_title: str | None = None


def _words(line: str) -> int:
    return len(_WORD.findall(line))


def _level_or_status(text: str, scale: Scale) -> tuple[Level | None, Status] | None:
    """The level (or previously-studied status) ``text`` names, or None if it names none."""
    folded = normalize_name(text)
    if not folded:
        return None
    if _PREVIOUSLY_STUDIED.fullmatch(folded):
        return None, Status.PREVIOUSLY_STUDIED
    level = scale.find(text) or scale.find(_BRACKETED_TAIL.sub("", text))
    return (level, Status.ASSESSED) if level is not None else None


def _require_level(text: str, scale: Scale) -> tuple[Level | None, Status]:
    found = _level_or_status(text, scale)
    if found is None:
        clipped = text.strip() if len(text) <= 80 else text[:77].rstrip() + "..."
        raise UnknownLevelError(clipped, scale.id, [level.name for level in scale.levels])
    return found


def _parse_date(line: str) -> date | None:
    """The date a line consists of (``1 June 2022``, ``June 1, 2022`` ...), or None."""
    text = line.strip()
    if len(text) > 40:
        return None
    if match := _DAY_FIRST.fullmatch(text):
        day, month, year = match.group(1), _MONTHS[match.group(2).lower()], match.group(3)
    elif match := _MONTH_FIRST.fullmatch(text):
        month, day, year = _MONTHS[match.group(1).lower()], match.group(2), match.group(3)
    elif match := _ISO_DATE.fullmatch(text):
        year, month, day = match.group(1), int(match.group(2)), match.group(3)
    else:
        return None
    try:
        return date(int(year), month, int(day))
    except ValueError:
        return None


def _looks_like_date(line: str) -> bool:
    """A date line, even an impossible one (``31 February 2023``)."""
    text = line.strip()
    return any(p.fullmatch(text) for p in (_DAY_FIRST, _MONTH_FIRST, _ISO_DATE))


def _bullet_item(line: str) -> str | None:
    match = _BULLET.fullmatch(line)
    return match.group("item").strip() if match else None


def _is_read_more(line: str) -> bool:
    return normalize_name(line) in _READ_MORE


def _is_title_like(line: str, scale: Scale) -> bool:
    """A short line without sentence-final punctuation that is not a level or a date."""
    text = line.strip()
    if not text or len(text) > 150 or _words(text) == 0 or _words(text) > 15:
        return False
    if text.endswith(_SENTENCE_END) or _bullet_item(text) is not None or _is_read_more(text):
        return False
    if not any(c.isalpha() for c in text) or _looks_like_date(text):
        return False
    folded = normalize_name(text)
    if folded in _GENERIC_NAMES or any(mark in folded for mark in _PUBLISHER_MARKS):
        return False
    if _risk_line(text) is not None:
        return False
    return _level_or_status(text, scale) is None


def _is_paragraph(line: str) -> bool:
    """A sentence-like line: six words or more, or three or more ending like a sentence."""
    words = _words(line)
    return words >= 6 or (words >= 3 and line.rstrip().endswith((".", "!", "?")))


def _is_body_section(label: str) -> bool:
    folded = normalize_name(label)
    return any(section in folded for section in _BODY_SECTIONS)


def _is_heading(line: str) -> bool:
    """A standalone heading line: ``BACKGROUND:``, ``NECESSARY ACTION``, ``Analysis`` ..."""
    text = line.strip()
    words = _words(text)
    if words == 0 or words > 8:
        return False
    letters = [c for c in text if c.isalpha()]
    return text.endswith(":") or (len(letters) >= 3 and text.upper() == text)


def _opens_body_section(line: str) -> bool:
    """A heading of the page body (background, analysis ...), standalone or glued to its text."""
    if _is_heading(line) and _is_body_section(line):
        return True
    glued = _GLUED_LABEL.match(line)
    return glued is not None and _is_body_section(glued.group("label"))


def _next_nonblank(lines: Sequence[str], start: int, limit: int | None = None) -> int | None:
    stop = len(lines) if limit is None else min(len(lines), limit)
    for index in range(max(start, 0), stop):
        if lines[index]:
            return index
    return None


def _previous_nonblank(lines: Sequence[str], before: int) -> int | None:
    for index in range(min(before, len(lines)) - 1, -1, -1):
        if lines[index]:
            return index
    return None


def _name_from_html_title(title: str | None) -> str | None:
    """``<name> - Global Centre for the Responsibility to Protect`` -> ``<name>``."""
    if not title:
        return None
    parts = [part.strip() for part in _TITLE_SEPARATOR.split(title) if part.strip()]
    publisher = [p for p in parts if any(m in normalize_name(p) for m in _PUBLISHER_MARKS)]
    rest = [p for p in parts if p not in publisher and normalize_name(p) not in _GENERIC_NAMES]
    if not publisher or not rest:
        return None
    return " - ".join(rest)


def _name_from_url(url: str | None) -> str | None:
    """``/countries/ukraine/`` -> ``Ukraine``; ``/regions/south_sudan`` -> ``South Sudan``."""
    try:
        path = urlsplit(url or "").path
    except ValueError:
        return None
    segments = [unquote(segment) for segment in path.split("/") if segment]
    for parent, slug in itertools.pairwise(segments):
        if parent.lower() in _SLUG_PARENTS:
            return _name_from_slug(slug)
    return None


def _name_from_slug(slug: str) -> str | None:
    stem = re.sub(r"\.(?:html?|php|aspx?)$", "", slug, flags=re.I)
    words = [word for word in re.split(r"[-_+\s]+", stem) if word]
    named = [
        word.lower() if index and word.lower() in _SMALL_WORDS else word[:1].upper() + word[1:]
        for index, word in enumerate(words)
    ]
    return " ".join(named) or None


def _observation(
    context: _Context,
    name: str | None,
    found: tuple[Level | None, Status],
    *,
    url: str | None,
    summary: str,
    page_date: date | None = None,
    risk_factors: tuple[str, ...] = (),
    key_figure: str | None = None,
) -> Observation:
    level, status = found
    return Observation(
        situation=_situation_id(context.namespace, name, url),
        name=name,
        level=level.id if level else None,
        status=status,
        date=page_date,
        url=url,
        summary=summary,
        risk_factors=risk_factors,
        key_figure=key_figure,
    )


def _situation_id(namespace: str, name: str | None, url: str | None) -> str | None:
    """The id of a named situation; a name without any ASCII letter or digit (which would
    give an empty slug) is keyed on the URL's slug instead, or on nothing."""
    for candidate in (name, _name_from_url(url) if name else None):
        if candidate:
            situation = make_situation_id(namespace, candidate)
            if not situation.endswith(":"):
                return situation
    return None


# --------------------------------------------------------------------------- country pages


@dataclass(frozen=True, slots=True)
class _Header:
    """What the top of a country page says: level or status, title line, date, where the
    body starts, and whether a key figure may follow (current layout only)."""

    found: tuple[Level | None, Status]
    title: str | None
    date: date | None
    body_start: int
    current_layout: bool


def _country_from_lines(lines: list[str], context: _Context) -> Observation:
    header = _current_header(lines, context.scale) or _old_header(lines, context.scale)
    if header is None:
        raise NoRiskInformationError(_NO_RISK_INFO)
    key_figure, summary, summary_at = _lead(lines, header)
    name = (
        header.title
        or _name_from_html_title(context.html_title)
        or (context.name_hint or "").strip()
        or _name_from_url(context.url)
    )
    return _observation(
        context,
        name,
        header.found,
        page_date=header.date,
        url=context.url,
        summary=summary,
        risk_factors=_risk_factors(lines, summary_at),
        key_figure=key_figure,
    )


def _risk_line(line: str) -> re.Match[str] | None:
    """``Risk Level: <level>``, alone or after the page date (``5 April 2022 Risk Level: ...``)."""
    match = _RISK_LINE.fullmatch(line)
    if match is None or (match.group("before") and not _looks_like_date(match.group("before"))):
        return None
    return match


def _current_header(lines: list[str], scale: Scale) -> _Header | None:
    """The header around a ``Risk Level: <level>`` line, if the page has one."""
    for index, line in enumerate(lines):
        match = _risk_line(line)
        if match is None:
            continue
        level_text, level_at = match.group("level").strip(), index
        if not level_text:
            following = _next_nonblank(lines, index + 1)
            if following is None:
                raise NoRiskInformationError("'Risk Level:' line without a level")
            level_text, level_at = lines[following], following
        found = _require_level(level_text, scale)
        if match.group("before"):
            title = _title_above(lines, index, scale)
            page_date = _parse_date(match.group("before"))
            return _Header(found, title, page_date, level_at + 1, current_layout=True)
        return _header_around(lines, index, level_at + 1, found, scale)
    return None


def _header_around(
    lines: list[str], risk_at: int, after: int, found: tuple[Level | None, Status], scale: Scale
) -> _Header:
    """Date and title near the risk line: date just before (or just after) it, title above."""
    date_at = _date_line(lines, risk_at, backwards=True)
    body_start = after
    if date_at is None:
        date_at = _date_line(lines, after, backwards=False)
        body_start = after if date_at is None else date_at + 1
        title_anchor = risk_at
    else:
        title_anchor = date_at
    page_date = _parse_date(lines[date_at]) if date_at is not None else None
    title = _title_above(lines, title_anchor, scale)
    return _Header(found, title, page_date, body_start, current_layout=True)


def _title_above(lines: list[str], index: int, scale: Scale) -> str | None:
    """The non-blank line above ``index``, if it looks like a title."""
    title_at = _previous_nonblank(lines, index)
    if title_at is None or not _is_title_like(lines[title_at], scale):
        return None
    return lines[title_at]


def _date_line(lines: list[str], start: int, *, backwards: bool, reach: int = 3) -> int | None:
    """The index of a date line among the ``reach`` non-blank lines before/after ``start``."""
    seen = 0
    index = start - 1 if backwards else start
    while 0 <= index < len(lines) and seen < reach:
        if lines[index]:
            if _parse_date(lines[index]) is not None:
                return index
            seen += 1
        index += -1 if backwards else 1
    return None


def _old_header(lines: list[str], scale: Scale) -> _Header | None:
    """The header of the older layout: ``Populations at Risk <level>``, then the title."""
    for index, line in enumerate(lines):
        found = _breadcrumb_level(line, scale)
        if found is None:
            continue
        body_start = index + 1
        title: str | None = None
        title_at = _next_nonblank(lines, index + 1)
        if title_at is not None and _is_title_like(lines[title_at], scale):
            title, body_start = lines[title_at], title_at + 1
        date_at = _date_line(lines, body_start, backwards=False, reach=2)
        page_date = _parse_date(lines[date_at]) if date_at is not None else None
        body_start = body_start if date_at is None else date_at + 1
        return _Header(found, title, page_date, body_start, current_layout=False)
    return None


def _breadcrumb_level(line: str, scale: Scale) -> tuple[Level | None, Status] | None:
    """The level of a breadcrumb line ``Populations at Risk [»] <level> [» <title>]``."""
    match = _BREADCRUMB.fullmatch(line)
    if match is None:
        return None
    rest = match.group("rest").strip()
    found = _level_or_status(rest, scale)
    if found is None and _CRUMB_SEPARATOR.search(rest):
        first = _CRUMB_SEPARATOR.split(rest, maxsplit=1)[0]
        found = _level_or_status(first, scale)
    return found


def _lead(lines: list[str], header: _Header) -> tuple[str | None, str, int]:
    """Key figure, summary, and the index the summary was found at (the header's end if none).

    The summary is the first sentence-like line after the header; short lines before it
    (share buttons ...) are skipped, and a heading of the page body ends the search.
    """
    key_figure: str | None = None
    first = True
    for index in range(header.body_start, len(lines)):
        line = lines[index]
        if not line or _parse_date(line) is not None:
            continue
        if _opens_body_section(line):
            break
        if first and header.current_layout and _is_key_figure(lines, index):
            key_figure = line
        elif _is_paragraph(line) and not _is_heading(line) and _bullet_item(line) is None:
            return key_figure, _INLINE_SECTION.sub("", line).strip(), index
        first = False
    return key_figure, "", header.body_start


def _is_key_figure(lines: list[str], index: int) -> bool:
    """A short figure line (``More than 10 million displaced ...``) followed by a paragraph."""
    line = lines[index]
    if len(line) > 160 or _words(line) > 20 or line.endswith(_SENTENCE_END):
        return False
    if not (any(c.isdigit() for c in line) or any(w in line.lower() for w in _NUMBER_WORDS)):
        return False
    following = _next_nonblank(lines, index + 1)
    return following is not None and _is_paragraph(lines[following])


def _risk_factors(lines: list[str], after: int) -> tuple[str, ...]:
    """The list under a risk-factor heading, else the first sentence-like list after ``after``."""
    for index, line in enumerate(lines):
        if _is_risk_factor_heading(line):
            items, _ = _bullet_run(lines, index + 1, skip=2)
            if items:
                return items
    index = after + 1
    while index < len(lines):
        items, end = _bullet_run(lines, index, skip=len(lines))
        if not items:
            return ()
        if all(_words(item) >= 3 for item in items):
            return items
        index = end
    return ()


def _is_risk_factor_heading(line: str) -> bool:
    """A short heading (not a list item, not a sentence) naming risk factors."""
    if _words(line) > 8 or _bullet_item(line) is not None or line.endswith((".", "!", "?")):
        return False
    folded = normalize_name(line)
    return "risk factor" in folded or "atrocity risk assessment" in folded


def _bullet_run(lines: list[str], start: int, *, skip: int) -> tuple[tuple[str, ...], int]:
    """The items of the first run of bullet lines from ``start``, skipping at most ``skip``
    non-bullet lines before it; blank lines inside the run are allowed. Also the end index."""
    items: list[str] = []
    index = start
    while index < len(lines):
        line = lines[index]
        item = _bullet_item(line) if line else None
        if item is not None:
            items.append(item)
        elif line and items:
            break
        elif line:
            skip -= 1
            if skip < 0:
                break
        index += 1
    return tuple(items), index


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True, slots=True)
class _Anchor:
    """What marks a situation block: its link lines (HTML) or its ``Continue Reading`` line.

    ``tail`` anchors close their block (``Continue Reading``); the others open it (a link on
    the situation's name, with the blurb below).
    """

    start: int
    end: int
    tail: bool
    url: str | None = None
    texts: tuple[str, ...] = ()
    titles: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Card:
    name: str | None
    url: str | None
    summary: str
    found: tuple[Level | None, Status]


def _index_from_lines(
    lines: list[str], links: list[Link] | None, context: _Context
) -> list[Observation]:
    sections = _sections(lines, context.scale)
    anchors = _text_anchors(lines)
    if links is not None:
        link_anchors = _link_anchors(links, context.url)
        anchors = _merge_anchors(link_anchors, anchors)
    cards = _cards(lines, anchors, sections, context.scale)
    if not cards:
        raise NoRiskInformationError(_NO_SITUATIONS)
    return [
        _observation(context, card.name, card.found, url=card.url, summary=card.summary)
        for card in _dedupe(cards)
    ]


def _sections(lines: list[str], scale: Scale) -> list[tuple[int, tuple[Level | None, Status]]]:
    """Level headings: lines that are exactly a level name or ``Previously Studied ...``."""
    sections: list[tuple[int, tuple[Level | None, Status]]] = []
    for index, line in enumerate(lines):
        if line and _words(line) <= 6 and _bullet_item(line) is None:
            found = _level_or_status(line, scale)
            if found is not None:
                sections.append((index, found))
    return sections


def _text_anchors(lines: list[str]) -> list[_Anchor]:
    return [_Anchor(i, i, tail=True) for i, line in enumerate(lines) if _is_read_more(line)]


def _link_anchors(links: list[Link], base: str | None) -> list[_Anchor]:
    """Runs of consecutive situation links to the same page, one anchor per run."""
    anchors: list[_Anchor] = []
    previous_key: str | None = None
    for link in links:
        target = _situation_target(link, base)
        if target is None:
            continue
        absolute, key = target
        if anchors and key == previous_key and link.line - anchors[-1].end <= _LINK_RUN_GAP:
            anchors[-1] = _extend_anchor(anchors[-1], link, absolute)
        else:
            anchors.append(_extend_anchor(None, link, absolute))
        previous_key = key
    return anchors


def _extend_anchor(anchor: _Anchor | None, link: Link, absolute: str) -> _Anchor:
    tail = _is_read_more(link.text)
    if anchor is None:
        return _Anchor(link.line, link.end_line, tail, absolute, (link.text,), (link.title or "",))
    url = anchor.url
    if _SITUATION_PATH.search(urlsplit(absolute).path) and not _is_situation_url(anchor.url):
        url = absolute
    return _Anchor(
        min(anchor.start, link.line),
        max(anchor.end, link.end_line),
        anchor.tail or tail,
        url,
        (*anchor.texts, link.text),
        (*anchor.titles, link.title or ""),
    )


def _is_situation_url(url: str | None) -> bool:
    try:
        return url is not None and _SITUATION_PATH.search(urlsplit(url).path) is not None
    except ValueError:
        return False


def _situation_target(link: Link, base: str | None) -> tuple[str, str] | None:
    """The absolute URL of a situation link and its comparison key, or None for other links.

    A situation link points to ``/countries/<slug>`` or ``/regions/<slug>``, or is a
    ``Continue Reading`` link to any page.
    """
    href = link.href
    if (
        not href
        or href.startswith("#")
        or href.lower().startswith(("javascript:", "mailto:", "tel:"))
    ):
        return None
    try:
        absolute = urljoin(base, href) if base else href
        parts = urlsplit(absolute)
    except ValueError:
        return None
    if _SITUATION_PATH.search(parts.path) is None and not _is_read_more(link.text):
        return None
    return absolute, _url_key(absolute)


def _url_key(url: str) -> str:
    """A URL for comparison: host without ``www.`` and path without trailing slash, any case."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    return f"{parts.netloc.lower().removeprefix('www.')}{parts.path.rstrip('/').lower()}"


def _merge_anchors(link_anchors: list[_Anchor], text_anchors: list[_Anchor]) -> list[_Anchor]:
    """Link anchors, plus ``Continue Reading`` lines that no link covers, in line order."""
    covered = {line for a in link_anchors for line in range(a.start, a.end + 1)}
    extra = [a for a in text_anchors if a.start not in covered]
    return sorted([*link_anchors, *extra], key=lambda anchor: (anchor.start, anchor.end))


def _cards(
    lines: list[str],
    anchors: list[_Anchor],
    sections: list[tuple[int, tuple[Level | None, Status]]],
    scale: Scale,
) -> list[_Card]:
    """One card per anchor under a level section, plus a truncated last blurb."""
    heading_at = [index for index, _ in sections]
    cards: list[_Card] = []
    previous_end = -1
    for position, anchor in enumerate(anchors):
        section = bisect.bisect_left(heading_at, anchor.start) - 1
        if section < 0:
            previous_end = max(previous_end, anchor.end)
            continue
        start, end = _block_bounds(anchor, anchors[position + 1 :], heading_at, previous_end)
        start = max(start, heading_at[section] + 1)
        name, summary = _block_text(lines, start, end, anchor, scale)
        cards.append(_Card(name, anchor.url, summary, sections[section][1]))
        previous_end = max(previous_end, min(end, len(lines) - 1))
    trailing = _truncated_card(lines, previous_end, heading_at, sections, scale)
    return [*cards, trailing] if trailing else cards


def _block_bounds(
    anchor: _Anchor, following: Sequence[_Anchor], heading_at: list[int], previous_end: int
) -> tuple[int, int]:
    """The lines of an anchor's block: a tail anchor closes the block that runs from the end
    of the previous one; another opens a block that runs to the next anchor or heading."""
    if anchor.tail:
        return previous_end + 1, anchor.end
    next_heading = bisect.bisect_right(heading_at, anchor.end)
    end = heading_at[next_heading] - 1 if next_heading < len(heading_at) else anchor.end + 10**9
    if following:
        nxt = following[0]
        end = min(end, anchor.end if nxt.tail else nxt.start - 1)
    return anchor.start, max(anchor.start, end)


def _block_text(
    lines: list[str], start: int, end: int, anchor: _Anchor, scale: Scale
) -> tuple[str | None, str]:
    """The name and blurb of a block, from its lines, then its link."""
    stop = min(end, len(lines) - 1)
    content = [i for i in range(start, stop + 1) if lines[i] and not _is_read_more(lines[i])]
    heading, blurb = _heading_and_blurb(lines, content, anchor, scale)
    name = heading or _name_from_anchor(anchor, scale)
    return name, blurb


def _heading_and_blurb(
    lines: list[str], content: list[int], anchor: _Anchor, scale: Scale
) -> tuple[str | None, str]:
    """Closing blocks: the last paragraph, and the title line right above it. Opening blocks:
    the first title line, and the paragraph right below it (none for a list item, whose next
    line is the next item or whatever follows the list). Date lines in between are skipped."""
    if anchor.tail:
        paragraphs = [
            i for i in content if _is_paragraph(lines[i]) and not _is_title_like(lines[i], scale)
        ]
        blurb_at = paragraphs[-1] if paragraphs else None
        before = content[: content.index(blurb_at)] if blurb_at is not None else content
        heading_at = _adjacent(lines, reversed(before), scale, want_title=True)
    else:
        titles = [i for i in content if _is_title_like(_strip_bullet(lines[i]), scale)]
        heading_at = titles[0] if titles else None
        after = content[content.index(heading_at) + 1 :] if heading_at is not None else content
        listed = heading_at is not None and _bullet_item(lines[heading_at]) is not None
        blurb_at = None if listed else _adjacent(lines, iter(after), scale, want_title=False)
    heading = _strip_bullet(lines[heading_at]) if heading_at is not None else None
    return heading, lines[blurb_at] if blurb_at is not None else ""


def _adjacent(
    lines: list[str], candidates: Iterator[int], scale: Scale, *, want_title: bool
) -> int | None:
    """The first candidate line that is not a date, if it is a title (or a paragraph)."""
    for index in candidates:
        line = lines[index]
        if _looks_like_date(line):
            continue
        if want_title:
            return index if _is_title_like(_strip_bullet(line), scale) else None
        paragraph = _is_paragraph(line) and _bullet_item(line) is None
        return index if paragraph and not _is_title_like(line, scale) else None
    return None


def _strip_bullet(line: str) -> str:
    item = _bullet_item(line)
    return item if item is not None else line


def _name_from_anchor(anchor: _Anchor, scale: Scale) -> str | None:
    """The link text (unless ``Continue Reading``), else its title, else the URL slug."""
    for candidate in (*anchor.texts, *anchor.titles):
        if candidate and _is_title_like(candidate, scale):
            return candidate
    return _name_from_url(anchor.url)


def _truncated_card(
    lines: list[str],
    previous_end: int,
    heading_at: list[int],
    sections: list[tuple[int, tuple[Level | None, Status]]],
    scale: Scale,
) -> _Card | None:
    """A blurb cut off by the end of a truncated capture, after the last block of a section."""
    last = _previous_nonblank(lines, len(lines))
    if last is None or last <= previous_end or not _is_paragraph(lines[last]):
        return None
    if lines[last].endswith((".", "!", "?", '"', "”", ")")):
        return None
    section = bisect.bisect_left(heading_at, last) - 1
    if section < 0:
        return None
    start = max(previous_end, heading_at[section]) + 1
    above = (i for i in range(last - 1, start - 1, -1) if lines[i])
    name_at = _adjacent(lines, above, scale, want_title=True)
    name = lines[name_at] if name_at is not None else None
    return _Card(name, None, lines[last], sections[section][1])


def _dedupe(cards: list[_Card]) -> list[_Card]:
    """One card per URL: the first with a blurb, else the first; page order is kept."""
    chosen: dict[str, _Card] = {}
    for card in cards:
        if card.url is None:
            continue
        key = _url_key(card.url)
        kept = chosen.get(key)
        if kept is None or (not kept.summary and card.summary):
            chosen[key] = card
    keep = {id(card) for card in chosen.values()}
    return [card for card in cards if card.url is None or id(card) in keep]


# -- polling sources ---------------------------------------------------------------------------


class CountryPageSource:
    """One GCR2P country page, polled on its own. Not authoritative: its page going missing
    delists nothing; the page saying "Previously Studied Situations" delists its situation.

    A page without a title is named after the configured address, not the one a redirect ends
    at, so the site renaming the page's slug does not make it another situation.
    """

    def __init__(
        self, info: SourceInfo, loader: PageLoader, url: str, limits: ParseLimits = DEFAULT_LIMITS
    ) -> None:
        self.info = info
        self.loader = loader
        self.url = url
        self.name_hint = _name_from_url(url)
        self.limits = limits
        self.memo = ParseMemo()

    async def poll(self) -> list[Observation]:
        page = await self.loader.load(self.url)
        observation = await self.memo.read(
            page, parse_country_page, info=self.info, limits=self.limits, name_hint=self.name_hint
        )
        return [observation]


class IndexSource:
    """The populations-at-risk index, optionally followed into each country page.

    The index is authoritative: its sections give every situation's level or status, and a
    situation missing from it is delisted. With ``follow_pages``, each listed page adds its
    date, summary and risk factors; a page that cannot be read fails the whole poll, so a
    half-read index never looks like a change. The exception is a page the server says is gone
    (404/410): a stable dead link, so the index entry is used without the page's details.
    """

    def __init__(
        self,
        info: SourceInfo,
        loader: PageLoader,
        url: str,
        *,
        follow_pages: bool,
        page_delay: float,
        limits: ParseLimits = DEFAULT_LIMITS,
    ) -> None:
        self.info = info
        self.loader = loader
        self.url = url
        self.follow_pages = follow_pages
        self.page_delay = page_delay
        self.limits = limits
        self.memo = ParseMemo()

    async def poll(self) -> list[Observation]:
        page = await self.loader.load(self.url)
        listed = list(
            await self.memo.read(page, parse_index_page, info=self.info, limits=self.limits)
        )
        if not self.follow_pages:
            return listed
        merged: list[Observation] = []
        for position, entry in enumerate(listed):
            if entry.url is None:
                merged.append(entry)
                continue
            if position and self.page_delay > 0:
                await asyncio.sleep(self.page_delay)
            merged.append(await self._follow(entry, entry.url))
        self.memo.sweep()
        return merged

    async def _follow(self, entry: Observation, url: str) -> Observation:
        try:
            page = await self.loader.load(url)
        except PageGoneError as exc:
            # A dead link is a stable state of the site, not a glitch: the index still says
            # the level, so keep it (without the page's details) rather than stop alerting.
            log.warning(
                "country page of %s is gone (%s); using the index entry alone",
                entry.situation,
                exc,
                extra={
                    "action": "page_gone",
                    "source": self.info.id,
                    "situation": entry.situation,
                    "url": url,
                },
            )
            return entry
        try:
            detail: Observation = await self.memo.read(
                page,
                parse_country_page,
                info=self.info,
                limits=self.limits,
                url=url,
                also=entry.name,
                name_hint=entry.name,
            )
        except NoRiskInformationError:
            if entry.status is Status.ASSESSED:
                raise
            # A previously studied situation's page may print no level: the index has said it.
            return entry
        if detail.level is not None and detail.level != entry.level:
            log.info(
                "index and page disagree on %s: %s vs %s; the index decides",
                entry.situation,
                entry.level,
                detail.level,
                extra={
                    "action": "level_disagreement",
                    "source": self.info.id,
                    "situation": entry.situation,
                },
            )
        name = entry.name or detail.name
        return replace(
            detail,
            situation=make_situation_id(self.info.namespace, name) if name else None,
            name=name,
            level=entry.level,
            status=entry.status,
            url=url,
        )


def _parse_page_list(
    body: str, *, url: str | None, content_type: str | None, scale: Scale, namespace: str
) -> list[Observation]:
    return [
        parse_country_page(
            body, url=url, content_type=content_type, scale=scale, namespace=namespace
        )
    ]


def _build_page(settings: Any, info: SourceInfo, loader: PageLoader) -> Source:
    return CountryPageSource(
        replace(info, authoritative=False),
        loader,
        str(settings.url),
        limits_from_settings(settings),
    )


def _build_index(settings: Any, info: SourceInfo, loader: PageLoader) -> Source:
    return IndexSource(
        info,
        loader,
        str(settings.url),
        follow_pages=bool(settings.follow_pages),
        page_delay=float(settings.page_delay),
        limits=limits_from_settings(settings),
    )


PAGE_KIND = SourceKind(
    kind="gcr2p-page",
    description="one GCR2P country page (title, date, risk level, summary, risk factors)",
    default_namespace="gcr2p",
    parse=_parse_page_list,
    build=_build_page,
)

INDEX_KIND = SourceKind(
    kind="gcr2p-index",
    description="the GCR2P populations-at-risk index: every listed situation and its level",
    default_namespace="gcr2p",
    parse=parse_index_page,
    build=_build_index,
)
