"""Benchmark: program one switch with 10,000 flows through the controller (one bundle)
against ``ovs-ofctl --bundle add-flows`` of the very same flows, in the same run.

    python -m bench.program_switch [--flows 10000] [--repeat 4]

The first run is cold (the process has encoded nothing yet); the later ones send bytes
the first cached, as a switch that reconnects or a second switch with the same flows does.

Needs root and a running Open vSwitch. Prints numbers; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from vfence.controller.desired import compile_network
from vfence.controller.model import VM, Binding, NetworkState, PortRef, Switch
from vfence.controller.reconcile import FlowDiff
from vfence.controller.service import Service
from vfence.controller.store import db

BRIDGE = "vfbench"
DPID = 0xBE7C


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def make_bridge(of_port: int) -> None:
    sh("ovs-vsctl", "--if-exists", "del-br", BRIDGE)
    sh("ovs-vsctl", "add-br", BRIDGE, "--", "set", "Bridge", BRIDGE, "datapath_type=netdev",
       "fail_mode=secure", "protocols=OpenFlow13", f"other-config:datapath-id={DPID:016x}",
       "other-config:disable-in-band=true")
    sh("ovs-vsctl", "set-controller", BRIDGE, f"tcp:127.0.0.1:{of_port}")


def flow_count() -> int:
    out = sh("ovs-ofctl", "-O", "OpenFlow13", "dump-aggregate", BRIDGE)
    return int(out.split("flow_count=")[1].split()[0])


class Timed:
    """Wraps the app's programmer: times each bundle + barrier."""

    def __init__(self, inner) -> None:
        self.inner, self.samples = inner, []
        self.done = threading.Event()

    def program(self, dpid: int, changes: FlowDiff) -> None:
        t0 = time.perf_counter()
        self.inner.program(dpid, changes)
        self.samples.append((len(changes), time.perf_counter() - t0))
        self.done.set()


def _vms(n: int) -> dict[str, VM]:
    return {f"v{i}": VM(i, f"v{i}", f"02:00:{i >> 24 & 255:02x}:{i >> 16 & 255:02x}:"
                        f"{i >> 8 & 255:02x}:{i & 255:02x}", (f"10.{i >> 16 & 255}.{i >> 8 & 255}."
                        f"{i & 255}",), 1, "bench") for i in range(1, n + 1)}


def _flow_count(n: int) -> int:
    st = NetworkState(switches={DPID: Switch(DPID, BRIDGE, 1)}, vms=_vms(n))
    st.bindings = {k: Binding(k, PortRef(DPID, 10 + v.id)) for k, v in st.vms.items()}
    return len(compile_network(st)[DPID])


def vms_for(n_flows: int) -> dict[str, VM]:
    """As many VMs as make about ``n_flows`` flows (asks the compiler what one costs)."""
    base, per_vm = _flow_count(1), _flow_count(2) - _flow_count(1)
    return _vms(max(1, (n_flows - base) // per_vm + 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=4)
    ap.add_argument("--of-port", type=int, default=6690)
    args = ap.parse_args()

    from vfence.apps.runner import start_openflow
    from vfence.controller.pipeline import METERS

    tmp = Path(tempfile.mkdtemp(prefix="vfence-bench-"))
    engine = db.make_engine(f"sqlite:///{tmp}/bench.db")
    db.upgrade(engine)
    service = Service(db.sessions(engine))
    vms = vms_for(args.flows)
    service.state.vms.update(vms)
    service.places.bindings.update(  # where the binding machine keeps them
        {n: Binding(n, PortRef(DPID, 10 + v.id), f"p{v.id}") for n, v in vms.items()})
    app = start_openflow(service, "127.0.0.1", args.of_port)
    timed = Timed(app)
    service.switches.programmer = timed

    ctl, ofctl = [], []
    flows_file = tmp / "flows.txt"
    for i in range(args.repeat):
        timed.done.clear()
        make_bridge(args.of_port)  # fresh, empty switch connects to the controller
        if not timed.done.wait(120):
            raise SystemExit("controller never programmed the bench bridge")
        n, secs = timed.samples[-1]
        ctl.append(secs)
        installed = flow_count()
        if i == 0:
            dump = sh("ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", BRIDGE)
            flows_file.write_text("\n".join(ln for ln in dump.splitlines() if "actions=" in ln))
            print(f"controller bundle: {n} flow-mods, {installed} flows on the switch")
        sh("ovs-vsctl", "del-controller", BRIDGE)
        sh("ovs-ofctl", "-O", "OpenFlow13", "del-flows", BRIDGE)
        sh("ovs-ofctl", "-O", "OpenFlow13", "del-meters", BRIDGE)
        for meter in METERS:  # the flows reference the punt meters
            sh("ovs-ofctl", "-O", "OpenFlow13", "add-meter", BRIDGE,
               f"meter={meter.id},pktps,burst,band=type=drop,rate={meter.rate_pps},"
               f"burst_size={meter.burst}")
        t0 = time.perf_counter()
        sh("ovs-ofctl", "-O", "OpenFlow13", "--bundle", "add-flows", BRIDGE, str(flows_file))
        ofctl.append(time.perf_counter() - t0)
        assert flow_count() == installed
        print(f"  run {i + 1}: controller {secs * 1000:.0f} ms, "
              f"ovs-ofctl {ofctl[-1] * 1000:.0f} ms")
    sh("ovs-vsctl", "--if-exists", "del-br", BRIDGE)

    # the first run encodes every flow; later runs find the flow-mods' bytes cached
    rows = [("first run, nothing cached", ctl[:1], ofctl[:1])]
    if args.repeat > 1:
        rows.append((f"runs 2-{args.repeat}, bytes cached (median)", ctl[1:], ofctl[1:]))
    print()
    print("| flows | run | vfence bundle | ovs-ofctl --bundle | ratio |")
    print("|---|---|---|---|---|")
    for what, cs, os_ in rows:
        c, o = statistics.median(cs), statistics.median(os_)
        print(f"| {installed:,} | {what} | {c * 1000:,.0f} ms | {o * 1000:,.0f} ms | "
              f"{c / o:.1f}x |")


if __name__ == "__main__":
    import os
    import traceback

    code = 0
    try:
        main()
    except BaseException:
        traceback.print_exc()
        code = 1
    os._exit(code)  # os-ken's native threads cannot be joined
