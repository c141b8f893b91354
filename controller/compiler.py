"""The compiler: a pure function from network state to the desired flows of each switch.

No I/O, no clock, deterministic. Flows per switch grow with
(fabric ports + switches + local VMs + remote VMs of the segments present locally),
never with VM pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from . import topology
from .flows import (
    DROP,
    META_FROM_FABRIC,
    META_SEGMENT_MASK,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPVID_NONE,
    OFPVID_PRESENT,
    Flow,
    Owner,
    Table,
    apply,
    cookie,
    goto,
    match,
    meta_value,
    meter,
    write_meta,
)
from .model import VM, Binding, NetworkState

METER_PUNT = 1  # frames from unbound ports (binding detection)
METER_LLDP = 2  # link discovery
ETH_TYPE_ARP = 0x0806
ETH_TYPE_LLDP = 0x88CC
ETH_TYPE_VLAN = 0x8100
MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")
LINK_LOCAL = ("01:80:c2:00:00:00", "ff:ff:ff:ff:ff:f0")
SEG_LOCAL = META_SEGMENT_MASK | META_FROM_FABRIC

Flows = dict[int, frozenset[Flow]]


def compile_network(state: NetworkState) -> Flows:
    """Desired flows for every switch in ``state.switches``."""
    hops = topology.next_hops(state.links, set(state.switches))
    fabric = topology.fabric_ports(state.links)
    placed = _placed_vms(state)
    return {
        dpid: frozenset(
            _compile_switch(dpid, state, hops.get(dpid, {}), fabric.get(dpid, set()), placed)
        )
        for dpid in state.switches
    }


def _placed_vms(state: NetworkState) -> list[tuple[VM, Binding]]:
    """Bound VMs whose switch is known, in a stable order."""
    out = []
    for name in sorted(state.bindings):
        b = state.bindings[name]
        vm = state.vms.get(name)
        if vm is not None and b.port.dpid in state.switches:
            out.append((vm, b))
    return out


def _compile_switch(
    dpid: int,
    state: NetworkState,
    hops: dict[int, int],
    fabric_ports: set[int],
    placed: list[tuple[VM, Binding]],
) -> Iterable[Flow]:
    yield from base_flows()
    yield from fabric_flows(dpid, state, hops, fabric_ports)
    local = [(vm, b) for vm, b in placed if b.port.dpid == dpid]
    segments = {vm.segment_id for vm, _ in local}
    remote = [(vm, b) for vm, b in placed if b.port.dpid != dpid and vm.segment_id in segments]
    for vm, b in local:
        yield from local_vm_flows(vm, b.port.port_no)
    for vm, b in remote:
        label = state.switches[b.port.dpid].label
        yield from remote_vm_flows(vm, label, hops.get(b.port.dpid))
    for vm, _ in local + remote:
        yield from arp_responder_flows(vm)
    for seg in sorted(segments):
        ports = sorted(b.port.port_no for vm, b in local if vm.segment_id == seg)
        far = sorted(
            {b.port.dpid for vm, b in remote if vm.segment_id == seg and b.port.dpid in hops}
        )
        targets = [(state.switches[d].label, hops[d]) for d in far]
        yield from segment_flood_flows(seg, ports, targets)


def base_flows() -> Iterable[Flow]:
    """Pipeline skeleton: fail closed everywhere, punt LLDP and unbound ports (metered)."""
    base = cookie(Owner.BASE)
    to_ctl = apply(("output", OFPP_CONTROLLER))
    yield Flow(Table.CLASSIFY, 0, (), (meter(METER_PUNT), to_ctl), base)
    lldp = match(eth_type=ETH_TYPE_LLDP)
    yield Flow(Table.CLASSIFY, 180, lldp, (meter(METER_LLDP), to_ctl), base)
    yield Flow(Table.FABRIC, 0, (), DROP, base)
    yield Flow(Table.REMOTE_CLASSIFY, 0, (), DROP, base)
    yield Flow(Table.ARP, 0, (), (goto(Table.FORWARD),), base)
    yield Flow(Table.ARP, 50, match(eth_type=ETH_TYPE_ARP, arp_op=1), DROP, base)
    yield Flow(Table.FORWARD, 0, (), DROP, base)
    yield Flow(Table.FORWARD, 300, match(eth_dst=LINK_LOCAL), DROP, base)


def fabric_flows(
    dpid: int, state: NetworkState, hops: dict[int, int], fabric_ports: set[int]
) -> Iterable[Flow]:
    """Fabric ports go to FABRIC; host labels are decapsulated here or sent one hop on."""
    for port in sorted(fabric_ports):
        yield Flow(
            Table.CLASSIFY, 170, match(in_port=port), (goto(Table.FABRIC),),
            cookie(Owner.FABRIC, port),
        )
    me = state.switches[dpid]
    yield Flow(
        Table.FABRIC, 100, match(vlan_vid=OFPVID_PRESENT | me.label),
        (apply(("pop_vlan",)), goto(Table.REMOTE_CLASSIFY)), cookie(Owner.FABRIC, me.label),
    )
    for dest, port in sorted(hops.items()):
        label = state.switches[dest].label
        yield Flow(
            Table.FABRIC, 100, match(vlan_vid=OFPVID_PRESENT | label),
            (apply(("output", port)),), cookie(Owner.FABRIC, label),
        )


def local_vm_flows(vm: VM, port: int) -> Iterable[Flow]:
    """A VM on this switch: only its own MAC, untagged, may leave its port; deliver to it."""
    ck = cookie(Owner.VM, vm.id)
    yield Flow(
        Table.CLASSIFY, 200, match(in_port=port, eth_src=vm.mac, vlan_vid=OFPVID_NONE),
        (write_meta(meta_value(vm.segment_id, vm.id)), goto(Table.ARP)), ck,
    )
    yield Flow(Table.CLASSIFY, 190, match(in_port=port), DROP, ck)
    for ip in vm.ips:
        if ":" in ip:
            continue
        # a VM asking for its own address (gratuitous ARP, probes) gets no answer
        yield Flow(
            Table.ARP, 110, match(eth_type=ETH_TYPE_ARP, arp_op=1, in_port=port, arp_tpa=ip),
            DROP, ck,
        )
    yield Flow(
        Table.FORWARD, 100,
        match(metadata=(vm.segment_id, META_SEGMENT_MASK), eth_dst=vm.mac),
        (apply(("output", port)),), ck,
    )


def remote_vm_flows(vm: VM, label: int, hop: int | None) -> Iterable[Flow]:
    """A VM on another switch of a segment present here: recognise it, send toward it."""
    ck = cookie(Owner.VM, vm.id)
    yield Flow(
        Table.REMOTE_CLASSIFY, 100, match(eth_src=vm.mac),
        (write_meta(meta_value(vm.segment_id, vm.id, from_fabric=True)), goto(Table.FORWARD)),
        ck,
    )
    if hop is None:
        return  # no path yet: unknown destination drops, it never floods
    yield Flow(
        Table.FORWARD, 100, match(metadata=(vm.segment_id, SEG_LOCAL), eth_dst=vm.mac),
        (apply(*_label_and_send(label, hop, push=True)),), ck,
    )


def arp_responder_flows(vm: VM) -> Iterable[Flow]:
    """Answer 'who has IP' for the VM in the datapath: works with the controller down."""
    ck = cookie(Owner.VM, vm.id)
    for ip in vm.ips:
        if ":" in ip:
            continue
        yield Flow(
            Table.ARP, 100,
            match(
                eth_type=ETH_TYPE_ARP, arp_op=1,
                metadata=(vm.segment_id, META_SEGMENT_MASK), arp_tpa=ip,
            ),
            (apply(
                ("move", "eth_src", "eth_dst", 48),
                ("set", "eth_src", vm.mac),
                ("set", "arp_op", 2),
                ("move", "arp_sha", "arp_tha", 48),
                ("move", "arp_spa", "arp_tpa", 32),
                ("set", "arp_sha", vm.mac),
                ("set", "arp_spa", ip),
                ("output", OFPP_IN_PORT),
            ),),
            ck,
        )


def segment_flood_flows(
    segment_id: int, ports: list[int], remote: list[tuple[int, int]]
) -> Iterable[Flow]:
    """Broadcast/multicast stays in the segment: its local ports, plus one labelled copy
    per other host that has a VM of the segment. Frames from the fabric stay local."""
    ck = cookie(Owner.SEGMENT, segment_id)
    local = [("output", p) for p in ports]
    far: list[tuple] = []
    for i, (label, hop) in enumerate(remote):
        far.extend(_label_and_send(label, hop, push=(i == 0)))
    yield Flow(
        Table.FORWARD, 50, match(metadata=(segment_id, SEG_LOCAL), eth_dst=MULTICAST),
        (apply(*local, *far),) if local or far else DROP, ck,
    )
    yield Flow(
        Table.FORWARD, 50,
        match(metadata=(segment_id | META_FROM_FABRIC, SEG_LOCAL), eth_dst=MULTICAST),
        (apply(*local),) if local else DROP, ck,
    )


def _label_and_send(label: int, hop: int, push: bool) -> list[tuple]:
    acts: list[tuple] = [("push_vlan", ETH_TYPE_VLAN)] if push else []
    acts += [("set", "vlan_vid", OFPVID_PRESENT | label), ("output", hop)]
    return acts


def count_by_table(flows: Iterable[Flow]) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for f in flows:
        out[f.table] += 1
    return dict(sorted(out.items()))
