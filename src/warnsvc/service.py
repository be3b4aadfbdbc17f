"""Wiring and lifecycle: store, sources, poller, dispatcher, scheduler, cluster and web app.

:class:`Service` is built from :class:`~warnsvc.config.Settings`. ``start()`` opens the store
(migrations run on start), makes the HTTP session and the sources, starts the dispatcher, the
scheduler, the web app and the :class:`~warnsvc.cluster.Cluster`. Every replica dispatches and
serves; only the leader has scheduler jobs (one interval job per source, with jitter, no
overlapping runs, coalesced misfires; a one-off confirmation re-fetch when a change awaits
confirmation; retention; operator notices) and builds email digests. With SQLite the one
process leads. ``stop()`` undoes it in reverse order within the shutdown timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import random
import signal
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiohttp

from warnsvc import __version__, metrics
from warnsvc.channels.base import Channel, ChannelContext, Plugged, Running
from warnsvc.channels.feeds import FEEDS_CHANNEL, FeedChannel, Feeds
from warnsvc.channels.feeds import feed_settings as feed_settings  # the CLI's, from here
from warnsvc.channels.registry import CHANNELS
from warnsvc.channels.webhooks import WEBHOOKS_CHANNEL, Webhooks
from warnsvc.config import Settings, SourceSettings, load_config
from warnsvc.detect import DetectionPolicy
from warnsvc.dispatch import Dispatcher
from warnsvc.errors import ConfigError, ListenError, StoreError
from warnsvc.logs import current_logging
from warnsvc.model import Scale
from warnsvc.operators import NoticeForwarder, SourceAlerts
from warnsvc.outbox import RetryPolicy
from warnsvc.pipeline import Poller, PollReport, Routing
from warnsvc.reload import ConfigWatcher, ReloadPlan, plan_reload
from warnsvc.sources.base import PageLoader, Source, SourceInfo
from warnsvc.sources.fetch import Fetcher, make_session
from warnsvc.sources.fetch import FetchSettings as HttpFetchSettings
from warnsvc.sources.registry import get_kind
from warnsvc.store.db import Store
from warnsvc.store.migrations import head_revisions, upgrade_apart
from warnsvc.store.outbox import Outbox

if TYPE_CHECKING:  # the scheduler, the cluster and the web app: `warnsvc run` alone loads them
    from aiohttp import web
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from warnsvc.channels.email import EmailParts
    from warnsvc.cluster import Cluster
    from warnsvc.web.api import WebhookApi
    from warnsvc.web.pages import Site

log = logging.getLogger(__name__)
T = TypeVar("T")

RELOADS_KEPT = 10
"""How many recent config reloads the service remembers for the console."""

IDLE_TRIM_DELAY = 1.0
"""Seconds after the last running poll ends before its freed memory is handed back."""

RETRY_FIRST = 60.0
"""Seconds before the first retry of a failed poll; each further failure doubles it, up to the
source's interval (a failing source is retried within minutes, not after hours)."""


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


@dataclass(slots=True)
class Components:
    """The parts shared by ``run``, ``poll --once`` and ``demo``."""

    settings: Settings
    store: Store
    sessions: dict[str, aiohttp.ClientSession]
    sources: dict[str, Source]
    poller: Poller
    outbox: Outbox
    dispatcher: Dispatcher
    plugged: dict[str, Plugged]
    """What each channel module of the registry added, by its name, in the registry's order."""
    notices: NoticeForwarder | None = None

    @property
    def feeds(self) -> FeedChannel:
        return cast(Feeds, self.plugged[FEEDS_CHANNEL]).feeds

    @property
    def webhooks(self) -> Webhooks | None:
        return cast("Webhooks | None", self.plugged.get(WEBHOOKS_CHANNEL))

    @property
    def email(self) -> EmailParts | None:
        return cast("EmailParts | None", self.plugged.get("email"))

    async def forward_notices(self) -> int:
        """Queue new operator notices; wake the dispatcher when there were any."""
        if self.notices is None:
            return 0
        queued = await self.notices.forward(now=datetime.now(UTC))
        if queued:
            self.dispatcher.wake()
        return queued

    def add_source(self, settings: Settings, config: SourceSettings) -> None:
        """Make (or remake) a polling source from its settings, with its own HTTP session."""
        http = fetch_settings(settings, config)
        session = make_session(http)
        loader = PageLoader(Fetcher(session, http), self.store)
        info = source_info(config, settings.scale_map())
        self.sources[config.id] = get_kind(config.kind).build(config, info, loader)
        self.sessions[config.id] = session

    async def remove_source(self, source_id: str) -> None:
        self.sources.pop(source_id, None)
        session = self.sessions.pop(source_id, None)
        if session is not None:
            await session.close()

    async def close(self) -> None:
        for source_id in list(self.sessions):
            await self.remove_source(source_id)
        await close_plugged(self.plugged)
        await self.store.close()


def detection_policy(settings: Settings) -> DetectionPolicy:
    return DetectionPolicy(
        confirmations=settings.detection.confirmations,
        announce_initial=settings.detection.announce_initial,
    )


async def build_components(
    settings: Settings,
    *,
    only: str | None = None,
    store: Store | None = None,
    with_sources: bool = True,
) -> Components:
    """Open the store and make every enabled source (or only source ``only``)."""
    store = store or await Store.open(settings.storage.url)
    sources: dict[str, Source] = {}
    policy = detection_policy(settings)
    plugged = await plug_channels(
        settings, ChannelContext(store=store, user_agent=user_agent(settings))
    )
    channels: dict[str, Channel] = {c.name: c for p in plugged.values() for c in p.channels}
    poller = Poller(store, sources, policy, Routing(channels))
    poller.alerts = SourceAlerts(store.notices, threshold=settings.detection.failure_threshold)
    outbox = store.outbox
    grace = settings.service.shutdown_timeout * 0.6  # then in-flight sends are released
    dispatcher = Dispatcher(outbox, channels, RetryPolicy(), grace=grace)
    parts = Components(settings, store, {}, sources, poller, outbox, dispatcher, plugged)
    parts.notices = NoticeForwarder(store, settings)
    for config in settings.sources if with_sources else []:
        if (only is None and config.enabled) or config.id == only:
            parts.add_source(settings, config)
    return parts


async def plug_channels(settings: Settings, context: ChannelContext) -> dict[str, Plugged]:
    """Build every channel of the registry that ``settings`` switch on, in its order (a
    channel's module is only imported then). If one fails, those built are closed."""
    plugged: dict[str, Plugged] = {}
    try:
        for name in CHANNELS:
            if CHANNELS.wanted(name, settings):
                built = await CHANNELS[name].build(settings, context)
                if built is not None:
                    plugged[name] = built
    except BaseException:
        await close_plugged(plugged)
        raise
    return plugged


async def close_plugged(plugged: Mapping[str, Plugged]) -> None:
    """Close what the channel modules added, the last built first."""
    for name in reversed(list(plugged)):
        await plugged[name].close()


class Service:
    """The long-running service behind ``warnsvc run``."""

    def __init__(self, settings: Settings, *, migrate_apart: bool = False) -> None:
        """``migrate_apart``: run the schema's migrations, when it has any to run, in a child
        process, so that this long-running one never loads Alembic (``warnsvc run`` does)."""
        self.settings = settings
        self.migrate_apart = migrate_apart
        self.parts: Components | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.runner: web.AppRunner | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self.watcher: ConfigWatcher | None = None
        self.port: int | None = None
        self.last_reload: dict[str, Any] = {"result": None, "at": None, "problems": []}
        self.reloads: deque[dict[str, Any]] = deque(maxlen=RELOADS_KEPT)
        """The recent reloads, newest last (the console lists them)."""
        self._background: set[asyncio.Task[bool]] = set()
        self._job_tasks: set[asyncio.Task[Any]] = set()
        self._dead_letters_checked = 0.0
        self.webhook_api: WebhookApi | None = None
        self.site: Site | None = None
        self.cluster: Cluster | None = None
        self._cluster_task: asyncio.Task[None] | None = None
        self._failures: dict[str, int] = {}
        """Failed polls in a row, by source, for the retry backoff."""
        self._stopping = False
        self._serving = False
        self._polls_running = 0
        self._trim: asyncio.TimerHandle | None = None

    @property
    def leading(self) -> bool:
        return self.cluster is not None and self.cluster.leading

    async def start(self) -> None:
        if self.migrate_apart:  # the long-running process, before the database's threads
            _share_malloc_arenas()
            await _migrate_apart(self.settings.storage.url)
        self.parts = await build_components(self.settings)
        await self._start_web()  # first: a port in use fails at once, before any work
        await self.parts.feeds.rebuild()  # subscribers can fetch empty feeds from the start
        self._dispatch_task = asyncio.create_task(self.parts.dispatcher.run(), name="dispatcher")
        for plugged in self.parts.plugged.values():
            plugged.start(self._running())
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        from warnsvc.cluster import Cluster

        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.scheduler.start()
        http = self.settings.service.http
        self.cluster = Cluster(
            self.parts.store,
            self.settings,
            url=f"http://{http.host}:{self.port}",
            on_lead=self._lead,
            on_follow=self._follow,
            on_events=self._follow_events,
        )
        await self.cluster.begin()
        self._cluster_task = asyncio.create_task(self.cluster.run(), name="cluster")
        self._write_pid()
        if self.settings.path is not None and self.settings.service.watch_config:
            self.watcher = ConfigWatcher(self.settings.path, self.reload)
            self._watch_task = asyncio.create_task(self.watcher.run(), name="config-watcher")
        if self.migrate_apart:  # the long-running process: hand start-up's garbage back
            _release_memory()

    async def reload(self) -> bool:
        """Re-read the config file; apply it if valid, else keep running on the old one."""
        path = self.settings.path
        if path is None or self.parts is None:
            return False
        async with self._reload_lock:
            if self.watcher is not None:
                self.watcher.accept()
            try:
                new = await asyncio.to_thread(load_config, path)
            except ConfigError as exc:
                for problem in exc.problems:
                    log.error(
                        "config reload refused: %s",
                        problem,
                        extra={"action": "config_reload_failed"},
                    )
                metrics.CONFIG_RELOADS.labels(result="failed").inc()
                self.last_reload = {
                    "result": "failed",
                    "at": _iso(_now()),
                    "problems": [str(p) for p in exc.problems],
                }
                self.reloads.append(self.last_reload)
                return False
            plan = plan_reload(self.settings, new)
            restart = [*plan.restart_needed, *await self._apply(new, plan)]
            metrics.CONFIG_RELOADS.labels(result="ok").inc()
            self.last_reload = {
                "result": "ok",
                "at": _iso(_now()),
                "problems": [],
                "restart_needed": restart,
            }
            self.reloads.append(self.last_reload)
            log.info("config reloaded: %s", plan.summary(), extra={"action": "config_reloaded"})
            for key in restart:
                log.warning(
                    "%s changed: it takes effect at the next restart",
                    key,
                    extra={"action": "config_restart_needed"},
                )
            return True

    async def _apply(self, new: Settings, plan: ReloadPlan) -> list[str]:
        """Switch to ``new``: reschedule sources that changed; the rest applies to the next
        poll or delivery. Rows already queued stay as they are."""
        parts = self.parts
        assert parts is not None and self.scheduler is not None
        for source_id in (*plan.removed, *plan.changed):
            for job_id in (f"poll:{source_id}", f"confirm:{source_id}"):
                if self.scheduler.get_job(job_id) is not None:
                    self.scheduler.remove_job(job_id)
            await parts.remove_source(source_id)
            metrics.forget_source(source_id)
        old = self.settings
        self.settings = new.model_copy(
            update={  # these only change at the next restart
                "storage": old.storage,
                "service": new.service.model_copy(update={"http": old.service.http}),
                "feeds": new.feeds.model_copy(update={"dir": old.feeds.dir}),
            }
        )
        parts.settings = self.settings
        parts.poller.policy = detection_policy(self.settings)
        if parts.notices is not None:
            parts.notices.settings = self.settings
        restart: list[str] = []
        for plugged in parts.plugged.values():
            restart += await plugged.reconfigure(old, self.settings)
        for name in CHANNELS:  # a channel switched on by the reload starts with the next run
            added = CHANNELS.wanted(name, self.settings) and not CHANNELS.wanted(name, old)
            if added and name not in parts.plugged:
                restart.append(f"{name} (the section was added)")
        for source_id in (*plan.changed, *plan.added):
            parts.add_source(self.settings, self.settings.source(source_id))
            if self.leading:
                self._schedule(source_id)
        if self.cluster is not None:
            self.cluster.reconfigure(self.settings)
        return restart

    def _job(self, function: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        """``function`` as a scheduler job whose task :meth:`stop` waits for: a job cut off
        at a stop must finish unwinding (its transaction rolled back, its connection given
        back) before the store closes, or the connection and its thread outlive the store."""

        @functools.wraps(function)
        async def job(*args: Any) -> T:
            task = asyncio.current_task()
            if task is not None:
                self._job_tasks.add(task)
            try:
                return await function(*args)
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                # a stop cut it off: what it was writing is rolled back; no error
                log.info(
                    "%s interrupted by the shutdown",
                    function.__name__,
                    extra={"action": "job_interrupted"},
                )
                return cast("T", None)
            finally:
                if task is not None:
                    self._job_tasks.discard(task)

        return job

    async def _lead(self) -> None:
        """This replica leads now: poll every source at once, then on its interval."""
        assert self.parts is not None and self.scheduler is not None
        for source_id in self.parts.sources:
            self._schedule(source_id)
        self.scheduler.add_job(
            self._job(self.prune),
            "interval",
            id="retention",
            hours=24,
            next_run_time=_now(),
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )
        self.scheduler.add_job(
            self._job(self.operator_checks),
            "interval",
            id="operator-notices",
            seconds=5,
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )

    async def _follow(self) -> None:
        """Another replica leads (or none can, the database being away): stop leader work."""
        if self.scheduler is None or not self.scheduler.running:
            return
        for job in self.scheduler.get_jobs():
            self.scheduler.remove_job(job.id)

    async def _follow_events(self) -> None:
        """Another replica wrote events: serve them in the feeds, deliver their rows."""
        assert self.parts is not None
        self.parts.dispatcher.wake()
        await self.parts.feeds.rebuild()

    async def operator_checks(self) -> None:
        """Queue new operator notices (every few seconds); look at dead letters (every 5 min)."""
        parts = self.parts
        if parts is None or parts.notices is None:
            return
        now = _now()
        if now.timestamp() - self._dead_letters_checked >= 300:
            self._dead_letters_checked = now.timestamp()
            await parts.notices.check_dead_letters(now=now)
        await parts.forward_notices()

    async def prune(self) -> int:
        """Delete delivered outbox rows older than the retention period."""
        assert self.parts is not None
        cutoff = _now() - timedelta(seconds=self.settings.storage.retention)
        removed = await self.parts.outbox.prune(before=cutoff)
        if removed:
            log.info(
                "pruned %d delivered outbox rows older than %s",
                removed,
                _iso(cutoff),
                extra={"action": "outbox_pruned"},
            )
        return removed

    def _write_pid(self) -> None:
        pid_file = self.settings.service.pid_file
        if pid_file is not None:
            pid_file.parent.mkdir(parents=True, exist_ok=True)
            pid_file.write_text(f"{os.getpid()}\n", encoding="ascii")

    def _remove_pid(self) -> None:
        pid_file = self.settings.service.pid_file
        if pid_file is not None and pid_file.is_file():
            with contextlib.suppress(OSError, ValueError):
                if int(pid_file.read_text(encoding="ascii").strip()) == os.getpid():
                    pid_file.unlink()

    def _schedule(self, source_id: str) -> None:
        assert self.scheduler is not None
        config = self.settings.source(source_id)
        self.scheduler.add_job(
            self._job(self.poll_job),
            "interval",
            args=[source_id],
            id=f"poll:{source_id}",
            seconds=config.interval,
            jitter=config.jitter or None,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(config.interval),
            next_run_time=_now(),
            replace_existing=True,
        )

    async def poll_job(self, source_id: str) -> PollReport:
        """One scheduled poll: record it, wake the dispatcher, schedule a confirmation."""
        assert self.parts is not None
        if source_id not in self.parts.sources:  # removed by a reload while queued
            return PollReport(source_id=source_id, ok=False, error="source removed")
        if not self.leading:  # the lead was lost as this job fired
            return PollReport(source_id=source_id, ok=False, error="not the leader")
        self._polls_running += 1
        try:
            report = await self.parts.poller.poll(source_id)
        except asyncio.CancelledError:
            if not self._stopping:
                raise
            # a shutdown during a poll: nothing of it was written, and that is no error
            log.info(
                "poll of %s interrupted by the shutdown",
                source_id,
                extra={"action": "poll_interrupted", "source": source_id},
            )
            return PollReport(source_id=source_id, ok=False, error="interrupted by shutdown")
        except StoreError as exc:
            # the database is away: nothing was written; the next poll tries again
            log.error(
                "poll of %s not recorded: %s",
                source_id,
                exc,
                extra={"action": "poll_not_recorded", "source": source_id},
            )
            report = PollReport(source_id=source_id, ok=False, error=str(exc))
        except Exception:
            log.exception(
                "poll of %s crashed",
                source_id,
                extra={"action": "poll_crashed", "source": source_id},
            )
            raise
        finally:
            self._polls_running -= 1
            self._release_memory_when_idle()
        self._retry_soon_if_failed(report)
        if report.events:
            self.parts.dispatcher.wake()
        if report.pending and self.scheduler is not None:
            delay = self.settings.detection.confirm_delay
            self.scheduler.add_job(
                self._job(self.poll_job),
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

    def _release_memory_when_idle(self) -> None:
        """Once no poll runs any more, give the memory the polls freed back to the system, a
        second later (polls ending together share one trim). Only ``warnsvc run`` does."""
        if not self.migrate_apart or self._polls_running or self._trim is not None:
            return

        def trim() -> None:
            self._trim = None
            _trim_malloc()

        self._trim = asyncio.get_running_loop().call_later(IDLE_TRIM_DELAY, trim)

    def _retry_soon_if_failed(self, report: PollReport) -> None:
        """A failed poll is tried again after a backoff (about a minute, doubling up to the
        source's interval), not a whole interval later; a good poll resets the backoff."""
        source_id = report.source_id
        if report.ok:
            self._failures.pop(source_id, None)
            return
        failures = self._failures[source_id] = self._failures.get(source_id, 0) + 1
        job = self.scheduler.get_job(f"poll:{source_id}") if self.scheduler else None
        interval = self.settings.source(source_id).interval
        delay = min(RETRY_FIRST * 2 ** min(failures - 1, 30), interval)
        delay *= random.uniform(0.9, 1.0)  # replicas and sources do not retry in step
        if job is None or self.scheduler is None or delay >= interval * 0.9:
            return
        when = _now() + timedelta(seconds=delay)
        if job.next_run_time is None or when < job.next_run_time:
            self.scheduler.modify_job(job.id, next_run_time=when)
            log.info(
                "source %s failed %d time(s) in a row; next try in %.0fs",
                source_id,
                failures,
                delay,
                extra={"action": "poll_retry_scheduled", "source": source_id},
            )

    def _running(self) -> Running:
        assert self.parts is not None
        return Running(wake=self.parts.dispatcher.wake, leading=lambda: self.leading)

    async def _start_web(self) -> None:
        from aiohttp import web

        from warnsvc.web.app import make_app

        http = self.settings.service.http
        if self.parts is not None and self.parts.webhooks is not None:
            self.webhook_api = self.parts.webhooks.api(self.parts.dispatcher.wake)
        app = make_app(
            feeds_dir=self.settings.feeds.dir,
            readiness=self.readiness,
            title=self.settings.feeds.title,
            metrics=self.metrics,
            role=lambda: "leader" if self.leading else "follower",
            routes=[
                *self._cap_routes(),
                *self._page_routes(),
                *self._console_routes(),
                *self._portal_routes(),
            ],
        )
        for plugged in self.parts.plugged.values() if self.parts is not None else ():
            plugged.mount(app, self._running())
        if self.parts is not None and self.parts.email is not None and self.site is not None:
            from warnsvc.web.subscriptions import FORM_CHOICES

            app[FORM_CHOICES] = self.site.form_choices
        # requests still running at a stop get the service's own grace, not aiohttp's minute
        grace = self.settings.service.shutdown_timeout
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=grace)
        await self.runner.setup()
        site = web.TCPSite(self.runner, http.host, http.port)
        try:
            await site.start()
        except OSError as exc:
            reason = {errno.EADDRINUSE: "address in use", errno.EACCES: "permission denied"}
            why = reason.get(exc.errno or 0, exc.strerror or str(exc))
            raise ListenError(f"cannot listen on {http.host}:{http.port}: {why}") from None
        self._serving = True
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else http.port
        log.info(
            "serving http://%s:%s/ (feeds under /feeds/)",
            http.host,
            self.port,
            extra={"action": "http_started"},
        )

    def _cap_routes(self) -> list[web.RouteDef]:
        """``/cap/{event id}.xml`` and ``/feeds/cap.atom``, under the config of the moment."""
        from warnsvc.cap.profile import profile_from_settings
        from warnsvc.web.cap import CapPages

        if self.parts is None:
            return []
        return CapPages(self.parts.store, lambda: profile_from_settings(self.settings)).routes()

    def _page_routes(self) -> list[web.RouteDef]:
        """The public pages (``/``, ``/situations/{id}``, feeds in a browser)."""
        from warnsvc.web.pages import Site

        if self.parts is None:
            return []
        email = self.parts.email
        self.site = Site(
            store=self.parts.store,
            settings=lambda: self.settings,
            feeds_dir=self.settings.feeds.dir,
            next_polls=self._next_polls,
            signup=lambda: email is not None and email.settings.signup.enabled,
        )
        return self.site.routes()

    def _console_routes(self) -> list[web.RouteDef]:
        """``/console``, when the environment has a console token."""
        from warnsvc.web.console import Console, console_token

        token = console_token()
        parts = self.parts
        if parts is None or token is None:
            return []
        return Console(
            token=token,
            store=parts.store,
            settings=lambda: self.settings,
            next_polls=self._next_polls,
            poll_now=self.poll_now,
            reloads=lambda: list(self.reloads),
            publish=self._publish,
            retract=self._retract,
            wake=parts.dispatcher.wake,
        ).routes()

    def _portal_routes(self) -> list[web.RouteDef]:
        """``/partners``, when the service has webhooks (and so the partner API)."""
        from warnsvc.web.portal import Portal, portal_secret

        if self.webhook_api is None:
            return []
        portal = Portal(
            api=self.webhook_api, settings=lambda: self.settings, secret=portal_secret()
        )
        return portal.routes()

    def poll_now(self, source_id: str) -> str:
        """Move a source's next poll to now (on the leader); what happened, in words."""
        if not self.leading or self.scheduler is None:
            return "this replica does not lead: ask again on the leader, which polls"
        job = self.scheduler.get_job(f"poll:{source_id}")
        if job is None:
            return f"{source_id} is not scheduled (is it enabled?)"
        self.scheduler.modify_job(job.id, next_run_time=_now())
        return f"{source_id} is being polled now"

    async def _publish(self, situation: str, level: str, note: str) -> str:
        from warnsvc.manual import publish

        assert self.parts is not None
        event = await publish(self.parts, situation=situation, level=level, note=note, now=_now())
        self.parts.dispatcher.wake()
        return event.id

    async def _retract(self, event_id: str, note: str) -> str:
        from warnsvc.manual import retract

        assert self.parts is not None
        event = await retract(self.parts, event_id=event_id, note=note, now=_now())
        self.parts.dispatcher.wake()
        return event.id

    async def readiness(self, replica_only: bool = False) -> tuple[bool, dict[str, Any]]:
        """The checks of ``/readyz``; ``replica_only`` leaves out the sources' health, which
        every replica shares (a load balancer should not drop them all for a failing page)."""
        checks: dict[str, Any] = {}
        parts = self.parts
        checks["store"] = bool(parts and await parts.store.ping())
        checks["scheduler"] = bool(self.scheduler and self.scheduler.running)
        cluster = self.cluster
        checks["replica"] = {
            "id": cluster.me.id if cluster else None,
            "role": "leader" if self.leading else "follower",
            "leader": cluster.view.leader_id if cluster else None,
            "config_mismatch": cluster.view.mismatch if cluster else None,
        }
        checks["config"] = {
            "path": str(self.settings.path) if self.settings.path else None,
            "loaded": True,
            "last_reload": self.last_reload["result"],
            "last_reload_at": self.last_reload["at"],
            "last_reload_error": self.last_reload["problems"],
            "restart_needed": self.last_reload.get("restart_needed", []),
        }
        failing: dict[str, str | None] = {}
        tolerated: dict[str, str | None] = {}
        if parts is not None and checks["store"]:
            threshold = self.settings.detection.failure_threshold
            try:
                healths = await parts.store.all_source_health()
            except StoreError:
                healths, checks["store"] = [], False
            for health in healths:
                if health.source_id in parts.sources and health.consecutive_failures >= threshold:
                    critical = self.settings.source(health.source_id).critical
                    (failing if critical else tolerated)[health.source_id] = health.last_error
        checks["sources_failing"] = failing
        checks["sources_failing_tolerated"] = tolerated
        checks["next_polls"] = self._next_polls()
        mismatch = cluster is not None and cluster.view.mismatch is not None
        sources_ok = replica_only or not failing
        ready = checks["store"] and checks["scheduler"] and sources_ok and not mismatch
        return ready, checks

    def _next_polls(self) -> dict[str, str]:
        if self.scheduler is None or not self.scheduler.running:
            return {}
        result: dict[str, str] = {}
        for job in self.scheduler.get_jobs():
            kind, _, source_id = job.id.partition(":")
            when = job.next_run_time
            if kind in ("poll", "confirm") and when is not None:
                earlier = result.get(source_id)
                if earlier is None or when.isoformat() < earlier:
                    result[source_id] = when.astimezone(UTC).isoformat()
        return result

    async def metrics(self) -> bytes:
        """The Prometheus exposition, with outbox gauges read from the store now."""
        metrics.LEADER.set(1 if self.leading else 0)
        if self.parts is not None:
            try:
                counts = await self.parts.outbox.counts()
                oldest = await self.parts.outbox.oldest_pending()
            except StoreError:
                return metrics.render()  # the database is away; counters still answer
            pending: dict[str, int] = {}
            for (channel, state), count in counts.items():
                if state in ("pending", "in_flight"):
                    pending[channel] = pending.get(channel, 0) + count
            channels = sorted({*self.parts.dispatcher.channels, *(c for c, _ in counts)})
            metrics.set_outbox(pending, oldest, now=_now(), channels=channels)
        return metrics.render()

    async def stop(self) -> None:
        """Stop polling, let in-flight work finish within the timeout, close everything."""
        self._stopping = True
        timeout = self.settings.service.shutdown_timeout
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self.cluster is not None:
            await self.cluster.stop()
        if self._cluster_task is not None:
            self._cluster_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._cluster_task
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # cancels the jobs running now
        for task in self._background:
            task.cancel()
        unwinding = {*self._job_tasks, *self._background}
        if unwinding:  # let them give their connections back before the store closes
            await asyncio.wait(unwinding, timeout=timeout)
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
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
        self._remove_pid()
        if self.parts is not None:
            await self.parts.close()
        if self._serving:  # else it never started: the error says why, alone
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

        def on_hangup() -> None:
            log.info("received SIGHUP, reloading the config", extra={"action": "reload_requested"})
            task = loop.create_task(self.reload(), name="reload")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            for signum in (*signals, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(signum)
            watchdog = StopWatchdog(self.settings.service.shutdown_timeout + STOP_MARGIN, loop)
            watchdog.start()
            try:
                await self.stop()
            finally:
                watchdog.cancel()


STOP_MARGIN = 10.0
"""Seconds a stop may take beyond ``service.shutdown_timeout`` (closing the store, the web
server and the sessions) before :class:`StopWatchdog` ends the process."""


class StopWatchdog:
    """End a stop that hangs: after ``limit`` seconds, write every thread's stack and every
    pending task to stderr, then exit with status 1.

    A thread, not a task, so that it fires even when the event loop itself is blocked. Exiting
    is safe for the same reason a second signal is: every event and delivery is durable before
    it is sent, and rows in flight are claimed again when their lease ends.
    """

    def __init__(self, limit: float, loop: asyncio.AbstractEventLoop) -> None:
        self.limit = limit
        self._loop = loop
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="stop-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.limit):
            return
        log.error(
            "the stop did not finish within %gs: exiting; what it waited on follows",
            self.limit,
            extra={"action": "stop_hung"},
        )
        self._dump()
        logging.shutdown()
        os._exit(1)

    def _dump(self) -> None:
        import faulthandler
        import sys

        with contextlib.suppress(Exception):
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for _ in range(3):  # the loop's thread may change the set of tasks as we copy it
            try:
                tasks = list(asyncio.all_tasks(self._loop))
            except RuntimeError:
                continue
            for task in tasks:
                with contextlib.suppress(Exception):
                    task.print_stack(limit=8, file=sys.stderr)
            break
        with contextlib.suppress(Exception):
            sys.stderr.flush()


MALLOC_ARENAS = 2
"""How many malloc arenas the threads of ``warnsvc run`` share (glibc's ``M_ARENA_MAX``)."""
_M_ARENA_MAX = -8  # mallopt's parameter number in glibc's <malloc.h>


def _share_malloc_arenas() -> None:
    """Have the database's threads share :data:`MALLOC_ARENAS` malloc arenas.

    glibc gives each thread that allocates an arena of its own (up to eight per core), and
    every arena keeps pages its thread freed: with a connection pool of SQLite threads that is
    up to a megabyte held for nothing between polls. The threads spend their time in SQLite,
    not in malloc, so sharing costs no measurable time. Without glibc this does nothing.
    """
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _release_memory() -> None:
    """Collect start-up's garbage (parsed config, compiled schemas) and give the freed pages
    back to the system, where the C library allows it (glibc's ``malloc_trim``)."""
    import gc

    gc.collect()
    _trim_malloc()


def _trim_malloc() -> None:
    """Give the pages malloc holds free back to the system (glibc's ``malloc_trim``); a few
    milliseconds. Without glibc this does nothing."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


async def _migrate_apart(url: str) -> None:
    """Bring the schema up to date in a child process, if it is behind."""
    store = await Store.open(url, migrate=False)  # an unreachable database fails here, as ever
    try:
        stamped = await store.schema_revisions()
    finally:
        await store.close()
    if stamped != head_revisions():
        # an upgrade is news to an operator; creating a new database's tables is not (and a
        # start that fails, on a port in use say, stays one line)
        log.log(
            logging.INFO if stamped else logging.DEBUG,
            "migrating the database" if stamped else "creating the database tables",
            extra={"action": "migrate"},
        )
        level, log_format = current_logging()
        await upgrade_apart(url, log_level=level, log_format=log_format)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
