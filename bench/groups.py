"""Benchmark (issue 10, goal 4): groups without a cap. Compiles a network of many VMs,
groups and rules and reports flows per host, policy flows per rule and the cold build
time, next to what other encodings would need for the same document, counted in the
same run:

- per-member conjunctions (OVN's address-set expansion): each rule's clauses list every
  member VM of its two groups;
- pairwise: every rule expanded over its member VM pairs (and port masks);
- group bits (vfence before): impossible beyond 64 groups.

    python -m bench.groups [--vms 20000] [--groups 2000] [--rules 5000] [--hosts 10]

Pure compiler work: no switch needed. Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import Counter

from vfence.controller import compiler, desired, policy
from vfence.controller.flows import cookie_owner
from vfence.controller.pipeline import Owner

from .memory import rss_mib
from .policy_scale import build_state, pairwise_flows

JUDGES = 4  # each rule is judged for unicast, per broadcast receiver, ND reach both ways


def per_member_flows(st) -> int:
    """Flows of a per-member conjunction encoding: per rule and judge, one clause flow
    per member VM of each side, one per port mask and family, and the result flow."""
    members: Counter[str] = Counter(g for vm in st.vms.values() for g in vm.groups)
    total = 0
    for r in st.policy.rules:
        masks = sum(len(policy.port_masks(lo, hi)) for lo, hi in r.ports) or 1
        total += JUDGES * (members[r.src.value] + members[r.dst.value] + 2 * masks + 1)
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=20000)
    ap.add_argument("--groups", type=int, default=2000)
    ap.add_argument("--rules", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=10)
    args = ap.parse_args()
    print(f"{args.vms} VMs in 1-2 of {args.groups} groups, {args.rules} rules, "
          f"{args.hosts} hosts, one segment")
    st = build_state(args.vms, args.hosts, args.groups, args.rules)
    compiler.clear_caches()
    gc.collect()
    t0 = time.perf_counter()
    built = desired.build(st)
    cold = time.perf_counter() - t0
    hosts = [d for d in built if d <= args.hosts]
    per_host = max(built.size(d) for d in hosts)
    policy_flows = built.frags[hosts[0]][desired.POLICY].flows
    rule_flows = sum(1 for f in policy_flows if (cookie_owner(f.cookie) or (None,))[0]
                     == Owner.RULE)
    conj = sum(1 for f in policy_flows if any(k == "conj_id" for k, _ in f.match))
    print(f"group slots in use: {built.slots} (the most groups one VM is in)")
    print("| encoding | policy flows (every host) | per rule | flows/host (max) |")
    print("|---|---|---|---|")
    print(f"| vfence: group slots, conjunctions ({conj} of them) | {len(policy_flows):,} | "
          f"{rule_flows / args.rules:.1f} | {per_host:,} |")
    member = per_member_flows(st)
    print(f"| per-member conjunctions (OVN-style) | {member:,} | "
          f"{member / args.rules:.1f} | |")
    pairs = JUDGES * pairwise_flows(st)
    print(f"| pairwise | {pairs:,} | {pairs / args.rules:.1f} | |")
    print("| group bits (before) | impossible: 64 groups at most | | |")
    print(f"full cold build: {cold:.1f} s; controller process RSS {rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
