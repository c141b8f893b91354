"""Switch mastership leases and member heartbeats, on SQLite and a real PostgreSQL: at
most one holder, a term that grows at every change of holder, and contested claims that
exactly one member wins (PostgreSQL, concurrent sessions)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vfence.controller import leases
from vfence.controller.store import db
from vfence.controller.store import models as m

T0 = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
HV1 = f"{0x101:016x}"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_a_lease_has_one_holder_and_its_term_grows_with_each_new_one(engine):
    s = db.sessions(engine)
    with s() as a, s() as b:
        assert leases.claim(a, HV1, "c1", at(0)) == 1
        assert leases.claim(a, HV1, "c1", at(1)) == 1  # a renewal keeps the term
        assert leases.claim(b, HV1, "c2", at(2)) is None  # held until 4
        assert leases.claim(b, HV1, "c2", at(4.5)) == 2  # c1 stopped renewing: taken
        assert leases.claim(a, HV1, "c1", at(5)) is None  # the old master is out
        assert leases.holders(a)[HV1][:2] == ("c2", 2)
        leases.release(b, HV1, "c2", at(6))  # a planned hand-over: no wait
        assert leases.claim(a, HV1, "c1", at(6)) == 3
        leases.release(b, HV1, "c2", at(7))  # not its lease any more: nothing happens
        assert leases.claim(b, HV1, "c2", at(7)) is None


def _presence(engine, *names):
    """Each member's process, as far as the database sees it (PostgreSQL: its lock)."""
    return [c for n in names if (c := leases.hold_presence(engine, n)) is not None]


def test_members_are_alive_while_they_beat(engine):
    _presence(engine, "c1", "c2")
    with db.sessions(engine)() as s:
        leases.heartbeat(s, "c1", "10.0.0.1:8080", at(0))
        leases.heartbeat(s, "c2", "10.0.0.2:8080", at(2))
        s.commit()
        assert leases.live_members(s, at(2.5)) == ["c1", "c2"]
        assert leases.live_members(s, at(4)) == ["c2"]  # c1's beat is 4 s old


def test_found_by_review_a_member_that_lost_its_lease_cannot_renew_it(engine):
    """(It kept the row in its session: the renewal trusted that copy.) And a claim that
    loses keeps the session's other work (a heartbeat)."""
    _presence(engine, "c1", "c2")
    s = db.sessions(engine)
    with s() as a, s() as b:
        assert leases.claim(a, HV1, "c1", at(0)) == 1
        held = a.get(m.SwitchLease, HV1)  # the ORM copy stays in c1's session
        assert held is not None
        assert leases.claim(b, HV1, "c2", at(4)) == 2
        assert leases.claim(a, HV1, "c1", at(4.5)) is None
        leases.heartbeat(a, "c1", "10.0.0.1:8080", at(4.5))
        assert leases.claim(a, HV1, "c1", at(4.6)) is None
        a.commit()
        assert leases.live_members(b, at(5)) == ["c1"] and \
            leases.holders(b)[HV1][:2] == ("c2", 2)


@pytest.mark.postgres
def test_a_member_whose_process_is_gone_is_dead_at_once_and_its_leases_free(pg_engine):
    """Its connection went, and the server dropped its presence lock with it: its fresh
    heartbeat and unexpired leases count for nothing. A second process of one name is
    refused while the first runs."""
    (c1,) = _presence(pg_engine, "c1")
    _presence(pg_engine, "c2")
    with pytest.raises(RuntimeError, match="another running member is named 'c1'"):
        leases.hold_presence(pg_engine, "c1")
    with db.sessions(pg_engine)() as s:
        leases.heartbeat(s, "c1", "10.0.0.1:8080", at(0))
        leases.heartbeat(s, "c2", "10.0.0.2:8080", at(0))
        s.commit()
        assert leases.claim(s, HV1, "c1", at(0)) == 1
        assert leases.claim(s, HV1, "c2", at(1), live=["c1", "c2"]) is None
        c1.invalidate()  # killed
        deadline = time.monotonic() + 5
        while "c1" in leases.live_members(s, at(1)) and time.monotonic() < deadline:
            time.sleep(0.01)
        live = leases.live_members(s, at(1))
        assert live == ["c2"]
        assert leases.claim(s, HV1, "c2", at(1), live=live) == 2  # before its expiry (3)


def test_found_by_review_lease_times_are_utc_whatever_zone_they_come_in(engine):
    plus2 = timezone(timedelta(hours=2))
    with db.sessions(engine)() as s:
        leases.claim(s, HV1, "c1", at(0).astimezone(plus2))
        assert leases.claim(s, HV1, "c2", at(3.5)) == 2  # expired at T0 + 3 s, not 2 h later
        with pytest.raises(ValueError, match="timezone-aware"):
            leases.claim(s, HV1, "c2", datetime(2026, 11, 29, 3, 0))


@pytest.mark.postgres
@pytest.mark.parametrize("taken", [False, True])
def test_concurrent_claims_on_postgresql_have_exactly_one_winner(pg_engine, taken):
    """Eight members claim one switch at the same moment, on a new lease or on one whose
    holder has gone: exactly one gets it, and the term grows by one. (A cluster shares
    PostgreSQL; SQLite, one writer at a time, is for a single controller.)"""
    engine = pg_engine
    dpid = f"{0x9000 + taken:016x}"
    s = db.sessions(engine)
    with s() as first:
        base = leases.claim(first, dpid, "gone", at(0)) if taken else 0
    won: list[tuple[str, int | None]] = []
    start = threading.Barrier(8)

    def member(name: str) -> None:
        with s() as mine:
            start.wait()
            won.append((name, leases.claim(mine, dpid, name, at(10))))

    threads = [threading.Thread(target=member, args=(f"c{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    winners = [(n, term) for n, term in won if term is not None]
    assert len(won) == 8 and len(winners) == 1, won
    assert winners[0][1] == (base or 0) + 1
    with s() as check:
        assert check.get(m.SwitchLease, dpid).member == winners[0][0]
