"""Benchmark: convergence at scale in a real lab (issue 10, goal 2).

    python -m bench.scale [--hosts 10] [--bulk 5000] [--moves 50]

Ten hypervisor bridges and one fabric switch in the system Open vSwitch; ``--bulk`` VMs
bound as internal ports with libvirt's external_ids (the controller compiles and programs
every one), two real Mininet VMs per hypervisor that migrate under a 10 ms ping stream
from a third host. Reports the controller's convergence per move (detection -> barrier of
every affected switch), the outage (lost pings x 10 ms), the time to bring the whole lab
up, the flows per switch and the controller's RSS; then the same moves with the bridges
as plain learning switches (the baseline, same run). Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from vfence.mininet_topos.scale import ScaleLab, real_vms

from .memory import rss_mib
from .migration import pct, run_moves, standalone


def ofctl_change_ms(bridge: str, n: int = 10) -> float:
    """The switch's own latency for one change: ``ovs-ofctl add-flow`` (which waits for
    the switch's barrier) of one flow, then its removal; median of ``n``."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge,
                        f"table=39,priority=1,cookie=0x1,reg9={i + 1},actions=drop"], check=True)
        times.append((time.perf_counter() - t0) * 1000)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", bridge,
                        "table=39,cookie=0x1/-1"], check=True)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--bulk", type=int, default=5000)
    ap.add_argument("--moves", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vfence-scale-"))
    plan = real_vms(args.hosts, per_host=2)
    lab = ScaleLab(args.hosts, args.bulk, plan, db_url=f"sqlite:///{tmp}/db.sqlite",
                   workdir=tmp, of_port=6698, api_port=8098, register_timeout=1800)
    try:
        print(f"lab: {args.hosts} hypervisors, {args.bulk} bulk VMs + {len(plan)} real, "
              f"1 fabric switch; {args.moves} moves", flush=True)
        t0 = time.monotonic()
        lab.up()
        up = time.monotonic() - t0
        assert lab.proc is not None
        rss_up = rss_mib(lab.proc.pid)
        # (a loaded controller at 5,000 VMs took more than lab.get's 5 s to answer this)
        hosts = httpx.get(lab.api + "/v1/hosts", timeout=300).raise_for_status().json()
        flows = max(h["flows"] for h in hosts)
        print(f"up and converged in {up:.0f} s; {flows} flows/switch max; controller RSS "
              f"{rss_up:.0f} MiB", flush=True)
        switch_ms = ofctl_change_ms("hv1")
        print(f"baseline: one flow added by ovs-ofctl (with barrier): {switch_ms:.0f} ms median",
              flush=True)
        out, conv = run_moves(lab, plan, args.hosts, args.moves, tmp, vfence=True)
        rss_end = rss_mib(lab.proc.pid)
        standalone(lab)
        time.sleep(1)
        base, _ = run_moves(lab, plan, args.hosts, args.moves, tmp, vfence=False)
    finally:
        lab.down()
    print()
    print(f"| {args.bulk + len(plan)} VMs, {args.hosts} hosts | p50 | p99 | max |")
    print("|---|---|---|---|")
    print(f"| vfence convergence | {pct(conv, .5):.1f} ms | {pct(conv, .99):.1f} ms | "
          f"{max(conv):.1f} ms |")
    for name, xs in (("vfence outage (10 ms pings)", out), ("plain OVS learning outage", base)):
        print(f"| {name} | {pct(xs, .5):.0f} ms | {pct(xs, .99):.0f} ms | {max(xs):.0f} ms |")
    print(f"| baseline: ovs-ofctl add-flow of one flow (median) | {switch_ms:.0f} ms | | |")
    print(f"\n{len(conv)} of {args.moves} moves measured; lab up {up:.0f} s, {flows} "
          f"flows/switch, controller RSS {rss_up:.0f} MB after "
          f"start, {rss_end:.0f} MB after {args.moves} moves")


if __name__ == "__main__":
    main()
