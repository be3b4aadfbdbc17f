"""Wiring and lifecycle: store, sources, poller, dispatcher, scheduler and web app.

:class:`Service` is built from :class:`~warnsvc.config.Settings`. ``start()`` opens the store
(migrations run on start), makes the HTTP session and the sources, starts the dispatcher, the
scheduler (one interval job per source, with jitter, no overlapping runs, coalesced misfires;
a one-off confirmation re-fetch when a change awaits confirmation) and the web app.
``stop()`` undoes it in reverse order within the shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from warnsvc import __version__
from warnsvc.channels.base import Channel
from warnsvc.channels.email import DIGEST_CHANNEL, EMAIL_CHANNEL
from warnsvc.channels.feeds import FEEDS_CHANNEL, FeedChannel, FeedSettings
from warnsvc.channels.webhooks import WEBHOOKS_CHANNEL
from warnsvc.config import Settings, SourceSettings
from warnsvc.detect import DetectionPolicy
from warnsvc.mail.wiring import EmailParts, build_email
from warnsvc.model import Scale
from warnsvc.outbox import Outbox, RetryPolicy
from warnsvc.pipeline import Dispatcher, Poller, PollReport, Routing
from warnsvc.sources.base import PageLoader, Source, SourceInfo
from warnsvc.sources.fetch import Fetcher, make_session
from warnsvc.sources.fetch import FetchSettings as HttpFetchSettings
from warnsvc.sources.registry import get_kind
from warnsvc.store.db import Store
from warnsvc.web.api import make_api
from warnsvc.web.app import make_app
from warnsvc.webhook_wiring import Webhooks, build_webhooks

log = logging.getLogger(__name__)


def user_agent(settings: Settings) -> str:
    """The User-Agent that names the service and where to learn about it."""
    configured = settings.service.user_agent
    return configured or f"warnsvc/{__version__} (+{settings.service.base_url})"


def fetch_settings(settings: Settings, source: SourceSettings) -> HttpFetchSettings:
    return HttpFetchSettings(
        timeout=source.fetch.timeout,
        max_bytes=source.fetch.max_bytes,
        max_redirects=source.fetch.max_redirects,
        retries=source.fetch.retries,
        user_agent=user_agent(settings),
    )


def source_info(source: SourceSettings, scales: Mapping[str, Scale]) -> SourceInfo:
    return SourceInfo(
        id=source.id,
        name=source.name,
        kind=source.kind,
        scale=scales[source.scale],
        namespace=source.namespace,
        authoritative=bool(getattr(source, "authoritative", False)),
    )


def feed_settings(settings: Settings) -> FeedSettings:
    return FeedSettings(
        out_dir=settings.feeds.dir,
        base_url=settings.service.base_url,
        title=settings.feeds.title,
        author=settings.service.name,
        max_entries=settings.feeds.max_entries,
    )


@dataclass(slots=True)
class Components:
    """The parts shared by ``run``, ``poll --once`` and ``demo``."""

    settings: Settings
    store: Store
    sessions: list[aiohttp.ClientSession]
    sources: dict[str, Source]
    poller: Poller
    outbox: Outbox
    dispatcher: Dispatcher
    feeds: FeedChannel
    webhooks: Webhooks | None = None
    email: EmailParts | None = None

    async def close(self) -> None:
        for session in self.sessions:
            await session.close()
        if self.email is not None:
            await self.email.close()
        await self.store.close()


async def build_components(
    settings: Settings, *, only: str | None = None, store: Store | None = None
) -> Components:
    """Open the store and make every enabled source (or only source ``only``)."""
    store = store or await Store.open(settings.storage.url)
    scales = settings.scale_map()
    sessions: list[aiohttp.ClientSession] = []
    sources: dict[str, Source] = {}
    for config in settings.sources:
        if (only is None and not config.enabled) or (only is not None and config.id != only):
            continue
        http = fetch_settings(settings, config)
        session = make_session(http)
        sessions.append(session)
        loader = PageLoader(Fetcher(session, http), store)
        sources[config.id] = get_kind(config.kind).build(
            config, source_info(config, scales), loader
        )
    policy = DetectionPolicy(
        confirmations=settings.detection.confirmations,
        announce_initial=settings.detection.announce_initial,
    )
    feeds = FeedChannel(store, scales, feed_settings(settings))
    channels: dict[str, Channel] = {FEEDS_CHANNEL: feeds}
    webhooks = await build_webhooks(settings, store, user_agent=user_agent(settings))
    sessions.append(webhooks.session)
    channels[WEBHOOKS_CHANNEL] = webhooks.channel
    email = build_email(settings, store)
    if email is not None:
        await email.prepare()
        channels[EMAIL_CHANNEL] = email.channel
        channels[DIGEST_CHANNEL] = email.digests
    poller = Poller(store, sources, policy, Routing(channels))
    outbox = Outbox(store.engine)
    grace = settings.service.shutdown_timeout * 0.6  # then in-flight sends are released
    dispatcher = Dispatcher(outbox, channels, RetryPolicy(), grace=grace)
    parts = Components(
        settings, store, sessions, sources, poller, outbox, dispatcher, feeds, webhooks
    )
    parts.email = email
    return parts


class Service:
    """The long-running service behind ``warnsvc run``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.parts: Components | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.runner: web.AppRunner | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.port: int | None = None

    async def start(self) -> None:
        self.parts = await build_components(self.settings)
        await self.parts.feeds.rebuild()  # subscribers can fetch empty feeds from the start
        self._dispatch_task = asyncio.create_task(self.parts.dispatcher.run(), name="dispatcher")
        if self.parts.email is not None:
            self.parts.email.start(on_digests=self.parts.dispatcher.wake)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        for source_id in self.parts.sources:
            self._schedule(source_id)
        self.scheduler.start()
        await self._start_web()

    def _schedule(self, source_id: str) -> None:
        assert self.scheduler is not None
        config = self.settings.source(source_id)
        self.scheduler.add_job(
            self.poll_job,
            "interval",
            args=[source_id],
            id=f"poll:{source_id}",
            seconds=config.interval,
            jitter=config.jitter or None,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(config.interval),
            next_run_time=_now(),
        )

    async def poll_job(self, source_id: str) -> PollReport:
        """One scheduled poll: record it, wake the dispatcher, schedule a confirmation."""
        assert self.parts is not None
        try:
            report = await self.parts.poller.poll(source_id)
        except Exception:
            log.exception(
                "poll of %s crashed",
                source_id,
                extra={"action": "poll_crashed", "source": source_id},
            )
            raise
        if report.events:
            self.parts.dispatcher.wake()
        if report.pending and self.scheduler is not None:
            delay = self.settings.detection.confirm_delay
            self.scheduler.add_job(
                self.poll_job,
                "date",
                args=[source_id],
                id=f"confirm:{source_id}",
                run_date=_now() + timedelta(seconds=delay),
                replace_existing=True,
                misfire_grace_time=int(max(delay, 60)),
            )
            log.info(
                "%d change(s) of %s await confirmation in %.0fs",
                len(report.pending),
                source_id,
                delay,
                extra={"action": "confirmation_scheduled", "source": source_id},
            )
        return report

    async def _start_web(self) -> None:
        http = self.settings.service.http
        app = make_app(
            feeds_dir=self.settings.feeds.dir,
            readiness=self.readiness,
            title=self.settings.feeds.title,
        )
        if self.parts is not None and self.parts.webhooks is not None:
            api = self.parts.webhooks.api(self.parts.dispatcher.wake)
            app.add_subapp("/api/v1", make_api(api))
        if self.parts is not None and self.parts.email is not None:
            self.parts.email.add_routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, http.host, http.port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else http.port
        log.info(
            "serving http://%s:%s/ (feeds under /feeds/)",
            http.host,
            self.port,
            extra={"action": "http_started"},
        )

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        checks: dict[str, Any] = {}
        parts = self.parts
        checks["store"] = bool(parts and await parts.store.ping())
        checks["scheduler"] = bool(self.scheduler and self.scheduler.running)
        failing: dict[str, str | None] = {}
        if parts is not None and checks["store"]:
            threshold = self.settings.detection.failure_threshold
            for health in await parts.store.all_source_health():
                if health.source_id in parts.sources and health.consecutive_failures >= threshold:
                    failing[health.source_id] = health.last_error
        checks["sources_failing"] = failing
        ready = checks["store"] and checks["scheduler"] and not failing
        return ready, checks

    async def stop(self) -> None:
        """Stop polling, let in-flight work finish within the timeout, close everything."""
        timeout = self.settings.service.shutdown_timeout
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.parts is not None:
            self.parts.dispatcher.stop()
        if self._dispatch_task is not None:
            try:
                await asyncio.wait_for(self._dispatch_task, timeout=timeout)
            except TimeoutError:
                log.warning(
                    "dispatcher did not finish within %.0fs; its rows will be retried",
                    timeout,
                    extra={"action": "shutdown_timeout"},
                )
        if self.runner is not None:
            await self.runner.cleanup()
        if self.parts is not None:
            await self.parts.close()
        log.info("stopped", extra={"action": "service_stopped"})

    def request_stop(self) -> None:
        self._stop.set()

    async def run_until_stopped(self) -> None:
        """Start, serve until SIGINT/SIGTERM (a second signal exits at once), then stop."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)

        def on_signal(signum: int) -> None:
            if self._stop.is_set():
                # Safe: every event and delivery is already durable in the store.
                log.warning("second signal: exiting now", extra={"action": "forced_exit"})
                logging.shutdown()
                os._exit(1)
            log.info(
                "received %s, shutting down",
                signal.Signals(signum).name,
                extra={"action": "shutdown_requested"},
            )
            self._stop.set()

        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            for signum in signals:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
            await self.stop()


def _now() -> datetime:
    return datetime.now(UTC)
