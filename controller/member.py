"""One cluster member's loop (``vfence serve --cluster``): heartbeat, plan, leases, roles.

Every ``TICK`` seconds a member writes its heartbeat, reads who is alive and who holds
each switch, runs :func:`cluster.plan` over the switches connected to it, and claims the
leases the plan gives it (``leases.claim``: a renewal keeps the term, a new holder gets
term + 1). Only after the switch has accepted ``OFPRoleRequest(MASTER, generation_id =
term)`` does the member program it (``on_gain``: read back, diff). A switch the plan
gives another is handed over: stop programming, role SLAVE, release the lease, so the
other claims it at once. Every other connected switch is told SLAVE once per connection
(a new connection is EQUAL, and an EQUAL controller may write).

The member may write to a switch only while its lease surely holds (:meth:`may_write`:
until ``LEASE_TTL`` after the claim was read, by this process's monotonic clock). A
member that was stopped and resumes finds that time passed and writes nothing; should a
write still leave, the switch refuses it, since the new master's higher generation id
made this member a slave there.

Talking to the switches is the app's (:class:`Roles`); this module is testable with a
fake switch and any database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from . import cluster, leases
from .model import dpid_str

LOG = logging.getLogger("vfence.member")

TICK = 0.25  # seconds between rounds: a killed member's switches move within about this
# a new member listens at least this long before it joins (its heartbeat: others count it
# and hand it its share), and until it is connected to every switch the cluster holds a
# lease on and its view (links, switches) has been still for a probe round: then what it
# compiles is what the switches hold and a hand-over sends no flow-mod. A switch it never
# reaches keeps it out for WARMUP_MAX at most (it joins, and masters what it reaches).
WARMUP = 7.0
WARMUP_MAX = 60.0
DNS_LEASE = "dns"  # the lease (beside the switches') of the member that sends DNS updates


class Roles(Protocol):
    def connected(self) -> list[int]:
        """Switches with an OpenFlow connection to this member now."""

    def become(self, dpid: int, master: bool, term: int) -> bool:
        """Role request MASTER (or SLAVE) with generation id ``term``; True once the
        switch accepted it."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class Member:
    def __init__(self, sessions: sessionmaker[Session], name: str, advertise: str,
                 roles: Roles, on_gain: Callable[[int, int], None],
                 on_lose: Callable[[int], None],
                 on_version: Callable[[int], None] = lambda v: None,
                 warmup: float = WARMUP) -> None:
        self.sessions, self.name, self.advertise = sessions, name, advertise
        self.roles, self.on_gain, self.on_lose = roles, on_gain, on_lose
        self.on_version = on_version
        self.terms: dict[int, int] = {}  # switches I master: dpid -> term (role accepted)
        self.valid: dict[int, float] = {}  # dpid -> monotonic time my lease holds until
        self.slaved: set[int] = set()  # told SLAVE on their current connection
        self.lock = threading.Lock()
        self.joins_at = time.monotonic() + warmup
        self.joins_by = time.monotonic() + max(warmup, WARMUP_MAX if warmup else 0.0)
        self.settled: Callable[[], bool] = lambda: True  # its view still for a while
        self.joined = False
        self.gone: set[int] = set()  # connections that went (from the event thread)
        self.dns_until = 0.0  # monotonic time this member's DNS lease surely holds until
        self.present: Callable[[], bool] = lambda: True  # our presence lock is held

    def sends_dns(self) -> bool:
        return time.monotonic() < self.dns_until

    def may_write(self, dpid: int) -> bool:
        return dpid in self.terms and time.monotonic() < self.valid.get(dpid, 0.0)

    def forget(self, dpid: int) -> None:
        """The switch's connection went (os-ken's event thread: never blocks): this member
        stops writing to it now; the next round gives its lease up, and a new connection
        (EQUAL, with no role of ours) is made a slave or claimed again."""
        self.valid.pop(dpid, None)  # (may_write is False from here on)
        self.gone.add(dpid)

    def tick(self) -> None:
        """One round (see the module's docstring)."""
        with self.lock:
            t0, now = time.monotonic(), utcnow()
            for dpid in list(self.gone):
                self.gone.discard(dpid)
                self._let_go(dpid, now)
            present = self.present()
            with self.sessions() as s:
                held = leases.holders(s)
                connected = self.roles.connected()
                warm = present and self._warm(t0, now, held, connected)
                if warm:
                    leases.heartbeat(s, self.name, self.advertise, now,
                                     [dpid_str(d) for d in connected])
                    s.commit()
                live = leases.live_members(s, now)
                reach = leases.reach(s)
                version = leases.read_version(s)
            # over what any live member reaches: every member plans over the same switches
            every = {dpid_str(d) for d in connected}.union(
                *(reach.get(m, ()) for m in live))
            plan = cluster.plan(every, live, {k: v[0] for k, v in held.items()}, reach)
            self.dns_until = 0.0
            if warm:  # (one member sends DNS updates: the first to claim, while it lives)
                with self.sessions() as s:
                    if leases.claim(s, DNS_LEASE, self.name, now, live=live) is not None:
                        self.dns_until = t0 + leases.LEASE_TTL
            mine = sorted(int(k, 16) for k, v in plan.items() if v == self.name and warm)
            for dpid in mine:
                self._hold(dpid, now, t0, live)
            for dpid in [d for d in self.terms if d not in mine]:
                self._hand_over(dpid, now)
            for dpid in connected:
                if dpid not in self.terms and dpid not in self.slaved:
                    lease = held.get(dpid_str(dpid))
                    if self.roles.become(dpid, False, lease[1] if lease else 0):
                        self.slaved.add(dpid)
        self.on_version(version)

    def _warm(self, t0: float, now: datetime, held: dict[str, Any], connected: list[int]
              ) -> bool:
        """Whether this member has joined (once joined, always, while present)."""
        if not self.joined:
            reached = {dpid_str(d) for d in connected}
            known = {k for k, v in held.items() if k != DNS_LEASE and v[2] > now}
            self.joined = t0 >= self.joins_by or (
                t0 >= self.joins_at and known <= reached and self.settled())
            if self.joined:
                LOG.info("joined the cluster (%d of %d switches reached)",
                         len(known & reached), len(known))
        return self.joined

    def _hold(self, dpid: int, now: datetime, t0: float, live: list[str]) -> None:
        with self.sessions() as s:
            term = leases.claim(s, dpid_str(dpid), self.name, now, live=live)
        if term is None:  # another member holds it (or won it just now)
            self._lost(dpid)
            return
        self.valid[dpid] = t0 + leases.LEASE_TTL
        if self.terms.get(dpid) == term:
            return
        if not self.roles.become(dpid, True, term):
            LOG.warning("switch %s refused MASTER in term %d", dpid_str(dpid), term)
            self._lost(dpid)
            return
        LOG.info("master of %s in term %d", dpid_str(dpid), term)
        self.terms[dpid] = term
        self.slaved.discard(dpid)
        self.on_gain(dpid, term)

    def _hand_over(self, dpid: int, now: datetime) -> None:
        """The plan gives the switch to another member: stop, SLAVE, release."""
        term = self.terms[dpid]
        self._lost(dpid)
        if self.roles.become(dpid, False, term):
            self.slaved.add(dpid)
        with self.sessions() as s:
            leases.release(s, dpid_str(dpid), self.name, now)
        LOG.info("handed %s over (term %d)", dpid_str(dpid), term)

    def _let_go(self, dpid: int, now: datetime) -> None:
        """Its connection went: another member that still reaches it takes it at once."""
        if dpid in self.terms:
            self._lost(dpid)
            with self.sessions() as s:
                leases.release(s, dpid_str(dpid), self.name, now)
            LOG.info("lost the connection to %s: lease released", dpid_str(dpid))
        self.slaved.discard(dpid)

    def _lost(self, dpid: int) -> None:
        self.valid.pop(dpid, None)
        if self.terms.pop(dpid, None) is not None:
            self.on_lose(dpid)
        self.slaved.discard(dpid)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(TICK):
            try:
                self.tick()
            except Exception:
                LOG.exception("cluster round failed")
                self.dns_until = 0.0
                for dpid in [d for d in self.terms if not self.may_write(d)]:
                    self._lost(dpid)  # the database is away: a lease past its time is not ours
