"""Shared fixtures: a real PostgreSQL server started by the suite, database engines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vfence.controller.store import db
from vfence.mininet_topos.pgserver import free_port, fresh_database, throwaway_postgres


def _free_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on a unix socket (mininet_topos/pgserver.py)."""
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/vfence.db"


def fresh_postgres(base: str) -> str:
    """The URL of a new, empty database on the suite's PostgreSQL server."""
    return fresh_database(base)


@pytest.fixture
def pg_engine(postgres_url):
    """A migrated, empty PostgreSQL database (what a cluster shares)."""
    eng = db.make_engine(fresh_postgres(postgres_url))
    db.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/vfence.db"
    else:
        url = fresh_postgres(request.getfixturevalue("postgres_url"))
    eng = db.make_engine(url)
    db.upgrade(eng)
    yield eng
    eng.dispose()
