"""Alembic environment: runs migrations on the connection :mod:`warnsvc.store.db` hands over."""

from __future__ import annotations

from alembic import context

from warnsvc.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the service runs migrations
    raise RuntimeError(
        "warnsvc migrations run through warnsvc.store.db.migrate(), not the alembic CLI"
    )

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
