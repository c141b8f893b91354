"""The OpenFlow pipeline, declared once, as data: tables, priority bands, meters, the
cookie layout, the metadata/register layout and the conntrack bits.

The compiler builds its flows from these names (no bare priorities, meter ids or table
numbers), tests/unit/test_pipeline_declared.py checks every compiled flow against them,
verify names tables with :func:`table_name`, and docs/pipeline.md is generated from them
(``python -m docs.gen_pipeline > docs/pipeline.md``). Nothing here knows about os-ken.

Policy is enforced where traffic enters the network (the source VM's host) for unicast,
and at each receiver for broadcast and multicast; the destination host tracks
connections too, so replies are recognised on both ends.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from enum import IntEnum

# --- tables -------------------------------------------------------------------------------


class Table(IntEnum):
    CLASSIFY = 0
    FABRIC = 1
    REMOTE_CLASSIFY = 2
    ARP = 10
    DST_LOOKUP = 15
    ROUTE = 16
    CONNTRACK = 20
    POLICY = 30
    ND_REACH = 32
    ND_REACH_REV = 33
    FLOOD_POLICY = 35
    FORWARD = 40


# --- cookies: who owns a flow -------------------------------------------------------------
# top byte: magic nibble 0xA plus the owner kind; low 48 bits: the owner's id. The
# reconciler and the audit find all flows of one owner by cookie, never by match.


class Owner(IntEnum):
    BASE = 1
    VM = 2
    SEGMENT = 3
    FABRIC = 4
    RULE = 5
    POLICY = 6
    ISOLATION = 7
    LEARNED = 8
    ROUTER = 9
    UPLINK = 10


@dataclass(frozen=True)
class OwnerSpec:
    owns: str
    owner_id: str  # what the low 48 bits hold


OWNERS: dict[Owner, OwnerSpec] = {
    Owner.BASE: OwnerSpec("pipeline skeleton: table-miss flows, ARP/ND and link-local drops, "
                          "conntrack plumbing", "0"),
    Owner.VM: OwnerSpec("one VM: classification, anti-spoofing, ARP answers, destination "
                        "lookup, delivery to it", "the VM's tag"),
    Owner.SEGMENT: OwnerSpec("one segment's broadcast/multicast replication", "segment tag"),
    Owner.FABRIC: OwnerSpec("fabric ports and the transit of host labels",
                            "fabric port number or host label"),
    Owner.RULE: OwnerSpec("one policy rule, in every table that judges it",
                          "the rule's priority (kept across edits of the document)"),
    Owner.POLICY: OwnerSpec("policy plumbing, the defaults and the intra-group allows",
                            "0, or group number + 1 for an intra-group allow"),
    Owner.ISOLATION: OwnerSpec("one isolation pair, both directions",
                               "the pair's index in the document (a clause flow shared "
                               "by pairs: the first of them)"),
    Owner.ROUTER: OwnerSpec("one distributed router: its gateways' ARP answers, the way "
                            "into ROUTE from its segments, its unused addresses' drops",
                            "the router's number (the registry's: kept while a policy names it)"),
    Owner.LEARNED: OwnerSpec("installed by the datapath (learn()) when a migrating VM's "
                             "first frame arrives from its standby port: delivery switched "
                             "over until the controller confirms the move and removes it",
                             "the VM's tag"),
    Owner.UPLINK: OwnerSpec("a host's uplink to an external network: its address answered, "
                            "what comes in for routed VMs, the way out to the external "
                            "gateway", "the uplink's OpenFlow port"),
}
COOKIE_MAGIC = 0xA0
COOKIE_OWNER_SHIFT = 56
COOKIE_ID_BITS = 48
COOKIE_ID_MASK = (1 << COOKIE_ID_BITS) - 1


# --- metadata and registers ---------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """Bits of a pipeline field that carry one fact from table to table."""

    field: str
    shift: int
    bits: int
    holds: str

    @property
    def mask(self) -> int:
        return ((1 << self.bits) - 1) << self.shift


META_SEGMENT = Slot("metadata", 0, 16, "segment tag of the frame's source VM")
META_VM = Slot("metadata", 16, 16, "source VM tag")
META_FABRIC = Slot("metadata", 32, 1, "the frame came from the fabric (judged at its source)")
# a VM's groups: up to GROUP_SLOTS group numbers + 1 (0: empty), smallest first, two
# 16-bit slots to a register
GROUP_SLOTS = 8
SRC_GROUPS = tuple(Slot(r, 0, 32, f"source VM's groups, slots {2 * i} and {2 * i + 1}")
                   for i, r in enumerate(("reg0", "reg1", "reg2", "reg3")))
DST_GROUPS = tuple(Slot(r, 0, 32, f"destination VM's groups, slots {2 * i} and {2 * i + 1}")
                   for i, r in enumerate(("reg6", "reg7", "reg8", "reg9")))
DST_VM = Slot("reg4", 0, 17, "destination VM tag (0: not looked up yet; 65536, above every "
                            "tag: routed out of this host's uplink)")
ZONE = Slot("reg5", 0, 16, "conntrack zone: the segment's tag, or for every segment a "
                           "router joins, the router's zone (61440 + its number)")
# a live migration switched over in the datapath: a frame from a VM's standby port is
# marked, and the mark travels to the other hosts in the PCP of the fabric tag
MARK = Slot("reg10", 0, 3, "the frame came from a migrating VM's standby port "
                           "(copied to and from the fabric tag's PCP)")
HOP = Slot("reg11", 0, 16, "the port toward a migrating VM's target host (what learn() "
                           "copies into the flow it installs)")
LAYOUT = (META_SEGMENT, META_VM, META_FABRIC, *SRC_GROUPS, *DST_GROUPS, DST_VM, ZONE, MARK,
          HOP)
MARK_REG, HOP_REG = MARK.field, HOP.field
STANDBY_MARK = 4  # PCP 4 on the fabric tag; 0 on every other frame

META_SEGMENT_MASK = META_SEGMENT.mask
META_VM_SHIFT = META_VM.shift
META_FROM_FABRIC = META_FABRIC.mask
META_WRITE_MASK = META_SEGMENT.mask | META_VM.mask | META_FABRIC.mask
SRC_GROUP_REGS = tuple(s.field for s in SRC_GROUPS)
DST_GROUP_REGS = tuple(s.field for s in DST_GROUPS)
DST_VM_REG = DST_VM.field
UPLINK_DST = 1 << 16  # reg4 of what a router sends out of the host's uplink
ZONE_REG = ZONE.field
CT_ZONE = (ZONE.field, ZONE.shift << 6 | ZONE.bits - 1)  # NX ct zone_src, ofs_nbits

# --- limits: every tag that lands in a register, metadata, VLAN label or ct zone ---------
# Tags are allocated densely by the registry (never a database id) and checked against
# these widths; reaching one is refused with an error naming the field.
MAX_VM_TAG = (1 << META_VM.bits) - 1  # metadata bits 16-31 and reg4: 1..65535
# segment tags and router zones share the 16-bit conntrack zone: routers the top 4096
MAX_ROUTERS = 4096
ROUTER_ZONE_BASE = (1 << ZONE.bits) - MAX_ROUTERS  # router i: zone ROUTER_ZONE_BASE + i
MAX_SEGMENT_TAG = ROUTER_ZONE_BASE - 1  # metadata bits 0-15 and ct zone: 1..61439
MAX_GROUPS = (1 << 16) - 1  # group numbers 0..65534: a slot holds number + 1 in 16 bits
MAX_LABEL = 4094  # host label = VLAN id on the fabric: 1..4094

# --- groups in slots, and conjunctive matches -------------------------------------------
# A rule naming a group matches "one of the VM's slots holds it": one flow per slot in use
# (the most groups any VM is in). With one slot in use that is one flow, as a bit would
# be; with more, an OVS conjunctive match (one flow per slot and side, no cross product),
# so flows stay linear in rules and groups are limited by MAX_GROUPS, not register bits.
# conj_id (32 bits, per table): a rule's conjunction is its flow's priority (< 2^16); the
# kinds below sit above that. A clause flow that several conjunctions share (an isolation
# pair's, naming a group that other pairs name too) carries them all, and the cookie of
# the first pair.
CONJ_INTRA = 1 << 24  # | group number << 2 | address family (0 other, 1 IPv6, 2 IPv4)
CONJ_ISOLATION = 2 << 24  # | pair index << 1 | direction
MAX_ISOLATION_PAIRS = 1 << 23  # the pair index's bits in CONJ_ISOLATION

# --- conntrack ----------------------------------------------------------------------------
CT_COMMIT = 1  # ct() flag
CT_NO_RECIRC = 0xFF  # ct() without recirculation
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
CT_STATES = {"new": CT_NEW, "est": CT_EST, "rel": CT_REL, "rpl": CT_RPL, "inv": CT_INV,
             "trk": CT_TRK}

# --- meters: everything a switch sends to the controller goes through one ---------------


@dataclass(frozen=True)
class Meter:
    id: int
    name: str
    rate_pps: int  # packets per second, per switch
    burst: int  # packets
    job: str


METER_PUNT = 1
METER_LLDP = 2
METER_LOG = 3
METER_STANDBY = 4
METER_DHCP = 5
METER_TTL = 6
METER_UPLINK = 7
METERS = (
    Meter(METER_PUNT, "punt", 100, 10, "frames from unbound ports (binding detection)"),
    Meter(METER_LLDP, "lldp", 200, 20, "LLDP from fabric ports (link discovery)"),
    Meter(METER_LOG, "log", 20, 2, "deny-and-log samples"),
    Meter(METER_STANDBY, "standby", 200, 20,
          "a migration target's port until switch-over (not shared with punts)"),
    Meter(METER_DHCP, "dhcp", 100, 20, "DHCP, DHCPv6 and router solicitations from VMs, "
                                       "which the controller answers"),
    Meter(METER_UPLINK, "uplink", 20, 5, "the external gateway's ARP replies (and "
                                         "gateway6's advertisements) on a host's uplink "
                                         "(not shared with binding detection)"),
    Meter(METER_TTL, "ttl", 20, 5, "packets whose TTL expires at a router (the controller "
                                   "answers ICMP time exceeded): not shared with DHCP"),
)

# --- priorities ---------------------------------------------------------------------------
# Higher wins. Every table's miss flow sits at 0. Within a table no two bands overlap.
PRIO_MISS = 0
# CLASSIFY: port security first (the audit reads the drops' counters by priority)
PRIO_ROGUE_DHCP = 220
PRIO_ROGUE_ND = 218
PRIO_ND_OWN = 216
PRIO_SPOOFED_ND = 214
PRIO_DHCP_CLIENT = 212
PRIO_QUIET_DROP = 211
PRIO_VM_ADDRESS = 210
PRIO_SPOOFED_L3 = 205
PRIO_VM_FRAME = 200
PRIO_SPOOFED_L2 = 190
PRIO_UPLINK_NO_SLL = 181
PRIO_FABRIC_LLDP = 180
PRIO_UPLINK_ARP = 179
PRIO_UPLINK_SPOOF = 178
PRIO_UPLINK_IN = 177
PRIO_BRIDGED_SPOOF = 176
PRIO_BRIDGED_IN_FLOOD = 175
PRIO_BRIDGED_IN = 174
PRIO_UPLINK_OTHER = 173
PRIO_FABRIC_PORT = 170
# FABRIC, REMOTE_CLASSIFY
PRIO_LABEL = 100
PRIO_REMOTE_STANDBY = 110  # a frame from a migrating VM's standby port (marked)
PRIO_REMOTE_ROUTED = 105  # a routed frame: its source by router MAC and IP source
PRIO_REMOTE_VM = 100
PRIO_REMOTE_OUTSIDE = 90  # routed in from an external network at another host
# ARP
PRIO_ARP_OWN_ADDRESS = 110
PRIO_ARP_GATEWAY_NO_SLL = 106
PRIO_ARP_GATEWAY = 105
PRIO_ARP_ANSWER = 100
PRIO_ARP_BRIDGED = 60
PRIO_ARP_UNKNOWN = 50
# DST_LOOKUP
PRIO_DST_ROUTED_GATE = 110
PRIO_DST_ROUTED = 105
PRIO_DST_ADDRESS = 100
PRIO_DST_WRONG_ADDRESS = 90
PRIO_DST_FRAME = 80
# ROUTE
PRIO_ROUTE_ECHO = 210
PRIO_ROUTE_TTL = 200
PRIO_ROUTE_TTL6 = 199
PRIO_ROUTE_SCOPE = 150
PRIO_ROUTE = 100
PRIO_ROUTE_UNUSED = 50
PRIO_ROUTE_OUT_TTL = 30
PRIO_ROUTE_OUT = 20
# CONNTRACK
PRIO_CT_SKIP_ND = 110
PRIO_CT_TRACK = 100
# POLICY plumbing, above every rule
PRIO_ISOLATION = 65500
PRIO_ND_UNICAST = 65400
PRIO_BRIDGED_ARP = 65350
PRIO_MULTICAST = 65300
PRIO_ESTABLISHED = 65000
PRIO_INVALID = 64900
PRIO_FABRIC_NEW = 64500
PRIO_FABRIC_PASS = 64400
# the judges (POLICY, ND_REACH, ND_REACH_REV, FLOOD_POLICY): rules, then the defaults
RULE_PRIORITY_TOP = 60000  # rule i: priorities TOP - STEP*i and one below (non-IP allow)
RULE_PRIORITY_STEP = 4
RULE_PRIORITY_FLOOR = 1100  # above the intra-group allows and the default
MAX_RULES = (RULE_PRIORITY_TOP - RULE_PRIORITY_FLOOR) // RULE_PRIORITY_STEP + 1
PRIO_INTRA_GROUP = 1000
PRIO_DEFAULT = 10
# FORWARD
PRIO_LINK_LOCAL = 300
PRIO_LEARNED = 110  # installed by learn(): above the delivery it switches over
PRIO_DELIVER = 100
PRIO_DELIVER_UPLINK = 90
PRIO_FLOOD = 50
PRIO_BRIDGED_OUT = 45


RULE_GAP = 1024  # widest spacing of two rules' priorities: room to insert rules between


def rule_priority(index: int) -> int:
    """Priority of rule ``index`` packed densely (the tightest spacing, used for rules
    built without a priority of their own)."""
    if not 0 <= index < MAX_RULES:
        raise ValueError(f"rule index {index} outside 0..{MAX_RULES - 1}")
    return RULE_PRIORITY_TOP - RULE_PRIORITY_STEP * index


def spread_rule_priorities(n: int) -> list[int]:
    """Fresh priorities for ``n`` rules in order (first match wins: earlier is higher),
    spread evenly with room above the first and between any two, so a later edit can
    give a new rule a priority of its own without moving the others."""
    if n > MAX_RULES:
        raise ValueError(f"{n} rules, at most {MAX_RULES}")
    span = RULE_PRIORITY_TOP - RULE_PRIORITY_FLOOR
    gap = max(RULE_PRIORITY_STEP,
              min(RULE_GAP, span // max(n, 1)) // RULE_PRIORITY_STEP * RULE_PRIORITY_STEP)
    first = RULE_PRIORITY_TOP - gap if RULE_PRIORITY_TOP - gap * n >= RULE_PRIORITY_FLOOR \
        else RULE_PRIORITY_TOP
    return [first - gap * i for i in range(n)]


def keep_rule_priorities(names: list[str], previous: dict[str, int]) -> list[int]:
    """Priorities for the rules ``names`` (in order) that keep each rule's ``previous``
    priority where the order allows (the longest run of kept rules still in descending
    order), and put new or moved rules evenly between their kept neighbours. Only when
    there is no room is everything spread afresh. One rule added, removed or changed
    thus rewrites that rule's flows only."""
    seen = [(i, previous[n]) for i, n in enumerate(names) if n in previous]
    # longest strictly decreasing subsequence of the previous priorities, in new order
    tails: list[int] = []  # negated priorities: a strictly increasing sequence
    tail_at: list[int] = []
    parent: list[int] = []
    for k, (_, prio) in enumerate(seen):
        j = bisect.bisect_left(tails, -prio)
        tails[j:j + 1] = [-prio]
        tail_at[j:j + 1] = [k]
        parent.append(tail_at[j - 1] if j else -1)
    kept: dict[int, int] = {}
    k = tail_at[-1] if tail_at else -1
    while k >= 0:
        kept[seen[k][0]] = seen[k][1]
        k = parent[k]
    if not kept:
        return spread_rule_priorities(len(names))
    top, floor = RULE_PRIORITY_TOP + RULE_PRIORITY_STEP, RULE_PRIORITY_FLOOR - RULE_PRIORITY_STEP
    out: list[int] = []
    hi, run = top, 0
    for i in range(len(names) + 1):
        if i < len(names) and i not in kept:
            run += 1
            continue
        lo = kept[i] if i < len(names) else floor
        if run:
            gap = (hi - lo) // (run + 1)
            if hi == top or lo == floor:  # open-ended: stay near the kept neighbour
                gap = min(gap, RULE_GAP)
            if gap < RULE_PRIORITY_STEP:
                return spread_rule_priorities(len(names))
            base = lo + gap * (run + 1) if hi == top else hi  # hug the neighbour below
            out += [base - gap * (j + 1) for j in range(run)]
            run = 0
        if i < len(names):
            out.append(lo)
            hi = lo
    return out


@dataclass(frozen=True)
class Band:
    """Priorities ``low..high`` (inclusive) of a table, all owned by one cookie kind."""

    name: str
    low: int
    high: int
    owner: Owner
    job: str
    audit: str = ""  # kind of spoof the audit reports for a drop here ("": not audited)


def _at(name: str, prio: int, owner: Owner, job: str, audit: str = "") -> Band:
    return Band(name, prio, prio, owner, job, audit)


def _miss(job: str) -> Band:
    return _at("table_miss", PRIO_MISS, Owner.BASE, job)


# an allow also lets non-IP through one priority below, so first-match order is kept
_JUDGED = (
    Band("rules", RULE_PRIORITY_FLOOR - 1, RULE_PRIORITY_TOP, Owner.RULE,
         "the rules in document order, first match wins: each rule keeps its priority "
         "across edits (and one below it for its non-IP variant)"),
    Band("intra_group", PRIO_INTRA_GROUP, PRIO_INTRA_GROUP + 2, Owner.POLICY,
         "within a group, when the policy allows it (IPv4, IPv6, then anything else)"),
    Band("default", PRIO_DEFAULT - 1, PRIO_DEFAULT, Owner.POLICY,
         "between groups: the policy's default"),
)
_BRIDGED_ARP = _at(
    "bridged_arp", PRIO_BRIDGED_ARP, Owner.SEGMENT,
    "ARP in a bridged segment (between its VMs and the physical hosts on its VLAN): to "
    "FORWARD, as address resolution inside is answered whatever the rules (senders are "
    "checked at both ends; isolation pairs still hold)")

_ISOLATION = _at("isolation", PRIO_ISOLATION, Owner.ISOLATION,
                 "isolation pairs: drop, above everything")


@dataclass(frozen=True)
class TableSpec:
    number: Table
    job: str  # one line
    next: tuple[Table, ...]  # tables a flow here may continue in: goto, resubmit, ct()
    bands: tuple[Band, ...]
    detail: str = ""

    @property
    def name(self) -> str:
        return self.number.name.lower()

    @property
    def owners(self) -> tuple[Owner, ...]:
        return tuple(sorted({b.owner for b in self.bands}))

    def band_at(self, priority: int) -> Band | None:
        return next((b for b in self.bands if b.low <= priority <= b.high), None)


TABLES = (
    TableSpec(
        Table.CLASSIFY, "port -> source identity; anti-spoofing",
        (Table.CLASSIFY, Table.FABRIC, Table.ARP, Table.DST_LOOKUP, Table.ROUTE),
        (_miss("unbound port: to the controller through the punt meter"),
         _at("uplink_no_sll", PRIO_UPLINK_NO_SLL, Owner.UPLINK,
             "on an uplink: a neighbour solicitation for the host's address6 without a "
             "source link-layer address (duplicate address detection): drop (no answer)"),
         _at("uplink_arp", PRIO_UPLINK_ARP, Owner.UPLINK,
             "on a host's uplink: ARP for the host's uplink address, and neighbour "
             "solicitation for its address6, answered in place (the advertisement's "
             "second step is marked reg4 = the uplink); the external gateway's ARP reply "
             "and gateway6's advertisement to the controller through the uplink meter"),
         _at("uplink_spoof", PRIO_UPLINK_SPOOF, Owner.UPLINK,
             "on an uplink: IPv4 (IPv6) from any segment's subnet (subnet6) or from a "
             "martian (loopback, link-local, multicast, unspecified ...): an inside or "
             "impossible address from outside; or to a router's gateway (gateway6), which "
             "answers inside only: drop", "spoofed-source"),
         _at("uplink_in", PRIO_UPLINK_IN, Owner.UPLINK,
             "on an uplink, to the host's MAC, IPv4 (IPv6) for a subnet (subnet6) of a "
             "router that reaches that external network: the router's zone, its MAC as "
             "destination, to ROUTE"),
         _at("bridged_spoof", PRIO_BRIDGED_SPOOF, Owner.SEGMENT,
             "on an uplink, in a bridged segment's VLAN: a frame from a MAC or an IPv4 "
             "address (source, ARP sender) of one of its VMs: drop (the VM is inside)"),
         _at("bridged_in_flood", PRIO_BRIDGED_IN_FLOOD, Owner.SEGMENT,
             "on an uplink, in a bridged segment's VLAN, broadcast/multicast: untagged, "
             "marked as from the fabric (each host takes the physical network's copy for "
             "its own receivers), to DST_LOOKUP"),
         _at("bridged_in", PRIO_BRIDGED_IN, Owner.SEGMENT,
             "on an uplink, in a bridged segment's VLAN: untagged, the segment and its zone, "
             "from no VM and no group, to DST_LOOKUP (skipping ARP: the VM itself answers "
             "the outside, from its own host) and on to the policy"),
         _at("uplink_other", PRIO_UPLINK_OTHER, Owner.UPLINK,
             "anything else from an uplink: drop (never bound, never flooded)"),
         _at("fabric_port", PRIO_FABRIC_PORT, Owner.FABRIC,
             "anything else from a fabric port: to FABRIC"),
         _at("fabric_lldp", PRIO_FABRIC_LLDP, Owner.FABRIC,
             "LLDP from a fabric port: to the controller through the lldp meter"),
         _at("spoofed_l2", PRIO_SPOOFED_L2, Owner.VM,
             "any other frame from a VM port (foreign MAC, tagged): drop", "spoofed-source"),
         _at("vm_frame", PRIO_VM_FRAME, Owner.VM, "non-IP from the VM's own MAC: classify"),
         _at("spoofed_l3", PRIO_SPOOFED_L3, Owner.VM,
             "IP/ARP/IPv6 with a source that is not the VM's: drop", "spoofed-source"),
         _at("vm_address", PRIO_VM_ADDRESS, Owner.VM,
             "own IPv4 source, ARP sender, IPv6 source (incl. ICMPv6 from ::): classify"),
         _at("spoofed_nd", PRIO_SPOOFED_ND, Owner.VM,
             "any other neighbour discovery from a VM: drop", "spoofed-nd"),
         _at("router_solicitation", PRIO_QUIET_DROP, Owner.VM,
             "router solicitations not from the VM's MAC: harmless, dropped without an "
             "audit"),
         _at("vm_nd", PRIO_ND_OWN, Owner.VM,
             "neighbour discovery about the VM's own addresses and MAC: classify"),
         _at("rogue_nd", PRIO_ROGUE_ND, Owner.VM,
             "router advertisements and redirects from a VM: drop", "router-advertisement"),
         _at("rogue_dhcp", PRIO_ROGUE_DHCP, Owner.VM, "DHCP server replies from a VM: drop",
             "dhcp-server"),
         _at("dhcp_client", PRIO_DHCP_CLIENT, Owner.VM,
             "DHCP, DHCPv6 and router solicitations from the VM's MAC (any source address, "
             "0.0.0.0 too): to the controller through the dhcp meter, which answers with "
             "the VM's lease or its segment's router advertisement")),
        "Bound VM port + own MAC + own IP (IP, ARP sender, IPv6 incl. its EUI-64 link-local) "
        "+ untagged, and neighbour discovery only for its own addresses: write segment/VM tag "
        "to metadata, source groups to reg0-3 (slots), zone to reg5. Anything else from a VM port "
        "is a spoof; DHCP server replies, router advertisements and redirects are rogue: drop "
        "(counted, audited). Operator-marked fabric ports: LLDP -> controller, the rest -> "
        "FABRIC. Unbound ports -> controller (metered), for binding detection only. A "
        "migrating VM's standby port passes its frames (metered) with a copy to the "
        "controller, marks them in reg10 and learn()s the VM's delivery to itself.",
    ),
    TableSpec(
        Table.FABRIC, "host labels: ours -> decapsulate, another host's -> next hop",
        (Table.REMOTE_CLASSIFY,),
        (_miss("unknown label: drop"),
         _at("label", PRIO_LABEL, Owner.FABRIC,
             "our label: PCP to reg10 (a standby port's mark), pop, to REMOTE_CLASSIFY; "
             "another host's: out toward it")),
        "Frames from the fabric carry the destination host's label in the VLAN id, and "
        "PCP 4 when they left a migrating VM's standby port.",
    ),
    TableSpec(
        Table.REMOTE_CLASSIFY, "frame from another host: source VM by eth_src",
        (Table.DST_LOOKUP,),
        (_miss("unknown source: drop"),
         _at("remote_vm", PRIO_REMOTE_VM, Owner.VM,
             "source VM's tag and groups, marked as from the fabric"),
         _at("remote_routed", PRIO_REMOTE_ROUTED, Owner.VM,
             "a routed frame (source MAC the router's): source VM by its IP source"),
         _at("remote_outside", PRIO_REMOTE_OUTSIDE, Owner.ROUTER,
             "routed by a router that reaches an external network, from no VM: from "
             "outside, taken in at another host's uplink (its VM moved here before BGP "
             "said so): the router's zone, no groups"),
         _at("remote_standby", PRIO_REMOTE_STANDBY, Owner.VM,
             "a migrating VM's frame from its standby port (reg10 marked): learn() its "
             "delivery toward the target host, then as remote_vm")),
        "The source host already checked the frame; here it only gets its identity back "
        "(a broadcast from it is judged per receiver on this host).",
    ),
    TableSpec(
        Table.ARP, "address resolution in the datapath",
        (Table.ARP, Table.DST_LOOKUP),
        (_miss("not a request: on to DST_LOOKUP"),
         _at("bridged_request", PRIO_ARP_BRIDGED, Owner.SEGMENT,
             "a local VM of a bridged segment asking for an address no VM has: on to "
             "DST_LOOKUP, flooded (and out of the uplink, to the physical hosts)"),
         _at("unknown_request", PRIO_ARP_UNKNOWN, Owner.BASE,
             "ARP request or neighbour solicitation for nobody we know: drop"),
         _at("answer", PRIO_ARP_ANSWER, Owner.VM,
             "ARP request for a VM's IP: answered; solicitation: unicast to its owner"),
         _at("gateway", PRIO_ARP_GATEWAY, Owner.ROUTER,
             "ARP request or neighbour solicitation for a routed segment's gateway (or, "
             "with subnet6, the router's link-local address its advertisements name): "
             "answered with the router's MAC (the solicitation turned into an advertisement "
             "in place)"),
         _at("gateway_no_sll", PRIO_ARP_GATEWAY_NO_SLL, Owner.ROUTER,
             "a solicitation for a gateway without a source link-layer option (DAD): no "
             "answer (nothing to turn into the target's)"),
         _at("own_address", PRIO_ARP_OWN_ADDRESS, Owner.VM,
             "a VM asking for its own address (gratuitous ARP, DAD): no answer")),
        "ARP requests for known IPs are answered (works with the controller down); IPv6 "
        "neighbour solicitations for a known address become unicast to its owner; all other "
        "requests are dropped, never flooded.",
    ),
    TableSpec(
        Table.DST_LOOKUP, "(segment, eth_dst) -> destination VM tag and groups",
        (Table.ROUTE, Table.CONNTRACK),
        (_miss("unknown destination (e.g. broadcast): on to CONNTRACK"),
         _at("frame", PRIO_DST_FRAME, Owner.VM, "non-IP to a VM's MAC: tag"),
         _at("wrong_address", PRIO_DST_WRONG_ADDRESS, Owner.VM,
             "IP to a VM's MAC without one of its addresses: drop"),
         _at("address", PRIO_DST_ADDRESS, Owner.VM,
             "IP to a VM's MAC and address (or solicited-node group): tag"),
         _at("routed_address", PRIO_DST_ROUTED, Owner.VM,
             "IP routed to a VM (from the fabric, source MAC its router's): tag"),
         _at("router", PRIO_DST_ROUTED_GATE, Owner.ROUTER,
             "IP from a local VM of a routed segment to its router's MAC: to ROUTE")),
        "Destination VM tag to reg4, its groups to reg6-9 (slots), for the policy. A packet of an "
        "allowed connection re-addressed to another VM's MAC reaches nobody. A segment a "
        "router does not join has no way into ROUTE.",
    ),
    TableSpec(
        Table.ROUTE, "to a router's MAC: destination VM by IP, TTL - 1, MACs rewritten",
        (Table.CONNTRACK,),
        (_miss("outside every subnet the router joins: drop"),
         _at("unused_address", PRIO_ROUTE_UNUSED, Owner.ROUTER,
             "an address of a routed subnet that no placed VM holds: drop (counted, never "
             "flooded)"),
         _at("route", PRIO_ROUTE, Owner.VM,
             "to a VM's address: its tag and groups, TTL - 1, source MAC the router's, "
             "destination MAC the VM's, on to CONNTRACK"),
         _at("scope", PRIO_ROUTE_SCOPE, Owner.ROUTER,
             "IPv6 from a link-local or unspecified source, or to a link-local, multicast, "
             "loopback or unspecified address; IPv4 to 0/8, loopback, link-local, "
             "multicast, reserved or broadcast: drop (a router never forwards them)"),
         _at("hop_limit_expired", PRIO_ROUTE_TTL6, Owner.BASE,
             "IPv6 with hop limit 0 or 1 anywhere else: drop (dec_ttl would send it to the "
             "controller unmetered)"),
         _at("ttl_expired", PRIO_ROUTE_TTL, Owner.ROUTER,
             "TTL (hop limit) 0 or 1 to an address of the router's subnets: to the "
             "controller through the ttl meter, which answers ICMP (ICMPv6) time exceeded "
             "from the gateway (gateway6)"),
         _at("out_ttl", PRIO_ROUTE_OUT_TTL, Owner.UPLINK,
             "IPv4 to the outside with TTL 0 or 1: to the controller through the ttl meter "
             "(ICMP time exceeded from the sender's gateway; IPv6's hop limit: "
             "hop_limit_expired)"),
         _at("out", PRIO_ROUTE_OUT, Owner.UPLINK,
             "to any other address, from a router that reaches an external network through "
             "this host's uplink: TTL - 1, source MAC the host's uplink MAC, destination "
             "the external gateway's (gateway6's for IPv6), reg4 = the uplink; on to "
             "CONNTRACK (the policy judges it by CIDR)"),
         _at("gateway_echo", PRIO_ROUTE_ECHO, Owner.ROUTER,
             "an echo request (ping) to a gateway (gateway6) of the router: turned into "
             "the reply in place, back out of its port")),
        "Routing happens at the source VM's host, once: the packet then goes on exactly "
        "like switched traffic (policy with the destination VM's groups, delivery over "
        "the fabric). The destination host knows the source VM by the router's MAC and "
        "the IP source (REMOTE_CLASSIFY) and the destination by MAC and IP (DST_LOOKUP). "
        "Every segment a router joins shares one conntrack zone, so both ends of a routed "
        "connection are tracked alike.",
    ),
    TableSpec(
        Table.CONNTRACK, "IP -> ct(zone=segment), then POLICY with ct_state",
        (Table.POLICY,),
        (_miss("non-IP: to POLICY"),
         _at("track", PRIO_CT_TRACK, Owner.BASE, "IPv4/IPv6: ct(zone=reg5, table=POLICY)"),
         _at("skip_nd", PRIO_CT_SKIP_ND, Owner.BASE,
             "neighbour solicitations/advertisements: not connections, to POLICY")),
        "Userspace conntrack calls neighbour discovery invalid, so it skips conntrack.",
    ),
    TableSpec(
        Table.POLICY, "unicast, judged statefully at the source host",
        (Table.ND_REACH, Table.FORWARD),
        (_miss("drop"),
         *_JUDGED,
         _at("fabric_pass", PRIO_FABRIC_PASS, Owner.POLICY,
             "from the fabric: checked at its source host, pass"),
         _at("fabric_new", PRIO_FABRIC_NEW, Owner.POLICY,
             "new IP from the fabric: commit (so replies pass here), pass"),
         _at("invalid", PRIO_INVALID, Owner.POLICY, "ct_state invalid: drop"),
         _at("established", PRIO_ESTABLISHED, Owner.POLICY, "established: pass"),
         _at("multicast", PRIO_MULTICAST, Owner.POLICY,
             "broadcast/multicast: to FORWARD, judged per receiver there"),
         _at("nd_unicast", PRIO_ND_UNICAST, Owner.POLICY,
             "unicast neighbour discovery from a local VM: to ND_REACH"),
         _BRIDGED_ARP, _ISOLATION),
        "Isolation pairs above everything; broadcast/multicast to FORWARD (judged per "
        "receiver); established pass, related is judged like new, invalid drop; frames from "
        "the fabric are committed and pass; then the rules in order on group slots "
        "(a conjunctive match when VMs use several), then the defaults. Allowed new "
        "connections are committed; deny-and-log samples go to the controller through the "
        "log meter.",
    ),
    TableSpec(
        Table.ND_REACH, "neighbour discovery: may the sender reach the receiver at all?",
        (Table.ND_REACH_REV, Table.FORWARD),
        (_miss("no rule says: ask ND_REACH_REV"), *_JUDGED),
        "Passes when the rules let the sender reach the receiver in any way; a deny of "
        "everything hands over to ND_REACH_REV.",
    ),
    TableSpec(
        Table.ND_REACH_REV, "... or may the receiver reach the sender?",
        (Table.FORWARD,),
        (_miss("drop"), *_JUDGED),
        "Replies need neighbour discovery both ways.",
    ),
    TableSpec(
        Table.FLOOD_POLICY, "one receiver's copy of a broadcast, judged statelessly",
        (Table.FORWARD,),
        (_miss("drop"), *_JUDGED, _BRIDGED_ARP, _ISOLATION),
        "The receiver is in reg6-9 and reg4 (set by FORWARD before the resubmit). A rule's "
        "destination CIDR cannot be judged on a broadcast: its deny holds for every "
        "receiver, its allow for none.",
    ),
    TableSpec(
        Table.FORWARD, "destination by reg4; broadcast replication",
        (Table.FLOOD_POLICY,),
        (_miss("unknown unicast: drop"),
         _at("flood", PRIO_FLOOD, Owner.SEGMENT,
             "broadcast/multicast: each local receiver judged in FLOOD_POLICY (resubmit), "
             "one labelled copy per other host of the segment; from a local VM of a "
             "bridged segment, one tagged copy out of the uplink too"),
         _at("deliver", PRIO_DELIVER, Owner.VM,
             "to a local VM's port, or labelled toward a remote VM's host"),
         _at("bridged_out", PRIO_BRIDGED_OUT, Owner.SEGMENT,
             "unicast from a local VM of a bridged segment to no VM: tagged with its VLAN, "
             "out of this host's uplink (the policy judged it by CIDR)"),
         _at("deliver_uplink", PRIO_DELIVER_UPLINK, Owner.UPLINK,
             "reg4 = the uplink (routed out): out of this host's uplink"),
         _at("learned", PRIO_LEARNED, Owner.LEARNED,
             "installed by learn() on a migrating VM's first frame from its standby port: "
             "its delivery, switched over in the datapath until the controller confirms"),
         _at("link_local", PRIO_LINK_LOCAL, Owner.BASE,
             "link-local multicast (01:80:c2:00:00:0x): drop")),
        "Local port, or push the destination host's label (PCP from reg10) and send it "
        "toward that host.",
    ),
)
TABLE_SPECS = {int(t.number): t for t in TABLES}

# spoof drops in CLASSIFY the audit reports, by priority
SPOOF_DROP_KINDS = {b.low: b.audit for b in TABLE_SPECS[Table.CLASSIFY].bands if b.audit}


def table_name(number: int) -> str:
    """The declared name of table ``number`` ("policy"), or "table<N>" for a table the
    pipeline does not declare (a flow someone added by hand)."""
    spec = TABLE_SPECS.get(number)
    return spec.name if spec is not None else f"table{number}"
