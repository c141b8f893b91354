"""The DNS updater: sends what :mod:`controller.dns` plans to the server, on a thread of
its own, so a slow or dead DNS server never holds up programming a switch.

Each round compares what the VMs ask for with what the server took (``dns_records``)
and sends the difference; a record is written to the database only after the server
answered NOERROR. A round runs when the state changes (:meth:`Updater.kick`), and after
a failure again in 1, 2, 4 ... 60 s. The first failure of a run and the catching up
afterwards are events; pending RRsets and sent messages are metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import dns.exception
import dns.query
import dns.rcode
import dns.tsig
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from . import dns as plan_mod
from . import records
from .metrics import Metrics
from .model import Dns, NetworkState
from .store import models as m

LOG = logging.getLogger("vfence.dns")
TIMEOUT = 2.0  # seconds for one update's answer
FIRST_RETRY, LAST_RETRY = 1.0, 60.0
RESYNC = 300.0  # a round now and then even without a change (the key file may be fixed)


class Refused(Exception):
    """The server answered, but not NOERROR (a wrong key, a zone it does not serve, a
    name in use, a name the key may not change)."""

    def __init__(self, text: str, rcode: int | None = None) -> None:
        super().__init__(text)
        self.rcode = rcode


# answers about some name of the message (a prerequisite, the key's policy for a name):
# each owner is sent alone then, so one name holds back no other
PER_NAME = {dns.rcode.YXDOMAIN, dns.rcode.NXRRSET, dns.rcode.YXRRSET, dns.rcode.REFUSED}
GONE = {dns.rcode.NOTAUTH, dns.rcode.NOTZONE}  # the server does not serve the zone
PROBES = 3  # names sent alone before a refusal of each is taken as the zone's


def _server(cfg: Dns) -> str:
    return f"{cfg.server}:{cfg.port}" if ":" not in cfg.server else f"[{cfg.server}]:{cfg.port}"


def published(s: Session, cfg: Dns) -> set[plan_mod.Rec]:
    """What this server took from vfence (rows of other servers are forgotten: the
    document moved to a new server, which gets everything)."""
    s.execute(delete(m.DnsRecord).where(m.DnsRecord.server != _server(cfg)))
    return {plan_mod.Rec(r.zone, r.owner, r.rtype, r.value)
            for r in s.scalars(select(m.DnsRecord))}


def _write(s: Session, cfg: Dns, change: plan_mod.Change) -> None:
    """The server took ``change``: its RRsets are now exactly what it carried."""
    for owner, rtype, values, _ in change.rrsets:
        s.execute(delete(m.DnsRecord).where(m.DnsRecord.zone == change.zone,
                                            m.DnsRecord.owner == owner,
                                            m.DnsRecord.rtype == rtype))
        s.add_all(m.DnsRecord(server=_server(cfg), zone=change.zone, owner=owner,
                              rtype=rtype, value=v) for v in values)


class Updater:
    def __init__(self, sessions: sessionmaker[Session], state: Callable[[], NetworkState],
                 metrics: Metrics) -> None:
        self.sessions, self.state, self.metrics = sessions, state, metrics
        self.wake = threading.Event()
        self.stopped = False
        self.lock = threading.Lock()  # one round at a time
        self.delay = RESYNC
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.last_success: float | None = None  # wall clock
        self.next_round: float | None = None  # monotonic, while failing
        self.waiting: list[str] = []  # owners of the pending RRsets (the first few)
        self.pending = 0
        self.have: tuple[str | None, set[plan_mod.Rec]] | None = None  # server, its records
        self.cfg: Dns | None = None  # the settings of the last round (to leave a server)
        # (zone, owner) whose last update's answer was lost: replaced whole next time
        self.dirty: set[tuple[str, str]] = set()
        self.turn = 0  # where the next one-by-one retry starts
        self.thread = threading.Thread(target=self._run, name="dns-updates", daemon=True)
        # a cluster member sends updates only while it holds the cluster's DNS lease (the
        # pending ones are in the database: the next holder goes on where it stopped)
        self.active: Callable[[], bool] = lambda: True

    def start(self) -> None:
        self.thread.start()
        self.kick()  # work a previous run left in the database goes now

    def kick(self) -> None:
        """The state changed: a round now (never blocks the caller)."""
        self.wake.set()

    def close(self) -> None:
        self.stopped = True
        self.wake.set()

    def _run(self) -> None:
        while not self.stopped:
            self.wake.wait(self.delay)
            self.wake.clear()
            if self.stopped:
                return
            if not self.active():
                self.have, self.delay = None, 1.0  # (the server may change meanwhile)
                continue
            try:
                ok = self.round()
            except Exception as e:  # (a locked database too): log, report, retry later
                LOG.exception("DNS round failed")
                try:
                    ok = self._failed(f"{type(e).__name__}: {e}")
                except Exception:
                    ok = False
            if ok:
                self.delay = RESYNC
            else:  # 1, 2, 4 ... 60 s
                self.delay = FIRST_RETRY if self.delay == RESYNC else min(LAST_RETRY,
                                                                          self.delay * 2)
            self.next_round = None if ok else time.monotonic() + self.delay

    def round(self) -> bool:
        """Send what the server lacks. True when it holds everything (or there is no
        server); False after a failure (the rest waits for the next round)."""
        with self.lock:
            state = self.state()
            with self.sessions() as s:
                sent, error = self._round(s, state)
            return self._failed(error) if error else self._succeeded(sent)

    def _round(self, s: Session, state: NetworkState) -> tuple[int, str | None]:
        """(RRsets the server took, the error that stopped the rest or None). What the
        server holds is read from the database once (and when the server changes), then
        kept here: this thread is its only writer."""
        cfg = state.policy.dns
        if self.cfg is not None and self.have is not None and self.have[1] and (
                cfg is None or _server(cfg) != _server(self.cfg)):
            self._leave(self.cfg, self.have[1])
        self.cfg = cfg
        if cfg is None:
            if self.have is None or self.have[0] is not None:
                s.execute(delete(m.DnsRecord))  # no server to keep current
                s.commit()
            self.have = (None, set())
            self._count([])
            return 0, None
        if self.have is None or self.have[0] != _server(cfg):
            self.have = (_server(cfg), published(s, cfg))
            s.commit()
        have = self.have[1]
        changes = plan_mod.plan(plan_mod.wanted(state), have, dirty=frozenset(self.dirty))
        self._count(changes)
        if not changes:
            return 0, None
        try:
            key = plan_mod.key(cfg)
        except ValueError as e:  # the key file changed since it was applied
            return 0, f"TSIG key: {e}"
        sent, error, left = 0, None, []
        for i, change in enumerate(changes):
            try:
                taken, refused = self._deliver(cfg, change, key)
            except (OSError, dns.exception.DNSException) as e:  # the server's: stop
                error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                left.extend(changes[i:])
                break
            for part in taken:
                self.dirty -= {(part.zone, o) for o, *_ in part.rrsets}
                _write(s, cfg, part)
                s.commit()
                have = plan_mod.applied(have, part)
                self.have = (self.have[0], have)
                sent += len(part.rrsets)
            for part, why in refused:  # this zone's or this name's: the others still go
                error = error or why
                left.append(part)
        self._count(left)
        return sent, error

    def _leave(self, cfg: Dns, have: set[plan_mod.Rec]) -> None:
        """The document dropped this server (or DNS): vfence's records there are deleted,
        once, with the settings they were made with; what cannot be is an event."""
        left, error = 0, None
        try:
            key = plan_mod.key(cfg)
            for change in plan_mod.plan(set(), have):
                try:
                    self._send(cfg, change, key)
                except Refused as e:
                    left, error = left + len(change.rrsets), str(e)
        except (ValueError, OSError, dns.exception.DNSException) as e:
            left, error = len({(r.owner, r.rtype) for r in have}), f"{type(e).__name__}: {e}"
        LOG.info("left DNS server %s (%s RRsets not removed: %s)", _server(cfg), left, error)
        records.record(self.sessions, "dns-left", server=_server(cfg), not_removed=left,
                       error=error)

    def _deliver(self, cfg: Dns, change: plan_mod.Change, key: Any
                 ) -> tuple[list[plan_mod.Change], list[tuple[plan_mod.Change, str]]]:
        """(the parts the server took, the parts it refused and why). Refused about a
        name, each owner goes alone (the answer names no culprit); a claim refused
        because the name is in use goes again as a reclaim, which succeeds only where
        vfence's marker is (its earlier claim landed, the answer was lost)."""
        try:
            self._send(cfg, change, key)
            return [change], []
        except Refused as e:
            if e.rcode in GONE and not any(w for _, _, w, _ in change.rrsets):
                # deletions only, in a zone the server does not serve (the document moved
                # to another zone, the old one went): nothing of it can be there
                LOG.info("zone %s is not on the server: its %s RRsets forgotten",
                         change.zone, len(change.rrsets))
                return [change], []
            if e.rcode not in PER_NAME:
                return [], [(change, str(e))]
            parts = change.owners()
            if len(parts) > 1:
                return self._one_by_one(cfg, parts, key)
            if e.rcode == dns.rcode.NXRRSET and change.replace:
                return self._unmarked(cfg, change, key)
            if e.rcode != dns.rcode.YXDOMAIN or not change.claims:
                return [], [(change, str(e))]
        (owner,) = change.claims
        try:
            self._send(cfg, change, key, reclaim=True)
            return [change], []
        except Refused as e:
            if e.rcode != dns.rcode.NXRRSET:
                return [], [(change, str(e))]
            return [], [(change, f"{owner} is in use on the server and not vfence's (no "
                                 f"TXT {plan_mod.marker(cfg)} there): vfence leaves it alone; "
                                 "rename the VM or remove that name")]

    def _one_by_one(self, cfg: Dns, parts: list[plan_mod.Change], key: Any
                    ) -> tuple[list[plan_mod.Change], list[tuple[plan_mod.Change, str]]]:
        """Each owner alone, starting at a place that moves on every round. When the
        first few are all refused the same way, the refusal is taken as the zone's (a
        key its policy refuses everywhere) and the rest wait: a few messages a round,
        not one per name; the moving start lets good names through meanwhile."""
        self.turn += 1
        start = self.turn % len(parts)
        order = parts[start:] + parts[:start]
        taken: list[plan_mod.Change] = []
        refused: list[tuple[plan_mod.Change, str]] = []
        for i, part in enumerate(order):
            answers = {why.split(" (")[0] for _, why in refused}  # (without the name)
            if i == PROBES and not taken and len(answers) == 1:
                (why,) = answers
                zone_wide = f"{why}: for each of {PROBES} names tried alone, as for the zone"
                return taken, [(p, zone_wide) for p in order[i:]] + refused
            t, r = self._deliver(cfg, part, key)
            taken += t
            refused += r
        return taken, refused

    def _unmarked(self, cfg: Dns, change: plan_mod.Change, key: Any
                  ) -> tuple[list[plan_mod.Change], list[tuple[plan_mod.Change, str]]]:
        """A name to replace whole lacks vfence's marker: the lost update was a delete
        that landed (the name is gone: claimed afresh, everything wanted added), or the
        name is from before vfence marked its names (in use: value by value, as then)."""
        (owner,) = change.replace
        self.dirty.discard((change.zone, owner))
        fresh = change._replace(replace=frozenset(), claims=frozenset({owner}), rrsets=tuple(
            (o, t, w, frozenset()) for o, t, w, _ in change.rrsets))
        try:
            self._send(cfg, fresh, key)
            return [fresh], []
        except Refused as e:
            if e.rcode != dns.rcode.YXDOMAIN:
                return [], [(change, str(e))]
        return self._deliver(cfg, change._replace(replace=frozenset()), key)

    def _send(self, cfg: Dns, change: plan_mod.Change, key: Any, reclaim: bool = False
              ) -> None:
        try:
            answer = dns.query.tcp(plan_mod.message(cfg, change, key, reclaim), cfg.server,
                                   timeout=TIMEOUT, port=cfg.port)
        except dns.tsig.PeerError as e:
            self.metrics.dns_updates.labels("BADSIG").inc()
            raise Refused(f"the server refused the TSIG signature for zone {change.zone} "
                          f"({e}): the key's name, secret or algorithm differ from its "
                          "own") from None
        except (OSError, dns.exception.DNSException):
            # sent or not, applied or not: its owners are replaced whole next time
            self.dirty |= {(change.zone, o) for o, *_ in change.rrsets}
            raise
        rcode = answer.rcode()
        self.metrics.dns_updates.labels(dns.rcode.to_text(rcode)).inc()
        if rcode != dns.rcode.NOERROR:
            owners = {o for o, *_ in change.rrsets}
            names = f" ({change.rrsets[0][0]})" if len(owners) == 1 else ""
            raise Refused(f"the server answered {dns.rcode.to_text(rcode)} for zone "
                          f"{change.zone}{names}", rcode)

    def _count(self, todo: list[plan_mod.Change]) -> None:
        """Pending: the RRsets whose values differ (an owner re-sent only because its
        last answer was lost counts for nothing)."""
        self.pending = sum(w != h for c in todo for _, _, w, h in c.rrsets)
        self.waiting = sorted({o for c in todo for o, _, w, h in c.rrsets if w != h})[:20]
        self.metrics.dns_pending.set(self.pending)

    def _failed(self, error: str) -> bool:
        if self.failing_since is None or error != self.last_error:
            LOG.warning("DNS updates failing (%s pending): %s", self.pending, error)
            records.record(self.sessions, "dns-failed", error=error, pending=self.pending)
        self.failing_since = self.failing_since or time.monotonic()
        self.last_error = error
        return False

    def _succeeded(self, sent: int) -> bool:
        if self.failing_since is not None:
            took = time.monotonic() - self.failing_since
            LOG.info("DNS updates caught up after %.1f s", took)
            records.record(self.sessions, "dns-caught-up", rrsets=sent,
                           failing_for_s=round(took, 1))
        elif sent:
            records.record(self.sessions, "dns-updated", rrsets=sent)
        self.failing_since, self.last_error = None, None
        self.last_success = time.time()
        return True

    def status(self) -> dict[str, Any]:
        """What GET /v1/dns shows."""
        cfg = self.state().policy.dns
        if cfg is None:
            return {"configured": False}
        now = time.monotonic()
        return {"configured": True, "server": cfg.server, "port": cfg.port, "zone": cfg.zone,
                "reverse": cfg.reverse, "ttl": cfg.ttl,
                "key": cfg.tsig.name if cfg.tsig else None,
                "state": "failing" if self.failing_since is not None else (
                    "pending" if self.pending else "current"),
                "pending": self.pending, "pending_names": list(self.waiting),
                "last_error": self.last_error, "last_success": None if self.last_success is
                None else datetime.fromtimestamp(self.last_success, UTC).isoformat(),
                "failing_for_s": None if self.failing_since is None else round(
                    now - self.failing_since, 1),
                "next_retry_in_s": None if self.next_round is None else round(
                    max(0.0, self.next_round - now), 1)}
