"""Alembic environment: the engine comes from vfence (``Config.attributes['engine']``)."""

from alembic import context
from sqlalchemy import create_engine

from controller.store.models import Base

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))

with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
