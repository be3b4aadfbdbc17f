"""The registry of source kinds: the ``kind`` key of a YAML source -> its implementation.

Each entry names the module and the attribute that hold a kind's :class:`SourceKind`; the
module is imported the first time the kind is looked up, so a service that polls only ``page``
sources never loads feedparser, the XML parsers or the CAP code. Which kinds exist is known
without importing any of them, and matches ``config.SOURCE_KINDS``: a config naming an unknown
kind still fails validation (``check-config``), never here.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from warnsvc.sources.base import SourceKind

_KIND_AT: dict[str, tuple[str, str]] = {
    "gcr2p-index": ("warnsvc.sources.gcr2p", "INDEX_KIND"),
    "gcr2p-page": ("warnsvc.sources.gcr2p", "PAGE_KIND"),
    "feed": ("warnsvc.sources.feed", "KIND"),
    "cap": ("warnsvc.sources.cap", "KIND"),
    "page": ("warnsvc.sources.page", "KIND"),
    "json": ("warnsvc.sources.jsonapi", "KIND"),
}
"""``kind`` -> (module, attribute) of its :class:`SourceKind`. Add new kinds here."""


class _Kinds(Mapping[str, SourceKind]):
    """The kinds by name; a kind's module is imported when the kind is first looked up."""

    def __init__(self, where: Mapping[str, tuple[str, str]]) -> None:
        self._where = dict(where)
        self._loaded: dict[str, SourceKind] = {}

    def __getitem__(self, kind: str) -> SourceKind:
        found = self._loaded.get(kind)
        if found is None:
            module, attribute = self._where[kind]
            found = getattr(importlib.import_module(module), attribute)
            if not isinstance(found, SourceKind) or found.kind != kind:
                raise TypeError(f"{module}.{attribute} is not the source kind {kind!r}")
            self._loaded[kind] = found
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, kind: object) -> bool:
        return kind in self._where


KINDS = _Kinds(_KIND_AT)
"""Every source kind by its ``kind`` key, each loaded on first use."""


def get_kind(kind: str) -> SourceKind:
    """The kind registered under ``kind``; KeyError naming the known kinds otherwise."""
    try:
        return KINDS[kind]
    except KeyError:
        if kind in KINDS:
            raise  # a known kind's module failed to load: say so, not "unknown"
        raise KeyError(
            f"unknown source kind {kind!r} (known: {', '.join(sorted(KINDS))})"
        ) from None
