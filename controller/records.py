"""What the service writes to the database beside the registry: locations, convergence
times and audit events (the binding machine's effects, drop samples and counters), and
the state it loads at start-up. Every write goes into the caller's session, so it commits
with the change it belongs to or not at all."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from . import binding, compiler, registry
from . import policy as policy_mod
from .hosts import Interface
from .metrics import Metrics
from .model import Binding, NetworkState, PortRef
from .pipeline import GROUP_SLOTS

LOG = logging.getLogger("vfence.service")


def load(sessions: sessionmaker[Session], replace_stored_policy: bool
         ) -> tuple[NetworkState, binding.Places]:
    """Registry, policy and last known locations from the database. A stored policy that
    no longer validates is raised, unless the caller is about to replace it."""
    state = NetworkState()
    with sessions() as s:
        doc = registry.current_policy(s)
        if doc is not None:
            try:
                state.policy = policy_mod.keep_priorities(policy_mod.parse(doc),
                                                          registry.current_priorities(s))
            except policy_mod.PolicyError:
                if not replace_stored_policy:
                    raise
        refresh_registry(s, state)
        _carried(state)
        places = binding.Places()
        for row in registry.list_vms(s):
            if (loc := row.location) is not None:
                places.bindings[row.name] = Binding(
                    row.name, PortRef(int(loc.dpid, 16), loc.port_no), loc.port_name, loc.how)
    state.bindings = dict(places.bindings)
    places.vm_ports = {b.port for b in places.bindings.values()}  # never fabric ports
    return state, places


def _carried(state: NetworkState) -> None:
    """VMs stored by a version that carried more groups per VM than the register slots
    hold: every compile would fail, so refuse to start and name them (dropping a group
    could drop an isolation)."""
    over = sorted(v.name for v in state.vms.values() if len(v.groups) > GROUP_SLOTS)
    if over:
        raise policy_mod.PolicyError([
            {"field": f"vms.{name}.groups",
             "reason": f"in {len(state.vms[name].groups)} groups, at most {GROUP_SLOTS} are "
                       f"carried: remove this VM from groups (or delete it) before starting"}
            for name in over])


def refresh_registry(s: Session, state: NetworkState) -> None:
    """VMs and group numbers as the (uncommitted) session sees them."""
    state.vms = {r.name: registry.to_model(r) for r in registry.list_vms(s)}
    state.group_bits = registry.group_bits(s)
    state.segment_tags = registry.segment_tags(s)
    state.router_numbers = registry.router_numbers(s)


def write(s: Session, effects: Iterable[binding.Effect], name: Callable[[int], str],
          audited: set[tuple[str, ...]]) -> None:
    """The binding machine's effects as rows: locations and audit events."""
    for e in effects:
        if isinstance(e, binding.Located):
            b = e.binding
            host = name(b.port.dpid)
            registry.set_location(s, registry.get_vm(s, b.vm), b, host)
            LOG.info("%s at %s port %s (%s)", b.vm, host, b.port.port_no, b.how,
                     extra={"vm": b.vm, "host": host, "port": b.port.port_no, "how": b.how})
        elif isinstance(e, binding.Unlocated):
            registry.close_location(s, registry.get_vm(s, e.vm))
        elif isinstance(e, binding.Audit) and (e.once is None or e.once not in audited):
            registry.record_event(s, e.kind, vm=e.vm, **dict(e.detail))
            if e.once is not None:
                LOG.warning("%s %s %s", e.kind, e.vm or "", dict(e.detail))


def converged(s: Session, moves: list[binding.Moved], since: float | None,
              metrics: Metrics) -> None:
    """How long the network took to follow each move (detection to the last barrier)."""
    if not moves or since is None:
        return
    ms = (time.monotonic() - since) * 1000
    LOG.info("converged %d move(s) in %.1f ms", len(moves), ms)
    s.flush()
    for move in moves:
        registry.set_convergence(s, move.vm, ms)
        metrics.moves.inc()
        metrics.convergence.observe(ms / 1000)


def refused_key(iface: Interface) -> tuple[str, ...]:
    return ("fabric-refused", str(iface.dpid), iface.name)


def fabric_refused(s: Session, refused: Iterable[tuple[Interface, str]],
                   name: Callable[[int], str], audited: set[tuple[str, ...]]) -> None:
    """Ports marked as fabric that carry or carried a VM stay VM ports: said once each
    (the caller adds the keys to ``audited`` when the change commits)."""
    write(s, [binding.Audit("fabric-refused", None, (
        ("host", name(i.dpid)), ("port", i.ofport), ("port_name", i.name), ("reason", why)),
        refused_key(i)) for i, why in refused], name, audited)


def record(sessions: sessionmaker[Session], kind: str, **detail: Any) -> None:
    with sessions.begin() as s:
        registry.record_event(s, kind, **detail)


def denied(sessions: sessionmaker[Session], state: NetworkState, rule_id: int, host: str,
           src_mac: str, dst_mac: str, protocol: str, port: int | None) -> str:
    """A deny-and-log rule (its cookie id: its priority) sent a sample of a dropped packet.
    Returns the rule's name."""
    rule = next((r.name for r in state.policy.rules if r.priority == rule_id), f"#{rule_id}")
    by_mac = {v.mac: v.name for v in state.vms.values()}
    record(sessions, "denied", vm=by_mac.get(src_mac), host=host, rule=rule,
           src_vm=by_mac.get(src_mac), dst_vm=by_mac.get(dst_mac), src_mac=src_mac,
           dst_mac=dst_mac, protocol=protocol, port=port)
    return rule


def spoofed(sessions: sessionmaker[Session], state: NetworkState, host: str,
            drops: list[tuple[int, int, int, int]]) -> None:
    """Anti-spoofing drop counters grew: (vm id, priority, in_port, new packets). Audited
    from counters, so a flood never reaches the controller itself."""
    by_id = {v.id: v.name for v in state.vms.values()}
    with sessions.begin() as s:
        for vm_id, prio, port, packets in drops:
            registry.record_event(s, "spoof-dropped", vm=by_id.get(vm_id), host=host,
                                  port=port, kind=compiler.SPOOF_DROP_KINDS.get(prio, str(prio)),
                                  packets=packets)
