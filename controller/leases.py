"""Cluster membership and switch mastership in the shared database (PostgreSQL).

A lease is a row per switch: its holder, its term and its expiry. Correctness does not
rest on clocks: the term only grows, every change of holder happens in one transaction
that locks the row (``SELECT ... FOR UPDATE``; a first claim races on the primary key),
and the switch itself refuses a role request whose generation id (the term) is older
than one it has seen. Clocks only decide liveness: when a member may take a lease its
holder stopped renewing, and which members count as alive.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .store import models as m

LEASE_TTL = 3.0  # seconds a lease lasts unless renewed (renewed every LEASE_TTL / 3)
MEMBER_TTL = 3.0  # seconds without a heartbeat before a member counts as gone


def heartbeat(s: Session, member: str, advertise: str, now: datetime) -> None:
    row = s.get(m.ClusterMember, member)
    if row is None:
        s.add(m.ClusterMember(name=member, advertise=advertise, heartbeat=now))
    else:
        row.advertise, row.heartbeat = advertise, now


def live_members(s: Session, now: datetime) -> list[str]:
    since = now - timedelta(seconds=MEMBER_TTL)
    return sorted(s.scalars(select(m.ClusterMember.name)
                            .where(m.ClusterMember.heartbeat >= since)))


def holders(s: Session) -> dict[str, tuple[str, int, datetime]]:
    """Switch (dpid, 16 hex digits) -> (holder, term, expiry)."""
    return {r.dpid: (r.member, r.term, r.expires) for r in s.scalars(select(m.SwitchLease))}


def claim(s: Session, dpid: str, member: str, now: datetime,
          ttl: float = LEASE_TTL) -> int | None:
    """Take or renew the lease of a switch; its term, or None if another member holds it
    still. Commits (a lease is worth nothing until others can see it)."""
    until = now + timedelta(seconds=ttl)
    row = s.scalars(select(m.SwitchLease).where(m.SwitchLease.dpid == dpid)
                    .with_for_update()).one_or_none()
    if row is None:
        s.add(m.SwitchLease(dpid=dpid, member=member, term=1, expires=until))
        try:
            s.commit()
        except IntegrityError:  # another member's first claim won the race
            s.rollback()
            return None
        return 1
    if row.member != member and row.expires > now:
        s.rollback()
        return None
    if row.member != member:
        row.member, row.term = member, row.term + 1
    row.expires = until
    term = row.term
    s.commit()
    return term


def release(s: Session, dpid: str, member: str, now: datetime) -> None:
    """Give a lease up at once (a planned hand-over), if this member holds it."""
    row = s.scalars(select(m.SwitchLease).where(m.SwitchLease.dpid == dpid)
                    .with_for_update()).one_or_none()
    if row is not None and row.member == member:
        row.expires = now
    s.commit()
