"""Hardened XML parsing for every source that reads XML (feeds, CAP).

Everything a source fetches is untrusted. :func:`parse_xml` parses with defusedxml on top of
the standard library's expat parser and refuses, before any of it takes effect:

* a document type declaration (``<!DOCTYPE ...>``) of any kind, so no internal subset, no
  entity declaration (billion laughs, quadratic blow-up) and no external DTD is ever read;
* entity declarations and external references, should a DTD ever get past the first rule;
* elements nested deeper than :data:`MAX_DEPTH` (a "depth bomb": a few megabytes of ``<x><x>...``
  that would take the tree, then feedparser, many seconds and hundreds of megabytes to read).

A refused document raises :class:`~warnsvc.errors.UnsafeXmlError`; a document that is not
well-formed (truncated, binary, HTML) raises :class:`~warnsvc.errors.SourceParseError` naming
the line and column. Nothing is fetched from the network or read from disk, ever.

The parsers of RSS/Atom (feedparser) and CAP only see a document that passed :func:`parse_xml`.
"""

from __future__ import annotations

import re
from xml.etree.ElementTree import Element, ParseError, TreeBuilder

from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden
from defusedxml.ElementTree import DefusedXMLParser

from warnsvc.errors import SourceParseError, UnsafeXmlError

MAX_DEPTH = 256
"""The deepest element nesting read. Feeds and CAP alerts nest about ten deep; XHTML content in
an Atom entry a few dozen."""

_DECLARATION = re.compile(r"^\s*<\?xml[^>]*?\?>", re.S)
_ENCODING = re.compile(r"""encoding\s*=\s*["'][^"']*["']""")


class _TooDeepError(Exception):
    """The document nests elements deeper than MAX_DEPTH."""


class _NamespaceRecorder(TreeBuilder):
    """A tree builder that also keeps every namespace prefix declared in the document, and
    stops at the first element nested deeper than :data:`MAX_DEPTH`."""

    def __init__(self) -> None:
        super().__init__()
        self.namespaces: dict[str, str] = {}
        self.depth = 0

    def start_ns(self, prefix: str, uri: str) -> None:
        self.namespaces.setdefault(prefix, uri)

    def start(self, tag: str, attrs: dict[str, str], /) -> Element:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _TooDeepError
        return super().start(tag, attrs)

    def end(self, tag: str, /) -> Element:
        self.depth -= 1
        return super().end(tag)


def parse_xml(text: str) -> tuple[Element, dict[str, str]]:
    """The root element of ``text`` and the namespace prefixes it declares (first one wins).

    Raises UnsafeXmlError for a DTD, entities or external references, SourceParseError for a
    document that is not well-formed XML.
    """
    body = text.lstrip("\ufeff")
    if not body.strip():
        raise SourceParseError("empty document: no XML to read")
    recorder = _NamespaceRecorder()
    parser = DefusedXMLParser(
        target=recorder, forbid_dtd=True, forbid_entities=True, forbid_external=True
    )
    try:
        parser.feed(body)
        root = parser.close()
    except _TooDeepError:
        raise SourceParseError(
            f"XML nested deeper than {MAX_DEPTH} elements is refused: a feed or alert never is"
        ) from None
    except DTDForbidden as exc:
        raise UnsafeXmlError(
            f"XML with a document type declaration (<!DOCTYPE {exc.name}>) is refused: "
            "a DTD can expand entities or fetch files"
        ) from None
    except EntitiesForbidden as exc:
        raise UnsafeXmlError(f"XML declaring entity {exc.name!r} is refused") from None
    except DefusedXmlException as exc:
        raise UnsafeXmlError(f"XML with external references is refused: {exc}") from None
    except ParseError as exc:
        hint = " (the document ends early: truncated?)" if "no element found" in str(exc) else ""
        raise SourceParseError(f"not well-formed XML: {exc}{hint}") from None
    except (ValueError, TypeError, LookupError) as exc:
        raise SourceParseError(f"not readable as XML: {exc}") from None
    if not isinstance(root, Element):  # pragma: no cover - TreeBuilder always returns one
        raise SourceParseError("not readable as XML: no root element")
    return root, recorder.namespaces


def utf8_document(text: str) -> bytes:
    """``text`` as UTF-8 bytes whose XML declaration (if any) says so, for byte-level parsers."""
    body = text.lstrip("\ufeff")
    declaration = _DECLARATION.match(body)
    if declaration:
        fixed = _ENCODING.sub('encoding="utf-8"', declaration.group(0))
        body = fixed + body[declaration.end() :]
    return body.encode("utf-8", errors="replace")


def local_name(tag: object) -> str:
    """``{urn:x}alert`` -> ``alert``; a comment or processing instruction -> ``""``."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def namespace_of(tag: object) -> str:
    """``{urn:x}alert`` -> ``urn:x``; ``alert`` -> ``""``."""
    return tag[1:].partition("}")[0] if isinstance(tag, str) and tag.startswith("{") else ""


def text_of(element: Element | None) -> str:
    """All the text inside ``element``, whitespace-normalised; ``""`` for None."""
    if element is None:
        return ""
    return " ".join("".join(element.itertext()).split())
