"""A throw-away PostgreSQL server for labs, tests and benchmarks (what a cluster shares).

Debian's server binaries, a fresh data directory, a unix socket only (nothing listens on
the network), run as the ``postgres`` user (the server refuses root), stopped and deleted
afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql "
                           "(make test installs it)")
    return os.path.dirname(found[-1])


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """The URL of the ``postgres`` database of a new server, for as long as it runs."""
    bindir = _pg_bin()
    data = tempfile.mkdtemp(prefix="vfence-pg-")
    shutil.chown(data, "postgres", "postgres")
    port = free_port()
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


def fresh_database(base: str) -> str:
    """The URL of a new, empty database on the server of ``base``."""
    from sqlalchemy import text

    from vfence.controller.store import db

    name = f"t_{os.urandom(4).hex()}"
    admin = db.make_engine(base)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return base.replace("/postgres?", f"/{name}?")
