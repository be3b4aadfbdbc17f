"""Email: subscribers, double opt-in confirmations, digests, operator notices.

Revision ID: 0003_email
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from warnsvc.store.schema import UTCDateTime

revision = "0003_email"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "email_subscribers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("origin", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("mode", sa.String(20), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("unsubscribe_token", sa.String(64), nullable=False),
        sa.Column("hard_failures", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("confirmed_at", UTCDateTime()),
        sa.Column("unsubscribed_at", UTCDateTime()),
        sa.Column("last_digest_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_email_subscribers"),
        sa.UniqueConstraint("address", name="uq_email_subscribers_address"),
        sa.UniqueConstraint("unsubscribe_token", name="uq_email_subscribers_unsubscribe_token"),
    )
    op.create_index("ix_email_subscribers_status_mode", "email_subscribers", ["status", "mode"])
    op.create_table(
        "email_confirmations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("token", sa.String(64)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("lease_until", UTCDateTime()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("sent_at", UTCDateTime()),
        sa.Column("used_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_email_confirmations"),
        sa.UniqueConstraint("token_hash", name="uq_email_confirmations_token_hash"),
    )
    op.create_index(
        "ix_email_confirmations_address_created_at",
        "email_confirmations",
        ["address", "created_at"],
    )
    op.create_index(
        "ix_email_confirmations_status_next_attempt_at",
        "email_confirmations",
        ["status", "next_attempt_at"],
    )
    op.create_table(
        "email_digest_items",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("digest_id", sa.String(64)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["email_subscribers.id"],
            name="fk_email_digest_items_subscriber_id_email_subscribers",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_email_digest_items"),
        sa.UniqueConstraint(
            "subscriber_id", "event_id", name="uq_email_digest_items_subscriber_id_event_id"
        ),
    )
    op.create_index(
        "ix_email_digest_items_subscriber_id_digest_id",
        "email_digest_items",
        ["subscriber_id", "digest_id"],
    )
    op.create_table(
        "email_digests",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("event_ids", sa.JSON(), nullable=False),
        sa.Column("period_end", UTCDateTime(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["subscriber_id"],
            ["email_subscribers.id"],
            name="fk_email_digests_subscriber_id_email_subscribers",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_email_digests"),
    )
    op.create_table(
        "operator_notices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("subject", sa.String(1000), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("acknowledged_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_operator_notices"),
    )
    op.create_index(
        "ix_operator_notices_acknowledged_at_id", "operator_notices", ["acknowledged_at", "id"]
    )


def downgrade() -> None:
    for table in (
        "operator_notices",
        "email_digests",
        "email_digest_items",
        "email_confirmations",
        "email_subscribers",
    ):
        op.drop_table(table)
