"""Source health keeps what the last good poll skipped: ``source_health.last_warning``.

Revision ID: 0004_source_warnings
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_source_warnings"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_health") as batch:
        batch.add_column(sa.Column("last_warning", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("source_health") as batch:
        batch.drop_column("last_warning")
