"""Cluster membership and switch mastership in the shared database (PostgreSQL).

A lease is a row per switch: its holder, its term and its expiry. Correctness does not
rest on clocks: the term only grows, every change of holder happens in one transaction
that locks the row (``SELECT ... FOR UPDATE``; a first claim races on the primary key),
and the switch itself refuses a role request whose generation id (the term) is older
than one it has seen. Clocks only decide liveness: when a member may take a lease its
holder stopped renewing, and which members count as alive; so members' clocks must agree
to well within MEMBER_TTL (NTP): a member whose clock runs 3 s behind looks dead to the
others, and loses its leases every round.

A member that dies (its process killed) is gone at once on PostgreSQL: it holds a session
advisory lock for as long as its connection lives (:func:`hold_presence`), and the server
drops the lock with the connection. A member that hangs (stopped, swapping) keeps its
connection, so its heartbeat's age decides after ``MEMBER_TTL``.

The shared state's version (:func:`lock_version`, :func:`bump`) is one row whose lock
serialises every change members commit to the registry, policy and locations.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from .errors import Refused
from .store import models as m

LEASE_TTL = 3.0  # seconds a lease lasts unless renewed (member.py renews it every round)
MEMBER_TTL = 3.0  # seconds without a heartbeat before a member counts as gone


def heartbeat(s: Session, member: str, advertise: str, now: datetime,
              reaches: Collection[str] | None = None) -> None:
    """I am alive at ``now``, reachable at ``advertise``, and reach these switches."""
    _aware(now)
    reach = None if reaches is None else json.dumps(sorted(reaches))
    row = s.get(m.ClusterMember, member)
    if row is None:
        s.add(m.ClusterMember(name=member, advertise=advertise, heartbeat=now, reaches=reach))
    else:
        row.advertise, row.heartbeat, row.reaches = advertise, now, reach


def reach(s: Session) -> dict[str, set[str]]:
    """The switches each member said it reaches (members that said nothing: absent)."""
    return {r.name: set(json.loads(r.reaches)) for r in s.scalars(select(m.ClusterMember))
            if r.reaches is not None}


PRESENCE_CLASS = 0x7666  # advisory lock class of members' presence locks ("vf")


def presence_key(member: str) -> int:
    return zlib.crc32(member.encode()) & 0x7FFFFFFF or 1  # (0: the migrations lock)


def hold_presence(engine: Engine, member: str) -> Connection | None:
    """A connection holding this member's presence lock for as long as it stays open
    (PostgreSQL; None elsewhere, where only heartbeats count). Raises if another live
    process already holds it: two members of one name would share leases."""
    if engine.dialect.name != "postgresql":
        return None
    conn = engine.connect()
    got = conn.execute(select(func.pg_try_advisory_lock(PRESENCE_CLASS,
                                                        presence_key(member)))).scalar()
    conn.commit()  # (a session lock outlives the transaction)
    if not got:
        conn.close()
        raise RuntimeError(f"another running member is named {member!r}")
    return conn


class Presence:
    """This member's presence lock, held on a connection of its own and taken again if
    that connection was lost (a database restart, a network cut): without it the member
    does not count as alive, so it masters nothing until it holds it again."""

    def __init__(self, engine: Engine, member: str) -> None:
        self.engine, self.member = engine, member
        self.conn = hold_presence(engine, member)

    def held(self) -> bool:
        """True while the lock is ours (PostgreSQL; always elsewhere)."""
        if self.engine.dialect.name != "postgresql":
            return True
        try:
            if self.conn is not None and not self.conn.closed:
                self.conn.execute(select(1)).scalar()
                self.conn.commit()
                return True
        except Exception:
            if self.conn is not None:
                self.conn.invalidate()  # (not back to the pool: it may hold the lock)
            self.conn = None
        try:
            self.conn = hold_presence(self.engine, self.member)
        except Exception:  # the database is away, or another process of our name runs
            return False
        return self.conn is not None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.invalidate()  # the lock goes with the connection, not to the pool
            self.conn = None


def _present(s: Session) -> set[int] | None:
    """Presence keys held now (PostgreSQL), or None where there are none to read."""
    if s.get_bind().dialect.name != "postgresql":
        return None
    return set(s.scalars(text(
        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND classid = :c AND objsubid = 2 AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())"
    ).bindparams(c=PRESENCE_CLASS)))


def live_members(s: Session, now: datetime) -> list[str]:
    """Members with a recent heartbeat whose process is still there (its presence lock)."""
    since = now - timedelta(seconds=MEMBER_TTL)
    fresh = s.scalars(select(m.ClusterMember.name).where(m.ClusterMember.heartbeat >= since))
    present = _present(s)
    return sorted(n for n in fresh if present is None or presence_key(n) in present)


def holders(s: Session) -> dict[str, tuple[str, int, datetime]]:
    """Switch (dpid, 16 hex digits) -> (holder, term, expiry)."""
    return {r.dpid: (r.member, r.term, r.expires) for r in s.scalars(select(m.SwitchLease))}


def claim(s: Session, dpid: str, member: str, now: datetime,
          ttl: float = LEASE_TTL, live: Collection[str] | None = None) -> int | None:
    """Take or renew the lease of a switch; its term, or None if another member holds it
    still (or won it meanwhile). Every write is a compare-and-set on the row as read
    (holder and term), so two members never both get a term, even one whose session
    still holds an old copy of the row. Always commits, with what else the session holds
    (a lease is worth nothing until others can see it, and the row lock must go).
    ``live``: the members alive now; a lease held by another is free as soon as its
    holder is not among them (a killed member's leases go at once)."""
    _aware(now)
    until = now + timedelta(seconds=ttl)
    row = s.execute(select(m.SwitchLease.member, m.SwitchLease.term, m.SwitchLease.expires)
                    .where(m.SwitchLease.dpid == dpid).with_for_update()).one_or_none()
    if row is None:
        try:
            with s.begin_nested():  # a first claim: the primary key picks the winner
                s.execute(insert(m.SwitchLease).values(dpid=dpid, member=member, term=1,
                                                       expires=until))
        except IntegrityError:
            s.commit()  # (the rest of the session's work stands)
            return None
        s.commit()
        return 1
    holder, term, expires = row
    if holder != member and expires > now and (live is None or holder in live):
        s.commit()  # ends the transaction: the row lock goes, the rest of the work stands
        return None
    new_term = term if holder == member else term + 1
    done = s.execute(update(m.SwitchLease).where(
        m.SwitchLease.dpid == dpid, m.SwitchLease.member == holder, m.SwitchLease.term == term
    ).values(member=member, term=new_term, expires=until))
    s.commit()
    return new_term if done.rowcount == 1 else None  # type: ignore[attr-defined]


def _aware(now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("lease times must be timezone-aware (UTC)")


def release(s: Session, dpid: str, member: str, now: datetime) -> None:
    """Give a lease up at once (a planned hand-over), if this member holds it."""
    _aware(now)
    s.execute(update(m.SwitchLease).where(m.SwitchLease.dpid == dpid,
                                          m.SwitchLease.member == member).values(expires=now))
    s.commit()


VERSION_WAIT = 10.0  # seconds a change waits for another member's change to commit


def lock_version(s: Session) -> int:
    """The shared state's version, its row locked until the session's transaction ends:
    no other member commits a change meanwhile. A member that holds it too long (stopped
    in the middle of a change) costs the others a 503, not their progress."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text(f"SET LOCAL lock_timeout = '{int(VERSION_WAIT * 1000)}ms'"))
    try:
        return int(s.execute(select(m.ClusterState.version).where(m.ClusterState.id == 1)
                             .with_for_update()).scalar_one())
    except OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "55P03":  # (lock_not_available)
            raise
        raise Refused(f"another member's change has held the shared state for "
                      f"{VERSION_WAIT:.0f} s; nothing was changed", "cluster") from e


def read_version(s: Session) -> int:
    return int(s.execute(select(m.ClusterState.version)
                         .where(m.ClusterState.id == 1)).scalar_one())


def bump(s: Session, places: str | None = None) -> int:
    """One more version, written with the change (call under :func:`lock_version`), and
    the binding machine's state as of this change (JSON)."""
    s.execute(update(m.ClusterState).where(m.ClusterState.id == 1)
              .values(version=m.ClusterState.version + 1, places=places))
    return read_version(s)


def places(s: Session) -> str | None:
    return s.execute(select(m.ClusterState.places).where(m.ClusterState.id == 1)).scalar_one()


def lldp_key(s: Session) -> bytes:
    return bytes.fromhex(s.execute(select(m.ClusterState.lldp_key)
                                   .where(m.ClusterState.id == 1)).scalar_one())


def members(s: Session) -> dict[str, tuple[str, datetime]]:
    """Every member ever seen: name -> (advertised address, last heartbeat)."""
    return {r.name: (r.advertise, r.heartbeat) for r in s.scalars(select(m.ClusterMember))}
