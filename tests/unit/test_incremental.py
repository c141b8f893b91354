"""Incremental compilation: after any sequence of events, the rebuilt result equals a full
build of the same state, and the change it reports is exactly the diff between the two
full results (so a switch programmed with it holds what a full compile wants)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfence.controller import compiler, desired, policy
from vfence.controller.flows import Owner, cookie_owner
from vfence.controller.model import VM, Binding, NetworkState, PortRef
from vfence.controller.reconcile import apply_diff, diff

from .netfixtures import leaf_spine

HOSTS = [0x101, 0x102, 0x103]
NAMES = [f"vm{i}" for i in range(1, 9)]
GROUPS = ["web", "db", "ops", "guest"]
DOC = {
    "segments": [{"name": "s1", "subnet": "10.0.1.0/24", "gateway": "10.0.1.254"},
                 {"name": "s2", "subnet": "10.0.2.0/24", "gateway": "10.0.2.254"},
                 {"name": "s3", "subnet": "10.0.3.0/24", "gateway": "10.0.3.254"}],
    "routers": [{"name": "r1", "segments": ["s1", "s2"]}],
    "groups": [{"name": g} for g in GROUPS],
    "vms": [{"name": "vm1", "mac": "02:00:00:00:00:01", "ips": ["10.0.1.1"], "segment": "s1",
             "groups": ["db"]}],
    "rules": [
        {"name": "web-db", "from": "web", "to": "db", "protocol": "tcp", "ports": "5432",
         "action": "allow"},
        {"name": "to-vm1", "from": "ops", "to": "vm1", "action": "allow"},
        {"name": "no-mac", "from": "any", "to": "02:00:00:00:00:02", "action": "deny"},
    ],
    # pairs sharing groups: isolation clause flows shared by pairs
    "isolation": [["web", "ops"], ["guest", "ops"], ["guest", "web"]],
    "defaults": {"intra_group": "allow", "inter_group": "deny"},
}


def _vm(i: int, seg: int, groups: tuple[str, ...], extra_ip: bool) -> VM:
    ips = (f"10.0.{seg}.{i}",) + ((f"fd00::{i}",) if extra_ip else ())
    return VM(i, f"vm{i}", f"02:00:00:00:00:{i:02x}", ips, seg, f"s{seg}", groups)


def _start() -> NetworkState:
    """Six VMs of two segments bound on three hosts (a segment is on two hosts only),
    two names free."""
    s = leaf_spine(3, 2)
    s.policy = policy.parse(DOC)
    s.router_numbers = {"r2": 0, "r1": 1}  # the registry's: by name, whatever the order
    s.group_bits = {g: i for i, g in enumerate(GROUPS)}
    s.segment_tags = {"s1": 1}  # s2's tag comes with an event (a segment named first)
    for i in range(1, 7):
        n = f"vm{i}"
        s.vms[n] = _vm(i, 1 + i % 2, (GROUPS[i % 3],), i == 4)
        s.bindings[n] = Binding(n, PortRef(HOSTS[i % 3] if i % 2 else HOSTS[i % 2], 2 + i))
    return s


name = st.sampled_from(NAMES)
host = st.sampled_from(HOSTS)
port = st.integers(3, 5)
events = st.one_of(
    st.tuples(st.just("register"), name, st.integers(1, 3),
              st.lists(st.sampled_from(GROUPS), max_size=3, unique=True).map(tuple),
              st.booleans()),
    st.tuples(st.just("forget"), name),
    st.tuples(st.just("bind"), name, host, port),
    st.tuples(st.just("unbind"), name),
    st.tuples(st.just("standby"), name, host, port),
    st.tuples(st.just("switch-over"), name),
    st.tuples(st.just("announce"), name, host),
    st.tuples(st.just("policy"), st.integers(0, 5)),
    st.tuples(st.just("link-down"), host),
    st.tuples(st.just("segment-tag"), st.sampled_from([("s2", 2), ("s3", 3), ("s3", 0)])),
)


def _apply(s: NetworkState, ev: tuple) -> None:
    kind, *args = ev
    if kind == "register":
        n, seg, groups, v6 = args
        s.vms[n] = _vm(NAMES.index(n) + 1, seg, groups, v6)
    elif kind == "forget":
        for table in (s.vms, s.bindings, s.standby, s.expected):
            table.pop(args[0], None)
    elif kind == "bind":
        s.bindings[args[0]] = Binding(args[0], PortRef(args[1], args[2]))
    elif kind == "unbind":
        s.bindings.pop(args[0], None)
    elif kind == "standby":
        s.standby[args[0]] = Binding(args[0], PortRef(args[1], args[2]))
    elif kind == "switch-over":
        sb = s.standby.pop(args[0], None)
        s.expected.pop(args[0], None)
        if sb is not None:
            s.bindings[args[0]] = sb
    elif kind == "announce":
        s.expected[args[0]] = args[1]
    elif kind == "policy":
        # all rules; all but the first; or only the first (no rule names a VM or a MAC:
        # the policy fragment is then rebuilt only when a group gains its first VM or
        # loses its last)
        i = args[0]
        doc = dict(DOC, rules=[DOC["rules"], DOC["rules"][1:], DOC["rules"][:1]][i % 3])
        doc["routers"] = [
            [{"name": "r1", "segments": ["s1", "s2"]}],
            [{"name": "r1", "segments": ["s1", "s2", "s3"]}],
            [],
            [{"name": "r1", "segments": ["s1"]}, {"name": "r2", "segments": ["s2", "s3"]}],
            [{"name": "r2", "segments": ["s3"]}, {"name": "r1", "segments": ["s2", "s1"]}],
            [{"name": "r1", "segments": ["s2", "s3"]}],
        ][i]
        s.policy = policy.parse(doc)
    elif kind == "segment-tag":
        n, t = args[0]
        s.segment_tags = {**s.segment_tags, n: t} if t else {**s.segment_tags, n: 0}
    elif kind == "link-down":
        s.links = {lk for lk in s.links if args[0] not in (lk.src.dpid, lk.dst.dpid)}


def _owner(f):
    return (cookie_owner(f.cookie) or (None,))[0]


def assert_conjunctions_agree(flows) -> None:
    """Several conjunctions can complete at one (table, priority): isolation pairs share
    one, intra-group allows another. OVS takes any one of them, so they must all do the
    same thing (what makes the shared priority safe)."""
    seen: dict[tuple[int, int], tuple] = {}
    for f in flows:
        if any(k == "conj_id" for k, _ in f.match):
            first = seen.setdefault((f.table, f.priority), f.instructions)
            assert f.instructions == first, (f, first)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, min_size=1, max_size=25))
def test_incremental_equals_full_build_after_any_events(seq):
    state = _start()
    result = desired.build(state)
    for ev in seq:
        state = state.copy()
        _apply(state, ev)
        before = result
        result = desired.rebuild(before, state)
        full = desired.compile_network(state)
        assert dict(result) == full, ev
        assert result.parent == before.gen
        for dpid, flows in full.items():
            assert_conjunctions_agree(flows)
            assert result.size(dpid) == len(flows)  # fragments never share a flow
            assert result.count_by_table(dpid) == compiler.count_by_table(flows)
            change = result.changes[dpid]
            assert apply_diff(before[dpid], change) == flows, (ev, dpid)
            want = diff(flows, before[dpid])
            learned = {f for f in change.delete if _owner(f) == Owner.LEARNED}
            assert (set(change.add), set(change.delete) - learned) == (
                set(want.add), set(want.delete))
            # what a migration's switch-over learned goes, from every switch, when (and
            # only when) the move ended
            ended = {before.state.vms[n].id for n, sb in before.state.standby.items()
                     if state.standby.get(n) != sb and n in before.state.vms}
            assert {f.cookie & 0xFFFF for f in learned} == ended, (ev, dpid)


def test_a_move_touches_only_the_vm_and_its_segment():
    """Ten VMs on three hosts; moving one changes its own flows and its segment's flood
    flows, nothing of the other VMs."""
    state = _start()
    for i in range(1, 9):
        state.vms[f"vm{i}"] = _vm(i, 1, ("web",), False)
        state.bindings[f"vm{i}"] = Binding(f"vm{i}", PortRef(HOSTS[i % 3], 2 + i))
    before = desired.build(state)
    state = state.copy()
    state.bindings["vm1"] = Binding("vm1", PortRef(HOSTS[2], 20))
    after = desired.rebuild(before, state)
    owners = {cookie_owner(f.cookie) for c in after.changes.values() for f in (*c.add,
                                                                             *c.delete)}
    assert owners == {(Owner.VM, 1), (Owner.SEGMENT, 1)}


def test_a_reconnect_leaves_the_other_switches_on_the_incremental_path(monkeypatch):
    """A switch that reconnects gets only its missing flows; the others, unchanged by that
    result, hold it too, so the next move reaches them as a change, not a full diff."""
    from vfence.controller import switches
    from vfence.controller.metrics import Metrics

    class Recorder:
        def program(self, dpid, changes):
            pass

    full_diffs: list[int] = []
    real = switches.diff
    monkeypatch.setattr(switches, "diff", lambda a, b: full_diffs.append(1) or real(a, b))
    state = _start()
    cur = desired.build(state)
    sw = switches.Switches(Metrics(), hex)
    sw.programmer = Recorder()
    for d in cur:
        sw.installed.known[d] = cur
        sw.ready.add(d)
    sw.detach(0x101)
    sw.attach(0x101, {}, cur[0x101])
    state = state.copy()
    state.links = set(state.links)  # the reconnect: nothing the compiler sees changed
    cur = desired.rebuild(cur, state)
    sw.add_missing(0x101, cur)
    sw.ready.discard(0x101)
    full_diffs.clear()
    state = state.copy()
    state.bindings["vm1"] = Binding("vm1", PortRef(0x102, 30))
    nxt = desired.rebuild(cur, state)
    sw.program(nxt)
    assert full_diffs == []
    assert all(sw.installed[d] == nxt[d] for d in sw.ready)
