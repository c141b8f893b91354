"""The compiler: a pure function from network state to the desired flows of each switch.

No I/O, no clock, deterministic. Flows per switch grow with
(fabric ports + switches + local VMs + remote VMs of the segments present locally + rules),
never with VM pairs or group pairs: rules match the group numbers a VM carries in register
slots (with several slots in use, an OVS conjunctive match: one flow per slot).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ParamSpec, cast

from .flows import (
    DROP,
    OFPP_CONTROLLER,
    OFPP_IN_PORT,
    OFPVID_NONE,
    OFPVID_PRESENT,
    Flow,
    Instruction,
    apply,
    conjunction,
    conjunctions,
    cookie,
    goto,
    learn,
    masked,
    match,
    meta_value,
    meter,
    resubmit,
    write_meta,
)
from .model import (
    VM,
    Endpoint,
    NetworkState,
    Policy,
    Rule,
    SegmentSpec,
    eui64_link_local,
    ipv6_addresses,
)
from .pipeline import (
    CONJ_INTRA,
    CONJ_ISOLATION,
    CT_COMMIT,
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_NO_RECIRC,
    CT_TRK,
    CT_ZONE,
    DST_GROUP_REGS,
    DST_VM_REG,
    GROUP_SLOTS,
    HOP_REG,
    MARK_REG,
    META_FROM_FABRIC,
    META_SEGMENT_MASK,
    META_VM_SHIFT,
    METER_DHCP,
    METER_LLDP,
    METER_LOG,
    METER_PUNT,
    METER_STANDBY,
    METER_TTL,
    PRIO_ARP_ANSWER,
    PRIO_ARP_GATEWAY,
    PRIO_ARP_GATEWAY_NO_SLL,
    PRIO_ARP_OWN_ADDRESS,
    PRIO_ARP_UNKNOWN,
    PRIO_CT_SKIP_ND,
    PRIO_CT_TRACK,
    PRIO_DEFAULT,
    PRIO_DELIVER,
    PRIO_DHCP_CLIENT,
    PRIO_DST_ADDRESS,
    PRIO_DST_FRAME,
    PRIO_DST_ROUTED,
    PRIO_DST_ROUTED_GATE,
    PRIO_DST_WRONG_ADDRESS,
    PRIO_ESTABLISHED,
    PRIO_FABRIC_LLDP,
    PRIO_FABRIC_NEW,
    PRIO_FABRIC_PASS,
    PRIO_FABRIC_PORT,
    PRIO_FLOOD,
    PRIO_INTRA_GROUP,
    PRIO_INVALID,
    PRIO_ISOLATION,
    PRIO_LABEL,
    PRIO_LEARNED,
    PRIO_LINK_LOCAL,
    PRIO_MISS,
    PRIO_MULTICAST,
    PRIO_ND_OWN,
    PRIO_ND_UNICAST,
    PRIO_QUIET_DROP,
    PRIO_REMOTE_OUTSIDE,
    PRIO_REMOTE_ROUTED,
    PRIO_REMOTE_STANDBY,
    PRIO_REMOTE_VM,
    PRIO_ROGUE_DHCP,
    PRIO_ROGUE_ND,
    PRIO_ROUTE,
    PRIO_ROUTE_ECHO,
    PRIO_ROUTE_SCOPE,
    PRIO_ROUTE_TTL,
    PRIO_ROUTE_TTL6,
    PRIO_ROUTE_UNUSED,
    PRIO_SPOOFED_L2,
    PRIO_SPOOFED_L3,
    PRIO_SPOOFED_ND,
    PRIO_VM_ADDRESS,
    PRIO_VM_FRAME,
    SRC_GROUP_REGS,
    STANDBY_MARK,
    ZONE_REG,
    Owner,
    Table,
)
from .pipeline import SPOOF_DROP_KINDS as SPOOF_DROP_KINDS  # the audit reads it here
from .policy import port_masks
from .routing import Routed, domains

ETH_TYPE_IP = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
ETH_TYPE_LLDP = 0x88CC
ETH_TYPE_VLAN = 0x8100
MULTICAST = ("01:00:00:00:00:00", "01:00:00:00:00:00")
UNICAST = ("00:00:00:00:00:00", "01:00:00:00:00:00")
LINK_LOCAL = ("01:80:c2:00:00:00", "ff:ff:ff:ff:ff:f0")
SEG_LOCAL = META_SEGMENT_MASK | META_FROM_FABRIC
ZERO_MAC = "00:00:00:00:00:00"
ICMPV6 = 58
ND_RS, ND_RA, ND_NS, ND_NA, ND_REDIRECT = 133, 134, 135, 136, 137
# what a router does not route: IPv6 from link-local or unspecified sources, to
# link-local, multicast, loopback or unspecified destinations (RFC 4291); IPv4 to this
# network, loopback, link-local, multicast, reserved or broadcast (RFC 1812)
SCOPES = ((ETH_TYPE_IPV6, "ipv6_src", "fe80::/10"), (ETH_TYPE_IPV6, "ipv6_src", "::/128"),
          (ETH_TYPE_IPV6, "ipv6_dst", "fe80::/10"), (ETH_TYPE_IPV6, "ipv6_dst", "ff00::/8"),
          (ETH_TYPE_IPV6, "ipv6_dst", "::/127"), (ETH_TYPE_IP, "ipv4_dst", "0.0.0.0/8"),
          (ETH_TYPE_IP, "ipv4_dst", "127.0.0.0/8"), (ETH_TYPE_IP, "ipv4_dst", "169.254.0.0/16"),
          (ETH_TYPE_IP, "ipv4_dst", "224.0.0.0/3"))

_P = ParamSpec("_P")


class _Memo:
    """The results one builder gave in this compile and the one before: a recompile
    after a change finds nearly everything, and what no compile asked for twice in a row
    (a VM's old port, a segment's old receivers) is forgotten, so memory stays flat over
    any number of moves."""

    def __init__(self, fn: Callable[..., Iterable[Flow]]) -> None:
        self.fn = fn
        self.now: dict[tuple, tuple[Flow, ...]] = {}
        self.before: dict[tuple, tuple[Flow, ...]] = {}

    def __call__(self, *args: object) -> tuple[Flow, ...]:
        out = self.now.get(args)
        if out is None:
            out = self.before.get(args)
            if out is None:
                if _SCRATCH is not None:
                    key = (self, args)
                    out = _SCRATCH.get(key)
                    if out is None:
                        out = _SCRATCH[key] = tuple(self.fn(*args))
                    return out
                out = tuple(self.fn(*args))
            self.now[args] = out
        return out

    def rotate(self) -> None:
        self.before, self.now = self.now, {}


_MEMOS: list[_Memo] = []
_SCRATCH: dict[tuple, tuple[Flow, ...]] | None = None


def clear_caches() -> None:
    """Forget memoised flows (benchmarks measure cold compiles with this)."""
    for c in _MEMOS:
        c.now, c.before = {}, {}


def _memo(fn: Callable[_P, Iterable[Flow]]) -> Callable[_P, tuple[Flow, ...]]:
    """Cache a per-VM flow builder (as a tuple). The same VM compiles to the same flows
    on every host, and mostly to the same flows as in the previous compile, so this makes
    both a full compile and the recompiles after a change cheap. Pure, so safe."""
    cached = _Memo(fn)
    _MEMOS.append(cached)
    return cast(Callable[_P, tuple[Flow, ...]], functools.wraps(fn)(cached))


def rotate_caches() -> None:
    """A full build starts: what the one before it did not ask for again is forgotten."""
    for c in _MEMOS:
        c.rotate()


@contextmanager
def scratch() -> Iterator[None]:
    """Builders called inside keep what they compute only until the block ends (an
    incremental rebuild: the memo stays the last full build's, so memory stays flat)."""
    global _SCRATCH
    _SCRATCH = {}
    try:
        yield
    finally:
        _SCRATCH = None


def slots_of(state: NetworkState, vm: VM) -> tuple[int, ...]:
    """The VM's groups as its slots hold them: group number + 1, smallest first."""
    return tuple(sorted(state.group_bits[g] + 1 for g in vm.groups if g in state.group_bits))


def slots_in_use(state: NetworkState) -> int:
    """The most groups any VM is in (at least one): the slots a rule looks at."""
    return max(1, max((len(slots_of(state, vm)) for vm in state.vms.values()), default=1))


def populated_groups(state: NetworkState) -> frozenset[str]:
    """The groups that have a VM."""
    return frozenset(g for vm in state.vms.values() for g in vm.groups)


def packed(slots: tuple[int, ...], regs: int = 0) -> tuple[int, ...]:
    """Slots as register values (two to a register), at least ``regs`` of them."""
    if len(slots) > GROUP_SLOTS:  # validation refuses this first: never drop a group
        raise ValueError(f"a VM in {len(slots)} groups, at most {GROUP_SLOTS}")
    pairs = itertools.zip_longest(slots[::2], slots[1::2], fillvalue=0)
    values = [lo | hi << 16 for lo, hi in pairs]
    return tuple(values + [0] * (regs - len(values)))


def regs_in_use(slots: int) -> int:
    return (slots + 1) // 2


def _in_group(number: int, regs: tuple[str, ...], slots: int) -> list[dict]:
    """Matches for "one of the VM's slots holds group ``number``" (any one will do)."""
    out = []
    for i in range(slots):
        shift = 16 * (i % 2)
        out.append({regs[i // 2]: ((number + 1) << shift, 0xFFFF << shift)})
    return out


# --- skeleton and fabric --------------------------------------------------------------------


@_memo
def base_flows() -> Iterable[Flow]:
    """Pipeline skeleton: fail closed everywhere, punt LLDP and unbound ports (metered)."""
    base = cookie(Owner.BASE)
    to_ctl = apply(("output", OFPP_CONTROLLER))
    yield Flow(Table.CLASSIFY, PRIO_MISS, (), (meter(METER_PUNT), to_ctl), base)
    yield Flow(Table.FABRIC, PRIO_MISS, (), DROP, base)
    yield Flow(Table.REMOTE_CLASSIFY, PRIO_MISS, (), DROP, base)
    yield Flow(Table.ARP, PRIO_MISS, (), (goto(Table.DST_LOOKUP),), base)
    yield Flow(Table.ARP, PRIO_ARP_UNKNOWN, match(eth_type=ETH_TYPE_ARP, arp_op=1), DROP, base)
    # a solicitation for nobody we know
    yield Flow(Table.ARP, PRIO_ARP_UNKNOWN, nd(ND_NS), DROP, base)
    yield Flow(Table.DST_LOOKUP, PRIO_MISS, (), (goto(Table.CONNTRACK),), base)
    yield Flow(Table.ROUTE, PRIO_MISS, (), DROP, base)
    for ttl in (0, 1):  # (dec_ttl would send these to the controller unmetered)
        yield Flow(Table.ROUTE, PRIO_ROUTE_TTL6, match(eth_type=ETH_TYPE_IPV6, nw_ttl=ttl),
                   DROP, base)
    for eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        yield Flow(Table.CONNTRACK, PRIO_CT_TRACK, match(eth_type=eth_type),
                   (apply(("ct", 0, *CT_ZONE, int(Table.POLICY))),), base)
    for t in (ND_NS, ND_NA):  # userspace conntrack calls these invalid: not connections
        yield Flow(Table.CONNTRACK, PRIO_CT_SKIP_ND, nd(t), (goto(Table.POLICY),), base)
    yield Flow(Table.CONNTRACK, PRIO_MISS, (), (goto(Table.POLICY),), base)
    yield Flow(Table.POLICY, PRIO_MISS, (), DROP, base)
    yield Flow(Table.ND_REACH, PRIO_MISS, (), (goto(Table.ND_REACH_REV),), base)
    yield Flow(Table.ND_REACH_REV, PRIO_MISS, (), DROP, base)
    yield Flow(Table.FLOOD_POLICY, PRIO_MISS, (), DROP, base)
    yield Flow(Table.FORWARD, PRIO_MISS, (), DROP, base)
    yield Flow(Table.FORWARD, PRIO_LINK_LOCAL, match(eth_dst=LINK_LOCAL), DROP, base)


def fabric_flows(
    dpid: int, state: NetworkState, hops: dict[int, int], fabric_ports: frozenset[int]
) -> Iterable[Flow]:
    """Operator-marked fabric ports: LLDP to the controller (link discovery), the rest
    to FABRIC, where host labels are decapsulated here or sent one hop on. LLDP from any
    other port never reaches the controller as a probe."""
    to_ctl = (meter(METER_LLDP), apply(("output", OFPP_CONTROLLER)))
    for port in sorted(fabric_ports):
        ck = cookie(Owner.FABRIC, port)
        yield Flow(Table.CLASSIFY, PRIO_FABRIC_LLDP,
                   match(in_port=port, eth_type=ETH_TYPE_LLDP), to_ctl, ck)
        yield Flow(Table.CLASSIFY, PRIO_FABRIC_PORT, match(in_port=port), (goto(Table.FABRIC),), ck)
    me = state.switches[dpid]
    yield Flow(
        Table.FABRIC, PRIO_LABEL, match(vlan_vid=OFPVID_PRESENT | me.label),
        (apply(("move", "vlan_pcp", MARK_REG, 3), ("pop_vlan",)), goto(Table.REMOTE_CLASSIFY)),
        cookie(Owner.FABRIC, me.label),
    )
    for dest, port in sorted(hops.items()):
        label = state.switches[dest].label
        yield Flow(
            Table.FABRIC, PRIO_LABEL, match(vlan_vid=OFPVID_PRESENT | label),
            (apply(("output", port)),), cookie(Owner.FABRIC, label),
        )


# --- VMs --------------------------------------------------------------------------------------


@_memo
def local_vm_flows(vm: VM, port: int, slots: tuple[int, ...] = (), standby: bool = False,
                   routed: Routed | None = None) -> Iterable[Flow]:
    """Port security for a VM on this switch: only its own MAC, untagged, its own IPs
    (IP source, ARP sender, IPv6 source: registered or its EUI-64 link-local), neighbour
    discovery only about itself; no DHCP server replies, router advertisements or
    redirects. Then delivery to it.

    ``standby``: the VM's port on a migration target. Its frames pass (policy applies
    from the first packet) and a copy tells the controller the VM now runs here. The
    first one also switches delivery over in the datapath: learn() sends what this
    host has for the VM to this port, and the frame, marked, makes every other host
    of the segment do the same toward this one (:func:`standby_far_flows`), before the
    controller confirms. Until then the port is held to the controller meter, so it
    cannot flood the controller.

    ``routed``: the router that joins the VM's segment (its zone is the VM's, and what
    it routed to the VM from another host arrives here with its MAC as source)."""
    ck = cookie(Owner.VM, vm.id)
    sets: list[tuple] = [("output", OFPP_CONTROLLER), ("set", MARK_REG, STANDBY_MARK),
                         switch_over(vm, (), "in_port")] if standby else []
    sets += _slot_sets(SRC_GROUP_REGS, slots)
    sets.append(("set", ZONE_REG, routed.zone if routed else vm.segment_id))
    classify = (*((meter(METER_STANDBY),) if standby else ()), apply(*sets),
                write_meta(meta_value(vm.segment_id, vm.id)), goto(Table.ARP))
    me = {"in_port": port, "eth_src": vm.mac, "vlan_vid": OFPVID_NONE}
    # DHCP servers answer from 67/547, and clients listen on 68/546 whatever the source
    for eth_type, ports in ((ETH_TYPE_IP, ("udp_src", 67, "udp_dst", 68)),
                            (ETH_TYPE_IPV6, ("udp_src", 547, "udp_dst", 546))):
        for field, value in zip(ports[::2], ports[1::2], strict=True):
            yield Flow(Table.CLASSIFY, PRIO_ROGUE_DHCP, match(
                in_port=port, eth_type=eth_type, ip_proto=17, **{field: value}), DROP, ck)
    v4 = [ip for ip in vm.ips if ":" not in ip]
    v6 = ipv6_addresses(vm)
    # a DHCP client, before it has an address (from 0.0.0.0, or its link-local) and
    # renewing, and a router solicitation: the controller answers with the VM's own lease
    # or its segment's advertisement (where the segment has subnet6), metered, never on
    # to other VMs
    for eth_type, client, server in ((ETH_TYPE_IP, 68, 67), (ETH_TYPE_IPV6, 546, 547)):
        yield Flow(Table.CLASSIFY, PRIO_DHCP_CLIENT, match(
            **me, eth_type=eth_type, ip_proto=17, udp_src=client, udp_dst=server),
            TO_CONFIG, ck)
    yield Flow(Table.CLASSIFY, PRIO_DHCP_CLIENT, nd(ND_RS, **me), TO_CONFIG, ck)
    for ip in v4:
        yield Flow(Table.CLASSIFY, PRIO_VM_ADDRESS, match(**me, eth_type=ETH_TYPE_IP, ipv4_src=ip),
                   classify, ck)
        yield Flow(Table.CLASSIFY, PRIO_VM_ADDRESS, match(**me, eth_type=ETH_TYPE_ARP, arp_spa=ip,
                                              arp_sha=vm.mac), classify, ck)
    yield from _nd_security(vm, port, me, v6, classify, ck)
    for src6 in v6:
        yield Flow(Table.CLASSIFY, PRIO_VM_ADDRESS,
                   match(**me, eth_type=ETH_TYPE_IPV6, ipv6_src=src6), classify, ck)
    # the unspecified source: only ICMPv6 (duplicate address detection, MLD reports)
    yield Flow(Table.CLASSIFY, PRIO_VM_ADDRESS, match(**me, eth_type=ETH_TYPE_IPV6, ipv6_src="::",
                                          ip_proto=ICMPV6), classify, ck)
    for eth_type in (ETH_TYPE_IP, ETH_TYPE_ARP, ETH_TYPE_IPV6):
        yield Flow(Table.CLASSIFY, PRIO_SPOOFED_L3, match(in_port=port, eth_type=eth_type),
                   DROP, ck)
    yield Flow(Table.CLASSIFY, PRIO_VM_FRAME, match(**me), classify, ck)
    yield Flow(Table.CLASSIFY, PRIO_SPOOFED_L2, match(in_port=port), DROP, ck)
    for ip in v4:
        # a VM asking for its own address (gratuitous ARP, probes) gets no answer
        yield Flow(
            Table.ARP, PRIO_ARP_OWN_ADDRESS,
            match(eth_type=ETH_TYPE_ARP, arp_op=1, in_port=port, arp_tpa=ip), DROP, ck,
        )
    for ip in v6:  # nor its duplicate address detection (so it succeeds)
        yield Flow(Table.ARP, PRIO_ARP_OWN_ADDRESS, nd(ND_NS, in_port=port, ipv6_nd_target=ip),
                   DROP, ck)
    if routed is not None:
        yield from _routed_arrival(vm, slots, routed, ck)
    if standby:
        return
    yield Flow(Table.FORWARD, PRIO_DELIVER, match(**{DST_VM_REG: vm.id}),
               (apply(("output", port)),), ck)


def _nd_security(vm: VM, port: int, me: dict, v6: tuple[str, ...], classify: tuple, ck: int
                 ) -> Iterable[Flow]:
    """Neighbour discovery from a VM: solicitations from its own (or the unspecified)
    source with its own MAC or none as source link-layer address; advertisements only
    for its own addresses, with its own MAC or none as target link-layer address. Router
    advertisements and redirects never (a VM is not a router); anything else is a spoof."""
    for t in (ND_RA, ND_REDIRECT):
        yield Flow(Table.CLASSIFY, PRIO_ROGUE_ND, nd(t, in_port=port), DROP, ck)
    for lladdr in (vm.mac, ZERO_MAC):
        for src in v6:
            yield Flow(Table.CLASSIFY, PRIO_ND_OWN, nd(ND_NS, **me, ipv6_src=src,
                                                        ipv6_nd_sll=lladdr), classify, ck)
            for target in v6:
                yield Flow(Table.CLASSIFY, PRIO_ND_OWN, nd(
                    ND_NA, **me, ipv6_src=src, ipv6_nd_target=target, ipv6_nd_tll=lladdr),
                    classify, ck)
    for target in v6:  # duplicate address detection: from ::, about its own address only
        yield Flow(Table.CLASSIFY, PRIO_ND_OWN, nd(ND_NS, **me, ipv6_src="::",
                                                    ipv6_nd_sll=ZERO_MAC, ipv6_nd_target=target),
                   classify, ck)
    # router solicitations not from the VM's MAC: harmless, dropped (not audited)
    yield Flow(Table.CLASSIFY, PRIO_QUIET_DROP, nd(ND_RS, in_port=port), DROP, ck)
    for t in (ND_NS, ND_NA):
        yield Flow(Table.CLASSIFY, PRIO_SPOOFED_ND, nd(t, in_port=port), DROP, ck)


TO_CONFIG = (meter(METER_DHCP), apply(("output", OFPP_CONTROLLER)))  # address configuration


def _slot_sets(regs: tuple[str, ...], slots: tuple[int, ...]) -> list[tuple]:
    """Load the VM's group slots (registers start at 0: empty ones load nothing)."""
    return [("set", reg, v) for reg, v in zip(regs, packed(slots), strict=False) if v]


def nd(icmp_type: int, **fields: object) -> tuple:
    return match(**fields, eth_type=ETH_TYPE_IPV6, ip_proto=ICMPV6, icmpv6_type=icmp_type)


@_memo
def remote_vm_flows(vm: VM, label: int, hop: int | None, slots: tuple[int, ...] = (),
                    routed: Routed | None = None) -> Iterable[Flow]:
    """A VM on another switch of a segment present here (or of a segment its router
    joins): recognise it (tag, groups: a broadcast from it is judged per receiver here;
    what its router routed, by the router's MAC and the VM's address), send toward it."""
    ck = cookie(Owner.VM, vm.id)
    known = (apply(*_slot_sets(SRC_GROUP_REGS, slots),
                   ("set", ZONE_REG, routed.zone if routed else vm.segment_id)),
             write_meta(meta_value(vm.segment_id, vm.id, from_fabric=True)),
             goto(Table.DST_LOOKUP))
    yield Flow(Table.REMOTE_CLASSIFY, PRIO_REMOTE_VM, match(eth_src=vm.mac), known, ck)
    if routed is not None:
        for m in _routed_addresses(vm, "src"):
            yield Flow(Table.REMOTE_CLASSIFY, PRIO_REMOTE_ROUTED,
                       match(eth_src=routed.mac, **m), known, ck)
    if hop is None:
        return  # no path yet: unknown destination drops, it never floods
    yield Flow(
        Table.FORWARD, PRIO_DELIVER, match(**{DST_VM_REG: vm.id}, metadata=(0, META_FROM_FABRIC)),
        (apply(*_label_and_send(label, hop, push=True)),), ck,
    )


def switch_over(vm: VM, loads: tuple[tuple[str, int], ...], output_field: str) -> tuple:
    """The learn() that switches a migrating VM's delivery over in the datapath: what
    this host sends to the VM goes to the port ``output_field`` holds, after ``loads``."""
    return learn(Table.FORWARD, PRIO_LEARNED, cookie(Owner.LEARNED, vm.id),
                 match(**{DST_VM_REG: vm.id}, eth_dst=_mac_int(vm.mac)), loads, output_field)


def learned_flow(vm: VM) -> Flow:
    """The identity (table, priority, match) of the flow a switch-over learns for a VM:
    what the controller deletes once it has confirmed (or abandoned) the move. Unicast
    to the VM's MAC only: a broadcast's copy for it (reg4 set per receiver) keeps its
    way, and a tag given to another VM later never matches it."""
    return Flow(Table.FORWARD, PRIO_LEARNED, match(**{DST_VM_REG: vm.id}, eth_dst=vm.mac),
                DROP, cookie(Owner.LEARNED, vm.id))


def _mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


@_memo
def standby_far_flows(vm: VM, label: int, hop: int, slots: tuple[int, ...] = (),
                      routed: Routed | None = None) -> Iterable[Flow]:
    """A VM migrating to the host with ``label`` (reached through port ``hop``), seen
    from another host of its segment (its old host included): its frame marked as from
    the standby port learn()s delivery toward that host, then is recognised as any
    frame of the VM from the fabric."""
    ck = cookie(Owner.VM, vm.id)
    # in_port cleared: a frame that came in on the port toward the target may go back
    # out of it (the old host forwards what is in flight); loading vlan_tci pushes the tag
    tag = (("in_port", 0), ("vlan_tci", OFPVID_PRESENT | label))
    yield Flow(
        Table.REMOTE_CLASSIFY, PRIO_REMOTE_STANDBY,
        match(eth_src=vm.mac, **{MARK_REG: STANDBY_MARK}),
        (apply(("set", HOP_REG, hop), switch_over(vm, tag, HOP_REG),
               *_slot_sets(SRC_GROUP_REGS, slots),
               ("set", ZONE_REG, routed.zone if routed else vm.segment_id)),
         write_meta(meta_value(vm.segment_id, vm.id, from_fabric=True)),
         goto(Table.DST_LOOKUP)),
        ck,
    )


@_memo
def dst_lookup_flows(vm: VM, slots: tuple[int, ...]) -> Iterable[Flow]:
    """Tag frames to the VM with its id and groups, for the policy table. IP to the VM's
    MAC must carry one of its addresses (or, for a solicitation, their solicited-node
    group): a packet of an allowed connection re-addressed to another VM's MAC, which
    conntrack would call established, reaches nobody."""
    ck = cookie(Owner.VM, vm.id)
    sets = _slot_sets(DST_GROUP_REGS, slots)
    sets.append(("set", DST_VM_REG, vm.id))
    tag = (apply(*sets), goto(Table.CONNTRACK))
    mine = {"metadata": (vm.segment_id, META_SEGMENT_MASK), "eth_dst": vm.mac}
    for ip in vm.ips:
        if ":" not in ip:
            yield Flow(Table.DST_LOOKUP, PRIO_DST_ADDRESS,
                       match(**mine, eth_type=ETH_TYPE_IP, ipv4_dst=ip), tag, ck)
    v6 = ipv6_addresses(vm)
    for ip in sorted({*v6, *(_solicited_node(a) for a in v6)}):
        yield Flow(Table.DST_LOOKUP, PRIO_DST_ADDRESS,
                   match(**mine, eth_type=ETH_TYPE_IPV6, ipv6_dst=ip), tag, ck)
    for eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        yield Flow(Table.DST_LOOKUP, PRIO_DST_WRONG_ADDRESS, match(**mine, eth_type=eth_type),
                   DROP, ck)
    yield Flow(Table.DST_LOOKUP, PRIO_DST_FRAME, match(**mine), tag, ck)


def _solicited_node(ip: str) -> str:
    low = int(ipaddress.IPv6Address(ip)) & 0xFFFFFF
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0")) | low))


@_memo
def arp_responder_flows(vm: VM) -> Iterable[Flow]:
    """Answer 'who has IP' for the VM in the datapath: works with the controller down."""
    ck = cookie(Owner.VM, vm.id)
    for ip in vm.ips:
        if ":" not in ip:
            yield _arp_answer(PRIO_ARP_ANSWER, vm.segment_id, ip, vm.mac, ck)


def router_flows(state: NetworkState) -> Iterable[Flow]:
    """Per router, on every host (also while the controller is down): each segment's
    gateway answers ARP with the router's MAC; IP from a local VM of the segment to that
    MAC goes to ROUTE (no other segment has a way in); an address of its subnets that no
    placed VM holds is dropped there, counted by this flow. A segment no VM was ever
    registered in has no tag yet: nobody there asks."""
    seen: set[int] = set()
    outside = {r.name for r in state.policy.routers if r.external}
    for d in domains(state).values():
        if d.routed.router in seen:
            continue
        seen.add(d.routed.router)
        mac, ck = d.routed.mac, cookie(Owner.ROUTER, d.routed.router)
        for eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6) if d.name in outside else ():
            # what another host took in on its uplink for a VM here
            yield Flow(Table.REMOTE_CLASSIFY, PRIO_REMOTE_OUTSIDE, match(
                eth_src=mac, eth_type=eth_type), (
                apply(("set", ZONE_REG, d.routed.zone)),
                write_meta(meta_value(0, 0, from_fabric=True)), goto(Table.DST_LOOKUP)), ck)
        for tag, spec in d.specs:
            if spec.gateway:
                yield _arp_answer(PRIO_ARP_GATEWAY, tag, spec.gateway, mac, ck)
            if spec.gateway6:
                yield from _na_answer(tag, spec.gateway6, mac, ck)
            if spec.subnet6:  # the default router its advertisements name
                yield from _na_answer(tag, eui64_link_local(mac), mac, ck)
            for eth_type, field, net in ((ETH_TYPE_IP, "ipv4_dst", spec.subnet),
                                         (ETH_TYPE_IPV6, "ipv6_dst", spec.subnet6)):
                if net is None:
                    continue
                yield Flow(Table.DST_LOOKUP, PRIO_DST_ROUTED_GATE,
                           match(metadata=(tag, SEG_LOCAL), eth_dst=mac, eth_type=eth_type),
                           (goto(Table.ROUTE),), ck)
                inside = {field: masked(str(net))}
                yield Flow(Table.ROUTE, PRIO_ROUTE_UNUSED, match(
                    eth_dst=mac, eth_type=eth_type, **inside), DROP, ck)
                for ttl in (0, 1):  # expires here: ICMP(v6) time exceeded
                    yield Flow(Table.ROUTE, PRIO_ROUTE_TTL, match(
                        eth_dst=mac, eth_type=eth_type, nw_ttl=ttl, **inside),
                        (meter(METER_TTL), apply(("output", OFPP_CONTROLLER))), ck)
            yield from _echo_answers(mac, spec, ck)
        for eth_type, field, scope in SCOPES:  # a router never forwards these
            yield Flow(Table.ROUTE, PRIO_ROUTE_SCOPE, match(
                eth_dst=mac, eth_type=eth_type, **{field: masked(scope)}), DROP, ck)


def _echo_answers(mac: str, spec: SegmentSpec, ck: int) -> Iterable[Flow]:
    """A ping to the segment's gateway (gateway6), from any segment of the router, is
    answered in the datapath: the request turned into the reply in place (addresses
    swapped, type echo reply; OVS updates the checksums) and sent back out of its port."""
    for eth_type, proto, ip, field, request, reply in (
            (ETH_TYPE_IP, 1, spec.gateway, "ipv4", 8, 0),
            (ETH_TYPE_IPV6, ICMPV6, spec.gateway6, "ipv6", 128, 129)):
        if not ip:
            continue
        kind = "icmpv4_type" if proto == 1 else "icmpv6_type"
        yield Flow(Table.ROUTE, PRIO_ROUTE_ECHO, match(
            eth_dst=mac, eth_type=eth_type, ip_proto=proto, **{f"{field}_dst": ip, kind: request}),
            (apply(("move", "eth_src", "eth_dst", 48), ("set", "eth_src", mac),
                   ("move", f"{field}_src", f"{field}_dst", 32 if proto == 1 else 128),
                   ("set", f"{field}_src", ip), ("set", kind, reply),
                   ("output", OFPP_IN_PORT)),), ck)


@_memo
def route_flows(vm: VM, slots: tuple[int, ...], routed: Routed) -> Iterable[Flow]:
    """The router's route to a placed VM, on every host where its router's domain is
    present: IP to the router's MAC and one of the VM's addresses gets the VM's tag and
    groups (the policy judges it as any packet to the VM), one hop less to live, the
    router's MAC as source and the VM's as destination; then on as switched traffic."""
    ck = cookie(Owner.VM, vm.id)
    acts = apply(("dec_ttl",), ("set", "eth_src", routed.mac), ("set", "eth_dst", vm.mac),
                 *_slot_sets(DST_GROUP_REGS, slots), ("set", DST_VM_REG, vm.id))
    for m in _routed_addresses(vm, "dst"):
        yield Flow(Table.ROUTE, PRIO_ROUTE, match(eth_dst=routed.mac, **m),
                   (acts, goto(Table.CONNTRACK)), ck)


def _routed_addresses(vm: VM, side: str) -> Iterator[dict]:
    """Match fields for each address a router routes for the VM (never its link-local)."""
    for ip in vm.ips:
        v6 = ":" in ip
        if v6 and ipaddress.IPv6Address(ip).is_link_local:
            continue
        yield {"eth_type": ETH_TYPE_IPV6 if v6 else ETH_TYPE_IP,
               f"ipv{6 if v6 else 4}_{side}": ip}


def _routed_arrival(vm: VM, slots: tuple[int, ...], routed: Routed, ck: int) -> Iterable[Flow]:
    """What the router routed to the VM at another host arrives from the fabric with the
    router's MAC as source (its source segment is another): the VM's tag and groups."""
    tag = (apply(*_slot_sets(DST_GROUP_REGS, slots), ("set", DST_VM_REG, vm.id)),
           goto(Table.CONNTRACK))
    for m in _routed_addresses(vm, "dst"):
        yield Flow(Table.DST_LOOKUP, PRIO_DST_ROUTED, match(
            metadata=(META_FROM_FABRIC, META_FROM_FABRIC), eth_src=routed.mac,
            eth_dst=vm.mac, **m), tag, ck)


def _arp_answer(priority: int, segment_id: int, ip: str, mac: str, ck: int) -> Flow:
    """An ARP request for ``ip`` in the segment, answered from ``mac`` out of its port."""
    return Flow(
        Table.ARP, priority,
        match(eth_type=ETH_TYPE_ARP, arp_op=1, metadata=(segment_id, META_SEGMENT_MASK),
              arp_tpa=ip),
        (arp_reply(ip, mac),), ck)


def arp_reply(ip: str, mac: str) -> tuple:
    """Turn an ARP request for ``ip`` into the reply from ``mac``, back out of its port."""
    return apply(
        ("move", "eth_src", "eth_dst", 48),
        ("set", "eth_src", mac),
        ("set", "arp_op", 2),
        ("move", "arp_sha", "arp_tha", 48),
        ("move", "arp_spa", "arp_tpa", 32),
        ("set", "arp_sha", mac),
        ("set", "arp_spa", ip),
        ("output", OFPP_IN_PORT),
    )


ND_FLAGS_RSO = 0xE0000000  # router, solicited, override


def _na_answer(segment_id: int, ip: str, mac: str, ck: int) -> Iterable[Flow]:
    """A neighbour solicitation for ``ip`` in the segment, answered from ``mac`` out of
    its port: turned into the advertisement in place (addresses swapped, type 136, flags
    R|S|O, its source link-layer option made the target's, carrying ``mac``). OVS checks
    a set-field's prerequisites on the flow's match, and the datapath retypes the option
    before it writes addresses into it: so the target link-layer address is written by a
    second flow, reached by resubmit once the packet is an advertisement. (No VM can
    send an advertisement for a gateway: port security drops it.) A solicitation without
    that option (DAD, from ::) gets no answer."""
    ns = {"metadata": (segment_id, META_SEGMENT_MASK), "ipv6_nd_target": ip}
    yield Flow(Table.ARP, PRIO_ARP_GATEWAY_NO_SLL, nd(ND_NS, **ns, ipv6_nd_sll=ZERO_MAC),
               DROP, ck)
    yield Flow(Table.ARP, PRIO_ARP_GATEWAY, nd(ND_NS, **ns), (apply(
        ("move", "eth_src", "eth_dst", 48),
        ("set", "eth_src", mac),
        ("move", "ipv6_src", "ipv6_dst", 128),
        ("set", "ipv6_src", ip),
        ("set", "icmpv6_type", ND_NA),
        ("set", "nd_reserved", ND_FLAGS_RSO),
        ("set", "nd_options_type", 2),
        resubmit(Table.ARP),
    ),), ck)
    yield Flow(Table.ARP, PRIO_ARP_GATEWAY, nd(ND_NA, **ns), (apply(
        ("set", "ipv6_nd_tll", mac), ("output", OFPP_IN_PORT)),), ck)


@_memo
def nd_resolver_flows(vm: VM) -> Iterable[Flow]:
    """A neighbour solicitation for one of the VM's IPv6 addresses (its link-local
    included) goes to the VM alone, as unicast, instead of to the whole segment; it then
    meets the policy like any frame to the VM (ND_REACH)."""
    ck = cookie(Owner.VM, vm.id)
    for ip in ipv6_addresses(vm):
        yield Flow(Table.ARP, PRIO_ARP_ANSWER,
                   nd(ND_NS, metadata=(vm.segment_id, META_SEGMENT_MASK), ipv6_nd_target=ip),
                   (apply(("set", "eth_dst", vm.mac)), goto(Table.DST_LOOKUP)), ck)


@_memo
def segment_flood_flows(
    segment_id: int, receivers: tuple[tuple[int, tuple[int, ...]], ...],
    remote: tuple[tuple[int, int], ...], uplink: tuple[tuple, ...] = ()
) -> Iterable[Flow]:
    """Broadcast/multicast stays in the segment, and reaches only the receivers the
    policy lets the sender reach: each local receiver's copy is judged in FLOOD_POLICY
    (its groups in reg6-9, its tag in reg4, then resubmit), plus one labelled copy per other host
    that has a VM of the segment, judged there (and, for a bridged segment, the ``uplink``
    actions: a tagged copy out of this host's uplink). Frames from the fabric (or in from
    the uplink) stay local. ``reg4=0`` in the match: a receiver's lookup never lands here
    again."""
    ck = cookie(Owner.SEGMENT, segment_id)
    local = list(itertools.chain.from_iterable(map(_receiver, receivers)))
    far: list[tuple] = list(uplink)
    for i, (label, hop) in enumerate(remote):
        far.extend(_label_and_send(label, hop, push=(i == 0)))
    unjudged = {DST_VM_REG: 0}
    yield Flow(
        Table.FORWARD, PRIO_FLOOD,
        match(metadata=(segment_id, SEG_LOCAL), eth_dst=MULTICAST, **unjudged),
        (apply(*local, *far),) if local or far else DROP, ck,
    )
    yield Flow(
        Table.FORWARD, PRIO_FLOOD,
        match(metadata=(segment_id | META_FROM_FABRIC, SEG_LOCAL), eth_dst=MULTICAST,
              **unjudged),
        (apply(*local),) if local else DROP, ck,
    )


@functools.lru_cache(maxsize=1 << 16)
def _receiver(receiver: tuple[int, tuple[int, ...]]) -> tuple[tuple, ...]:
    """One receiver's part of a flood: its tag and group slots in the registers (every
    register in use, so the previous receiver's groups never stay), then its copy judged
    in FLOOD_POLICY (cached: a segment's flood lists repeat its VMs)."""
    vm_id, values = receiver
    return (*(("set", reg, v) for reg, v in zip(DST_GROUP_REGS, values, strict=False)),
            ("set", DST_VM_REG, vm_id), resubmit(Table.FLOOD_POLICY))


def _label_and_send(label: int, hop: int, push: bool) -> list[tuple]:
    acts: list[tuple] = [("push_vlan", ETH_TYPE_VLAN)] if push else []
    acts += [("set", "vlan_vid", OFPVID_PRESENT | label)]
    if push:  # the frame's mark (a standby port's, else 0) travels in the PCP
        acts.append(("move", MARK_REG, "vlan_pcp", 3))
    acts.append(("output", hop))
    return acts


# --- policy -----------------------------------------------------------------------------------

COMMIT = ("ct", CT_COMMIT, *CT_ZONE, CT_NO_RECIRC)
FROM_LOCAL = (0, META_FROM_FABRIC)  # metadata match: frame entered at a VM port here


@dataclass(frozen=True)
class Judge:
    """One way of evaluating the rules, each in its own table.

    POLICY judges a unicast packet at its source host, statefully (allowed IP is
    committed to conntrack, deny-and-log samples). FLOOD_POLICY judges one receiver's
    copy of a broadcast, statelessly. ND_REACH/ND_REACH_REV project the rules onto
    "may the sender reach the receiver (or the receiver the sender) at all", which is
    when neighbour discovery between them must work."""

    table: Table
    stateful: bool = False
    reach: bool = False  # project onto reachability: no L3/L4 detail
    reverse: bool = False  # the rule's source is the receiver


STATEFUL = Judge(Table.POLICY, stateful=True)
PER_RECEIVER = Judge(Table.FLOOD_POLICY)
REACH = Judge(Table.ND_REACH, reach=True)
REACH_BACK = Judge(Table.ND_REACH_REV, reach=True, reverse=True)


def policy_flows(state: NetworkState, slots: int | None = None,
                 populated: Set[str] | None = None) -> Iterable[Flow]:
    """POLICY, ND_REACH(_REV) and FLOOD_POLICY: identical on every switch,
    O((rules + groups + isolation pairs) x slots in use) each. ``slots``: the slots in
    use (:func:`slots_in_use`), ``populated``: the groups with a VM (:func:`populated_groups`;
    an incremental build keeps both itself)."""
    pol = state.policy
    k = slots_in_use(state) if slots is None else slots
    populated = populated_groups(state) if populated is None else populated
    plumbing = cookie(Owner.POLICY)
    yield from _isolation_flows(pol, state.group_bits, k)
    done = (goto(Table.FORWARD),)
    for t in (ND_NS, ND_NA):  # unicast; multicast advertisements are judged per receiver
        yield Flow(Table.POLICY, PRIO_ND_UNICAST, nd(t, metadata=FROM_LOCAL, eth_dst=UNICAST),
                   (goto(Table.ND_REACH),), plumbing)
    # Broadcast and multicast are judged per receiver in FORWARD/FLOOD_POLICY, above the
    # conntrack checks: a packet of an established connection sent to a broadcast MAC
    # must not reach everyone (verify found that once).
    yield Flow(Table.POLICY, PRIO_MULTICAST, match(eth_dst=MULTICAST), done, plumbing)
    yield Flow(Table.POLICY, PRIO_ESTABLISHED,
               match(ct_state=(CT_TRK | CT_EST, CT_TRK | CT_EST)), done, plumbing)
    # Related packets (ICMP errors) are judged by the rules like new ones: conntrack
    # relates an error to a connection by its inner header alone, so a VM could forge one
    # about a connection it is not part of, toward a VM it may not reach.
    yield Flow(Table.POLICY, PRIO_INVALID, match(ct_state=(CT_TRK | CT_INV, CT_TRK | CT_INV)), DROP,
               plumbing)
    # the source host checked it: track it here too so replies pass, then deliver
    fabric = (META_FROM_FABRIC, META_FROM_FABRIC)
    for eth_type in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        yield Flow(Table.POLICY, PRIO_FABRIC_NEW, match(metadata=fabric, eth_type=eth_type,
                                              ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW)),
                   (apply(COMMIT), goto(Table.FORWARD)), plumbing)
    yield Flow(Table.POLICY, PRIO_FABRIC_PASS, match(metadata=fabric), done, plumbing)
    resolved = [(_as_key(r), _resolve(r.src, state), _resolve(r.dst, state)) for r in pol.rules]
    intra = [state.group_bits[g] for g in pol.groups  # (nothing to allow in an empty one)
             if g in state.group_bits and g in populated] if pol.intra_group == "allow" else []
    for judge in (STATEFUL, PER_RECEIVER, REACH, REACH_BACK):
        for rule, src_is, dst_is in resolved:
            yield from _rule_flows(rule, judge, src_is, dst_is, k)
        for n in intra:
            yield from _intra_group_flows(judge, n, k)
        yield from _verdict(judge, PRIO_DEFAULT, [], pol.inter_group, None, plumbing)


def _isolation_flows(pol: Policy, numbers: Mapping[str, int], k: int) -> Iterable[Flow]:
    """Each isolation pair, both directions, dropped above everything (for unicast at
    its source, for each copy of a broadcast at its receiver). The pairs share one
    priority, so a clause flow two pairs both need is one flow with both conjunctions."""
    for table, src_extra in ((Table.POLICY, {"metadata": FROM_LOCAL}), (Table.FLOOD_POLICY, {})):
        flows: list[Flow] = []
        for i, (a, b) in enumerate(pol.isolation):
            for d, (x, y) in enumerate(((a, b), (b, a))):
                if x in numbers and y in numbers:
                    src = [_merge(m, src_extra) for m in _in_group(numbers[x], SRC_GROUP_REGS, k)]
                    flows += _any_of(table, PRIO_ISOLATION, [src, _in_group(
                        numbers[y], DST_GROUP_REGS, k)], DROP, cookie(Owner.ISOLATION, i),
                        CONJ_ISOLATION | i << 1 | d)
        yield from _merge_clauses(flows)


def _merge_clauses(flows: Iterable[Flow]) -> Iterable[Flow]:
    """One flow per match and priority, as OVS keeps them: clause flows with the same
    match carry all their conjunctions (the first one's cookie); of equal other flows,
    the first."""
    out: dict[tuple, Flow] = {}
    for f in flows:
        had = out.get(f.key)
        if had is None:
            out[f.key] = f
        elif conjunctions(had) and conjunctions(f):
            acts = sorted(set(conjunctions(had)) | set(conjunctions(f)))
            out[f.key] = Flow(f.table, f.priority, f.match, (apply(*acts),), had.cookie)
    return out.values()


@_memo
def _intra_group_flows(judge: Judge, number: int, k: int) -> Iterable[Flow]:
    """Traffic within group ``number`` allowed: per address family, source and
    destination both hold it in a slot; IPv4 and IPv6 above anything else, so they
    are committed when judged statefully."""
    src_extra = {"metadata": FROM_LOCAL} if judge.stateful else {}
    families = ((PRIO_INTRA_GROUP, None, 0),) if judge.reach else (
        (PRIO_INTRA_GROUP + 2, ETH_TYPE_IP, 2), (PRIO_INTRA_GROUP + 1, ETH_TYPE_IPV6, 1),
        (PRIO_INTRA_GROUP, None, 0))
    dst = _in_group(number, DST_GROUP_REGS, k)
    for prio, eth_type, family in families:
        extra = src_extra | ({"eth_type": eth_type} if eth_type else {})
        src = [_merge(m, extra) for m in _in_group(number, SRC_GROUP_REGS, k)]
        yield from _any_of(judge.table, prio, [src, dst], _allow(judge, eth_type is not None),
                           cookie(Owner.POLICY, number + 1), CONJ_INTRA | number << 2 | family)


def rule_flows(rule: Rule, state: NetworkState, judge: Judge = STATEFUL) -> tuple[Flow, ...]:
    """One rule as ``judge`` evaluates it: a flow per address family and port mask (and
    group slot), at the rule's priority, or a conjunctive match when that is fewer."""
    return _rule_flows(_as_key(rule), judge, _resolve(rule.src, state),
                       _resolve(rule.dst, state), slots_in_use(state))


def _as_key(rule: Rule) -> Rule:
    """The rule without its place in the list (which its flows do not show), so a rule
    above it being added or removed finds its flows memoised."""
    return dataclasses.replace(rule, index=0, slot=rule.priority)


def _resolve(e: Endpoint, state: NetworkState) -> int | None:
    """All one end of a rule reads of the state: a group's number, a VM's tag, the tag
    of the VM with a MAC (so a rule's flows are memoised on the rule and these alone)."""
    if e.kind == "group":
        return state.group_bits.get(e.value)
    if e.kind == "vm":
        vm = state.vms.get(e.value)
        return None if vm is None else vm.id
    if e.kind == "mac":
        return next((v.id for v in state.vms.values() if v.mac == e.value), None)
    return None


@_memo
def _rule_flows(rule: Rule, judge: Judge, src_is: int | None, dst_is: int | None, k: int
                ) -> Iterable[Flow]:
    sides = ("dst", "src") if judge.reverse else ("src", "dst")
    ends = (src_is, dst_is)
    src = _endpoint_match(rule.src, ends[0], sides[0], judge, rule.action, k)
    dst = _endpoint_match(rule.dst, ends[1], sides[1], judge, rule.action, k)
    if src is None or dst is None:
        return  # names a VM that is not registered, or cannot be judged this way
    if judge.reach and not (_denies_all_ipv6(rule) if rule.action != "allow"
                            else _may_carry_ipv6(rule)):
        return  # a partial deny leaves the pair reachable; an IPv4-only allow gives no
        # reason to resolve IPv6 neighbours
    yield from _verdict(judge, rule.priority, [src, dst], rule.action, rule,
                        cookie(Owner.RULE, rule.priority))


def _may_carry_ipv6(rule: Rule) -> bool:
    if rule.ethertype is not None:
        return rule.ethertype == ETH_TYPE_IPV6
    return rule.protocol != "icmp"


def _denies_all_ipv6(rule: Rule) -> bool:
    if rule.ethertype is not None:
        return rule.ethertype == ETH_TYPE_IPV6
    return rule.protocol in ("any", "ip") and not rule.ports


def _verdict(judge: Judge, prio: int, ends: list[list[dict]], action: str, rule: Rule | None,
             ck: int) -> Iterable[Flow]:
    """Flows for one decision on a packet that matches one entry of each of ``ends``
    (alternatives per end of a rule). Statefully, ``allow`` commits IP to conntrack
    (IPv4 and IPv6 variants) and lets non-IP through one priority lower, so first-match
    order is kept; a reachability judge's deny hands over to the reverse question."""
    if any(not alts for alts in ends):
        return  # an end that matches nothing
    m = _merge(*(alts[0] for alts in ends if len(alts) == 1))
    alternatives = [alts for alts in ends if len(alts) > 1]
    if judge.stateful:
        m = _merge(m, {"metadata": FROM_LOCAL})
    variants = [m] if judge.reach else _l34_variants(rule, m)
    levels: dict[tuple[int, tuple[Instruction, ...]], list[dict]] = {}
    if action == "allow":
        for v in variants:
            exact = "eth_type" in v or judge.reach
            ins = _allow(judge, v.get("eth_type") in (ETH_TYPE_IP, ETH_TYPE_IPV6))
            levels.setdefault((prio if exact else prio - 1, ins), []).append(v)
    elif judge.table == Table.ND_REACH:
        levels[(prio, (goto(Table.ND_REACH_REV),))] = variants
    elif action == "deny-and-log" and judge.stateful:
        levels[(prio, (meter(METER_LOG), apply(("output", OFPP_CONTROLLER))))] = variants
    else:
        levels[(prio, DROP)] = variants
    for (p, ins), vs in levels.items():
        yield from _any_of(judge.table, p, [*alternatives, vs], ins, ck)


def _allow(judge: Judge, ip: bool) -> tuple[Instruction, ...]:
    return (apply(COMMIT), goto(Table.FORWARD)) if ip and judge.stateful \
        else (goto(Table.FORWARD),)


def _any_of(table: Table, prio: int, dims: list[list[dict]], ins: tuple[Instruction, ...],
            ck: int, conj_id: int | None = None) -> Iterable[Flow]:
    """Flows for packets matching one entry of every dim: the cross product where that
    is no more flows than a conjunctive match, else the conjunction (one flow per entry;
    its id, unique in the table, by default the priority) and its result flow."""
    conj_id = prio if conj_id is None else conj_id
    base = _merge(*(d[0] for d in dims if len(d) == 1))
    multi = [d for d in dims if len(d) > 1]
    if len(multi) < 2 or math.prod(map(len, multi)) <= sum(map(len, multi)) + 1:
        for combo in itertools.product(*multi):
            yield Flow(table, prio, match(**_merge(base, *combo)), ins, ck)
        return
    for k, alts in enumerate(multi, 1):
        for m in alts:
            yield Flow(table, prio, match(**(_merge(base, m) if k == 1 else m)),
                       (apply(conjunction(conj_id, k, len(multi))),), ck)
    if not any(i[0] == "apply" and any(a[0] == "ct" for a in i[1]) for i in ins):
        yield Flow(table, prio, match(conj_id=conj_id), ins, ck)
        return
    # ct() needs the address family in the flow's match (OVS checks prerequisites): one
    # result flow per family the conjunction lets through
    for fam in sorted({e["eth_type"] for d in dims for e in d if "eth_type" in e}):
        yield Flow(table, prio, match(conj_id=conj_id, eth_type=fam), ins, ck)


def _l34_variants(rule: Rule | None, m: dict) -> list[dict]:
    """Expand protocol/ports/family into concrete matches."""
    if rule is None or (rule.protocol == "any" and rule.ethertype is None):
        fams = _families(m)
        if not fams:  # no L3 constraint: IPv4, IPv6 (committed) and everything else
            return [{**m, "eth_type": ETH_TYPE_IP}, {**m, "eth_type": ETH_TYPE_IPV6}, dict(m)]
        return [{**m, "eth_type": f} for f in fams]
    if rule.ethertype is not None:
        return [{**m, "eth_type": rule.ethertype}]
    proto = rule.protocol
    fams = _families(m) or (
        [ETH_TYPE_IP] if proto == "icmp" else
        [ETH_TYPE_IPV6] if proto == "icmpv6" else [ETH_TYPE_IP, ETH_TYPE_IPV6])
    number = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}.get(str(proto), proto)
    out = []
    for fam in fams:
        base = {**m, "eth_type": fam}
        if proto == "ip":
            out.append(base)
            continue
        base["ip_proto"] = number
        if proto in ("icmp", "icmpv6"):
            prefix = "icmpv4" if proto == "icmp" else "icmpv6"
            if rule.icmp_type is not None:
                base[f"{prefix}_type"] = rule.icmp_type
            if rule.icmp_code is not None:
                base[f"{prefix}_code"] = rule.icmp_code
        if rule.ports:
            for lo, hi in rule.ports:
                for value, mask in port_masks(lo, hi):
                    out.append({**base, f"{proto}_dst": value if mask == 0xFFFF
                                else (value, mask)})
        else:
            out.append(base)
    return out


def _families(m: dict) -> list[int]:
    if m.get("eth_type") in (ETH_TYPE_IP, ETH_TYPE_IPV6):
        return [m["eth_type"]]
    if "ipv4_src" in m or "ipv4_dst" in m:
        return [ETH_TYPE_IP]
    if "ipv6_src" in m or "ipv6_dst" in m:
        return [ETH_TYPE_IPV6]
    return []


def _endpoint_match(e: Endpoint, resolved: int | None, side: str, judge: Judge, action: str,
                    k: int) -> list[dict] | None:
    """The matches (any one will do) for one end of a rule, on ``side`` of the packet
    (src: the sender, dst: the receiver), ``resolved`` as :func:`_resolve` found it,
    ``k`` group slots in use. None: the rule cannot match (unregistered VM), or this
    judge cannot decide on it and must leave it out."""
    if e.kind == "group":
        if resolved is None:
            return None
        return _in_group(resolved, SRC_GROUP_REGS if side == "src" else DST_GROUP_REGS, k)
    m = _single_match(e, resolved, side, judge, action)
    return None if m is None else [m]


def _single_match(e: Endpoint, resolved: int | None, side: str, judge: Judge, action: str
                  ) -> dict | None:
    if e.kind == "any":
        return {}
    if e.kind == "vm" or (e.kind == "mac" and resolved is not None):
        # a VM's MAC names that VM: its tag, not the frame's MAC (which a router rewrites;
        # a broadcast's copy to it has another)
        if resolved is None:
            return None
        if side == "src":
            return {"metadata": (resolved << META_VM_SHIFT, META_SEGMENT_MASK << META_VM_SHIFT)}
        return {DST_VM_REG: resolved}
    flood_dst = judge.table == Table.FLOOD_POLICY and side == "dst"
    if e.kind == "mac":
        if flood_dst:  # a broadcast is never sent to that MAC: deny all, allow none
            return {} if action != "allow" else None
        return {f"eth_{side}": e.value}
    net = ipaddress.ip_network(e.value)
    if judge.reach:
        # IPv4 says nothing about neighbour discovery; an IPv6 prefix cannot be checked
        # on it (link-local sources, solicited-node destinations): an allow counts for
        # every pair, a deny for none
        return {} if action == "allow" and net.version == 6 else None
    if flood_dst:
        # a broadcast's destination IP is not the receiver's: a deny holds for every
        # receiver (of that address family), an allow for none
        return {"eth_type": ETH_TYPE_IP if net.version == 4 else ETH_TYPE_IPV6} \
            if action != "allow" else None
    fam = "ipv4" if net.version == 4 else "ipv6"
    full = net.prefixlen == net.max_prefixlen
    value = str(net.network_address) if full else (str(net.network_address),
                                                   str(net.netmask))
    return {f"{fam}_{side}": value}


def _merge(*matches: dict) -> dict:
    """The matches together (metadata value/masks combined)."""
    out: dict = {}
    for m in matches:
        if "metadata" in out and "metadata" in m:
            (va, ma), (vb, mb) = out["metadata"], m["metadata"]
            out = {**out, **m, "metadata": (va | vb, ma | mb)}
        else:
            out = {**out, **m}
    return out


def count_by_table(flows: Iterable[Flow]) -> dict[int, int]:
    out: dict[int, int] = defaultdict(int)
    for f in flows:
        out[f.table] += 1
    return dict(sorted(out.items()))
