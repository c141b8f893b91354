"""The lab demo (``vfence lab`` / ``make demo``).

Starts the controller, builds the Mininet datacenter on real Open vSwitch, registers the
VMs over REST, then shows who can reach whom as a table next to what the segments say
should happen. Exits non-zero if any cell is wrong.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .datacenter import VMPlan, default_plan
from .lab import LabBase, ping_stream_result, start_ping_stream
from .prodlab import ProdLab


def reachability(lab: LabBase) -> dict[tuple[str, str], bool]:
    """Ping every ordered pair; each source pings all targets in parallel."""
    out: dict[tuple[str, str], bool] = {}
    for src in lab.plan:
        targets = [d for d in lab.plan if d.name != src.name]
        script = " ".join(
            f"(ping -c 2 -i 0.2 -W 1 {d.ip} >/dev/null 2>&1 && echo {d.name}=1 || "
            f"echo {d.name}=0) &" for d in targets
        )
        result = lab.host(src.name).cmd(f"{script} wait")
        for tok in result.split():
            if "=" in tok:
                name, ok = tok.split("=", 1)
                out[(src.name, name)] = ok == "1"
    return out


def matrix_table(plan: list[VMPlan], seen: dict[tuple[str, str], bool]) -> tuple[Table, int]:
    t = Table(title="reachability (ping): row -> column", show_lines=False)
    t.add_column("from \\ to")
    for d in plan:
        t.add_column(f"{d.name}\n{d.segment}", justify="center")
    wrong = 0
    for s in plan:
        cells = []
        for d in plan:
            if s is d:
                cells.append("·")
                continue
            expect = s.segment == d.segment and s.register and d.register
            got = seen.get((s.name, d.name), False)
            wrong += got != expect
            mark = "[green]✔[/green]" if got else "[dim]✘[/dim]"
            cells.append(mark if got == expect else f"[bold red]{'✔' if got else '✘'}!![/bold red]")
        t.add_row(f"{s.name} ({s.segment}, hv{s.host})", *cells)
    return t, wrong


def show_migration(lab: LabBase, console: Console) -> bool:
    """Move the first VM to the next hypervisor while a same-segment peer pings it every
    10 ms and a VM of another segment keeps trying; show what the network did."""
    import tempfile as tf

    from .migration import migrate

    vm = lab.plan[0]
    target = f"hv{vm.host % lab.hosts + 1}"
    peer = next(p for p in lab.plan if p.segment == vm.segment and p.host not in
                (vm.host, vm.host % lab.hosts + 1) and p is not vm) if lab.hosts > 2 else next(
        p for p in lab.plan if p.segment == vm.segment and p is not vm)
    intruder = next(p for p in lab.plan if p.segment != vm.segment)
    before = lab.get(f"/v1/vms/{vm.name}/location") or {}
    out = Path(tf.mkdtemp(prefix="vfence-demo-"))
    start_ping_stream(lab.host(peer.name), vm.ip, out / "peer", 400)
    start_ping_stream(lab.host(intruder.name), vm.ip, out / "intruder", 400)
    time.sleep(0.5)
    with console.status(f"live-migrating {vm.name} from hv{vm.host} to {target}"):
        migrate(lab.net, vm, target)
        ps, pr = ping_stream_result(out / "peer")
        is_, ir = ping_stream_result(out / "intruder")
    after = lab.get(f"/v1/vms/{vm.name}/location") or {}
    hist = lab.get(f"/v1/vms/{vm.name}/history") or [{}]
    conv = hist[-1].get("convergence_ms")
    moved = (after.get("host") or {}).get("name") == target
    console.print(f"migration of {vm.name}: {(before.get('host') or {}).get('name')} -> "
                  f"{(after.get('host') or {}).get('name')} (detected by "
                  f"{after.get('how')}, network converged in "
                  f"{conv if conv is None else round(conv, 1)} ms)")
    console.print(f"  {peer.name} ({peer.segment}) pinging every 10 ms: {pr}/{ps} answered, "
                  f"{ps - pr} lost ({(ps - pr) * 10} ms)")
    console.print(f"  {intruder.name} ({intruder.segment}, other segment): {ir}/{is_} got "
                  f"through, before, during and after")
    # a move, make-before-break (not an unbind and a new binding): it has a convergence
    ok = moved and conv is not None and ps - pr <= 20 and ir == 0 and lab.ping(peer.name,
                                                                              vm.name)
    console.print("[green]the network followed the VM[/green]" if ok else
                  "[bold red]migration check failed[/bold red]")
    return ok


def run_demo(hosts: int, vms_per_host: int, spines: int, stay_in_cli: bool, db_url: str,
             console: Console) -> bool:
    plan = default_plan(hosts, vms_per_host)
    work = Path(tempfile.mkdtemp(prefix="vfence-lab-"))
    if db_url.startswith("sqlite:///var/"):
        Path("var").mkdir(exist_ok=True)
        Path(db_url.removeprefix("sqlite:///")).unlink(missing_ok=True)  # a fresh demo
    lab = ProdLab(hosts, spines, plan, db_url=db_url, workdir=work)
    try:
        with console.status("starting the controller (OpenFlow :6653, REST :8080)"):
            lab.start_controller()
        with console.status(f"building {hosts} hypervisors x {vms_per_host} VMs and {spines} "
                            f"fabric switches: one Open vSwitch each, in its own namespace, "
                            f"every bridge br-int, one --ovsdb per host"):
            lab.start_network()
        with console.status("registering VMs over REST and waiting for convergence"):
            t0 = time.monotonic()
            lab.register()
            lab.wait_converged()
            converged = time.monotonic() - t0
        health = lab.get("/v1/health") or {}
        console.print(f"converged in {converged:.1f}s: {health.get('switches_ready')} switches, "
                      f"{health.get('links')} fabric links, {health.get('vms')} VMs, "
                      f"{health.get('flow_mods_sent')} flow-mods sent in bundles")
        hosts_info = lab.get("/v1/hosts") or []
        console.print("flows per switch: " + ", ".join(f"{h['name']}={h['flows']}"
                                                        for h in hosts_info))
        with console.status("pinging every pair"):
            seen = reachability(lab)
        table, wrong = matrix_table(plan, seen)
        console.print(table)
        if wrong:
            console.print(f"[bold red]{wrong} cells differ from the segment policy[/bold red]")
        else:
            console.print("[green]every VM reaches exactly its own segment[/green]")
        if hosts >= 2:
            wrong += 0 if show_migration(lab, console) else 1
        if stay_in_cli:
            from mininet.cli import CLI

            console.print(f"REST API at {lab.api}; type 'exit' to leave")
            CLI(lab.net)
        return wrong == 0
    finally:
        with console.status("tearing down"):
            lab.down()
        console.print(f"controller log: {work}")
