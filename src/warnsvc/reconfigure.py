"""Applying a reloaded config to the webhook and email channels, for their next deliveries.

What changes at once: the YAML's static webhook endpoints and partners (keys, contacts), level
ranks used by filters, the webhooks' retry schedule and API limits; the YAML's email subscribers
(added, changed, removed), the digest hour and the SMTP server and rate (a new connection pool;
sends in flight on the old one finish or are retried). Queued outbox rows are untouched, so
nothing is lost or sent twice by a reload.

What needs a restart (a warning says so): the webhooks' SSRF allow-lists and connection-pool
sizes, and adding or removing the whole ``email`` section.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from warnsvc.config import Settings
from warnsvc.security.keys import KeyRing, RateLimiter
from warnsvc.web.api import WebhookApi
from warnsvc.webhook_wiring import Webhooks, level_ranks, partners, retry_policy, static_endpoints

if TYPE_CHECKING:  # the email code is loaded only where email is configured
    from warnsvc.mail.wiring import EmailParts

log = logging.getLogger(__name__)


async def reconfigure_webhooks(
    hooks: Webhooks, old: Settings, new: Settings, *, api: WebhookApi | None
) -> list[str]:
    """Apply ``new.webhooks``; return the keys that only change at the next restart."""
    config, now = new.webhooks, datetime.now(UTC)
    ranks = level_ranks(new.scale_map())
    await hooks.endpoints.sync_static(static_endpoints(new, ranks, now=now), now=now)
    known = partners(config)
    keys = KeyRing(known)
    hooks.keys, hooks.ranks, hooks.settings = keys, ranks, config
    hooks.channel.ranks = ranks
    hooks.channel.contacts = {p.id: p.contact for p in known if p.contact}
    hooks.channel.retry_policy = retry_policy(config)
    if api is not None:
        api.keys, api.ranks = keys, ranks
        api.secret_grace, api.max_endpoints, api.max_body = (
            config.secret_grace,
            config.max_endpoints,
            config.max_body,
        )
        if config.rate_limit != old.webhooks.rate_limit:
            api.limiter = RateLimiter(config.rate_limit.requests, config.rate_limit.per)
    restart = []
    before, after = old.webhooks, config
    if (before.allow_hosts, before.allow_networks) != (after.allow_hosts, after.allow_networks):
        restart.append("webhooks.allow_hosts/allow_networks")
    pool = ("timeout", "concurrency", "per_endpoint", "batch", "parallel_batches", "lease")
    restart += [f"webhooks.{k}" for k in pool if getattr(before, k) != getattr(after, k)]
    return restart


async def reconfigure_email(parts: EmailParts, old: Settings, new: Settings) -> list[str]:
    """Apply ``new.email`` to a running email channel; return what needs a restart."""
    email = new.email
    if email is None or not email.enabled:
        return ["email (the section was removed or disabled)"]
    from warnsvc.mail.smtp import SmtpPool
    from warnsvc.mail.wiring import email_options

    options = email_options(new, email)
    previous = parts.mailer.pool
    if options.smtp != parts.options.smtp:
        parts.mailer.pool = SmtpPool(options.smtp)
        await previous.close()
    parts.mailer.options = options
    parts.options = options
    parts.settings = email
    await parts.prepare()  # re-syncs the YAML subscribers
    restart = []
    if old.email is not None and old.email.templates_dir != email.templates_dir:
        restart.append("email.templates_dir")
    return restart


def email_added(old: Settings, new: Settings) -> bool:
    return (old.email is None or not old.email.enabled) and (
        new.email is not None and new.email.enabled
    )


__all__ = ["email_added", "reconfigure_email", "reconfigure_webhooks"]
