"""The ``websub`` channel: tell a WebSub hub that feeds changed, through the outbox.

With ``feeds.websub.hub`` set, the Atom and RSS feeds (and the JSON Feed's ``hubs``) name the
hub (``<link rel="hub">``) beside their ``rel="self"`` URL, and every event gets one outbox row
per feed it changes: ``alerts.atom``, ``alerts.rss``, ``alerts.json``, its situation's feed,
the level feeds it enters, and ``cap.atom``, the CAP index. The recipient of a row is that
feed's self URL, the WebSub *topic*.

Delivering rows first brings this replica's feed files up to date (a rebuild, which changes
nothing when the ``feeds`` channel already wrote them), so the hub, fetching a topic when told,
finds the new entry. Then one ``POST hub.mode=publish&hub.url={topic}`` goes to the hub for
each distinct topic of the batch (a burst of events costs one request per feed), and its
answer settles every row of that topic:

- 2xx: delivered;
- 408, 429, 5xx, a timeout or a broken connection: retried on the channel's schedule
  (:data:`RETRY_POLICY`, 30 s doubling to an hour, 12 attempts: about half a day), then
  dead-lettered;
- any other answer, or a hub the SSRF guard refuses: dead-lettered at once.

The rows have their own dispatcher loop, so a slow or failing hub never holds up the feeds,
emails or webhooks. The hub URL passes the same SSRF guard as partners' webhooks: a public
``https`` address, unless ``feeds.websub.allow_hosts``/``allow_networks`` list it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from warnsvc.channels.base import BaseChannel, ChannelOptions, Outcome
from warnsvc.channels.feeds import FeedChannel, feed_paths, feed_url
from warnsvc.model import Event, EventType
from warnsvc.outbox import Delivery, RetryPolicy
from warnsvc.security.ssrf import Guard, GuardedResolver, UnsafeAddressError, UnsafeUrlError

if TYPE_CHECKING:
    from warnsvc.config import Settings
    from warnsvc.store.db import RouteContext

__all__ = ["WEBSUB_CHANNEL", "WebSubChannel", "build_websub"]

log = logging.getLogger(__name__)

WEBSUB_CHANNEL = "websub"
CAP_INDEX_PATH = "/feeds/cap.atom"
RETRY_POLICY = RetryPolicy(initial=30.0, factor=2.0, cap=3600.0, max_attempts=12)
_RETRIED_STATUSES = frozenset({408, 425, 429})
_MAX_RETRY_AFTER = 3600.0
_PARALLEL = 4


# --------------------------------------------------------------------------- the channel


@dataclass(frozen=True, slots=True, kw_only=True)
class _Answer:
    ok: bool
    error: str | None = None
    status: int | None = None
    permanent: bool = False
    retry_after: float | None = None


class WebSubChannel(BaseChannel):
    """Publish pings to the hub named by the feed settings (``FeedSettings.hub``)."""

    name = WEBSUB_CHANNEL

    def __init__(
        self,
        feeds: FeedChannel,
        guard: Guard,
        *,
        timeout: float = 10.0,
        user_agent: str = "warnsvc",
        retry_policy: RetryPolicy = RETRY_POLICY,
    ) -> None:
        self.feeds = feeds
        self.guard = guard
        self.timeout = timeout
        self.user_agent = user_agent
        self._options = ChannelOptions(
            batch_size=500,
            lease=600.0,  # long enough for a feed rebuild plus a round of pings that time out
            retry_policy=retry_policy,
        )
        self._resolver = GuardedResolver(guard)
        self._session: aiohttp.ClientSession | None = None

    @property
    def options(self) -> ChannelOptions:
        return self._options

    @property
    def hub(self) -> str | None:
        return self.feeds.settings.hub

    def topics(self, payload: dict[str, Any]) -> list[str]:
        """The self URLs of the feeds an event changes (the CAP index included)."""
        settings = self.feeds.settings
        paths = feed_paths(payload, self.feeds.scales, settings)
        if not paths:
            return []
        return [feed_url(settings, path) for path in paths] + [
            settings.base_url.rstrip("/") + CAP_INDEX_PATH
        ]

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        if not self.hub or event.type is EventType.WEBHOOK_TEST:
            return []
        return self.topics(event.payload())

    async def reconfigure(self, settings: Settings) -> None:
        """Apply a reloaded config: the hub's allow-lists and timeout (the hub itself comes
        with the feed settings)."""
        websub = settings.feeds.websub
        self.guard = make_guard(settings)
        self._resolver.guard = self.guard
        if websub is not None:
            self.timeout = websub.timeout

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        hub = self.hub
        if not hub:  # the hub was removed from the config: nobody to tell
            return [Outcome(delivery_id=d.id, ok=True) for d in deliveries]
        try:
            await self.feeds.rebuild()  # the hub must find what it is told about
        except OSError as exc:
            error = f"feeds not rebuilt before telling the hub: {exc}"
            return [Outcome(delivery_id=d.id, ok=False, error=error) for d in deliveries]
        try:
            await self.guard.check(hub)
        except UnsafeUrlError as exc:
            error = f"hub {hub} refused: {exc}"
            return [
                Outcome(delivery_id=d.id, ok=False, error=error, permanent=True) for d in deliveries
            ]
        by_topic: dict[str, list[Delivery]] = {}
        for delivery in deliveries:
            by_topic.setdefault(delivery.recipient, []).append(delivery)
        slots = asyncio.Semaphore(_PARALLEL)

        async def one(topic: str) -> tuple[str, _Answer]:
            async with slots:
                return topic, await self._publish(hub, topic)

        async with self._client() as session:  # one pool per batch: nothing to close later
            self._session = session
            try:
                answers = dict(await asyncio.gather(*(one(topic) for topic in by_topic)))
            finally:
                self._session = None
        outcomes = []
        for topic, rows in by_topic.items():
            answer = answers[topic]
            for delivery in rows:
                outcomes.append(
                    Outcome(
                        delivery_id=delivery.id,
                        ok=answer.ok,
                        error=answer.error,
                        status=answer.status,
                        permanent=answer.permanent,
                        retry_after=answer.retry_after,
                    )
                )
        published = sum(1 for answer in answers.values() if answer.ok)
        log.info(
            "websub: told %s of %d of %d changed feed(s)",
            hub,
            published,
            len(answers),
            extra={"action": "websub_published", "channel": WEBSUB_CHANNEL, "feeds": published},
        )
        return outcomes

    async def _publish(self, hub: str, topic: str) -> _Answer:
        form = {"hub.mode": "publish", "hub.url": topic}
        assert self._session is not None
        try:
            async with self._session.post(
                hub,
                data=form,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                await response.read()
                return _answer(response.status, response.headers.get("Retry-After"))
        except UnsafeAddressError as exc:
            return _Answer(ok=False, error=str(exc), permanent=True)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return _Answer(ok=False, error=f"hub unreachable: {exc!r}")

    def _client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=_PARALLEL, resolver=self._resolver)
        return aiohttp.ClientSession(
            connector=connector,
            trust_env=False,  # never through a proxy from the environment
            headers={"User-Agent": self.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
        )


def _answer(status: int, retry_after: str | None) -> _Answer:
    if 200 <= status < 300:
        return _Answer(ok=True, status=status)
    error = f"hub answered {status}"
    if status in _RETRIED_STATUSES or status >= 500:
        return _Answer(ok=False, error=error, status=status, retry_after=_seconds(retry_after))
    if 300 <= status < 400:
        error += " (a redirect, never followed: set feeds.websub.hub to where it leads)"
    return _Answer(ok=False, error=error, status=status, permanent=True)


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER)


# --------------------------------------------------------------------------- wiring


def make_guard(settings: Settings) -> Guard:
    websub = settings.feeds.websub
    if websub is None:
        return Guard()
    return Guard.build(websub.allow_hosts, websub.allow_networks)


def build_websub(settings: Settings, feeds: FeedChannel, *, user_agent: str) -> WebSubChannel:
    """The channel; it routes nothing until ``feeds.websub.hub`` is set (also by a reload)."""
    websub = settings.feeds.websub
    return WebSubChannel(
        feeds,
        make_guard(settings),
        timeout=websub.timeout if websub is not None else 10.0,
        user_agent=user_agent,
    )
