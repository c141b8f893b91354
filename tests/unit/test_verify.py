"""Header-space isolation proofs over compiled flows (a switch's tables as data)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from controller import compiler, policy, verify
from controller.flows import Flow, match
from controller.model import VM, Binding, PortRef

from .netfixtures import HV1, HV2, two_hosts_two_spines

FINANCE = yaml.safe_load(
    (Path(__file__).parents[2] / "mininet_topos" / "finance.yaml").read_text())


def finance_state():
    st = two_hosts_two_spines()
    st.policy = policy.parse(FINANCE)
    st.group_bits = {g: i for i, g in enumerate(st.policy.groups)}
    placement = {"pay-1": (HV1, 3), "web-1": (HV1, 4), "pay-2": (HV2, 3), "api-1": (HV2, 4),
                 "web-2": (HV2, 5)}
    for i, spec in enumerate(st.policy.vms, start=1):
        st.vms[spec.name] = VM(i, spec.name, spec.mac, spec.ips, 1, spec.segment, spec.groups)
        if spec.name in placement:
            d, p = placement[spec.name]
            st.bindings[spec.name] = Binding(spec.name, PortRef(d, p))
    return st


def ports(st):
    out = {d: set() for d in st.switches}
    for lk in st.links:
        out[lk.src.dpid].add(lk.src.port_no)
    for b in st.bindings.values():
        out[b.port.dpid].add(b.port.port_no)
    return out


def as_lists(flows):
    return {d: list(f) for d, f in flows.items()}


def test_compiled_policy_is_proved_isolated():
    st = finance_state()
    (v,) = verify.verify(st, as_lists(compiler.compile_network(st)), ports(st))
    assert v.pair == ("payroll", "frontend") and v.isolated and v.complete, v.witness
    assert v.explored > 100  # it really walked the tables


def test_a_hand_added_leak_is_found_with_its_path():
    st = finance_state()
    flows = as_lists(compiler.compile_network(st))
    # someone "fixes" something by hand: web-1's port straight to pay-1's on hv1
    flows[HV1].append(Flow(0, 65000, match(in_port=4), (("apply", (("output", 3),)),), 0))
    (v,) = verify.verify(st, flows, ports(st))
    assert not v.isolated
    assert "prio 65000" in " ".join(v.witness) and "delivered to pay-1" in v.witness[-1]


def test_a_leak_across_the_fabric_is_found():
    st = finance_state()
    flows = as_lists(compiler.compile_network(st))
    # an allow above the isolation flows in hv1's policy table, for pay-2 (on hv2) only
    pay2 = st.vms["pay-2"].id
    flows[HV1].append(Flow(30, 65535, match(eth_type=0x0800, reg4=pay2), (("goto", 40),), 0))
    (v,) = verify.verify(st, flows, ports(st))
    assert not v.isolated
    assert any("->" in step for step in v.witness)  # crossed a fabric link
    assert v.witness[-1].startswith("delivered to pay-2")


def test_a_leak_in_the_other_direction_only_is_found():
    st = finance_state()
    flows = as_lists(compiler.compile_network(st))
    flows[HV2].append(Flow(0, 65000, match(in_port=3), (("apply", (("output", 5),)),), 0))
    (v,) = verify.verify(st, flows, ports(st))
    assert not v.isolated and "delivered to web-2" in v.witness[-1]


def test_intersect_and_subtract():
    c = verify.Cube().set_exact("in_port", 3)
    assert verify.intersect(c, match(in_port=4)) is None
    hit = verify.intersect(c, match(eth_type=0x0800))
    assert hit is not None and hit.get("eth_type") == (0x0800, 0xFFFF)
    rest = verify.subtract(c, match(in_port=3, eth_type=0x0800))
    assert len(rest) == 1 and verify.intersect(rest[0], match(eth_type=0x0800)) is None
    assert verify.subtract(c, match(in_port=4)) == [c]
    copy.deepcopy(c)
