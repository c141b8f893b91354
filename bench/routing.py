"""Benchmark: what routing costs the compiler (issue 11).

    python -m bench.routing [--vms 5000] [--segments 20] [--hosts 10] [--moves 50]

The same VMs, groups and rules (bench.policy_scale's document) three ways: in one
segment (the baseline), in ``--segments`` segments with no router, and in those segments
joined by one router. VM i sits in segment i mod segments and on host
1 + (i div segments) mod hosts, so every segment spans every host. Reports flows per host
(max and mean, and the routing tables' share), the cold full build and the compile + diff
of a move (median, p99). Pure compiler work: no switch. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time

from vfence.controller import compiler, desired, policy
from vfence.controller.model import VM, Binding, NetworkState, PortRef
from vfence.controller.pipeline import Table

from .incremental import _moved
from .policy_scale import build_document, star


def _document(n_vms: int, segments: int, routed: bool) -> dict:
    doc = build_document(n_vms, 10, 50, 200)
    if segments == 1:
        return doc
    doc = copy.deepcopy(doc)
    doc["segments"] = [{"name": f"s{k}", "subnet": f"10.{k}.0.0/16",
                        **({"gateway": f"10.{k}.255.254"} if routed else {})}
                       for k in range(segments)]
    for i, vm in enumerate(doc["vms"]):
        k, j = i % segments, i // segments + 1
        vm.update(segment=f"s{k}", ips=[f"10.{k}.{j >> 8 & 255}.{j & 255}"])
    if routed:
        doc["routers"] = [{"name": "r1", "segments": [f"s{k}" for k in range(segments)]}]
    return doc


def _state(doc: dict, segments: int, hosts: int) -> NetworkState:
    st = star(policy.parse(doc), hosts)
    pol = st.policy
    tags = {name: k + 1 for k, (name, _) in enumerate(pol.segments)}
    st.segment_tags = tags
    st.router_numbers = {r.name: i for i, r in enumerate(pol.routers)}
    for i, spec in enumerate(pol.vms):
        host = 1 + (i // segments) % hosts
        st.vms[spec.name] = VM(i + 1, spec.name, spec.mac, spec.ips, tags[spec.segment],
                               spec.segment, spec.groups)
        st.bindings[spec.name] = Binding(spec.name, PortRef(host, 10 + i))
    return st


def _run(label: str, st: NetworkState, hosts: int, moves: int) -> None:
    compiler.clear_caches()
    t0 = time.perf_counter()
    cur = desired.build(st)
    cold = time.perf_counter() - t0
    sizes = [cur.size(h) for h in range(1, hosts + 1)]
    routing = sum(n for t, n in cur.count_by_table(1).items() if t == Table.ROUTE)
    rnd, times = random.Random(5), []
    for _ in range(moves):
        nxt = _moved(cur.state, rnd, hosts)
        t0 = time.perf_counter()
        cur = desired.rebuild(cur, nxt)
        times.append(time.perf_counter() - t0)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"| {label} | {max(sizes):,} | {statistics.mean(sizes):,.0f} | {routing:,} | "
          f"{cold * 1000:,.0f} ms | {statistics.median(times) * 1000:.1f} ms | "
          f"{p99 * 1000:.1f} ms |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--segments", type=int, default=20)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--moves", type=int, default=50)
    args = ap.parse_args()
    print(f"{args.vms} VMs, {args.hosts} hosts, 50 groups, 200 rules")
    print("| layout | flows/host (max) | flows/host (mean) | of which ROUTE (hv1) | "
          "cold full build | move: compile + diff (median) | p99 |")
    print("|---|---|---|---|---|---|---|")
    n, s = args.vms, args.segments
    _run("one segment (baseline)", _state(_document(n, 1, False), 1, args.hosts),
         args.hosts, args.moves)
    _run(f"{s} segments, no router", _state(_document(n, s, False), s, args.hosts),
         args.hosts, args.moves)
    _run(f"{s} segments, one router", _state(_document(n, s, True), s, args.hosts),
         args.hosts, args.moves)


if __name__ == "__main__":
    main()
