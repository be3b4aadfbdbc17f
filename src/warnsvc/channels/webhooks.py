"""Webhooks: signed JSON POSTs to partner endpoints (Standard Webhooks).

Each event gets one outbox row per matching endpoint, written with the event
(:meth:`WebhookChannel.recipients`). :meth:`WebhookChannel.deliver` sends a claimed batch:

- bounded overall concurrency, at most ``per_endpoint`` requests at once per endpoint, one
  keep-alive connection pool, a timeout per attempt, no redirects, and the SSRF guard's
  resolver (the address checked is the address connected to);
- headers ``webhook-id`` (the event id: receivers dedupe on it), ``webhook-timestamp`` and
  ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``; during a secret's
  grace period a second ``v1,`` signature made with the previous secret);
- 2xx is success; 410 Gone disables the endpoint; 429 goes to the persisted schedule no sooner
  than its Retry-After; other answers, timeouts and connection errors are retried a few times
  in process (tenacity) and then left to the persisted schedule (the dispatcher's
  :class:`~warnsvc.outbox.RetryPolicy`), then dead-letter;
- an endpoint that keeps failing (a whole retry schedule without a success, or for
  ``disable_after``) is disabled, and the operators and the partner's contact get a notice
  (recorded in ``webhook_notices`` and logged: warnsvc has no mail channel for them yet).

Rows not started before the batch's deadline (so well within the claim's lease), or in flight
when :meth:`WebhookChannel.abort` is called at shutdown, come back as *deferred*: the
dispatcher releases them untouched.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncConnection
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from warnsvc import __version__
from warnsvc.channels.base import Outcome
from warnsvc.errors import PermanentDeliveryError, TransientDeliveryError
from warnsvc.model import Event, EventType
from warnsvc.outbox import Delivery, RetryPolicy
from warnsvc.security.ssrf import Guard, GuardedResolver, UnsafeAddressError, UnsafeUrlError
from warnsvc.store.webhooks import OPERATORS, WEBHOOKS_CHANNEL, Endpoint, EndpointStore

__all__ = [
    "WEBHOOKS_CHANNEL",
    "DeliverySettings",
    "WebhookChannel",
    "make_webhook_session",
    "sign_payload",
]

log = logging.getLogger(__name__)

_MAX_RESPONSE_READ = 64 * 1024
_QUICK_WAIT_MAX = 1.0


def sign_payload(msg_id: str, timestamp: int, body: bytes, keys: Sequence[bytes]) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )


def encode_payload(payload: Mapping[str, Any]) -> bytes:
    """The request body: compact UTF-8 JSON, the bytes that are signed."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    """How the channel sends (see ``webhooks`` in the configuration)."""

    timeout: float = 10.0
    concurrency: int = 64
    per_endpoint: int = 4
    batch: int = 500
    parallel_batches: int = 2
    lease: float = 120.0
    quick_retries: int = 2
    disable_after: float = 172_800.0
    user_agent: str = f"warnsvc/{__version__}"

    @property
    def longest_send(self) -> float:
        """An upper bound on one delivery: every attempt timing out, plus the waits."""
        return self.timeout * (self.quick_retries + 1) + self.quick_retries * _QUICK_WAIT_MAX


def make_webhook_session(guard: Guard, settings: DeliverySettings) -> aiohttp.ClientSession:
    """One keep-alive pool for every endpoint, resolving through the SSRF guard."""
    connector = aiohttp.TCPConnector(
        limit=settings.concurrency,
        limit_per_host=0,
        resolver=GuardedResolver(guard),
        keepalive_timeout=30,
        ttl_dns_cache=60,
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,  # never through a proxy from the environment
        headers={"User-Agent": settings.user_agent},
        auto_decompress=False,
    )


class _AttemptFailedError(TransientDeliveryError):
    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        self.status = status
        super().__init__(message, retry_after=retry_after)


class _GoneError(PermanentDeliveryError):
    """The endpoint answered 410 Gone."""


def _quick_retry(exc: BaseException) -> bool:
    """Blips are retried in process; a 429 waits for its Retry-After on the schedule."""
    return isinstance(exc, _AttemptFailedError) and exc.status != 429


def retry_after_seconds(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - now).total_seconds())


class WebhookChannel:
    """Deliver outbox rows of channel ``webhooks`` to partner endpoints."""

    name = WEBHOOKS_CHANNEL

    def __init__(
        self,
        endpoints: EndpointStore,
        session: aiohttp.ClientSession,
        guard: Guard,
        *,
        settings: DeliverySettings,
        retry_policy: RetryPolicy,
        ranks: Mapping[str, tuple[str, int]],
        contacts: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoints = endpoints
        self.session = session
        self.guard = guard
        self.settings = settings
        self.retry_policy = retry_policy
        self.ranks = ranks
        self.contacts = dict(contacts or {})
        self.batch_size = settings.batch
        self.parallel_batches = settings.parallel_batches
        self.lease = settings.lease
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._per_endpoint: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}
        self._active: set[asyncio.Task[Outcome]] = set()
        self._aborted = False

    # -- routing -----------------------------------------------------------------------------

    async def recipients(self, conn: AsyncConnection, event: Event) -> Sequence[str]:
        if event.type is EventType.WEBHOOK_TEST:  # sent only to the endpoint that asked
            return []
        endpoints = await self.endpoints.routable(conn)
        return [e.id for e in endpoints if e.filters.matches(event, self.ranks)]

    # -- delivery ----------------------------------------------------------------------------

    def abort(self) -> None:
        """Shutdown: cancel sends in flight and start no more; their rows come back deferred."""
        self._aborted = True
        for task in list(self._active):
            task.cancel()

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        # A send must not start so late that it could outlive the claim's lease.
        start_by = loop.time() + self.lease - self.settings.longest_send - 3.0
        endpoints = await self.endpoints.by_ids(d.recipient for d in deliveries)
        bodies: dict[str, bytes] = {}
        checked: dict[str, str | None] = {}
        tasks: list[asyncio.Task[Outcome]] = []
        for delivery in deliveries:
            body = bodies.get(delivery.event_id)
            if body is None:
                body = bodies[delivery.event_id] = encode_payload(delivery.payload)
            endpoint = endpoints.get(delivery.recipient)
            task = asyncio.create_task(
                self._deliver_one(delivery, endpoint, body, start_by, checked)
            )
            self._active.add(task)
            task.add_done_callback(self._active.discard)
            tasks.append(task)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        outcomes = [
            r if isinstance(r, Outcome) else self._unexpected(d, r)
            for d, r in zip(deliveries, results, strict=True)
        ]
        await self._record_health(deliveries, outcomes, endpoints)
        return outcomes

    def _unexpected(self, delivery: Delivery, exc: BaseException) -> Outcome:
        if isinstance(exc, asyncio.CancelledError):
            return Outcome(delivery_id=delivery.id, ok=False, deferred=True, error="aborted")
        log.error(
            "webhook delivery %d crashed: %r",
            delivery.id,
            exc,
            extra={"action": "delivery_crashed", "channel": self.name, "delivery": delivery.id},
        )
        return Outcome(delivery_id=delivery.id, ok=False, error=f"internal error: {exc!r}")

    async def _deliver_one(
        self,
        delivery: Delivery,
        endpoint: Endpoint | None,
        body: bytes,
        start_by: float,
        checked: dict[str, str | None],
    ) -> Outcome:
        did = delivery.id
        if endpoint is None:
            return Outcome(delivery_id=did, ok=False, permanent=True, error="endpoint deleted")
        if not endpoint.enabled:
            reason = endpoint.disabled_reason or "disabled"
            return Outcome(
                delivery_id=did, ok=False, permanent=True, error=f"endpoint disabled: {reason}"
            )
        slot = self._endpoint_slot(endpoint.id)
        await slot.acquire()
        try:
            async with self._slots:
                loop = asyncio.get_running_loop()
                if self._aborted or loop.time() > start_by:
                    return Outcome(delivery_id=did, ok=False, deferred=True, error="not started")
                problem = await self._check_url(endpoint.url, checked)
                if problem is not None:
                    return Outcome(delivery_id=did, ok=False, error=problem)
                return await self._send(delivery, endpoint, body)
        finally:
            slot.release()
            self._endpoint_done(endpoint.id)

    def _endpoint_slot(self, endpoint_id: str) -> asyncio.Semaphore:
        entry = self._per_endpoint.get(endpoint_id)
        if entry is None:
            semaphore = asyncio.Semaphore(self.settings.per_endpoint)
            entry = self._per_endpoint[endpoint_id] = (semaphore, [0])
        entry[1][0] += 1
        return entry[0]

    def _endpoint_done(self, endpoint_id: str) -> None:
        users = self._per_endpoint[endpoint_id][1]
        users[0] -= 1
        if users[0] == 0:
            del self._per_endpoint[endpoint_id]

    async def _check_url(self, url: str, checked: dict[str, str | None]) -> str | None:
        """The guard's objection to ``url``, or None: checked once per origin and batch.

        (The connector's resolver checks every connection again.)
        """
        scheme, _, rest = url.partition("://")
        origin = scheme + "://" + rest.split("/", 1)[0].split("?", 1)[0]
        if origin not in checked:
            try:
                self.guard.parse(url)
                await self.guard.check(origin + "/")
                checked[origin] = None
            except UnsafeUrlError as exc:
                checked[origin] = f"refused by the SSRF guard: {exc}"
        return checked[origin]

    async def _send(self, delivery: Delivery, endpoint: Endpoint, body: bytes) -> Outcome:
        did = delivery.id
        try:
            try:  # the first attempt without tenacity's machinery: most succeed
                status = await self._post(delivery, endpoint, body)
            except _AttemptFailedError as exc:
                if not _quick_retry(exc) or self.settings.quick_retries == 0:
                    raise
                status = await self._retry(delivery, endpoint, body)
        except _GoneError as exc:
            return Outcome(delivery_id=did, ok=False, permanent=True, status=410, error=str(exc))
        except _AttemptFailedError as exc:
            return Outcome(
                delivery_id=did,
                ok=False,
                status=exc.status,
                error=str(exc),
                retry_after=exc.retry_after,
            )
        return Outcome(delivery_id=did, ok=True, status=status)

    async def _retry(self, delivery: Delivery, endpoint: Endpoint, body: bytes) -> int:
        """The quick in-process retries after a failed first attempt (tenacity)."""
        status = 0
        await asyncio.sleep(random.uniform(0.05, 0.2))  # a short pause before the first retry
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self.settings.quick_retries),
            wait=wait_random_exponential(multiplier=0.2, max=_QUICK_WAIT_MAX),
            retry=retry_if_exception(_quick_retry),
            reraise=True,
        ):
            with attempt:
                status = await self._post(delivery, endpoint, body)
        return status

    async def _post(self, delivery: Delivery, endpoint: Endpoint, body: bytes) -> int:
        now = datetime.now(UTC)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_payload(
                delivery.event_id, timestamp, body, endpoint.signing_keys(now)
            ),
        }
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with self.session.post(
                endpoint.url, data=body, headers=headers, allow_redirects=False, timeout=timeout
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                await response.content.read(_MAX_RESPONSE_READ)  # lets keep-alive reuse it
        except TimeoutError:
            raise _AttemptFailedError(f"timed out after {self.settings.timeout:g}s") from None
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, UnsafeAddressError) else exc
            raise _AttemptFailedError(f"cannot connect: {cause}") from None
        except aiohttp.ClientError as exc:
            raise _AttemptFailedError(f"{type(exc).__name__}: {exc}") from None
        if 200 <= status < 300:
            return status
        if status == 410:
            raise _GoneError("HTTP 410 Gone: the receiver asked us to stop")
        if status == 429:
            wait = retry_after_seconds(retry_after, now=now)
            raise _AttemptFailedError(
                "HTTP 429 Too Many Requests", status=status, retry_after=wait or 60.0
            )
        raise _AttemptFailedError(f"HTTP {status}", status=status)

    # -- endpoint health ---------------------------------------------------------------------

    async def _record_health(
        self,
        deliveries: Sequence[Delivery],
        outcomes: Sequence[Outcome],
        endpoints: Mapping[str, Endpoint],
    ) -> None:
        now = datetime.now(UTC)
        succeeded: set[str] = set()
        failed: set[str] = set()
        exhausted: set[str] = set()
        gone: set[str] = set()
        for delivery, outcome in zip(deliveries, outcomes, strict=True):
            endpoint = endpoints.get(delivery.recipient)
            if endpoint is None or not endpoint.enabled or outcome.deferred:
                continue
            if outcome.ok:
                if endpoint.consecutive_failures or endpoint.failing_since:
                    succeeded.add(endpoint.id)
            elif outcome.status == 410:
                gone.add(endpoint.id)
            else:
                failed.add(endpoint.id)
                if delivery.attempts + 1 >= self.retry_policy.max_attempts:
                    exhausted.add(endpoint.id)
        failed -= succeeded
        if succeeded or failed:
            await self.endpoints.record_health(succeeded=succeeded, failed=failed, now=now)
        for endpoint_id in sorted(gone):
            await self._disable(endpoints[endpoint_id], "it answered 410 Gone", now=now)
        for endpoint_id in sorted(failed - gone):
            await self._maybe_disable(endpoints[endpoint_id], exhausted=endpoint_id in exhausted)

    async def _maybe_disable(self, before: Endpoint, *, exhausted: bool) -> None:
        now = datetime.now(UTC)
        failures = before.consecutive_failures + 1
        since = before.failing_since or now
        if exhausted and failures >= self.retry_policy.max_attempts:
            reason = f"{failures} failed attempts in a row, a whole retry schedule"
        elif (now - since).total_seconds() >= self.settings.disable_after:
            reason = f"failing since {since:%Y-%m-%d %H:%M} UTC"
        else:
            return
        await self._disable(before, reason, now=now)

    async def _disable(self, endpoint: Endpoint, reason: str, *, now: datetime) -> None:
        notify = [OPERATORS]
        contact = self.contacts.get(endpoint.partner_id or "")
        if contact:
            notify.append(contact)
        if not await self.endpoints.disable(endpoint, reason=reason, notify=notify, now=now):
            return
        log.warning(
            "webhook endpoint %s disabled: %s; notice recorded for %s",
            endpoint.id,
            reason,
            ", ".join(notify),
            extra={
                "action": "endpoint_disabled",
                "channel": self.name,
                "endpoint": endpoint.id,
                "partner": endpoint.partner_id,
            },
        )
