"""Several replicas on one database.

- ``situations.revision`` and ``events.situation_revision`` with a unique key on
  (situation_id, situation_revision): a second event for the same transition cannot be written,
  whichever replica tries.
- One ``notices`` table instead of ``operator_notices`` and ``webhook_notices`` (rows are copied;
  a webhook notice's recipient is kept, ``operators`` becoming NULL).
- ``replicas``: the processes running on this database, their heartbeat and who leads.

Revision ID: 0007_replicas
Revises: 0006_merge
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from warnsvc.store.schema import UTCDateTime

revision = "0007_replicas"
down_revision = "0006_merge"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("situations") as batch:
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("situation_revision", sa.Integer()))
    op.create_index(
        "uq_events_situation_id_situation_revision",
        "events",
        ["situation_id", "situation_revision"],
        unique=True,
    )
    notices = op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(60), nullable=False),
        sa.Column("subject", sa.String(1000), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("recipient", sa.String(500)),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("forwarded_at", UTCDateTime()),
        sa.PrimaryKeyConstraint("id", name="pk_notices"),
    )
    op.create_index("ix_notices_forwarded_at_id", "notices", ["forwarded_at", "id"])
    op.create_index("ix_notices_kind_id", "notices", ["kind", "id"])
    _copy_notices(notices)
    op.drop_index("ix_operator_notices_acknowledged_at_id", table_name="operator_notices")
    op.drop_table("operator_notices")
    op.drop_table("webhook_notices")
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.Column("version", sa.String(40), nullable=False),
        sa.Column("config_digest", sa.String(64), nullable=False),
        sa.Column("leader", sa.Boolean(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("seen_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_replicas"),
    )


def _copy_notices(notices: sa.Table) -> None:
    bind = op.get_bind()
    old_operator = sa.table(
        "operator_notices",
        sa.column("kind"),
        sa.column("subject"),
        sa.column("detail", sa.JSON()),
        sa.column("created_at", UTCDateTime()),
        sa.column("forwarded_at", UTCDateTime()),
    )
    old_webhook = sa.table(
        "webhook_notices",
        sa.column("kind"),
        sa.column("endpoint_id"),
        sa.column("partner_id"),
        sa.column("recipient"),
        sa.column("message"),
        sa.column("created_at", UTCDateTime()),
        sa.column("sent_at", UTCDateTime()),
    )
    rows: list[dict[str, object]] = [
        {
            "kind": r.kind,
            "subject": r.subject,
            "detail": r.detail or {},
            "recipient": None,
            "created_at": r.created_at,
            "forwarded_at": r.forwarded_at,
        }
        for r in bind.execute(sa.select(old_operator))
    ]
    rows += [
        {
            "kind": f"webhook.{r.kind}",
            "subject": r.message[:1000],
            "detail": {"endpoint": r.endpoint_id, "partner": r.partner_id},
            "recipient": None if r.recipient == "operators" else r.recipient,
            "created_at": r.created_at,
            "forwarded_at": r.sent_at,
        }
        for r in bind.execute(sa.select(old_webhook))
    ]
    rows.sort(key=lambda row: row["created_at"])  # type: ignore[arg-type,return-value]
    if rows:
        op.bulk_insert(notices, rows)


def downgrade() -> None:
    raise NotImplementedError("0007_replicas cannot be undone: restore a backup instead")
