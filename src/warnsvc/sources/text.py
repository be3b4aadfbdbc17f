"""Text lines of fetched pages: block-aware HTML rendering and plain-text normalisation.

Source parsers work on a page's *text structure*, never on its CSS classes, so both a served
HTML document and a plain-text capture of the same page come down to the same list of lines:

* every block element (``p``, ``div``, ``h1``-``h6``, ``li``, ``tr``, ``section``, ``br`` ...)
  starts a new line, while inline elements (``a``, ``span``, ``strong``, ``em`` ...) stay on
  the line they are in, so ``<span>Risk Level:</span> <strong>Imminent Risk</strong>`` is the
  one line ``Risk Level: Imminent Risk``;
* paragraph-like blocks (``p``, headings, lists, tables, sections ...) and ``<br><br>`` leave a
  blank line, the paragraph separator; runs of blank lines collapse to one, and there is never
  a blank line first or last;
* each ``<li>`` becomes a line starting with ``"• "``;
* ``script``, ``style``, ``noscript``, ``template``, ``svg``, ``iframe``, ``form``, and elements
  marked ``hidden`` or ``aria-hidden="true"``, are dropped;
* when the document has a ``<main>`` (or ``role="main"``) element, or exactly one
  ``<article>``, only that element is rendered; otherwise the whole body is, without its
  ``nav``, ``header`` and ``footer`` elements (a navigation element that is a breadcrumb is kept);
* whitespace is normalised: NBSP and other Unicode spaces become plain spaces, runs collapse,
  zero-width characters and soft hyphens go, lines are stripped; ``\\r\\n`` and ``\\r`` end lines.

:func:`render_html` also reports every link (``<a href>``) with the lines it covers, which the
index parsers need to tie a listed situation to its URL. Nothing here does I/O.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from selectolax.lexbor import LexborHTMLParser, LexborNode

BULLET = "• "
"""The prefix of a line rendered from an ``<li>`` element."""

_DROP_TAGS = frozenset(
    {"script", "style", "noscript", "template", "svg", "iframe", "form", "head", "title"}
    | {"object", "embed", "canvas", "math"}
)
_CHROME_TAGS = frozenset({"nav", "header", "footer"})
_PARAGRAPH_TAGS = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre"}
    | {"section", "article", "main", "header", "footer", "aside", "figure", "hr", "address"}
    | {"details", "fieldset", "nav", "menu", "dir", "hgroup"}
)
_LINE_TAGS = frozenset(
    {"div", "li", "tr", "dt", "dd", "br", "caption", "figcaption", "summary", "legend"}
    | {"center", "body", "html", "thead", "tbody", "tfoot", "option", "label"}
)
_CELL_TAGS = frozenset({"td", "th"})

_SPACES = re.compile(r"[\s\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200d\u2060\ufeff]")
_INVISIBLES = ("\u00ad", "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
_ANY_TAG = re.compile(r"<[A-Za-z!/][^<>]*>")
_HTML_START = re.compile(
    r"(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html)\b", re.I | re.S
)
_KNOWN_TAG = re.compile(
    r"</?(?:html|head|body|div|p|main|article|section|span|a|title|meta|ul|ol|li|h[1-6]|br|"
    r"nav|header|footer|strong|em|table|tr|td|script|style|link|img)\b[^<>]*>",
    re.I,
)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([^\"';\s]+)", re.I)
_META_CHARSET = re.compile(rb"<meta[^>]*?charset\s*=\s*[\"']?\s*([A-Za-z0-9._:-]+)", re.I)
_WHATWG_LATIN1 = frozenset({"latin-1", "ascii", "iso8859-1"})
_BOMS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def normalize_space(text: str) -> str:
    """One line of text with invisible characters removed and all spacing as single spaces.

    ``str.split()`` breaks on exactly the characters ``_SPACES`` matches (every character
    ``str.isspace()`` accepts), in C and several times faster than the regex on a page's text.
    The invisible characters are all outside ASCII, and ``str.isascii()`` reads a flag CPython
    keeps on every string, so an ASCII line is not searched for them.
    """
    if not text.isascii() and any(mark in text for mark in _INVISIBLES):  # rare: skip the scan
        text = _INVISIBLE.sub("", text)
    return " ".join(text.split())


def text_to_lines(text: str) -> list[str]:
    """Lines of a plain-text document: stripped, with runs of blank lines collapsed to one."""
    lines: list[str] = []
    for raw in text.splitlines():
        line = normalize_space(raw)
        if line or (lines and lines[-1]):
            lines.append(line)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def looks_like_html(body: str, content_type: str | None) -> bool:
    """Whether ``body`` should be read as HTML rather than as plain text.

    A ``text/html`` (or XHTML) content type counts when the body has at least one tag; a
    ``text/plain`` one only when the body starts like an HTML document. Without a content type
    the body must start like an HTML document or contain at least two known HTML tags.
    """
    ctype = (content_type or "").lower()
    if "html" in ctype:
        return _ANY_TAG.search(body) is not None
    if _HTML_START.match(body.lstrip("\ufeff \t\r\n")[:4096]):
        return True
    if "text/plain" in ctype:
        return False
    return len(_KNOWN_TAG.findall(body, 0, 65536)) >= 2


def decode_body(body: bytes, content_type: str | None) -> str:
    """Decode a fetched body: byte-order mark, else header charset, else ``<meta>``, else UTF-8.

    Undecodable bytes become U+FFFD; an unknown or non-text charset label is ignored. As in
    browsers, ``ISO-8859-1`` and ``US-ASCII`` labels decode as windows-1252.
    """
    header = _HEADER_CHARSET.search(content_type or "")
    meta = _META_CHARSET.search(body[:4096])
    candidates = (
        _bom_encoding(body),
        header.group(1) if header else None,
        meta.group(1).decode("ascii", "replace") if meta else None,
    )
    for label in candidates:
        text = _decode_as(body, label)
        if text is not None:
            return text
    return body.decode("utf-8", errors="replace")


def _bom_encoding(body: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if body.startswith(bom):
            return encoding
    return None


def _decode_as(body: bytes, label: str | None) -> str | None:
    if not label:
        return None
    try:
        name = codecs.lookup(label.strip().lower()).name
        if name in _WHATWG_LATIN1:
            name = "cp1252"
        return body.decode(name, errors="replace")
    except (LookupError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Link:
    """A link of a rendered document: its target, its text and the lines it covers.

    ``line`` and ``end_line`` index the list of lines :func:`render_html` returned; a link
    without text sits on the line that follows it (which may be past the last line).
    """

    href: str
    text: str
    title: str | None
    line: int
    end_line: int


@dataclass(frozen=True, slots=True)
class RenderedHtml:
    """The text lines of an HTML document, its links, its ``<title>``, and whether the
    rendering was limited to the document's main element."""

    lines: list[str]
    links: list[Link]
    title: str | None
    used_main: bool


def render_html(html: str, *, prefer_main: bool = True) -> RenderedHtml:
    """Render ``html`` to text lines (see the module docstring) and collect its links."""
    tree = LexborHTMLParser(html.encode("utf-8", errors="replace"))
    root, whole_body = _content_root(tree, prefer_main)
    builder = _LineBuilder()
    if root is not None:
        _walk(root, builder, drop_chrome=whole_body)
    lines = builder.finish()
    return RenderedHtml(lines, builder.links, _title_of(tree), not whole_body)


def html_to_lines(html: str, *, prefer_main: bool = True) -> list[str]:
    """The text lines of an HTML document (see the module docstring)."""
    return render_html(html, prefer_main=prefer_main).lines


def html_links(html: str, *, prefer_main: bool = True) -> list[Link]:
    """The links of an HTML document, positioned on the lines of :func:`html_to_lines`."""
    return render_html(html, prefer_main=prefer_main).links


def html_title(html: str) -> str | None:
    """The document's ``<title>`` text, whitespace-normalised, or None when empty or missing."""
    return _title_of(LexborHTMLParser(html.encode("utf-8", errors="replace")))


def _title_of(tree: LexborHTMLParser) -> str | None:
    """The first ``<title>`` that is not an SVG image's title."""
    for node in tree.css("title"):
        if not _inside(node, "svg"):
            return normalize_space(node.text(deep=True)) or None
    return None


def _inside(node: LexborNode, tag: str) -> bool:
    parent = node.parent
    while parent is not None:
        if parent.tag == tag:
            return True
        parent = parent.parent
    return False


def _content_root(tree: LexborHTMLParser, prefer_main: bool) -> tuple[LexborNode | None, bool]:
    """The element to render, and whether it is the whole body."""
    if prefer_main:
        main = tree.css_first("main, [role=main]")
        if main is not None and main.tag not in ("body", "html"):
            return main, False
        articles = tree.css("article")
        if len(articles) == 1:
            return articles[0], False
    return tree.body, True


def _walk(root: LexborNode, builder: _LineBuilder, *, drop_chrome: bool) -> None:
    """Feed the subtree of ``root`` to ``builder``, depth first, without recursion."""
    stack: list[tuple[LexborNode, bool]] = [(root, True)]
    while stack:
        node, entering = stack.pop()
        if not entering:
            builder.close(node)
        elif node.is_text_node:
            builder.text(node.text_content or "")
        elif node.is_element_node and not _dropped(node, drop_chrome):
            builder.open(node)
            stack.append((node, False))
            children = list(node.iter(include_text=True))
            stack.extend((child, True) for child in reversed(children))


def _dropped(node: LexborNode, drop_chrome: bool) -> bool:
    tag = node.tag or ""
    if tag in _DROP_TAGS:
        return True
    attrs = node.attributes
    if "hidden" in attrs or (attrs.get("aria-hidden") or "").lower() == "true":
        return True
    return drop_chrome and tag in _CHROME_TAGS and not _is_breadcrumb(attrs)


def _is_breadcrumb(attrs: dict[str, str | None]) -> bool:
    marks = " ".join(attrs.get(key) or "" for key in ("aria-label", "id", "class"))
    return "breadcrumb" in marks.lower()


@dataclass(slots=True)
class _OpenLink:
    href: str
    title: str | None
    parts: list[str] = field(default_factory=list)
    start: int | None = None


class _LineBuilder:
    """Accumulates inline text into lines; block boundaries flush the current line."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.links: list[Link] = []
        self._buffer: list[str] = []
        self._want_blank = False
        self._prefix = ""
        self._open_links: list[_OpenLink] = []

    def text(self, raw: str) -> None:
        text = _SPACES.sub(" ", raw)
        if not self._buffer:
            text = text.lstrip()
            if not text:
                return
            self._start_line()
        self._buffer.append(text)
        for link in self._open_links:
            if link.start is None:
                link.start = len(self.lines)
            link.parts.append(text)

    def open(self, node: LexborNode) -> None:
        tag = node.tag or ""
        if tag in _PARAGRAPH_TAGS:
            self.paragraph()
        elif tag == "br":
            self.line_break()
        elif tag in _LINE_TAGS:
            self.flush()
        elif tag in _CELL_TAGS:
            self.text(" ")
        if tag == "li":
            self._prefix = BULLET
        elif tag == "a" and node.attributes.get("href") is not None:
            attrs = node.attributes
            title = attrs.get("title") or attrs.get("aria-label")
            self._open_links.append(_OpenLink(attrs.get("href") or "", title))

    def close(self, node: LexborNode) -> None:
        tag = node.tag or ""
        if tag in _PARAGRAPH_TAGS:
            self.paragraph()
        elif tag in _LINE_TAGS and tag != "br":
            self.flush()
        elif tag in _CELL_TAGS:
            self.text(" ")
        if tag == "li":
            self._prefix = ""
        elif tag == "a" and node.attributes.get("href") is not None and self._open_links:
            self._close_link(self._open_links.pop())

    def _close_link(self, link: _OpenLink) -> None:
        end = len(self.lines) if self._buffer else len(self.lines) - 1
        start = link.start if link.start is not None else self._next_line_index()
        title = normalize_space(link.title) if link.title else None
        text = normalize_space("".join(link.parts))
        self.links.append(Link(link.href.strip(), text, title or None, start, max(start, end)))

    def _next_line_index(self) -> int:
        """The index the next text will land on (the current line, if it has text)."""
        if self._buffer:
            return len(self.lines)
        blank = self._want_blank and bool(self.lines) and bool(self.lines[-1])
        return len(self.lines) + int(blank)

    def _start_line(self) -> None:
        if self._want_blank and self.lines and self.lines[-1]:
            self.lines.append("")
        self._want_blank = False
        if self._prefix:
            self._buffer.append(self._prefix)
            self._prefix = ""

    def flush(self) -> None:
        """End the current line, if it has any text."""
        if self._buffer:
            line = normalize_space("".join(self._buffer))
            self._buffer.clear()
            if line:
                self.lines.append(line)
                for link in self._open_links:
                    link.parts.append(" ")

    def line_break(self) -> None:
        """``<br>``: end the line; a second break in a row makes a paragraph separator."""
        if self._buffer:
            self.flush()
        else:
            self._want_blank = True

    def paragraph(self) -> None:
        """End the line and ask for a blank line, except at the very start of a list item."""
        self.flush()
        self._want_blank = self._want_blank or not self._prefix

    def finish(self) -> list[str]:
        self.flush()
        while self._open_links:
            self._close_link(self._open_links.pop())
        while self.lines and not self.lines[-1]:
            self.lines.pop()
        return self.lines
