"""Notices in the store: what operators (or a partner's contact) must hear about, once each.

One ``notices`` table for every kind (``source.unhealthy``, ``webhook.endpoint_disabled``,
``email.address_suppressed``, ``outbox.dead_letters`` ...). ``recipient`` NULL means the
operators; a disabled endpoint's notice may name the partner's contact instead. A notice is
forwarded once: :meth:`NoticeStore.forward` turns it into an ``operator.notice`` event with its
outbox rows and marks it, in one transaction, so two replicas never forward it twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, select, update

from warnsvc.store import schema
from warnsvc.store.aio import AsyncConnection, AsyncEngine
from warnsvc.store.guard import store_errors
from warnsvc.store.outbox import write_event

log = logging.getLogger(__name__)

OPERATOR_NOTICE = "operator.notice"
"""The type of the events rows that carry notices (see :mod:`warnsvc.operators`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """A recorded notice."""

    id: int
    kind: str
    subject: str
    detail: dict[str, Any]
    recipient: str | None
    """None: the operators; else one contact address (a disabled endpoint's partner)."""
    created_at: datetime
    forwarded_at: datetime | None = None


async def add_notice(
    conn: AsyncConnection,
    *,
    kind: str,
    subject: str,
    detail: Mapping[str, Any],
    now: datetime,
    recipient: str | None = None,
) -> None:
    """Record a notice on an open transaction (the one that changed what it reports)."""
    await conn.execute(
        schema.notices.insert().values(
            kind=kind,
            subject=subject[:1000],
            detail=dict(detail),
            recipient=recipient,
            created_at=now,
        )
    )
    log.warning("operator notice: %s", subject, extra={"action": "operator_notice", "kind": kind})


def _notice(row: Any) -> Notice:
    return Notice(
        id=row.id,
        kind=row.kind,
        subject=row.subject,
        detail=dict(row.detail or {}),
        recipient=row.recipient,
        created_at=row.created_at,
        forwarded_at=row.forwarded_at,
    )


Routes = Callable[[Notice], Mapping[str, Sequence[str]]]
"""Who receives a notice, by channel."""


@store_errors
class NoticeStore:
    """Record, list and forward notices."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def record(
        self,
        *,
        kind: str,
        subject: str,
        detail: Mapping[str, Any],
        now: datetime,
        recipient: str | None = None,
    ) -> None:
        async with self.engine.begin() as conn:
            await add_notice(
                conn, kind=kind, subject=subject, detail=detail, now=now, recipient=recipient
            )

    async def recent(self, *, limit: int = 100, kind: str | None = None) -> list[Notice]:
        """Notices, newest first."""
        table = schema.notices
        query = select(table).order_by(table.c.id.desc()).limit(limit)
        if kind is not None:
            query = query.where(table.c.kind == kind)
        async with self.engine.connect() as conn:
            return [_notice(r) for r in (await conn.execute(query)).all()]

    async def forward(
        self,
        routes: Routes,
        payload: Callable[[Notice], dict[str, Any]],
        *,
        new_id: Callable[[], str],
        now: datetime,
        limit: int = 100,
    ) -> int:
        """Turn notices not forwarded yet into events with their outbox rows; how many."""
        table = schema.notices
        query = (
            select(table).where(table.c.forwarded_at.is_(None)).order_by(table.c.id).limit(limit)
        )
        async with self.engine.connect() as conn:
            pending = [_notice(r) for r in (await conn.execute(query)).all()]
        done = 0
        for notice in pending:
            async with self.engine.begin() as conn:
                marked = await conn.execute(
                    update(table)
                    .where(and_(table.c.id == notice.id, table.c.forwarded_at.is_(None)))
                    .values(forwarded_at=now)
                )
                if not marked.rowcount:
                    continue  # another replica forwarded it
                event_id = new_id()
                recipients = routes(notice)
                await write_event(
                    conn,
                    event_id=event_id,
                    type=OPERATOR_NOTICE,
                    source_id="warnsvc",
                    situation_id=None,
                    occurred_at=now,
                    detected_at=now,
                    payload={**payload(notice), "event_id": event_id},
                    routes=recipients,
                    now=now,
                )
            done += 1
            log.warning(
                "operator notice queued for %d recipient(s): %s",
                sum(len(r) for r in recipients.values()),
                notice.subject,
                extra={"action": "operator_notice_queued", "event": event_id, "kind": notice.kind},
            )
        return done
