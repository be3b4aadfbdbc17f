"""Operators' notices go through the email and webhooks channels: the ``operators`` channel is
retired, and its rows still waiting are moved to the channels that serve them now.

- ``mailto:<address>`` rows become rows of channel ``email`` (same recipient);
- a webhook URL's rows become rows of channel ``webhooks`` for the static endpoint
  ``ops_<first 16 hex digits of the URL's SHA-256>`` that the service makes of each
  ``operators.webhooks`` URL at start (a URL no longer configured is dropped then, as an orphan,
  like any row of a deleted endpoint).

Only rows still pending or in flight move (an in-flight row's lease belonged to a process of
the older release: it becomes pending). Delivered and dead rows stay as the history they are.

Revision ID: 0008_retire_operators_channel
Revises: 0007_replicas
Create Date: 2026-11-30
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0008_retire_operators_channel"
down_revision = "0007_replicas"
branch_labels = None
depends_on = None

_outbox = sa.table(
    "outbox",
    sa.column("id", sa.Integer),
    sa.column("channel", sa.String),
    sa.column("recipient", sa.String),
    sa.column("status", sa.String),
    sa.column("lease_until", sa.DateTime),
)


def _moved(recipient: str) -> tuple[str, str]:
    if recipient.startswith("mailto:"):
        return "email", recipient
    return "webhooks", "ops_" + hashlib.sha256(recipient.encode()).hexdigest()[:16]


def upgrade() -> None:
    connection = op.get_bind()
    waiting = connection.execute(
        sa.select(_outbox.c.id, _outbox.c.recipient).where(
            _outbox.c.channel == "operators",
            _outbox.c.status.in_(["pending", "in_flight"]),
        )
    ).all()
    for row_id, recipient in waiting:
        channel, moved = _moved(recipient)
        connection.execute(
            sa.update(_outbox)
            .where(_outbox.c.id == row_id)
            .values(channel=channel, recipient=moved, status="pending", lease_until=None)
        )


def downgrade() -> None:
    """Moved rows stay where they are: the older release's ``operators`` channel would send
    them again, and a notice twice is worse than once."""
