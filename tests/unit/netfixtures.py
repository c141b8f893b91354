"""Small network states for compiler/reconciler tests (no switch involved)."""

from __future__ import annotations

from vfence.controller.model import VM, Binding, Link, NetworkState, PortRef, Switch

HV1, HV2, SP1, SP2 = 0x101, 0x102, 0x201, 0x202


def link_pair(a: int, pa: int, b: int, pb: int) -> set[Link]:
    return {Link(PortRef(a, pa), PortRef(b, pb)), Link(PortRef(b, pb), PortRef(a, pa))}


def two_hosts_two_spines() -> NetworkState:
    """hv1/hv2 each linked to sp1 (port 1) and sp2 (port 2): a loop hv1-sp1-hv2-sp2."""
    st = NetworkState()
    for dpid, name, label in [(HV1, "hv1", 1), (HV2, "hv2", 2), (SP1, "sp1", 3),
                              (SP2, "sp2", 4)]:
        st.switches[dpid] = Switch(dpid, name, label)
    st.links = (link_pair(HV1, 1, SP1, 1) | link_pair(HV1, 2, SP2, 1)
                | link_pair(HV2, 1, SP1, 2) | link_pair(HV2, 2, SP2, 2))
    st.fabric = {HV1: frozenset({1, 2}), HV2: frozenset({1, 2}), SP1: frozenset({1, 2}),
                 SP2: frozenset({1, 2})}
    return st


def add_vm(st: NetworkState, vid: int, name: str, seg: int, dpid: int | None, port: int = 0,
           ip: str | None = None) -> VM:
    vm = VM(vid, name, f"00:00:00:00:00:{vid:02x}", (ip or f"10.0.0.{vid}",), seg, f"seg{seg}")
    st.vms[name] = vm
    if dpid is not None:
        st.bindings[name] = Binding(name, PortRef(dpid, port), f"p{port}")
    return vm
