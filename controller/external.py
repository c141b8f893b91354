"""The outside world: external networks (the hosts' uplink network, its physical router,
the BGP session with it), the routers that reach one, and each host's uplink.

Checked here (the policy checker calls :func:`check`); then plain functions over the
state for the compiler (which host's uplink is where) and the BGP announcer (which
routed VM is at which host's address). North-south traffic is routed like east-west
traffic, at the VM's own host: out of that host's uplink to the external gateway, and
in on it (the host's address is answered in the datapath), so nothing hairpins through
a central gateway and BGP gives each VM's /32 with its host as next hop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, NamedTuple

from . import addresses, routing
from .model import Bgp, External, NetworkState, Router, Uplink

Err = Callable[[str, str], None]


def check(doc: dict[str, Any], err: Err, routers: list[Router],
          nets: dict[str, dict[str, Any]]) -> tuple[tuple[External, ...], tuple[Uplink, ...]]:
    """The document's ``external`` and ``hosts``, every problem reported through ``err``
    with its field: prefixes and addresses that parse and sit where they must, names
    that exist and repeat nowhere, one network with BGP at most (one BGP speaker per
    controller), no routed segment overlapping the network its router reaches out
    through, and no two routers reaching one network with overlapping subnets."""
    externals: dict[str, External] = {}
    bgp_seen = False
    for i, e in enumerate(doc.get("external", [])):
        where = f"external[{i}]"
        if e["name"] in externals:
            err(f"{where}.name", f"duplicate name {e['name']!r}")
        net = _network(e["subnet"], f"{where}.subnet", err)
        gw = _inside(e["gateway"], net, f"{where}.gateway", err)
        bgp = None
        if "bgp" in e:
            b = e["bgp"]
            peer = _inside(b["peer"], net, f"{where}.bgp.peer", err)
            if bgp_seen:
                err(f"{where}.bgp", "one BGP session per controller (os-ken's speaker keeps "
                                    "one table for every peer): set bgp on one network")
            bgp_seen = True
            bgp = Bgp(b["local_asn"], peer or "", b["peer_asn"])
        if net is not None and gw is not None:
            externals.setdefault(e["name"], External(e["name"], str(net), gw, bgp))
    reaching: dict[str, list[tuple[str, Any]]] = {}  # external -> (router, subnet)
    for i, r in enumerate(routers):
        if r.external is not None and r.external not in externals:
            err(f"routers[{i}].external", f"unknown external network {r.external!r}")
        elif r.external is not None:
            _no_overlap(r, externals[r.external], nets, f"routers[{i}].external", err)
            # what comes in is routed by destination alone: one router per address
            for seg in r.segments:
                net = nets.get(seg, {}).get("subnet")
                other = next((o for o, n in reaching.get(r.external, [])
                              if net is not None and n.overlaps(net)), None)
                if other is not None and other != r.name:
                    err(f"routers[{i}].external", f"segment {seg!r}'s subnet {net} overlaps "
                        f"router {other!r}'s, which reaches {r.external!r} too")
                if net is not None:
                    reaching.setdefault(r.external, []).append((r.name, net))
    return tuple(externals.values()), _uplinks(doc, externals, err)


def _uplinks(doc: dict[str, Any], externals: dict[str, External], err: Err
             ) -> tuple[Uplink, ...]:
    out: list[Uplink] = []
    taken = {a: f"external {e.name!r}'s gateway" for e in externals.values()
             for a in (e.gateway, e.bgp.peer if e.bgp else None) if a}
    hosts: set[str] = set()
    for i, h in enumerate(doc.get("hosts", [])):
        where = f"hosts[{i}]"
        if h["name"] in hosts:
            err(f"{where}.name", f"duplicate host {h['name']!r}")
        hosts.add(h["name"])
        try:
            addr = ipaddress.IPv4Address(h["address"])
        except ValueError:
            err(f"{where}.address", f"{h['address']!r} is not an IPv4 address")
            continue
        if not any(addr in ipaddress.IPv4Network(e.subnet) for e in externals.values()):
            err(f"{where}.address", f"{addr} is in no external network's subnet")
        elif str(addr) in taken:
            err(f"{where}.address", f"{addr} is {taken[str(addr)]}")
        taken.setdefault(str(addr), f"host {h['name']!r}'s")
        out.append(Uplink(h["name"], h["uplink"], str(addr)))
    return tuple(out)


def _network(text: str, field: str, err: Err) -> ipaddress.IPv4Network | None:
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as e:
        err(field, f"{text!r} is not an IPv4 network ({e})")
        return None


def _inside(text: str, net: ipaddress.IPv4Network | None, field: str, err: Err) -> str | None:
    """An address of ``net``'s hosts (not its network or broadcast address)."""
    try:
        addr = ipaddress.IPv4Address(text)
    except ValueError:
        err(field, f"{text!r} is not an IPv4 address")
        return None
    if net is not None and (addr not in net or addr in (net.network_address,
                                                        net.broadcast_address)):
        err(field, f"{addr} is not a host address of {net}")
        return None
    return str(addr)


def _no_overlap(r: Router, e: External, nets: dict[str, dict[str, Any]], field: str,
                err: Err) -> None:
    outside = ipaddress.IPv4Network(e.subnet)
    for seg in r.segments:
        net = nets.get(seg, {}).get("subnet")
        if net is not None and net.overlaps(outside):
            err(field, f"segment {seg!r}'s subnet {net} overlaps external network "
                       f"{e.name!r} ({outside})")


# --- what the compiler and the announcer read ----------------------------------------------


class RouterOut(NamedTuple):
    number: int
    mac: str
    zone: int
    subnets: tuple[str, ...]  # its segments' IPv4 subnets
    gateways: tuple[str, ...] = ()  # their gateways: answered inside, never from outside


class HostOut(NamedTuple):
    """A host's way out to its external network: all its switch's uplink flows read."""

    port: int  # the uplink's OpenFlow port
    address: str
    mac: str  # the host's MAC there (derived from its name: stable, the same everywhere)
    gateway: str
    gateway_mac: str | None  # None until this host has resolved it (each host its own)
    routers: tuple[RouterOut, ...]  # the routers that reach that network
    inside: tuple[str, ...]  # every segment's IPv4 subnet: never a source from outside
    external: str = ""  # the network's name


def uplink_mac(host: str) -> str:
    return addresses.router_mac(f"uplink:{host}")


def host_out(state: NetworkState, dpid: int) -> HostOut | None:
    """The switch's way out, or None: no uplink in the policy for its host, or the host's
    OVSDB lists no such port, or the port faces the fabric."""
    sw = state.switches.get(dpid)
    up = None if sw is None else next((u for u in state.policy.uplinks if u.host == sw.name),
                                      None)
    port = None if up is None else state.port_names.get(dpid, {}).get(up.port)
    if up is None or port is None or port in state.fabric.get(dpid, frozenset()):
        return None
    addr = ipaddress.IPv4Address(up.address)
    ext = next(e for e in state.policy.externals if addr in ipaddress.IPv4Network(e.subnet))
    reaching = {r.name for r in state.policy.routers if r.external == ext.name}
    routers = {d.routed.router: RouterOut(d.routed.router, d.routed.mac, d.routed.zone, tuple(
        s.subnet for _, s in d.specs if s.subnet), tuple(s.gateway for _, s in d.specs
                                                         if s.gateway))
        for d in routing.domains(state).values() if d.name in reaching}
    inside = tuple(sorted({s.subnet for s in state.policy.segment_specs if s.subnet}))
    return HostOut(port, up.address, uplink_mac(up.host), ext.gateway,
                   state.gateway_macs.get(dpid), tuple(routers[k] for k in sorted(routers)),
                   inside, ext.name)


def announcements(state: NetworkState) -> dict[str, dict[str, str]]:
    """External network -> {VM address/32 -> its host's uplink address}: every address of
    every bound VM of a routed segment whose router reaches that network (the host it
    is bound at, not a standby: BGP follows the move once it is confirmed)."""
    out: dict[str, dict[str, str]] = {e.name: {} for e in state.policy.externals if e.bgp}
    if not out:
        return out
    routers = {r.name: r for r in state.policy.routers}
    outs: dict[int, HostOut | None] = {}  # dpid -> its way out (each looked up once)
    for name, b in state.bindings.items():
        vm = state.vms.get(name)
        router = None if vm is None else routers.get(state.policy.router_of.get(vm.segment, ""))
        if vm is None or router is None or router.external not in out:
            continue
        d = b.port.dpid
        if d not in outs:
            outs[d] = host_out(state, d)
        ho = outs[d]
        if ho is None or ho.gateway_mac is None or ho.external != router.external:
            continue  # the host has no way (yet) to the network the VM's router reaches
        nh = ho.address
        for ip in vm.ips:
            if ":" not in ip:
                out[router.external][f"{ip}/32"] = nh
    return out
