"""Plain-data OpenFlow flows: the compiler's output and the reconciler's input.

A :class:`Flow` is hashable and comparable, so desired and installed flow sets are
diffed with set operations. Nothing here knows about os-ken; ``apps/ofcodec.py``
translates to and from wire messages.

Pipeline (one job per table):

==========  ================  ===============================================================
table       name              job
==========  ================  ===============================================================
0           CLASSIFY          port -> source identity. Bound VM port + own MAC + untagged:
                              write segment/VM id to metadata. Anything else from a VM port
                              is a spoof: drop (counted). LLDP -> controller. Fabric ports
                              -> FABRIC. Unbound ports -> controller through the meter.
1           FABRIC            frames carrying a host label (VLAN id): ours -> pop, go to
                              REMOTE_CLASSIFY; another host's -> next hop toward it.
2           REMOTE_CLASSIFY   frame arrived from another host: source VM by eth_src.
10          ARP               answer ARP requests for known IPs in the datapath, drop other
                              requests (never flooded); the rest goes on.
40          FORWARD           destination by (segment, eth_dst): local port, or label with
                              the destination host and send toward it; segment broadcast
                              replicated to the segment's ports only; unknown unicast drops.
==========  ================  ===============================================================

Tables 20 (conntrack) and 30 (policy) are reserved for the policy pipeline.
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
    FORWARD = 40


# --- metadata layout ----------------------------------------------------------------------
# bits 0-15: segment id, bits 16-31: source VM id, bit 32: frame came from the fabric.
META_SEGMENT_MASK = 0xFFFF
META_VM_SHIFT = 16
META_FROM_FABRIC = 1 << 32
META_WRITE_MASK = 0x1_FFFF_FFFF


def meta_value(segment_id: int, vm_id: int, from_fabric: bool = False) -> int:
    return segment_id | (vm_id << META_VM_SHIFT) | (META_FROM_FABRIC if from_fabric else 0)


# --- VLAN ids as host labels --------------------------------------------------------------
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000
MAX_LABEL = 4094

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
#   ("move", src_field, dst_field, n_bits)
Match = tuple[tuple[str, Any], ...]
Action = tuple[Any, ...]
Instruction = tuple[Any, ...]


def match(**fields: Any) -> Match:
    return tuple(sorted(fields.items()))


@dataclass(frozen=True, order=True)
class Flow:
    table: int
    priority: int
    match: Match
    instructions: tuple[Instruction, ...] = ()
    cookie: int = field(default=0, compare=True)

    @property
    def key(self) -> tuple[int, int, Match]:
        """OpenFlow identity of a flow: a second flow with this key replaces the first."""
        return (self.table, self.priority, self.match)

    def describe(self) -> str:
        m = ",".join(f"{k}={_fmt(v)}" for k, v in self.match) or "*"
        return f"table={self.table} prio={self.priority} {m} -> {self.instructions}"


def _fmt(v: Any) -> str:
    if isinstance(v, tuple):
        return f"{_fmt(v[0])}/{_fmt(v[1])}"
    return hex(v) if isinstance(v, int) and v > 9 else str(v)


def apply(*actions: Action) -> Instruction:
    return ("apply", tuple(actions))


def goto(table: Table) -> Instruction:
    return ("goto", int(table))


def write_meta(value: int, mask: int = META_WRITE_MASK) -> Instruction:
    return ("meta", value, mask)


def meter(meter_id: int) -> Instruction:
    return ("meter", meter_id)


DROP: tuple[Instruction, ...] = ()
