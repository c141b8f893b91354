"""Isolation proofs over the flows switches actually hold (header-space analysis).

For each isolation pair (A, B) the walk starts from every port of a VM in A with *every*
header that VM could send (all fields wildcard; metadata, registers and conntrack state
as the switch sets them on entry). It pushes that header space through the real tables
in priority order, splitting it at each flow's match, and applies each flow's actions:
set-field, metadata, VLAN push/pop, conntrack (any state afterwards), goto, output.
Conjunctive matches (OVS's ``conjunction(id,k/n)`` action and ``conj_id`` match) are
expanded first, see below.
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
  set-field/move/push_vlan/pop_vlan/dec_ttl/ct/output/resubmit, resubmits nested deeper than
  MAX_NESTING, a path of more than MAX_HOPS fabric hops, a switch whose flows were not
  read, a conjunction it cannot expand: see below). The walk never guesses past these.

Conjunctive matches. Flows whose actions are all ``("conjunction", id, k, n)`` are
clauses, never a result: in a table, conjunction ``id`` completes for a packet that
matches, at the clauses' priority, a flow of every clause k = 1..n and no ordinary flow of
that priority or above; OVS then looks the table up again with ``conj_id=id``, where the
table's ``conj_id=id`` flow decides. Before walking, each switch's clauses are expanded
(:func:`expand`): every combination of one match per clause becomes a virtual flow at the
clauses' priority, its match the intersection of theirs (contradicting combinations are
left out), its instructions and cookie those of the ``conj_id`` flow; witnesses name it
"conjunction <id>". A conjunction with a clause no flow carries never completes and adds
nothing. Clause flows and ``conj_id`` flows are left out of the walk. Virtual flows come
after the ordinary flows of their priority (OVS prefers those), and those of one priority
all apply to a header that matches several (which conjunction OVS takes then is not
defined). What the expansion cannot model becomes a barrier at the flows concerned, and a
header reaching one makes the verdict unknown: clause flows of one id that disagree on n
or priority; one that completes with no ``conj_id`` flow in its table for what it lets
through, or whose ``conj_id`` flow matches part of that only or sits below the clauses
(a ``conj_id`` flow may match other fields, e.g. the address family its action needs,
when every packet the conjunction lets through has them); conjunction actions
mixed with anything else, malformed, or on a flow matching ``conj_id``; a ``conj_id``
match that is not one exact nonzero id (a barrier for the whole table); more than
MAX_VIRTUAL virtual flows on one switch.

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

import functools
import ipaddress
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from .flows import OFPP_CONTROLLER, OFPP_IN_PORT, Action, Flow, Match, conjunctions
from .model import NetworkState, PortRef
from .pipeline import CT_TRK, TABLE_SPECS, table_name

OFPP_NORMAL, OFPP_FLOOD, OFPP_ALL = 0xFFFFFFFA, 0xFFFFFFFB, 0xFFFFFFFC
MAX_STEPS = 200_000
MAX_HOPS = 16
MAX_NESTING = 64  # resubmits and recirculations inside one another (OVS's limit too)
MAX_VIRTUAL = 100_000  # flows the conjunctions of one switch may expand to
ENTRY_ZERO = ("metadata", *(f"reg{i}" for i in range(12)), "ct_state")
WIDTH = {"metadata": 64, "ct_state": 32, "vlan_vid": 13, "eth_src": 48, "eth_dst": 48,
         "arp_sha": 48, "arp_tha": 48, "ipv6_src": 128, "ipv6_dst": 128, "ipv4_src": 32,
         "ipv4_dst": 32, "arp_spa": 32, "arp_tpa": 32, "in_port": 32,
         "ipv6_nd_target": 128, "ipv6_nd_sll": 48, "ipv6_nd_tll": 48, "ipv6_flabel": 20,
         "icmpv6_type": 8, "icmpv6_code": 8, "icmpv4_type": 8, "icmpv4_code": 8,
         "ip_proto": 8, "ip_dscp": 6, "ip_ecn": 2, "arp_op": 16, "eth_type": 16,
         "udp_src": 16, "udp_dst": 16, "tcp_src": 16, "tcp_dst": 16, "nw_ttl": 8,
         "nd_reserved": 32, "nd_options_type": 8}


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

    @functools.cached_property
    def fields(self) -> dict[str, tuple[int, int]]:
        """``eq`` by field (built once per cube, for the quick miss check)."""
        return {name: (v, m) for name, v, m in self.eq}

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
        have = self.fields
        for f, xv, xm in self.ne:
            v, m = have.get(f, (0, 0))
            if xm & ~m == 0 and v & xm == xv:
                return True  # the only values left are excluded
        return False


@functools.lru_cache(maxsize=1 << 18)
def _parsed(match: Match) -> tuple[tuple[str, int, int], ...]:
    """A flow's match as (field, value, mask), parsed once."""
    return tuple((f, *_vm(f, raw)) for f, raw in match)


def misses(c: Cube, match: Match) -> bool:
    """A quick sure miss: a field both constrain, to different values. Most flows of a
    table miss a header this way, and need no intersection (nor count as a step)."""
    have = c.fields
    for f, mv, mm in _parsed(match):
        x = have.get(f)
        if x is not None and (x[0] ^ mv) & x[1] & mm:
            return True
    return False


def intersect(c: Cube, match: Match) -> Cube | None:
    eq = dict(c.fields)
    for f, mv, mm in _parsed(match):
        v, m = eq.get(f, (0, 0))
        if (v ^ mv) & m & mm:
            return None
        m |= mm
        eq[f] = ((v | mv) & m, m)
    out = Cube(tuple(sorted((f, v, m) for f, (v, m) in eq.items() if m)), c.ne)
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


# --- conjunctive matches (the module docstring says how) ---------------------------------
# What the expansion makes is marked by its first instruction, which the walk recognises.

VIRTUAL = "completes conjunction"  # first instruction of a virtual flow: (VIRTUAL, id)
# first instruction of a flow a learn() action on the switch may install: it may be there
# or not, so the headers it matches also go on to lower priorities
LEARNABLE = "may be learned"
BARRIER = "not modelled"  # the instruction of a barrier: (BARRIER, reason)
TOP_PRIORITY = 1 << 16  # above every OpenFlow priority: a barrier for a whole table


def _soft(f: Flow) -> bool:
    """A flow the expansion made: OVS tries these only below the ordinary flows of the
    same priority (a hard match of equal priority wins over a conjunction)."""
    return bool(f.instructions) and f.instructions[0][0] in (VIRTUAL, BARRIER)


def _barrier(f: Flow, reason: str, priority: int | None = None, match: Match | None = None
             ) -> Flow:
    return Flow(f.table, f.priority if priority is None else priority,
                f.match if match is None else match, ((BARRIER, reason),), f.cookie)


def _clause_problem(f: Flow, conj: list[Action]) -> str:
    """Why ``f``, which has conjunction actions, cannot be read as a clause ('' if it
    can). OVS refuses most of these flows; one read back like this means the flow is not
    what it seems, so the walk does not guess what the switch does with it."""
    if len(f.instructions) != 1 or len(conj) != len(f.instructions[0][1]):
        return "conjunction actions mixed with other actions or instructions"
    for a in conj:
        if len(a) != 4 or not all(isinstance(x, int) for x in a[1:]) \
                or not (2 <= a[3] <= 64 and 1 <= a[2] <= a[3]):
            return f"a malformed conjunction action {a!r}"
    if any(name == "conj_id" for name, _ in f.match):
        return "a clause flow that matches on conj_id"
    return ""


def _merge(matches: Iterable[Match]) -> Match | None:
    """The intersection of some matches as one match; None when two contradict (a field
    whose values differ in bits both masks keep)."""
    out: dict[str, Any] = {}
    for m in matches:
        for name, raw in m:
            if out.get(name, raw) == raw:
                out[name] = raw
                continue
            (v1, m1), (v2, m2) = _vm(name, out[name]), _vm(name, raw)
            if (v1 ^ v2) & m1 & m2:
                return None
            value, mask = (v1 & m1) | (v2 & m2), m1 | m2
            out[name] = value if mask == _full(name) else (value, mask)
    return tuple(sorted(out.items()))


@dataclass
class _Conjunction:
    """The clause flows of one conjunction id in one table, and its conj_id flows."""

    table: int
    id: int
    clauses: list[tuple[int, int, Flow]] = field(default_factory=list)  # k, n, flow
    results: list[Flow] = field(default_factory=list)  # flows matching conj_id=id

    def matches(self) -> list[list[Match]]:
        """The distinct matches of each clause k = 1..n (an empty list for a clause no flow
        carries), once the clause flows agree on n."""
        by_k: dict[int, set[Match]] = defaultdict(set)
        for k, _, f in self.clauses:
            by_k[k].add(f.match)
        return [sorted(by_k[k], key=repr) for k in range(1, self.clauses[0][1] + 1)]


def expand(flows: list[Flow]) -> list[Flow]:
    """A switch's flows as the walk reads them: the ordinary flows, plus the virtual flows
    of every conjunction that can complete, plus barriers where the walk cannot model
    what OVS would do. Clause flows and conj_id flows themselves are left out: neither
    ever decides a packet by itself."""
    out: list[Flow] = []
    found: dict[tuple[int, int], _Conjunction] = {}

    def of(table: int, cid: int) -> _Conjunction:
        return found.setdefault((table, cid), _Conjunction(table, cid))

    for f in flows:
        conj = conjunctions(f)
        conj_id = dict(f.match).get("conj_id")
        if conj:
            problem = _clause_problem(f, conj)
            if problem:  # conj_id is left out: the walk does not track it
                out.append(_barrier(f, problem, match=tuple(
                    x for x in f.match if x[0] != "conj_id")))
                continue
            for a in conj:
                of(f.table, a[1]).clauses.append((a[2], a[3], f))
        elif conj_id is None:
            out.append(f)
        elif isinstance(conj_id, int) and not isinstance(conj_id, bool) and conj_id > 0:
            of(f.table, conj_id).results.append(f)
        else:  # it may match ordinary packets (conj_id 0) or several conjunctions
            out.append(_barrier(f, f"a flow at prio {f.priority} matches conj_id "
                                f"{conj_id!r}: only one exact, nonzero id is modelled",
                                TOP_PRIORITY, ()))
    budget = MAX_VIRTUAL
    for key in sorted(found):
        made, used = _expand_one(found[key], budget)
        out.extend(made)
        budget -= used
    return out


def _expand_one(cj: _Conjunction, budget: int) -> tuple[list[Flow], int]:
    """The flows standing for one conjunction, and how many of the switch's MAX_VIRTUAL
    combinations they used."""
    if not cj.clauses:
        return [], 0  # a conj_id flow no conjunction leads to never matches
    ns = sorted({n for _, n, _ in cj.clauses})
    prios = sorted({f.priority for _, _, f in cj.clauses})
    if len(ns) > 1 or len(prios) > 1:
        what = f"n ({ns})" if len(ns) > 1 else f"priority ({prios})"
        return _clause_barriers(cj, f"the clause flows of conjunction {cj.id} disagree on "
                                f"{what}"), 0
    matches = cj.matches()
    count = math.prod(len(m) for m in matches)
    if count == 0:
        return [], 0  # a clause no flow carries: the conjunction never completes
    if count > budget:
        return _clause_barriers(cj, f"conjunction {cj.id} expands to {count} flows, more "
                                f"than the {MAX_VIRTUAL} a switch may have"), 0
    merged = {m for combo in itertools.product(*matches) if (m := _merge(combo)) is not None}
    return [_virtual(cj, m, prios[0]) for m in sorted(merged, key=repr)], count


def _clause_barriers(cj: _Conjunction, reason: str) -> list[Flow]:
    """Every clause flow as a barrier: a packet the conjunction could decide matches at
    least one of them, at its own priority."""
    return [_barrier(f, reason) for _, _, f in cj.clauses]


def _virtual(cj: _Conjunction, m: Match, priority: int) -> Flow:
    """The flow that decides packets in ``m`` once conjunction ``cj.id`` completes: OVS
    looks the table up again with conj_id set, and the highest flow matching wins. The
    conj_id flow wins only if it matches nothing else and is not below the clauses (an
    ordinary flow under the clauses' priority could beat it)."""
    mark = (VIRTUAL, cj.id)
    results = sorted(cj.results, key=lambda f: -f.priority)
    reason, chosen = "", None
    for r in results:  # the highest that matches every packet of m, unless one before
        extra = [x for x in r.match if x[0] != "conj_id"]  # it may match some of them
        if _implies(m, extra):
            chosen = r
            break
        if not _disjoint(m, extra):
            reason = f"a conj_id={cj.id} flow matches only some packets of the conjunction"
            break
    if not results:
        reason = f"conjunction {cj.id} can complete but table {cj.table} has no conj_id flow"
    elif chosen is None and not reason:
        reason = f"no conj_id={cj.id} flow matches what the conjunction lets through"
    elif chosen is not None and chosen.priority < priority:
        reason = (f"the conj_id={cj.id} flow (prio {chosen.priority}) is below its "
                  f"clauses (prio {priority})")
    if reason or chosen is None:
        return Flow(cj.table, priority, m, (mark, (BARRIER, reason)),
                    results[0].cookie if results else 0)
    return Flow(cj.table, priority, m, (mark, *chosen.instructions), chosen.cookie)


def _implies(m: Match, extra: list[tuple[str, Any]]) -> bool:
    """Every packet matching ``m`` matches ``extra`` too."""
    have = dict(m)
    for f, raw in extra:
        if f not in have:
            return False
        (ev, em), (v, mm) = _vm(f, raw), _vm(f, have[f])
        if em & ~mm or (v ^ ev) & em:
            return False
    return True


def _disjoint(m: Match, extra: list[tuple[str, Any]]) -> bool:
    """No packet matches both."""
    have = dict(m)
    for f, raw in extra:
        if f in have:
            (ev, em), (v, mm) = _vm(f, raw), _vm(f, have[f])
            if (v ^ ev) & em & mm:
                return True
    return False


Groups = list[list[Flow]]


def learnable(flows: list[Flow]) -> list[Flow]:
    """The flows the learn() actions among ``flows`` may install, each marked LEARNABLE
    (the port it outputs to is the one its field holds when the action runs: the
    learning flow's in_port, or a constant an earlier action of it sets). One the walk
    cannot resolve is a barrier."""
    out = []
    for f in flows:
        for ins in f.instructions:
            if ins[0] != "apply":
                continue
            for i, a in enumerate(ins[1]):
                if a[:2] == ("unknown", "NXActionLearn"):  # it may install anything
                    out.append(Flow(0, TOP_PRIORITY, (), ((BARRIER, (
                        f"action 'NXActionLearn' is not modelled, at table {f.table} prio "
                        f"{f.priority} cookie {f.cookie:#x}: a learn() of that form may "
                        f"install any flow on this switch"),),),
                        f.cookie))
                    continue
                if a[0] != "learn":
                    continue
                _, table, prio, ck, m, loads, field = a
                port = dict(f.match).get(field) if field == "in_port" else next(
                    (x[2] for x in reversed(ins[1][:i]) if x[:2] == ("set", field)), None)
                if not isinstance(port, int):
                    out.append(Flow(table, prio, m, ((BARRIER, f"learn() at {f.table}/"
                               f"{f.priority} outputs to {field}, not a known port"),), ck))
                    continue
                sets = tuple(("set", k, v) for k, v in loads)
                out.append(Flow(table, prio, m, ((LEARNABLE,), ("apply", (*sets, (
                    "output", port)))), ck))
    return list(dict.fromkeys(out))  # the flows of one port learn the same


def _tables(flows: list[Flow]) -> dict[int, Groups]:
    """A switch's (expanded) flows per table, in the order a lookup tries them: by
    priority, and at one priority the ordinary flows as one group, then the virtual flows
    and barriers as another (OVS takes a conjunction only above the best ordinary match).
    When several flows of a group match a packet (two flows added by hand, a hand-made
    flow beside a compiled one, several conjunctions completing), which one OVS takes is
    not defined, so a header matching several goes through each of them: list order
    must never decide a verdict."""
    out: dict[int, Groups] = {}
    for f in sorted(flows, key=lambda f: (-f.priority, _soft(f))):
        groups = out.setdefault(f.table, [])
        last = groups[-1] if groups else None
        if last and (last[0].priority, _soft(last[0])) == (f.priority, _soft(f)):
            last.append(f)
        else:
            groups.append([f])
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
    tables: dict[int, dict[int, Groups]]  # per switch, per table: see _tables
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
        first = f.instructions[0][0] if f.instructions else None
        conj = f" conjunction {f.instructions[0][1]}" if first == VIRTUAL else (
            " (may be learned)" if first == LEARNABLE else "")
        return (f"{self.names.get(dpid)} {_table(f.table)} prio {f.priority}{conj} "
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
    tables = {d: _tables(expand(fl) + learnable(fl)) for d, fl in flows.items()}
    peer = {lk.src: lk.dst for lk in state.links}
    names = {d: sw.name for d, sw in state.switches.items()}
    for a, b in state.policy.isolation:
        v = Verdict((a, b))
        reasons = []
        for src_group, dst_group in ((a, b), (b, a)):
            targets = {port: n for n, port in _ports(state, dst_group)}
            ctx = _Ctx(tables, names, peer, targets, ports)
            for n, port in _ports(state, src_group):
                start = _entering(Cube(), port.port_no)
                found = _walk(ctx, port.dpid, 0, start, [f"{n} sends on "
                              f"{names.get(port.dpid)} port {port.port_no}"], 0, 0)
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


def _ports(state: NetworkState, group: str) -> list[tuple[str, PortRef]]:
    """Where a group's VMs send and receive: their bound ports and, during a migration,
    their standby ports on the target host (a flow added there by hand is as much a
    hole as one on the bound port)."""
    out = [(n, bd.port) for n, bd in state.bindings.items() if group in state.vms[n].groups]
    out += [(f"{n} (standby)", sb.port) for n, sb in state.standby.items()
            if n in state.vms and group in state.vms[n].groups]
    return sorted(out)


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
    if dpid not in ctx.tables:
        ctx.cannot_model(f"the flows of switch {ctx.names.get(dpid, hex(dpid))} were not "
                         "read (not connected)")
        return None
    cubes = [cube]
    for group in ctx.tables[dpid].get(table, []):
        rest = []
        for c in cubes:
            found, left = _lookup(ctx, dpid, group, c, path, hops, depth)
            if found is not None or ctx.exhausted:
                return found
            rest.extend(left)
        cubes = rest
        if not cubes:
            return None
    return None  # table miss: dropped


def _lookup(ctx: _Ctx, dpid: int, group: list[Flow], c: Cube, path: list[str], hops: int,
            depth: int) -> tuple[list[str] | None, list[Cube]]:
    """Push ``c`` through one group of flows (see _tables): every flow of it that part of
    ``c`` matches applies to that part. The witness path if one reaches a target, and the
    parts of ``c`` no flow of the group matches, which go on to lower priorities."""
    left = [c]
    for f in group:
        if misses(c, f.match):
            continue
        ctx.steps += 1
        if ctx.steps > MAX_STEPS:
            ctx.exhausted = True
            return None, []
        hit = intersect(c, f.match)
        if hit is None:
            continue
        found = _apply(ctx, dpid, f, hit, path + [ctx.describe(dpid, f)], hops, depth)
        if found is not None:
            return found, []
        if f.instructions and f.instructions[0][0] == LEARNABLE:
            continue  # maybe not installed: the headers also go on below it
        left = [r for x in left for r in (
            subtract(x, f.match) if intersect(x, f.match) is not None else [x])]
    return None, left


def _apply(ctx: _Ctx, dpid: int, f: Flow, c: Cube, path: list[str], hops: int, depth: int
           ) -> list[str] | None:
    nxt_table = None
    for ins in f.instructions:
        if ins[0] == "meter":
            continue  # may drop; letting everything through over-approximates
        if ins[0] in (VIRTUAL, LEARNABLE):
            continue  # only marks what the flow is (its witness names it)
        if ins[0] == "meta":
            v, m = c.get("metadata")
            c = c.with_eq("metadata", (v & ~ins[2]) | (ins[1] & ins[2]), m | ins[2])
        elif ins[0] == "goto":
            nxt_table = ins[1]
        elif ins[0] == "apply":
            for act in ins[1]:
                kind = act[0]
                if kind == "set" and act[1] == "vlan_tci":  # NXM: PCP, CFI (present), VID
                    c = c.set_exact("vlan_vid", act[2] & 0x1FFF)
                elif kind == "set":
                    c = c.set_exact(act[1], _int(act[1], act[2]))
                elif kind == "push_vlan":
                    c = c.with_eq("vlan_vid", 0x1000, 0x1000)
                elif kind == "pop_vlan":
                    c = c.forget("vlan_vid")
                elif kind == "move":
                    c = c.forget(act[2])
                elif kind == "dec_ttl":  # (a TTL it would expire is matched above it)
                    c = c.forget("nw_ttl")
                elif kind == "learn":
                    continue  # changes no header; what it installs is in the tables
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
        elif ins[0] == BARRIER:
            ctx.cannot_model(f"{ins[1]}, at {ctx.describe(dpid, f)}")
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
        for f in itertools.chain.from_iterable(ctx.tables.get(dpid, {}).get(t, [])):
            nxt = []
            for ins in f.instructions:
                if ins[0] == "meta":
                    out.add("metadata")
                elif ins[0] == "goto":
                    nxt.append(ins[1])
                elif ins[0] == "apply":
                    for act in ins[1]:
                        if act[0] == "set":
                            out.add("vlan_vid" if act[1] == "vlan_tci" else act[1])
                        elif act[0] == "move":
                            out.add(act[2])
                        elif act[0] == "dec_ttl":
                            out.add("nw_ttl")
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
