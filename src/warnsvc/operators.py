"""Operator alerts: tell the people who run warnsvc when something breaks, once per change.

Notices are recorded where the trouble is seen, in the ``operator_notices`` table (webhook
endpoints that get disabled are recorded in ``webhook_notices``, with the partner's contact):

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
import secrets
import time
from collections.abc import Sequence
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import aiohttp
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from warnsvc.channels.base import Outcome
from warnsvc.channels.webhooks import encode_payload, sign_payload
from warnsvc.config import Settings
from warnsvc.errors import SourceError, UnknownLevelError
from warnsvc.mail.smtp import SendError, SmtpPool
from warnsvc.mail.store import add_notice
from warnsvc.model import Event
from warnsvc.outbox import DEAD, Delivery
from warnsvc.store import schema
from warnsvc.store.db import OPERATOR_NOTICE, SourceHealth
from warnsvc.store.webhooks import OPERATORS, secret_key

log = logging.getLogger(__name__)

OPERATORS_CHANNEL = "operators"
NOTICE_TYPE = OPERATOR_NOTICE


async def record_notice(
    engine: AsyncEngine, *, kind: str, subject: str, detail: dict[str, Any], now: datetime
) -> None:
    async with engine.begin() as conn:
        await add_notice(conn, kind=kind, subject=subject, detail=detail, now=now)


class SourceAlerts:
    """Notices about sources, decided from their health before and after each poll."""

    def __init__(self, engine: AsyncEngine, *, threshold: int) -> None:
        self.engine = engine
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
            await record_notice(
                self.engine,
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
            await record_notice(
                self.engine,
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
            await record_notice(
                self.engine,
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
            await record_notice(
                self.engine,
                kind="source.unknown_level",
                now=now,
                subject=f"source {source_id} skipped items with a level outside its scale",
                detail={"source": source_id, "items": fresh[:20]},
            )


class NoticeForwarder:
    """Queue every new notice for the operators (and a disabled endpoint's partner contact)."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def operator_recipients(self) -> list[str]:
        ops = self.settings.operators
        return [f"mailto:{a}" for a in ops.emails] + [str(w.url) for w in ops.webhooks]

    async def forward(self, *, now: datetime) -> int:
        """Turn new notices into operator events with their outbox rows. Returns how many."""
        done = 0
        notices = schema.operator_notices
        async with self.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(notices)
                        .where(notices.c.forwarded_at.is_(None))
                        .order_by(notices.c.id)
                        .limit(100)
                    )
                )
                .mappings()
                .all()
            )
        for row in rows:
            payload = _payload(
                f"ntc_{row['id']}", row["kind"], row["subject"], row["detail"], row["created_at"]
            )
            async with self.engine.begin() as conn:
                marked = await conn.execute(
                    update(notices)
                    .where(and_(notices.c.id == row["id"], notices.c.forwarded_at.is_(None)))
                    .values(forwarded_at=now)
                )
                if marked.rowcount:
                    await _queue(conn, payload, self.operator_recipients(), now=now)
                    done += 1
        return done + await self._forward_webhook_notices(now=now)

    async def _forward_webhook_notices(self, *, now: datetime) -> int:
        table = schema.webhook_notices
        async with self.engine.connect() as conn:
            rows = (
                (
                    await conn.execute(
                        select(table)
                        .where(table.c.sent_at.is_(None))
                        .order_by(table.c.id)
                        .limit(100)
                    )
                )
                .mappings()
                .all()
            )
        email_ready = self.settings.email is not None and self.settings.email.enabled
        for row in rows:
            if row["recipient"] == OPERATORS:
                recipients = self.operator_recipients()
            else:
                contact = str(row["recipient"])
                recipients = [f"mailto:{contact}"] if email_ready and "@" in contact else []
            payload = _payload(
                f"ntc_w{row['id']}",
                row["kind"],
                row["message"],
                {"endpoint": row["endpoint_id"], "partner": row["partner_id"]},
                row["created_at"],
            )
            async with self.engine.begin() as conn:
                marked = await conn.execute(
                    update(table)
                    .where(and_(table.c.id == row["id"], table.c.sent_at.is_(None)))
                    .values(sent_at=now)
                )
                if marked.rowcount:
                    await _queue(conn, payload, recipients, now=now)
        return len(rows)

    async def check_dead_letters(self, *, now: datetime) -> int:
        """A notice per channel whose dead letters grew by ``operators.dead_letters``."""
        threshold = self.settings.operators.dead_letters
        outbox, notices = schema.outbox, schema.operator_notices
        async with self.engine.connect() as conn:
            dead: dict[str, int] = dict(
                (
                    await conn.execute(
                        select(outbox.c.channel, func.count())
                        .where(outbox.c.status == DEAD)
                        .group_by(outbox.c.channel)
                    )
                ).all()
            )
            told = [
                r.detail
                for r in (
                    await conn.execute(
                        select(notices.c.detail)
                        .where(notices.c.kind == "outbox.dead_letters")
                        .order_by(notices.c.id)
                    )
                ).all()
            ]
        last = {d.get("channel"): int(d.get("dead", 0)) for d in told}
        raised = 0
        for channel, count in sorted(dead.items()):
            if channel == OPERATORS_CHANNEL or count < last.get(channel, 0) + threshold:
                continue
            await record_notice(
                self.engine,
                kind="outbox.dead_letters",
                now=now,
                subject=f"{count} {channel} deliveries are dead-lettered; see `warnsvc status`",
                detail={"channel": channel, "dead": int(count)},
            )
            raised += 1
        return raised


def _payload(
    notice_id: str, kind: str, subject: str, detail: Any, created: datetime
) -> dict[str, Any]:
    moment = created.isoformat().replace("+00:00", "Z")
    return {
        "id": notice_id,
        "type": NOTICE_TYPE,
        "kind": kind,
        "subject": subject,
        "detail": detail or {},
        "occurred_at": moment,
        "detected_at": moment,
    }


async def _queue(
    conn: AsyncConnection, payload: dict[str, Any], recipients: Sequence[str], *, now: datetime
) -> None:
    event_id = f"evt_{int(now.timestamp() * 1000):012x}{secrets.token_hex(8)}"
    payload = {**payload, "event_id": event_id}
    await conn.execute(
        schema.events.insert().values(
            id=event_id,
            type=NOTICE_TYPE,
            source_id="warnsvc",
            situation_id=None,
            occurred_at=now,
            detected_at=now,
            payload=payload,
        )
    )
    if recipients:
        await conn.execute(
            schema.outbox.insert(),
            [
                {
                    "event_id": event_id,
                    "channel": OPERATORS_CHANNEL,
                    "recipient": r,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
                for r in recipients
            ],
        )
    log.warning(
        "operator notice queued for %d recipient(s): %s",
        len(recipients),
        payload["subject"],
        extra={"action": "operator_notice_queued", "event": event_id, "kind": payload["kind"]},
    )


class OperatorChannel:
    """Deliver operators' notices by email (through the email section's SMTP) and webhook."""

    name = OPERATORS_CHANNEL

    def __init__(self, settings: Settings, *, session: aiohttp.ClientSession | None = None) -> None:
        self.settings = settings
        self.session = session
        self.pool: SmtpPool | None = None

    async def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        await self.close_pool()

    async def recipients(self, conn: AsyncConnection, event: Event) -> Sequence[str]:
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
            except (aiohttp.ClientError, TimeoutError, OSError, SendError) as exc:
                outcomes.append(
                    Outcome(
                        delivery_id=delivery.id,
                        ok=False,
                        error=f"{type(exc).__name__}: {exc}"[:500],
                    )
                )
            except _NoSmtpError as exc:
                outcomes.append(
                    Outcome(delivery_id=delivery.id, ok=False, error=str(exc), permanent=True)
                )
        return outcomes

    async def _mail(self, address: str, payload: dict[str, Any]) -> None:
        email = self.settings.email
        if email is None or not email.enabled:
            raise _NoSmtpError("no email section to send operators' mail through")
        if self.pool is None:
            from warnsvc.mail.wiring import smtp_config

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
        await self.pool.send(_address(email.from_address), address, message.as_bytes())

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


class _NoSmtpError(Exception):
    pass


def _address(mailbox: str) -> str:
    """The bare address of ``Name <addr>``."""
    return mailbox.rsplit("<", 1)[-1].rstrip(">").strip() if "<" in mailbox else mailbox
