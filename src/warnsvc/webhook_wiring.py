"""Wiring of the webhook feature from settings: guard, keys, endpoint store, channel, API.

:func:`build_webhooks` is called by :func:`warnsvc.service.build_components`; the CLI uses the
same pieces (:func:`make_guard`, :func:`level_ranks`) so an endpoint added from the command line
passes the same checks as one registered through the API.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from warnsvc.channels.webhooks import DeliverySettings, WebhookChannel, make_webhook_session
from warnsvc.config import Settings, WebhooksSettings
from warnsvc.errors import ConfigError, ConfigProblem
from warnsvc.filters import Filter, Levels
from warnsvc.model import Scale
from warnsvc.outbox import RetryPolicy
from warnsvc.security.keys import KeyRing, Partner, RateLimiter, hash_key
from warnsvc.security.ssrf import Guard
from warnsvc.store.db import Store
from warnsvc.store.webhooks import Endpoint, EndpointStore
from warnsvc.web.api import WebhookApi

STATIC_PREFIX = "cfg_"
"""Endpoints declared in the YAML have the id ``cfg_<id>``; API-made ones ``ep_...``."""


def level_ranks(scales: Mapping[str, Scale]) -> Levels:
    """Every level id (unique across scales) -> (scale id, rank)."""
    return Levels(scales)


def make_guard(settings: WebhooksSettings) -> Guard:
    return Guard.build(settings.allow_hosts, settings.allow_networks)


def partners(settings: WebhooksSettings) -> list[Partner]:
    return [
        Partner(
            id=p.id,
            name=p.name,
            contact=p.contact,
            key_sha256=p.api_key_sha256 or hash_key(p.api_key or ""),
        )
        for p in settings.partners
    ]


def retry_policy(settings: WebhooksSettings) -> RetryPolicy:
    retry = settings.retry
    return RetryPolicy(
        initial=retry.initial, factor=retry.factor, cap=retry.cap, max_attempts=retry.max_attempts
    )


def delivery_settings(settings: WebhooksSettings, user_agent: str) -> DeliverySettings:
    return DeliverySettings(
        timeout=settings.timeout,
        concurrency=settings.concurrency,
        per_endpoint=settings.per_endpoint,
        batch=settings.batch,
        parallel_batches=settings.parallel_batches,
        lease=settings.lease,
        quick_retries=settings.quick_retries,
        disable_after=settings.disable_after,
        user_agent=user_agent,
    )


def static_endpoints(
    settings: Settings, ranks: Mapping[str, tuple[str, int]], *, now: datetime
) -> list[Endpoint]:
    """The YAML's endpoints as store records; an unknown ``min_level`` is a config error."""
    problems = []
    found = []
    file = str(settings.path or "config")
    for index, declared in enumerate(settings.webhooks.endpoints):
        level = declared.filters.min_level
        if level is not None and level not in ranks:
            where = f"webhooks.endpoints[{index}].filters.min_level"
            message = f"unknown level {level!r}; known levels: {', '.join(ranks)}"
            problems.append(ConfigProblem(file, None, where, message))
        filters = Filter(
            event_types=tuple(declared.filters.event_types),
            situations=tuple(declared.filters.situations),
            sources=tuple(declared.filters.sources),
            min_level=level,
        )
        found.append(
            Endpoint(
                id=STATIC_PREFIX + declared.id,
                partner_id=declared.partner,
                url=declared.url,
                description=declared.description,
                enabled=declared.enabled,
                disabled_reason=None,
                static=True,
                filters=filters,
                secret=declared.secret,
                created_at=now,
                updated_at=now,
            )
        )
    if problems:
        raise ConfigError(problems)
    return found


@dataclass(kw_only=True)
class Webhooks:
    """The webhook feature of one running service."""

    settings: WebhooksSettings
    store: Store
    endpoints: EndpointStore
    channel: WebhookChannel
    session: aiohttp.ClientSession
    guard: Guard
    keys: KeyRing
    ranks: Levels
    service_name: str

    def api(self, wake: Callable[[], None]) -> WebhookApi:
        return WebhookApi(
            store=self.store,
            keys=self.keys,
            limiter=RateLimiter(self.settings.rate_limit.requests, self.settings.rate_limit.per),
            guard=self.guard,
            ranks=self.ranks,
            service_name=self.service_name,
            secret_grace=self.settings.secret_grace,
            max_endpoints=self.settings.max_endpoints,
            max_body=self.settings.max_body,
            wake=wake,
        )


async def build_webhooks(settings: Settings, store: Store, *, user_agent: str) -> Webhooks:
    """Make the channel and its HTTP pool, and bring the YAML's endpoints into the store."""
    config = settings.webhooks
    ranks = level_ranks(settings.scale_map())
    endpoints = store.endpoints
    await endpoints.sync_static(
        static_endpoints(settings, ranks, now=datetime.now(UTC)), now=datetime.now(UTC)
    )
    guard = make_guard(config)
    deliveries = delivery_settings(config, user_agent)
    session = make_webhook_session(guard, deliveries)
    known = partners(config)
    channel = WebhookChannel(
        endpoints,
        session,
        guard,
        settings=deliveries,
        retry_policy=retry_policy(config),
        ranks=ranks,
        contacts=_contacts(known),
    )
    return Webhooks(
        settings=config,
        store=store,
        endpoints=endpoints,
        channel=channel,
        session=session,
        guard=guard,
        keys=KeyRing(known),
        ranks=ranks,
        service_name=settings.service.name,
    )


def _contacts(known: Iterable[Partner]) -> dict[str, str]:
    return {p.id: p.contact for p in known if p.contact}
