"""Join the migration branches into one line: every later revision follows this one.

Revision ID: 0006_merge
Revises: 0002_webhooks, 0004_source_warnings, 0005_operator_alerts
Create Date: 2026-11-30
"""

from __future__ import annotations

revision = "0006_merge"
down_revision = ("0002_webhooks", "0004_source_warnings", "0005_operator_alerts")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
