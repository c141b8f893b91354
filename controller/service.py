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
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from . import compiler, registry
from . import policy as policy_mod
from .flows import Flow
from .model import Binding, Link, NetworkState, PortRef, Switch
from .reconcile import FlowDiff, additions_only, apply_diff, diff
from .store import models as db

LOG = logging.getLogger("vfence.service")


class Programmer(Protocol):
    def program(self, dpid: int, changes: FlowDiff) -> None:
        """Commit ``changes`` on the switch atomically (bundle) and wait for the barrier.
        Raises on failure."""


@dataclass(frozen=True)
class Interface:
    """An OVSDB Interface row, as far as bindings care."""

    dpid: int
    ofport: int
    name: str
    attached_mac: str | None = None
    iface_id: str | None = None


class Service:
    def __init__(
        self, sessions: sessionmaker[Session], *, learn_first_frame: bool = False
    ) -> None:
        self.sessions = sessions
        self.learn_first_frame = learn_first_frame
        self.lock = threading.RLock()
        self.state = NetworkState()
        self.programmer: Programmer | None = None
        self.installed: dict[int, frozenset[Flow]] = {}
        self.ready: set[int] = set()
        self.ports: dict[int, dict[int, str]] = {}
        self.interfaces: list[Interface] | None = None  # last OVSDB snapshot
        self.flow_mods: Counter[int] = Counter()
        self.counters: Counter[str] = Counter()  # packet_in, ... (written by the app)
        self._load()

    # --- start-up ---------------------------------------------------------------------

    def _load(self) -> None:
        """Registry, policy and last known locations from the database."""
        with self.sessions() as s:
            doc = registry.current_policy(s)
            if doc is not None:
                self.state.policy = policy_mod.parse(doc)
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
            out[self._switch_name(dpid)] = {
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
            self._converge()

    # --- switches ---------------------------------------------------------------------

    def switch_connected(
        self, dpid: int, name: str, ports: dict[int, str], flows: Iterable[Flow]
    ) -> None:
        """A switch (re)connected and its flows were read back. It gets only missing
        flows now; everything else waits for :meth:`switch_ready` (links known)."""
        with self.lock:
            with self.sessions.begin() as s:
                row = registry.ensure_switch(s, dpid, name)
                registry.record_event(s, "switch-connected", host=name, dpid=row.dpid)
                label = row.label
            self.state.switches[dpid] = Switch(dpid, name, label)
            self.ports[dpid] = dict(ports)
            self.installed[dpid] = frozenset(flows)
            self.ready.discard(dpid)
            desired = compiler.compile_network(self.state)[dpid]
            self._send(dpid, additions_only(diff(desired, self.installed[dpid]),
                                            self.installed[dpid]))

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
            self.ports[dpid] = dict(ports)
            self.state.links = {
                lk for lk in self.state.links
                if not any(p.dpid == dpid and p.port_no in gone for p in (lk.src, lk.dst))
            }
            with self.sessions.begin() as s:
                for b in list(self.state.bindings.values()):
                    if b.port.dpid == dpid and b.port.port_no in gone:
                        self._unbind(s, b.vm, "port-removed")
            self._converge()

    def link_seen(self, link: Link) -> bool:
        """LLDP saw ``link``; returns True if it is new."""
        with self.lock:
            if link in self.state.links:
                return False
            # a port faces one neighbour: forget what it faced before
            self.state.links = {lk for lk in self.state.links if lk.src != link.src}
            self.state.links.add(link)
            LOG.info("link %s -> %s", link.src, link.dst)
            self._converge()
            return True

    # --- bindings ---------------------------------------------------------------------

    def ovsdb_snapshot(self, interfaces: list[Interface]) -> None:
        """The whole Interface table as OVSDB has it now."""
        with self.lock:
            self.interfaces = list(interfaces)
            present = {(i.dpid, i.ofport) for i in interfaces}
            dpids = {i.dpid for i in interfaces}
            with self.sessions.begin() as s:
                for b in list(self.state.bindings.values()):
                    if b.port.dpid in dpids and (b.port.dpid, b.port.port_no) not in present:
                        self._unbind(s, b.vm, "port-removed")
                self._bind_from_interfaces(s)
            self._converge()

    def _bind_from_interfaces(self, s: Session, state: NetworkState | None = None) -> None:
        state = state or self.state
        if not self.interfaces:
            return
        by_mac = {vm.mac: vm for vm in state.vms.values()}
        for i in sorted(self.interfaces, key=lambda i: (i.dpid, i.ofport)):
            if i.ofport <= 0:
                continue
            vm = state.vms.get(i.iface_id or "") or by_mac.get(
                (i.attached_mac or "").lower()
            )
            if vm is None:
                continue
            self._bind(s, Binding(vm.name, PortRef(i.dpid, i.ofport), i.name, "ovsdb"), state)

    def unbound_frame(self, dpid: int, port_no: int, src_mac: str) -> None:
        """A frame reached the controller from a port no VM is bound to."""
        if not self.learn_first_frame:
            return
        with self.lock:
            vm = next((v for v in self.state.vms.values() if v.mac == src_mac.lower()), None)
            if vm is None or self._port_owner(PortRef(dpid, port_no)) is not None:
                return
            name = self.ports.get(dpid, {}).get(port_no, "")
            with self.sessions.begin() as s:
                self._bind(s, Binding(vm.name, PortRef(dpid, port_no), name, "first-frame"))
            self._converge()

    def _port_owner(self, port: PortRef, state: NetworkState | None = None) -> str | None:
        state = state or self.state
        return next((b.vm for b in state.bindings.values() if b.port == port), None)

    def _bind(self, s: Session, b: Binding, state: NetworkState | None = None) -> None:
        state = state or self.state
        old = state.bindings.get(b.vm)
        if old is not None and old.port == b.port:
            return
        owner = self._port_owner(b.port, state)
        if owner is not None and owner != b.vm:
            registry.record_event(
                s, "binding-refused", vm=b.vm, host=self._switch_name(b.port.dpid),
                port=b.port.port_no, reason=f"port is bound to {owner}",
            )
            return
        state.bindings[b.vm] = b
        row = registry.get_vm(s, b.vm)
        registry.set_location(s, row, b, self._switch_name(b.port.dpid))
        kind = "vm-moved" if old is not None else "vm-bound"
        registry.record_event(
            s, kind, vm=b.vm, host=self._switch_name(b.port.dpid), port=b.port.port_no,
            how=b.how,
        )
        LOG.info("%s %s at %s port %s (%s)", kind, b.vm, self._switch_name(b.port.dpid),
                 b.port.port_no, b.how)

    def _unbind(self, s: Session, vm: str, why: str) -> None:
        b = self.state.bindings.pop(vm, None)
        if b is None:
            return
        row = registry.get_vm(s, vm)
        registry.close_location(s, row)
        registry.record_event(s, "vm-unbound", vm=vm, host=self._switch_name(b.port.dpid),
                              reason=why)

    def _switch_name(self, dpid: int) -> str:
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
                    s, "denied", vm=by_mac.get(src_mac), host=self._switch_name(dpid),
                    rule=rule, src_vm=by_mac.get(src_mac), dst_vm=by_mac.get(dst_mac),
                    src_mac=src_mac, dst_mac=dst_mac, protocol=protocol, port=port)

    # --- programming ------------------------------------------------------------------

    def desired(self) -> compiler.Flows:
        with self.lock:
            return compiler.compile_network(self.state)

    def _converge(self) -> None:
        self._program_all(compiler.compile_network(self.state))

    def _program_all(self, desired: compiler.Flows) -> None:
        """Bring every ready switch to ``desired``. If one refuses, the switches already
        changed are put back, so no change is left half-applied across the network."""
        done: list[tuple[int, frozenset[Flow]]] = []
        try:
            for dpid in sorted(self.ready):
                if dpid in self.installed and dpid in desired:
                    before = self.installed[dpid]
                    changes = diff(desired[dpid], before)
                    if changes:
                        self._send(dpid, changes)
                        done.append((dpid, before))
        except Exception:
            for dpid, before in reversed(done):
                try:
                    self._send(dpid, diff(before, self.installed[dpid]))
                except Exception:
                    LOG.exception("could not restore switch %016x", dpid)
            raise

    def _send(self, dpid: int, changes: FlowDiff) -> None:
        if not changes or self.programmer is None:
            return
        self.programmer.program(dpid, changes)
        self.flow_mods[dpid] += len(changes)
        self.installed[dpid] = apply_diff(self.installed[dpid], changes)

    # --- read side --------------------------------------------------------------------

    def connected(self) -> list[int]:
        with self.lock:
            return sorted(self.installed)

    def vm_rows(self, s: Session) -> list[db.VM]:
        return registry.list_vms(s)
