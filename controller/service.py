"""The controller's state and the one path on which it changes.

API requests, OpenFlow events and OVSDB updates call methods here; one lock serialises
them. Every change takes :meth:`Service._change`: copy the state, edit the copy (the
binding machine in ``binding.py`` is pure), rebuild what changed (``desired.py``), program
the switches, commit the database, swap. A dry run stops before programming. A failure
leaves state and database as they were and puts changed switches back."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, cast

from sqlalchemy.orm import Session, sessionmaker

from . import binding, edits, hosts, records, registry
from . import policy as policy_mod
from .desired import Desired, rebuild
from .errors import Invalid, NotFound, VfenceError, field_path
from .flows import Flow
from .hosts import Bridge, HostBook, HostDb, Interface
from .metrics import Metrics
from .model import Link, PortRef, VMSpec
from .queries import Queries
from .replica import Replica
from .switches import Programmer, Switches

__all__ = ["Bridge", "Interface", "Invalid", "NotFound", "Programmer", "Service", "VMSpec",
           "VfenceError", "field_path"]  # its callers' words (the API imports nothing below)


class Service:
    def __init__(self, sessions: sessionmaker[Session], *,
                 learn_first_frame: bool | frozenset[str] = False,
                 replace_stored_policy: bool = False) -> None:
        """``replace_stored_policy``: the caller applies a new document right away, so a
        stored one that no longer validates (stricter checks since) is not an error."""
        self.sessions = sessions
        self.learn_first_frame = learn_first_frame
        self.lock = threading.RLock()
        self.metrics = Metrics()
        self.switches = Switches(self.metrics, self.switch_name)
        self.counters: Counter[str] = Counter()  # packet_in, ... (written by the app)
        self.hosts = HostBook()
        self._audited: set[tuple[str, ...]] = set()  # audited once each
        self.state, self.places = records.load(sessions, replace_stored_policy)
        self.desired: Desired | None = None  # compiled from self.state (rebuilt from)
        self.queries = Queries(self)
        self.external_status: Callable[[], dict[str, Any]] = dict  # BGP (set by the app)
        self.replica: Replica | None = None  # a cluster member's (set by the runner)

    def _change(self, edit: edits.Edit | binding.Event, *, dry_run: bool = False,
                force: bool = False, program: Callable[..., None] | None = None,
                since: float | None = None) -> Desired | None:
        """Copy, edit, compile, program, commit, swap. ``edit`` changes the copy and the
        session and may return an event for the binding machine, or is an event alone (a
        frame: nothing is copied unless the machine acts). ``program`` (desired, first, last)
        replaces programming every ready switch. Returns the desired flows (None when
        nothing the compiler sees changed and no switch waits for a retry). A cluster
        member works under the shared version's lock (``replica.py``)."""
        with self.lock, self.sessions() as s:
            if self.replica and (fresh := self.replica.enter(s, self.state, self.places)):
                self.state, self.places = fresh  # another member committed: theirs first
                force = True
            new = self.state.copy() if callable(edit) else None
            event = edit(new, s) if callable(edit) and new else cast(binding.Event, edit)
            world = binding.World.of(new or self.state, self.switches.ports,
                                     self.hosts.interfaces(), self.learn_first_frame)
            out = binding.step(self.places, world, event) if event else binding.Outcome(
                self.places, ())
            if new is None:
                if not out.effects and out.places is self.places and not force:
                    return None  # a frame that changes nothing (the common punt)
                new = self.state.copy()
            new.bindings, new.standby, new.expected = out.places.view()
            records.write(s, out.effects, new.switch_name, self._audited)
            sw = self.switches
            desired = rebuild(self.desired, new) if (
                force or sw.dirty or new != self.state) else None
            if dry_run:
                return desired  # the session closes unwritten; nothing was swapped
            if self.replica:
                self.replica.seal(s, self.state, new, self.places, out.places)
            with (self.replica.remote(s, self.state, new, self.desired, desired)  # first
                  if self.replica and desired else contextlib.nullcontext()):
                if desired is not None:
                    sw.name = new.switch_name
                    (program or sw.program)(desired, [m.target for m in out.moves],
                                            [m.source for m in out.moves])
                    records.converged(s, out.moves, since, self.metrics)
                try:
                    s.commit()
                except Exception:
                    sw.dirty |= sw.ready  # they run a change the database lost: redo them
                    raise
            if self.replica:
                self.replica.committed()
            self._audited |= out.once
            self.state, self.places = new, out.places
            if (hook := getattr(sw.programmer, "state_changed", None)) is not None:
                hook(new)  # what follows the state outside OpenFlow (BGP)
            self.desired = self.desired if desired is None else desired
            return desired

    # --- policy and VMs (API) -------------------------------------------------------------

    def apply_policy(self, doc: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Validate and apply a whole policy document: registry, rules, every switch, all
        or nothing. With ``dry_run`` nothing changes and the report says what would."""
        policy = policy_mod.parse(doc)
        changes: dict[str, list[str]] = {}
        with self.lock:
            before = dict(self.switches.installed)
            desired = self._change(edits.apply_policy(policy, changes), dry_run=dry_run,
                                   force=True)
            return {"dry_run": dry_run, "vms": changes, "rules": [r.name for r in policy.rules],
                    "hosts": self.switches.report(desired or {}, before)}

    def add_vm(self, spec: VMSpec) -> None:
        self._change(edits.add_vm(spec))

    def readdress_vm(self, name: str, ips: tuple[str, ...] | None, seg: str | None) -> None:
        """PATCH: a document's VM changes in the stored document, any other in the registry."""
        with self.lock:
            found = edits.readdressed_document(self.state.policy, name, ips, seg)
            if found is None:
                self._change(edits.readdress_vm(name, ips, seg))
            else:  # only this VM: the API's VMs, which the document does not list, stay
                with policy_mod.fields_under(found[1]):
                    policy = policy_mod.parse(found[0])
                self._change(edits.apply_policy(policy, {}, only=name), force=True)

    def remove_vm(self, name: str) -> None:
        self._change(edits.remove_vm(name))

    def announce_migration(self, name: str, target: str) -> dict[str, Any]:
        """Orchestrator pre-announcement: prepare ``target`` for the VM (make-before-break).
        The move completes when the VM's port or first frame appears there."""
        with self.lock:
            if name not in self.state.vms:
                raise NotFound(f"no VM named {name!r}", "name")
            dpid = self.state.find_switch(target)
            if dpid is None:
                raise Invalid(f"no connected switch named {target!r}", "target_host")
            self._change(binding.Announce(name, dpid))
            return {"vm": name, "target_host": self.switch_name(dpid), "state": "prepared"}

    # --- switches, ports, links -------------------------------------------------------------

    def switch_connected(self, dpid: int, name: str, ports: dict[int, str],
                         flows: Iterable[Flow]) -> None:
        """A switch (re)connected and its flows were read back. It gets only missing
        flows now; everything else waits for :meth:`switch_ready` (links known)."""
        with self.lock:
            name = self.hosts.names.get(dpid) or hosts.fallback_name(dpid, name,
                                                                     self.state.switches)
            self.switches.attach(dpid, ports, flows)
            self._change(edits.connect_switch(dpid, name), force=True,
                         program=lambda desired, *_: self.switches.add_missing(dpid, desired))
            self._say_connected([dpid] if self.hosts.connected(dpid, time.monotonic()) else [])

    def _say_connected(self, dpids: Iterable[int]) -> None:
        """Said once per connection, with the host's name if it comes in time."""
        for dpid in dpids:
            if self.hosts.waiting.pop(dpid, None) is not None:
                records.record(self.sessions, "switch-connected", host=self.switch_name(dpid),
                               dpid=registry.dpid_str(dpid))

    def switch_ready(self, dpid: int) -> None:
        with self.lock:  # (a cluster member programs only the switches it masters)
            if dpid in self.state.switches and self.switches.may_write(dpid):
                self.switches.ready.add(dpid)
                self._change(edits.nothing, force=True)

    def switch_disconnected(self, dpid: int) -> None:  # its flows stay (fail-secure)
        with self.lock:
            self.switches.detach(dpid)

    def ports_changed(self, dpid: int, ports: dict[int, str]) -> None:
        """New port list of a switch: bindings and links on vanished ports end."""
        with self.lock:
            self.switches.ports[dpid] = dict(ports)
            if self.switches.may_write(dpid):  # (its master decides in a cluster)
                self._change(edits.port_status(dpid, frozenset(ports)),
                             since=time.monotonic())

    def ovsdb_snapshot(self, interfaces: list[Interface], bridges: Iterable[Bridge] = (),
                       remote: str = "", host: str | None = None,
                       override: str | None = None) -> None:
        """One host's OVSDB as it is now: its name (``override``: the operator's), bridges
        and interfaces."""
        with self.lock:
            t0 = time.monotonic()
            self.hosts.snapshot(HostDb(remote, tuple(interfaces), tuple(bridges), host, override))
            fabric, refused = self.hosts.fabric(self.places.vm_ports)
            grew = {d for d, p in fabric.items() if p - self.state.fabric.get(d, set())}
            dpids = frozenset({i.dpid for i in interfaces} | {b.dpid for b in bridges})
            self._change(edits.host_listed(self.hosts.names, fabric, interfaces, dpids, lambda s:
                         records.fabric_refused(s, refused, self.switch_name, self._audited)),
                         since=t0)
            self._audited |= {records.refused_key(i) for i, _ in refused}
            self._say_connected(self.hosts.due(t0))
            probe = getattr(self.switches.programmer, "probe_fabric", None)
            if grew and probe is not None:
                probe(grew)  # find the new links now, not at the next LLDP round

    def link_seen(self, link: Link, now: float | None = None) -> bool:
        """A genuine, fresh LLDP probe went from ``link.src`` to ``link.dst``. Only a link
        between two operator-marked fabric ports of two switches counts. True if new."""
        with self.lock:
            now = time.monotonic() if now is None else now
            if not self.hosts.confirm(link, self.state.fabric, now) or link in self.state.links:
                return False
            self._change(edits.link_up(link))
            return True

    def housekeeping(self, now: float | None = None) -> None:
        """Periodic: expire links LLDP stopped confirming and stale announcements (and,
        for a cluster member, take what other members committed)."""
        now = time.monotonic() if now is None else now
        with self.lock:
            old = self.hosts.expired(self.state.links, now)
            self._change(edits.housekeeping(old, now))
            self.hosts.forget(old)
            self._say_connected(self.hosts.due(now))  # named, or said with what we have

    # --- frames the datapath sent up ----------------------------------------------------------

    def unbound_frame(self, dpid: int, port_no: int, src_mac: str, standby: bool = False
                      ) -> None:
        """A frame from a port no VM is bound to (QEMU's RARP after a move, a GARP), or
        from a standby port (``standby``: the VM runs there now; switch over)."""
        with self.lock:
            at, name = PortRef(dpid, port_no), self.switches.ports.get(dpid, {}).get(port_no, "")
            self._change(binding.StandbyFrame(at, src_mac) if standby else binding.FirstFrame(
                at, src_mac, name), since=time.monotonic())

    def vm_seen(self, dpid: int, port_no: int, src_mac: str) -> None:
        self.unbound_frame(dpid, port_no, src_mac, standby=True)

    def gateway_seen(self, dpid: int, port_no: int, ip: str, mac: str) -> None:
        self._change(edits.gateway_seen(dpid, port_no, ip, mac))  # an uplink's way out

    def switch_name(self, dpid: int) -> str:
        return self.state.switch_name(dpid)
