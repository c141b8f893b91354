"""A datacenter at scale: thousands of bound VMs on ten hypervisors, a few of them real.

The bulk of the VMs are OVS internal ports carrying the external_ids libvirt sets
(``attached-mac``, ``iface-id``): the controller learns and binds them from OVSDB like any
VM, and compiles, programs and verifies every one of them. A few real Mininet hosts in
the same segment carry the traffic checks and migrate (``migration.migrate``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .datacenter import VMPlan, vm
from .lab import Lab

SEGMENT = "blue"
BATCH = 200  # ports per ovs-vsctl transaction


def bulk_vms(n: int, hosts: int) -> list[dict]:
    """``n`` VMs spread over ``hosts`` hypervisors, as policy-document entries, with the
    hypervisor each one's port goes on (``_host``, stripped before the document is sent)."""
    out = []
    for i in range(n):
        k = i + 1
        out.append({"name": f"b{k}", "mac": f"0a:00:00:{k >> 16 & 255:02x}:{k >> 8 & 255:02x}:"
                    f"{k & 255:02x}", "ips": [f"10.{100 + (k >> 16 & 255)}.{k >> 8 & 255}."
                                              f"{k & 255}"],
                    "segment": SEGMENT, "_host": 1 + i % hosts})
    return out


def real_vms(hosts: int, per_host: int = 1) -> list[VMPlan]:
    return [vm(f"r{h}x{i}", h, SEGMENT, index=i) for h in range(1, hosts + 1)
            for i in range(1, per_host + 1)]


def document(real: list[VMPlan], bulk: list[dict]) -> dict:
    """One policy document registering every VM (one PUT instead of thousands of POSTs)."""
    vms = [{"name": p.name, "mac": p.mac, "ips": [p.ip], "segment": p.segment}
           for p in real]
    vms += [{k: v for k, v in b.items() if not k.startswith("_")} for b in bulk]
    return {"segments": [{"name": SEGMENT}], "vms": vms,
            "defaults": {"intra_group": "allow", "inter_group": "allow"}}


def add_bulk_ports(bulk: list[dict]) -> None:
    """Each bulk VM's port on its hypervisor bridge: an internal port with libvirt's
    external_ids, link up (a port whose link is down holds no VM)."""
    for start in range(0, len(bulk), BATCH):
        cmd = ["ovs-vsctl"]
        for b in bulk[start:start + BATCH]:
            cmd += ["--", "add-port", f"hv{b['_host']}", b["name"], "--", "set", "Interface",
                    b["name"], "type=internal", f"external_ids:attached-mac={b['mac']}",
                    f"external_ids:iface-id={b['name']}", "external_ids:iface-status=active"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    script = "".join(f"link set {b['name']} up\n" for b in bulk)
    subprocess.run(["ip", "-batch", "-"], input=script, text=True, check=True,
                   capture_output=True, timeout=600)


class ScaleLab(Lab):
    """``hosts`` hypervisors and one fabric switch; ``bulk`` VMs as internal ports plus
    the real ones in ``plan``; all registered by one policy document."""

    def __init__(self, hosts: int, bulk: int, plan: list[VMPlan], *, db_url: str,
                 workdir: Path, **kw) -> None:
        self.bulk = bulk_vms(bulk, hosts)
        super().__init__(hosts, 1, plan, db_url=db_url, workdir=workdir,
                         policy=document(plan, self.bulk), **kw)

    def start_network(self):
        net = super().start_network()
        add_bulk_ports(self.bulk)
        return net

    def expected_bound(self) -> set[str]:
        return super().expected_bound() | {b["name"] for b in self.bulk}

    def wait_converged(self, timeout: float = 60) -> None:
        super().wait_converged(max(timeout, 60 + len(self.bulk) / 5))  # ~10+ per second
