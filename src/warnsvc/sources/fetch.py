"""Polite HTTP fetching for sources, on aiohttp.

A :class:`Fetcher` per source, each with its :class:`aiohttp.ClientSession` made by
:func:`make_session`; the sessions of an event loop share one pool of kept-alive connections.
Every fetch is polite (see "Fetch politely" in the architecture):

- at most :data:`PER_HOST` requests at once to one host, across every fetcher of the process
  (a poll cycle fetches many sources at once; a site with many of them sees a few at a time);
- conditional GET: ``If-None-Match`` / ``If-Modified-Since`` from the previous validators; a
  ``304`` comes back as a :class:`FetchResult` whose :attr:`~FetchResult.not_modified` is true;
- a User-Agent naming the service, per-attempt timeouts, a redirect limit;
- a body-size limit, checked against ``Content-Length`` up front *and* counted while streaming,
  so a server that lies or sends chunks never makes us buffer more than the limit;
- bounded retries with exponential backoff and full jitter (tenacity) for transient failures
  only: 5xx, 408, 429, timeouts, connection failures, disconnects and truncated bodies.
  ``Retry-After`` on 429/503 is honoured when it is no longer than ``retry_max``; a longer one
  fails at once (the source is marked unhealthy and tried again on its next poll).

Failures raise :class:`~warnsvc.errors.SourceUnavailableError`, or its subclass
:class:`~warnsvc.errors.TransientFetchError` when a later attempt may succeed; the message is one
line naming the URL and the reason, and the aiohttp exception is kept as ``__cause__``.
Bodies are never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
from aiohttp import hdrs
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from warnsvc.errors import PageGoneError, SourceUnavailableError, TransientFetchError
from warnsvc.metrics import FETCH_SECONDS

__all__ = ["FetchResult", "FetchSettings", "Fetcher", "make_session"]

logger = logging.getLogger(__name__)

_SCHEMES = frozenset({"http", "https"})
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_RETRY_AFTER_STATUSES = frozenset({429, 503})
_TRANSIENT_4XX = frozenset({408, 429})
_CHUNK_SIZE = 64 * 1024
_CONNECTION_LIMIT = 20
_CONNECTION_LIMIT_PER_HOST = 4
PER_HOST = 4
"""Requests in flight at once to one host (scheme, host and port), across every fetcher of
the process: a poll cycle fetches many sources at once, never more than this from one site."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchSettings:
    """How to fetch: limits, timeouts and retry policy. All durations are in seconds."""

    timeout: float = 30.0
    """Total time for one attempt, from connecting to the last body byte."""
    connect_timeout: float = 10.0
    """Time to open the TCP (and TLS) connection."""
    max_bytes: int = 5 * 1024 * 1024
    """Largest body accepted, counted after content decoding."""
    max_redirects: int = 5
    """Redirects followed before giving up; 0 follows none."""
    retries: int = 3
    """Attempts after the first, for transient failures only."""
    retry_initial: float = 1.0
    """First backoff window; it doubles per attempt (random wait within it, "full jitter")."""
    retry_max: float = 30.0
    """Longest single wait between attempts, and the longest ``Retry-After`` honoured."""
    user_agent: str = "warnsvc/0.1 (+https://github.com/warnsvc/warnsvc)"

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "retry_initial", "retry_max"):
            if getattr(self, name) <= 0:
                raise ValueError(f"FetchSettings.{name} must be positive")
        for name in ("max_bytes", "max_redirects", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"FetchSettings.{name} must not be negative")


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchResult:
    """The outcome of a successful fetch (a 2xx with its body, or a 304)."""

    url: str
    """The final URL, after redirects."""
    status: int
    """The HTTP status: 200 (or another 2xx), or 304 when not modified."""
    body: bytes
    """The decoded body; ``b""`` when not modified."""
    content_type: str | None
    """The ``Content-Type`` header as sent, e.g. ``"text/html; charset=utf-8"``."""
    etag: str | None
    last_modified: str | None
    elapsed: float
    """Seconds taken by the successful attempt (backoff waits not included)."""

    @property
    def not_modified(self) -> bool:
        """True when the server answered 304: the page is unchanged since the validators."""
        return self.status == 304


_HOST_SLOTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, str, int | None], asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def host_slots(url: str) -> asyncio.Semaphore:
    """The slots of ``url``'s host: at most :data:`PER_HOST` requests to it at once."""
    parsed = URL(url)
    key = (parsed.scheme, parsed.host or "", parsed.port)
    loop = asyncio.get_running_loop()
    hosts = _HOST_SLOTS.get(loop)
    if hosts is None:
        hosts = _HOST_SLOTS[loop] = {}
    slots = hosts.get(key)
    if slots is None:
        slots = hosts[key] = asyncio.Semaphore(PER_HOST)
    return slots


class _RetryAfterError(TransientFetchError):
    """A 429 or 503 that may carry a ``Retry-After`` hint (in seconds)."""

    def __init__(self, message: str, *, retry_after: float | None, retryable: bool) -> None:
        self.retry_after = retry_after
        self.retryable = retryable
        super().__init__(message)


class _SharedConnector(aiohttp.TCPConnector):
    """One connection pool for every session of the event loop, closed with the last of them.

    Each source has its own session (its User-Agent, its timeouts); their connections are
    pooled, so many sources on one site reuse a few kept-alive connections instead of opening
    one each.
    """

    def __init__(self) -> None:
        super().__init__(
            limit=_CONNECTION_LIMIT,
            limit_per_host=_CONNECTION_LIMIT_PER_HOST,
            ttl_dns_cache=300,
        )
        self.users = 0

    async def close(self, *, abort_ssl: bool = False) -> None:
        self.users -= 1
        if self.users <= 0:
            await super().close(abort_ssl=abort_ssl)
            loop = asyncio.get_running_loop()
            if _POOLS.get(loop) is self:  # the loop's entries go with the pool (they refer to it)
                del _POOLS[loop]
                _HOST_SLOTS.pop(loop, None)


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _SharedConnector] = (
    weakref.WeakKeyDictionary()
)


def _shared_connector() -> _SharedConnector:
    loop = asyncio.get_running_loop()
    connector = _POOLS.get(loop)
    if connector is None or connector.closed:
        connector = _POOLS[loop] = _SharedConnector()
    connector.users += 1
    return connector


def make_session(settings: FetchSettings) -> aiohttp.ClientSession:
    """Make a client session: User-Agent, no cookies, connections from the loop's one pool.

    Call it from a coroutine (aiohttp binds the session to the running loop) and close it on
    shutdown (``await session.close()`` or ``async with``): the pool closes with the last
    session.
    """
    return aiohttp.ClientSession(
        connector=_shared_connector(),
        headers={hdrs.USER_AGENT: settings.user_agent},
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=_client_timeout(settings),
        raise_for_status=False,
    )


class Fetcher:
    """Fetches URLs politely through a shared session; see the module docstring."""

    def __init__(self, session: aiohttp.ClientSession, settings: FetchSettings) -> None:
        self._session = session
        self._settings = settings
        self._timeout = _client_timeout(settings)

    async def fetch(
        self, url: str, *, etag: str | None = None, last_modified: str | None = None
    ) -> FetchResult:
        """GET ``url``, retrying transient failures; conditional when validators are given.

        Raises :class:`SourceUnavailableError` (or :class:`TransientFetchError` once the retries
        are used up) with a one-line message naming the URL and the reason.
        """
        _check_scheme(url)
        headers = _conditional_headers(etag, last_modified)
        async for attempt in self._retrying(url):
            with attempt:
                return await self._attempt(url, headers, etag, last_modified)
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _retrying(self, url: str) -> AsyncRetrying:
        settings = self._settings
        backoff = wait_random_exponential(multiplier=settings.retry_initial, max=settings.retry_max)

        def wait(state: RetryCallState) -> float:
            hint = _retry_after_of(state)
            delay = backoff(state)
            return delay if hint is None else max(delay, hint)

        def log_retry(state: RetryCallState) -> None:
            sleep = state.next_action.sleep if state.next_action else 0.0
            logger.warning(
                "fetch attempt %d of %d failed, retrying in %.2fs: %s",
                state.attempt_number,
                settings.retries + 1,
                sleep,
                _exception_of(state),
                extra={"action": "fetch_retry", "url": url, "attempt": state.attempt_number},
            )

        return AsyncRetrying(
            stop=stop_after_attempt(settings.retries + 1),
            wait=wait,
            retry=retry_if_exception(_should_retry),
            before_sleep=log_retry,
            reraise=True,
        )

    async def _attempt(
        self,
        url: str,
        headers: dict[str, str],
        etag: str | None,
        last_modified: str | None,
    ) -> FetchResult:
        async with host_slots(url):  # polite to the host whatever the number of sources
            return await self._request(url, headers, etag, last_modified)

    async def _request(
        self,
        url: str,
        headers: dict[str, str],
        etag: str | None,
        last_modified: str | None,
    ) -> FetchResult:
        started = time.monotonic()
        try:
            async with self._session.get(
                url,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=self._settings.max_redirects > 0,
                # aiohttp gives up on the Nth redirect; we allow N and refuse the N+1st.
                max_redirects=self._settings.max_redirects + 1,
                raise_for_status=False,
            ) as response:
                self._check_status(url, response)
                if response.status == 304:
                    body = b""
                else:
                    body = await self._read_body(url, response)
                return FetchResult(
                    url=str(response.url),
                    status=response.status,
                    body=body,
                    content_type=response.headers.get(hdrs.CONTENT_TYPE),
                    etag=response.headers.get(hdrs.ETAG, etag),
                    last_modified=response.headers.get(hdrs.LAST_MODIFIED, last_modified),
                    elapsed=time.monotonic() - started,
                )
        except aiohttp.ClientError as exc:
            raise self._translate(url, exc) from exc
        except TimeoutError as exc:
            raise TransientFetchError(
                f"timed out after {self._settings.timeout:g}s fetching {url}"
            ) from exc
        finally:
            FETCH_SECONDS.observe(time.monotonic() - started)

    def _check_status(self, url: str, response: aiohttp.ClientResponse) -> None:
        status = response.status
        if 200 <= status < 300 or status == 304:
            return
        if status in _REDIRECT_STATUSES and hdrs.LOCATION in response.headers:
            limit = self._settings.max_redirects
            raise SourceUnavailableError(f"too many redirects (more than {limit}) fetching {url}")
        message = f"HTTP {status} from {url}"
        if status in _RETRY_AFTER_STATUSES:
            raise self._retry_after_error(message, response)
        if status >= 500 or status in _TRANSIENT_4XX:
            raise TransientFetchError(message)
        if status in (404, 410):
            raise PageGoneError(message)
        raise SourceUnavailableError(message)

    def _retry_after_error(
        self, message: str, response: aiohttp.ClientResponse
    ) -> _RetryAfterError:
        hint = _parse_retry_after(response.headers.get(hdrs.RETRY_AFTER))
        limit = self._settings.retry_max
        if hint is not None and hint > limit:
            message += f" (Retry-After {hint:g}s is longer than {limit:g}s; not retrying)"
            return _RetryAfterError(message, retry_after=hint, retryable=False)
        return _RetryAfterError(message, retry_after=hint, retryable=True)

    async def _read_body(self, url: str, response: aiohttp.ClientResponse) -> bytes:
        limit = self._settings.max_bytes
        declared = response.content_length
        if declared is not None and declared > limit:
            response.close()
            raise SourceUnavailableError(
                f"body larger than {limit} bytes from {url} (Content-Length {declared})"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(_CHUNK_SIZE):
            size += len(chunk)
            if size > limit:
                response.close()  # drop the connection instead of draining the rest
                raise SourceUnavailableError(f"body larger than {limit} bytes from {url}")
            chunks.append(chunk)
        return b"".join(chunks)

    def _translate(self, url: str, exc: aiohttp.ClientError) -> SourceUnavailableError:
        """Turn an aiohttp error into ours, with a one-line message naming ``url``."""
        if isinstance(exc, aiohttp.TooManyRedirects):
            limit = self._settings.max_redirects
            return SourceUnavailableError(f"too many redirects (more than {limit}) fetching {url}")
        if isinstance(exc, aiohttp.ConnectionTimeoutError):
            timeout = self._settings.connect_timeout
            return TransientFetchError(f"timed out after {timeout:g}s connecting to {url}")
        if isinstance(exc, aiohttp.ServerTimeoutError):
            return TransientFetchError(
                f"timed out after {self._settings.timeout:g}s fetching {url}"
            )
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return TransientFetchError(f"server disconnected: {url}")
        if isinstance(exc, aiohttp.ClientPayloadError):
            return TransientFetchError(f"truncated body from {url}: {_one_line(exc)}")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return TransientFetchError(f"connection failed: {url}: {_connector_reason(exc)}")
        if isinstance(exc, aiohttp.ClientConnectionError):
            return TransientFetchError(f"connection failed: {url}: {_one_line(exc)}")
        if isinstance(exc, aiohttp.InvalidURL):
            return SourceUnavailableError(f"invalid URL while fetching {url}: {_one_line(exc)}")
        return SourceUnavailableError(f"request failed: {url}: {_one_line(exc)}")


def _client_timeout(settings: FetchSettings) -> aiohttp.ClientTimeout:
    # sock_connect, not connect: aiohttp's "connect" also counts the wait for a free pooled
    # connection, which would turn a busy pool into spurious connect timeouts. The total bounds
    # that wait instead.
    return aiohttp.ClientTimeout(
        total=settings.timeout,
        sock_connect=settings.connect_timeout,
        sock_read=settings.timeout,
    )


def _check_scheme(url: str) -> None:
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise SourceUnavailableError(f"invalid URL: {url!r}") from exc
    if parsed.scheme not in _SCHEMES or not parsed.host:
        raise SourceUnavailableError(f"only http and https URLs can be fetched, not {url!r}")


def _conditional_headers(etag: str | None, last_modified: str | None) -> dict[str, str]:
    headers: dict[str, str] = {}
    if etag:
        headers[hdrs.IF_NONE_MATCH] = etag
    if last_modified:
        headers[hdrs.IF_MODIFIED_SINCE] = last_modified
    return headers


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), if valid."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _should_retry(exc: BaseException) -> bool:
    if isinstance(exc, _RetryAfterError):
        return exc.retryable
    return isinstance(exc, TransientFetchError)


def _exception_of(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


def _retry_after_of(state: RetryCallState) -> float | None:
    exc = _exception_of(state)
    return exc.retry_after if isinstance(exc, _RetryAfterError) else None


def _connector_reason(exc: aiohttp.ClientConnectorError) -> str:
    return _one_line(exc.os_error) if exc.os_error else _one_line(exc)


def _one_line(value: object) -> str:
    text = " ".join(str(value).split())
    return text or type(value).__name__
