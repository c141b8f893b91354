"""Alembic environment: the engine comes from vfence (``Config.attributes['engine']``)."""

from alembic import context
from sqlalchemy import create_engine

from vfence.controller.store.models import Base

config = context.config
engine = config.attributes.get("engine") or create_engine(config.get_main_option("sqlalchemy.url"))

with engine.connect() as connection:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # A batch migration rebuilds a SQLite table (copy, drop, rename). With foreign keys
        # enforced, dropping the old table cascades: every row that references it goes
        # (0002 emptied vm_groups this way). The pragma only works outside a transaction.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()
    try:
        with connection.begin():
            if connection.dialect.name == "postgresql":
                # members of a cluster start together: one migrates, the others wait for
                # it here and then find the schema current (held until this commits)
                # (class 30310 = leases.PRESENCE_CLASS; key 0: no member's presence key)
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(30310, 0)")
            context.configure(connection=connection, target_metadata=Base.metadata,
                              render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
            if sqlite:
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise RuntimeError(f"migration left dangling foreign keys: {broken[:5]}")
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
