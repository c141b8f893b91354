"""Benchmark: incremental compilation at datacenter size (issue 10, goal 1).

    python -m bench.incremental [--vms 5000] [--hosts 10] [--groups 50] [--rules 200]
                                [--moves 200] [--baseline 5]

For each event (a VM moved to another host, a VM bound, a VM deleted, one rule added)
it times compile + diff as the controller runs them: ``desired.rebuild`` from the result
before, which also yields every switch's change. The baseline, in the same run, is what
the controller did before: a full (warm, memoised) compile of every switch and a set
diff per switch. Also the cold full build. Pure compiler work: no switch needed.
Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from vfence.controller import compiler, desired, policy
from vfence.controller.model import VM, Binding, NetworkState, PortRef
from vfence.controller.reconcile import diff

from .policy_scale import build_document, build_state


def _ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"{statistics.median(xs) * 1000:.2f} ms | {p99 * 1000:.2f} ms"


def _moved(st: NetworkState, rnd: random.Random, hosts: int) -> NetworkState:
    new = st.copy()
    name = rnd.choice(sorted(new.bindings))
    b = new.bindings[name]
    target = 1 + (b.port.dpid + rnd.randrange(hosts - 1)) % hosts
    new.bindings[name] = Binding(name, PortRef(target, 5000 + rnd.randrange(50000)))
    return new


def _timed(prev: desired.Desired, st: NetworkState) -> tuple[desired.Desired, float, int]:
    t0 = time.perf_counter()
    out = desired.rebuild(prev, st)
    secs = time.perf_counter() - t0
    return out, secs, sum(len(c) for c in out.changes.values())


def _baseline(prev: dict, st: NetworkState) -> tuple[dict, float]:
    t0 = time.perf_counter()
    flows = desired.compile_network(st)
    for d in flows:
        diff(flows[d], prev[d])
    return flows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--moves", type=int, default=200)
    ap.add_argument("--baseline", type=int, default=5, help="full recompiles to time")
    args = ap.parse_args()
    rnd = random.Random(11)
    st = build_state(args.vms, args.hosts, args.groups, args.rules)
    print(f"{args.vms} VMs, {args.hosts} hosts, {args.groups} groups, {args.rules} rules, "
          "one segment (every host holds every VM)")

    compiler.clear_caches()
    t0 = time.perf_counter()
    cur = desired.build(st)
    cold = time.perf_counter() - t0
    full = dict(cur)
    cold_sets = time.perf_counter() - t0
    print(f"cold full build: {cold * 1000:.0f} ms (fragments), {cold_sets * 1000:.0f} ms with "
          f"every switch's flow set ({max(len(f) for f in full.values())} flows/host max)")

    base: list[float] = []
    prev_full = full
    for _ in range(args.baseline):
        st = _moved(st, rnd, args.hosts)
        prev_full, secs = _baseline(prev_full, st)
        base.append(secs)
    cur = desired.build(st)

    rows = []
    moves, touched = [], []
    for _ in range(args.moves):
        st = _moved(st, rnd, args.hosts)
        cur, secs, n = _timed(cur, st)
        moves.append(secs)
        touched.append(n)
    rows.append(("move a VM to another host", moves, statistics.median(touched)))

    binds, deletes = [], []
    for i in range(min(50, args.moves)):
        new = st.copy()
        name = f"new{i}"
        vid = args.vms + 1 + i
        new.vms[name] = VM(vid, name, f"06:00:00:00:{vid >> 8 & 255:02x}:{vid & 255:02x}",
                           (f"10.200.{vid >> 8 & 255}.{vid & 255}",), 1, "prod", ("g1",))
        new.bindings[name] = Binding(name, PortRef(1 + i % args.hosts, 60000 + i))
        cur, secs, _ = _timed(cur, new)
        binds.append(secs)
        st = new.copy()
        del st.vms[name], st.bindings[name]
        cur, secs, _ = _timed(cur, st)
        deletes.append(secs)
    rows.append(("bind a new VM", binds, None))
    rows.append(("delete a VM", deletes, None))

    doc = build_document(args.vms, args.hosts, args.groups, args.rules)
    adds = []
    for i in range(5):
        new = st.copy()
        rule = {"name": f"extra{i}", "from": "g1", "to": "g2", "protocol": "tcp",
                "ports": str(7000 + i), "action": "allow"}
        new.policy = policy.keep_priorities(policy.parse(dict(doc, rules=[rule, *doc["rules"]])),
                                            {r.name: r.priority for r in st.policy.rules})
        cur, secs, n = _timed(cur, new)
        adds.append(secs)
        cur, _, _ = _timed(cur, st)
    rows.append(("add one rule (policy fragment)", adds, None))

    print()
    print("| event | compile + diff, median | p99 | flow changes (median) |")
    print("|---|---|---|---|")
    for what, xs, n in rows:
        print(f"| {what} | {_ms(xs)} | {'' if n is None else f'{n:.0f}'} |")
    print(f"| baseline: full warm compile + diff (move) | {_ms(base)} | |")
    print(f"\nmove: {statistics.median(base) / statistics.median(moves):.0f}x faster than the "
          "full recompile; goal <= 5 ms per move, cold build < 1 s")


if __name__ == "__main__":
    main()
