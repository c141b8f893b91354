"""What each kind of change does to a copy of the network state (and the session), as
functions the service runs on its one path (copy, edit, compile, program, commit, swap).
An edit may return an event for the binding machine (``binding.py``)."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session

from . import binding, dns, external, hosts, records, registry
from . import policy as policy_mod
from .errors import Conflict, Invalid
from .model import (
    VM,
    Link,
    NetworkState,
    Policy,
    PortRef,
    SegmentSpec,
    Switch,
    VMSpec,
    router_addresses,
)

LOG = logging.getLogger("vfence.service")
Edit = Callable[[NetworkState, Session], binding.Event | None]


def nothing(new: NetworkState, s: Session) -> None:
    """Recompile and reprogram as things are (a switch became ready)."""


def apply_policy(policy: Policy, changes: dict[str, list[str]], only: str | None = None
                 ) -> Edit:
    """The registry follows the document (``changes`` gets what it added, removed,
    changed); the rules replace the old ones. ``only``: the document differs from the
    stored one in that VM alone (PATCH), and no other VM is touched."""
    def edit(new: NetworkState, s: Session) -> binding.Event:
        before = new.vms.get(only) if only else None
        if only is None and policy.dns is not None and policy.dns.tsig is not None:
            try:
                dns.secret(policy.dns.tsig)  # now, not at the first update: named in the answer
            except ValueError as e:
                raise policy_mod.PolicyError([{"field": "dns.tsig.secret_file",
                                               "reason": str(e)}]) from None
        # each rule keeps the priority it had (new ones go between): O(1) flows per edit
        new.policy = policy_mod.keep_priorities(policy, {
            r.name: r.priority for r in new.policy.rules})
        changes.update(registry.sync_policy(s, new.policy, only))
        records.refresh_registry(s, new)
        if only is not None and before is not None and only in new.vms:
            vm = new.vms[only]
            registry.record_event(s, "vm-readdressed", vm=only, ips=list(vm.ips),
                                  segment=vm.segment, was={"ips": list(before.ips),
                                                           "segment": before.segment})
        registry.record_event(s, "policy-applied", rules=len(policy.rules),
                              vms=len(policy.vms),
                              changes={k: len(v) for k, v in changes.items()})
        return binding.Rebind()
    return edit


def _clear_of_routers(new: NetworkState, names: list[str]) -> None:
    """No VM may use a router's MAC, nor the gateway address of a segment a router joins
    (it would take what is meant for the gateway). The policy document checks its own
    VMs (and replaces every VM it does not list); this is for VMs added by the API."""
    macs = {r.mac: r.name for r in new.policy.routers}
    gateways = {(sp.name, gw) for r in new.policy.routers for sp in new.policy.segment_specs
                if sp.name in r.segments for gw in router_addresses(sp, r.mac)}
    router, specs = new.policy.router_of, new.policy.specs
    for name in names:
        vm = new.vms[name]
        if vm.mac in macs:
            raise Conflict(f"{vm.mac} is router {macs[vm.mac]!r}'s MAC", "mac")
        outside = new.policy.specs.get(vm.segment)
        for j, ip in enumerate(vm.ips):
            if outside is not None and outside.uplink_vlan and ip == outside.gateway:
                raise Conflict(f"{ip} is the gateway of bridged segment {vm.segment!r} (a "
                               "physical router on its VLAN)", f"ips[{j}]")
            if (vm.segment, ip) in gateways:
                raise Conflict(f"{ip} is router {router[vm.segment]!r}'s address in "
                               f"segment {vm.segment!r}", f"ips[{j}]")
            if vm.segment in router:
                _routable(new, vm, ip, f"ips[{j}]", router, specs)


def _routable(new: NetworkState, vm: VM, ip: str, field: str, router: dict[str, str],
              specs: dict[str, SegmentSpec]) -> None:
    """In a segment a router joins, an address must sit in the segment's prefix of its
    family and be no other VM's in any segment of that router (the router finds VMs by
    address alone)."""
    addr = ipaddress.ip_address(ip)
    if addr.is_link_local:
        return  # never routed
    spec = specs[vm.segment]
    if (spec.subnet if addr.version == 4 else spec.subnet6) is None:
        raise Invalid(f"{ip}: segment {vm.segment!r} has no "
                      f"{'subnet' if addr.version == 4 else 'subnet6'}, and router "
                      f"{router[vm.segment]!r} joins it", field)
    for other in new.vms.values():
        if other.name != vm.name and router.get(other.segment) == router[vm.segment] \
                and ip in other.ips:
            raise Conflict(f"IP {ip} belongs to VM {other.name!r} in segment "
                           f"{other.segment!r}, which router {router[vm.segment]!r} also "
                           "joins", field)


def add_vm(spec: VMSpec) -> Edit:
    def edit(new: NetworkState, s: Session) -> binding.Event:
        vm = registry.to_model(registry.create_vm(s, spec))
        new.vms[vm.name] = vm
        _clear_of_routers(new, [vm.name])
        registry.record_event(s, "vm-added", vm=vm.name, mac=vm.mac, segment=vm.segment)
        new.vms[vm.name] = vm
        new.group_bits = registry.group_bits(s)
        return binding.Rebind()
    return edit


def readdress_vm(name: str, ips: tuple[str, ...] | None, segment: str | None) -> Edit:
    """New addresses and/or segment for a VM the API registered (a VM of the policy
    document changes with the document: :func:`readdressed_document`)."""
    def edit(new: NetworkState, s: Session) -> binding.Event:
        before, vm = registry.readdress_vm(s, name, ips, segment)
        new.vms[name] = vm
        _clear_of_routers(new, [name])
        registry.record_event(s, "vm-readdressed", vm=name, ips=list(vm.ips),
                              segment=vm.segment, was={"ips": list(before.ips),
                                                       "segment": before.segment})
        new.segment_tags = registry.segment_tags(s)
        return binding.Rebind()
    return edit


def readdressed_document(policy: Policy, name: str, ips: tuple[str, ...] | None,
                         segment: str | None) -> tuple[dict[str, Any], str] | None:
    """The stored document with VM ``name``'s ``ips``/``segment`` replaced, and the field
    prefix its errors will carry; None when the document does not define the VM."""
    vms = policy.document.get("vms", [])
    i = next((i for i, v in enumerate(vms) if v.get("name") == name), None)
    if i is None:
        return None
    entry = dict(vms[i]) | ({} if ips is None else {"ips": list(ips)}) | (
        {} if segment is None else {"segment": segment})
    return dict(policy.document) | {"vms": vms[:i] + [entry] + vms[i + 1:]}, f"vms[{i}]."


def remove_vm(name: str) -> Edit:
    def edit(new: NetworkState, s: Session) -> binding.Event:
        registry.delete_vm(s, name)
        registry.record_event(s, "vm-removed", vm=name)
        new.vms.pop(name, None)
        return binding.Forget(name)
    return edit


def connect_switch(dpid: int, name: str) -> Edit:
    def edit(new: NetworkState, s: Session) -> None:
        new.switches[dpid] = Switch(dpid, name, registry.ensure_switch(s, dpid, name).label)
    return edit


def port_status(dpid: int, ports: frozenset[int]) -> Edit:
    """The switch's ports now (level, not edge: a change that failed is redone by the
    next): links on ports it no longer has end, and the binding machine sees the ports."""
    def edit(new: NetworkState, s: Session) -> binding.Event:
        new.links = {lk for lk in new.links if not any(
            p.dpid == dpid and p.port_no not in ports for p in (lk.src, lk.dst))}
        return binding.PortsChanged(dpid)
    return edit


def host_listed(names: dict[int, str], fabric: dict[int, frozenset[int]],
                interfaces: Iterable[hosts.Interface], dpids: frozenset[int],
                audit_refused: Callable[[Session], Any]) -> Edit:
    """One OVSDB's snapshot: switches renamed after their hosts, fabric ports, links that
    still join two fabric ports, and the interfaces for the binding machine."""
    present = frozenset(PortRef(i.dpid, i.ofport) for i in interfaces)
    named: dict[int, dict[str, int]] = {}
    for i in interfaces:
        named.setdefault(i.dpid, {})[i.name] = i.ofport

    def edit(new: NetworkState, s: Session) -> binding.Event:
        audit_refused(s)
        for dpid, name in names.items():
            if dpid in new.switches and new.switches[dpid].name != name:
                new.switches[dpid] = Switch(dpid, name, new.switches[dpid].label)
                registry.ensure_switch(s, dpid, name)
                LOG.info("switch %016x is host %s", dpid, name)
        new.fabric = fabric
        # this OVSDB's bridges: their interfaces now (other hosts' stay as they were)
        new.port_names = {d: p for d, p in new.port_names.items() if d not in dpids} | named
        new.links = {lk for lk in new.links if hosts.on_fabric(lk, fabric)}
        return binding.HostListed(dpids, present)
    return edit


def gateway_seen(dpid: int, port_no: int, ip: str, mac: str) -> Edit:
    """The reply to a switch's own ARP probe (neighbour solicitation) on its uplink, from
    ``ip`` at ``mac``: the MAC of that host's external gateway (gateway6) when ``ip`` is
    it (the caller checked that it answers a recent probe, and that the MAC is unicast
    and the frame's own). Each host keeps its own: a reply seen by one host never
    redirects another's traffic."""
    def edit(new: NetworkState, s: Session) -> None:
        out = external.host_out(new, dpid)
        v6 = out is not None and out.gateway6 is not None and ":" in ip \
            and ipaddress.IPv6Address(ip) == ipaddress.IPv6Address(out.gateway6)
        macs = new.gateway6_macs if v6 else new.gateway_macs
        if out is None or out.port != port_no or not (v6 or out.gateway == ip) \
                or macs.get(dpid) == mac.lower():
            return
        was = macs.get(dpid)
        if v6:
            new.gateway6_macs = {**macs, dpid: mac.lower()}
        else:
            new.gateway_macs = {**macs, dpid: mac.lower()}
        LOG.info("external gateway %s is at %s for %s", ip, mac.lower(), new.switch_name(dpid))
        registry.record_event(s, "gateway-mac", host=new.switch_name(dpid), gateway=ip,
                              mac=mac.lower(), was=was)
    return edit


def link_up(link: Link) -> Edit:
    def edit(new: NetworkState, s: Session) -> None:
        # a port faces one neighbour: forget what it faced before
        new.links = {lk for lk in new.links if lk.src != link.src} | {link}
    return edit


def housekeeping(expired: set[Link], now: float) -> Edit:
    """Links LLDP stopped confirming end; announcements past their deadline end."""
    def edit(new: NetworkState, s: Session) -> binding.Event:
        if expired:
            LOG.warning("links expired: %s", sorted(expired))
        new.links -= expired
        return binding.Expire(now)
    return edit
