"""The Source protocol, the page loader every source fetches through, and source kinds.

A source is anything with ``info`` and ``async def poll() -> list[Observation]``. It raises a
:class:`~warnsvc.errors.SourceError` when it cannot tell anything (fetch failed, no risk
information, unknown level): that marks the source unhealthy and is never a change.

A *kind* (``gcr2p-index``, ``gcr2p-page``, ...) pairs a pure ``parse`` function, which
``warnsvc parse`` runs on a file or URL, with a ``build`` function that makes a polling source
from its YAML settings. Adding a kind means one module and one entry in
:mod:`warnsvc.sources.registry`.

A polling source parses through :func:`~warnsvc.sources.worker.parse_bounded`: off the event
loop, in a worker process, within the source's time and memory limits. So a parse function and
its settings must pickle: a module-level function, with frozen dataclasses of rules. This module
imports neither aiohttp nor the store at run time, so a worker starts light.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from warnsvc.errors import SourceParseError, SourceUnavailableError
from warnsvc.model import Observation, Scale
from warnsvc.sources.text import decode_body
from warnsvc.sources.worker import DEFAULT_LIMITS, ParseLimits, limits_from_settings, parse_bounded

if TYPE_CHECKING:
    from warnsvc.sources.fetch import Fetcher
    from warnsvc.store.db import CachedPage

log = logging.getLogger(__name__)

R = TypeVar("R")
T = TypeVar("T")
R_contra = TypeVar("R_contra", contravariant=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceInfo:
    """What the pipeline needs to know of a source besides its observations."""

    id: str
    name: str
    kind: str
    scale: Scale
    namespace: str
    authoritative: bool


class Source(Protocol):
    info: SourceInfo

    async def poll(self) -> list[Observation]:
        """Fetch and parse; raise SourceError when the source cannot be read."""
        ...


class PageCache(Protocol):
    """Where the last good body of each URL is kept, for conditional GET."""

    async def cached_page(self, url: str) -> CachedPage | None: ...

    async def save_page(self, page: CachedPage, *, now: datetime) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    """A fetched (or revalidated) document, decoded to text."""

    url: str
    """Where the redirects ended."""
    text: str
    content_type: str | None
    not_modified: bool
    requested: str
    """The address asked for (the page's key in a :class:`ParseMemo`)."""


class PageLoader:
    """Fetch a URL with conditional GET; a 304 answer reuses the cached body."""

    def __init__(self, fetcher: Fetcher, cache: PageCache | None = None) -> None:
        self.fetcher = fetcher
        self.cache = cache

    async def load(self, url: str) -> Page:
        cached = await self.cache.cached_page(url) if self.cache else None
        result = await self.fetcher.fetch(
            url,
            etag=cached.etag if cached else None,
            last_modified=cached.last_modified if cached else None,
        )
        if result.not_modified:
            if cached is None:
                raise SourceUnavailableError(f"{url} answered 304 but no copy is cached")
            log.debug("not modified: %s", url, extra={"action": "fetch_not_modified", "url": url})
            return Page(
                url=result.url,  # where the redirects ended, as for a 200
                text=decode_body(cached.body, cached.content_type),
                content_type=cached.content_type,
                not_modified=True,
                requested=url,
            )
        if self.cache is not None and (result.etag or result.last_modified):
            from warnsvc.store.db import CachedPage

            await self.cache.save_page(
                CachedPage(
                    url=url,
                    etag=result.etag,
                    last_modified=result.last_modified,
                    content_type=result.content_type,
                    body=result.body,
                ),
                now=datetime.now(UTC),
            )
        return Page(
            url=result.url,
            text=decode_body(result.body, result.content_type),
            content_type=result.content_type,
            not_modified=False,
            requested=url,
        )


class ParseMemo:
    """What a source last read in each of its documents, by content: a document that comes
    back unchanged (a 304 answered from the cached copy, or the same bytes again) is not parsed
    again. Parse functions are pure (the text, the address, the content type and the source's
    fixed settings decide the result), so the reuse is exact; a failed parse is not kept.

    One entry per document address, the last one read: a digest and the result. A source that
    reads several documents (an index and the pages it links to) calls :meth:`sweep` after a
    whole poll, so addresses no longer linked are forgotten. A source rebuilt by a config
    reload starts with an empty memo.
    """

    __slots__ = ("_entries", "_read")

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Hashable, Any]] = {}
        self._read: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def sweep(self) -> None:
        """Forget every address not read since the last sweep."""
        for address in self._entries.keys() - self._read:
            del self._entries[address]
        self._read.clear()

    async def parse(
        self, page: Page, run: Callable[[], Awaitable[T]], *, also: Hashable = None
    ) -> T:
        """``run()``'s result for ``page``: the kept one when ``page`` (and ``also``, the
        parse's other varying arguments) is what was read last time at its address."""
        digest = hashlib.blake2b(page.text.encode("utf-8", "surrogatepass"), digest_size=20)
        key = (digest.digest(), page.url, page.content_type, also)
        self._read.add(page.requested)
        kept = self._entries.get(page.requested)
        if kept is not None and kept[0] == key:
            return cast("T", kept[1])
        result = await run()
        self._entries[page.requested] = (key, result)
        return result

    async def read(
        self,
        page: Page,
        parse: Callable[..., Any],
        *,
        info: SourceInfo,
        limits: ParseLimits,
        url: str | None = None,
        also: Hashable = None,
        **arguments: Any,
    ) -> Any:
        """What ``parse`` reads in ``page`` (bounded, see :func:`parse_bounded`; a parse error
        names the page), or the kept result: a list comes back as a tuple, never shared.
        ``url``: the address the parser is told (default: where the redirects ended)."""

        async def run() -> Any:
            with about(page.requested):
                result = await parse_bounded(
                    parse,
                    page.text,
                    limits=limits,
                    url=url or page.url,
                    content_type=page.content_type,
                    scale=info.scale,
                    namespace=info.namespace,
                    **arguments,
                )
            return tuple(result) if isinstance(result, list) else result

        return await self.parse(page, run, also=(url, also))


@contextlib.contextmanager
def about(url: str) -> Iterator[None]:
    """Name the page in a parse error, keeping its class (so callers can still tell them apart)."""
    try:
        yield
    except SourceParseError as exc:
        exc.args = (f"{url}: {exc}",)
        raise


class ParseFunction(Protocol):
    def __call__(
        self,
        body: str,
        *,
        url: str | None,
        content_type: str | None,
        scale: Scale,
        namespace: str,
    ) -> list[Observation]: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceKind:
    """A kind of source: how to parse one document, and how to build a polling source."""

    kind: str
    description: str
    default_namespace: str
    parse: ParseFunction
    build: Callable[[Any, SourceInfo, PageLoader], Source]
    default_scale: str = "gcr2p"
    """The scale ``warnsvc parse --kind`` reads levels on."""
    parse_with: Callable[[Any], ParseFunction] | None = None
    """The parse function with a source's YAML settings (``warnsvc parse --source``); None when
    the kind takes no parse settings."""


class RulesParser(Protocol[R_contra]):
    """A pure parse function that reads a document per ``rules`` taken from the YAML."""

    def __call__(
        self,
        body: str,
        *,
        url: str | None,
        content_type: str | None,
        scale: Scale,
        namespace: str,
        rules: R_contra,
    ) -> list[Observation]: ...


class RulesSource(Generic[R]):
    """A polling source that fetches one URL and reads it with a rules-driven parser."""

    def __init__(
        self,
        info: SourceInfo,
        loader: PageLoader,
        url: str,
        parse: RulesParser[R],
        rules: R,
        limits: ParseLimits = DEFAULT_LIMITS,
    ) -> None:
        self.info = info
        self.loader = loader
        self.url = url
        self.parse = parse
        self.rules = rules
        self.limits = limits
        self.memo = ParseMemo()

    async def poll(self) -> list[Observation]:
        page = await self.loader.load(self.url)
        read = await self.memo.read(
            page, self.parse, info=self.info, limits=self.limits, rules=self.rules
        )
        return list(read)


def rules_kind(
    *,
    kind: str,
    description: str,
    default_namespace: str,
    parse: RulesParser[R],
    default_rules: R,
    rules_from_settings: Callable[[Any], R],
    default_scale: str = "gcr2p",
) -> SourceKind:
    """The :class:`SourceKind` of a declarative source (``feed``, ``page``, ``json``): its
    parse function with default rules, with a source's rules, and its polling source."""

    def with_rules(rules: R) -> ParseFunction:
        return functools.partial(parse, rules=rules)  # pickles, for a worker process

    def build(settings: Any, info: SourceInfo, loader: PageLoader) -> Source:
        info = replace(info, authoritative=bool(settings.authoritative))
        rules = rules_from_settings(settings)
        limits = limits_from_settings(settings)
        return RulesSource(info, loader, str(settings.url), parse, rules, limits)

    return SourceKind(
        kind=kind,
        description=description,
        default_namespace=default_namespace,
        default_scale=default_scale,
        parse=with_rules(default_rules),
        parse_with=lambda settings: with_rules(rules_from_settings(settings)),
        build=build,
    )
