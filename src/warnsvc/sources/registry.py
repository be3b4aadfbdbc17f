"""The registry of source kinds: the ``kind`` key of a YAML source -> its implementation."""

from __future__ import annotations

from warnsvc.sources import cap, feed, gcr2p, jsonapi, page
from warnsvc.sources.base import SourceKind

KINDS: dict[str, SourceKind] = {
    gcr2p.INDEX_KIND.kind: gcr2p.INDEX_KIND,
    gcr2p.PAGE_KIND.kind: gcr2p.PAGE_KIND,
    feed.KIND.kind: feed.KIND,
    cap.KIND.kind: cap.KIND,
    page.KIND.kind: page.KIND,
    jsonapi.KIND.kind: jsonapi.KIND,
}


def get_kind(kind: str) -> SourceKind:
    """The kind registered under ``kind``; KeyError naming the known kinds otherwise."""
    try:
        return KINDS[kind]
    except KeyError:
        raise KeyError(
            f"unknown source kind {kind!r} (known: {', '.join(sorted(KINDS))})"
        ) from None
