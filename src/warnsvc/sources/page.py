"""The ``page`` kind: any HTML page, read with CSS selectors (selectolax) or regular expressions.

:class:`PageRules` say where each value is: a CSS selector (its first match inside the block;
the element's text, or one of its attributes), a regular expression over the block's text, or
both (the regex then narrows the selected text). The value is the regex's ``value`` group, else
its first group, else the whole match.

* Without ``block``, the page is one situation.
* With ``block`` (a CSS selector such as ``article.alert``), every matching element is one
  situation, and the other selectors are looked for inside it.

``title`` and ``level`` are required; ``date``, ``summary``, ``id`` and ``link`` are optional.
The situation is keyed on ``id`` when given, else on the title (``page-src:mali``). The link
defaults to the block's first ``<a href>`` (made absolute), or the page's own URL.

A selector that matches nothing is never silent: on a one-situation page, or in every block,
it fails the poll (:class:`~warnsvc.errors.NoRiskInformationError`, naming the selector), so
the source turns unhealthy; in some blocks only, those blocks are skipped and reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

from selectolax.lexbor import LexborHTMLParser, LexborNode

from warnsvc.errors import NoRiskInformationError, SourceParseError
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
from warnsvc.sources.text import normalize_space


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Where one value is: ``css`` (and ``attribute``), ``regex``, or both."""

    css: str | None = None
    attribute: str | None = None
    regex: re.Pattern[str] | None = None

    def describe(self) -> str:
        if self.css is not None:
            return f"selector {self.css!r}" + (f" @{self.attribute}" if self.attribute else "")
        return f"regex {self.regex.pattern if self.regex else ''!r}"


@dataclass(frozen=True, slots=True, kw_only=True)
class PageRules:
    title: Selector
    level: Selector
    block: str | None = None
    date: Selector | None = None
    summary: Selector | None = None
    id: Selector | None = None
    link: Selector | None = None
    levels: Mapping[str, str] = field(default_factory=dict)


DEFAULT_RULES = PageRules(title=Selector(css="h1"), level=Selector(css=".level"))
"""For ``warnsvc parse --kind page``: the ``<h1>`` and an element of class ``level``."""


class _Missing(Exception):
    """A required selector matched nothing in a block."""


def parse_page(
    body: str,
    *,
    url: str | None = None,
    content_type: str | None = None,
    scale: Scale,
    namespace: str,
    rules: PageRules = DEFAULT_RULES,
) -> list[Observation]:
    """The situations of an HTML page, per ``rules`` (see the module docstring)."""
    try:
        tree = LexborHTMLParser(body.encode("utf-8", errors="replace"))
        blocks = _blocks(tree, rules)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise SourceParseError(f"page not readable: {exc}") from None
    levels = LevelMap(scale, rules.levels)
    if rules.block is None:
        return [_single(blocks[0], rules, levels, namespace=namespace, url=url)]
    observations = [_observe(b, rules, levels, namespace=namespace, url=url) for b in blocks]
    return require_readable(observations, f"blocks {rules.block!r}")


def _blocks(tree: LexborHTMLParser, rules: PageRules) -> list[LexborNode]:
    if rules.block is None:
        root = tree.body or tree.root
        if root is None:
            raise NoRiskInformationError("empty page: nothing to select from")
        return [root]
    blocks = list(tree.css(rules.block))
    if not blocks:
        raise NoRiskInformationError(f"block selector {rules.block!r} matched nothing")
    return blocks


def _single(
    block: LexborNode, rules: PageRules, levels: LevelMap, *, namespace: str, url: str | None
) -> Observation:
    try:
        observation = _read(block, rules, levels, namespace=namespace, url=url)
    except _Missing as missing:
        raise NoRiskInformationError(str(missing)) from None
    if observation.problem is not None:
        raise NoRiskInformationError(observation.problem)
    return observation


def _observe(
    block: LexborNode, rules: PageRules, levels: LevelMap, *, namespace: str, url: str | None
) -> Observation:
    try:
        return _read(block, rules, levels, namespace=namespace, url=url)
    except _Missing as missing:
        return skipped_item(namespace, None, str(missing))


def _read(
    block: LexborNode, rules: PageRules, levels: LevelMap, *, namespace: str, url: str | None
) -> Observation:
    title = _required(block, rules.title, "title")
    raw_id = _optional(block, rules.id) or title
    word = _required(block, rules.level, "level")
    situation = situation_key(namespace, raw_id)
    if situation is None:
        return skipped_item(namespace, raw_id, "the id has no letters or digits", name=title)
    level = levels.find(word)
    if level is None:
        return skipped_item(namespace, raw_id, levels.problem(word), name=title)
    return Observation(
        situation=situation,
        name=title,
        level=level.id,
        status=Status.ASSESSED,
        date=day_of(parse_when(_optional(block, rules.date))),
        url=_link(block, rules, url),
        summary=_optional(block, rules.summary) or "",
    )


def _required(block: LexborNode, selector: Selector, what: str) -> str:
    value = _select(block, selector)
    if value is None:
        raise _Missing(f"{selector.describe()} for {what} matched nothing")
    if not value:
        raise _Missing(f"{selector.describe()} for {what} matched only empty text")
    return value


def _optional(block: LexborNode, selector: Selector | None) -> str | None:
    return _select(block, selector) if selector is not None else None


def _select(block: LexborNode, selector: Selector) -> str | None:
    """The value ``selector`` finds in ``block``, or None when it matches nothing."""
    if selector.css is not None:
        node = block.css_first(selector.css)
        if node is None:
            return None
        if selector.attribute is not None:
            raw = node.attributes.get(selector.attribute)
            if raw is None:
                return None
            text = normalize_space(raw)
        else:
            text = normalize_space(node.text(deep=True, separator=" "))
    else:
        text = "\n".join(
            line for raw in block.text(deep=True, separator="\n").splitlines()
            if (line := normalize_space(raw))
        )  # fmt: skip
    if selector.regex is None:
        return text
    match = selector.regex.search(text)
    if match is None:
        return None
    return normalize_space(_group(match))


def _group(match: re.Match[str]) -> str:
    if "value" in match.re.groupindex:
        return match.group("value") or ""
    return (match.group(1) or "") if match.re.groups else match.group(0)


def _link(block: LexborNode, rules: PageRules, url: str | None) -> str | None:
    if rules.link is not None:
        href = _select(block, rules.link)
    elif rules.block is not None:
        anchor = block.css_first("a[href]")
        href = anchor.attributes.get("href") if anchor is not None else None
    else:
        return url
    if not href:
        return url if rules.block is None else None
    return urljoin(url, href) if url else href


# -- the polling source ------------------------------------------------------------------------


def selector(settings: Any) -> Selector:
    regex = getattr(settings, "regex", None)
    return Selector(
        css=getattr(settings, "css", None),
        attribute=getattr(settings, "attribute", None),
        regex=re.compile(regex) if regex else None,
    )


def rules_from_settings(settings: Any) -> PageRules:
    fields = settings.fields

    def optional(value: Any) -> Selector | None:
        return selector(value) if value is not None else None

    return PageRules(
        block=settings.block,
        title=selector(fields.title),
        level=selector(fields.level),
        date=optional(fields.date),
        summary=optional(fields.summary),
        id=optional(fields.id),
        link=optional(fields.link),
        levels=dict(settings.levels),
    )


KIND = rules_kind(
    kind="page",
    description="any HTML page: CSS selectors or regexes for title, level, date and summary",
    default_namespace="page",
    parse=parse_page,
    default_rules=DEFAULT_RULES,
    rules_from_settings=rules_from_settings,
)

__all__ = ["DEFAULT_RULES", "KIND", "PageRules", "Selector", "parse_page"]
