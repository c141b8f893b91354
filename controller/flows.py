"""Plain-data OpenFlow flows: the compiler's output and the reconciler's input.

A :class:`Flow` is hashable and comparable, so desired and installed flow sets are
diffed with set operations. Nothing here knows about os-ken; ``apps/ofcodec.py``
translates to and from wire messages.

Pipeline (one job per table):

==========  ================  ===============================================================
table       name              job
==========  ================  ===============================================================
0           CLASSIFY          port -> source identity. Bound VM port + own MAC + own IP
                              (IP, ARP sender, IPv6 incl. its EUI-64 link-local) + untagged
                              and neighbour discovery only for its own addresses: write
                              segment/VM tag to metadata, source group bits to reg0/1, zone
                              to reg5. Anything else from a VM port is a spoof; DHCP server
                              replies, router advertisements and redirects are rogue: drop
                              (counted). Operator-marked fabric ports: LLDP -> controller,
                              the rest -> FABRIC. Unbound ports -> controller (metered).
1           FABRIC            frames carrying a host label (VLAN id): ours -> pop, go to
                              REMOTE_CLASSIFY; another host's -> next hop toward it.
2           REMOTE_CLASSIFY   frame arrived from another host: source VM (tag, groups) by
                              eth_src.
10          ARP               address resolution in the datapath: ARP requests for known IPs
                              answered; IPv6 neighbour solicitations for a known address
                              turned into unicast to its owner; all other requests dropped.
15          DST_LOOKUP        (segment, eth_dst) -> destination VM tag (reg4) and its group
                              bits (reg2/3), for the policy.
20          CONNTRACK         IP -> ct(zone=segment), continue in POLICY with ct_state;
                              neighbour discovery skips conntrack (it is not a connection).
30          POLICY            isolation pairs (above everything), broadcast/multicast to
                              FORWARD (judged per receiver there), neighbour discovery to
                              ND_REACH, established/related pass, invalid drop, frames from
                              the fabric (checked at their source host) are committed and
                              pass, then the rules in order (first match wins) on group
                              bits, then the defaults. Allowed new connections committed.
32          ND_REACH          neighbour discovery from a VM passes when the policy lets the
                              sender reach the receiver in any way ...
33          ND_REACH_REV      ... or the receiver reach the sender (replies need both).
35          FLOOD_POLICY      one copy of a broadcast/multicast frame, for the receiver in
                              reg2-4: the rules, stateless; allowed -> FORWARD (its port).
40          FORWARD           destination by reg4: local port, or label with the destination
                              host and send toward it. Broadcast/multicast: every receiver
                              of the segment on this host is judged in FLOOD_POLICY (via
                              resubmit), plus one labelled copy per other host of the
                              segment (judged there). Unknown unicast drops.
==========  ================  ===============================================================

Policy is enforced where traffic enters the network (the source VM's host) for unicast,
and at each receiver for broadcast and multicast; the destination host tracks
connections too, so replies are recognised on both ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

# --- tables -------------------------------------------------------------------------------


class Table(IntEnum):
    CLASSIFY = 0
    FABRIC = 1
    REMOTE_CLASSIFY = 2
    ARP = 10
    DST_LOOKUP = 15
    CONNTRACK = 20
    POLICY = 30
    ND_REACH = 32
    ND_REACH_REV = 33
    FLOOD_POLICY = 35
    FORWARD = 40


# --- limits: every tag that lands in a register, metadata, VLAN label or ct zone ---------
# Tags are allocated densely by the registry (never a database id) and checked against
# these widths; reaching one is refused with an error naming the field.
MAX_VM_TAG = 0xFFFF  # metadata bits 16-31 (source VM), reg4 (destination VM): 1..65535
MAX_SEGMENT_TAG = 0xFFFF  # metadata bits 0-15 and the conntrack zone (16 bits): 1..65535
MAX_GROUPS = 64  # one bit each in reg0/reg1 (source) and reg2/reg3 (destination)
MAX_LABEL = 4094  # host label = VLAN id on the fabric: 1..4094
RULE_PRIORITY_TOP = 60000  # rule i: priorities TOP - STEP*i and one below (non-IP allow)
RULE_PRIORITY_STEP = 4
RULE_PRIORITY_FLOOR = 1100  # above the intra-group allows (1000) and the default (10)
MAX_RULES = (RULE_PRIORITY_TOP - RULE_PRIORITY_FLOOR) // RULE_PRIORITY_STEP + 1


def rule_priority(index: int) -> int:
    """Priority of rule ``index`` (0-based): first match wins, so earlier is higher."""
    if not 0 <= index < MAX_RULES:
        raise ValueError(f"rule index {index} outside 0..{MAX_RULES - 1}")
    return RULE_PRIORITY_TOP - RULE_PRIORITY_STEP * index


# --- metadata layout ----------------------------------------------------------------------
# bits 0-15: segment tag, bits 16-31: source VM tag, bit 32: frame came from the fabric.
META_SEGMENT_MASK = 0xFFFF
META_VM_SHIFT = 16
META_FROM_FABRIC = 1 << 32
META_WRITE_MASK = 0x1_FFFF_FFFF


# --- registers ----------------------------------------------------------------------------
SRC_GROUP_REGS = ("reg0", "reg1")  # 64 group bits of the source VM
DST_GROUP_REGS = ("reg2", "reg3")  # 64 group bits of the destination VM
DST_VM_REG = "reg4"
ZONE_REG = "reg5"  # conntrack zone = segment id

# conntrack
CT_COMMIT = 1
CT_NO_RECIRC = 0xFF
CT_NEW, CT_EST, CT_REL, CT_RPL, CT_INV, CT_TRK = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def group_regs(bits: int, regs: tuple[str, str]) -> list[tuple[str, int]]:
    """A 64-bit group bitmap as (register, 32-bit value) pairs, zero halves left out."""
    out = []
    for i, reg in enumerate(regs):
        half = (bits >> (32 * i)) & 0xFFFF_FFFF
        if half:
            out.append((reg, half))
    return out


def group_bit_match(bit: int, regs: tuple[str, str]) -> tuple[str, tuple[int, int]]:
    v = 1 << (bit % 32)
    return regs[bit // 32], (v, v)


def meta_value(segment_id: int, vm_id: int, from_fabric: bool = False) -> int:
    return segment_id | (vm_id << META_VM_SHIFT) | (META_FROM_FABRIC if from_fabric else 0)


# --- VLAN ids as host labels --------------------------------------------------------------
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000

# --- special ports ------------------------------------------------------------------------
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_CONTROLLER = 0xFFFFFFFD

# --- cookies: who owns a flow -------------------------------------------------------------
# top byte: 0xVF-style magic nibble 0xA plus the owner kind; low 48 bits: owner id.


class Owner(IntEnum):
    BASE = 1  # pipeline skeleton: table-miss drops, LLDP, link-local drops
    VM = 2  # one VM: classification, anti-spoofing, ARP answers, delivery to it
    SEGMENT = 3  # one segment's broadcast replication
    FABRIC = 4  # transit of host labels, fabric ports (owner id = label or port)
    RULE = 5  # one policy rule (owner id = its index in the document)
    POLICY = 6  # conntrack plumbing, defaults, intra-group allows (owner id = group bit+1)
    ISOLATION = 7  # one isolation pair (owner id = its index)


COOKIE_MAGIC = 0xA0
COOKIE_ID_MASK = (1 << 48) - 1


def cookie(owner: Owner, owner_id: int = 0) -> int:
    return ((COOKIE_MAGIC | int(owner)) << 56) | (owner_id & COOKIE_ID_MASK)


def cookie_owner(value: int) -> tuple[Owner, int] | None:
    """Decode a cookie; None when the flow is not vfence's."""
    top = value >> 56
    if top & 0xF0 != COOKIE_MAGIC:
        return None
    try:
        return Owner(top & 0x0F), value & COOKIE_ID_MASK
    except ValueError:
        return None


# --- flows --------------------------------------------------------------------------------
# Match: sorted tuple of (field, value) where value is an int/str or a (value, mask) tuple.
# Instructions, in this order when present: ("meter", id), ("apply", actions),
# ("meta", value, mask), ("goto", table). Actions are tuples:
#   ("output", port) ("push_vlan", ethertype) ("pop_vlan",) ("set", field, value)
#   ("move", src_field, dst_field, n_bits) ("resubmit", table) ("ct", ...)
Match = tuple[tuple[str, Any], ...]
Action = tuple[Any, ...]
Instruction = tuple[Any, ...]


def match(**fields: Any) -> Match:
    return tuple(sorted(fields.items()))


@dataclass(frozen=True)
class Flow:
    table: int
    priority: int
    match: Match
    instructions: tuple[Instruction, ...] = ()
    cookie: int = field(default=0, compare=True)
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # flows live in large sets that are diffed often: hash the nested tuples once
        object.__setattr__(self, "_hash", hash(
            (self.table, self.priority, self.match, self.instructions, self.cookie)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def key(self) -> tuple[int, int, Match]:
        """OpenFlow identity of a flow: a second flow with this key replaces the first."""
        return (self.table, self.priority, self.match)

    def sort_key(self) -> tuple[int, int, str, str, int]:
        """Total order (match values mix ints, strings and (value, mask) tuples)."""
        return (self.table, self.priority, repr(self.match), repr(self.instructions),
                self.cookie)

    def __lt__(self, other: Flow) -> bool:
        return self.sort_key() < other.sort_key()


def apply(*actions: Action) -> Instruction:
    return ("apply", tuple(actions))


def resubmit(table: Table) -> Action:
    """OVS's resubmit: look the packet up in ``table`` now, then carry on with the next
    action (one copy of a flood is judged per receiver this way)."""
    return ("resubmit", int(table))


def goto(table: Table) -> Instruction:
    return ("goto", int(table))


def write_meta(value: int, mask: int = META_WRITE_MASK) -> Instruction:
    return ("meta", value, mask)


def meter(meter_id: int) -> Instruction:
    return ("meter", meter_id)


DROP: tuple[Instruction, ...] = ()
