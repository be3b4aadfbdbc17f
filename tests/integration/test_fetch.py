"""The HTTP fetch layer against a real aiohttp server on loopback (no mocks)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpServer

from warnsvc.errors import PageGoneError, SourceUnavailableError, TransientFetchError
from warnsvc.sources.fetch import Fetcher, FetchResult, FetchSettings, make_session

ETAG = '"v1"'
LAST_MODIFIED = "Thu, 31 Aug 2023 09:00:00 GMT"
PAGE = b"<html><body>Populations at Risk</body></html>"
MAX_BYTES = 1024
STREAM_CHUNK = 64 * 1024
STREAM_CHUNKS = 1024  # 64 MiB offered; a client that stops at MAX_BYTES never takes it all

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAST = FetchSettings(
    timeout=5.0,
    connect_timeout=2.0,
    max_bytes=MAX_BYTES,
    max_redirects=3,
    retries=2,
    retry_initial=0.01,
    retry_max=0.05,
    user_agent="warnsvc-test/1.0 (+https://example.org/warnsvc)",
)


@dataclass
class Site:
    """The test server plus what its handlers observed."""

    server: TestServer = field(init=False)
    hits: Counter[str] = field(default_factory=Counter)
    user_agents: list[str] = field(default_factory=list)
    conditional: list[tuple[str | None, str | None]] = field(default_factory=list)
    streamed: list[int] = field(default_factory=list)
    stream_done: asyncio.Event = field(default_factory=asyncio.Event)
    stream_completed: bool = False

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


def _routes(site: Site) -> list[web.RouteDef]:
    """The handlers, each counting its hits in ``site.hits``."""

    def counted(handler: Handler) -> Handler:
        async def wrapper(request: web.Request) -> web.StreamResponse:
            site.hits[request.path] += 1
            return await handler(request)

        return wrapper

    async def page(request: web.Request) -> web.StreamResponse:
        inm = request.headers.get("If-None-Match")
        ims = request.headers.get("If-Modified-Since")
        site.conditional.append((inm, ims))
        validators = {"ETag": ETAG, "Last-Modified": LAST_MODIFIED}
        if inm == ETAG or (inm is None and ims == LAST_MODIFIED):
            return web.Response(status=304, headers=validators)
        return web.Response(
            body=PAGE, content_type="text/html", charset="utf-8", headers=validators
        )

    async def flaky(request: web.Request) -> web.StreamResponse:
        if site.hits[request.path] == 1:
            return web.Response(status=500, text="boom")
        return web.Response(text="recovered")

    async def always_500(request: web.Request) -> web.StreamResponse:
        return web.Response(status=500, text="boom")

    async def status(request: web.Request) -> web.StreamResponse:
        return web.Response(status=int(request.match_info["code"]), text="secret body")

    async def missing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="no such page")

    async def busy(request: web.Request) -> web.StreamResponse:
        retry_after = request.query["retry_after"]
        if site.hits[request.path] == 1:
            return web.Response(
                status=int(request.query["status"]), headers={"Retry-After": retry_after}
            )
        return web.Response(text="served")

    async def redirect(request: web.Request) -> web.StreamResponse:
        left = int(request.match_info["left"])
        if left == 0:
            return web.Response(text="landed")
        raise web.HTTPFound(f"/redirect/{left - 1}")

    async def big_declared(request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"x" * (MAX_BYTES + 1))

    async def big_chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        site.streamed.append(0)
        try:
            for _ in range(STREAM_CHUNKS):
                await response.write(b"x" * STREAM_CHUNK)
                site.streamed[-1] += STREAM_CHUNK
            await response.write_eof()
            site.stream_completed = True
        except ConnectionError:
            pass  # the client hung up, as it should
        finally:
            site.stream_done.set()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(10)
        return web.Response(text="too late")

    async def truncated(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"x" * 100)
        assert request.transport is not None
        request.transport.close()
        return response

    async def hang_up(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()  # before any status line
        await asyncio.sleep(10)  # cancelled when the connection is lost
        return web.Response(text="never sent")

    async def user_agent(request: web.Request) -> web.StreamResponse:
        site.user_agents.append(request.headers.get("User-Agent", ""))
        return web.Response(text="hello")

    handlers: dict[str, Handler] = {
        "/page": page,
        "/flaky": flaky,
        "/always-500": always_500,
        "/missing": missing,
        "/status/{code}": status,
        "/busy": busy,
        "/redirect/{left}": redirect,
        "/big-declared": big_declared,
        "/big-chunked": big_chunked,
        "/slow": slow,
        "/truncated": truncated,
        "/hang-up": hang_up,
        "/user-agent": user_agent,
    }
    return [web.get(path, counted(handler)) for path, handler in handlers.items()]


@pytest.fixture
async def site(aiohttp_server: AiohttpServer) -> Site:
    app = web.Application()
    observed = Site()
    app.add_routes(_routes(observed))
    observed.server = await aiohttp_server(app)  # cancels handlers on disconnect
    return observed


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with make_session(FAST) as client:
        yield client


def fetcher(session: aiohttp.ClientSession, **overrides: object) -> Fetcher:
    settings = FetchSettings(**{**_fields(FAST), **overrides})  # type: ignore[arg-type]
    return Fetcher(session, settings)


def _fields(settings: FetchSettings) -> dict[str, object]:
    return {name: getattr(settings, name) for name in FetchSettings.__dataclass_fields__}


# --- success and conditional GET -------------------------------------------------------------


async def test_full_fetch_returns_body_and_validators(
    site: Site, session: aiohttp.ClientSession
) -> None:
    result = await fetcher(session).fetch(site.url("/page"))

    assert isinstance(result, FetchResult)
    assert result.url == site.url("/page")
    assert result.status == 200
    assert result.not_modified is False
    assert result.body == PAGE
    assert result.content_type == "text/html; charset=utf-8"
    assert result.etag == ETAG
    assert result.last_modified == LAST_MODIFIED
    assert 0 <= result.elapsed < FAST.timeout
    assert site.conditional == [(None, None)]


async def test_matching_etag_gives_not_modified(site: Site, session: aiohttp.ClientSession) -> None:
    result = await fetcher(session).fetch(site.url("/page"), etag=ETAG, last_modified=LAST_MODIFIED)

    assert result.status == 304
    assert result.not_modified is True
    assert result.body == b""
    assert result.etag == ETAG
    assert result.last_modified == LAST_MODIFIED
    assert site.conditional == [(ETAG, LAST_MODIFIED)]


async def test_matching_last_modified_alone_gives_not_modified(
    site: Site, session: aiohttp.ClientSession
) -> None:
    result = await fetcher(session).fetch(site.url("/page"), last_modified=LAST_MODIFIED)

    assert result.not_modified is True
    assert result.body == b""
    assert result.etag == ETAG  # the server sent it with the 304
    assert result.last_modified == LAST_MODIFIED
    assert site.conditional == [(None, LAST_MODIFIED)]


async def test_stale_etag_gets_the_full_page(site: Site, session: aiohttp.ClientSession) -> None:
    result = await fetcher(session).fetch(site.url("/page"), etag='"v0"')

    assert result.status == 200
    assert result.body == PAGE
    assert result.etag == ETAG
    assert site.conditional == [('"v0"', None)]


async def test_user_agent_reaches_the_server(site: Site, session: aiohttp.ClientSession) -> None:
    await fetcher(session).fetch(site.url("/user-agent"))

    assert site.user_agents == [FAST.user_agent]


async def test_default_user_agent_names_the_service(site: Site) -> None:
    async with make_session(FetchSettings()) as client:
        await Fetcher(client, FetchSettings()).fetch(site.url("/user-agent"))

    assert site.user_agents == ["warnsvc/0.1 (+https://github.com/warnsvc/warnsvc)"]


# --- retries ---------------------------------------------------------------------------------


async def test_500_then_200_is_retried(
    site: Site, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    url = site.url("/flaky")
    with caplog.at_level(logging.WARNING, logger="warnsvc.sources.fetch"):
        result = await fetcher(session).fetch(url)

    assert result.status == 200
    assert result.body == b"recovered"
    assert site.hits["/flaky"] == 2
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.action == "fetch_retry"  # type: ignore[attr-defined]
    assert record.url == url  # type: ignore[attr-defined]
    assert record.attempt == 1  # type: ignore[attr-defined]
    assert record.getMessage().startswith("fetch attempt 1 of 3 failed, retrying in ")
    assert record.getMessage().endswith(f"s: HTTP 500 from {url}")


async def test_500_always_fails_after_all_attempts(
    site: Site, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    url = site.url("/always-500")
    with (
        caplog.at_level(logging.WARNING, logger="warnsvc.sources.fetch"),
        pytest.raises(TransientFetchError) as info,
    ):
        await fetcher(session).fetch(url)

    assert str(info.value) == f"HTTP 500 from {url}"
    assert site.hits["/always-500"] == FAST.retries + 1
    assert [r.attempt for r in caplog.records] == [1, 2]  # type: ignore[attr-defined]


async def test_retries_zero_means_one_attempt(site: Site, session: aiohttp.ClientSession) -> None:
    with pytest.raises(TransientFetchError, match=r"^HTTP 500 from "):
        await fetcher(session, retries=0).fetch(site.url("/always-500"))

    assert site.hits["/always-500"] == 1


@pytest.mark.parametrize("code", [408, 502, 504])
async def test_other_transient_statuses_are_retried(
    site: Site, session: aiohttp.ClientSession, code: int
) -> None:
    url = site.url(f"/status/{code}")
    with pytest.raises(TransientFetchError) as info:
        await fetcher(session).fetch(url)

    assert str(info.value) == f"HTTP {code} from {url}"
    assert site.hits[f"/status/{code}"] == FAST.retries + 1


@pytest.mark.parametrize("code", [400, 401, 403, 410, 451])
async def test_other_client_errors_fail_at_once(
    site: Site, session: aiohttp.ClientSession, code: int
) -> None:
    url = site.url(f"/status/{code}")
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session).fetch(url)

    assert type(info.value) is (PageGoneError if code == 410 else SourceUnavailableError)
    assert str(info.value) == f"HTTP {code} from {url}"
    assert site.hits[f"/status/{code}"] == 1


async def test_404_fails_at_once(site: Site, session: aiohttp.ClientSession) -> None:
    url = site.url("/missing")
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session).fetch(url)

    assert type(info.value) is PageGoneError  # a dead link, not a glitch
    assert str(info.value) == f"HTTP 404 from {url}"
    assert site.hits["/missing"] == 1


@pytest.mark.parametrize("status", [429, 503])
async def test_short_retry_after_is_honoured(
    site: Site, session: aiohttp.ClientSession, status: int
) -> None:
    # retry_after=0 keeps the test fast; the wait is max(backoff, Retry-After).
    result = await fetcher(session, retry_max=1.0).fetch(
        site.url(f"/busy?status={status}&retry_after=0")
    )

    assert result.body == b"served"
    assert site.hits["/busy"] == 2


@pytest.mark.slow
async def test_short_retry_after_sets_the_wait(site: Site, session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await fetcher(session, retry_initial=0.001, retry_max=2.0).fetch(
        site.url("/busy?status=503&retry_after=1")
    )

    assert result.body == b"served"
    assert site.hits["/busy"] == 2
    assert loop.time() - started >= 1.0


@pytest.mark.parametrize("status", [429, 503])
async def test_long_retry_after_fails_now(
    site: Site, session: aiohttp.ClientSession, status: int
) -> None:
    url = site.url(f"/busy?status={status}&retry_after=3600")
    with pytest.raises(TransientFetchError) as info:
        await fetcher(session).fetch(url)

    assert str(info.value) == (
        f"HTTP {status} from {url} (Retry-After 3600s is longer than 0.05s; not retrying)"
    )
    assert site.hits["/busy"] == 1


# --- redirects -------------------------------------------------------------------------------


async def test_redirects_within_the_limit_report_the_final_url(
    site: Site, session: aiohttp.ClientSession
) -> None:
    result = await fetcher(session).fetch(site.url("/redirect/3"))  # exactly max_redirects

    assert result.url == site.url("/redirect/0")
    assert result.body == b"landed"
    assert site.hits == Counter({f"/redirect/{n}": 1 for n in range(4)})


async def test_too_many_redirects(site: Site, session: aiohttp.ClientSession) -> None:
    url = site.url("/redirect/4")
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session).fetch(url)

    assert type(info.value) is SourceUnavailableError
    assert str(info.value) == f"too many redirects (more than 3) fetching {url}"
    assert site.hits == Counter({f"/redirect/{n}": 1 for n in range(1, 5)})


async def test_zero_redirects_allowed(site: Site, session: aiohttp.ClientSession) -> None:
    url = site.url("/redirect/1")
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session, max_redirects=0).fetch(url)

    assert str(info.value) == f"too many redirects (more than 0) fetching {url}"
    assert site.hits == Counter({"/redirect/1": 1})


# --- size limit ------------------------------------------------------------------------------


async def test_declared_content_length_over_the_limit(
    site: Site, session: aiohttp.ClientSession
) -> None:
    url = site.url("/big-declared")
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session).fetch(url)

    assert type(info.value) is SourceUnavailableError
    assert str(info.value) == f"body larger than 1024 bytes from {url} (Content-Length 1025)"
    assert site.hits["/big-declared"] == 1


async def test_chunked_body_over_the_limit_is_cut_off(
    site: Site, session: aiohttp.ClientSession
) -> None:
    url = site.url("/big-chunked")
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session).fetch(url)

    assert type(info.value) is SourceUnavailableError
    assert str(info.value) == f"body larger than 1024 bytes from {url}"
    assert site.hits["/big-chunked"] == 1
    # The client hung up: the server's writes fail long before it has sent everything.
    await asyncio.wait_for(site.stream_done.wait(), timeout=5)
    assert site.stream_completed is False
    assert site.streamed[0] < STREAM_CHUNK * STREAM_CHUNKS


# --- timeouts and broken connections ----------------------------------------------------------


async def test_slow_server_times_out(site: Site, session: aiohttp.ClientSession) -> None:
    url = site.url("/slow")
    with pytest.raises(TransientFetchError) as info:
        await fetcher(session, timeout=0.3, retries=1).fetch(url)

    assert str(info.value) == f"timed out after 0.3s fetching {url}"
    assert isinstance(info.value.__cause__, asyncio.TimeoutError)
    assert site.hits["/slow"] == 2


async def test_truncated_body_is_transient(site: Site, session: aiohttp.ClientSession) -> None:
    url = site.url("/truncated")
    with pytest.raises(TransientFetchError) as info:
        await fetcher(session, retries=1).fetch(url)

    assert str(info.value).startswith(f"truncated body from {url}: ")
    assert isinstance(info.value.__cause__, aiohttp.ClientPayloadError)
    assert site.hits["/truncated"] == 2


async def test_server_disconnect_is_transient(site: Site, session: aiohttp.ClientSession) -> None:
    url = site.url("/hang-up")
    with pytest.raises(TransientFetchError) as info:
        await fetcher(session, retries=1).fetch(url)

    assert str(info.value) == f"server disconnected: {url}"
    assert isinstance(info.value.__cause__, aiohttp.ServerDisconnectedError)
    # aiohttp itself resends an idempotent request once after a disconnect (RFC 9112 9.3.1),
    # so each of our two attempts reaches the server twice.
    assert site.hits["/hang-up"] == 4


async def test_connection_refused_is_transient(session: aiohttp.ClientSession) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    with pytest.raises(TransientFetchError) as info:
        await fetcher(session, retries=1).fetch(url)

    assert str(info.value).startswith(f"connection failed: {url}: ")
    assert isinstance(info.value.__cause__, aiohttp.ClientConnectorError)


# --- URLs and settings -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["ftp://example.org/file", "file:///etc/passwd", "javascript:alert(1)", "/relative"]
)
async def test_only_http_urls(session: aiohttp.ClientSession, url: str) -> None:
    with pytest.raises(SourceUnavailableError) as info:
        await fetcher(session).fetch(url)

    assert type(info.value) is SourceUnavailableError
    assert str(info.value) == f"only http and https URLs can be fetched, not {url!r}"


@pytest.mark.parametrize(
    ("field_name", "value"), [("timeout", 0.0), ("retries", -1), ("max_bytes", -1)]
)
def test_settings_reject_nonsense(field_name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^FetchSettings.{field_name} must"):
        FetchSettings(**{field_name: value})  # type: ignore[arg-type]
