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

import ipaddress
from collections.abc import Iterable

from .compiler import ETH_TYPE_ARP, ETH_TYPE_IP, arp_reply
from .external import HostOut
from .flows import (
    DROP,
    OFPP_CONTROLLER,
    OFPVID_NONE,
    Flow,
    apply,
    cookie,
    goto,
    match,
    meter,
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
    PRIO_UPLINK_OTHER,
    PRIO_UPLINK_SPOOF,
    UPLINK_DST,
    ZONE_REG,
    Owner,
    Table,
)


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
    for subnet in out.inside:  # any segment's address as a source from outside
        yield Flow(Table.CLASSIFY, PRIO_UPLINK_SPOOF, match(
            **port, eth_type=ETH_TYPE_IP, ipv4_src=_prefix(subnet)), DROP, ck)
    for r in out.routers:
        # a gateway answers inside only: its answer would leave the uplink with the
        # router's MAC, which every host shares, and the physical switch would see it move
        for gw in r.gateways:
            yield Flow(Table.CLASSIFY, PRIO_UPLINK_SPOOF, match(
                **port, eth_type=ETH_TYPE_IP, ipv4_dst=gw), DROP, ck)
        for subnet in r.subnets:
            inside = _prefix(subnet)
            yield Flow(Table.CLASSIFY, PRIO_UPLINK_IN, match(
                **port, eth_dst=out.mac, eth_type=ETH_TYPE_IP, ipv4_dst=inside),
                (apply(("set", ZONE_REG, r.zone), ("set", "eth_dst", r.mac)),
                 goto(Table.ROUTE)), ck)
        to_router = {"eth_dst": r.mac, "eth_type": ETH_TYPE_IP}
        for ttl in (0, 1):  # expires here: the controller answers from the sender's gateway
            yield Flow(Table.ROUTE, PRIO_ROUTE_OUT_TTL, match(**to_router, nw_ttl=ttl),
                       (meter(METER_TTL), apply(("output", OFPP_CONTROLLER))), ck)
        if out.gateway_mac is not None:  # resolved: the way out
            yield Flow(Table.ROUTE, PRIO_ROUTE_OUT, match(**to_router), (apply(
                ("dec_ttl",), ("set", "eth_src", out.mac), ("set", "eth_dst", out.gateway_mac),
                ("set", DST_VM_REG, UPLINK_DST)), goto(Table.CONNTRACK)), ck)


def _prefix(subnet: str) -> tuple[str, str]:
    n = ipaddress.IPv4Network(subnet)
    return str(n.network_address), str(n.netmask)
