"""The controller's state and the one place it changes.

API requests, OpenFlow events and OVSDB updates all call methods here; one lock
serialises them. After every change the network is recompiled and each ready switch
gets the diff between what it should have and what it has, through a
:class:`Programmer` (the os-ken app implements it; tests can pass a recorder).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from . import compiler, hosts, registry
from . import policy as policy_mod
from . import verify as verify_mod
from .errors import Invalid, NotFound
from .flows import Flow
from .hosts import Bridge, HostDb, Interface
from .metrics import Metrics
from .model import Binding, Link, NetworkState, PortRef, Switch
from .reconcile import FlowDiff, additions_only, apply_diff, diff

LOG = logging.getLogger("vfence.service")


class Programmer(Protocol):
    def program(self, dpid: int, changes: FlowDiff) -> None:
        """Commit ``changes`` on the switch atomically (bundle) and wait for the barrier.
        Raises on failure."""

    def read_flows(self, dpid: int) -> list[tuple[Flow, int, int]]:
        """(flow, packets, bytes) for every flow on the switch, read now."""


__all__ = ["Bridge", "Interface", "Programmer", "Service"]
LINK_LIFETIME = 20.0  # seconds a fabric link lives without a fresh LLDP confirmation
ANNOUNCE_LIFETIME = 600.0  # seconds a pre-announced migration waits for the VM
NAME_WAIT = 30.0  # seconds a switch-connected event waits for the host's OVSDB name


class Service:
    def __init__(
        self, sessions: sessionmaker[Session], *,
        learn_first_frame: bool | frozenset[str] = False,
        replace_stored_policy: bool = False,
    ) -> None:
        """``replace_stored_policy``: the caller applies a new document right away, so a
        stored one that no longer validates (stricter checks since it was applied) is
        not an error; otherwise it is raised as a PolicyError."""
        self.sessions = sessions
        self.replace_stored_policy = replace_stored_policy
        self.learn_first_frame = learn_first_frame
        self.lock = threading.RLock()
        self.state = NetworkState()
        self.programmer: Programmer | None = None
        self.installed: dict[int, frozenset[Flow]] = {}
        self.ready: set[int] = set()
        self.ports: dict[int, dict[int, str]] = {}
        self.interfaces: list[Interface] | None = None  # every OVSDB's interfaces
        self.ovsdb: dict[str, HostDb] = {}  # last snapshot of each host's OVSDB
        self.names: dict[int, str] = {}  # dpid -> host name from the OVSDBs
        self.vm_ports: set[PortRef] = set()  # ports a VM has been bound to: never fabric
        self.link_times: dict[Link, float] = {}  # when LLDP last confirmed each link
        self._refused: set[tuple[str, ...]] = set()  # audited once each (fabric, moves)
        # switch-connected events wait (a while) for the host's name from its OVSDB
        self.unnamed_connects: dict[int, float] = {}
        self.expect_names = False  # set when OVSDBs are watched (serve --ovsdb)
        # pre-announced moves: VM -> (ports the target had then, deadline); only a port
        # that appears after the announcement can be the VM's new one
        self.announced: dict[str, tuple[frozenset[int], float]] = {}
        # where a VM's frames were refused (its old port was still up): the move there
        # completes when the old port goes, even if the VM is silent by then
        self.candidates: dict[str, Binding] = {}
        self.flow_mods: Counter[int] = Counter()
        self.counters: Counter[str] = Counter()  # packet_in, ... (written by the app)
        self._moves: list[tuple[str, int, int]] = []  # (vm, old dpid, new dpid) to converge
        self.retired: set[tuple[str, PortRef]] = set()  # ports VMs migrated away from
        self.metrics = Metrics()
        self._load()

    # --- start-up ---------------------------------------------------------------------

    def _load(self) -> None:
        """Registry, policy and last known locations from the database."""
        with self.sessions() as s:
            doc = registry.current_policy(s)
            if doc is not None:
                try:
                    self.state.policy = policy_mod.parse(doc)
                except policy_mod.PolicyError:
                    if not self.replace_stored_policy:
                        raise
            self._refresh_registry(s, self.state)
            for row in registry.list_vms(s):
                if row.location is not None:
                    loc = row.location
                    self.state.bindings[row.name] = Binding(
                        row.name, PortRef(int(loc.dpid, 16), loc.port_no), loc.port_name,
                        loc.how,
                    )

    @staticmethod
    def _refresh_registry(s: Session, state: NetworkState) -> None:
        """VMs and group bits as the (uncommitted) session sees them."""
        state.vms = {r.name: registry.to_model(r) for r in registry.list_vms(s)}
        state.group_bits = registry.group_bits(s)
        state.bindings = {n: b for n, b in state.bindings.items() if n in state.vms}

    # --- policy -----------------------------------------------------------------------

    def apply_policy(self, doc: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Validate and apply a whole policy document: registry, rules, every switch.

        All or nothing: an invalid document, a conflict or a switch that refuses its
        bundle leaves the database and the switches as they were. With ``dry_run``
        nothing changes and the report says what would.
        """
        policy = policy_mod.parse(doc)
        with self.lock:
            s = self.sessions()
            try:
                vms = registry.sync_policy(s, policy)
                new = copy.copy(self.state)
                new.policy = policy
                self._refresh_registry(s, new)
                self._bind_from_interfaces(s, new)
                desired = compiler.compile_network(new)
                report = {"dry_run": dry_run, "vms": vms,
                          "rules": [r.name for r in policy.rules],
                          "hosts": self._host_report(desired)}
                if dry_run:
                    s.rollback()
                    return report
                self._program_all(desired)
                registry.record_event(s, "policy-applied", rules=len(policy.rules),
                                      vms=len(policy.vms),
                                      changes={k: len(v) for k, v in vms.items()})
                s.commit()
                self.state = new
            except BaseException:
                s.rollback()
                raise
            finally:
                s.close()
        return report

    def _host_report(self, desired: compiler.Flows) -> dict[str, dict[str, int]]:
        out = {}
        for dpid in sorted(self.installed):
            d = diff(desired.get(dpid, frozenset()), self.installed[dpid])
            out[self.switch_name(dpid)] = {
                "flows": len(desired.get(dpid, ())), "add": len(d.add), "delete": len(d.delete)}
        return out

    def policy_document(self) -> dict[str, Any]:
        with self.sessions() as s:
            return registry.current_policy(s) or {}

    # --- VM registry (API) ------------------------------------------------------------

    def add_vm(self, spec: registry.VMSpec) -> None:
        with self.lock, self.sessions.begin() as s:
            row = registry.create_vm(s, spec)
            vm = registry.to_model(row)
            registry.record_event(s, "vm-added", vm=vm.name, mac=vm.mac, segment=vm.segment)
            old_bits = dict(self.state.group_bits)
            self.state.vms[vm.name] = vm
            self.state.group_bits = registry.group_bits(s)
            try:
                self._bind_from_interfaces(s)
                self._converge()
            except Exception:
                self.state.vms.pop(vm.name, None)
                self.state.bindings.pop(vm.name, None)
                self.state.group_bits = old_bits
                raise

    def remove_vm(self, name: str) -> None:
        with self.lock, self.sessions.begin() as s:
            registry.delete_vm(s, name)
            registry.record_event(s, "vm-removed", vm=name)
            self.state.vms.pop(name, None)
            self.state.bindings.pop(name, None)
            self._forget_move(name, self.state)
            self._converge()

    # --- switches ---------------------------------------------------------------------

    def switch_connected(
        self, dpid: int, name: str, ports: dict[int, str], flows: Iterable[Flow]
    ) -> None:
        """A switch (re)connected and its flows were read back. It gets only missing
        flows now; everything else waits for :meth:`switch_ready` (links known)."""
        with self.lock:
            name = self.names.get(dpid) or self._unnamed(dpid, name)
            with self.sessions.begin() as s:
                row = registry.ensure_switch(s, dpid, name)
                label = row.label
            # the event waits for the host's name from its OVSDB
            self.unnamed_connects[dpid] = time.monotonic()
            if dpid in self.names or not self.expect_names:
                self._connected_event(dpid)
            self.state.switches[dpid] = Switch(dpid, name, label)
            self.ports[dpid] = dict(ports)
            self.installed[dpid] = frozenset(flows)
            self.ready.discard(dpid)
            desired = compiler.compile_network(self.state)[dpid]
            self._send(dpid, additions_only(diff(desired, self.installed[dpid]),
                                            self.installed[dpid]))

    def _connected_event(self, dpid: int) -> None:
        if self.unnamed_connects.pop(dpid, None) is not None:
            with self.sessions.begin() as s:
                registry.record_event(s, "switch-connected", host=self.switch_name(dpid),
                                      dpid=registry.dpid_str(dpid))

    def switch_ready(self, dpid: int) -> None:
        with self.lock:
            if dpid in self.state.switches:
                self.ready.add(dpid)
                self._converge()

    def switch_disconnected(self, dpid: int) -> None:
        """Its flows stay on the switch (fail-secure); we just stop programming it."""
        with self.lock:
            self.ready.discard(dpid)
            self.installed.pop(dpid, None)

    def ports_changed(self, dpid: int, ports: dict[int, str]) -> None:
        """New port list of a switch: bindings and links on vanished ports end."""
        with self.lock:
            gone = set(self.ports.get(dpid, {})) - set(ports)
            came = set(ports) - set(self.ports.get(dpid, {}))
            self.ports[dpid] = dict(ports)
            self.state.links = {
                lk for lk in self.state.links
                if not any(p.dpid == dpid and p.port_no in gone for p in (lk.src, lk.dst))
            }
            t0 = time.monotonic()
            with self.sessions.begin() as s:
                for b in list(self.state.bindings.values()):
                    if b.port.dpid == dpid and b.port.port_no in gone:
                        self._port_gone(s, b)
                for vm, sb in list(self.state.standby.items()):
                    if sb.port.dpid == dpid and sb.port.port_no in gone:
                        del self.state.standby[vm]
                if came:  # a VM port whose link came back up is the VM's again
                    self._bind_from_interfaces(s)
                self._converge_moves(t0, s)

    def _unnamed(self, dpid: int, bridge: str) -> str:
        """A switch no OVSDB names: its bridge name while that is unique, else its dpid
        (every hypervisor's bridge is ``br-int``: name hosts in their OVSDB)."""
        taken = {sw.name for d, sw in self.state.switches.items() if d != dpid}
        return bridge if bridge and bridge not in taken else registry.dpid_str(dpid)

    def fabric_ports(self, dpid: int) -> frozenset[int]:
        """Ports of ``dpid`` the operator marked as facing the fabric (LLDP goes there)."""
        with self.lock:
            return self.state.fabric.get(dpid, frozenset())

    def link_seen(self, link: Link, now: float | None = None) -> bool:
        """A genuine, fresh LLDP probe went from ``link.src`` to ``link.dst``. Only a link
        between two operator-marked fabric ports of two switches counts. True if new."""
        with self.lock:
            if not hosts.on_fabric(link, self.state.fabric):
                LOG.warning("LLDP %s -> %s ignored: not between fabric ports of two switches",
                            link.src, link.dst)
                return False
            self.link_times[link] = time.monotonic() if now is None else now
            if link in self.state.links:
                return False
            # a port faces one neighbour: forget what it faced before
            self.state.links = {lk for lk in self.state.links if lk.src != link.src}
            self.state.links.add(link)
            LOG.info("link %s -> %s", link.src, link.dst)
            self._converge()
            return True

    def housekeeping(self, now: float | None = None) -> None:
        """Periodic: forget stale links and announcements that were never completed."""
        now = time.monotonic() if now is None else now
        self.expire_links(now)
        with self.lock:
            late = [vm for vm, (_, deadline) in self.announced.items() if now > deadline]
            for vm in late:
                self.announced.pop(vm)
                self.state.expected.pop(vm, None)
                LOG.warning("announced migration of %s expired", vm)
            if late:
                self._converge()
            for dpid, since in list(self.unnamed_connects.items()):
                if now - since > NAME_WAIT:  # no OVSDB names it: say so with what we have
                    self._connected_event(dpid)

    def expire_links(self, now: float | None = None) -> None:
        """Forget links LLDP has not confirmed for LINK_LIFETIME seconds."""
        now = time.monotonic() if now is None else now
        with self.lock:
            old = {lk for lk in self.state.links
                   if now - self.link_times.get(lk, now) > LINK_LIFETIME}
            if old:
                LOG.warning("links expired: %s", sorted(old))
                self._drop_links(old)

    def _drop_links(self, links: set[Link]) -> None:
        self.state.links -= links
        for lk in links:
            self.link_times.pop(lk, None)
        self._converge()

    # --- bindings ---------------------------------------------------------------------

    def ovsdb_snapshot(self, interfaces: list[Interface], bridges: Iterable[Bridge] = (),
                       remote: str = "", host: str | None = None,
                       override: str | None = None) -> None:
        """One host's OVSDB as it is now: its name (``override``: the operator's), bridges
        and interfaces."""
        with self.lock:
            self.ovsdb[remote] = HostDb(remote, tuple(interfaces), tuple(bridges), host,
                                        override)
            self.interfaces = [i for db in self.ovsdb.values() for i in db.interfaces]
            present = {(i.dpid, i.ofport) for i in interfaces}
            dpids = {i.dpid for i in interfaces} | {b.dpid for b in bridges}
            self._refresh_hosts()
            everywhere = {(i.dpid, i.ofport) for i in self.interfaces}
            self.retired = {(vm, p) for vm, p in self.retired
                            if (p.dpid, p.port_no) in everywhere}
            t0 = time.monotonic()
            with self.sessions.begin() as s:
                for b in list(self.state.bindings.values()):
                    if b.port.dpid in dpids and (b.port.dpid, b.port.port_no) not in present:
                        self._port_gone(s, b)
                for vm, sb in list(self.state.standby.items()):
                    if sb.port.dpid in dpids and (sb.port.dpid, sb.port.port_no) not in present:
                        del self.state.standby[vm]
                self._bind_from_interfaces(s)
                self._converge_moves(t0, s)

    def _refresh_hosts(self) -> None:
        """Names and fabric ports from every OVSDB; rename switches, drop links that
        no longer join two fabric ports."""
        names = hosts.switch_names(self.ovsdb.values())
        fabric, refused = hosts.fabric_ports(self.ovsdb.values(), self.vm_ports)
        for iface, why in refused:
            self._audit_once(("fabric-refused", str(iface.dpid), iface.name), host=self.switch_name(
                iface.dpid), port=iface.ofport, port_name=iface.name, reason=why)
        renamed = {d: n for d, n in names.items()
                   if d in self.state.switches and self.state.switches[d].name != n}
        if renamed:
            with self.sessions.begin() as s:
                for dpid, name in renamed.items():
                    sw = self.state.switches[dpid]
                    self.state.switches[dpid] = Switch(dpid, name, sw.label)
                    registry.ensure_switch(s, dpid, name)
                    LOG.info("switch %016x is host %s", dpid, name)
        self.names = names
        for dpid in list(self.unnamed_connects):
            if dpid in names and dpid in self.state.switches:
                self._connected_event(dpid)
        if fabric != self.state.fabric:
            grew = {d for d, ports in fabric.items() if ports - self.state.fabric.get(d, set())}
            self.state.fabric = fabric
            stale = {lk for lk in self.state.links if not hosts.on_fabric(lk, fabric)}
            self._drop_links(stale)
            probe = getattr(self.programmer, "probe_fabric", None)
            if grew and probe is not None:
                probe(grew)  # find the new links now, not at the next LLDP round

    def _audit_once(self, key: tuple[str, ...], vm: str | None = None, **detail: Any) -> None:
        """Record an audit event the first time ``key`` happens (repeats are noise)."""
        if key in self._refused:
            return
        self._refused.add(key)
        with self.sessions.begin() as s:
            registry.record_event(s, key[0], vm=vm, **detail)
        LOG.warning("%s %s %s", key[0], vm or "", detail)

    def _bind_from_interfaces(self, s: Session, state: NetworkState | None = None) -> None:
        state = state or self.state
        if not self.interfaces:
            return
        by_mac = {vm.mac: vm for vm in state.vms.values()}
        for i in sorted(self.interfaces, key=lambda i: (i.dpid, i.ofport)):
            if not 0 < i.ofport < hosts.OFPP_MAX:
                continue
            vm = state.vms.get(i.iface_id or "") or by_mac.get(
                (i.attached_mac or "").lower()
            )
            if vm is None or (vm.name, PortRef(i.dpid, i.ofport)) in self.retired:
                continue
            self._bind(s, Binding(vm.name, PortRef(i.dpid, i.ofport), i.name, "ovsdb"), state)

    def unbound_frame(self, dpid: int, port_no: int, src_mac: str) -> None:
        """A frame reached the controller from a port no VM is bound to: the first frame
        (QEMU's RARP, a GARP) of a VM that arrived here, if this host may learn that way
        or the move was announced."""
        with self.lock:
            vm = next((v for v in self.state.vms.values() if v.mac == src_mac.lower()), None)
            here = PortRef(dpid, port_no)
            if vm is None or self._port_owner(here) is not None:
                return
            announced = self._announced_here(vm.name, here)
            if not (self._learns(dpid) or announced):
                return
            if not announced and (why := self._still_there(vm.name, here)):
                # a VM that is up elsewhere does not move on a frame alone: a spoof
                self.candidates[vm.name] = Binding(vm.name, here, self.ports.get(
                    dpid, {}).get(port_no, ""), "first-frame")
                self._audit_once(("move-refused", vm.name, str(dpid), str(port_no)),
                                 vm=vm.name, host=self.switch_name(dpid), port=port_no,
                                 reason=why)
                return
            t0 = time.monotonic()
            name = self.ports.get(dpid, {}).get(port_no, "")
            how = "announce" if announced else "first-frame"
            with self.sessions.begin() as s:
                self._bind(s, Binding(vm.name, PortRef(dpid, port_no), name, how), direct=True)
                self._converge_moves(t0, s)

    def vm_seen(self, dpid: int, port_no: int, src_mac: str) -> None:
        """A frame from a standby port: the VM runs there now; switch over."""
        with self.lock:
            sb = next((b for b in self.state.standby.values()
                       if b.port == PortRef(dpid, port_no)), None)
            vm = self.state.vms.get(sb.vm) if sb else None
            if sb is None or vm is None or vm.mac != src_mac.lower():
                return
            t0 = time.monotonic()
            with self.sessions.begin() as s:
                self._promote(s, sb.vm)
                self._converge_moves(t0, s)

    def announce_migration(self, name: str, target: str) -> dict[str, Any]:
        """Orchestrator pre-announcement: prepare ``target`` for the VM (make-before-break).
        The move completes when the VM's port or first frame appears there."""
        with self.lock:
            if name not in self.state.vms:
                raise NotFound(f"no VM named {name!r}", "name")
            dpid = self.find_switch(target)
            if dpid is None:
                raise Invalid(f"no connected switch named {target!r}", "target_host")
            self.state.expected[name] = dpid
            self.announced[name] = (frozenset(self.ports.get(dpid, {})),
                                    time.monotonic() + ANNOUNCE_LIFETIME)
            try:
                with self.sessions.begin() as s:
                    registry.record_event(s, "migration-announced", vm=name, host=target)
                    self._converge()
            except Exception:
                self.state.expected.pop(name, None)
                self.announced.pop(name, None)
                raise
            return {"vm": name, "target_host": self.switch_name(dpid), "state": "prepared"}

    def _announced_here(self, vm: str, here: PortRef, now: float | None = None) -> bool:
        """The orchestrator announced ``vm``'s move to this switch, not too long ago, and
        ``here`` is a port that appeared since (a port that was there before, an attacker's
        say, cannot take the VM)."""
        now = time.monotonic() if now is None else now
        if self.state.expected.get(vm) != here.dpid or vm not in self.announced:
            return False
        before, deadline = self.announced[vm]
        return here.port_no not in before and now <= deadline

    def _still_there(self, vm: str, here: PortRef) -> str | None:
        """Why ``vm`` cannot have moved to ``here`` on a frame alone: its port elsewhere
        still exists with its link up (or its switch has not told us yet), or a standby
        port is prepared for it."""
        b = self.state.bindings.get(vm)
        if b is not None and b.port != here:
            host = self.switch_name(b.port.dpid)
            if b.port.dpid not in self.ports:
                return f"{vm}'s host {host} has not reported its ports"
            if b.port.port_no in self.ports[b.port.dpid]:
                return f"{vm} is still up on {host} port {b.port.port_no}"
        sb = self.state.standby.get(vm)
        if sb is not None and sb.port != here:
            return f"{vm} is moving to {self.switch_name(sb.port.dpid)} port {sb.port.port_no}"
        return None

    def _port_gone(self, s: Session, b: Binding) -> None:
        """The VM's port vanished: a migration completes on its standby port, or on the
        port its frames came from while the old one was still up (a learning host)."""
        cand = self.candidates.pop(b.vm, None)
        if b.vm in self.state.standby:
            self._promote(s, b.vm)
        elif cand is not None and self._may_take(cand):
            self._bind(s, cand, direct=True)
        else:
            self._unbind(s, b.vm, "port-removed")

    def _may_take(self, cand: Binding) -> bool:
        """The candidate port still exists, nobody is bound to it, its host still learns."""
        dpid, port = cand.port.dpid, cand.port.port_no
        return (port in self.ports.get(dpid, {}) and self._port_owner(cand.port) is None
                and self._learns(dpid))

    def _learns(self, dpid: int) -> bool:
        """May this host bind VMs from their first frames (--learn-first-frame[-on])?"""
        learn = self.learn_first_frame
        return learn is True or (isinstance(learn, frozenset)
                                 and self.switch_name(dpid) in learn)

    def _forget_move(self, vm: str, state: NetworkState) -> None:
        """The VM's move is over (or the VM is gone): no standby, announcement or
        candidate port for it any more."""
        state.standby.pop(vm, None)
        state.expected.pop(vm, None)
        self.announced.pop(vm, None)
        self.candidates.pop(vm, None)

    def _promote(self, s: Session, vm: str) -> None:
        sb = self.state.standby.pop(vm)
        self._bind(s, sb, direct=True)

    def _port_owner(self, port: PortRef, state: NetworkState | None = None) -> str | None:
        state = state or self.state
        return next((b.vm for b in state.bindings.values() if b.port == port), None)

    def _bind(self, s: Session, b: Binding, state: NetworkState | None = None,
              direct: bool = False) -> None:
        """Attach a VM to a port. A VM that is attached elsewhere, on a port that still
        exists, gets the new port as standby (live migration in progress) unless
        ``direct``."""
        state = state or self.state
        old = state.bindings.get(b.vm)
        if old is not None and old.port == b.port:
            return
        if old is not None and not direct and old.port.port_no in self.ports.get(
                old.port.dpid, {}):
            if b.port.port_no in state.fabric.get(b.port.dpid, ()):
                return
            if state.standby.get(b.vm) != b:
                self.vm_ports.add(b.port)
                state.standby[b.vm] = b
                registry.record_event(s, "vm-standby", vm=b.vm,
                                      host=self.switch_name(b.port.dpid),
                                      port=b.port.port_no, how=b.how)
            return
        if b.port.port_no in state.fabric.get(b.port.dpid, ()):
            registry.record_event(
                s, "binding-refused", vm=b.vm, host=self.switch_name(b.port.dpid),
                port=b.port.port_no, reason="the port faces the fabric")
            return
        if b.port.dpid in self.ports and b.port.port_no not in self.ports[b.port.dpid]:
            return  # its switch says the port is gone or its link down: not yet (a standby
            # may wait on a port that is down; the VM's delivery may not)
        owner = self._port_owner(b.port, state)
        if owner is not None and owner != b.vm:
            registry.record_event(
                s, "binding-refused", vm=b.vm, host=self.switch_name(b.port.dpid),
                port=b.port.port_no, reason=f"port is bound to {owner}",
            )
            return
        state.bindings[b.vm] = b
        self.vm_ports.add(b.port)
        self._forget_move(b.vm, state)
        if old is not None:
            self._moves.append((b.vm, old.port.dpid, b.port.dpid))
            self.retired.add((b.vm, old.port))  # the VM left it; its port may linger
        row = registry.get_vm(s, b.vm)
        registry.set_location(s, row, b, self.switch_name(b.port.dpid))
        kind = "vm-moved" if old is not None else "vm-bound"
        registry.record_event(
            s, kind, vm=b.vm, host=self.switch_name(b.port.dpid), port=b.port.port_no,
            how=b.how,
        )
        host = self.switch_name(b.port.dpid)
        LOG.info("%s %s at %s port %s (%s)", kind, b.vm, host, b.port.port_no, b.how,
                 extra={"vm": b.vm, "host": host, "port": b.port.port_no, "how": b.how})

    def _unbind(self, s: Session, vm: str, why: str) -> None:
        b = self.state.bindings.pop(vm, None)
        if b is None:
            return
        row = registry.get_vm(s, vm)
        registry.close_location(s, row)
        registry.record_event(s, "vm-unbound", vm=vm, host=self.switch_name(b.port.dpid),
                              reason=why)

    def find_switch(self, name_or_dpid: str) -> int | None:
        """A known switch by bridge name or 16-hex-digit dpid."""
        with self.lock:
            return next((d for d, sw in self.state.switches.items()
                         if name_or_dpid in (sw.name, registry.dpid_str(d))), None)

    def switch_name(self, dpid: int) -> str:
        sw = self.state.switches.get(dpid)
        return sw.name if sw else registry.dpid_str(dpid)

    # --- audit --------------------------------------------------------------------------

    def denied_sample(self, rule_index: int, dpid: int, src_mac: str, dst_mac: str,
                      protocol: str, port: int | None) -> None:
        """A deny-and-log rule sent a (metered) sample of a dropped packet."""
        with self.lock:
            rules = self.state.policy.rules
            rule = rules[rule_index].name if rule_index < len(rules) else f"#{rule_index}"
            by_mac = {v.mac: v.name for v in self.state.vms.values()}
            with self.sessions.begin() as s:
                registry.record_event(
                    s, "denied", vm=by_mac.get(src_mac), host=self.switch_name(dpid),
                    rule=rule, src_vm=by_mac.get(src_mac), dst_vm=by_mac.get(dst_mac),
                    src_mac=src_mac, dst_mac=dst_mac, protocol=protocol, port=port)

    def spoof_drops(self, dpid: int, drops: list[tuple[int, int, int, int]]) -> None:
        """Anti-spoofing drop counters grew: (vm id, priority, in_port, new packets).
        Audited from counters, so a flood never reaches the controller itself."""
        with self.lock:
            by_id = {v.id: v.name for v in self.state.vms.values()}
            with self.sessions.begin() as s:
                for vm_id, prio, port, packets in drops:
                    registry.record_event(s, "spoof-dropped", vm=by_id.get(vm_id),
                                          host=self.switch_name(dpid), port=port,
                                          kind=compiler.SPOOF_DROP_KINDS.get(prio, str(prio)),
                                          packets=packets)

    # --- programming ------------------------------------------------------------------

    def _converge(self) -> tuple[float, float]:
        """Program the moves' targets first and their old hosts last; returns how long
        compiling and programming took (ms)."""
        moves, self._moves = self._moves, []
        first = [new for _, _, new in moves]
        last = [old for _, old, _ in moves]
        t0 = time.monotonic()
        desired = compiler.compile_network(self.state)
        t1 = time.monotonic()
        self._program_all(desired, first, last)
        return (t1 - t0) * 1000, (time.monotonic() - t1) * 1000

    def _converge_moves(self, t0: float, s: Session) -> None:
        """Converge, then record (in the caller's transaction, committed after the
        switches: the network follows the VM first) how long moves took."""
        moves = list(self._moves)
        compile_ms, program_ms = self._converge()
        if not moves:
            return
        ms = (time.monotonic() - t0) * 1000
        LOG.info("converged %d move(s) in %.1f ms (compile %.1f ms, program %.1f ms)",
                 len(moves), ms, compile_ms, program_ms)
        s.flush()
        for vm, _, _ in moves:
            registry.set_convergence(s, vm, ms)
        for _ in moves:
            self.metrics.moves.inc()
            self.metrics.convergence.observe(ms / 1000)

    def _program_all(self, desired: compiler.Flows, first: list[int] | None = None,
                     last: list[int] | None = None) -> None:
        """Bring every ready switch to ``desired``: ``first`` (a migration target: local
        delivery and policy before anything points there), then all the others in one
        pipelined round trip, the old host (``last``) last among them. If one refuses,
        the switches already changed are put back, so no change is left half-applied
        across the network."""
        head = [d for d in (first or []) if d in self.ready]
        tail = [d for d in (last or []) if d in self.ready and d not in head]
        rest = sorted(d for d in self.ready if d not in head and d not in tail) + tail
        done: list[tuple[int, frozenset[Flow]]] = []
        try:
            for phase in (head, rest):  # each phase is one pipelined round trip
                batch = [(d, diff(desired[d], self.installed[d])) for d in phase
                         if d in self.installed and d in desired]
                batch = [(d, c) for d, c in batch if c]
                befores = {d: self.installed[d] for d, _ in batch}
                try:
                    self._send_many(batch)
                finally:
                    done += [(d, befores[d]) for d, _ in batch
                             if self.installed[d] is not befores[d]]
        except Exception:
            for dpid, before in reversed(done):
                try:
                    self._send(dpid, diff(before, self.installed[dpid]))
                except Exception:
                    LOG.exception("could not restore switch %016x", dpid)
            raise

    def _send_many(self, batch: list[tuple[int, FlowDiff]]) -> None:
        """Program several switches in one round trip where the programmer can; the
        switches that committed are accounted for even if another one failed."""
        if not batch or self.programmer is None:
            return
        many = getattr(self.programmer, "program_many", None)
        if many is None or len(batch) == 1:
            for dpid, changes in batch:
                self._send(dpid, changes)
            return
        failed: set[int] = set()
        error: Exception | None = None
        try:
            many(batch)
        except Exception as e:
            failed = set(getattr(e, "failed", [d for d, _ in batch]))
            error = e
        for dpid, changes in batch:
            if dpid not in failed:
                self._committed(dpid, changes)
        if error is not None:
            raise error

    def _send(self, dpid: int, changes: FlowDiff) -> None:
        if not changes or self.programmer is None:
            return
        self.programmer.program(dpid, changes)
        self._committed(dpid, changes)

    def _committed(self, dpid: int, changes: FlowDiff) -> None:
        self.flow_mods[dpid] += len(changes)
        self.installed[dpid] = apply_diff(self.installed[dpid], changes)
        name = self.switch_name(dpid)
        self.metrics.flow_mods.labels(name).inc(len(changes))
        self.metrics.bundles.labels(name).inc()

    # --- read side --------------------------------------------------------------------

    def read_flows(self, dpid: int) -> list[tuple[Flow, int, int]]:
        """The switch's flows as it reports them now, with packet and byte counts."""
        if self.programmer is None or dpid not in self.installed:
            raise NotFound(f"switch {registry.dpid_str(dpid)} is not connected", "id")
        return self.programmer.read_flows(dpid)

    def verify(self) -> list[verify_mod.Verdict]:
        """Prove each isolation pair over the flows read from every switch now."""
        with self.lock:
            state = copy.copy(self.state)
            dpids = sorted(self.installed)
            ports = {d: set(self.ports.get(d, {})) for d in dpids}
        flows = {d: [f for f, _, _ in self.read_flows(d)] for d in dpids}
        return verify_mod.verify(state, flows, ports)

    def connected(self) -> list[int]:
        with self.lock:
            return sorted(self.installed)
