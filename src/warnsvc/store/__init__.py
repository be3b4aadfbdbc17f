"""Persistence: SQLAlchemy Core schema, Alembic migrations and the queries the service needs."""
