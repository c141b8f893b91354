"""A host's uplink flows: north-south routing at the VM's own host.

Out: what a VM sends to its router's MAC for an address outside every subnet the router
joins leaves through this host's uplink, TTL minus one, from the host's uplink MAC to
the external gateway's, after the policy judged it (reg4 = UPLINK_DST: the rules'
CIDRs decide, conntrack in the router's zone remembers it). In: on the uplink, to the
host's MAC, for an address of such a router's subnets: the router's zone and MAC, then
ROUTE finds the VM as for any routed packet (the policy judges it with the VM's groups;
its replies leave through this host again). The host's address is answered in the
datapath; nothing else from the uplink is taken (never bound as a VM, never flooded),
and any segment's address as source from outside is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from .compiler import (
    ETH_TYPE_ARP,
    ETH_TYPE_IP,
    ETH_TYPE_IPV6,
    ND_FLAGS_RSO,
    ND_NA,
    ND_NS,
    ZERO_MAC,
    arp_reply,
    nd,
)
from .external import HostOut, RouterOut
from .flows import (
    DROP,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPVID_NONE,
    Flow,
    apply,
    cookie,
    goto,
    masked,
    match,
    meter,
    resubmit,
)
from .pipeline import (
    DST_VM_REG,
    METER_TTL,
    METER_UPLINK,
    PRIO_DELIVER_UPLINK,
    PRIO_ROUTE_OUT,
    PRIO_ROUTE_OUT_TTL,
    PRIO_UPLINK_ARP,
    PRIO_UPLINK_IN,
    PRIO_UPLINK_NO_SLL,
    PRIO_UPLINK_OTHER,
    PRIO_UPLINK_SPOOF,
    UPLINK_DST,
    ZONE_REG,
    Owner,
    Table,
)

# sources no packet from outside may have: this network, loopback, link-local,
# multicast, reserved (and broadcast); IPv6: unspecified, loopback, link-local, multicast,
# IPv4-mapped
MARTIANS = ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4")
MARTIANS6 = ("::/128", "::1/128", "fe80::/10", "ff00::/8", "::ffff:0:0/96")


def uplink_flows(out: HostOut) -> Iterable[Flow]:
    ck = cookie(Owner.UPLINK, out.port)
    yield Flow(Table.CLASSIFY, PRIO_UPLINK_OTHER, match(in_port=out.port), DROP, ck)
    port = {"in_port": out.port, "vlan_vid": OFPVID_NONE}  # tagged: bridged segments
    yield Flow(Table.CLASSIFY, PRIO_UPLINK_ARP, match(
        **port, eth_type=ETH_TYPE_ARP, arp_op=1, arp_tpa=out.address), (arp_reply(
            out.address, out.mac),), ck)
    yield Flow(Table.CLASSIFY, PRIO_UPLINK_ARP, match(
        **port, eth_dst=out.mac, eth_type=ETH_TYPE_ARP, arp_op=2, arp_spa=out.gateway),
        (meter(METER_UPLINK), apply(("output", OFPP_CONTROLLER))), ck)
    yield Flow(Table.FORWARD, PRIO_DELIVER_UPLINK, match(**{DST_VM_REG: UPLINK_DST}),
               (apply(("output", out.port)),), ck)
    for subnet in (*out.inside, *MARTIANS):  # an inside (or impossible) source from outside
        yield Flow(Table.CLASSIFY, PRIO_UPLINK_SPOOF, match(
            **port, eth_type=ETH_TYPE_IP, ipv4_src=masked(subnet)), DROP, ck)
    for r in out.routers:
        # a gateway answers inside only: its answer would leave the uplink with the
        # router's MAC, which every host shares, and the physical switch would see it move
        for gw in r.gateways:
            yield Flow(Table.CLASSIFY, PRIO_UPLINK_SPOOF, match(
                **port, eth_type=ETH_TYPE_IP, ipv4_dst=gw), DROP, ck)
        for subnet in r.subnets:
            inside = masked(subnet)
            yield Flow(Table.CLASSIFY, PRIO_UPLINK_IN, match(
                **port, eth_dst=out.mac, eth_type=ETH_TYPE_IP, ipv4_dst=inside),
                (apply(("set", ZONE_REG, r.zone), ("set", "eth_dst", r.mac)),
                 goto(Table.ROUTE)), ck)
        to_router = {"eth_dst": r.mac, "eth_type": ETH_TYPE_IP}
        for ttl in (0, 1):  # expires here: the controller answers from the sender's gateway
            yield Flow(Table.ROUTE, PRIO_ROUTE_OUT_TTL, match(**to_router, nw_ttl=ttl),
                       (meter(METER_TTL), apply(("output", OFPP_CONTROLLER))), ck)
        if out.gateway_mac is not None:  # resolved: the way out
            yield _route_out(r, ETH_TYPE_IP, out.mac, out.gateway_mac, ck)
    if out.address6 is not None:
        yield from _uplink6(out, port, ck)


def _route_out(r: RouterOut, eth_type: int, mac: str, gateway_mac: str, ck: int) -> Flow:
    return Flow(Table.ROUTE, PRIO_ROUTE_OUT, match(eth_dst=r.mac, eth_type=eth_type), (apply(
        ("dec_ttl",), ("set", "eth_src", mac), ("set", "eth_dst", gateway_mac),
        ("set", DST_VM_REG, UPLINK_DST)), goto(Table.CONNTRACK)), ck)


def _uplink6(out: HostOut, port: dict, ck: int) -> Iterable[Flow]:
    """IPv6 on the uplink, as IPv4 above: the host's address6 answered (a solicitation
    turned into the advertisement in place, in two steps as for a gateway6 inside: the
    second marked reg4 = UPLINK_DST, so no advertisement from outside takes it), the
    gateway6's advertisement to the controller, spoofed sources dropped, the routers'
    subnets6 taken in, and out through gateway6 once resolved. (Link-local and multicast
    scopes never cross a router: compiler's router flows. A hop limit expiring on the way
    out is dropped by the base pipeline, not answered.)"""
    target = {"ipv6_nd_target": out.address6}
    yield Flow(Table.CLASSIFY, PRIO_UPLINK_NO_SLL, nd(ND_NS, **port, **target,
                                                       ipv6_nd_sll=ZERO_MAC), DROP, ck)
    yield Flow(Table.CLASSIFY, PRIO_UPLINK_ARP, nd(ND_NS, **port, **target), (apply(
        ("move", "eth_src", "eth_dst", 48), ("set", "eth_src", out.mac),
        ("move", "ipv6_src", "ipv6_dst", 128), ("set", "ipv6_src", out.address6),
        ("set", "icmpv6_type", ND_NA), ("set", "nd_reserved", ND_FLAGS_RSO),
        ("set", "nd_options_type", 2), ("set", DST_VM_REG, UPLINK_DST),
        resubmit(Table.CLASSIFY)),), ck)
    yield Flow(Table.CLASSIFY, PRIO_UPLINK_ARP, nd(ND_NA, **port, **target, **{
        DST_VM_REG: UPLINK_DST}), (apply(("set", "ipv6_nd_tll", out.mac),
                                         ("output", OFPP_IN_PORT)),), ck)
    if out.gateway6 is not None:
        yield Flow(Table.CLASSIFY, PRIO_UPLINK_ARP, nd(
            ND_NA, **port, eth_dst=out.mac, ipv6_nd_target=out.gateway6),
            (meter(METER_UPLINK), apply(("output", OFPP_CONTROLLER))), ck)
    v6 = {**port, "eth_type": ETH_TYPE_IPV6}
    for subnet in (*out.inside6, *MARTIANS6):
        yield Flow(Table.CLASSIFY, PRIO_UPLINK_SPOOF, match(**v6, ipv6_src=masked(subnet)),
                   DROP, ck)
    for r in out.routers:
        for gw in r.gateways6:
            yield Flow(Table.CLASSIFY, PRIO_UPLINK_SPOOF, match(**v6, ipv6_dst=gw), DROP, ck)
        for subnet in r.subnets6:
            yield Flow(Table.CLASSIFY, PRIO_UPLINK_IN, match(
                **v6, eth_dst=out.mac, ipv6_dst=masked(subnet)),
                (apply(("set", ZONE_REG, r.zone), ("set", "eth_dst", r.mac)),
                 goto(Table.ROUTE)), ck)
        if out.gateway6_mac is not None:
            yield _route_out(r, ETH_TYPE_IPV6, out.mac, out.gateway6_mac, ck)

