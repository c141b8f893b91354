"""A cluster member's copy of the shared state, and the write path through the masters.

Every member keeps the whole model. What members decide together lives in the database
(registry, policy, locations: :func:`decided`); what each observes by itself (connected
switches, ports, links, fabric ports, gateways' MACs) every member observes alike, since
all are connected to every switch and OVSDB.

A change on any member (:meth:`Service._change`) runs under the shared state's version
row lock (:meth:`enter`): no other member commits meanwhile, and a member whose copy is
older reloads the decided part first. When the change alters the decided part, the
member sends each affected switch mastered by another member its complete new flow set
(:meth:`remote`, ``POST /v1/cluster/apply`` at that master, which diffs and sends one
bundle) before it programs its own and commits with version + 1. If a master refuses,
is gone or does not answer, the masters that applied it are given their old flows back,
nothing commits, and the request is answered 503 with Retry-After. A change of what a
member observes alone is programmed by each member on the switches it masters.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from . import leases, records
from .binding import Announcement, Places
from .errors import Conflict, Forbidden, Invalid, Refused, VfenceError
from .flows import Flow
from .member import DNS_LEASE, Member, utcnow
from .model import Binding, NetworkState, PortRef, dpid_str
from .reconcile import diff
from .switches import Switches

LOG = logging.getLogger("vfence.replica")

APPLY_TIMEOUT = 5.0  # seconds a master has to apply a change to its switch
SIGNATURE_AGE = 30  # seconds a member's signed push stays good


def decided(state: NetworkState) -> tuple[Any, ...]:
    """The part of the state the database holds (what members must agree on). The
    gateways' MACs are among it: only the master of a host hears its gateway answer."""
    return (state.policy, state.vms, state.group_bits, state.segment_tags,
            state.router_numbers, state.bindings, state.standby, state.expected,
            state.gateway_macs, state.gateway6_macs)


def _binding(b: Binding) -> list[Any]:
    return [b.vm, b.port.dpid, b.port.port_no, b.port_name, b.how]


def _unbinding(row: list[Any]) -> Binding:
    return Binding(row[0], PortRef(row[1], row[2]), row[3], row[4])


def shared_json(p: Places, state: NetworkState) -> str:
    """What members share beside the registry: the binding machine's state (its
    deadlines, on this process's monotonic clock, as wall-clock times) and the MAC each
    host's external gateway answered its master with."""
    wall = time.time() - time.monotonic()
    return json.dumps({
        "gateway_macs": [[d, mac] for d, mac in state.gateway_macs.items()],
        "gateway6_macs": [[d, mac] for d, mac in state.gateway6_macs.items()],
        "bindings": [_binding(b) for b in p.bindings.values()],
        "standby": [_binding(b) for b in p.standby.values()],
        "announced": [[vm, a.dpid, sorted(a.before), a.deadline + wall]
                      for vm, a in p.announced.items()],
        "candidates": [[_binding(b), until + wall] for b, until in p.candidates.values()],
        "retired": [[vm, port.dpid, port.port_no] for vm, port in p.retired],
        "vm_ports": [list(port) for port in p.vm_ports]})


def gateways_from_json(text: str) -> tuple[dict[int, str], dict[int, str]]:
    doc = json.loads(text)
    return ({d: mac for d, mac in doc.get("gateway_macs", [])},
            {d: mac for d, mac in doc.get("gateway6_macs", [])})


def places_from_json(text: str) -> Places:
    doc, mono = json.loads(text), time.monotonic() - time.time()
    return Places(
        {b.vm: b for b in map(_unbinding, doc["bindings"])},
        {b.vm: b for b in map(_unbinding, doc["standby"])},
        {vm: Announcement(dpid, frozenset(before), deadline + mono)
         for vm, dpid, before, deadline in doc["announced"]},
        {(b := _unbinding(row)).vm: (b, until + mono) for row, until in doc["candidates"]},
        {(vm, PortRef(dpid, no)) for vm, dpid, no in doc["retired"]},
        {PortRef(dpid, no) for dpid, no in doc["vm_ports"]})


def flows_json(flows: frozenset[Flow]) -> list[list[Any]]:
    return [[f.table, f.priority, f.match, f.instructions, f.cookie] for f in flows]


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


def flows_from_json(rows: list[list[Any]]) -> frozenset[Flow]:
    """The inverse of :func:`flows_json` (JSON makes every tuple a list)."""
    try:
        if not all(len(r) == 5 and _whole(r[0], r[1], r[4]) for r in rows):
            raise Invalid("each flow is [table, priority, match, instructions, cookie], "
                          "with whole numbers for table, priority and cookie", "flows")
        return frozenset(Flow(t, p, _tuples(m), _tuples(i), c) for t, p, m, i, c in rows)
    except (TypeError, ValueError, RecursionError) as e:
        raise Invalid(f"not a flow list: {e}", "flows") from e


def _whole(*values: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def _valid(lease: tuple[str, int, datetime], live: set[str], now: datetime) -> bool:
    """A lease whose holder is alive and which has not expired."""
    return lease[0] in live and lease[2] > now


class Replica:
    def __init__(self, sessions: sessionmaker[Session], switches: Switches, name: str,
                 advertise: str, token: str | None = None) -> None:
        self.sessions, self.switches = sessions, switches
        self.name, self.advertise, self.token = name, advertise, token
        self.presence: Any = None  # its presence lock (leases.Presence)
        self.bgp_address: str | None = None  # its own address toward BGP peers
        self.member: Member | None = None  # set by the app once it talks OpenFlow
        with sessions() as s:
            self.lldp_key = leases.lldp_key(s)
        # none yet: the first change reloads the shared state (records.load left out
        # what only the shared row holds: standby ports, announced moves, gateways' MACs)
        self.version = -1
        self.pending: int | None = None  # the version this change commits, if any

    def mine(self, dpid: int) -> bool:
        return self.member is not None and self.member.may_write(dpid)

    # --- the shared state's version ----------------------------------------------------

    def enter(self, s: Session, state: NetworkState, places: Places
              ) -> tuple[NetworkState, Places] | None:
        """Lock the version for this change; the state reloaded if others committed."""
        self.pending = None
        version = leases.lock_version(s)
        if version == self.version:
            return None
        fresh, fresh_places = records.load(self.sessions, True)
        for observed in ("switches", "links", "fabric", "port_names"):
            setattr(fresh, observed, getattr(state, observed))
        shared = leases.places(s)
        if shared is not None:  # (the locations table says the same of bindings)
            fresh_places = places_from_json(shared)
            fresh.gateway_macs, fresh.gateway6_macs = gateways_from_json(shared)
        fresh.bindings, fresh.standby, fresh.expected = fresh_places.view()
        self.version = version
        LOG.info("reloaded the shared state at version %d", version)
        return fresh, fresh_places

    def seal(self, s: Session, old: NetworkState, new: NetworkState, before: Places,
             after: Places) -> None:
        """Before commit: one more version (and the binding machine's state) if this
        change alters what members share."""
        self.pending = None
        if decided(old) != decided(new) or before != after:
            self.pending = leases.bump(s, shared_json(after, new))

    def committed(self) -> None:
        if self.pending is not None:
            self.version, self.pending = self.pending, None

    # --- pushing a change through other members' masters ---------------------------------

    @contextlib.contextmanager
    def remote(self, s: Session, old: NetworkState, new: NetworkState,
               before: Mapping[int, frozenset[Flow]] | None,
               after: Mapping[int, frozenset[Flow]]) -> Iterator[None]:
        """Apply the change at the masters of the switches it alters that this member
        does not master, then run the block (this member's own switches, the commit); if
        anything fails, the masters that applied it get their old flows back, and it
        raises."""
        targets = [] if decided(old) == decided(new) else [
            d for d in after if not self.mine(d)
            and (before is None or d not in before or before[d] != after[d])]
        masters = self._masters(s, targets) if targets else {}
        done: list[tuple[int, str, int]] = []
        try:
            self._push_all([(d, *masters[d], after[d]) for d in targets if d in masters],
                           done)
            yield
        except BaseException:
            if before is not None:
                self._push_all([(d, url, term, before[d]) for d, url, term in done
                                if d in before], [], undo=True)
            raise

    def _masters(self, s: Session, targets: list[int]) -> dict[int, tuple[str, int]]:
        """Each target's master: (advertised URL, term). A switch with no valid master
        that this member reaches is being taken over: the change waits (503). One that
        no member masters and this one does not reach gets its flows when it connects."""
        now = utcnow()
        live = set(leases.live_members(s, now))
        where = leases.members(s)
        held = leases.holders(s)
        reached = set(self.switches.connected())
        out = {}
        for dpid in targets:
            lease = held.get(dpid_str(dpid))
            if lease is not None and _valid(lease, live, now):
                out[dpid] = (where[lease[0]][0], lease[1])
            elif dpid in reached:
                raise Refused(f"switch {dpid_str(dpid)} has no master now (a member is "
                              "taking it over); the change was not made", "cluster")
        return out

    def _push_all(self, jobs: list[tuple[int, str, int, frozenset[Flow]]],
                  done: list[tuple[int, str, int]], undo: bool = False) -> None:
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
            results = list(pool.map(lambda j: self._push(*j), jobs))
        done += [(d, url, term) for (d, url, term, _), err in zip(jobs, results, strict=True)
                 if err is None]
        errors = [err for err in results if err is not None]
        if errors:
            LOG.error("%s at the masters failed: %s", "undo" if undo else "change",
                      "; ".join(errors))
            if not undo:
                raise Refused("; ".join(errors) + "; the change was rolled back", "cluster")

    def _signature(self, member: str, at: int, dpid: str, term: int, rows: Any) -> str:
        """A member's proof (the cluster's key, in the database only members read) over
        the switch, the term and the flows, at a time."""
        key = hmac.new(self.lldp_key, b"vfence cluster apply", hashlib.sha256).digest()
        digest = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()
        return hmac.new(key, f"{member}|{at}|{dpid}|{term}|{digest}".encode(),
                        hashlib.sha256).hexdigest()

    def check_sender(self, header: str | None, dpid: str, term: int, rows: Any) -> None:
        """``X-Vfence-Member: NAME TIME SIGNATURE`` from another member, fresh (30 s):
        a client's token alone does not let it write flows."""
        try:
            member, at, sig = (header or "").rsplit(" ", 2)
            fresh = abs(time.time() - int(at)) <= SIGNATURE_AGE
        except ValueError:
            member, at, sig, fresh = "", "0", "", False
        if not fresh or not hmac.compare_digest(
                sig, self._signature(member, int(at), dpid, term, rows)):
            raise Forbidden("only a member of this cluster may send a switch's flows",
                            "header.x-vfence-member")

    def _push(self, dpid: int, url: str, term: int, flows: frozenset[Flow]) -> str | None:
        """None once the master applied it, else why not."""
        rows = flows_json(flows)
        at = int(time.time())
        headers = {"x-vfence-member": f"{self.name} {at} "
                   + self._signature(self.name, at, dpid_str(dpid), term, rows)}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        body = {"dpid": dpid_str(dpid), "term": term, "flows": rows}
        try:
            r = httpx.post(url.rstrip("/") + "/v1/cluster/apply", json=body, headers=headers,
                           timeout=APPLY_TIMEOUT)
        except httpx.HTTPError as e:
            return f"master of {dpid_str(dpid)} at {url}: {e.__class__.__name__}"
        if r.status_code != 200:
            return f"master of {dpid_str(dpid)} at {url}: {r.status_code} {r.text[:200]}"
        return None

    # --- the master's side ----------------------------------------------------------------

    def check_master(self, dpid: int, term: int) -> None:
        """Raise unless this member masters ``dpid`` in ``term`` now."""
        m = self.member
        if m is None or m.terms.get(dpid) != term or not m.may_write(dpid):
            raise Conflict(f"this member is not master of {dpid_str(dpid)} in term {term}",
                           "term")

    def apply(self, dpid: int, term: int, rows: list[list[Any]], sender: str | None) -> int:
        """Another member's change: bring a switch mastered here to the flows ``rows``
        (:func:`flows_json`) in one bundle, acknowledged by the barrier. How many
        flow-mods it took. ``sender``: its X-Vfence-Member header."""
        self.check_sender(sender, dpid_str(dpid), term, rows)
        flows = flows_from_json(rows)
        self.check_master(dpid, term)
        if dpid not in self.switches.ready:  # (its flows not read back yet: no diff)
            raise Refused(f"switch {dpid_str(dpid)} is still being taken over here", "dpid")
        changes = diff(flows, self.switches.installed[dpid])
        try:
            self.switches.send(dpid, changes)
        except VfenceError:
            raise
        except Exception as e:
            raise Refused(f"switch {dpid_str(dpid)} refused the change: {e}", "dpid") from e
        return len(changes)

    def status(self) -> dict[str, Any]:
        """Members, their health and what each masters (``GET /v1/cluster``)."""
        now = utcnow()
        with self.sessions() as s:
            live = set(leases.live_members(s, now))
            where = leases.members(s)
            held = leases.holders(s)
            version = leases.read_version(s)
        me = self.member
        return {
            "me": me.name if me else None, "version": version, "my_version": self.version,
            "members": [{"name": n, "advertise": adv, "live": n in live,
                         "heartbeat_age_s": round((now - hb).total_seconds(), 3),
                         "masters": sorted(d for d, lease in held.items() if d != DNS_LEASE
                                           and lease[0] == n and _valid(lease, live, now))}
                        for n, (adv, hb) in sorted(where.items())],
            "switches": [{"dpid": d, "master": lease[0], "term": lease[1],
                          "valid": _valid(lease, live, now),
                          "expires_in_s": round((lease[2] - now).total_seconds(), 3)}
                         for d, lease in sorted(held.items()) if d != DNS_LEASE],
            "dns_updates_by": next((lease[0] for d, lease in held.items() if d == DNS_LEASE
                                    and _valid(lease, live, now)), None),
        }
