"""A parametrised datacenter lab: hypervisor bridges with VMs, joined by fabric switches.

Every hypervisor bridge links to every fabric switch, so with two or more of each the
fabric has loops and path computation matters. All bridges: OpenFlow 1.3, userspace
datapath, ``fail_mode=secure``. VMs are Mininet hosts whose switch-side interfaces get
libvirt-style ``external_ids`` (``attached-mac``, ``iface-id``).
"""

from __future__ import annotations

import subprocess
from collections.abc import Collection
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from mininet.link import Intf, TCLink
from mininet.net import Mininet
from mininet.node import OVSSwitch, RemoteController
from mininet.topo import Topo


@dataclass(frozen=True)
class VMPlan:
    name: str
    host: int  # hypervisor index, from 1
    segment: str
    mac: str
    ip: str
    groups: tuple[str, ...] = ()
    register: bool = True  # False: a rogue machine vfence knows nothing about
    prefix: int = 16

    def rest_body(self) -> dict:
        return {"name": self.name, "mac": self.mac, "ips": [self.ip], "segment": self.segment,
                "groups": list(self.groups)}


def default_plan(hosts: int, vms_per_host: int, segments: tuple[str, ...] = ("blue", "red")
                 ) -> list[VMPlan]:
    out = []
    for h in range(1, hosts + 1):
        for i in range(1, vms_per_host + 1):
            out.append(vm(f"vm{h}{i}", h, segments[(i - 1) % len(segments)]))
    return out


def vm(name: str, host: int, segment: str, *, index: int | None = None,
       groups: tuple[str, ...] = (), register: bool = True) -> VMPlan:
    """A VM on hypervisor ``host``; MAC/IP derive from the host and a per-host index."""
    i = index if index is not None else int(name[-1]) if name[-1].isdigit() else 9
    return VMPlan(name, host, segment, f"00:00:00:00:{host:02x}:{i:02x}", f"10.0.{host}.{i}",
                  groups, register)


FINANCE_POLICY = Path(__file__).with_name("finance.yaml")
# where the finance VMs run: pay-1 and web-1 (an isolation pair) share hv1
FINANCE_PLACEMENT = {"pay-1": 1, "web-1": 1, "pay-2": 2, "api-1": 2, "web-2": 3, "ops-1": 3}


def plan_from_policy(doc: dict, placement: dict[str, int]) -> list[VMPlan]:
    """Mininet hosts for the VMs of a policy document, on the given hypervisors."""
    return [
        VMPlan(v["name"], placement[v["name"]], v["segment"], v["mac"], v["ips"][0],
               tuple(v.get("groups", [])), prefix=8)
        for v in doc["vms"] if v["name"] in placement
    ]


def hv_name(h: int) -> str:
    return f"hv{h}"


class DatacenterTopo(Topo):
    def build(self, hosts: int = 3, spines: int = 2, plan: list[VMPlan] | None = None
              ) -> None:  # type: ignore[override]
        plan = plan if plan is not None else default_plan(hosts, 2)
        for s in range(1, spines + 1):
            self.addSwitch(f"sp{s}", dpid=f"{0x200 + s:016x}")
        for h in range(1, hosts + 1):
            self.addSwitch(hv_name(h), dpid=f"{0x100 + h:016x}")
            for s in range(1, spines + 1):
                self.addLink(hv_name(h), f"sp{s}")
        for p in plan:
            self.addHost(p.name, mac=p.mac, ip=f"{p.ip}/{p.prefix}")
            self.addLink(p.name, hv_name(p.host))


def build_net(hosts: int, spines: int, plan: list[VMPlan]) -> Mininet:
    """Mininet network (built, not started); :func:`start` attaches the controller."""
    switch = partial(OVSSwitch, failMode="secure", datapath="user", protocols="OpenFlow13")
    link = partial(TCLink, txo=False, rxo=False)  # TCP over veth + userspace datapath
    return Mininet(
        topo=DatacenterTopo(hosts=hosts, spines=spines, plan=plan), switch=switch, link=link,
        controller=None, autoSetMacs=False, autoStaticArp=False, waitConnected=False,
        build=True, cleanup=False, ipBase="10.0.0.0/16",
    )


def start(net: Mininet, of_port: int = 6653) -> None:
    """Point every bridge at the controller and start it."""
    net.addController("c0", controller=RemoteController, ip="127.0.0.1", port=of_port)
    net.start()
    for sw in net.switches:  # no in-band, no hub fallback; name and role as an installer would
        role = "external_ids:vfence-role=fabric" if sw.name.startswith("sp") else ""
        sw.cmd(f"ovs-vsctl set Bridge {sw.name} fail_mode=secure other-config:disable-in-band=true"
               f" external_ids:vfence-host={sw.name} {role}")
    # a 30 s inactivity probe (OVS's default is 5 s): a controller busy with a large change
    # for a few seconds is not dropped and re-synchronised for it (README, "At scale")
    ids = subprocess.run(["ovs-vsctl", "--bare", "--columns=_uuid", "list", "Controller"],
                         capture_output=True, text=True, check=True).stdout.split()
    for uuid in ids:
        subprocess.run(["ovs-vsctl", "set", "Controller", uuid, "inactivity_probe=30000"],
                       check=True)
    for link in net.links:  # hypervisor ports that face a fabric switch
        for a, b in ((link.intf1, link.intf2), (link.intf2, link.intf1)):
            if a.node.name.startswith("hv") and b.node.name.startswith("sp"):
                subprocess.run(["ovs-vsctl", "set", "Interface", a.name,
                                "external_ids:vfence-fabric=true"], check=True)


def switch_side(net: Mininet, vm_name: str) -> Intf:
    """The bridge-side interface of a VM's link; its node is the switch."""
    intf = net.get(vm_name).defaultIntf()
    link = intf.link
    return link.intf2 if link.intf1 is intf else link.intf1


def switch_intf(net: Mininet, vm_name: str) -> str:
    """Name of the bridge-side interface of a VM's link (e.g. ``hv1-eth3``)."""
    return switch_side(net, vm_name).name


def plug_like_libvirt(sw_intf: Intf, p: VMPlan) -> None:
    """Set the external_ids libvirt sets when it plugs a VM's tap into the bridge, in the
    OVSDB of the switch that owns ``sw_intf`` (its node's ``vsctl``)."""
    out = sw_intf.node.vsctl("set", "Interface", sw_intf.name,
                             f"external_ids:attached-mac={p.mac}",
                             f"external_ids:iface-id={p.name}",
                             "external_ids:iface-status=active")
    if out and out.strip():
        raise RuntimeError(f"plugging {p.name} on {sw_intf.node.name}: {out.strip()}")


def announce_like_libvirt(net: Mininet, p: VMPlan) -> None:
    """Set the external_ids libvirt sets when it plugs a VM's tap into the bridge."""
    plug_like_libvirt(switch_side(net, p.name), p)


def cleanup(keep: Collection[int] = ()) -> None:
    """Remove what a previous lab may have left: Mininet's (bridges in the system OVS,
    veths, hosts) and the production-shaped lab's (namespaces with their own OVS, its
    controller; ``keep``: pids to spare)."""
    from .prodlab import remove_leftovers  # prodlab builds on this module

    remove_leftovers(keep=keep)
    subprocess.run(["mn", "-c"], capture_output=True, check=False)
