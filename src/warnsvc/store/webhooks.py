"""Webhook endpoints in the store: registration, secrets, filters, health and deliveries.

An endpoint belongs to a partner (or to no one, when an operator made it). Its deliveries are
ordinary outbox rows of channel ``webhooks`` whose recipient is the endpoint id, so listing and
redelivering them is a query on the outbox. Secrets are Standard Webhooks secrets
(``whsec_`` + base64 of 32 random bytes); after a rotation the previous secret keeps signing
(a second ``v1,`` signature) until its grace period ends.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.engine import RowMapping

from warnsvc.filters import Filter
from warnsvc.model import Event, EventType
from warnsvc.outbox import IN_FLIGHT, PENDING
from warnsvc.store import schema
from warnsvc.store.aio import AsyncEngine
from warnsvc.store.driver import rows_with_ids
from warnsvc.store.guard import store_errors
from warnsvc.store.locks import startup_lock
from warnsvc.store.notices import add_notice
from warnsvc.store.outbox import Outbox

log = logging.getLogger(__name__)

WEBHOOKS_CHANNEL = "webhooks"
OPERATORS = "operators"
"""Who :meth:`EndpointStore.disable` tells when no partner contact is named: the operators."""


def generate_secret() -> str:
    """A new signing secret, shaped ``whsec_<base64 of 32 random bytes>``."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret."""
    return base64.b64decode(secret.removeprefix("whsec_"))


_TARGETS = """
SELECT id, partner_id, url, enabled, disabled_reason, secret, previous_secret,
    previous_secret_until, consecutive_failures, failing_since
FROM webhook_endpoints WHERE {which}
"""


def _utc(value: datetime | str | None) -> datetime | None:
    """A timestamp read through the driver, as :class:`~warnsvc.store.schema.UTCDateTime`
    reads it: SQLite gives the naive UTC text SQLAlchemy wrote, PostgreSQL an aware value."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def new_endpoint_id() -> str:
    return "ep_" + secrets.token_hex(12)


# What an endpoint's text may not contain. The stored text is printed in terminals (``warnsvc
# webhooks list``), logs and notices, and a URL goes into a request line: a NUL, an escape
# sequence, a CR/LF or a bidirectional override there forges or hides what a reader sees.
# ECMA-262 / Python regular-expression classes, shared with the OpenAPI document's patterns.
CONTROL_CHARACTERS = r"\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069"
"""C0 and C1 controls, DEL, the line and paragraph separators, bidirectional overrides."""
SPACE_CHARACTERS = r"\u0020\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000"
"""Unicode's space separators (Zs): with the controls, every character ``str.isspace`` knows."""
TEXT_PATTERN = f"^[^{CONTROL_CHARACTERS}]*$"
URL_PATTERN = f"^[^{CONTROL_CHARACTERS}{SPACE_CHARACTERS}]*$"
_REFUSED_IN_TEXT = re.compile(f"[{CONTROL_CHARACTERS}]")
_REFUSED_IN_URL = re.compile(f"[{CONTROL_CHARACTERS}{SPACE_CHARACTERS}]")


def refused_character(value: str, *, url: bool = False) -> str | None:
    """Why ``value`` may not be stored as an endpoint's text (``url``: as its URL), or None.

    Text may hold no control character (:data:`CONTROL_CHARACTERS`); a URL no whitespace
    either. The answer names the first offending character and its index, e.g. ``U+000D at
    index 27``.
    """
    found = (_REFUSED_IN_URL if url else _REFUSED_IN_TEXT).search(value)
    if found is None:
        return None
    return f"U+{ord(found.group()):04X} at index {found.start()}"


@functools.lru_cache(maxsize=4096)
def filters_of(raw: str | None) -> Filter:
    """The filters stored as JSON text ``raw``, parsed once per distinct text."""
    return Filter.from_json(json.loads(raw) if raw else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """A registered webhook endpoint."""

    id: str
    partner_id: str | None
    url: str
    description: str
    enabled: bool
    disabled_reason: str | None
    static: bool
    filters: Filter
    secret: str = field(repr=False)
    previous_secret: str | None = field(default=None, repr=False)
    previous_secret_until: datetime | None = None
    consecutive_failures: int = 0
    failing_since: datetime | None = None
    created_at: datetime
    updated_at: datetime

    def signing_keys(self, now: datetime) -> list[bytes]:
        """The current key, and the previous one while its grace period lasts."""
        keys = [secret_key(self.secret)]
        if self.previous_secret and self.previous_secret_until and now < self.previous_secret_until:
            keys.append(secret_key(self.previous_secret))
        return keys

    def to_json(self) -> dict[str, Any]:
        """The public view: never the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "description": self.description,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "static": self.static,
            "filters": self.filters.to_json(),
            "previous_secret_expires_at": _iso(self.previous_secret_until),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class SendTarget:
    """What sending to an endpoint needs of it, read fresh for every batch (no filters).

    ``keys`` are the HMAC keys, decoded once: the current secret's, then the previous one's,
    which signs too until ``previous_until``.
    """

    id: str
    partner_id: str | None
    url: str
    enabled: bool
    disabled_reason: str | None
    keys: tuple[bytes, ...] = field(repr=False)
    previous_until: datetime | None = None
    consecutive_failures: int = 0
    failing_since: datetime | None = None

    def signing_keys(self, now: datetime) -> tuple[bytes, ...]:
        """The current key, and the previous one while its grace period lasts."""
        if len(self.keys) > 1 and self.previous_until is not None and now < self.previous_until:
            return self.keys
        return self.keys[:1]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRecord:
    """One delivery of an event to an endpoint, as partners see it."""

    id: int
    event_id: str
    event_type: str
    status: str
    attempts: int
    response_status: int | None
    error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "status": self.status,
            "attempts": self.attempts,
            "response_status": self.response_status,
            "error": self.error,
            "next_attempt_at": _iso(self.next_attempt_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            "delivered_at": _iso(self.delivered_at),
        }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment else None


def _endpoint(row: RowMapping) -> Endpoint:
    return Endpoint(
        id=row["id"],
        partner_id=row["partner_id"],
        url=row["url"],
        description=row["description"],
        enabled=bool(row["enabled"]),
        disabled_reason=row["disabled_reason"],
        static=bool(row["static"]),
        filters=Filter.from_json(row["filters"]),
        secret=row["secret"],
        previous_secret=row["previous_secret"],
        previous_secret_until=row["previous_secret_until"],
        consecutive_failures=row["consecutive_failures"],
        failing_since=row["failing_since"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


@store_errors
class EndpointStore:
    """Queries on webhook endpoints and their deliveries."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # -- endpoints ---------------------------------------------------------------------------

    async def create(
        self,
        *,
        url: str,
        partner_id: str | None,
        now: datetime,
        description: str = "",
        filters: Filter | None = None,
        enabled: bool = True,
        endpoint_id: str | None = None,
        secret: str | None = None,
        static: bool = False,
    ) -> tuple[Endpoint, str]:
        """Register an endpoint; returns it and its secret (shown to the partner once)."""
        secret = secret or generate_secret()
        endpoint = Endpoint(
            id=endpoint_id or new_endpoint_id(),
            partner_id=partner_id,
            url=url,
            description=description,
            enabled=enabled,
            disabled_reason=None,
            static=static,
            filters=filters or Filter(),
            secret=secret,
            created_at=now,
            updated_at=now,
        )
        async with self.engine.begin() as conn:
            await conn.execute(
                schema.webhook_endpoints.insert().values(
                    id=endpoint.id,
                    partner_id=partner_id,
                    url=url,
                    description=description,
                    enabled=enabled,
                    static=static,
                    filters=endpoint.filters.to_json(),
                    secret=secret,
                    consecutive_failures=0,
                    created_at=now,
                    updated_at=now,
                )
            )
        return endpoint, secret

    async def get(self, endpoint_id: str) -> Endpoint | None:
        table = schema.webhook_endpoints
        async with self.engine.connect() as conn:
            row = (
                (await conn.execute(select(table).where(table.c.id == endpoint_id)))
                .mappings()
                .first()
            )
        return _endpoint(row) if row else None

    async def owned(self, partner_id: str | None = None, *, every: bool = False) -> list[Endpoint]:
        """A partner's endpoints (or, with ``every``, all of them), oldest first."""
        table = schema.webhook_endpoints
        query = select(table).order_by(table.c.created_at, table.c.id)
        if not every:
            query = query.where(table.c.partner_id == partner_id)
        async with self.engine.connect() as conn:
            return [_endpoint(r) for r in (await conn.execute(query)).mappings().all()]

    async def count(self, partner_id: str) -> int:
        table = schema.webhook_endpoints
        query = select(func.count()).select_from(table).where(table.c.partner_id == partner_id)
        async with self.engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())

    async def targets(self, ids: Iterable[str]) -> dict[str, SendTarget]:
        """What sending needs of these endpoints: only the columns it uses.

        Read for every claimed batch, so through the driver (like the outbox's hot path): a
        batch of a thousand rows pays no per-value type processing.
        """
        async with self.engine.connect() as conn:
            rows = await rows_with_ids(conn, _TARGETS, list(set(ids)), sql_type="varchar")
        found: dict[str, SendTarget] = {}
        for (
            endpoint_id,
            partner_id,
            url,
            enabled,
            disabled_reason,
            secret,
            previous_secret,
            previous_until,
            failures,
            failing_since,
        ) in rows:
            keys: tuple[bytes, ...] = (secret_key(secret),)
            if previous_secret and previous_until is not None:
                keys += (secret_key(previous_secret),)
            found[endpoint_id] = SendTarget(
                id=endpoint_id,
                partner_id=partner_id,
                url=url,
                enabled=bool(enabled),
                disabled_reason=disabled_reason,
                keys=keys,
                previous_until=_utc(previous_until),
                consecutive_failures=failures,
                failing_since=_utc(failing_since),
            )
        return found

    async def update(self, endpoint_id: str, *, now: datetime, **changes: Any) -> Endpoint | None:
        """Change url, description, filters or enabled. Enabling clears the failure record."""
        values: dict[str, Any] = {"updated_at": now}
        for key in ("url", "description"):
            if key in changes:
                values[key] = changes[key]
        if "filters" in changes:
            values["filters"] = changes["filters"].to_json()
        if "enabled" in changes:
            values["enabled"] = changes["enabled"]
            if changes["enabled"]:
                values.update(disabled_reason=None, consecutive_failures=0, failing_since=None)
            else:
                values["disabled_reason"] = changes.get("disabled_reason", "disabled by request")
        table = schema.webhook_endpoints
        async with self.engine.begin() as conn:
            await conn.execute(update(table).where(table.c.id == endpoint_id).values(values))
        return await self.get(endpoint_id)

    async def delete(self, endpoint_id: str) -> bool:
        """Remove an endpoint and drop its deliveries not yet made, in one transaction.

        The endpoint's ``pending`` and ``in_flight`` outbox rows are deleted with it, so none
        is sent, dead-lettered or counted among the dead letters operators are told about:
        the partner removed the receiver, nothing failed. Deleting beats marking them with a
        new status: such a row says nothing worth keeping (the event stays in ``events``,
        and the partner can no longer list the endpoint's deliveries), while a new status
        would have to be known to every reader of the outbox (claims, counts, the dead-letter
        check, pruning) to stay out of their way. A dispatcher that claimed a row before the
        delete finds it gone when it records the attempt, and its update changes nothing.
        Rows already ``delivered`` or ``dead`` stay as history, pruned as usual.

        Returns False when there was no such endpoint (nothing is dropped then).
        """
        table, outbox = schema.webhook_endpoints, schema.outbox
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(table).where(table.c.id == endpoint_id))
            if not result.rowcount:
                return False
            dropped = await conn.execute(
                delete(outbox).where(
                    outbox.c.channel == WEBHOOKS_CHANNEL,
                    outbox.c.recipient == endpoint_id,
                    outbox.c.status.in_([PENDING, IN_FLIGHT]),
                )
            )
        log.info(
            "webhook endpoint %s removed; %d deliveries not yet made dropped",
            endpoint_id,
            dropped.rowcount,
            extra={"action": "endpoint_deleted", "endpoint": endpoint_id},
        )
        return True

    async def drop_orphans(self, delivery_ids: Iterable[int]) -> int:
        """Delete the not-yet-made webhook deliveries among ``delivery_ids`` whose endpoint
        no longer exists; returns how many.

        :meth:`delete` drops an endpoint's rows, but an event whose routes were read just
        before the delete may still add one after it. This is for the sender that finds a
        claimed row's endpoint gone: drop the row here and report it as not started (the
        release then finds nothing), rather than dead-letter it as "endpoint deleted".
        """
        table, outbox = schema.webhook_endpoints, schema.outbox
        wanted = sorted(set(delivery_ids))
        count = 0
        async with self.engine.begin() as conn:
            for start in range(0, len(wanted), 900):
                result = await conn.execute(
                    delete(outbox).where(
                        outbox.c.id.in_(wanted[start : start + 900]),
                        outbox.c.channel == WEBHOOKS_CHANNEL,
                        outbox.c.status.in_([PENDING, IN_FLIGHT]),
                        ~select(table.c.id).where(table.c.id == outbox.c.recipient).exists(),
                    )
                )
                count += int(result.rowcount or 0)
        return count

    async def rotate(
        self, endpoint_id: str, *, grace: float, now: datetime
    ) -> tuple[Endpoint, str] | None:
        """A new secret; the current one keeps signing for ``grace`` seconds."""
        current = await self.get(endpoint_id)
        if current is None:
            return None
        secret = generate_secret()
        until = now + timedelta(seconds=grace) if grace > 0 else None
        table = schema.webhook_endpoints
        async with self.engine.begin() as conn:
            await conn.execute(
                update(table)
                .where(table.c.id == endpoint_id)
                .values(
                    secret=secret,
                    previous_secret=current.secret if until else None,
                    previous_secret_until=until,
                    updated_at=now,
                )
            )
        rotated = replace(
            current,
            secret=secret,
            previous_secret=current.secret if until else None,
            previous_secret_until=until,
            updated_at=now,
        )
        return rotated, secret

    async def sync_static(self, declared: Sequence[Endpoint], *, now: datetime) -> None:
        """Make the operator's YAML endpoints the static rows: add, update, remove."""
        table = schema.webhook_endpoints
        async with self.engine.begin() as conn:
            await startup_lock(conn)  # replicas starting together sync one after the other
            rows = (await conn.execute(select(table).where(table.c.static.is_(True)))).mappings()
            existing = {r["id"]: _endpoint(r) for r in rows.all()}
            for endpoint in declared:
                values: dict[str, Any] = {
                    "partner_id": endpoint.partner_id,
                    "url": endpoint.url,
                    "description": endpoint.description,
                    "filters": endpoint.filters.to_json(),
                    "secret": endpoint.secret,
                    "updated_at": now,
                }
                old = existing.pop(endpoint.id, None)
                if old is None:
                    await conn.execute(
                        table.insert().values(
                            id=endpoint.id,
                            static=True,
                            enabled=endpoint.enabled,
                            consecutive_failures=0,
                            created_at=now,
                            **values,
                        )
                    )
                    continue
                same = (old.partner_id, old.url, old.description, old.filters, old.secret) == (
                    endpoint.partner_id,
                    endpoint.url,
                    endpoint.description,
                    endpoint.filters,
                    endpoint.secret,
                )
                if same and old.enabled == endpoint.enabled:
                    continue  # unchanged: keep its updated_at
                if old.secret != endpoint.secret:
                    values.update(previous_secret=None, previous_secret_until=None)
                if not endpoint.enabled:
                    values.update(enabled=False, disabled_reason="disabled in the configuration")
                elif old.disabled_reason == "disabled in the configuration":
                    values.update(enabled=True, disabled_reason=None)
                await conn.execute(update(table).where(table.c.id == endpoint.id).values(values))
            if existing:
                await conn.execute(delete(table).where(table.c.id.in_(list(existing))))

    # -- health ------------------------------------------------------------------------------

    async def record_health(
        self, *, succeeded: Iterable[str], failed: Iterable[str], now: datetime
    ) -> None:
        """Reset the failure record of endpoints that answered 2xx; extend it for failures."""
        table = schema.webhook_endpoints
        ok, bad = sorted(set(succeeded)), sorted(set(failed))
        async with self.engine.begin() as conn:
            for start in range(0, len(ok), 900):
                await conn.execute(
                    update(table)
                    .where(table.c.id.in_(ok[start : start + 900]))
                    .values(consecutive_failures=0, failing_since=None)
                )
            for start in range(0, len(bad), 900):
                await conn.execute(
                    update(table)
                    .where(table.c.id.in_(bad[start : start + 900]))
                    .values(
                        consecutive_failures=table.c.consecutive_failures + 1,
                        failing_since=func.coalesce(table.c.failing_since, now),
                    )
                )

    async def disable(
        self,
        endpoint: Endpoint | SendTarget,
        *,
        reason: str,
        notify: Sequence[str],
        now: datetime,
    ) -> bool:
        """Disable an endpoint and record a notice for each of ``notify``, in one transaction.

        Returns False when it was already disabled (nobody is told twice).
        """
        table = schema.webhook_endpoints
        message = (
            f"Webhook endpoint {endpoint.id} ({endpoint.url}) was disabled: {reason}. "
            "Fix the receiver, enable the endpoint again (PATCH enabled=true), then redeliver "
            "what was dead-lettered."
        )
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(table)
                .where(and_(table.c.id == endpoint.id, table.c.enabled.is_(True)))
                .values(enabled=False, disabled_reason=reason, updated_at=now)
            )
            if not result.rowcount:
                return False
            for recipient in notify:
                await add_notice(
                    conn,
                    kind="webhook.endpoint_disabled",
                    subject=message,
                    detail={"endpoint": endpoint.id, "partner": endpoint.partner_id},
                    recipient=None if recipient == OPERATORS else recipient,
                    now=now,
                )
        return True

    # -- deliveries --------------------------------------------------------------------------

    async def deliveries(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        limit: int = 50,
        before: int | None = None,
    ) -> list[DeliveryRecord]:
        """An endpoint's deliveries, newest first; ``before`` pages on the delivery id."""
        outbox, events = schema.outbox, schema.events
        query = (
            select(outbox, events.c.type)
            .join(events, events.c.id == outbox.c.event_id)
            .where(outbox.c.channel == WEBHOOKS_CHANNEL, outbox.c.recipient == endpoint_id)
            .order_by(outbox.c.id.desc())
            .limit(limit)
        )
        if status is not None:
            query = query.where(outbox.c.status == status)
        if before is not None:
            query = query.where(outbox.c.id < before)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            DeliveryRecord(
                id=r["id"],
                event_id=r["event_id"],
                event_type=r["type"],
                status=r["status"],
                attempts=r["attempts"],
                response_status=r["last_status"],
                error=r["last_error"],
                next_attempt_at=r["next_attempt_at"] if r["status"] == PENDING else None,
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                delivered_at=r["delivered_at"],
            )
            for r in rows
        ]

    async def redeliver(self, endpoint_id: str, delivery_id: int, *, now: datetime) -> bool:
        """Queue one delivered or dead-lettered delivery again, with a fresh retry schedule."""
        outbox = Outbox(self.engine)
        queued = await outbox.requeue(
            WEBHOOKS_CHANNEL, recipient=endpoint_id, ids=[delivery_id], now=now
        )
        return bool(queued)

    async def redeliver_dead(self, endpoint_id: str, *, since: datetime, now: datetime) -> int:
        """Queue again every delivery of the endpoint dead-lettered at or after ``since``."""
        outbox = Outbox(self.engine)
        return await outbox.requeue(
            WEBHOOKS_CHANNEL, recipient=endpoint_id, dead_since=since, now=now
        )

    async def delivery_endpoint(self, delivery_id: int) -> str | None:
        """The endpoint a webhook delivery belongs to."""
        outbox = schema.outbox
        query = select(outbox.c.recipient).where(
            outbox.c.id == delivery_id, outbox.c.channel == WEBHOOKS_CHANNEL
        )
        async with self.engine.connect() as conn:
            value: str | None = (await conn.execute(query)).scalar_one_or_none()
        return value


def test_event(*, service: str, now: datetime, event_id: str) -> Event:
    """The ``webhook.test`` event a partner asks for to check an endpoint."""
    return Event(
        id=event_id,
        type=EventType.WEBHOOK_TEST,
        source_id="warnsvc",
        source_name=service,
        situation="warnsvc:webhook-test",
        situation_name="Webhook test",
        situation_url=None,
        scale="none",
        level=None,
        previous_level=None,
        occurred_at=now,
        detected_at=now,
        summary="A test event sent on request; it reports no change in any situation.",
    )
