"""Persistence: SQLAlchemy models, Alembic upgrades and the queries the service needs."""
