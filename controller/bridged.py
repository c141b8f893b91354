"""Bridged segments: a layer-2 segment extended out of every host's uplink on a VLAN of
its own, so physical switches learn its VMs and physical hosts share its subnet.

Each host carries only its own VMs' side: what its VMs send to no VM leaves its own
uplink tagged (broadcasts too, once, from the sender's host), and what comes in on its
uplink goes to its own receivers (a broadcast is each host's copy from the physical
network, so it is not sent on over the fabric). What enters from the uplink is a source
with no VM and no group: the policy judges it by CIDR, statefully in the segment's zone;
a frame claiming one of the segment's VMs' MACs or addresses is dropped (the VM is
inside). ARP passes the policy in both directions (as inside, where the datapath answers
it), and from outside is never answered by the datapath: every host would answer, and
the physical switch would see the VM's MAC on every uplink; the VM answers itself.
After a move, the new host announces the VM on its uplink at once (apps/bridged.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

from . import external
from .compiler import ETH_TYPE_ARP, ETH_TYPE_IP, MULTICAST, SEG_LOCAL, UNICAST
from .flows import (
    DROP,
    OFPVID_PRESENT,
    Flow,
    apply,
    cookie,
    goto,
    match,
    meta_value,
    write_meta,
)
from .model import VM, Binding, NetworkState
from .pipeline import (
    DST_VM_REG,
    META_SEGMENT_MASK,
    PRIO_ARP_BRIDGED,
    PRIO_BRIDGED_ARP,
    PRIO_BRIDGED_IN,
    PRIO_BRIDGED_IN_FLOOD,
    PRIO_BRIDGED_OUT,
    PRIO_BRIDGED_SPOOF,
    ZONE_REG,
    Owner,
    Table,
)

Member = tuple[str, tuple[str, ...]]  # a VM of the segment: its MAC and IPv4 addresses


def members(vms: Iterable[VM]) -> tuple[Member, ...]:
    """What the uplink's anti-spoofing needs of the segment's VMs, in a stable order."""
    return tuple(sorted((vm.mac, tuple(sorted(
        ip for ip in vm.ips if ipaddress.ip_address(ip).version == 4))) for vm in vms))


def uplink_copy(port: int, vlan: int) -> tuple[tuple, ...]:
    """Actions: one copy of the frame out of ``port``, tagged ``vlan`` (the tag popped
    again, for the actions after it)."""
    return (("push_vlan", 0x8100), ("set", "vlan_vid", OFPVID_PRESENT | vlan),
            ("output", port), ("pop_vlan",))


def bridged_flows(segment_id: int, vlan: int, port: int, vms: tuple[Member, ...]
                  ) -> Iterable[Flow]:
    """The segment's flows on one host whose uplink is ``port``."""
    ck = cookie(Owner.SEGMENT, segment_id)
    tagged = {"in_port": port, "vlan_vid": OFPVID_PRESENT | vlan}
    for mac, ips in vms:  # the VMs are inside: nothing from outside may claim them
        yield Flow(Table.CLASSIFY, PRIO_BRIDGED_SPOOF, match(**tagged, eth_src=mac), DROP, ck)
        for ip in ips:
            yield Flow(Table.CLASSIFY, PRIO_BRIDGED_SPOOF, match(
                **tagged, eth_type=ETH_TYPE_IP, ipv4_src=ip), DROP, ck)
            yield Flow(Table.CLASSIFY, PRIO_BRIDGED_SPOOF, match(
                **tagged, eth_type=ETH_TYPE_ARP, arp_spa=ip), DROP, ck)
    inside = apply(("pop_vlan",), ("set", ZONE_REG, segment_id))
    yield Flow(Table.CLASSIFY, PRIO_BRIDGED_IN_FLOOD, match(**tagged, eth_dst=MULTICAST), (
        inside, write_meta(meta_value(segment_id, 0, from_fabric=True)),
        goto(Table.DST_LOOKUP)), ck)
    yield Flow(Table.CLASSIFY, PRIO_BRIDGED_IN, match(**tagged), (
        inside, write_meta(meta_value(segment_id, 0)), goto(Table.DST_LOOKUP)), ck)
    local = {"metadata": (segment_id, SEG_LOCAL)}
    yield Flow(Table.ARP, PRIO_ARP_BRIDGED, match(**local, eth_type=ETH_TYPE_ARP, arp_op=1),
               (goto(Table.DST_LOOKUP),), ck)
    for judge in (Table.POLICY, Table.FLOOD_POLICY):  # unicast, and each broadcast copy
        yield Flow(judge, PRIO_BRIDGED_ARP, match(
            metadata=(segment_id, META_SEGMENT_MASK), eth_type=ETH_TYPE_ARP),
            (goto(Table.FORWARD),), ck)
    yield Flow(Table.FORWARD, PRIO_BRIDGED_OUT, match(**local, eth_dst=UNICAST,
                                                      **{DST_VM_REG: 0}),
               (apply(*uplink_copy(port, vlan)[:3]),), ck)


def announcements(state: NetworkState, bindings: Iterable[tuple[str, Binding]]
                  ) -> Iterator[tuple[int, int, VM, int]]:
    """(switch, uplink port, VM, VLAN) for each of ``bindings`` (just made: a move, a
    first binding) in a bridged segment whose host has an uplink: the new host says
    where the VM is on its uplink at once, so the physical switches relearn its MAC
    without waiting for the guest to send."""
    vlans = state.policy.bridged
    if not vlans:
        return
    for name, b in bindings:
        vm = state.vms.get(name)
        vlan = vlans.get(vm.segment) if vm is not None else None
        out = external.host_out(state, b.port.dpid) if vlan is not None else None
        if vm is not None and vlan is not None and out is not None:
            yield b.port.dpid, out.port, vm, vlan
