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
from .model import Bgp, External, NetworkState, Router, SegmentSpec, Uplink

Err = Callable[[str, str], None]
NOT_GLOBAL6 = ((ipaddress.IPv6Network("fe80::/10"), "link-local"),
               (ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped"),
               (ipaddress.IPv6Network("::/96"), "IPv4-compatible and unspecified"))


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
        net6, gw6 = _v6(e, where, err)
        if net is not None and gw is not None:
            externals.setdefault(e["name"], External(e["name"], str(net), gw, bgp, net6, gw6))
    reaching: dict[str, list[tuple[str, Any]]] = {}  # external -> (router, prefix)
    for i, r in enumerate(routers):
        if r.external is not None and r.external not in externals:
            err(f"routers[{i}].external", f"unknown external network {r.external!r}")
        elif r.external is not None:
            _no_overlap(r, externals[r.external], nets, f"routers[{i}].external", err)
            _one_router_per_address(r, nets, reaching.setdefault(r.external, []),
                                    f"routers[{i}].external", err)
    return tuple(externals.values()), _uplinks(doc, externals, err)


def _one_router_per_address(r: Router, nets: dict[str, dict[str, Any]],
                            reaching: list[tuple[str, Any]], field: str, err: Err) -> None:
    """What comes in is routed by destination alone: no prefix of ``r`` may overlap one
    of another router that reaches the same network (``reaching``, extended here)."""
    for seg in r.segments:
        for key in ("subnet", "subnet6"):
            net = nets.get(seg, {}).get(key)
            if net is None:
                continue
            other = next((o for o, n in reaching
                          if n.version == net.version and n.overlaps(net)), None)
            if other is not None and other != r.name:
                err(field, f"segment {seg!r}'s {key} {net} overlaps router {other!r}'s, "
                           f"which reaches {r.external!r} too")
            reaching.append((r.name, net))


def _v6(e: dict[str, Any], where: str, err: Err) -> tuple[str | None, str | None]:
    """The network's IPv6 prefix and gateway6: both or neither."""
    if ("subnet6" in e) != ("gateway6" in e):
        missing = "gateway6" if "subnet6" in e else "subnet6"
        err(f"{where}.{missing}", "subnet6 and gateway6 go together (IPv6 leaves through "
                                  "the gateway6, which is in the subnet6)")
        return None, None
    if "subnet6" not in e:
        return None, None
    try:
        net = addresses.prefix(e["subnet6"], 6)
        for scope, what in NOT_GLOBAL6:
            if net.overlaps(scope):
                raise ValueError(f"{net} overlaps {what} ({scope}): BGP's next hop must be "
                                 "a global address")
    except ValueError as x:
        err(f"{where}.subnet6", str(x))
        return None, None
    try:
        return str(net), addresses.gateway(e["gateway6"], net, "subnet6", "the network's")
    except ValueError as x:
        err(f"{where}.gateway6", str(x))
        return None, None


def _uplinks(doc: dict[str, Any], externals: dict[str, External], err: Err
             ) -> tuple[Uplink, ...]:
    out: list[Uplink] = []
    taken = {a: f"external {e.name!r}'s gateway" for e in externals.values()
             for a in (e.gateway, e.gateway6, e.bgp.peer if e.bgp else None) if a}
    hosts: set[str] = set()
    declared6 = {e["name"] for e in doc.get("external", []) if "subnet6" in e}
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
        ext = next((e for e in externals.values() if addr in ipaddress.IPv4Network(e.subnet)),
                   None)
        if ext is None:
            err(f"{where}.address", f"{addr} is in no external network's subnet")
        elif str(addr) in taken:
            err(f"{where}.address", f"{addr} is {taken[str(addr)]}")
        taken.setdefault(str(addr), f"host {h['name']!r}'s")
        out.append(Uplink(h["name"], h["uplink"], str(addr),
                          _address6(h, ext, taken, declared6, where, err)))
    return tuple(out)


def _address6(h: dict[str, Any], ext: External | None, taken: dict[str, str],
              declared6: set[str], where: str, err: Err) -> str | None:
    """The host's IPv6 address on its external network: in that network's subnet6."""
    if "address6" not in h or ext is None:
        return None  # (without a network, its address is the error)
    if ext.subnet6 is None:
        if ext.name not in declared6:  # (else the subnet6's own error says it)
            err(f"{where}.address6", f"external network {ext.name!r} has no subnet6")
        return None
    try:
        addr = addresses.gateway(h["address6"], ipaddress.IPv6Network(ext.subnet6),
                                 "subnet6", "the network's")
    except ValueError as x:
        err(f"{where}.address6", str(x))
        return None
    if addr in taken:
        err(f"{where}.address6", f"{addr} is {taken[addr]}")
    taken.setdefault(addr, f"host {h['name']!r}'s")
    return addr


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
    for key, prefix in (("subnet", e.subnet), ("subnet6", e.subnet6)):
        outside = None if prefix is None else ipaddress.ip_network(prefix)
        for seg in r.segments:
            net = nets.get(seg, {}).get(key)
            if net is not None and outside is not None and net.overlaps(outside):
                err(field, f"segment {seg!r}'s {key} {net} overlaps external network "
                           f"{e.name!r} ({outside})")


# --- what the compiler and the announcer read ----------------------------------------------


class RouterOut(NamedTuple):
    number: int
    mac: str
    zone: int
    subnets: tuple[str, ...]  # its segments' IPv4 subnets
    gateways: tuple[str, ...] = ()  # their gateways: answered inside, never from outside
    subnets6: tuple[str, ...] = ()  # (IPv6: where the host has an address6)
    gateways6: tuple[str, ...] = ()


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
    # IPv6, where the host has an address6 (None: no IPv6 in or out of this uplink)
    address6: str | None = None
    gateway6: str | None = None
    gateway6_mac: str | None = None
    inside6: tuple[str, ...] = ()


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
    v6 = up.address6 is not None
    routers = {d.routed.router: _router_out(d, v6)
               for d in routing.domains(state).values() if d.name in reaching}
    specs = state.policy.segment_specs
    return HostOut(
        port, up.address, uplink_mac(up.host), ext.gateway, state.gateway_macs.get(dpid),
        tuple(routers[k] for k in sorted(routers)),
        tuple(sorted({s.subnet for s in specs if s.subnet})), ext.name,
        up.address6, ext.gateway6 if v6 else None,
        state.gateway6_macs.get(dpid) if v6 else None,
        tuple(sorted({s.subnet6 for s in specs if s.subnet6})) if v6 else ())


def _router_out(d: routing.Domain, v6: bool) -> RouterOut:
    """A router's prefixes and gateways as a host's uplink flows read them (the IPv6 ones
    only where the host has an address6)."""
    def each(attr: str) -> tuple[str, ...]:
        return tuple(v for _, spec in d.specs if (v := getattr(spec, attr)))
    return RouterOut(d.routed.router, d.routed.mac, d.routed.zone, each("subnet"),
                     each("gateway"), each("subnet6") if v6 else (),
                     each("gateway6") if v6 else ())


def announcements(state: NetworkState) -> dict[str, dict[str, str]]:
    """External network -> {VM address/32 (/128) -> its host's uplink address (address6)}:
    every address of every bound VM of a routed segment whose router reaches that
    network (the host it is bound at, not a standby: BGP follows the move once it is
    confirmed), where that host's way out of its version is resolved."""
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
        if ho is None or ho.external != router.external:
            continue  # the host has no way to the network the VM's router reaches
        for ip in vm.ips:
            if ":" not in ip and ho.gateway_mac is not None:
                out[router.external][f"{ip}/32"] = ho.address
            elif ":" in ip and ho.gateway6_mac is not None and ho.address6 is not None \
                    and _routed6(ip, state.policy.specs.get(vm.segment)):
                out[router.external][f"{ip}/128"] = ho.address6
    return out


def _routed6(ip: str, spec: SegmentSpec | None) -> bool:
    """Whether the address is in its segment's subnet6 (what comes in is routed there)."""
    return spec is not None and spec.subnet6 is not None \
        and ipaddress.IPv6Address(ip) in ipaddress.IPv6Network(spec.subnet6)
