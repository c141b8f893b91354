"""Shared fixtures: a real PostgreSQL server started by the suite, database engines."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from vfence.controller.store import db


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql "
                           "(make test installs it)")
    return os.path.dirname(found[-1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on a unix socket, run as the postgres user
    (the server refuses root)."""
    bindir = _pg_bin()
    data = tempfile.mkdtemp(prefix="vfence-pg-")
    shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, f"{bindir}/initdb", "-D", f"{data}/db", "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True)
    subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", f"{data}/db", "-w", "-l", f"{data}/log",
                    "-o", f"-p {port} -k {data} -c listen_addresses=''", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://postgres@/postgres?host={data}&port={port}"
    finally:
        subprocess.run([*as_pg, f"{bindir}/pg_ctl", "-D", f"{data}/db", "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/vfence.db"


def fresh_postgres(base: str) -> str:
    """The URL of a new, empty database on the suite's PostgreSQL server."""
    from sqlalchemy import text

    name = f"t_{os.urandom(4).hex()}"
    admin = db.make_engine(base)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return base.replace("/postgres?", f"/{name}?")


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
