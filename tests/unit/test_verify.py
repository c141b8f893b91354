"""Header-space isolation proofs over compiled flows (a switch's tables as data)."""

from __future__ import annotations

import copy

import pytest

from vfence.controller import desired, verify
from vfence.controller.flows import Flow, match

from .netfixtures import HV1, HV2, finance, two_hosts_two_spines


def finance_state():
    return finance(two_hosts_two_spines(), {
        "pay-1": (HV1, 3), "web-1": (HV1, 4), "pay-2": (HV2, 3), "api-1": (HV2, 4),
        "web-2": (HV2, 5)})


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
    (v,) = verify.verify(st, as_lists(desired.compile_network(st)), ports(st))
    assert v.pair == ("payroll", "frontend") and v.isolated and v.complete, v.witness
    assert v.explored > 100  # it really walked the tables


def test_a_hand_added_leak_is_found_with_its_path():
    st = finance_state()
    flows = as_lists(desired.compile_network(st))
    # someone "fixes" something by hand: web-1's port straight to pay-1's on hv1
    flows[HV1].append(Flow(0, 65000, match(in_port=4), (("apply", (("output", 3),)),), 0))
    (v,) = verify.verify(st, flows, ports(st))
    assert not v.isolated
    assert "prio 65000" in " ".join(v.witness) and "delivered to pay-1" in v.witness[-1]


def test_a_leak_across_the_fabric_is_found():
    st = finance_state()
    flows = as_lists(desired.compile_network(st))
    # an allow above the isolation flows in hv1's policy table, for pay-2 (on hv2) only
    pay2 = st.vms["pay-2"].id
    flows[HV1].append(Flow(30, 65535, match(eth_type=0x0800, reg4=pay2), (("goto", 40),), 0))
    (v,) = verify.verify(st, flows, ports(st))
    assert not v.isolated
    assert any("->" in step for step in v.witness)  # crossed a fabric link
    assert v.witness[-1].startswith("delivered to pay-2")
    # each hop names its table by number and name
    assert any(step.startswith("hv1 table 30 (policy) prio 65535") for step in v.witness)
    assert any(step.startswith("hv2 table 1 (fabric) prio 100") for step in v.witness)


def test_a_leak_in_the_other_direction_only_is_found():
    st = finance_state()
    flows = as_lists(desired.compile_network(st))
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


# --- three answers: isolated, broken, unknown -------------------------------------------------
# pay-1 (payroll) sends on hv1 port 3, web-1 (frontend) listens on hv1 port 4.

OUT_4 = (("apply", (("output", 4),)),)
RESUBMIT_50 = (("apply", (("resubmit", 50),)),)


def _verdict_with(first, *more, st=None, flows=None):
    """The verdict when hv1 starts pay-1's frames (port 3) with the instructions ``first``,
    above everything the compiler wrote, and also holds the flows ``more``."""
    st = st or finance_state()
    flows = flows or as_lists(desired.compile_network(st))
    if first is not None:
        flows[HV1].append(Flow(0, 65000, match(in_port=3), first, 0xBEEF))
    flows[HV1].extend(more)
    (v,) = verify.verify(st, flows, ports(st))
    return v


def test_the_step_limit_makes_the_verdict_unknown_never_isolated(monkeypatch):
    monkeypatch.setattr(verify, "MAX_STEPS", 50)
    v = _verdict_with(None)
    assert v.status == "unknown" and not v.isolated and not v.complete
    assert "step limit reached" in v.reason and "50 steps" in v.reason


@pytest.mark.parametrize("instructions, named", [
    ((("actions3", (("output", 4),)),), "'actions3'"),  # write-actions
    ((("unknown", "OFPInstructionFoo"),), "'OFPInstructionFoo'"),
    ((("apply", (("unknown", "NXActionLearn"),)),), "'NXActionLearn'"),
    ((("apply", (("group", 7),)),), "'group'"),
])
def test_an_unmodelled_instruction_or_action_makes_it_unknown_naming_it_and_the_flow(
        instructions, named):
    v = _verdict_with(instructions)
    assert v.status == "unknown" and not v.isolated and v.complete, v.witness
    assert named in v.reason and "not modelled" in v.reason
    assert "hv1 table 0 (classify) prio 65000 cookie 0xbeef" in v.reason


def test_a_real_leak_beats_an_unmodelled_flow():
    v = _verdict_with(None, Flow(0, 65000, match(in_port=3, eth_type=0x0800),
                                 (("actions3", (("output", 4),)),), 0),
                      Flow(0, 65000, match(in_port=3, eth_type=0x86DD), OUT_4, 0))
    assert v.status == "broken" and "delivered to web-1" in v.witness[-1]


def test_a_leak_only_reachable_through_a_resubmit_is_found():
    v = _verdict_with(RESUBMIT_50, Flow(50, 10, (), OUT_4, 0))
    assert v.status == "broken"
    assert "resubmit to table 50" in v.witness and "delivered to web-1" in v.witness[-1]


def test_a_drop_inside_the_resubmitted_table_keeps_the_pair_isolated():
    v = _verdict_with(RESUBMIT_50, Flow(50, 10, (), (), 0))
    assert v.status == "isolated" and v.reason == "", v.witness


def test_actions_after_a_resubmit_run_with_what_it_changed():
    """reg7 is set inside the resubmitted table; the goto after the resubmit matches on it.
    Continuing with the header as it was before (reg7 = 0) would miss the leak."""
    v = _verdict_with((*RESUBMIT_50, ("goto", 51)),
                      Flow(50, 10, (), (("apply", (("set", "reg7", 1),)),), 0),
                      Flow(51, 10, match(reg7=1), OUT_4, 0))
    assert v.status == "broken" and "delivered to web-1" in v.witness[-1]
    # and the next action of the same list goes on after the resubmitted lookup
    v = _verdict_with((("apply", (("resubmit", 50), ("output", 4))),), Flow(50, 10, (), (), 0))
    assert v.status == "broken"


def test_resubmits_in_a_loop_are_unknown():
    v = _verdict_with(RESUBMIT_50, Flow(50, 10, (), RESUBMIT_50, 0))
    assert v.status == "unknown" and "nested deeper than 64" in v.reason


def test_the_original_of_a_ct_recirculation_goes_on():
    """ct(table=N) forks: the tracked copy goes to table N, the original carries on with
    the actions after it."""
    v = _verdict_with((("apply", (("ct", 0, "reg5", 15, 60), ("output", 4))),))
    assert v.status == "broken"


def test_a_switch_whose_flows_were_not_read_is_unknown():
    st = finance_state()
    flows = as_lists(desired.compile_network(st))
    del flows[HV2]  # pay-2 and web-2 sit there
    v = _verdict_with(None, st=st, flows=flows)
    assert v.status == "unknown" and "hv2" in v.reason and "not read" in v.reason
