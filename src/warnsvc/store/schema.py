"""The database schema, in SQLAlchemy Core.

Portable across SQLite (the embedded default) and PostgreSQL: no dialect-specific types or SQL.
Timestamps are stored as timezone-aware UTC through :class:`UTCDateTime`, because SQLite keeps
no zone. Alembic migrations under ``store/migrations`` create exactly these tables; a test keeps
the two in step.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Date,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime that is always timezone-aware UTC on the Python side."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

situations = Table(
    "situations",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("source_id", String(100), nullable=False),
    Column("name", String(500), nullable=False),
    Column("url", Text),
    Column("scale", String(100), nullable=False),
    Column("level", String(100)),
    Column("status", String(40), nullable=False),
    Column("page_date", Date),
    Column("summary", Text, nullable=False, default=""),
    Column("risk_factors", JSON, nullable=False, default=list),
    Column("content_hash", String(64), nullable=False, default=""),
    Column("pending_level", String(100)),
    Column("pending_status", String(40)),
    Column("pending_count", Integer, nullable=False, default=0),
    Column("pending_since", UTCDateTime),
    # bumped by every event of the situation; the event records the revision it started from
    Column("revision", Integer, nullable=False, default=0, server_default="0"),
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

level_history = Table(
    "level_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("situation_id", String(200), ForeignKey("situations.id"), nullable=False),
    Column("source_id", String(100), nullable=False),
    Column("level", String(100)),
    Column("status", String(40), nullable=False),
    Column("page_date", Date),
    Column("event_id", String(64)),
    Column("recorded_at", UTCDateTime, nullable=False),
    Index(None, "situation_id", "id"),
)

events = Table(
    "events",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("type", String(40), nullable=False),
    Column("source_id", String(100), nullable=False),
    Column("situation_id", String(200)),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("detected_at", UTCDateTime, nullable=False),
    Column("payload", JSON, nullable=False),
    # the situation's revision this event moved on from: one change, one event, across replicas
    Column("situation_revision", Integer),
    Index(None, "situation_id", "seq"),
    # an index, not a table constraint: SQLite adds it without rebuilding the table
    Index(
        "uq_events_situation_id_situation_revision",
        "situation_id",
        "situation_revision",
        unique=True,
    ),
)

source_health = Table(
    "source_health",
    metadata,
    Column("source_id", String(100), primary_key=True),
    Column("healthy", Boolean, nullable=False, default=True),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("last_poll_at", UTCDateTime),
    Column("last_success_at", UTCDateTime),
    Column("last_failure_at", UTCDateTime),
    Column("observations", Integer, nullable=False, default=0),
    Column("baseline_done", Boolean, nullable=False, default=False),
    Column("last_warning", Text),  # items the last good poll skipped (migration 0004)
)

fetch_cache = Table(
    "fetch_cache",
    metadata,
    Column("url", String(2000), primary_key=True),
    Column("etag", Text),
    Column("last_modified", Text),
    Column("content_type", Text),
    Column("body", LargeBinary, nullable=False),
    Column("fetched_at", UTCDateTime, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), ForeignKey("events.id"), nullable=False),
    Column("channel", String(40), nullable=False),
    Column("recipient", String(1000), nullable=False),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("last_error", Text),
    Column("last_status", Integer),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime),
    UniqueConstraint("event_id", "channel", "recipient"),
    Index(None, "status", "next_attempt_at"),
    Index(None, "channel", "status"),
)

# -- email (migration 0003_email) ----------------------------------------------------------------

email_subscribers = Table(
    "email_subscribers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False, unique=True),
    Column("name", String(200)),
    Column("origin", String(20), nullable=False),
    Column("status", String(20), nullable=False),
    Column("mode", String(20), nullable=False),
    Column("filters", JSON, nullable=False),
    Column("unsubscribe_token", String(64), nullable=False, unique=True),
    Column("hard_failures", Integer, nullable=False, default=0),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("confirmed_at", UTCDateTime),
    Column("unsubscribed_at", UTCDateTime),
    Column("last_digest_at", UTCDateTime),
    Index(None, "status", "mode"),
)

email_confirmations = Table(
    "email_confirmations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("address", String(320), nullable=False),
    Column("name", String(200)),
    Column("settings", JSON, nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("token", String(64)),
    Column("status", String(20), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime),
    Column("last_error", Text),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("sent_at", UTCDateTime),
    Column("used_at", UTCDateTime),
    Index(None, "address", "created_at"),
    Index(None, "status", "next_attempt_at"),
)

email_digest_items = Table(
    "email_digest_items",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("subscriber_id", Integer, ForeignKey("email_subscribers.id"), nullable=False),
    # no foreign key: written on the event's own transaction, just before the event row
    Column("event_id", String(64), nullable=False),
    Column("digest_id", String(64)),
    Column("created_at", UTCDateTime, nullable=False),
    UniqueConstraint("subscriber_id", "event_id"),
    Index(None, "subscriber_id", "digest_id"),
)

email_digests = Table(
    "email_digests",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("subscriber_id", Integer, ForeignKey("email_subscribers.id"), nullable=False),
    Column("event_ids", JSON, nullable=False),
    Column("period_end", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

notices = Table(
    "notices",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(60), nullable=False),
    Column("subject", String(1000), nullable=False),
    Column("detail", JSON, nullable=False),
    # NULL: the operators; else one contact (a disabled endpoint's partner)
    Column("recipient", String(500)),
    Column("created_at", UTCDateTime, nullable=False),
    Column("forwarded_at", UTCDateTime),
    Index(None, "forwarded_at", "id"),
    Index(None, "kind", "id"),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("url", String(500), nullable=False),
    Column("version", String(40), nullable=False),
    Column("config_digest", String(64), nullable=False),
    Column("leader", Boolean, nullable=False, default=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("seen_at", UTCDateTime, nullable=False),
)

# -- webhooks (revision 0002_webhooks) ---------------------------------------------------------

webhook_endpoints = Table(
    "webhook_endpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("partner_id", String(100)),
    Column("url", String(2000), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("disabled_reason", Text),
    Column("static", Boolean, nullable=False, default=False),
    Column("filters", JSON, nullable=False, default=dict),
    Column("secret", String(200), nullable=False),
    Column("previous_secret", String(200)),
    Column("previous_secret_until", UTCDateTime),
    Column("consecutive_failures", Integer, nullable=False, default=0),
    Column("failing_since", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Index(None, "partner_id"),
)

Index("ix_outbox_channel_recipient_id", outbox.c.channel, outbox.c.recipient, outbox.c.id)
