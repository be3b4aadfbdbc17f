"""Initial schema: situations, level history, events, source health, fetch cache, outbox.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from warnsvc.store.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "situations",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("source_id", sa.String(100), nullable=False),
        sa.Column("name", sa.String(500), nullable=False),
        sa.Column("url", sa.Text()),
        sa.Column("scale", sa.String(100), nullable=False),
        sa.Column("level", sa.String(100)),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("page_date", sa.Date()),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("risk_factors", sa.JSON(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("pending_level", sa.String(100)),
        sa.Column("pending_status", sa.String(40)),
        sa.Column("pending_count", sa.Integer(), nullable=False),
        sa.Column("pending_since", UTCDateTime()),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_situations"),
    )
    op.create_table(
        "level_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("situation_id", sa.String(200), nullable=False),
        sa.Column("source_id", sa.String(100), nullable=False),
        sa.Column("level", sa.String(100)),
        sa.Column("status", sa.String(40), nullable=False),
        sa.Column("page_date", sa.Date()),
        sa.Column("event_id", sa.String(64)),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["situation_id"], ["situations.id"], name="fk_level_history_situation_id_situations"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_level_history"),
    )
    op.create_index("ix_level_history_situation_id_id", "level_history", ["situation_id", "id"])
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(40), nullable=False),
        sa.Column("source_id", sa.String(100), nullable=False),
        sa.Column("situation_id", sa.String(200)),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("detected_at", UTCDateTime(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("id", name="uq_events_id"),
    )
    op.create_index("ix_events_situation_id_seq", "events", ["situation_id", "seq"])
    op.create_table(
        "source_health",
        sa.Column("source_id", sa.String(100), nullable=False),
        sa.Column("healthy", sa.Boolean(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_poll_at", UTCDateTime()),
        sa.Column("last_success_at", UTCDateTime()),
        sa.Column("last_failure_at", UTCDateTime()),
        sa.Column("observations", sa.Integer(), nullable=False),
        sa.Column("baseline_done", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("source_id", name="pk_source_health"),
    )
    op.create_table(
        "fetch_cache",
        sa.Column("url", sa.String(2000), nullable=False),
        sa.Column("etag", sa.Text()),
        sa.Column("last_modified", sa.Text()),
        sa.Column("content_type", sa.Text()),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("fetched_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("url", name="pk_fetch_cache"),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(40), nullable=False),
        sa.Column("recipient", sa.String(1000), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("last_error", sa.Text()),
        sa.Column("last_status", sa.Integer()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime()),
        sa.ForeignKeyConstraint(["event_id"], ["events.id"], name="fk_outbox_event_id_events"),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
        sa.UniqueConstraint(
            "event_id", "channel", "recipient", name="uq_outbox_event_id_channel_recipient"
        ),
    )
    op.create_index("ix_outbox_status_next_attempt_at", "outbox", ["status", "next_attempt_at"])
    op.create_index("ix_outbox_channel_status", "outbox", ["channel", "status"])


def downgrade() -> None:
    for table in (
        "outbox",
        "fetch_cache",
        "source_health",
        "events",
        "level_history",
        "situations",
    ):
        op.drop_table(table)
