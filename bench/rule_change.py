"""Benchmark: time for one rule change to be in force on every switch of a Mininet lab.

    python -m bench.rule_change [--repeat 20]

The finance lab (3 hypervisors, 2 fabric switches). Each round adds one rule through
PUT /v1/policy, which returns after every switch's bundle barrier, and then removes it
again. Baseline in the same run: ovs-ofctl add-flow of one flow on each of the 5 bridges
one after another (the hand-made way, no validation, no atomicity). Then a real
connection confirms the rule works. Prints a table; asserts nothing. Needs root and OVS.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from vfence.mininet_topos.datacenter import FINANCE_PLACEMENT, FINANCE_POLICY, plan_from_policy
from vfence.mininet_topos.lab import Lab

BRIDGES = ("hv1", "hv2", "hv3", "sp1", "sp2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    doc = yaml.safe_load(FINANCE_POLICY.read_text())
    extra = copy.deepcopy(doc)
    extra["rules"].insert(0, {"name": "web-to-api-http", "from": "frontend",
                              "to": "finance-api", "protocol": "tcp", "ports": "80",
                              "action": "allow"})
    tmp = Path(tempfile.mkdtemp(prefix="vfence-rule-"))
    lab = Lab(3, 2, plan_from_policy(doc, FINANCE_PLACEMENT),
              db_url=f"sqlite:///{tmp}/db.sqlite", workdir=tmp, of_port=6698, api_port=8098,
              policy=doc)
    add_t, del_t, ofctl_t, changed, own = [], [], [], [], []
    try:
        lab.up()
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = httpx.put(lab.api + "/v1/policy", json=extra, timeout=60)
            add_t.append(time.perf_counter() - t0)
            r.raise_for_status()
            changed.append(sum(h["add"] + h["delete"] for h in r.json()["hosts"].values()))
            if not own:  # the baseline: the new rule's own flows, on every switch
                prio = next(x["priority"] for x in httpx.get(lab.api + "/v1/rules").json()
                            if x["name"] == "web-to-api-http")
                own.extend(f for h in httpx.get(lab.api + "/v1/hosts").json()
                           for f in httpx.get(f"{lab.api}/v1/hosts/{h['name']}/flows").json()
                           if f["owner"] == f"rule:{prio}")
            t0 = time.perf_counter()
            httpx.put(lab.api + "/v1/policy", json=doc, timeout=60).raise_for_status()
            del_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for br in BRIDGES:
                subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", br,
                                "table=30,priority=1,cookie=0x1,tcp,tp_dst=81,actions=drop"],
                               check=True)
            ofctl_t.append(time.perf_counter() - t0)
            for br in BRIDGES:
                subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", br,
                                "cookie=0x1/-1"], check=True)
    finally:
        lab.down()
    med = statistics.median
    print(f"\nflows changed per rule add: {med(changed):.0f} (over {len(BRIDGES)} switches); "
          f"the rule's own flows: {len(own)}")
    print("| change | median | p95 | max |")
    print("|---|---|---|---|")
    for name, xs in (("add a rule via PUT /v1/policy (validate, DB, 5 bundles)", add_t),
                     ("remove it again", del_t),
                     ("baseline: ovs-ofctl add-flow x 5 bridges", ofctl_t)):
        xs = sorted(xs)
        print(f"| {name} | {med(xs) * 1000:.0f} ms | {xs[int(0.95 * (len(xs) - 1))] * 1000:.0f}"
              f" ms | {xs[-1] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
