"""Benchmark: migration convergence and outage, vfence against plain MAC learning.

    python -m bench.migration [--hosts 8] [--vms 10] [--moves 50]

For each move a peer on another host pings the VM every 10 ms. vfence's convergence
is measured by the controller, from detection (the VM's first frame at the new port,
or its old port vanishing) to the barrier reply of every affected switch (stored per
move in location_history). The outage is lost pings x 10 ms; the moves are then repeated
with the controller frozen (SIGSTOP) from the moment each target's standby port is ready,
which leaves the datapath's own switch-over (learn()) alone. The baseline repeats the
same moves with the bridges in standalone mode (NORMAL: MAC learning, what a
hypervisor's vswitch does by itself). One fabric switch, so standalone mode has no
loop. Prints a table; asserts nothing. Needs root and OVS.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vfence.mininet_topos.datacenter import VMPlan, vm
from vfence.mininet_topos.lab import Lab, ping_stream_result, start_ping_stream
from vfence.mininet_topos.migration import migrate

PING_INTERVAL = 0.01


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run_moves(lab: Lab, plan: list[VMPlan], hosts: int, moves: int, tmp: Path,
              vfence: bool, frozen: bool = False) -> tuple[list[float], list[float]]:
    """Returns (outage ms per move, convergence ms per move as vfence measured it).
    ``frozen``: the controller is stopped (SIGSTOP) from the moment the target's standby
    port is ready until the ping stream ends: the datapath switches over on its own."""
    at = {p.name: p.host for p in plan}
    outages, conv = [], []
    for i in range(moves):
        p = plan[(i * 7) % len(plan)]
        target = at[p.name] % hosts + 1
        peer = next(q for q in plan if at[q.name] not in (at[p.name], target))
        out = tmp / f"ping-{vfence}-{frozen}-{i}.txt"
        start_ping_stream(lab.host(peer.name), p.ip, out, 400, PING_INTERVAL)
        time.sleep(0.5)
        if frozen:
            _frozen_move(lab, p, target)
        else:
            migrate(lab.net, p, f"hv{target}", remove_old_after=0.5)
        at[p.name] = target
        sent, received = ping_stream_result(out, timeout=30)
        if frozen:
            os.killpg(lab.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
            lab.wait_for(lambda p=p, target=target: (lab.get(
                f"/v1/vms/{p.name}/location") or {}).get("host", {}).get("name")
                == f"hv{target}", 30, f"{p.name} confirmed on hv{target}")
        outages.append((sent - received) * PING_INTERVAL * 1000)
        measured = None
        if vfence and not frozen:
            hist = lab.get(f"/v1/vms/{p.name}/history") or []
            if hist and hist[-1]["host"]["name"] == f"hv{target}":
                measured = hist[-1]["convergence_ms"]
            if measured is not None:
                conv.append(measured)
        kind = ("vfence, controller frozen" if frozen else "vfence") if vfence else "standalone"
        print(f"  {kind} move {i + 1}/{moves}: {p.name} -> "
              f"hv{target}: outage {outages[-1]:.0f} ms"
              + (f", convergence {measured} ms" if vfence else ""), flush=True)
    return outages, conv


def _frozen_move(lab: Lab, p: VMPlan, target: int) -> None:
    """Migrate ``p`` with the controller stopped once the target's standby port is ready
    (its learn() flows are there); the caller lets it run again."""
    assert lab.net is not None and lab.proc is not None
    mover = threading.Thread(target=migrate, args=(lab.net, p, f"hv{target}"),
                             kwargs={"remove_old_after": 0.5, "precopy": 2.0})
    mover.start()
    end = time.monotonic() + 10
    while time.monotonic() < end and "learn(" not in subprocess.run(
            ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", f"hv{target}", "table=0"],
            capture_output=True, text=True).stdout:
        time.sleep(0.05)
    os.killpg(lab.proc.pid, signal.SIGSTOP)
    mover.join()


def standalone(lab: Lab) -> None:
    """Turn every bridge into a plain learning switch (no controller)."""
    lab.kill_controller()
    assert lab.net is not None
    for sw in lab.net.switches:
        subprocess.run(["ovs-vsctl", "del-controller", sw.name, "--", "set", "Bridge",
                        sw.name, "fail_mode=standalone"], check=True)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", sw.name], check=True)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", sw.name,
                        "priority=0,actions=NORMAL"], check=True)
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-meters", sw.name], check=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--vms", type=int, default=10)
    ap.add_argument("--moves", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vfence-mig-"))
    plan = [vm(f"v{h}x{i}", h, "blue", index=i) for h in range(1, args.hosts + 1)
            for i in range(1, args.vms + 1)]
    lab = Lab(args.hosts, 1, plan, db_url=f"sqlite:///{tmp}/db.sqlite", workdir=tmp,
              of_port=6697, api_port=8097)
    try:
        print(f"lab: {args.hosts} hosts x {args.vms} VMs, 1 fabric switch; {args.moves} moves")
        lab.up()
        vf_out, vf_conv = run_moves(lab, plan, args.hosts, args.moves, tmp, vfence=True)
        fr_out, _ = run_moves(lab, plan, args.hosts, args.moves, tmp, vfence=True,
                              frozen=True)
        lab.down()
        lab = Lab(args.hosts, 1, plan, db_url=f"sqlite:///{tmp}/db2.sqlite",
                  workdir=tmp / "standalone",
                  of_port=6697, api_port=8097)
        lab.up()
        standalone(lab)
        time.sleep(1)
        sa_out, _ = run_moves(lab, plan, args.hosts, args.moves, tmp, vfence=False)
    finally:
        lab.down()
    print()
    print("| | p50 | p95 | p99 | max |")
    print("|---|---|---|---|---|")
    print(f"| vfence convergence (detection -> every barrier) | {pct(vf_conv, .5):.1f} ms | "
          f"{pct(vf_conv, .95):.1f} ms | {pct(vf_conv, .99):.1f} ms | {max(vf_conv):.1f} ms |")
    for name, xs in (("vfence outage (lost pings x 10 ms)", vf_out),
                     ("vfence outage, controller frozen (datapath switch-over alone)",
                      fr_out),
                     ("standalone MAC learning outage", sa_out)):
        print(f"| {name} | {pct(xs, .5):.0f} ms | {pct(xs, .95):.0f} ms | {pct(xs, .99):.0f} "
              f"ms | {max(xs):.0f} ms |")
    print(f"\nmean outage: vfence {statistics.mean(vf_out):.1f} ms, frozen "
          f"{statistics.mean(fr_out):.1f} ms, standalone {statistics.mean(sa_out):.1f} ms "
          f"over {args.moves} moves each")


if __name__ == "__main__":
    main()
