"""Benchmark: the controller's memory over many migrations (issue 10, goal 7).

    python -m bench.memory [--vms 5000] [--hosts 10] [--moves 1000]

The whole controller core (service, binding machine, compiler, registry on SQLite) with
the policy document of ``bench.policy_scale`` (50 groups, 200 rules), VMs spread over
the hosts, bound from each host's OVSDB snapshot. Each move goes as a live migration
does through OVSDB: the VM's port appears on the target (standby), then goes from the
source (switch-over). The switches are recorders that keep what they were sent (the
controller's own copy of every switch's flows is what a real controller keeps too), so
this measures the controller, not os-ken's sockets.

Prints the resident set size (VmRSS) after start-up, after the first 100 moves (the
baseline) and at the end, and the growth against that baseline (the goal: under 10%).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
from pathlib import Path

from vfence.controller.hosts import Bridge, Interface
from vfence.controller.reconcile import FlowDiff
from vfence.controller.service import Service
from vfence.controller.store import db

from .policy_scale import build_document


def rss_mib(pid: int | str = "self") -> float:
    """Resident set size of a process (this one by default), in MiB."""
    status = Path(f"/proc/{pid}/status")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in {status}")


class Recorder:
    """A switch that accepts every bundle (the service keeps what each switch has)."""

    def program(self, dpid: int, changes: FlowDiff) -> None:
        pass

    def read_flows(self, dpid: int) -> list:
        return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vms", type=int, default=5000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--moves", type=int, default=1000)
    args = ap.parse_args()
    rnd = random.Random(11)
    tmp = Path(tempfile.mkdtemp(prefix="vfence-mem-"))
    engine = db.make_engine(f"sqlite:///{tmp}/mem.db")
    db.upgrade(engine)
    service = Service(db.sessions(engine))
    service.switches.programmer = Recorder()
    doc = build_document(args.vms, args.hosts, 50, 200)
    macs = {v["name"]: v["mac"] for v in doc["vms"]}
    at = {name: 1 + i % args.hosts for i, name in enumerate(macs)}
    port = {name: 10 + i for i, name in enumerate(macs)}

    def snapshot(host: int) -> None:
        ifaces = [Interface(host, port[n], f"tap{port[n]}", macs[n], n)
                  for n, h in at.items() if h == host]
        service.ovsdb_snapshot(ifaces, [Bridge(host, "br-int")], f"unix:/run/hv{host}", f"hv{host}")

    def ports_of(host: int) -> dict[int, str]:
        return {port[n]: f"tap{port[n]}" for n, h in at.items() if h == host}

    t0 = time.perf_counter()
    service.apply_policy(doc)
    for h in range(1, args.hosts + 1):
        service.switch_connected(h, "br-int", ports_of(h), [])
        snapshot(h)
        service.switch_ready(h)
    gc.collect()
    start = rss_mib()
    print(f"{args.vms} VMs on {args.hosts} hosts bound in {time.perf_counter() - t0:.1f} s; "
          f"RSS {start:.0f} MiB; flows per host: "
          f"{max(len(f) for f in service.switches.installed.values())}")
    baseline = start
    t0 = time.perf_counter()
    for i in range(1, args.moves + 1):
        vm = rnd.choice(list(at))
        src = at[vm]
        dst = 1 + (src % args.hosts)
        at[vm] = dst  # the target's OVSDB shows the port (standby) ...
        service.ports_changed(dst, ports_of(dst))
        snapshot(dst)
        service.ports_changed(src, ports_of(src))  # ... then the source's goes
        snapshot(src)
        assert service.state.bindings[vm].port.dpid == dst, f"move {i} of {vm} did not land"
        if i == 100:
            gc.collect()
            baseline = rss_mib()
        if i % 100 == 0:
            print(f"  {i} moves, {(time.perf_counter() - t0) / i * 1000:.0f} ms per move, "
                  f"RSS {rss_mib():.0f} MiB", flush=True)
    gc.collect()
    end = rss_mib()
    growth = (end - baseline) / baseline * 100
    print("| VMs | hosts | moves | RSS at start | RSS after 100 moves (baseline) | RSS at the "
          "end | growth after the first 100 | goal |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.vms} | {args.hosts} | {args.moves} | {start:.0f} MiB | {baseline:.0f} MiB | "
          f"{end:.0f} MiB | {growth:+.1f}% | < 10% |")


if __name__ == "__main__":
    main()
