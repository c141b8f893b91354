"""Plain-data OpenFlow flows: the compiler's output and the reconciler's input.

A :class:`Flow` is hashable and comparable, so desired and installed flow sets are
diffed with set operations. Nothing here knows about os-ken; ``apps/ofcodec.py``
translates to and from wire messages. The pipeline's tables, priorities, meters and
field layouts are declared in :mod:`.pipeline` (re-exported here for older imports).
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast

from .pipeline import (
    COOKIE_ID_MASK,
    COOKIE_MAGIC,
    COOKIE_OWNER_SHIFT,
    CT_COMMIT,
    CT_EST,
    CT_INV,
    CT_NEW,
    CT_NO_RECIRC,
    CT_REL,
    CT_RPL,
    CT_TRK,
    DST_GROUP_REGS,
    DST_VM_REG,
    MAX_GROUPS,
    MAX_LABEL,
    MAX_RULES,
    MAX_SEGMENT_TAG,
    MAX_VM_TAG,
    META_FROM_FABRIC,
    META_SEGMENT_MASK,
    META_VM_SHIFT,
    META_WRITE_MASK,
    RULE_PRIORITY_FLOOR,
    RULE_PRIORITY_STEP,
    RULE_PRIORITY_TOP,
    SRC_GROUP_REGS,
    ZONE_REG,
    Owner,
    Table,
    rule_priority,
)

# the pipeline's data, re-exported: existing imports from here keep working
__all__ = [
    "COOKIE_ID_MASK", "COOKIE_MAGIC", "COOKIE_OWNER_SHIFT", "CT_COMMIT", "CT_EST", "CT_INV",
    "CT_NEW", "CT_NO_RECIRC", "CT_REL", "CT_RPL", "CT_TRK", "DROP", "DST_GROUP_REGS",
    "DST_VM_REG", "MAX_GROUPS", "MAX_LABEL", "MAX_RULES", "MAX_SEGMENT_TAG", "MAX_VM_TAG",
    "META_FROM_FABRIC", "META_SEGMENT_MASK", "META_VM_SHIFT", "META_WRITE_MASK",
    "OFPP_CONTROLLER", "OFPP_IN_PORT", "OFPVID_NONE", "OFPVID_PRESENT", "RULE_PRIORITY_FLOOR",
    "RULE_PRIORITY_STEP", "RULE_PRIORITY_TOP", "SRC_GROUP_REGS", "ZONE_REG", "Action", "Flow",
    "Instruction", "Match", "Owner", "Table", "apply", "cookie", "cookie_owner", "goto",
    "conjunction", "conjunctions", "learn", "learned", "match", "meta_value", "meter", "resubmit",
    "rule_priority", "write_meta",
]


def meta_value(segment_id: int, vm_id: int, from_fabric: bool = False) -> int:
    return segment_id | (vm_id << META_VM_SHIFT) | (META_FROM_FABRIC if from_fabric else 0)


# --- VLAN ids as host labels --------------------------------------------------------------
OFPVID_PRESENT = 0x1000
OFPVID_NONE = 0x0000

# --- special ports ------------------------------------------------------------------------
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_CONTROLLER = 0xFFFFFFFD

# --- cookies: who owns a flow (layout in pipeline.py) ------------------------------


def cookie(owner: Owner, owner_id: int = 0) -> int:
    return ((COOKIE_MAGIC | int(owner)) << COOKIE_OWNER_SHIFT) | (owner_id & COOKIE_ID_MASK)


def cookie_owner(value: int) -> tuple[Owner, int] | None:
    """Decode a cookie; None when the flow is not vfence's."""
    top = value >> COOKIE_OWNER_SHIFT
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
#   ("conjunction", id, k, n): clause k (1..n) of OVS conjunctive match ``id``; a flow
#   with these holds nothing else, and the match ("conj_id", id) says what it does
#   ("learn", table, priority, cookie, match, loads, output_field): OVS learn of a flow
#   (no timeouts) matching the constants ``match`` (sorted (field, int) pairs), loading the
#   constants ``loads`` ((field, int) pairs, e.g. ("vlan_tci", 0x1063)) and outputting to
#   the port ``output_field`` ("in_port" or a register) holds when the learn runs
Match = tuple[tuple[str, Any], ...]
Action = tuple[Any, ...]
Instruction = tuple[Any, ...]


def masked(prefix: str) -> tuple[str, str] | str:
    """A prefix as a match's (value, mask): ``10.0.0.0/8`` -> ("10.0.0.0", "255.0.0.0");
    a host prefix as the address alone, as the switch reports it back (``::/128`` is
    "::": with an all-ones mask the read-back never equalled the compiled flow)."""
    n = ipaddress.ip_network(prefix)
    if n.prefixlen == n.max_prefixlen:
        return str(n.network_address)
    return str(n.network_address), str(n.netmask)


def match(**fields: Any) -> Match:
    return tuple(sorted(fields.items()))


class Flow:
    """One flow as plain data: immutable, hashable, ordered. A slotted class rather than
    a frozen dataclass: a large network builds hundreds of thousands of these, and the
    hash (over the nested tuples) is computed once, when first needed."""

    __slots__ = ("table", "priority", "match", "instructions", "cookie", "_hash")
    table: int
    priority: int
    match: Match
    instructions: tuple[Instruction, ...]
    cookie: int
    _hash: int | None

    def __init__(self, table: int, priority: int, match: Match,
                 instructions: tuple[Instruction, ...] = (), cookie: int = 0) -> None:
        init = object.__setattr__
        init(self, "table", table)
        init(self, "priority", priority)
        init(self, "match", match)
        init(self, "instructions", instructions)
        init(self, "cookie", cookie)
        init(self, "_hash", None)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Flow is immutable (cannot set {name!r})")

    @property
    def key(self) -> tuple[int, int, Match]:
        """OpenFlow identity of a flow: a second flow with this key replaces the first."""
        return (self.table, self.priority, self.match)

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash((self.table, self.priority, self.match, self.instructions, self.cookie))
            object.__setattr__(self, "_hash", h)
        return h

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if other.__class__ is not Flow:
            return NotImplemented
        o = cast(Flow, other)
        return (self.table == o.table and self.priority == o.priority
                and self.cookie == o.cookie and self.match == o.match
                and self.instructions == o.instructions)

    def __repr__(self) -> str:
        return (f"Flow(table={self.table!r}, priority={self.priority!r}, match={self.match!r}, "
                f"instructions={self.instructions!r}, cookie={self.cookie!r})")

    def sort_key(self) -> tuple[int, int, str, str, int]:
        """Total order (match values mix ints, strings and (value, mask) tuples)."""
        return (self.table, self.priority, repr(self.match), repr(self.instructions),
                self.cookie)

    def __lt__(self, other: Flow) -> bool:
        return self.sort_key() < other.sort_key()


def apply(*actions: Action) -> Instruction:
    return ("apply", tuple(actions))


def conjunction(conj_id: int, k: int, n: int) -> Action:
    """Clause ``k`` of ``n`` of conjunctive match ``conj_id``: the packet matches the
    conjunction when it matches a flow of each clause at one priority (OVS ``conjunction``);
    the table is then looked up again with ``conj_id`` set."""
    return ("conjunction", conj_id, k, n)


def conjunctions(f: Flow) -> list[Action]:
    """The flow's conjunction actions (a clause flow holds nothing else)."""
    return [a for ins in f.instructions if ins[0] == "apply" for a in ins[1]
            if a and a[0] == "conjunction"]


def learn(table: Table, priority: int, cookie: int, match: Match,
          loads: tuple[tuple[str, int], ...], output_field: str) -> Action:
    """OVS's learn(): install (or refresh) a flow in ``table`` matching the constants
    ``match``, loading the constants ``loads`` and sending to the port that
    ``output_field`` holds when this action runs (no timeouts: the controller removes
    it)."""
    return ("learn", int(table), priority, cookie, match, loads, output_field)


def learned(action: Action) -> Flow:
    """The flow a learn() action installs (its output port is only known when it runs:
    the field's name stands in for it)."""
    _, table, priority, ck, m, loads, field = action
    return Flow(table, priority, m, (apply(*(("set", f, v) for f, v in loads),
                                           ("output", field)),), ck)


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
