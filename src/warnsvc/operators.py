"""Operator alerts: tell the people who run warnsvc when something breaks, once per change.

Notices are recorded where the trouble is seen, in the store's ``notices`` (a disabled webhook
endpoint's notice may name the partner's contact instead of the operators):

    source.unhealthy        a source failed ``detection.failure_threshold`` polls in a row
    source.recovered        ... and then succeeded again
    source.unknown_level    a level word outside the scale appeared (a new word, once)
    webhook.endpoint_disabled
    email.address_suppressed
    outbox.dead_letters     a channel's dead-lettered rows grew by ``operators.dead_letters``

Each notice is sent once: the :class:`NoticeForwarder` turns every new notice into an
``operator.notice`` event with one outbox row per operator (``mailto:`` address or webhook URL)
in one transaction and marks the notice forwarded, and :class:`OperatorChannel` delivers those
rows with the outbox's retries. The channel routes no other event, and no other channel routes
these: subscribers and partners never see operators' notices.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING, Any

import aiohttp

from warnsvc.channels.base import BaseChannel, ChannelContext, ChannelKind, Outcome, Plugged
from warnsvc.channels.webhooks import encode_payload, sign_payload
from warnsvc.config import Settings
from warnsvc.errors import SourceError, UnknownLevelError
from warnsvc.model import Event, new_event_id
from warnsvc.outbox import DEAD, Delivery
from warnsvc.store.db import SourceHealth, Store
from warnsvc.store.notices import OPERATOR_NOTICE, Notice, NoticeStore
from warnsvc.store.webhooks import secret_key

if TYPE_CHECKING:
    from warnsvc.mail.smtp import SmtpPool
    from warnsvc.store.db import RouteContext

log = logging.getLogger(__name__)

OPERATORS_CHANNEL = "operators"
NOTICE_TYPE = OPERATOR_NOTICE


class SourceAlerts:
    """Notices about sources, decided from their health before and after each poll."""

    def __init__(self, notices: NoticeStore, *, threshold: int) -> None:
        self.notices = notices
        self.threshold = threshold

    async def failed(
        self,
        before: SourceHealth | None,
        after: SourceHealth,
        error: SourceError,
        *,
        now: datetime,
    ) -> None:
        sid = after.source_id
        if after.consecutive_failures == self.threshold:
            await self.notices.record(
                kind="source.unhealthy",
                now=now,
                subject=f"source {sid} is failing: {after.consecutive_failures} polls in a row",
                detail={
                    "source": sid,
                    "failures": after.consecutive_failures,
                    "error": after.last_error,
                },
            )
        if isinstance(error, UnknownLevelError) and (
            before is None or before.last_error != after.last_error
        ):
            await self.notices.record(
                kind="source.unknown_level",
                now=now,
                subject=f"source {sid} printed {error.name!r}, a level outside scale {error.scale}",
                detail={
                    "source": sid,
                    "level": error.name,
                    "scale": error.scale,
                    "known": error.known,
                },
            )

    async def succeeded(
        self,
        before: SourceHealth | None,
        source_id: str,
        warnings: Sequence[str],
        *,
        now: datetime,
    ) -> None:
        if before is not None and before.consecutive_failures >= self.threshold:
            await self.notices.record(
                kind="source.recovered",
                now=now,
                subject=f"source {source_id} recovered after {before.consecutive_failures} "
                "failed polls",
                detail={"source": source_id, "failures": before.consecutive_failures},
            )
        unknown = [w for w in warnings if "not on scale" in w]
        previous = getattr(before, "last_warning", None) or ""
        fresh = [w for w in unknown if w not in previous]
        if fresh:
            await self.notices.record(
                kind="source.unknown_level",
                now=now,
                subject=f"source {source_id} skipped items with a level outside its scale",
                detail={"source": source_id, "items": fresh[:20]},
            )


class NoticeForwarder:
    """Queue every new notice for the operators (or a disabled endpoint's partner contact)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings

    def operator_recipients(self) -> list[str]:
        ops = self.settings.operators
        return [f"mailto:{a}" for a in ops.emails] + [str(w.url) for w in ops.webhooks]

    def routes(self, notice: Notice) -> dict[str, list[str]]:
        if notice.recipient is None:
            return {OPERATORS_CHANNEL: self.operator_recipients()}
        email_ready = self.settings.email is not None and self.settings.email.enabled
        contact = notice.recipient
        return {OPERATORS_CHANNEL: [f"mailto:{contact}"] if email_ready and "@" in contact else []}

    async def forward(self, *, now: datetime) -> int:
        """Turn new notices into operator events with their outbox rows. Returns how many."""
        return await self.store.notices.forward(
            self.routes, _payload, new_id=lambda: new_event_id(now), now=now
        )

    async def check_dead_letters(self, *, now: datetime) -> int:
        """A notice per channel whose dead letters grew by ``operators.dead_letters``."""
        threshold = self.settings.operators.dead_letters
        dead = {
            c: n for (c, state), n in (await self.store.outbox.counts()).items() if state == DEAD
        }
        told = await self.store.notices.recent(kind="outbox.dead_letters", limit=1000)
        last = {n.detail.get("channel"): int(n.detail.get("dead", 0)) for n in reversed(told)}
        raised = 0
        for channel, count in sorted(dead.items()):
            if channel == OPERATORS_CHANNEL or count < last.get(channel, 0) + threshold:
                continue
            await self.store.notices.record(
                kind="outbox.dead_letters",
                now=now,
                subject=f"{count} {channel} deliveries are dead-lettered; see `warnsvc status`",
                detail={"channel": channel, "dead": int(count)},
            )
            raised += 1
        return raised


def _payload(notice: Notice) -> dict[str, Any]:
    moment = notice.created_at.isoformat().replace("+00:00", "Z")
    return {
        "id": f"ntc_{notice.id}",
        "type": NOTICE_TYPE,
        "kind": notice.kind,
        "subject": notice.subject,
        "detail": notice.detail,
        "occurred_at": moment,
        "detected_at": moment,
    }


class OperatorChannel(BaseChannel):
    """Deliver operators' notices by email (through the email section's SMTP) and webhook."""

    name = OPERATORS_CHANNEL

    def __init__(self, settings: Settings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.session = session
        self.pool: SmtpPool | None = None

    async def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        await self.close_pool()

    async def recipients(self, routes: RouteContext, event: Event) -> Sequence[str]:
        return []  # only the forwarder queues notices; no event is routed here

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Outcome]:
        outcomes = []
        for delivery in deliveries:
            try:
                if delivery.recipient.startswith("mailto:"):
                    await self._mail(delivery.recipient.removeprefix("mailto:"), delivery.payload)
                else:
                    status = await self._post(delivery.recipient, delivery.payload)
                    if not 200 <= status < 300:
                        outcomes.append(
                            Outcome(
                                delivery_id=delivery.id,
                                ok=False,
                                status=status,
                                error=f"HTTP {status}",
                            )
                        )
                        continue
                outcomes.append(Outcome(delivery_id=delivery.id, ok=True))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                outcomes.append(Outcome(delivery_id=delivery.id, ok=False, error=error[:500]))
            except _MailFailedError as exc:
                outcomes.append(Outcome(delivery_id=delivery.id, ok=False, error=str(exc)[:500]))
            except _NoSmtpError as exc:
                outcomes.append(
                    Outcome(delivery_id=delivery.id, ok=False, error=str(exc), permanent=True)
                )
        return outcomes

    async def _mail(self, address: str, payload: dict[str, Any]) -> None:
        email = self.settings.email
        if email is None or not email.enabled:
            raise _NoSmtpError("no email section to send operators' mail through")
        # the SMTP client is loaded with the first operator's mail, not with the service
        from warnsvc.channels.email import smtp_config
        from warnsvc.mail.smtp import SendError, SmtpPool

        if self.pool is None:
            self.pool = SmtpPool(smtp_config(email))
        message = EmailMessage()
        message["From"] = email.from_address
        message["To"] = address
        message["Subject"] = f"[{self.settings.service.name}] {payload.get('subject', 'notice')}"
        message["Date"] = format_datetime(datetime.now().astimezone())
        message["Message-ID"] = make_msgid(domain="warnsvc.invalid")
        lines = [str(payload.get("subject", "")), ""]
        lines += [f"{key}: {value}" for key, value in (payload.get("detail") or {}).items()]
        lines += [
            "",
            f"kind: {payload.get('kind')}",
            f"at: {payload.get('occurred_at')}",
            f"-- {self.settings.service.name} ({self.settings.service.base_url}/readyz)",
        ]
        message.set_content("\n".join(lines))
        try:
            await self.pool.send(_address(email.from_address), address, message.as_bytes())
        except SendError as exc:
            raise _MailFailedError(f"{type(exc).__name__}: {exc}") from exc

    async def _post(self, url: str, payload: dict[str, Any]) -> int:
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        body = encode_payload(payload)
        msg_id = str(payload.get("id", "ntc"))
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
        }
        secret = next(
            (w.secret for w in self.settings.operators.webhooks if str(w.url) == url), None
        )
        if secret:
            headers["webhook-signature"] = sign_payload(msg_id, stamp, body, [secret_key(secret)])
        async with self.session.post(
            url, data=body, headers=headers, allow_redirects=False
        ) as resp:
            return resp.status

    async def close_pool(self) -> None:
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    async def close(self) -> None:
        await self.close_pool()
        if self.session is not None:
            await self.session.close()
            self.session = None


class Operators(Plugged):
    """The ``operators`` channel: notices are queued by the :class:`NoticeForwarder`."""

    def __init__(self, channel: OperatorChannel) -> None:
        super().__init__(channel)
        self.channel = channel

    async def reconfigure(self, old: Settings, new: Settings) -> list[str]:
        await self.channel.reconfigure(new)
        return []

    async def close(self) -> None:
        await self.channel.close()


async def build(settings: Settings, context: ChannelContext) -> Operators:
    return Operators(OperatorChannel(settings))


KIND = ChannelKind(name=OPERATORS_CHANNEL, build=build)


class _NoSmtpError(Exception):
    pass


class _MailFailedError(Exception):
    """The SMTP client's refusal, as ``SendError: why`` (the outbox retries it)."""


def _address(mailbox: str) -> str:
    """The bare address of ``Name <addr>``."""
    return mailbox.rsplit("<", 1)[-1].rstrip(">").strip() if "<" in mailbox else mailbox
