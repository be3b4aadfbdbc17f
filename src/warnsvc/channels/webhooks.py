"""Webhooks: signed JSON POSTs to partner endpoints (Standard Webhooks).

Each event gets one outbox row per matching endpoint, written with the event
(:meth:`WebhookChannel.recipients`). :meth:`WebhookChannel.deliver` sends a claimed batch:

- bounded overall concurrency (a pool of at most ``concurrency`` sender tasks, fed from one
  queue shared by the batches in flight), at most ``per_endpoint`` requests at once per
  endpoint, one keep-alive connection pool, a timeout per attempt, no redirects, and the SSRF
  guard's resolver (the address checked is the address connected to);
- the endpoints of a batch are read fresh from the store (only what sending needs), the body
  is encoded once per event, and ``id.timestamp.body`` built once per event and second, so
  each request costs one HMAC per secret;
- headers ``webhook-id`` (the event id: receivers dedupe on it), ``webhook-timestamp`` and
  ``webhook-signature`` (``v1,<base64 HMAC-SHA256 of id.timestamp.body>``; during a secret's
  grace period a second ``v1,`` signature made with the previous secret);
- 2xx is success; 410 Gone disables the endpoint; 429 goes to the persisted schedule no sooner
  than its Retry-After; other answers, timeouts and connection errors are retried a few times
  in process (tenacity) and then left to the persisted schedule (the dispatcher's
  :class:`~warnsvc.outbox.RetryPolicy`), then dead-letter;
- an endpoint that keeps failing (a whole retry schedule without a success, or for
  ``disable_after``) is disabled, and the operators and the partner's contact get a notice
  (recorded in the store's ``notices`` and forwarded once, see :mod:`warnsvc.operators`).

Rows not started before the batch's deadline (so well within the claim's lease), or in flight
when :meth:`WebhookChannel.abort` is called at shutdown, come back as *deferred*: the
dispatcher releases them untouched.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from yarl import URL

from warnsvc import __version__
from warnsvc.channels.base import (
    ChannelContext,
    ChannelKind,
    ChannelOptions,
    Outcome,
    Plugged,
    Running,
)
from warnsvc.config import Settings, WebhooksSettings
from warnsvc.errors import (
    ConfigError,
    ConfigProblem,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from warnsvc.filters import Filter, Levels
from warnsvc.model import Event, EventType, Scale
from warnsvc.outbox import Delivery, RetryPolicy
from warnsvc.security.keys import KeyRing, Partner, RateLimiter, hash_key
from warnsvc.security.ssrf import Guard, GuardedResolver, UnsafeAddressError, UnsafeUrlError
from warnsvc.store.notices import OPERATOR_NOTICE
from warnsvc.store.webhooks import (
    OPERATORS,
    WEBHOOKS_CHANNEL,
    Endpoint,
    EndpointStore,
    SendTarget,
    filters_of,
)

if TYPE_CHECKING:
    from aiohttp import web

    from warnsvc.store.db import RouteContext, Store
    from warnsvc.web.api import WebhookApi

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
    return _signature(f"{msg_id}.{timestamp}.".encode() + body, keys)


def _signature(signed: bytes, keys: Sequence[bytes]) -> str:
    """``v1,<base64 HMAC-SHA256 of signed>`` per key (``signed`` is ``id.timestamp.body``)."""
    return " ".join(
        "v1," + binascii.b2a_base64(hmac.digest(key, signed, "sha256"), newline=False).decode()
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
        # a receiver's cookies are never sent anywhere (and no jar is consulted per request)
        cookie_jar=aiohttp.DummyCookieJar(),
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


@dataclass(slots=True, eq=False, kw_only=True)
class _Batch:
    """One :meth:`WebhookChannel.deliver` call: its outcomes, and what its rows share."""

    outcomes: list[Outcome | None]
    left: int
    done: asyncio.Future[None]
    start_by: float
    """Loop time after which no send of the batch may start (the claim's lease would end)."""
    checked: dict[str, str | None] = field(default_factory=dict)
    """The SSRF guard's objection per origin, or None: checked once per origin and batch."""
    signed: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """Per event: the timestamp and ``id.timestamp.body`` last signed, shared by endpoints."""
    cancelled: bool = False

    def settle(self, index: int, outcome: Outcome) -> None:
        """Record a row's outcome (the first one counts) and wake the batch when all are in."""
        if self.outcomes[index] is not None:
            return
        self.outcomes[index] = outcome
        self.left -= 1
        if self.left == 0 and not self.done.done():
            self.done.set_result(None)


@dataclass(slots=True, eq=False, kw_only=True)
class _Job:
    """One row waiting for a sender."""

    batch: _Batch
    index: int
    delivery: Delivery
    target: SendTarget
    url: URL
    body: bytes


class WebhookChannel:
    """Deliver outbox rows of channel ``webhooks`` to partner endpoints.

    Rows are sent by a pool of at most ``concurrency`` sender tasks fed from one queue, shared
    by every batch in flight; a sender that picks a row whose endpoint already has
    ``per_endpoint`` requests open parks it until one of them ends. Senders exist only while
    there is work, so an idle channel holds no task.
    """

    name = WEBHOOKS_CHANNEL

    def __init__(
        self,
        endpoints: EndpointStore,
        session: aiohttp.ClientSession,
        guard: Guard,
        *,
        settings: DeliverySettings,
        retry_policy: RetryPolicy,
        ranks: Levels,
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
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout)
        self._queue: deque[_Job] = deque()
        self._parked: dict[str, deque[_Job]] = {}
        self._open: dict[str, int] = {}  # endpoint id -> requests open
        self._senders: dict[asyncio.Task[None], _Job | None] = {}  # sender -> its row
        self._aborted = False

    @property
    def options(self) -> ChannelOptions:
        return ChannelOptions(
            batch_size=self.batch_size,
            parallel_batches=self.parallel_batches,
            lease=self.lease,
            retry_policy=self.retry_policy,
        )

    # -- routing -----------------------------------------------------------------------------

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        if event.type is EventType.WEBHOOK_TEST:  # sent only to the endpoint that asked
            return []
        passes: dict[str | None, bool] = {}  # endpoints with the same filters: one verdict
        recipients = []
        for endpoint_id, raw in await routes.webhook_routes():
            verdict = passes.get(raw)
            if verdict is None:
                verdict = passes[raw] = filters_of(raw).matches(event, self.ranks)
            if verdict:
                recipients.append(endpoint_id)
        return recipients

    # -- delivery ----------------------------------------------------------------------------

    def abort(self) -> None:
        """Shutdown: cancel sends in flight and start no more; their rows come back deferred."""
        self._aborted = True
        for sender in list(self._senders):
            sender.cancel()
        waiting = [*self._queue, *(job for jobs in self._parked.values() for job in jobs)]
        self._queue.clear()
        self._parked.clear()
        for job in waiting:
            job.batch.settle(job.index, _not_started(job.delivery))

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        # A send must not start so late that it could outlive the claim's lease.
        start_by = loop.time() + self.lease - self.settings.longest_send - 3.0
        targets = await self.endpoints.targets(d.recipient for d in deliveries)
        orphans = [d.id for d in deliveries if d.recipient not in targets]
        if orphans:  # routed just before their endpoint was deleted: dropped, as the API says
            await self.endpoints.drop_orphans(orphans)
        batch = _Batch(
            outcomes=[None] * len(deliveries),
            left=len(deliveries),
            done=loop.create_future(),
            start_by=start_by,
        )
        bodies: dict[str, bytes] = {}
        urls: dict[str, URL] = {}  # parsed once per batch, not again by every request
        for index, delivery in enumerate(deliveries):
            target = targets.get(delivery.recipient)
            if target is None:  # its row is gone: nothing to record, nothing to send
                batch.settle(index, _not_started(delivery))
            elif not target.enabled:
                reason = target.disabled_reason or "disabled"
                batch.settle(index, _dead(delivery, f"endpoint disabled: {reason}"))
            elif self._aborted:
                batch.settle(index, _not_started(delivery))
            else:
                body = bodies.get(delivery.event_id)
                if body is None:
                    body = bodies[delivery.event_id] = encode_payload(delivery.payload)
                job = _Job(
                    batch=batch,
                    index=index,
                    delivery=delivery,
                    target=target,
                    url=urls.get(target.url) or urls.setdefault(target.url, URL(target.url)),
                    body=body,
                )
                self._queue.append(job)
        self._spawn()
        if batch.left:
            try:
                await batch.done
            except asyncio.CancelledError:
                self._cancel(batch)
                raise
        outcomes = [o for o in batch.outcomes if o is not None]
        await self._record_health(deliveries, outcomes, targets)
        return outcomes

    def _spawn(self) -> None:
        """Start senders for the queued rows, up to the overall concurrency."""
        wanted = min(self.settings.concurrency - len(self._senders), len(self._queue))
        for _ in range(wanted):
            sender = asyncio.create_task(self._sender())
            self._senders[sender] = None
            sender.add_done_callback(self._sender_ended)

    def _sender_ended(self, sender: asyncio.Task[None]) -> None:
        self._senders.pop(sender, None)
        if not sender.cancelled() and sender.exception() is not None:  # a bug: keep going
            log.error("webhook sender crashed", exc_info=sender.exception())
        if self._queue and not self._aborted:
            self._spawn()  # a sender cancelled with its batch: the other rows still go

    def _cancel(self, batch: _Batch) -> None:
        """``deliver`` was cancelled: drop the batch's waiting rows, stop its sends."""
        batch.cancelled = True
        for sender, job in list(self._senders.items()):
            if job is not None and job.batch is batch:
                sender.cancel()

    async def _sender(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        queue, limit = self._queue, self.settings.per_endpoint
        while queue and not self._aborted:
            job = queue.popleft()
            if job.batch.cancelled:
                continue
            endpoint_id = job.target.id
            open_ = self._open.get(endpoint_id, 0)
            if open_ >= limit:  # the endpoint has enough: wait for one of its sends to end
                self._parked.setdefault(endpoint_id, deque()).append(job)
                continue
            self._open[endpoint_id] = open_ + 1
            self._senders[me] = job
            try:
                outcome = await self._attempt(job)
            except asyncio.CancelledError:
                job.batch.settle(job.index, _aborted(job.delivery))
                raise
            except Exception as exc:  # a bug must not lose the row: it is retried
                outcome = self._unexpected(job.delivery, exc)
            finally:
                self._senders[me] = None
                self._endpoint_done(endpoint_id)
            job.batch.settle(job.index, outcome)

    def _endpoint_done(self, endpoint_id: str) -> None:
        """One send to the endpoint ended: its next parked row may go."""
        left = self._open[endpoint_id] - 1
        if left:
            self._open[endpoint_id] = left
        else:
            del self._open[endpoint_id]
        parked = self._parked.get(endpoint_id)
        if parked:
            self._queue.append(parked.popleft())
            if not parked:
                del self._parked[endpoint_id]

    def _unexpected(self, delivery: Delivery, exc: BaseException) -> Outcome:
        log.error(
            "webhook delivery %d crashed: %r",
            delivery.id,
            exc,
            extra={"action": "delivery_crashed", "channel": self.name, "delivery": delivery.id},
        )
        return Outcome(delivery_id=delivery.id, ok=False, error=f"internal error: {exc!r}")

    async def _attempt(self, job: _Job) -> Outcome:
        if self._aborted or asyncio.get_running_loop().time() > job.batch.start_by:
            return _not_started(job.delivery)
        problem = await self._check_url(job.target.url, job.batch.checked)
        if problem is not None:
            return Outcome(delivery_id=job.delivery.id, ok=False, error=problem)
        return await self._send(job)

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

    async def _send(self, job: _Job) -> Outcome:
        did = job.delivery.id
        try:
            try:  # the first attempt without tenacity's machinery: most succeed
                status = await self._post(job)
            except _AttemptFailedError as exc:
                if not _quick_retry(exc) or self.settings.quick_retries == 0:
                    raise
                status = await self._retry(job)
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

    async def _retry(self, job: _Job) -> int:
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
                status = await self._post(job)
        return status

    def _sign(self, job: _Job, timestamp: int) -> str:
        """The signature of this attempt: ``id.timestamp.body`` is built once per event and
        second, the HMAC once per key."""
        event_id = job.delivery.event_id
        signed = job.batch.signed.get(event_id)
        if signed is None or signed[0] != timestamp:
            message = f"{event_id}.{timestamp}.".encode() + job.body
            signed = job.batch.signed[event_id] = (timestamp, message)
        keys = job.target.keys
        if len(keys) > 1:  # a rotated secret: the previous key signs too while its grace lasts
            keys = job.target.signing_keys(datetime.now(UTC))
        return _signature(signed[1], keys)

    async def _post(self, job: _Job) -> int:
        timestamp = int(time.time())  # every attempt is signed afresh
        headers = {
            "Content-Type": "application/json",
            "webhook-id": job.delivery.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self._sign(job, timestamp),
        }
        try:
            async with self.session.post(
                job.url,
                data=job.body,
                headers=headers,
                allow_redirects=False,
                timeout=self._timeout,
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
            wait = retry_after_seconds(retry_after, now=datetime.now(UTC))
            raise _AttemptFailedError(
                "HTTP 429 Too Many Requests", status=status, retry_after=wait or 60.0
            )
        raise _AttemptFailedError(f"HTTP {status}", status=status)

    # -- endpoint health ---------------------------------------------------------------------

    async def _record_health(
        self,
        deliveries: Sequence[Delivery],
        outcomes: Sequence[Outcome],
        endpoints: Mapping[str, SendTarget],
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

    async def _maybe_disable(self, before: SendTarget, *, exhausted: bool) -> None:
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

    async def _disable(
        self, endpoint: Endpoint | SendTarget, reason: str, *, now: datetime
    ) -> None:
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


def _dead(delivery: Delivery, error: str) -> Outcome:
    return Outcome(delivery_id=delivery.id, ok=False, permanent=True, error=error)


def _not_started(delivery: Delivery) -> Outcome:
    return Outcome(delivery_id=delivery.id, ok=False, deferred=True, error="not started")


def _aborted(delivery: Delivery) -> Outcome:
    return Outcome(delivery_id=delivery.id, ok=False, deferred=True, error="aborted")


# --------------------------------------------------------------------------- wiring

STATIC_PREFIX = "cfg_"
"""Endpoints declared in the YAML have the id ``cfg_<id>``; API-made ones ``ep_...``."""
OPERATOR_PREFIX = "ops_"
"""The operators' webhooks (``operators.webhooks``) are static endpoints ``ops_<hash of URL>``
that receive operators' notices only."""
OPERATOR_FILTER = Filter(event_types=(OPERATOR_NOTICE,))
"""Passes no routed event: operators' notices are queued by the notice forwarder."""


def operator_endpoint_id(url: str) -> str:
    """The endpoint id of an operators' webhook URL (stable while the URL is)."""
    return OPERATOR_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:16]


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


def static_endpoints(settings: Settings, ranks: Levels, *, now: datetime) -> list[Endpoint]:
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
        found.append(
            Endpoint(
                id=STATIC_PREFIX + declared.id,
                partner_id=declared.partner,
                url=declared.url,
                description=declared.description,
                enabled=declared.enabled,
                disabled_reason=None,
                static=True,
                filters=Filter.of(declared.filters),
                secret=declared.secret,
                created_at=now,
                updated_at=now,
            )
        )
    if problems:
        raise ConfigError(problems)
    return found + operator_endpoints(settings, now=now)


def operator_endpoints(settings: Settings, *, now: datetime) -> list[Endpoint]:
    """The operators' webhooks as endpoints: signed with their ``secret``, or else with one
    derived from the URL (a receiver that does not verify signatures ignores it)."""
    found: dict[str, Endpoint] = {}
    for declared in settings.operators.webhooks:
        url = str(declared.url)
        endpoint_id = operator_endpoint_id(url)
        found[endpoint_id] = Endpoint(
            id=endpoint_id,
            partner_id=None,
            url=url,
            description="operators' notices (operators.webhooks)",
            enabled=True,
            disabled_reason=None,
            static=True,
            filters=OPERATOR_FILTER,
            secret=declared.secret or _derived_secret(url),
            created_at=now,
            updated_at=now,
        )
    return list(found.values())


def _derived_secret(url: str) -> str:
    digest = hashlib.sha256(b"warnsvc operators' webhook " + url.encode()).digest()
    return "whsec_" + base64.b64encode(digest).decode("ascii")


class Webhooks(Plugged):
    """The webhook feature of one running service: the channel, its HTTP pool, the endpoints
    and the partners' API (``/api/v1``).

    A reload applies at once the YAML's static endpoints and partners (keys, contacts), the
    level ranks used by filters, the retry schedule and the API limits; the SSRF allow-lists
    and the connection pool's sizes need a restart.
    """

    def __init__(
        self,
        *,
        settings: WebhooksSettings,
        store: Store,
        channel: WebhookChannel,
        session: aiohttp.ClientSession,
        guard: Guard,
        keys: KeyRing,
        ranks: Levels,
        service_name: str,
    ) -> None:
        super().__init__(channel)
        self.settings = settings
        self.store = store
        self.endpoints = store.endpoints
        self.channel = channel
        self.session = session
        self.guard = guard
        self.keys = keys
        self.ranks = ranks
        self.service_name = service_name
        self.served: WebhookApi | None = None
        """The API the service serves (the last one :meth:`api` made); a reload updates it."""

    def api(self, wake: Callable[[], None]) -> WebhookApi:
        from warnsvc.web.api import WebhookApi

        self.served = WebhookApi(
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
        return self.served

    def mount(self, app: web.Application, running: Running) -> None:
        from warnsvc.web.api import make_api

        app.add_subapp("/api/v1", make_api(self.served or self.api(running.wake)))

    async def reconfigure(self, old: Settings, new: Settings) -> list[str]:
        config, now = new.webhooks, datetime.now(UTC)
        ranks = level_ranks(new.scale_map())
        await self.endpoints.sync_static(static_endpoints(new, ranks, now=now), now=now)
        known = partners(config)
        self.keys, self.ranks, self.settings = KeyRing(known), ranks, config
        self.channel.ranks = ranks
        self.channel.contacts = _contacts(known)
        self.channel.retry_policy = retry_policy(config)
        api = self.served
        if api is not None:
            api.keys, api.ranks = self.keys, ranks
            api.secret_grace, api.max_endpoints, api.max_body = (
                config.secret_grace,
                config.max_endpoints,
                config.max_body,
            )
            if config.rate_limit != old.webhooks.rate_limit:
                api.limiter = RateLimiter(config.rate_limit.requests, config.rate_limit.per)
        before = old.webhooks
        restart = []
        if (before.allow_hosts, before.allow_networks) != (
            config.allow_hosts,
            config.allow_networks,
        ):
            restart.append("webhooks.allow_hosts/allow_networks")
        pool = ("timeout", "concurrency", "per_endpoint", "batch", "parallel_batches", "lease")
        restart += [f"webhooks.{k}" for k in pool if getattr(before, k) != getattr(config, k)]
        return restart

    async def close(self) -> None:
        await self.session.close()


async def build(settings: Settings, context: ChannelContext) -> Webhooks:
    """Make the channel and its HTTP pool, and bring the YAML's endpoints into the store."""
    config, store = settings.webhooks, context.store
    ranks = level_ranks(settings.scale_map())
    now = datetime.now(UTC)
    await store.endpoints.sync_static(static_endpoints(settings, ranks, now=now), now=now)
    guard = make_guard(config)
    deliveries = delivery_settings(config, context.user_agent)
    session = make_webhook_session(guard, deliveries)
    known = partners(config)
    channel = WebhookChannel(
        store.endpoints,
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
        channel=channel,
        session=session,
        guard=guard,
        keys=KeyRing(known),
        ranks=ranks,
        service_name=settings.service.name,
    )


def _contacts(known: Iterable[Partner]) -> dict[str, str]:
    return {p.id: p.contact for p in known if p.contact}


KIND = ChannelKind(name=WEBHOOKS_CHANNEL, build=build)
