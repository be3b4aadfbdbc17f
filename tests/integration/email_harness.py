"""The email channels wired to a real SQLite store and an aiosmtpd sink on loopback."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from warnsvc.channels.base import Channel
from warnsvc.channels.email import (
    DIGEST_CHANNEL,
    EMAIL_CHANNEL,
    DigestChannel,
    EmailChannel,
    EmailOptions,
    EmailWorker,
    Mailer,
    sender_from,
)
from warnsvc.dispatch import Dispatcher
from warnsvc.filters import Filter as Filters
from warnsvc.mail.smtp import SmtpConfig
from warnsvc.model import GCR2P_SCALE, Event, EventType, Level
from warnsvc.outbox import RetryPolicy
from warnsvc.pipeline import Routing
from warnsvc.store import schema
from warnsvc.store import subscriptions as mailstore
from warnsvc.store.db import Store
from warnsvc.store.outbox import Outbox

BASE_URL = "https://alerts.example.org"
NK_NAME = "Nagorno-Karabakh (Armenia/Azerbaijan)"
NK_URL = "https://www.globalr2p.org/countries/nagorno-karabakh/"


def smtp_config(port: int, **changes: Any) -> SmtpConfig:
    base = SmtpConfig(
        host="127.0.0.1",
        port=port,
        security="none",
        timeout=5.0,
        connections=2,
        quick_retries=1,
        quick_wait=0.01,
    )
    return replace(base, **changes)


def options(port: int, *, templates_dir: Path | None = None, **smtp: Any) -> EmailOptions:
    return EmailOptions(
        service_name="warnsvc",
        base_url=BASE_URL,
        sender=sender_from("warnsvc alerts <alerts@example.org>", "ops@example.org", BASE_URL),
        smtp=smtp_config(port, **smtp),
        templates_dir=templates_dir,
        suppress_after=3,
        level_names={lv.id: lv.name for lv in GCR2P_SCALE.levels},
    )


def level(level_id: str | None) -> Level | None:
    return GCR2P_SCALE.get(level_id) if level_id else None


def make_event(
    event_id: str,
    *,
    type_: EventType = EventType.ESCALATED,
    new: str | None = "imminent-risk",
    old: str | None = "serious-concern",
    situation: str = "gcr2p:nagorno-karabakh",
    name: str = NK_NAME,
    summary: str = "The ongoing blockade of the Lachin corridor.",
    factors: tuple[str, ...] = ("Blockade of the only road.", "Shelling of civilians."),
    url: str | None = NK_URL,
) -> Event:
    return Event(
        id=event_id,
        type=type_,
        source_id="gcr2p",
        source_name="Global Centre for the Responsibility to Protect",
        situation=situation,
        situation_name=name,
        situation_url=url,
        scale="gcr2p",
        level=level(new),
        previous_level=level(old),
        occurred_at=datetime(2023, 8, 31, tzinfo=UTC),
        detected_at=datetime(2023, 8, 31, 9, 15, tzinfo=UTC),
        summary=summary,
        risk_factors=factors,
    )


@dataclass
class Harness:
    store: Store
    mailer: Mailer
    channel: EmailChannel
    digests: DigestChannel
    routing: Routing
    outbox: Outbox
    dispatcher: Dispatcher
    worker: EmailWorker
    declared: list[mailstore.Declared] = field(default_factory=list)

    @classmethod
    def build(cls, store: Store, opts: EmailOptions) -> Harness:
        mailer = Mailer(opts)
        scales = {GCR2P_SCALE.id: GCR2P_SCALE}
        channel = EmailChannel(store.subscribers, mailer, scales)
        digests = DigestChannel(store.subscribers, mailer, scales)
        channels: dict[str, Channel] = {EMAIL_CHANNEL: channel, DIGEST_CHANNEL: digests}
        outbox = store.outbox
        return cls(
            store=store,
            mailer=mailer,
            channel=channel,
            digests=digests,
            routing=Routing(channels),
            outbox=outbox,
            dispatcher=Dispatcher(outbox, channels, RetryPolicy(initial=1.0)),
            worker=EmailWorker(store.subscribers, mailer),
        )

    async def subscribe(self, *addresses: str, mode: str = "immediate", **filters: Any) -> None:
        """Add configured subscribers (the YAML grows by these)."""
        self.declared.extend(
            mailstore.Declared(
                address=a, name=f"Reader {a.split('@')[0]}", mode=mode, filters=Filters(**filters)
            )
            for a in addresses
        )
        await self.store.subscribers.sync_declared(self.declared, now=datetime.now(UTC))

    async def emit(self, event: Event) -> None:
        await self.store.record_event(event, self.routing, now=datetime.now(UTC))

    async def rows(self, channel: str = EMAIL_CHANNEL) -> list[dict[str, Any]]:
        table = schema.outbox
        query = select(table).where(table.c.channel == channel).order_by(table.c.id)
        async with self.store.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings().all()]

    async def make_due(self) -> None:
        """Bring every pending row's next attempt to now (skip the backoff wait)."""
        table = schema.outbox
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.status == "pending")
                .values(next_attempt_at=datetime.now(UTC))
            )

    async def subscriber(self, address: str) -> mailstore.Subscriber:
        found = await self.store.subscribers.subscriber_by_address(address)
        assert found is not None
        return found
