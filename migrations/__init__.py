"""Alembic migrations for the vfence schema (run with ``vfence db upgrade``)."""
