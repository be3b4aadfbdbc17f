"""Build the email channels, worker and pages from the settings (used by the service)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from aiohttp import web

from warnsvc.channels.email import DigestChannel, EmailChannel, EmailOptions, EmailWorker, Mailer
from warnsvc.channels.email import sender_from as _sender_from
from warnsvc.config import EmailSettings, Settings
from warnsvc.errors import ConfigError, ConfigProblem
from warnsvc.filters import Filter
from warnsvc.mail.smtp import SmtpConfig
from warnsvc.model import Scale
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.db import Store
from warnsvc.web.subscriptions import SubscriptionPages, add_subscription_routes

__all__ = ["EmailParts", "build_email", "email_options"]

log = logging.getLogger(__name__)


def smtp_config(email: EmailSettings) -> SmtpConfig:
    smtp = email.smtp
    return SmtpConfig(
        host=smtp.host,
        port=smtp.port_or_default(),
        security=smtp.security,
        user=smtp.user,
        password=smtp.password,
        verify_certificate=smtp.verify_certificate,
        ca_file=smtp.ca_file,
        timeout=smtp.timeout,
        connections=smtp.connections,
        messages_per_connection=smtp.messages_per_connection,
        rate=email.rate,
    )


def email_options(settings: Settings, email: EmailSettings) -> EmailOptions:
    base_url = settings.service.base_url
    return EmailOptions(
        service_name=settings.service.name,
        base_url=base_url,
        sender=_sender_from(email.from_address, email.reply_to, base_url),
        smtp=smtp_config(email),
        digest_hour=email.digest_hour,
        suppress_after=email.suppress_after,
        templates_dir=email.templates_dir,
        confirm_within=email.signup.confirm_within,
        resend_after=email.signup.resend_after,
        level_names={lv.id: lv.name for s in settings.scale_map().values() for lv in s.levels},
    )


def _check_references(settings: Settings, email: EmailSettings) -> None:
    """Subscribers name known sources and levels (the YAML validation cannot see across)."""
    sources = {s.id for s in settings.sources}
    levels = {lv.id for scale in settings.scale_map().values() for lv in scale.levels}
    file = str(settings.path or "config")
    problems = []
    for index, sub in enumerate(email.subscribers):
        where = f"email.subscribers[{index}]"
        for position, source in enumerate(sub.sources):
            if source not in sources:
                message = f"unknown source {source!r}; known: {', '.join(sorted(sources))}"
                problems.append(ConfigProblem(file, None, f"{where}.sources[{position}]", message))
        if sub.min_level is not None and sub.min_level not in levels:
            message = f"unknown level {sub.min_level!r}; known: {', '.join(sorted(levels))}"
            problems.append(ConfigProblem(file, None, f"{where}.min_level", message))
    if problems:
        raise ConfigError(problems)


@dataclass(slots=True)
class EmailParts:
    """Everything email adds to the service."""

    settings: EmailSettings
    options: EmailOptions
    mailer: Mailer
    channel: EmailChannel
    digests: DigestChannel
    worker: EmailWorker
    store: Store
    scales: Mapping[str, Scale]
    sources: Mapping[str, str]
    task: asyncio.Task[None] | None = None

    async def prepare(self) -> None:
        """Check templates, sync the YAML subscribers; warn about a non-https base URL."""
        problems = self.mailer.check_templates()
        if problems:
            where = str(self.settings.templates_dir or "built-in templates")
            raise ConfigError(
                [ConfigProblem(where, None, "email.templates_dir", p) for p in problems]
            )
        declared = [
            mailstore.Declared(
                address=s.address,
                name=s.name,
                mode=s.mode,
                filters=Filter(
                    situations=tuple(s.situations),
                    sources=tuple(s.sources),
                    min_level=s.min_level,
                    event_types=tuple(s.event_types),
                ),
            )
            for s in self.settings.subscribers
        ]
        counts = await self.store.subscribers.sync_declared(declared, now=datetime.now(UTC))
        log.info(
            "email subscribers from the config: %s",
            ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "none",
            extra={"action": "email_subscribers_synced", **counts},
        )
        if urlsplit(self.options.base_url).scheme != "https":
            log.warning(
                "service.base_url is not https: mail clients ignore a List-Unsubscribe that "
                "is not https (RFC 8058)",
                extra={"action": "email_base_url_not_https"},
            )

    def start(self, on_digests: Callable[[], None] | None = None) -> None:
        """Run the worker (confirmation mails, digests) in the background."""
        if on_digests is not None:
            self.worker.on_digests = on_digests
        if self.task is None:
            self.task = asyncio.create_task(self.worker.run(), name="email-worker")

    def add_routes(self, app: web.Application) -> None:
        add_subscription_routes(
            app,
            SubscriptionPages(
                subscribers=self.store.subscribers,
                templates=self.mailer.templates,
                service_name=self.options.service_name,
                scales=self.scales,
                sources=self.sources,
                digest_hour=self.options.digest_hour,
                confirm_within=self.options.confirm_within,
                resend_after=self.options.resend_after,
                requests_per_minute=self.settings.signup.requests_per_minute,
                signup=self.settings.signup.enabled,
                on_request=self.worker.wake,
            ),
        )

    async def close(self) -> None:
        self.worker.stop()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, timeout=10)
            except TimeoutError:
                log.warning("email worker did not stop in time", extra={"action": "email_stop"})
            self.task = None
        await self.mailer.close()


def build_email(
    settings: Settings, store: Store, *, on_digests: Callable[[], None] | None = None
) -> EmailParts | None:
    """The email parts, or None when ``email:`` is absent or disabled."""
    email = settings.email
    if email is None or not email.enabled:
        return None
    _check_references(settings, email)
    scales = settings.scale_map()
    options = email_options(settings, email)
    mailer = Mailer(options)
    return EmailParts(
        settings=email,
        options=options,
        mailer=mailer,
        channel=EmailChannel(store.subscribers, mailer, scales),
        digests=DigestChannel(store.subscribers, mailer, scales),
        worker=EmailWorker(store.subscribers, mailer, on_digests=on_digests),
        store=store,
        scales=scales,
        sources={s.id: s.name for s in settings.sources},
    )
