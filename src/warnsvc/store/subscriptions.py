"""Email subscribers, confirmations and digests in the store.

Subscriber states::

    (request) --confirm--> active --one-click--> unsubscribed --confirm again--> active
                             |
                             +--- ``suppress_after`` hard bounces ---> suppressed

Operator-declared subscribers (``origin = config``) are synced from the YAML on start and need
no confirmation; one who unsubscribed stays unsubscribed (the YAML cannot override a person's
choice), and one removed from the YAML becomes ``removed``.

Tokens: a confirmation token is 256 random bits, stored as its SHA-256 (the raw token is kept
only until the confirmation mail is sent, then wiped). The unsubscribe token is 256 random bits
per subscriber, stored as is, because every mail to that subscriber must carry it.

A confirmation row is also the durable queue of its mail (``status``: pending, in_flight, sent,
dead or cancelled; with ``attempts``, ``next_attempt_at`` and a lease, like the outbox), so a
confirmation requested while SMTP is down is sent when it is back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from typing import Any

from sqlalchemy import RowMapping, String, and_, case, cast, func, or_, select, update

from warnsvc.filters import Filter
from warnsvc.outbox import PENDING
from warnsvc.store import schema
from warnsvc.store.aio import AsyncConnection, AsyncEngine
from warnsvc.store.driver import rows_with_ids
from warnsvc.store.guard import store_errors
from warnsvc.store.locks import startup_lock
from warnsvc.store.notices import add_notice
from warnsvc.store.outbox import enqueue

log = logging.getLogger(__name__)

ACTIVE = "active"
UNSUBSCRIBED = "unsubscribed"
SUPPRESSED = "suppressed"
REMOVED = "removed"
IMMEDIATE = "immediate"
DIGEST = "digest"
DIGEST_CHANNEL = "email-digest"

subs = schema.email_subscribers
confs = schema.email_confirmations


def new_token() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Subscriber:
    id: int
    address: str
    name: str | None
    origin: str
    status: str
    mode: str
    filters: Filter
    unsubscribe_token: str
    hard_failures: int

    @property
    def key(self) -> str:
        """The outbox recipient of this subscriber."""
        return f"sub:{self.id}"


def subscriber_id(recipient: str) -> int | None:
    """The subscriber id of an outbox recipient ``sub:<id>``."""
    prefix, _, number = recipient.partition(":")
    return int(number) if prefix == "sub" and number.isdigit() else None


def _subscriber(row: RowMapping) -> Subscriber:
    filters = row["filters"]
    return Subscriber(
        id=row["id"],
        address=row["address"],
        name=row["name"],
        origin=row["origin"],
        status=row["status"],
        mode=row["mode"],
        filters=_filters(filters) if isinstance(filters, str) else Filter.from_json(filters),
        unsubscribe_token=row["unsubscribe_token"],
        hard_failures=row["hard_failures"],
    )


@lru_cache(maxsize=1024)
def _filters(text: str) -> Filter:
    """Filters from their stored JSON; most subscribers share a few, so each is parsed once."""
    data = json.loads(text)
    return Filter.from_json(data if isinstance(data, dict) else None)


# Lists read many subscribers: only the columns a Subscriber has, and the filters as stored
# text, parsed once per distinct value.
_FIELDS = ("id", "address", "name", "origin", "status", "mode", "unsubscribe_token")
_MANY = select(
    *(subs.c[name] for name in (*_FIELDS, "hard_failures")),
    cast(subs.c.filters, String).label("filters"),
)


_BY_ID = f"""
SELECT {", ".join(_FIELDS)}, hard_failures, CAST(filters AS TEXT)
FROM {subs.name} WHERE {{which}}
"""
_NO_FILTER = Filter.from_json(None)


async def active_subscribers(conn: AsyncConnection, mode: str) -> list[Subscriber]:
    query = _MANY.where(subs.c.status == ACTIVE, subs.c.mode == mode).order_by(subs.c.id)
    return [_subscriber(r) for r in (await conn.execute(query)).mappings().all()]


# --------------------------------------------------------------------------- config subscribers


@dataclass(frozen=True, slots=True, kw_only=True)
class Declared:
    """A subscriber from the YAML."""

    address: str
    name: str | None
    mode: str
    filters: Filter


# --------------------------------------------------------------------------- confirmations


class RequestResult(StrEnum):
    QUEUED = "queued"
    THROTTLED = "throttled"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfirmationMail:
    """A claimed confirmation whose mail is to be sent."""

    id: int
    address: str
    name: str | None
    mode: str
    filters: Filter
    token: str
    attempts: int
    expires_at: datetime


class TokenState(StrEnum):
    VALID = "valid"
    UNKNOWN = "unknown"
    USED = "used"
    EXPIRED = "expired"


def _token_state(row: RowMapping | None, now: datetime) -> TokenState:
    if row is None:
        return TokenState.UNKNOWN
    if row["used_at"] is not None or row["status"] == "cancelled":
        return TokenState.USED
    if row["expires_at"] <= now:
        return TokenState.EXPIRED
    return TokenState.VALID


class UnsubscribeResult(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    ALREADY = "already"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"


# --------------------------------------------------------------------------- bounces, notices


# --------------------------------------------------------------------------- digests


async def add_digest_items(
    conn: AsyncConnection, subscriber_ids: Sequence[int], event_id: str, *, now: datetime
) -> None:
    """Remember that an event belongs in these subscribers' next digests (event's transaction)."""
    if subscriber_ids:
        await conn.execute(
            schema.email_digest_items.insert(),
            [{"subscriber_id": s, "event_id": event_id, "created_at": now} for s in subscriber_ids],
        )


def digest_boundary(now: datetime, hour: int) -> datetime:
    """The latest ``hour``:00 UTC at or before ``now``."""
    today = now.replace(hour=hour, minute=0, second=0, microsecond=0)
    return today if today <= now else today - timedelta(days=1)


@store_errors
class SubscriberStore:
    """Subscribers, confirmations and digests."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def subscribers_by_id(self, ids: Iterable[int]) -> dict[int, Subscriber]:
        """These subscribers. Read for every claimed batch of mail, so through the driver, as
        the outbox's hot path is: no per-value type processing."""
        async with self.engine.connect() as conn:
            rows = await rows_with_ids(conn, _BY_ID, sorted(set(ids)), sql_type="integer")
        return {
            row[0]: Subscriber(
                id=row[0],
                address=row[1],
                name=row[2],
                origin=row[3],
                status=row[4],
                mode=row[5],
                unsubscribe_token=row[6],
                hard_failures=row[7],
                filters=_filters(row[8]) if row[8] is not None else _NO_FILTER,
            )
            for row in rows
        }

    async def subscriber_by_address(self, address: str) -> Subscriber | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(subs).where(subs.c.address == address))).mappings()
            first = row.first()
        return _subscriber(first) if first else None

    async def sync_declared(self, declared: Sequence[Declared], *, now: datetime) -> dict[str, int]:
        """Make the ``config`` subscribers match the YAML; counts of what changed."""
        counts = {"added": 0, "updated": 0, "kept_unsubscribed": 0, "removed": 0}
        wanted = {d.address: d for d in declared}
        async with self.engine.begin() as conn:
            await startup_lock(conn)  # replicas starting together sync one after the other
            rows = (await conn.execute(select(subs))).mappings().all()
            existing = {r["address"]: r for r in rows}
            for address, item in wanted.items():
                values = {
                    "name": item.name,
                    "mode": item.mode,
                    "filters": item.filters.to_json(),
                    "origin": "config",
                    "updated_at": now,
                }
                row = existing.get(address)
                if row is None:
                    await conn.execute(
                        subs.insert().values(
                            address=address,
                            status=ACTIVE,
                            unsubscribe_token=new_token(),
                            hard_failures=0,
                            created_at=now,
                            confirmed_at=now,
                            **values,
                        )
                    )
                    counts["added"] += 1
                    continue
                if row["status"] in (UNSUBSCRIBED, SUPPRESSED):
                    counts["kept_unsubscribed"] += 1
                    log.warning(
                        "configured subscriber %s stays %s",
                        address,
                        row["status"],
                        extra={"action": "email_subscriber_kept", "status": row["status"]},
                    )
                else:
                    values["status"] = ACTIVE
                await conn.execute(update(subs).where(subs.c.id == row["id"]).values(values))
                counts["updated"] += 1
            for address, row in existing.items():
                if row["origin"] == "config" and address not in wanted and row["status"] == ACTIVE:
                    await conn.execute(
                        update(subs)
                        .where(subs.c.id == row["id"])
                        .values(status=REMOVED, updated_at=now)
                    )
                    counts["removed"] += 1
        return counts

    async def request_confirmation(
        self,
        *,
        address: str,
        name: str | None,
        mode: str,
        filters: Filter,
        now: datetime,
        valid_for: float,
        resend_after: float,
    ) -> RequestResult:
        """Queue a confirmation mail for ``address``, unless one went out lately or it bounces."""
        async with self.engine.begin() as conn:
            status = (
                await conn.execute(select(subs.c.status).where(subs.c.address == address))
            ).scalar_one_or_none()
            if status == SUPPRESSED:
                return RequestResult.SUPPRESSED
            recent = (
                await conn.execute(
                    select(func.count())
                    .select_from(confs)
                    .where(
                        confs.c.address == address,
                        confs.c.created_at > now - timedelta(seconds=resend_after),
                    )
                )
            ).scalar_one()
            if recent:
                return RequestResult.THROTTLED
            token = new_token()
            await conn.execute(
                confs.insert().values(
                    address=address,
                    name=name,
                    settings={"mode": mode, "filters": filters.to_json()},
                    token_hash=hash_token(token),
                    token=token,
                    status=PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    expires_at=now + timedelta(seconds=valid_for),
                )
            )
        return RequestResult.QUEUED

    async def claim_confirmations(
        self, *, now: datetime, lease: float, limit: int = 50
    ) -> list[ConfirmationMail]:
        due = and_(
            confs.c.token.is_not(None),
            confs.c.used_at.is_(None),
            confs.c.expires_at > now,
            or_(
                and_(confs.c.status == PENDING, confs.c.next_attempt_at <= now),
                and_(confs.c.status == "in_flight", confs.c.lease_until < now),
            ),
        )
        async with self.engine.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        select(confs.c.id).where(due).order_by(confs.c.id).limit(limit)
                    )
                )
                .scalars()
                .all()
            )
            if not ids:
                return []
            claimed = (
                (
                    await conn.execute(
                        update(confs)
                        .where(and_(confs.c.id.in_(ids), due))
                        .values(status="in_flight", lease_until=now + timedelta(seconds=lease))
                        .returning(confs.c.id)
                    )
                )
                .scalars()
                .all()
            )
            rows = (
                (
                    await conn.execute(
                        select(confs).where(confs.c.id.in_(claimed)).order_by(confs.c.id)
                    )
                )
                .mappings()
                .all()
            )
        return [
            ConfirmationMail(
                id=r["id"],
                address=r["address"],
                name=r["name"],
                mode=r["settings"].get("mode", IMMEDIATE),
                filters=Filter.from_json(r["settings"].get("filters")),
                token=r["token"],
                attempts=r["attempts"],
                expires_at=r["expires_at"],
            )
            for r in rows
        ]

    async def confirmation_sent(self, mail_id: int, *, now: datetime) -> None:
        """The mail went out: forget the raw token (only its hash stays)."""
        async with self.engine.begin() as conn:
            await conn.execute(
                update(confs)
                .where(confs.c.id == mail_id)
                .values(
                    status="sent",
                    token=None,
                    sent_at=now,
                    lease_until=None,
                    attempts=confs.c.attempts + 1,
                    last_error=None,
                )
            )

    async def confirmation_failed(
        self, mail: ConfirmationMail, *, error: str, retry_at: datetime | None
    ) -> None:
        values: dict[str, Any] = {
            "attempts": mail.attempts + 1,
            "lease_until": None,
            "last_error": error[:2000],
        }
        if retry_at is None or retry_at >= mail.expires_at:
            values.update(status="dead", token=None)
        else:
            values.update(status=PENDING, next_attempt_at=retry_at)
        async with self.engine.begin() as conn:
            await conn.execute(update(confs).where(confs.c.id == mail.id).values(values))

    async def confirmation_state(
        self, token: str, *, now: datetime
    ) -> tuple[TokenState, str | None]:
        """Whether a confirmation token may be used now, and its address; changes nothing."""
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(confs).where(confs.c.token_hash == hash_token(token))))
                .mappings()
                .first()
            )
        return _token_state(row, now), row["address"] if row else None

    async def confirm(self, token: str, *, now: datetime) -> TokenState:
        """Use a confirmation token: activate (or update) the subscriber; VALID on success."""
        async with self.engine.begin() as conn:
            row = (
                (await conn.execute(select(confs).where(confs.c.token_hash == hash_token(token))))
                .mappings()
                .first()
            )
            state = _token_state(row, now)
            if state is not TokenState.VALID or row is None:
                return state
            settings = row["settings"]
            values = {
                "name": row["name"],
                "mode": settings.get("mode", IMMEDIATE),
                "filters": settings.get("filters") or Filter().to_json(),
                "status": ACTIVE,
                "hard_failures": 0,
                "confirmed_at": now,
                "unsubscribed_at": None,
                "updated_at": now,
            }
            existing = (
                await conn.execute(select(subs.c.id).where(subs.c.address == row["address"]))
            ).scalar_one_or_none()
            if existing is None:
                await conn.execute(
                    subs.insert().values(
                        address=row["address"],
                        origin="self",
                        unsubscribe_token=new_token(),
                        created_at=now,
                        **values,
                    )
                )
            else:
                await conn.execute(update(subs).where(subs.c.id == existing).values(values))
            # this link and every older one for the address are spent
            await conn.execute(
                update(confs)
                .where(confs.c.address == row["address"], confs.c.used_at.is_(None))
                .values(used_at=now, token=None)
            )
        log.info("subscription confirmed", extra={"action": "email_subscription_confirmed"})
        return TokenState.VALID

    async def unsubscribe_state(self, token: str) -> UnsubscribeResult:
        """What a one-click POST with ``token`` would do; changes nothing."""
        async with self.engine.connect() as conn:
            status = (
                await conn.execute(select(subs.c.status).where(subs.c.unsubscribe_token == token))
            ).scalar_one_or_none()
            if status is not None:
                return (
                    UnsubscribeResult.UNSUBSCRIBED
                    if status == ACTIVE
                    else UnsubscribeResult.ALREADY
                )
            row = (
                (await conn.execute(select(confs).where(confs.c.token_hash == hash_token(token))))
                .mappings()
                .first()
            )
        if row is None:
            return UnsubscribeResult.UNKNOWN
        return UnsubscribeResult.ALREADY if row["used_at"] else UnsubscribeResult.CANCELLED

    async def unsubscribe(self, token: str, *, now: datetime) -> UnsubscribeResult:
        """One-click unsubscribe; a confirmation token voids that pending request instead."""
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(subs)
                .where(subs.c.unsubscribe_token == token, subs.c.status == ACTIVE)
                .values(status=UNSUBSCRIBED, unsubscribed_at=now, updated_at=now)
            )
            if result.rowcount:
                log.info("unsubscribed", extra={"action": "email_unsubscribed"})
                return UnsubscribeResult.UNSUBSCRIBED
            known = (
                await conn.execute(select(subs.c.id).where(subs.c.unsubscribe_token == token))
            ).scalar_one_or_none()
            if known is not None:
                return UnsubscribeResult.ALREADY
            cancelled = await conn.execute(
                update(confs)
                .where(confs.c.token_hash == hash_token(token), confs.c.used_at.is_(None))
                .values(
                    used_at=now,
                    token=None,
                    # a mail not sent yet is not sent any more
                    status=case(
                        (confs.c.status.in_([PENDING, "in_flight"]), "cancelled"),
                        else_=confs.c.status,
                    ),
                )
            )
            if cancelled.rowcount:
                return UnsubscribeResult.CANCELLED
            spent = (
                await conn.execute(
                    select(confs.c.id).where(confs.c.token_hash == hash_token(token))
                )
            ).scalar_one_or_none()
        return UnsubscribeResult.ALREADY if spent is not None else UnsubscribeResult.UNKNOWN

    async def record_results(
        self,
        *,
        delivered: Iterable[int],
        rejected: Iterable[int],
        suppress_after: int,
        now: datetime,
    ) -> list[str]:
        """Reset or count hard failures; suppress addresses that reached ``suppress_after``.

        Returns the addresses suppressed now; each gets an operator notice.
        """
        delivered, rejected = sorted(set(delivered)), sorted(set(rejected))
        suppressed: list[str] = []
        async with self.engine.begin() as conn:
            if delivered:
                await conn.execute(
                    update(subs)
                    .where(subs.c.id.in_(delivered), subs.c.hard_failures > 0)
                    .values(hard_failures=0)
                )
            if not rejected:
                return []
            await conn.execute(
                update(subs)
                .where(subs.c.id.in_(rejected))
                .values(hard_failures=subs.c.hard_failures + 1, updated_at=now)
            )
            rows = (
                await conn.execute(
                    select(subs.c.id, subs.c.address, subs.c.hard_failures).where(
                        subs.c.id.in_(rejected),
                        subs.c.status == ACTIVE,
                        subs.c.hard_failures >= suppress_after,
                    )
                )
            ).all()
            for sid, address, failures in rows:
                await conn.execute(
                    update(subs).where(subs.c.id == sid).values(status=SUPPRESSED, updated_at=now)
                )
                await add_notice(
                    conn,
                    kind="email.address_suppressed",
                    subject=f"email to {address} suppressed after {failures} hard failures",
                    detail={"address": address, "subscriber": sid, "hard_failures": failures},
                    now=now,
                )
                suppressed.append(address)
        return suppressed

    async def build_digests(self, *, now: datetime, hour: int) -> list[str]:
        """Make the digests that are due: one digest row and one outbox row per subscriber.

        A digest-mode subscriber is due once per day, at ``hour`` UTC; the events collected since
        its last digest go into one mail (none collected: no mail). Each subscriber's digest is
        written in one transaction with its outbox row and ``last_digest_at``, so a crash or a
        second replica never makes two.
        """
        boundary = digest_boundary(now, hour)
        async with self.engine.connect() as conn:
            due = (
                (
                    await conn.execute(
                        select(subs.c.id).where(
                            subs.c.status == ACTIVE,
                            subs.c.mode == DIGEST,
                            or_(subs.c.last_digest_at.is_(None), subs.c.last_digest_at < boundary),
                        )
                    )
                )
                .scalars()
                .all()
            )
        made = []
        for sid in due:
            digest_id = await self._build_one(sid, boundary=boundary, now=now)
            if digest_id:
                made.append(digest_id)
        return made

    async def _build_one(self, sid: int, *, boundary: datetime, now: datetime) -> str | None:
        items = schema.email_digest_items
        events = schema.events
        async with self.engine.begin() as conn:
            claimed = await conn.execute(
                update(subs)
                .where(
                    subs.c.id == sid,
                    or_(subs.c.last_digest_at.is_(None), subs.c.last_digest_at < boundary),
                )
                .values(last_digest_at=boundary)
            )
            if not claimed.rowcount:
                return None  # another replica did it
            rows = (
                await conn.execute(
                    select(items.c.id, events.c.id)
                    .join(events, events.c.id == items.c.event_id)
                    .where(items.c.subscriber_id == sid, items.c.digest_id.is_(None))
                    .order_by(events.c.seq)
                )
            ).all()
            if not rows:
                return None
            digest_id = f"dig_{int(now.timestamp() * 1000):012x}{secrets.token_hex(8)}"
            event_ids = [event_id for _, event_id in rows]
            await conn.execute(
                schema.email_digests.insert().values(
                    id=digest_id,
                    subscriber_id=sid,
                    event_ids=event_ids,
                    period_end=boundary,
                    created_at=now,
                )
            )
            await conn.execute(
                update(items)
                .where(items.c.id.in_([i for i, _ in rows]))
                .values(digest_id=digest_id)
            )
            # the outbox row hangs on the newest event the digest covers
            await enqueue(conn, event_ids[-1], {DIGEST_CHANNEL: [digest_id]}, now=now)
        return digest_id

    async def digest(self, digest_id: str) -> tuple[int, list[dict[str, Any]]] | None:
        """The subscriber id of a digest and its event payloads, oldest first."""
        async with self.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(schema.email_digests).where(schema.email_digests.c.id == digest_id)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            events = schema.events
            payloads = (
                await conn.execute(
                    select(events.c.payload)
                    .where(events.c.id.in_(row["event_ids"]))
                    .order_by(events.c.seq)
                )
            ).scalars()
            return row["subscriber_id"], [dict(p) for p in payloads.all()]
