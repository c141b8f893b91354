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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .flows import OFPP_CONTROLLER, OFPP_IN_PORT, Flow
from .model import NetworkState, PortRef

OFPP_NORMAL, OFPP_FLOOD, OFPP_ALL = 0xFFFFFFFA, 0xFFFFFFFB, 0xFFFFFFFC
CT_TRK = 0x20
MAX_STEPS = 200_000
MAX_HOPS = 16
ENTRY_ZERO = ("metadata", "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7",
              "ct_state")
WIDTH = {"metadata": 64, "ct_state": 32, "vlan_vid": 13, "eth_src": 48, "eth_dst": 48,
         "arp_sha": 48, "arp_tha": 48, "ipv6_src": 128, "ipv6_dst": 128, "ipv4_src": 32,
         "ipv4_dst": 32, "arp_spa": 32, "arp_tpa": 32, "in_port": 32}


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

    def forget(self, f: str) -> Cube:
        return Cube(tuple(x for x in self.eq if x[0] != f),
                    tuple(x for x in self.ne if x[0] != f))

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


@dataclass
class Verdict:
    pair: tuple[str, str]
    isolated: bool
    witness: list[str] = field(default_factory=list)
    explored: int = 0
    complete: bool = True


@dataclass
class _Ctx:
    flows: dict[int, list[Flow]]
    names: dict[int, str]
    peer: dict[PortRef, PortRef]
    targets: dict[PortRef, str]
    ports: dict[int, set[int]]
    steps: int = 0


def verify(state: NetworkState, flows: dict[int, list[Flow]],
           ports: dict[int, set[int]]) -> list[Verdict]:
    """One verdict per isolation pair of the policy in force, both directions."""
    out = []
    by_prio = {d: sorted(fl, key=lambda f: -f.priority) for d, fl in flows.items()}
    peer = {lk.src: lk.dst for lk in state.links}
    names = {d: sw.name for d, sw in state.switches.items()}
    for a, b in state.policy.isolation:
        v = Verdict((a, b), True)
        for src_group, dst_group in ((a, b), (b, a)):
            targets = {bd.port: n for n, bd in state.bindings.items()
                       if dst_group in state.vms[n].groups}
            ctx = _Ctx(by_prio, names, peer, targets, ports)
            for n, bd in sorted(state.bindings.items()):
                if src_group not in state.vms[n].groups or bd.port.dpid not in flows:
                    continue
                start = _entering(Cube(), bd.port.port_no)
                found = _walk(ctx, bd.port.dpid, 0, start, [f"{n} sends on "
                              f"{names.get(bd.port.dpid)} port {bd.port.port_no}"], 0)
                v.explored += ctx.steps
                if found is not None:
                    v.isolated, v.witness = False, found
                    break
                if ctx.steps > MAX_STEPS:
                    v.complete = False
            if not v.isolated:
                break
        out.append(v)
    return out


def _entering(c: Cube, port: int) -> Cube:
    """Headers ``c`` arriving on ``port``: the switch starts with clear metadata, registers
    and conntrack state."""
    c = c.set_exact("in_port", port)
    for f in ENTRY_ZERO:
        c = c.set_exact(f, 0)
    return c


def _walk(ctx: _Ctx, dpid: int, table: int, cube: Cube, path: list[str], hops: int
          ) -> list[str] | None:
    cubes = [cube]
    for f in ctx.flows.get(dpid, []):
        if f.table != table:
            continue
        rest = []
        for c in cubes:
            ctx.steps += 1
            if ctx.steps > MAX_STEPS:
                return None
            hit = intersect(c, f.match)
            if hit is None:
                rest.append(c)
                continue
            step = (f"{ctx.names.get(dpid)} table {f.table} prio {f.priority} "
                    f"cookie {f.cookie:#x} {dict(f.match)}")
            found = _apply(ctx, dpid, f, hit, path + [step], hops)
            if found is not None:
                return found
            rest.extend(subtract(c, f.match))
        cubes = rest
        if not cubes:
            return None
    return None  # table miss: dropped


def _apply(ctx: _Ctx, dpid: int, f: Flow, c: Cube, path: list[str], hops: int
           ) -> list[str] | None:
    nxt_table = None
    for ins in f.instructions:
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
                elif kind == "ct":
                    if act[4] != 0xFF:  # recirculate: any connection state afterwards
                        c = c.forget("ct_state").with_eq("ct_state", CT_TRK, CT_TRK)
                        found = _walk(ctx, dpid, act[4], c, path, hops)
                        if found is not None:
                            return found
                        return None
                elif kind == "output":
                    found = _output(ctx, dpid, act[1], c, path, hops)
                    if found is not None:
                        return found
                elif kind == "unknown":
                    # an action we cannot model: assume it may deliver anywhere
                    found = _output(ctx, dpid, OFPP_ALL, c, path, hops)
                    if found is not None:
                        return found
    if nxt_table is not None:
        return _walk(ctx, dpid, nxt_table, c, path, hops)
    return None


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
        if ref in ctx.peer and hops < MAX_HOPS:
            there = ctx.peer[ref]
            found = _walk(ctx, there.dpid, 0, _entering(c, there.port_no), path + [
                f"{ctx.names.get(dpid)} port {p} -> {ctx.names.get(there.dpid)} port "
                f"{there.port_no}"], hops + 1)
            if found is not None:
                return found
    return None

