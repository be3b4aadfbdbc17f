"""Operator alerts: mark each notice once it is queued for the operators.

Revision ID: 0005_operator_alerts
Revises: 0003_email
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from warnsvc.store.schema import UTCDateTime

revision = "0005_operator_alerts"
down_revision = "0003_email"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("operator_notices") as batch:
        batch.add_column(sa.Column("forwarded_at", UTCDateTime()))


def downgrade() -> None:
    with op.batch_alter_table("operator_notices") as batch:
        batch.drop_column("forwarded_at")
