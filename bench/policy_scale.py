"""Benchmark: flows per host and compile time as VMs grow, against the naive pairwise
expansion (a flow per source VM x destination VM x port mask of every rule), counted in
the same run.

    python -m bench.policy_scale [--vms 100,1000,5000] [--hosts 10] [--groups 50] [--rules 200]

Pure compiler work: no switch needed. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

from vfence.controller import compiler, desired, policy
from vfence.controller.model import VM, Binding, Link, NetworkState, PortRef, Switch

PORTS = ["22", "80", "443", "5432", "8000-8999", "1024-65535", "53", "3306", "6379,6380"]


def build_document(n_vms: int, hosts: int, groups: int, rules: int, seed: int = 7) -> dict:
    rnd = random.Random(seed)
    names = [f"g{i}" for i in range(groups)]
    isolation = [[names[2 * i], names[2 * i + 1]] for i in range(min(5, groups // 2))]
    banned = {frozenset(p) for p in isolation}
    vms = []
    for i in range(n_vms):
        n = i + 1  # 10.0.0.0 is the subnet's network address, not a host's
        first = rnd.choice(names)
        gs = [first] + [g for g in [rnd.choice(names)] if g != first
                        and frozenset((g, first)) not in banned][: rnd.randint(0, 1)]
        vms.append({"name": f"vm{i}", "mac": f"02:00:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:"
                    f"{i & 255:02x}", "ips": [f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"],
                    "segment": "prod", "groups": gs})
    rule_list = []
    while len(rule_list) < rules:
        a, b = rnd.choice(names), rnd.choice(names)
        if frozenset((a, b)) in banned:
            continue
        rule_list.append({"name": f"r{len(rule_list)}", "from": a, "to": b,
                          "protocol": rnd.choice(["tcp", "udp"]), "ports": rnd.choice(PORTS),
                          "action": rnd.choice(["allow", "allow", "deny"])})
    return {"segments": [{"name": "prod", "subnet": "10.0.0.0/8"}],
            "groups": [{"name": g} for g in names], "vms": vms, "rules": rule_list,
            "isolation": isolation, "defaults": {"intra_group": "allow", "inter_group": "deny"}}


def star(pol: policy.Policy, hosts: int) -> NetworkState:
    """``hosts`` hypervisors hv1.. (dpid = number) on one spine, with ``pol`` in force."""
    st = NetworkState(policy=pol, group_bits={g: i for i, g in enumerate(pol.groups)})
    spine = 0x200
    st.switches[spine] = Switch(spine, "sp1", hosts + 1)
    for h in range(1, hosts + 1):
        st.switches[h] = Switch(h, f"hv{h}", h)
        st.links |= {Link(PortRef(h, 1), PortRef(spine, h)), Link(PortRef(spine, h), PortRef(h, 1))}
    return st


def build_state(n_vms: int, hosts: int = 10, groups: int = 50, rules: int = 200
                ) -> NetworkState:
    st = star(policy.parse(build_document(n_vms, hosts, groups, rules)), hosts)
    pol = st.policy
    for i, spec in enumerate(pol.vms):
        host = 1 + i % hosts
        st.vms[spec.name] = VM(i + 1, spec.name, spec.mac, spec.ips, 1, spec.segment, spec.groups)
        st.bindings[spec.name] = Binding(spec.name, PortRef(host, 10 + i // hosts))
    return st


def pairwise_flows(st: NetworkState) -> int:
    """What a naive compiler emits: every rule expanded over its VM pairs (and masks)."""
    members: dict[str, int] = {}
    for vm in st.vms.values():
        for g in vm.groups:
            members[g] = members.get(g, 0) + 1
    total = 0
    for r in st.policy.rules:
        masks = sum(len(policy.port_masks(lo, hi)) for lo, hi in r.ports) or 1
        total += members.get(r.src.value, 0) * members.get(r.dst.value, 0) * masks
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", default="100,1000,5000")
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--groups", type=int, default=50)
    ap.add_argument("--rules", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"{args.hosts} hosts, {args.groups} groups, {args.rules} rules, one segment")
    print("| VMs | flows/host (max) | of which policy | pairwise policy flows | "
          "full compile, cold | recompile, warm (median) |")
    print("|---|---|---|---|---|---|")
    for n in [int(x) for x in args.vms.split(",")]:
        st = build_state(n, args.hosts, args.groups, args.rules)
        compiler.clear_caches()
        t0 = time.perf_counter()
        flows = desired.compile_network(st)
        cold = time.perf_counter() - t0
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            desired.compile_network(st)
            times.append(time.perf_counter() - t0)
        per_host = max(len(flows[h]) for h in range(1, args.hosts + 1))
        pol = len(set(compiler.policy_flows(st)))
        t = statistics.median(times)
        print(f"| {n} | {per_host} | {pol} | {pairwise_flows(st)} | {cold * 1000:.0f} ms | "
              f"{t * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
