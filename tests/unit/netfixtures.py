"""Small network states for compiler/reconciler tests (no switch involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vfence.controller import policy
from vfence.controller.model import VM, Binding, Link, NetworkState, PortRef, Switch

HV1, HV2, HV3, SP1, SP2 = 0x101, 0x102, 0x103, 0x201, 0x202
FINANCE = yaml.safe_load(
    (Path(__file__).parents[2] / "mininet_topos" / "finance.yaml").read_text())
# the finance VMs on three hypervisors, as in the lab: (switch, port)
FINANCE_ON_3 = {"pay-1": (HV1, 3), "web-1": (HV1, 4), "pay-2": (HV2, 3), "api-1": (HV2, 4),
                "web-2": (HV3, 3), "ops-1": (HV3, 4)}


def link_pair(a: int, pa: int, b: int, pb: int) -> set[Link]:
    return {Link(PortRef(a, pa), PortRef(b, pb)), Link(PortRef(b, pb), PortRef(a, pa))}


def leaf_spine(hosts: int, spines: int) -> NetworkState:
    """hvH (0x100+H, label H) on port S linked to spS (0x200+S, label hosts+S) on port H:
    with two spines, a loop. VM ports on a hypervisor start at spines + 1."""
    st = NetworkState()
    hvs = [0x100 + h for h in range(1, hosts + 1)]
    sps = [0x200 + s for s in range(1, spines + 1)]
    for i, dpid in enumerate(hvs + sps, start=1):
        st.switches[dpid] = Switch(dpid, f"hv{i}" if i <= hosts else f"sp{i - hosts}", i)
    for h, hv in enumerate(hvs, start=1):
        for s, sp in enumerate(sps, start=1):
            st.links |= link_pair(hv, s, sp, h)
    st.fabric = {hv: frozenset(range(1, spines + 1)) for hv in hvs} | {
        sp: frozenset(range(1, hosts + 1)) for sp in sps}
    return st


def two_hosts_two_spines() -> NetworkState:
    """hv1/hv2 each linked to sp1 (port 1) and sp2 (port 2): a loop hv1-sp1-hv2-sp2."""
    return leaf_spine(2, 2)


def finance(st: NetworkState, placement: dict[str, tuple[int, int]],
            doc: dict[str, Any] | None = None) -> NetworkState:
    """The finance scenario (or ``doc``) on ``st``: its policy in force, every VM of the
    document registered (tag = its place there), those in ``placement`` bound."""
    st.policy = policy.parse(doc or FINANCE)
    st.group_bits = {g: i for i, g in enumerate(st.policy.groups)}
    for i, spec in enumerate(st.policy.vms, start=1):
        st.vms[spec.name] = VM(i, spec.name, spec.mac, spec.ips, 1, spec.segment, spec.groups)
        if spec.name in placement:
            dpid, port = placement[spec.name]
            st.bindings[spec.name] = Binding(spec.name, PortRef(dpid, port))
    return st


def add_vm(st: NetworkState, vid: int, name: str, seg: int, dpid: int | None, port: int = 0,
           ip: str | None = None) -> VM:
    vm = VM(vid, name, f"00:00:00:00:00:{vid:02x}", (ip or f"10.0.0.{vid}",), seg, f"seg{seg}")
    st.vms[name] = vm
    if dpid is not None:
        st.bindings[name] = Binding(name, PortRef(dpid, port), f"p{port}")
    return vm
