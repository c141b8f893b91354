"""Isolation proofs over the flows switches actually hold (header-space analysis).

For each isolation pair (A, B) the walk starts from every port of a VM in A with *every*
header that VM could send (all fields wildcard; metadata, registers and conntrack state
as the switch sets them on entry). It pushes that header space through the real tables
in priority order, splitting it at each flow's match, and applies each flow's actions:
set-field, metadata, VLAN push/pop, conntrack (any state afterwards), goto, output.
An output to a fabric port continues on the switch at the other end of the link. If any
part of the space reaches a port of a VM in B, isolation is broken, and the flows that
part went through are the witness.

The space is kept as "cubes": a value/mask per constrained field, plus value/mask
patterns a field must avoid. When an exclusion only partly overlaps a cube, the cube
is kept whole. That over-approximates, so the analysis can report a path that no packet
can really take, but it never misses a real one: "isolated" is a proof.

Each verdict is one of three:

- ``isolated``: proved, no header from one group of the pair reaches a port of the other.
- ``broken``: some header does; ``witness`` lists the flows it goes through.
- ``unknown``: neither could be shown, and ``reason`` says why: the walk reached its step
  limit (MAX_STEPS), or a header reached something the walk does not model (an
  instruction other than meter/apply/write-metadata/goto, an action other than
  set-field/move/push_vlan/pop_vlan/ct/output/resubmit, resubmits nested deeper than
  MAX_NESTING, a path of more than MAX_HOPS fabric hops, a switch whose flows were not
  read). The walk never guesses past these.

Approximations (all of them only add headers, so "isolated" stays a proof):

- ``("resubmit", table)`` (OVS's NX resubmit): the header is looked up in ``table`` on the
  spot (its actions apply, outputs and further gotos/resubmits included), then the
  current action list goes on. What a resubmitted lookup changes persists, but the walk
  does not track which of its many paths was taken: it continues with the header as it
  was before the resubmit, with every field that any flow reachable from ``table``
  (through goto, resubmit and ct recirculation) may write set free. A header that really
  comes back is in that space, whatever the lookup did to it.
- ``ct``: conntrack may give any state. With a recirculation table the tracked copy goes
  on there with ct_state +trk and anything else; the original goes on with the rest of
  the action list, its ct_state set free (OVS leaves it untracked).
- meters may drop; the walk lets everything through them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .flows import OFPP_CONTROLLER, OFPP_IN_PORT, Flow
from .model import NetworkState, PortRef
from .pipeline import CT_TRK, TABLE_SPECS, table_name

OFPP_NORMAL, OFPP_FLOOD, OFPP_ALL = 0xFFFFFFFA, 0xFFFFFFFB, 0xFFFFFFFC
MAX_STEPS = 200_000
MAX_HOPS = 16
MAX_NESTING = 64  # resubmits and recirculations inside one another (OVS's limit too)
ENTRY_ZERO = ("metadata", "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7",
              "ct_state")
WIDTH = {"metadata": 64, "ct_state": 32, "vlan_vid": 13, "eth_src": 48, "eth_dst": 48,
         "arp_sha": 48, "arp_tha": 48, "ipv6_src": 128, "ipv6_dst": 128, "ipv4_src": 32,
         "ipv4_dst": 32, "arp_spa": 32, "arp_tpa": 32, "in_port": 32,
         "ipv6_nd_target": 128, "ipv6_nd_sll": 48, "ipv6_nd_tll": 48, "ipv6_flabel": 20,
         "icmpv6_type": 8, "icmpv6_code": 8, "icmpv4_type": 8, "icmpv4_code": 8,
         "ip_proto": 8, "ip_dscp": 6, "ip_ecn": 2, "arp_op": 16, "eth_type": 16,
         "udp_src": 16, "udp_dst": 16, "tcp_src": 16, "tcp_dst": 16}


def _full(f: str) -> int:
    return (1 << WIDTH.get(f, 32 if f.startswith("reg") else 16)) - 1


def _int(f: str, v: Any) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.count(":") == 5 and len(v) == 17:
        return int(v.replace(":", ""), 16)
    return int(ipaddress.ip_address(v))


def _vm(f: str, v: Any) -> tuple[int, int]:
    """A match value as (value, mask)."""
    if isinstance(v, tuple):
        return _int(f, v[0]), _int(f, v[1])
    return _int(f, v), _full(f)


@dataclass(frozen=True)
class Cube:
    eq: tuple[tuple[str, int, int], ...] = ()  # field, value, mask
    ne: tuple[tuple[str, int, int], ...] = ()  # field must not match value/mask

    def get(self, f: str) -> tuple[int, int]:
        for name, v, m in self.eq:
            if name == f:
                return v, m
        return 0, 0

    def with_eq(self, f: str, v: int, m: int) -> Cube:
        eq = [x for x in self.eq if x[0] != f] + ([(f, v & m, m)] if m else [])
        return Cube(tuple(sorted(eq)), self.ne)

    def set_exact(self, f: str, v: int) -> Cube:
        eq = tuple(x for x in self.eq if x[0] != f) + ((f, v, _full(f)),)
        return Cube(tuple(sorted(eq)), tuple(x for x in self.ne if x[0] != f))

    def forget(self, *fields: str) -> Cube:
        return Cube(tuple(x for x in self.eq if x[0] not in fields),
                    tuple(x for x in self.ne if x[0] not in fields))

    def empty(self) -> bool:
        for f, xv, xm in self.ne:
            v, m = self.get(f)
            if xm & ~m == 0 and v & xm == xv:
                return True  # the only values left are excluded
        return False


def intersect(c: Cube, match: Iterable[tuple[str, Any]]) -> Cube | None:
    out = c
    for f, raw in match:
        mv, mm = _vm(f, raw)
        v, m = out.get(f)
        if (v ^ mv) & m & mm:
            return None
        out = out.with_eq(f, v | mv, m | mm)
    return None if out.empty() else out


def subtract(c: Cube, match: tuple[tuple[str, Any], ...]) -> list[Cube]:
    """c minus the flow's match: one cube per field of the match (the first field that
    differs), each excluding that field's value."""
    out = []
    prefix = c
    for f, raw in match:
        mv, mm = _vm(f, raw)
        v, m = prefix.get(f)
        if mm & ~m:  # the field is (partly) free here: exclude the flow's pattern
            part = Cube(prefix.eq, tuple(sorted(prefix.ne + ((f, mv, mm),))))
            if not part.empty():
                out.append(part)
        elif v & mm != mv:
            out.append(prefix)  # already outside this field: all of prefix survives
            return out
        nxt = intersect(prefix, ((f, raw),))
        if nxt is None:
            return out
        prefix = nxt
    return out


Status = Literal["isolated", "broken", "unknown"]


@dataclass
class Verdict:
    pair: tuple[str, str]
    status: Status = "isolated"
    witness: list[str] = field(default_factory=list)
    explored: int = 0
    complete: bool = True  # False when the step limit cut the walk short
    reason: str = ""  # why the status is unknown

    @property
    def isolated(self) -> bool:
        return self.status == "isolated"


@dataclass
class _Ctx:
    flows: dict[int, list[Flow]]
    names: dict[int, str]
    peer: dict[PortRef, PortRef]
    targets: dict[PortRef, str]
    ports: dict[int, set[int]]
    steps: int = 0
    exhausted: bool = False  # the step limit was reached
    unknown: str = ""  # the first thing the walk could not model
    written: dict[tuple[int, int], frozenset[str]] = field(default_factory=dict)

    def cannot_model(self, reason: str) -> None:
        self.unknown = self.unknown or reason

    def describe(self, dpid: int, f: Flow) -> str:
        return (f"{self.names.get(dpid)} {_table(f.table)} prio {f.priority} "
                f"cookie {f.cookie:#x} {dict(f.match)}")


def _table(number: int) -> str:
    """'table 30 (policy)' in a witness; a table the pipeline does not declare (a flow
    added by hand) has no name to add."""
    return f"table {number} ({table_name(number)})" if number in TABLE_SPECS else \
        f"table {number}"


def verify(state: NetworkState, flows: dict[int, list[Flow]],
           ports: dict[int, set[int]]) -> list[Verdict]:
    """One verdict per isolation pair of the policy in force, both directions."""
    out = []
    by_prio = {d: sorted(fl, key=lambda f: -f.priority) for d, fl in flows.items()}
    peer = {lk.src: lk.dst for lk in state.links}
    names = {d: sw.name for d, sw in state.switches.items()}
    for a, b in state.policy.isolation:
        v = Verdict((a, b))
        reasons = []
        for src_group, dst_group in ((a, b), (b, a)):
            targets = {bd.port: n for n, bd in state.bindings.items()
                       if dst_group in state.vms[n].groups}
            ctx = _Ctx(by_prio, names, peer, targets, ports)
            for n, bd in sorted(state.bindings.items()):
                if src_group not in state.vms[n].groups:
                    continue
                start = _entering(Cube(), bd.port.port_no)
                found = _walk(ctx, bd.port.dpid, 0, start, [f"{n} sends on "
                              f"{names.get(bd.port.dpid)} port {bd.port.port_no}"], 0, 0)
                if found is not None:
                    v.status, v.witness = "broken", found
                    break
                if ctx.exhausted:
                    break
            v.explored += ctx.steps
            if v.status == "broken":
                break
            if ctx.exhausted:
                v.complete = False
                reasons.append(f"step limit reached: {MAX_STEPS} steps from {src_group} "
                               f"toward {dst_group} without a proof")
            if ctx.unknown:
                reasons.append(f"from {src_group} toward {dst_group}: {ctx.unknown}")
        if v.status != "broken" and reasons:
            v.status, v.reason = "unknown", "; ".join(reasons)
        out.append(v)
    return out


def _entering(c: Cube, port: int) -> Cube:
    """Headers ``c`` arriving on ``port``: the switch starts with clear metadata, registers
    and conntrack state."""
    c = c.set_exact("in_port", port)
    for f in ENTRY_ZERO:
        c = c.set_exact(f, 0)
    return c


def _walk(ctx: _Ctx, dpid: int, table: int, cube: Cube, path: list[str], hops: int,
          depth: int) -> list[str] | None:
    """Push ``cube`` through ``table``: the witness path if part of it reaches a target."""
    if dpid not in ctx.flows:
        ctx.cannot_model(f"the flows of switch {ctx.names.get(dpid, hex(dpid))} were not "
                         "read (not connected)")
        return None
    cubes = [cube]
    for f in ctx.flows[dpid]:
        if f.table != table:
            continue
        rest = []
        for c in cubes:
            ctx.steps += 1
            if ctx.steps > MAX_STEPS:
                ctx.exhausted = True
                return None
            hit = intersect(c, f.match)
            if hit is None:
                rest.append(c)
                continue
            found = _apply(ctx, dpid, f, hit, path + [ctx.describe(dpid, f)], hops, depth)
            if found is not None:
                return found
            rest.extend(subtract(c, f.match))
        cubes = rest
        if not cubes:
            return None
    return None  # table miss: dropped


def _apply(ctx: _Ctx, dpid: int, f: Flow, c: Cube, path: list[str], hops: int, depth: int
           ) -> list[str] | None:
    nxt_table = None
    for ins in f.instructions:
        if ins[0] == "meter":
            continue  # may drop; letting everything through over-approximates
        if ins[0] == "meta":
            v, m = c.get("metadata")
            c = c.with_eq("metadata", (v & ~ins[2]) | (ins[1] & ins[2]), m | ins[2])
        elif ins[0] == "goto":
            nxt_table = ins[1]
        elif ins[0] == "apply":
            for act in ins[1]:
                kind = act[0]
                if kind == "set":
                    c = c.set_exact(act[1], _int(act[1], act[2]))
                elif kind == "push_vlan":
                    c = c.with_eq("vlan_vid", 0x1000, 0x1000)
                elif kind == "pop_vlan":
                    c = c.forget("vlan_vid")
                elif kind == "move":
                    c = c.forget(act[2])
                elif kind == "output":
                    found = _output(ctx, dpid, act[1], c, path, hops)
                    if found is not None:
                        return found
                elif kind in ("ct", "resubmit"):
                    table = act[4] if kind == "ct" else act[1]
                    if kind == "ct" and table == 0xFF:  # no recirculation
                        c = c.forget("ct_state")
                        continue
                    if depth >= MAX_NESTING:
                        ctx.cannot_model(f"resubmits/recirculations nested deeper than "
                                         f"{MAX_NESTING} at {ctx.describe(dpid, f)}")
                        return None
                    inner = c
                    if kind == "ct":  # the tracked copy: any connection state
                        inner = c.forget("ct_state").with_eq("ct_state", CT_TRK, CT_TRK)
                    found = _walk(ctx, dpid, table, inner, path + [f"{kind} to {_table(table)}"],
                                  hops, depth + 1)
                    if found is not None:
                        return found
                    if kind == "ct":  # the original goes on, untracked
                        c = c.forget("ct_state")
                    else:  # changes made in there persist: set those fields free
                        c = c.forget(*_written(ctx, dpid, table))
                else:
                    name = act[1] if kind == "unknown" and len(act) > 1 else kind
                    ctx.cannot_model(f"action {name!r} is not modelled, at "
                                     f"{ctx.describe(dpid, f)}")
                    return None
        else:
            name = ins[1] if ins[0] == "unknown" and len(ins) > 1 else ins[0]
            ctx.cannot_model(f"instruction {name!r} is not modelled, at "
                             f"{ctx.describe(dpid, f)}")
            return None
    if nxt_table is not None:
        return _walk(ctx, dpid, nxt_table, c, path, hops, depth)
    return None


def _written(ctx: _Ctx, dpid: int, table: int) -> frozenset[str]:
    """Every field a flow in ``table``, or in a table it leads to on this switch (goto,
    resubmit, ct recirculation), may write. Kinds the walk does not model are left out:
    a header that reaches one makes the verdict unknown anyway."""
    key = (dpid, table)
    if key in ctx.written:
        return ctx.written[key]
    out: set[str] = set()
    seen, todo = {table}, [table]
    while todo:
        t = todo.pop()
        for f in ctx.flows.get(dpid, []):
            if f.table != t:
                continue
            nxt = []
            for ins in f.instructions:
                if ins[0] == "meta":
                    out.add("metadata")
                elif ins[0] == "goto":
                    nxt.append(ins[1])
                elif ins[0] == "apply":
                    for act in ins[1]:
                        if act[0] == "set":
                            out.add(act[1])
                        elif act[0] == "move":
                            out.add(act[2])
                        elif act[0] in ("push_vlan", "pop_vlan"):
                            out.add("vlan_vid")
                        elif act[0] == "ct":
                            out.add("ct_state")
                            nxt.append(act[4])
                        elif act[0] == "resubmit":
                            nxt.append(act[1])
            for n in nxt:
                if n not in seen and n != 0xFF:
                    seen.add(n)
                    todo.append(n)
    ctx.written[key] = frozenset(out)
    return ctx.written[key]


def _output(ctx: _Ctx, dpid: int, port: int, c: Cube, path: list[str], hops: int
            ) -> list[str] | None:
    in_port = c.get("in_port")[0]
    if port == OFPP_CONTROLLER:
        return None
    if port == OFPP_IN_PORT:
        port = in_port
    outs = sorted(ctx.ports.get(dpid, set()) - {in_port}) if port in (
        OFPP_NORMAL, OFPP_FLOOD, OFPP_ALL) else [port]
    for p in outs:
        ref = PortRef(dpid, p)
        if ref in ctx.targets:
            return path + [f"delivered to {ctx.targets[ref]} on {ctx.names.get(dpid)} port {p}"]
        if ref in ctx.peer:
            if hops >= MAX_HOPS:
                ctx.cannot_model(f"a path longer than {MAX_HOPS} fabric hops, at "
                                 f"{ctx.names.get(dpid)} port {p}")
                continue
            there = ctx.peer[ref]
            found = _walk(ctx, there.dpid, 0, _entering(c, there.port_no), path + [
                f"{ctx.names.get(dpid)} port {p} -> {ctx.names.get(there.dpid)} port "
                f"{there.port_no}"], hops + 1, 0)
            if found is not None:
                return found
    return None
