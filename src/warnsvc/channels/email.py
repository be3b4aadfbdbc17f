"""Email: immediate alerts, daily digests and double opt-in confirmations over SMTP.

Two channels share one :class:`Mailer` (templates, sender, SMTP pool):

- :class:`EmailChannel` (``email``): one outbox row per (event, subscriber) in immediate mode,
  recipient ``sub:<id>``, routed on the event's transaction like every channel.
- :class:`DigestChannel` (``email-digest``): routing records the event in the digest-mode
  subscribers' pending digest items (same transaction) and creates no row; at the digest hour
  :class:`EmailWorker` turns each subscriber's items into one digest (``dig_...``) with one
  outbox row per (digest, subscriber): recipient = the digest id, ``event_id`` = the newest
  event it covers (the outbox's foreign key keeps every row tied to a stored event).

Confirmation mails are not about an event, so they do not use the outbox: the confirmation row
itself is their durable queue (:mod:`warnsvc.store.subscriptions`), sent by :class:`EmailWorker`.

``deliver()`` sends a batch concurrently, bounded by the SMTP pool's connections and rate, and
within a time budget shorter than the outbox lease (rows not started by then are handed back for
a retry). A 5xx to RCPT TO is permanent and counts against the address; after
``suppress_after`` of them in a row the address is suppressed and an operator notice recorded.
A subscriber who unsubscribed before its row was sent is skipped (the row completes unsent).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from warnsvc.addresses import format_mailbox
from warnsvc.channels.base import (
    BaseChannel,
    ChannelContext,
    ChannelKind,
    ChannelOptions,
    Outcome,
    Plugged,
    Running,
)
from warnsvc.config import EmailSettings, Settings
from warnsvc.errors import ConfigError, ConfigProblem, StoreError
from warnsvc.filters import Filter, Levels
from warnsvc.mail.compose import (
    Envelope,
    MailTemplates,
    Rendered,
    Sender,
    build_message,
    clean_line,
    clean_text,
    event_view,
)
from warnsvc.mail.personal import Personal, Prerendered, prerender, probes
from warnsvc.mail.smtp import SendError, SmtpConfig, SmtpPool
from warnsvc.model import Event, Scale
from warnsvc.outbox import Delivery, RetryPolicy
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.subscriptions import SubscriberStore

if TYPE_CHECKING:
    from aiohttp import web

    from warnsvc.store.db import RouteContext, Store

__all__ = [
    "DIGEST_CHANNEL",
    "EMAIL_CHANNEL",
    "KIND",
    "DigestChannel",
    "EmailChannel",
    "EmailOptions",
    "EmailParts",
    "EmailWorker",
    "EventMails",
    "Mailer",
    "build",
    "email_options",
    "smtp_config",
]

log = logging.getLogger(__name__)

EMAIL_CHANNEL = "email"
DIGEST_CHANNEL = mailstore.DIGEST_CHANNEL
CONFIRM_RETRY = RetryPolicy(initial=30.0, cap=1800.0, max_attempts=50)
"""Confirmation mails retry until their link expires."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailOptions:
    """Runtime settings of the email channels (built from ``email:`` and ``service:``)."""

    service_name: str
    base_url: str
    sender: Sender
    smtp: SmtpConfig
    digest_hour: int = 7
    suppress_after: int = 3
    templates_dir: Path | None = None
    confirm_within: float = 172_800.0
    resend_after: float = 3600.0
    batch_budget: float = 45.0
    """Seconds a ``deliver()`` call may start sends for (keep it below the outbox lease)."""
    level_names: Mapping[str, str] = field(default_factory=dict)

    def unsubscribe_url(self, token: str) -> str:
        if not _UNRESERVED.fullmatch(token):  # tokens are URL-safe: quote only what is not
            token = quote(token, safe="")
        return f"{self.base_url}/email/unsubscribe?token={token}"

    def confirm_url(self, token: str) -> str:
        return f"{self.base_url}/email/confirm?token={quote(token, safe='')}"


_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")
"""What :func:`urllib.parse.quote` leaves as it is (RFC 3986 unreserved characters)."""


class Mailer:
    """Templates, sender and SMTP pool, shared by the channels and the worker."""

    def __init__(self, options: EmailOptions, *, pool: SmtpPool | None = None) -> None:
        self.options = options
        self.templates = MailTemplates(options.templates_dir)
        self.pool = pool or SmtpPool(options.smtp)

    def _context(self, subscriber: mailstore.Subscriber | None, **extra: Any) -> dict[str, Any]:
        recipient = {"address": subscriber.address, "name": subscriber.name} if subscriber else {}
        return {
            "service_name": self.options.service_name,
            "base_url": self.options.base_url,
            "recipient": recipient,
            "unsubscribe_url": self.options.unsubscribe_url(subscriber.unsubscribe_token)
            if subscriber
            else "",
            **extra,
        }

    def personal(self, subscriber: mailstore.Subscriber) -> Personal:
        """The subscriber's values of the per-recipient template variables."""
        return Personal(
            address=subscriber.address,
            name=subscriber.name,
            unsubscribe_url=self.options.unsubscribe_url(subscriber.unsubscribe_token),
        )

    def event_mail(
        self,
        view: Mapping[str, Any],
        subscriber: mailstore.Subscriber,
        *,
        now: datetime,
    ) -> Envelope:
        """The mail of one event to one subscriber, rendered from the templates in full."""
        rendered = self.templates.mail("event", self._context(subscriber, event=view))
        return self.event_envelope(view, subscriber, rendered, now=now)

    def event_mails(self, view: Mapping[str, Any]) -> EventMails:
        """The mail of one event for any number of subscribers, rendered once if it can be."""
        return EventMails(self, view)

    def event_envelope(
        self,
        view: Mapping[str, Any],
        subscriber: mailstore.Subscriber,
        rendered: Rendered,
        *,
        now: datetime,
        encoded: tuple[str, str] | None = None,
    ) -> Envelope:
        return build_message(
            sender=self.options.sender,
            to_address=subscriber.address,
            to_name=subscriber.name,
            rendered=rendered,
            message_id=f"{view['id']}.{subscriber.id}",
            unsubscribe_url=self.options.unsubscribe_url(subscriber.unsubscribe_token),
            date=now,
            headers={"X-Warnsvc-Event": str(view["id"])},
            encoded=encoded,
        )

    def shared_context(self, **extra: Any) -> dict[str, Any]:
        """The template variables that are the same for every recipient."""
        return {
            "service_name": self.options.service_name,
            "base_url": self.options.base_url,
            **extra,
        }

    def digest_mail(
        self,
        digest_id: str,
        views: Sequence[Mapping[str, Any]],
        subscriber: mailstore.Subscriber,
        *,
        now: datetime,
    ) -> Envelope:
        rendered = self.templates.mail("digest", self._context(subscriber, events=list(views)))
        return build_message(
            sender=self.options.sender,
            to_address=subscriber.address,
            to_name=subscriber.name,
            rendered=rendered,
            message_id=digest_id,
            unsubscribe_url=self.options.unsubscribe_url(subscriber.unsubscribe_token),
            date=now,
            headers={"X-Warnsvc-Digest": digest_id},
        )

    def confirmation_mail(self, mail: mailstore.ConfirmationMail, *, now: datetime) -> Envelope:
        void_url = self.options.unsubscribe_url(mail.token)
        context = {
            "service_name": self.options.service_name,
            "base_url": self.options.base_url,
            "recipient": {"address": mail.address, "name": mail.name},
            "confirm_url": self.options.confirm_url(mail.token),
            "unsubscribe_url": void_url,
            "expires": f"{mail.expires_at:%d %B %Y %H:%M} UTC",
            "mode_text": self.mode_text(mail.mode),
            "filters_text": self.filters_text(mail.filters),
        }
        rendered = self.templates.mail("confirm", context)
        return build_message(
            sender=self.options.sender,
            to_address=mail.address,
            to_name=mail.name,
            rendered=rendered,
            message_id=f"confirm.{mail.id}",
            unsubscribe_url=void_url,
            date=now,
        )

    def notice_mail(self, address: str, payload: Mapping[str, Any], *, now: datetime) -> Envelope:
        """An operators' notice (see :mod:`warnsvc.operators`) to ``address``."""
        context = self.shared_context(
            recipient={"address": address, "name": None}, notice=notice_view(payload)
        )
        return build_message(
            sender=self.options.sender,
            to_address=address,
            to_name=None,
            rendered=self.templates.mail("notice", context),
            message_id=f"{payload.get('id', 'notice')}.{secrets.token_hex(4)}",
            unsubscribe_url=None,
            date=now,
            headers={"X-Warnsvc-Notice": str(payload.get("kind", ""))},
        )

    def mode_text(self, mode: str) -> str:
        if mode == mailstore.DIGEST:
            return f"a daily digest at {self.options.digest_hour:02d}:00 UTC"
        return "one mail per change, as it happens"

    def filters_text(self, filters: Filter) -> str:
        parts = []
        if filters.min_level:
            name = self.options.level_names.get(filters.min_level, filters.min_level)
            parts.append(f"{name} and above")
        if filters.situations:
            parts.append("situations " + ", ".join(filters.situations))
        if filters.sources:
            parts.append("sources " + ", ".join(filters.sources))
        if filters.event_types:
            parts.append("changes " + ", ".join(filters.event_types))
        return "; ".join(parts) or "every situation, every change"

    def check_templates(self) -> list[str]:
        """Render every mail template with sample data (fails fast on a broken override)."""
        sample = mailstore.Subscriber(
            id=0,
            address="reader@example.org",
            name="Reader",
            origin="self",
            status="active",
            mode="immediate",
            filters=Filter(),
            unsubscribe_token="token",
            hard_failures=0,
        )
        view = event_view(
            {
                "id": "evt_sample",
                "type": "risk.escalated",
                "situation": {"id": "x:y", "name": "Sample", "url": "https://example.org/"},
                "level": {"id": "b", "name": "B"},
                "previous_level": {"id": "a", "name": "A"},
                "summary": "Text.",
                "risk_factors": ["A factor."],
                "occurred_at": "2024-01-01T00:00:00Z",
            }
        )
        confirm = {
            **self._context(sample),
            "confirm_url": "https://example.org/",
            "expires": "1 January 2024",
            "mode_text": "m",
            "filters_text": "f",
        }
        notice = notice_view(
            {"kind": "source.unhealthy", "subject": "Subject", "detail": {"source": "s"}}
        )
        return self.templates.check(
            {
                "event": self._context(sample, event=view),
                "digest": self._context(sample, events=[view]),
                "confirm": confirm,
                "notice": self.shared_context(recipient={"address": "a@b"}, notice=notice),
            }
        )

    async def send(self, envelope: Envelope) -> None:
        await self.pool.send(envelope.sender, envelope.recipient, envelope.data)

    async def close(self) -> None:
        await self.pool.close()


class EventMails:
    """One event's mail for many subscribers: rendered once, then personalised per subscriber.

    See :mod:`warnsvc.mail.personal`: when the templates do more with a per-recipient variable
    than print it, each mail is rendered in full instead (same output, slower).
    """

    def __init__(self, mailer: Mailer, view: Mapping[str, Any]) -> None:
        self.mailer = mailer
        self.view = view
        made = prerender(
            mailer.templates,
            "event",
            mailer.shared_context(event=view),
            probes(mailer.options.unsubscribe_url),
        )
        self.prerendered = made if isinstance(made, Prerendered) else None
        self.why_not = made if isinstance(made, str) else None
        if self.why_not:
            log.info(
                "event %s: rendering each mail in full: %s",
                view.get("id"),
                self.why_not,
                extra={"action": "email_render_per_recipient"},
            )

    def build(self, subscriber: mailstore.Subscriber, now: datetime) -> Envelope:
        if self.prerendered is None:
            return self.mailer.event_mail(self.view, subscriber, now=now)
        subject, text, html = self.prerendered.encoded(self.mailer.personal(subscriber))
        rendered = Rendered(subject=subject, text="", html="")  # the parts come encoded
        return self.mailer.event_envelope(
            self.view, subscriber, rendered, now=now, encoded=(text, html)
        )


@dataclass(slots=True)
class _Job:
    delivery: Delivery
    subscriber: mailstore.Subscriber | None
    """None for an operators' notice (no subscriber: nothing to count against)."""
    build: Callable[[], Envelope]


NOTICE_PREFIX = "mailto:"
"""Rows whose recipient is ``mailto:<address>`` carry operators' notices, not events."""


def notice_view(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the notice templates show of a notice's payload (text cleaned of controls)."""
    detail = payload.get("detail")
    items = detail.items() if isinstance(detail, Mapping) else ()
    return {
        "kind": clean_line(payload.get("kind", "")),
        "subject": clean_line(payload.get("subject", "notice")),
        "detail": [(clean_line(str(k)), clean_text(str(v))) for k, v in items],
        "at": clean_line(payload.get("occurred_at", "")),
    }


class _Turn:
    """A batch's turn on the SMTP pool: taken before its subscribers are read, passed on once."""

    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock
        self._held = False

    async def __aenter__(self) -> _Turn:
        await self._lock.acquire()
        self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.pass_on()

    def pass_on(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


class _SubscriberChannel(BaseChannel):
    """What both channels share: load subscribers, send a batch, map errors to outcomes.

    The dispatcher reads ``batch_size``, ``parallel_batches`` and ``lease``: two batches in
    flight keep the SMTP pool busy while the other batch is being recorded and claimed (the
    pool still bounds the messages in flight), and the lease outlasts the time budget.

    The batches take turns: a batch reads its subscribers (so an unsubscribe is seen as late
    as before) and starts sending once the one before has started its last mail. Two batches
    sending side by side would finish together and leave the pool idle while both are
    recorded and the next two claimed; in turns, one batch's recording and the next claim
    overlap the other's sending. The time budget counts from the claim, turn or not.
    """

    name: str
    batch_size = 200
    parallel_batches = 2

    def __init__(
        self, subscribers: SubscriberStore, mailer: Mailer, scales: Mapping[str, Scale]
    ) -> None:
        self.subscribers = subscribers
        self.mailer = mailer
        self.scales = scales
        self.levels = Levels(scales)
        self.lease = mailer.options.batch_budget + mailer.options.smtp.timeout * 2 + 30
        self._aborted = False
        self._turn = asyncio.Lock()

    @property
    def options(self) -> ChannelOptions:
        return ChannelOptions(
            batch_size=self.batch_size, parallel_batches=self.parallel_batches, lease=self.lease
        )

    def turn(self) -> _Turn:
        return _Turn(self._turn)

    def abort(self) -> None:
        """Shutdown: messages not started yet are handed back (not counted as attempts)."""
        self._aborted = True

    async def _matching(self, routes: RouteContext, event: Event, mode: str) -> list[Any]:
        verdicts: dict[Filter, bool] = {}  # subscribers share filters: decide each once
        matching = []
        for sub in await routes.active_subscribers(mode):
            verdict = verdicts.get(sub.filters)
            if verdict is None:
                verdict = verdicts[sub.filters] = sub.filters.matches(event, self.levels)
            if verdict:
                matching.append(sub)
        return matching

    def _deadline(self) -> float:
        """When a batch claimed now must stop starting mails (its lease outlasts this)."""
        return asyncio.get_running_loop().time() + self.mailer.options.batch_budget

    async def _send_jobs(
        self, jobs: Sequence[_Job], skipped: Sequence[Outcome], *, deadline: float, turn: _Turn
    ) -> list[Outcome]:
        """Send a batch in ``turn``, which passes on as the batch's last mail starts."""
        # A few senders take the jobs in turn (not a task per job queueing for the pool): twice
        # the pool's connections, so one waiting out a quick retry leaves its connection to
        # another; each checks the time budget as it starts a job.
        found: list[tuple[Outcome, bool] | None] = [None] * len(jobs)

        def take_turns() -> Iterator[int]:
            for index in range(len(jobs)):
                if index == len(jobs) - 1:
                    turn.pass_on()  # the last mail of this batch is starting: the next may
                yield index

        turns = take_turns()

        async def sender() -> None:
            for index in turns:
                found[index] = await self._send_one(jobs[index], deadline)

        senders = min(len(jobs), 2 * self.mailer.options.smtp.connections)
        await asyncio.gather(*(sender() for _ in range(senders)))
        results = [r for r in found if r is not None]
        outcomes = [outcome for outcome, _ in results]
        # only addresses with hard failures on record need a reset after a success
        delivered = [
            job.subscriber.id
            for job, (outcome, _) in zip(jobs, results, strict=True)
            if outcome.ok and job.subscriber is not None and job.subscriber.hard_failures
        ]
        rejected = [
            job.subscriber.id
            for job, (_, hard) in zip(jobs, results, strict=True)
            if hard and job.subscriber is not None
        ]
        if not delivered and not rejected:
            return [*skipped, *outcomes]
        try:
            await self.subscribers.record_results(
                delivered=delivered,
                rejected=rejected,
                suppress_after=self.mailer.options.suppress_after,
                now=_now(),
            )
        except Exception:  # bounce bookkeeping must never turn sent mail into a retry
            log.exception("cannot record email results", extra={"action": "email_results_failed"})
        return [*skipped, *outcomes]

    async def _send_one(self, job: _Job, deadline: float) -> tuple[Outcome, bool]:
        delivery_id = job.delivery.id
        if self._aborted or asyncio.get_running_loop().time() > deadline:
            reason = "shutting down" if self._aborted else "the batch ran out of time"
            outcome = Outcome(
                delivery_id=delivery_id, ok=False, error=f"not attempted: {reason}", deferred=True
            )
            return outcome, False
        try:
            envelope = job.build()
        except Exception as exc:  # a template or data problem: retrying will not fix it soon
            log.exception(
                "cannot compose email for delivery %d",
                delivery_id,
                extra={"action": "email_compose_failed", "delivery": delivery_id},
            )
            return Outcome(delivery_id=delivery_id, ok=False, error=f"compose: {exc!r}"), False
        try:
            await self.mailer.send(envelope)
        except SendError as exc:
            outcome = Outcome(
                delivery_id=delivery_id,
                ok=False,
                error=str(exc),
                status=exc.code,
                permanent=exc.permanent,
            )
            return outcome, exc.recipient_rejected
        return Outcome(delivery_id=delivery_id, ok=True), False

    async def _load(
        self, deliveries: Sequence[Delivery], ids: Mapping[int, int | None]
    ) -> tuple[dict[int, mailstore.Subscriber], list[Outcome]]:
        """The active subscribers by delivery id; outcomes for rows with nobody to send to."""
        found = await self.subscribers.subscribers_by_id([i for i in ids.values() if i])
        active: dict[int, mailstore.Subscriber] = {}
        skipped = []
        for delivery in deliveries:
            sub = found.get(ids.get(delivery.id) or -1)
            if sub is None or sub.status != mailstore.ACTIVE:
                log.info(
                    "email delivery %d skipped: subscriber %s",
                    delivery.id,
                    sub.status if sub else "gone",
                    extra={"action": "email_skipped", "delivery": delivery.id},
                )
                skipped.append(Outcome(delivery_id=delivery.id, ok=True))
            else:
                active[delivery.id] = sub
        return active, skipped


class EmailChannel(_SubscriberChannel):
    """One mail per (event, subscriber) in immediate mode."""

    name = EMAIL_CHANNEL

    def __init__(
        self, subscribers: SubscriberStore, mailer: Mailer, scales: Mapping[str, Scale]
    ) -> None:
        super().__init__(subscribers, mailer, scales)
        self._prepared: dict[str, EventMails] = {}

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        return [s.key for s in await self._matching(routes, event, mailstore.IMMEDIATE)]

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        deadline = self._deadline()
        async with self.turn() as turn:
            now = _now()
            jobs = [self._notice_job(d, now) for d in deliveries if _is_notice(d)]
            deliveries = [d for d in deliveries if not _is_notice(d)]
            ids = {d.id: mailstore.subscriber_id(d.recipient) for d in deliveries}
            active, skipped = await self._load(deliveries, ids)
            mails: dict[str, EventMails] = {}
            for delivery in deliveries:
                sub = active.get(delivery.id)
                if sub is None:
                    continue
                mail = mails.get(delivery.event_id)
                if mail is None:
                    mail = mails[delivery.event_id] = self._event_mails(delivery)
                jobs.append(_Job(delivery, sub, functools.partial(mail.build, sub, now)))
            return await self._send_jobs(jobs, skipped, deadline=deadline, turn=turn)

    def _notice_job(self, delivery: Delivery, now: datetime) -> _Job:
        address = delivery.recipient.removeprefix(NOTICE_PREFIX)
        build = functools.partial(self.mailer.notice_mail, address, delivery.payload, now=now)
        return _Job(delivery, None, build)

    def _event_mails(self, delivery: Delivery) -> EventMails:
        """The event's mail, rendered once per event and process (batches share it)."""
        view = event_view(delivery.payload)
        cached = self._prepared.get(delivery.event_id)
        if cached is None or cached.view != view:
            cached = self._prepared[delivery.event_id] = self.mailer.event_mails(view)
            while len(self._prepared) > 16:
                del self._prepared[next(iter(self._prepared))]
        return cached


def _is_notice(delivery: Delivery) -> bool:
    return delivery.recipient.startswith(NOTICE_PREFIX)


class DigestChannel(_SubscriberChannel):
    """One mail per (digest, subscriber); events are collected on their own transaction."""

    name = DIGEST_CHANNEL

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        subscribers = await self._matching(routes, event, mailstore.DIGEST)
        await routes.add_digest_items([s.id for s in subscribers], event.id)
        return []

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        deadline = self._deadline()
        async with self.turn() as turn:
            digests = {}
            for delivery in deliveries:
                found = await self.subscribers.digest(delivery.recipient)
                if found is not None:
                    digests[delivery.id] = found
            ids = {d.id: digests[d.id][0] if d.id in digests else None for d in deliveries}
            active, skipped = await self._load(deliveries, ids)
            now = _now()
            jobs = []
            for delivery in deliveries:
                sub = active.get(delivery.id)
                if sub is not None:
                    views = [event_view(p) for p in digests[delivery.id][1]]
                    build = _digest_builder(self.mailer, delivery, views, sub, now)
                    jobs.append(_Job(delivery, sub, build))
            return await self._send_jobs(jobs, skipped, deadline=deadline, turn=turn)


def _digest_builder(
    mailer: Mailer,
    delivery: Delivery,
    views: Sequence[Mapping[str, Any]],
    sub: mailstore.Subscriber,
    now: datetime,
) -> Callable[[], Envelope]:
    return lambda: mailer.digest_mail(delivery.recipient, views, sub, now=now)


class EmailWorker:
    """Background work of email: send confirmation mails, make the digests when due."""

    def __init__(
        self,
        subscribers: SubscriberStore,
        mailer: Mailer,
        *,
        on_digests: Callable[[], None] | None = None,
        idle: float = 30.0,
        lease: float = 120.0,
    ) -> None:
        self.subscribers = subscribers
        self.mailer = mailer
        self.on_digests = on_digests
        self.idle = idle
        self.lease = lease
        self._wake = asyncio.Event()
        self._stopping = False
        self.leading: Callable[[], bool] = lambda: True
        """Whether this replica builds the digests (only the leader does; confirmations are
        claimed, so every replica may send them)."""

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            for step in (self.send_confirmations, self.make_digests):
                await self._guarded(step)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.idle)

    async def _guarded(self, step: Callable[[], Awaitable[int]]) -> None:
        try:
            await step()
        except (StoreError, OSError) as exc:
            log.error("email worker: %s", exc, extra={"action": "email_worker_failed"})
        except Exception:
            log.exception("email worker crashed", extra={"action": "email_worker_failed"})

    async def make_digests(self) -> int:
        if not self.leading():
            return 0
        made = await self.subscribers.build_digests(
            now=_now(), hour=self.mailer.options.digest_hour
        )
        if made:
            log.info("%d digest(s) queued", len(made), extra={"action": "email_digests_queued"})
            if self.on_digests:
                self.on_digests()
        return len(made)

    async def send_confirmations(self) -> int:
        """Send every due confirmation mail; returns how many were attempted."""
        total = 0
        while not self._stopping:
            claimed = await self.subscribers.claim_confirmations(now=_now(), lease=self.lease)
            if not claimed:
                return total
            total += len(claimed)
            await asyncio.gather(*(self._confirm_one(mail) for mail in claimed))
        return total

    async def _confirm_one(self, mail: mailstore.ConfirmationMail) -> None:
        now = _now()
        try:
            await self.mailer.send(self.mailer.confirmation_mail(mail, now=now))
        except SendError as exc:
            retry_at = (
                None if exc.permanent else CONFIRM_RETRY.decide(mail.attempts + 1, now=now).retry_at
            )
            await self.subscribers.confirmation_failed(mail, error=str(exc), retry_at=retry_at)
            log.warning(
                "confirmation mail %d failed: %s",
                mail.id,
                exc,
                extra={"action": "email_confirmation_failed", "attempt": mail.attempts + 1},
            )
            return
        await self.subscribers.confirmation_sent(mail.id, now=_now())
        log.info("confirmation mail %d sent", mail.id, extra={"action": "email_confirmation_sent"})


def sender_from(from_address: str, reply_to: str | None, base_url: str) -> Sender:
    """The :class:`Sender` for a ``From`` header value like ``Alerts <a@example.org>``."""
    from warnsvc.addresses import parse_mailbox

    name, address = parse_mailbox(from_address)
    host = base_url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return Sender(
        from_header=format_mailbox(name, address),
        envelope=address,
        reply_to=reply_to,
        list_id=f"<alerts.{host}>" if host else None,
    )


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- wiring


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
        sender=sender_from(email.from_address, email.reply_to, base_url),
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


class EmailParts(Plugged):
    """Everything email adds to the service: the ``email`` and ``email-digest`` channels, the
    worker (confirmation mails, digests) and the subscription pages.

    A reload applies at once the YAML's subscribers (added, changed, removed), the digest hour
    and the SMTP server and rate (a new connection pool; sends in flight on the old one finish
    or are retried); the templates' folder needs a restart, and so does adding or removing the
    whole section.
    """

    def __init__(
        self,
        *,
        settings: EmailSettings,
        options: EmailOptions,
        mailer: Mailer,
        store: Store,
        scales: Mapping[str, Scale],
        sources: Mapping[str, str],
    ) -> None:
        self.channel = EmailChannel(store.subscribers, mailer, scales)
        self.digests = DigestChannel(store.subscribers, mailer, scales)
        super().__init__(self.channel, self.digests)
        self.settings = settings
        self.options = options
        self.mailer = mailer
        self.worker = EmailWorker(store.subscribers, mailer)
        self.store = store
        self.scales = scales
        self.sources = sources
        self.task: asyncio.Task[None] | None = None

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
                filters=Filter.of(s),
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

    def start(self, running: Running) -> None:
        """Run the worker (confirmation mails, digests: the leader's) in the background."""
        self.worker.leading = running.leading
        self.worker.on_digests = running.wake
        if self.task is None:
            self.task = asyncio.create_task(self.worker.run(), name="email-worker")

    def mount(self, app: web.Application, running: Running) -> None:
        from warnsvc.web.subscriptions import SubscriptionPages, add_subscription_routes

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

    async def reconfigure(self, old: Settings, new: Settings) -> list[str]:
        email = new.email
        if email is None or not email.enabled:
            return ["email (the section was removed or disabled)"]
        options = email_options(new, email)
        previous = self.mailer.pool
        if options.smtp != self.options.smtp:
            self.mailer.pool = SmtpPool(options.smtp)
            await previous.close()
        self.mailer.options = options
        self.options = options
        self.settings = email
        await self.prepare()  # re-syncs the YAML subscribers
        restart = []
        if old.email is not None and old.email.templates_dir != email.templates_dir:
            restart.append("email.templates_dir")
        return restart

    async def close(self) -> None:
        self.worker.stop()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, timeout=10)
            except TimeoutError:
                log.warning("email worker did not stop in time", extra={"action": "email_stop"})
            self.task = None
        await self.mailer.close()


async def build(settings: Settings, context: ChannelContext) -> EmailParts | None:
    """The email parts, ready, or None when ``email:`` is absent or disabled."""
    email = settings.email
    if email is None or not email.enabled:
        return None
    _check_references(settings, email)
    options = email_options(settings, email)
    parts = EmailParts(
        settings=email,
        options=options,
        mailer=Mailer(options),
        store=context.store,
        scales=settings.scale_map(),
        sources={s.id: s.name for s in settings.sources},
    )
    await parts.prepare()
    return parts


KIND = ChannelKind(name=EMAIL_CHANNEL, build=build)
