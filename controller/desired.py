"""What every switch should hold, kept as fragments by owner and recomputed incrementally.

A switch's flows are the union of fragments: the skeleton, its fabric, the policy (one
object shared by all switches), one per VM that matters there (local, standby or remote
in a segment present there) and one per segment present there (its flood flows).

:func:`build` computes all of them from a :class:`NetworkState`. :func:`rebuild` takes
the previous result and a new state: when only VMs changed (bound, moved, announced,
added, removed: every event a running network sees) it recomputes the fragments of those
VMs and of their segments, and the change per switch is taken over those fragments alone.
A move thus costs O(the VM's flows + its segment's flood lists), never O(network).
Changes that reach every switch (switches, links, fabric ports, group numbers, the
group slots in use) rebuild all
fragments; the compiler's memoised builders keep that cheap.
"""

from __future__ import annotations

import functools
import gc
import itertools
import operator
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import bridged, compiler, external, routing, topology, uplink
from .flows import Flow
from .model import NetworkState
from .reconcile import FlowDiff, diff, split_changes

Receiver = tuple[int, tuple[int, ...]]
Key = tuple  # ("base",) ("fabric",) ("policy",) ("vm", name) ("seg", segment id)
# ("bridge", segment id): a bridged segment's uplink flows
BASE, FABRIC, POLICY = ("base",), ("fabric",), ("policy",)


@dataclass(frozen=True)
class Fragment:
    """Flows with the inputs they were built from: same inputs, same fragment (object)."""

    inputs: tuple
    flows: tuple[Flow, ...]

    @functools.cached_property
    def by_table(self) -> Counter[int]:
        return Counter(f.table for f in self.flows)


_EMPTY = Fragment((), ())
_GENERATIONS = itertools.count(1)
_NONE: Counter[int] = Counter()
PAUSE_COLLECTOR_FROM = 1000  # VMs: from here a full build pauses the cycle collector


@dataclass(frozen=True)
class _Foot:
    """Where one VM matters: its segment present on ``here``, placed (bound to a known
    switch) on ``local``."""

    segment: int
    local: int | None
    here: frozenset[int]
    slots: tuple[int, ...] = ()  # its group slots
    groups: tuple[str, ...] = ()
    receiver: Receiver = (0, ())  # (VM tag, its group registers) in
    # its segment's flood (every register in use, so the previous receiver's is overwritten)


@dataclass
class _Index:
    """Where VMs are, so a change finds what it touches without looking at every VM."""

    foot: dict[str, _Foot] = field(default_factory=dict)
    present: dict[int, Counter[int]] = field(default_factory=dict)  # switch -> segment -> VMs
    placed: dict[int, set[str]] = field(default_factory=dict)  # segment -> placed VMs
    # (switch, segment) -> the receivers of its flood there: VM -> (tag, group registers)
    local: dict[tuple[int, int], dict[str, Receiver]] = field(default_factory=dict)
    hosts: dict[int, Counter[int]] = field(default_factory=dict)  # segment -> switch -> VMs
    members: Counter[str] = field(default_factory=Counter)  # group -> VMs in it
    sizes: Counter[int] = field(default_factory=Counter)  # slots a VM fills -> VMs
    owned: set[tuple] = field(default_factory=set)  # containers this copy made its own
    # during one build: a VM's fragment by its inputs, shared by every switch that sees
    # the VM alike (the same label and hop toward it)
    shared: dict[tuple, Fragment] = field(default_factory=dict)

    def copy(self) -> _Index:
        """Shallow: a container a change edits is copied the first time it is edited, so
        the index it was copied from never changes."""
        return _Index(dict(self.foot), dict(self.present), dict(self.placed), dict(self.local),
                      dict(self.hosts), Counter(self.members), Counter(self.sizes))

    def slots_in_use(self) -> int:
        """The most groups a VM is in (at least one), as compiler.slots_in_use."""
        return max((s for s, n in self.sizes.items() if n), default=1) or 1

    def populated(self) -> frozenset[str]:
        """The groups with a VM (the policy allows traffic within these)."""
        return frozenset(g for g, n in self.members.items() if n)

    def _own(self, table: dict, key: object, make: type) -> Any:
        """``table[key]``, made this index's own (copied once) before it is edited."""
        tag = (id(table), key)
        if tag not in self.owned:
            self.owned.add(tag)
            table[key] = make(table.get(key, ()))
        return table[key]

    def segments(self, dpid: int) -> set[int]:
        """The segments present on ``dpid``."""
        return _counted(self.present.get(dpid, _NONE))

    def holds(self, dpid: int, seg: int) -> bool:
        """Whether ``seg`` is present on ``dpid`` (without making the set)."""
        return self.present.get(dpid, _NONE)[seg] > 0

    def reaches(self, dpid: int, segs: tuple[int, ...]) -> bool:
        """Whether any of ``segs`` (a routed VM's domain) is present on ``dpid``."""
        here = self.present.get(dpid, _NONE)
        return any(here[s] > 0 for s in segs)

    def hosting(self, seg: int) -> set[int]:
        """The switches with a placed VM of ``seg``."""
        return _counted(self.hosts.get(seg, _NONE))

    def add(self, name: str, f: _Foot | None, sign: int) -> None:
        """Count ``f`` in (sign 1) or out (sign -1), copying what it edits."""
        if f is None:
            return
        for g in f.groups:
            self.members[g] += sign
        self.sizes[len(f.slots)] += sign
        for d in f.here:
            self._own(self.present, d, Counter)[f.segment] += sign
        if f.local is None:
            return
        placed = self._own(self.placed, f.segment, set)
        receivers = self._own(self.local, (f.local, f.segment), dict)
        if sign > 0:
            placed.add(name)
            receivers[name] = f.receiver
        else:
            placed.discard(name)
            receivers.pop(name, None)
        self._own(self.hosts, f.segment, Counter)[f.local] += sign


class Desired(Mapping[int, frozenset[Flow]]):
    """The desired flows of every switch (a mapping dpid -> flows, each switch's set made
    when asked), and the change from the result it was rebuilt from."""

    def __init__(self, state: NetworkState, hops: dict[int, dict[int, int]], index: _Index,
                 frags: dict[int, dict[Key, Fragment]], slots: int = 1) -> None:
        self.state, self.hops, self.index, self.frags = state, hops, index, frags
        self.slots = slots  # group slots in use (compiler.slots_in_use)
        self.gen = next(_GENERATIONS)
        self.parent: int | None = None  # gen of the result ``changes`` are relative to
        self.changes: dict[int, FlowDiff] = {}
        # learned flows of moves that ended since the parent: deleted on every switch
        self.forget: tuple[Flow, ...] = ()
        self._flows: dict[int, frozenset[Flow]] = {}

    def __getitem__(self, dpid: int) -> frozenset[Flow]:
        out = self._flows.get(dpid)
        if out is None:
            frags = self.frags[dpid]
            out = frozenset(itertools.chain.from_iterable(f.flows for f in frags.values()))
            self._flows[dpid] = out
        return out

    def __iter__(self) -> Iterator[int]:
        return iter(self.frags)

    def __contains__(self, dpid: object) -> bool:
        return dpid in self.frags  # without making the switch's set

    def __len__(self) -> int:
        return len(self.frags)

    def size(self, dpid: int) -> int:
        return sum(len(f.flows) for f in self.frags[dpid].values())

    def count_by_table(self, dpid: int) -> dict[int, int]:
        """Flows per table on ``dpid`` (summed over fragments: no flow set is made)."""
        out: Counter[int] = Counter()
        for frag in self.frags[dpid].values():
            out.update(frag.by_table)
        return dict(sorted(out.items()))


def compile_network(state: NetworkState) -> dict[int, frozenset[Flow]]:
    """Desired flows for every switch in ``state.switches`` (a full build)."""
    return dict(build(state))


@contextmanager
def _collector_paused() -> Iterator[None]:
    """The compiler makes no reference cycles, only a great many long-lived tuples, which
    the cycle collector would walk again and again while a build runs (a third of a cold
    build at 5,000 VMs) and at every full collection after. So it pauses during a build,
    and what is alive after it is frozen (left out of collections) until the next build,
    once what had died is collected."""
    enabled = gc.isenabled()
    gc.disable()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.collect()  # what died before is freed, never frozen with the living
        gc.freeze()
        if enabled:
            gc.enable()


def build(state: NetworkState) -> Desired:
    """Every fragment of every switch, from nothing."""
    if len(state.vms) < PAUSE_COLLECTOR_FROM:
        return _build(state)  # milliseconds: the collector does not matter
    with _collector_paused():
        return _build(state)


def _build(state: NetworkState) -> Desired:
    compiler.rotate_caches()
    hops = topology.next_hops(state.links, set(state.switches))
    ix = _Index()
    here: dict[int, set[str]] = {}
    k = compiler.slots_in_use(state)
    for name in sorted(state.vms):
        f = _footprint(state, name, k)
        if f is None:
            continue
        ix.foot[name] = f
        ix.add(name, f, 1)
        for d in f.here:
            here.setdefault(d, set()).add(name)
    policy = Fragment((), _policy_flows(state, k, ix.populated()))
    vlans = _bridged_vlans(state)
    members = _members(state, vlans)
    frags = {}
    for dpid in state.switches:
        own = {BASE: Fragment((), compiler.base_flows()), POLICY: policy,
               FABRIC: _fabric(state, hops, dpid)}
        segs = ix.segments(dpid)
        reached = {r for s in segs for r in routing.reach(state, s)}
        for n in here.get(dpid, set()).union(*(ix.placed.get(s, ()) for s in reached)):
            _put(own, ("vm", n), _vm(state, hops, ix, dpid, n, None, share=True))
        for s in segs:
            _put(own, ("seg", s), _segment(state, hops, ix, dpid, s, None))
            if s in vlans:
                _put(own, ("bridge", s), _bridge(state, ix, dpid, s, None, members))
        frags[dpid] = own
    ix.owned.clear()
    ix.shared.clear()
    return Desired(state, hops, ix, frags, k)


def rebuild(prev: Desired | None, state: NetworkState) -> Desired:
    """The desired flows for ``state``, recomputing only what changed since ``prev``
    (built from the state before). ``changes`` holds each switch's change from ``prev``."""
    out: Desired | None = None
    if prev is not None and not _global_change(prev.state, state):
        with compiler.scratch():
            out = _rebuild(prev, state)
    if out is None:
        out = build(state)
        if prev is not None:
            out.parent = prev.gen
            out.changes = {d: diff(out[d], prev[d]) for d in out if d in prev.frags}
    if prev is not None:
        out.forget = tuple(compiler.learned_flow(prev.state.vms[n])
                           for n, sb in prev.state.standby.items()
                           if n in prev.state.vms and state.standby.get(n) != sb)
        if out.forget:
            out.changes = {d: FlowDiff(c.add, (*c.delete, *out.forget), c.replaced)
                           for d, c in out.changes.items()}
    return out


def _rebuild(prev: Desired, state: NetworkState) -> Desired | None:
    """Only VMs (and the policy) changed: their fragments and their segments'. None when
    the group slots in use changed: every VM's flows do then."""
    touched: dict[int, set[Key]] = {d: set() for d in state.switches}
    ix = prev.index.copy()
    changed = _changed_vms(prev.state, state)
    segs: set[int] = set()
    for name in changed:
        old, new = ix.foot.get(name), _footprint(state, name, prev.slots)
        ix.add(name, old, -1)
        ix.add(name, new, 1)
        if new is None:
            ix.foot.pop(name, None)
        else:
            ix.foot[name] = new
        segs |= {f.segment for f in (old, new) if f is not None}
    if ix.slots_in_use() != prev.slots:
        return None
    for s in segs:  # another host has (or no longer has) the segment: every flood list
        if prev.index.hosting(s) != ix.hosting(s):
            for keys in touched.values():
                keys.add(("seg", s))
    for name in changed:  # the hosts whose own receivers changed
        for f in (prev.index.foot.get(name), ix.foot.get(name)):
            if f is not None and f.local in touched:
                touched[f.local].add(("seg", f.segment))
    for d, keys in touched.items():
        keys.update(("vm", n) for n in changed)
        before, now = prev.index.segments(d), ix.segments(d)
        for s in segs:  # the segment came or went here: its flood, its VMs (remote) with it,
            if (s in before) != (s in now):  # and those of every segment its router joins
                keys.add(("seg", s))
                for r in routing.reach(state, s):
                    keys.update(("vm", n) for n in ix.placed.get(r, set()) | prev.index.placed.get(
                        r, set()))
    ix.owned.clear()
    frags = {d: dict(f) for d, f in prev.frags.items()}
    policy = _policy(prev, state, ix, changed)
    uplinks = _uplinks_may_differ(prev.state, state)
    vlans = _bridged_vlans(state)
    for d, keys in touched.items():
        if uplinks and external.host_out(state, d) != external.host_out(prev.state, d):
            frags[d][FABRIC] = _fabric(state, prev.hops, d)  # its uplink, a gateway's MAC
            keys.add(FABRIC)
            keys.update(k for s in vlans for k in (("seg", s), ("bridge", s)))
        keys.update(("bridge", s) for s in segs if s in vlans)  # a VM of it changed
    members = _members(state, vlans) if any(k[0] == "bridge" for keys in touched.values()
                                            for k in keys) else {}
    for d, keys in touched.items():
        own = frags[d]
        own[POLICY] = policy
        for key in keys:
            if key in (FABRIC, POLICY):
                continue
            kind, what = key
            if kind == "bridge":
                _put(own, key, _bridge(state, ix, d, what, own.get(key), members))
                continue
            make = _vm if kind == "vm" else _segment
            _put(own, key, make(state, prev.hops, ix, d, what, own.get(key)))
        if policy is not prev.frags[d][POLICY]:
            keys.add(POLICY)
    out = Desired(state, prev.hops, ix, frags, prev.slots)
    out.parent = prev.gen
    out.changes = {d: _delta(prev.frags[d], frags[d], keys) for d, keys in touched.items()}
    return out


def _uplinks_may_differ(a: NetworkState, b: NetworkState) -> bool:
    """Whether any switch's way out may have changed (else a VM event costs no look at
    every switch's uplink): the policy, a host's OVSDB ports, a gateway's MAC."""
    return bool(b.policy.uplinks or a.policy.uplinks) and (
        a.policy is not b.policy or a.port_names != b.port_names
        or a.gateway_macs != b.gateway_macs
        or a.gateway6_macs != b.gateway6_macs or a.segment_tags != b.segment_tags
        or a.router_numbers != b.router_numbers)


def _counted(c: Counter[int]) -> set[int]:
    """The keys a count still holds (counts go to zero, they are not removed)."""
    return {k for k, n in c.items() if n}


def _put(own: dict[Key, Fragment], key: Key, frag: Fragment) -> None:
    if frag.flows:
        own[key] = frag
    else:
        own.pop(key, None)


def _delta(old: dict[Key, Fragment], new: dict[Key, Fragment], keys: Iterable[Key]
           ) -> FlowDiff:
    """The change between two versions of one switch's fragments that differ at most in
    ``keys``."""
    was: set[Flow] = set()
    now: set[Flow] = set()
    for key in keys:
        a, b = old.get(key, _EMPTY), new.get(key, _EMPTY)
        if a is not b:
            was.update(a.flows)
            now.update(b.flows)
    return split_changes(now - was, was - now)


def _global_change(a: NetworkState, b: NetworkState) -> bool:
    """A change every switch must see in full (the per-VM fragments depend on these)."""
    return (a.switches != b.switches or a.links != b.links or a.fabric != b.fabric
            or a.group_bits != b.group_bits or routing.domains(a) != routing.domains(b)
            or _bridged_vlans(a) != _bridged_vlans(b))


def _bridged_vlans(state: NetworkState) -> dict[int, int]:
    """Segment tag -> uplink VLAN of each bridged segment."""
    tags = state.segment_tags
    return {tags[n]: v for n, v in state.policy.bridged.items() if n in tags}


def _members(state: NetworkState, vlans: dict[int, int]) -> dict[int, tuple]:
    """Each bridged segment's VMs, as its uplinks' anti-spoofing needs them (one pass
    over the VMs, only where a bridged segment exists)."""
    if not vlans:
        return {}
    by_seg: dict[int, list] = {s: [] for s in vlans}
    for vm in state.vms.values():
        if vm.segment_id in by_seg:
            by_seg[vm.segment_id].append(vm)
    return {s: bridged.members(vms) for s, vms in by_seg.items()}


def _uplink_port(state: NetworkState, dpid: int) -> int | None:
    out = external.host_out(state, dpid)
    return None if out is None else out.port


def _bridge(state: NetworkState, ix: _Index, dpid: int, seg: int, old: Fragment | None,
            members: dict[int, tuple]) -> Fragment:
    """A bridged segment's uplink flows on ``dpid`` (where it is present and the host has
    an uplink)."""
    vlan = _bridged_vlans(state).get(seg)
    port = _uplink_port(state, dpid) if vlan is not None and ix.holds(dpid, seg) else None
    if vlan is None or port is None:
        return _EMPTY
    inputs = (vlan, port, members.get(seg, ()))
    if old is not None and old.inputs == inputs:
        return old
    return Fragment(inputs, tuple(bridged.bridged_flows(seg, *inputs)))


def _changed_vms(a: NetworkState, b: NetworkState) -> set[str]:
    """VMs whose registration, binding, standby port or announced target differs."""
    out: set[str] = set()
    for x, y in ((a.vms, b.vms), (a.bindings, b.bindings), (a.standby, b.standby)):
        if x is y or x == y:  # C speed; the values compare by identity first
            continue
        out |= x.keys() ^ y.keys()
        # entries that are not the same object (C-level map; unchanged ones are shared)
        maybe = itertools.compress(y.keys(), map(operator.is_not, map(x.get, y), y.values()))
        out.update(k for k in maybe if k in x and x[k] != y[k])
    if a.expected != b.expected:
        out.update(k for k in a.expected.keys() | b.expected.keys()
                   if a.expected.get(k) != b.expected.get(k))
    return out


def _policy(prev: Desired, state: NetworkState, ix: _Index, changed: set[str]) -> Fragment:
    """The shared policy fragment: rebuilt when the policy changed, when a VM it names
    (by name or MAC) changed, or when a group got its first VM or lost its last."""
    old = next(iter(prev.frags.values()))[POLICY] if prev.frags else _EMPTY
    if state.policy is prev.state.policy and not (changed and _names_vms(state)) \
            and not _population_changed(prev.index, ix, changed) \
            and state.segment_tags == prev.state.segment_tags:
        return old
    flows = _policy_flows(state, prev.slots, ix.populated())
    return old if flows == old.flows else Fragment((), flows)


def _policy_flows(state: NetworkState, slots: int, populated: frozenset[str]
                  ) -> tuple[Flow, ...]:
    """The fragment every switch shares: the rules and isolation pairs, and the routers'
    flows (gateway answers, the way into ROUTE, unused addresses)."""
    return (*compiler.policy_flows(state, slots, populated), *compiler.router_flows(state))


def _population_changed(a: _Index, b: _Index, changed: set[str]) -> bool:
    """Whether a group of a changed VM became empty or stopped being empty."""
    return any((a.members[g] > 0) != (b.members[g] > 0)
               for n in changed for f in (a.foot.get(n), b.foot.get(n)) if f is not None
               for g in f.groups)


def _names_vms(state: NetworkState) -> bool:
    return any(e.kind in ("vm", "mac") for r in state.policy.rules for e in (r.src, r.dst))


def _footprint(state: NetworkState, name: str, k: int) -> _Foot | None:
    vm = state.vms.get(name)
    if vm is None:
        return None
    b = state.bindings.get(name)
    local = b.port.dpid if b is not None and b.port.dpid in state.switches else None
    sb = state.standby.get(name)
    here = {local, sb.port.dpid if sb is not None and b is not None else None,
            state.expected.get(name)}
    slots = compiler.slots_of(state, vm)
    return _Foot(vm.segment_id, local, frozenset(d for d in here if d is not None), slots,
                 vm.groups, (vm.id, compiler.packed(slots, compiler.regs_in_use(k))))


def _fabric(state: NetworkState, hops: dict[int, dict[int, int]], dpid: int) -> Fragment:
    """The switch's own ports: fabric (and transit), and its uplink."""
    out = external.host_out(state, dpid)
    return Fragment((), (*compiler.fabric_flows(
        dpid, state, hops.get(dpid, {}), state.fabric.get(dpid, frozenset())),
        *(uplink.uplink_flows(out) if out is not None else ())))


def _vm(state: NetworkState, hops: dict[int, dict[int, int]], ix: _Index, dpid: int,
        name: str, old: Fragment | None, share: bool = False) -> Fragment:
    """One VM's flows on ``dpid``: local port security and delivery, or its standby
    port, or (its segment present here) how to recognise and reach it over the fabric.
    ``share`` (a full build): one fragment for every switch with the same inputs (a
    rebuild touches a few switches, where hashing the inputs costs more than it saves)."""
    vm, f = state.vms.get(name), ix.foot.get(name)
    if vm is None or f is None:
        return _EMPTY
    slots = f.slots
    dom = routing.domains(state).get(f.segment)
    routed = dom.routed if dom is not None else None
    b = state.bindings[name] if f.local is not None else None
    sb = state.standby.get(name) if dpid in f.here and name in state.bindings else None
    standby = sb.port.port_no if sb is not None and sb.port.dpid == dpid else None
    where: tuple = ()
    if b is not None and f.local == dpid:
        where = ("local", b.port.port_no)
    elif b is not None and (ix.holds(dpid, f.segment) if dom is None
                            else ix.reaches(dpid, dom.tags)):
        label = state.switches[b.port.dpid].label
        where = ("remote", label, hops.get(dpid, {}).get(b.port.dpid))
    toward = _toward_standby(state, hops, name, dpid) if where else None
    inputs = (vm, slots, where, standby, toward, routed)
    if old is not None and old.inputs == inputs:
        return old  # the very object: no diff work
    if not share:
        return _vm_fragment(inputs)
    if (done := ix.shared.get(inputs)) is not None:
        return done
    ix.shared[inputs] = done = _vm_fragment(inputs)
    return done


def _vm_fragment(inputs: tuple) -> Fragment:
    vm, slots, where, standby, toward, routed = inputs
    flows: tuple[Flow, ...] = ()
    if where:
        flows = ((compiler.local_vm_flows(vm, where[1], slots, False, routed)
                  if where[0] == "local"
                  else compiler.remote_vm_flows(vm, where[1], where[2], slots, routed))
                 + compiler.arp_responder_flows(vm) + compiler.nd_resolver_flows(vm)
                 + compiler.dst_lookup_flows(vm, slots))
        if routed is not None:
            flows += compiler.route_flows(vm, slots, routed)
    if standby is not None:  # (its flows may repeat the VM's own: keep each once)
        flows = tuple(dict.fromkeys(
            flows + compiler.local_vm_flows(vm, standby, slots, True, routed)))
    if toward is not None:
        flows += compiler.standby_far_flows(vm, toward[0], toward[1], slots, routed)
    return Fragment(inputs, flows)


def _toward_standby(state: NetworkState, hops: dict[int, dict[int, int]], name: str,
                    dpid: int) -> tuple[int, int] | None:
    """(label, port toward it) of the host a bound VM is migrating to, seen from another
    host that has the VM's flows: where its datapath switch-over points."""
    sb = state.standby.get(name)
    if sb is None or sb.port.dpid == dpid or sb.port.dpid not in state.switches:
        return None
    hop = hops.get(dpid, {}).get(sb.port.dpid)
    return None if hop is None else (state.switches[sb.port.dpid].label, hop)


def _segment(state: NetworkState, hops: dict[int, dict[int, int]], ix: _Index, dpid: int,
             seg: int, old: Fragment | None) -> Fragment:
    """The segment's flood flows on ``dpid``: its local receivers, one copy per other
    host with a VM of it."""
    if not ix.holds(dpid, seg):
        return _EMPTY
    receivers = tuple(sorted(ix.local.get((dpid, seg), {}).values()))
    mine = hops.get(dpid, {})
    far = sorted(d for d in ix.hosting(seg) if d != dpid and d in mine)
    targets = tuple((state.switches[d].label, mine[d]) for d in far)
    vlan = _bridged_vlans(state).get(seg) if state.policy.bridged else None
    port = _uplink_port(state, dpid) if vlan is not None else None
    out = bridged.uplink_copy(port, vlan) if port is not None and vlan is not None else ()
    inputs = (receivers, targets, out)
    if old is not None and old.inputs == inputs:
        return old
    return Fragment(inputs, compiler.segment_flood_flows(seg, receivers, targets, out))
