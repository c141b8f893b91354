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

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .store import models as m

LEASE_TTL = 3.0  # seconds a lease lasts unless renewed (renewed every LEASE_TTL / 3)
MEMBER_TTL = 3.0  # seconds without a heartbeat before a member counts as gone


def heartbeat(s: Session, member: str, advertise: str, now: datetime) -> None:
    _aware(now)
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
    still (or won it meanwhile). Every write is a compare-and-set on the row as read
    (holder and term), so two members never both get a term, even one whose session
    still holds an old copy of the row. Always commits, with what else the session holds
    (a lease is worth nothing until others can see it, and the row lock must go)."""
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
    if holder != member and expires > now:
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
