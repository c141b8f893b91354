"""Header-space isolation proofs over compiled flows (a switch's tables as data)."""

from __future__ import annotations

import copy

import pytest

from vfence.controller import desired, verify
from vfence.controller.flows import Flow, cookie_owner, match
from vfence.controller.pipeline import Owner, Table

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
    assert "table 0 prio 65000 cookie 0xbeef" in v.reason or \
        "hv1 table 0 (classify) prio 65000 cookie 0xbeef" in v.reason


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


# --- conjunctive matches ----------------------------------------------------------------------
# pay-1's frames get "source group" 1 in reg1 and "destination group" 2 in reg2, then table 50
# holds conjunction 7: reg1 in {1, 3} (clause 1) and reg2 in {2, 4} (clause 2), at prio 100,
# its conj_id flow dropping, above an allow to web-1's port at prio 10.

TO_50 = (("apply", (("set", "reg1", 1), ("set", "reg2", 2))), ("goto", 50))
ALLOW = Flow(50, 10, (), OUT_4, 0)


def conj(*ids_k_n):
    return (("apply", tuple(("conjunction", *x) for x in ids_k_n)),)


def clause(k, n=2, prio=100, cid=7, **fields):
    return Flow(50, prio, match(**fields), conj((cid, k, n)), 0xC0)


def result(instructions=(), prio=100, cid=7, **fields):
    return Flow(50, prio, match(conj_id=cid, **fields), instructions, 0x77)


SRC = (clause(1, reg1=1), clause(1, reg1=3))
DST = (clause(2, reg2=2), clause(2, reg2=4))


def test_a_drop_by_a_completed_conjunction_above_an_allow_proves_isolation():
    v = _verdict_with(TO_50, *SRC, *DST, result(), ALLOW)
    assert v.status == "isolated" and v.reason == "", (v.witness, v.reason)


def test_a_conjunction_missing_a_clause_never_completes_and_lets_traffic_through():
    v = _verdict_with(TO_50, *SRC, result(), ALLOW)  # no flow carries conjunction(7,2/2)
    assert v.status == "broken", v.reason
    assert v.witness[-2].startswith("hv1 table 50 prio 10 ")
    assert "delivered to web-1" in v.witness[-1]
    assert not any("conjunction" in step for step in v.witness)


def test_a_conjunction_that_completes_only_for_the_other_group_does_not_block():
    v = _verdict_with(TO_50, *SRC, clause(2, reg2=4), result(), ALLOW)
    assert v.status == "broken" and "delivered to web-1" in v.witness[-1], v.reason
    assert v.witness[-2].startswith("hv1 table 50 prio 10 ")


def test_a_leak_through_a_conjunction_names_it_and_its_merged_match_in_the_witness():
    v = _verdict_with(TO_50, *SRC, *DST, result(OUT_4))
    assert v.status == "broken", v.reason
    assert v.witness[-2] == "hv1 table 50 prio 100 conjunction 7 cookie 0x77 " \
                            "{'reg1': 1, 'reg2': 2}"


def test_an_ordinary_flow_of_the_same_priority_beats_a_conjunction():
    """OVS tries conjunctions only above the best ordinary match."""
    allow_100 = Flow(50, 100, match(reg1=1), OUT_4, 0)
    assert _verdict_with(TO_50, *SRC, *DST, result(), allow_100).status == "broken"
    allow_99 = Flow(50, 99, match(reg1=1), OUT_4, 0)
    assert _verdict_with(TO_50, *SRC, *DST, result(), allow_99).status == "isolated"


def test_two_conjunctions_completing_at_one_priority_are_both_followed():
    """Which one OVS takes is not defined: the allowing one must be found."""
    v = _verdict_with(TO_50, *SRC, *DST, result(),
                      clause(1, cid=8, reg1=1), clause(2, cid=8, reg2=2), result(OUT_4, cid=8))
    assert v.status == "broken" and "conjunction 8" in v.witness[-2], v.reason
    # and either order of the ids: the allowing one first
    v = _verdict_with(TO_50, *SRC, *DST, result(OUT_4),
                      clause(1, cid=8, reg1=1), clause(2, cid=8, reg2=2), result(cid=8))
    assert v.status == "broken" and "conjunction 7" in v.witness[-2], v.reason


def test_contradicting_combinations_are_left_out_of_the_expansion():
    """Clause 2 wants reg1's bit 1 clear: with reg1=3 it can never match."""
    flows = [clause(1, reg1=1), clause(1, reg1=3), clause(2, reg1=(0, 2), reg2=2),
             result(OUT_4)]
    (virtual,) = verify.expand(flows)
    assert virtual == Flow(50, 100, match(reg1=1, reg2=2),
                           ((verify.VIRTUAL, 7), *OUT_4), 0x77)


def test_a_contradicting_combination_does_not_complete_for_the_header():
    # pay-1 has reg1=3: clause 1 matches it, clause 2 (reg1 bit 1 clear) never does
    to_50 = (("apply", (("set", "reg1", 3), ("set", "reg2", 2))), ("goto", 50))
    v = _verdict_with(to_50, clause(1, reg1=3), clause(2, reg1=(0, 2), reg2=2),
                      result(OUT_4), Flow(50, 10, (), (), 0))
    assert v.status == "isolated", (v.witness, v.reason)
    # the same without the contradiction completes and leaks
    v = _verdict_with(to_50, clause(1, reg1=3), clause(2, reg2=2), result(OUT_4),
                      Flow(50, 10, (), (), 0))
    assert v.status == "broken" and "conjunction 7" in v.witness[-2]


@pytest.mark.parametrize("flows, reason", [
    ((clause(1, reg1=1), clause(2, n=3, reg2=2), result()),
     "the clause flows of conjunction 7 disagree on n ([2, 3])"),
    ((clause(1, reg1=1), clause(2, prio=101, reg2=2), result()),
     "the clause flows of conjunction 7 disagree on priority ([100, 101])"),
    ((*SRC, *DST),
     "conjunction 7 can complete but table 50 has no conj_id flow, at hv1 table 50 prio 100 "
     "conjunction 7 cookie 0x0 {'reg1': 1, 'reg2': 2}"),
    ((*SRC, *DST, result(reg3=0)),
     "a conj_id=7 flow matches only some packets of the conjunction"),
    ((*SRC, *DST, result(reg1=5)), "no conj_id=7 flow matches what the conjunction lets"),
    ((*SRC, *DST, result(prio=50)),
     "the conj_id=7 flow (prio 50) is below its clauses (prio 100)"),
    ((Flow(50, 100, match(reg1=1), (("apply", (("conjunction", 7, 1, 2), ("output", 4))),), 0),
      clause(1, reg1=3), *DST, result()),
     "conjunction actions mixed with other actions or instructions, at hv1 table 50 prio 100 "
     "cookie 0x0 {'reg1': 1}"),
    ((clause(1, reg1=1), Flow(50, 100, match(reg2=2), conj((7, 3, 2)), 0), result()),
     "a malformed conjunction action ('conjunction', 7, 3, 2)"),
    ((Flow(50, 100, match(reg1=1, conj_id=7), conj((7, 1, 2)), 0), *DST, result()),
     "a clause flow that matches on conj_id"),
    ((*SRC, *DST, result(cid=(7, 0xFF))), "matches conj_id (7, 255)"),
    ((*SRC, *DST, result(cid=0)), "matches conj_id 0"),
])
def test_what_the_expansion_cannot_model_makes_it_unknown(flows, reason):
    v = _verdict_with(TO_50, *flows, ALLOW)
    assert v.status == "unknown" and v.witness == [], (v.witness, v.reason)
    assert reason in v.reason


def test_a_conjunction_over_the_cap_makes_it_unknown(monkeypatch):
    monkeypatch.setattr(verify, "MAX_VIRTUAL", 3)  # SRC x DST is 4 combinations
    v = _verdict_with(TO_50, *SRC, *DST, result(), ALLOW)
    assert v.status == "unknown"
    assert "conjunction 7 expands to 4 flows, more than the 3 a switch may have" in v.reason
    monkeypatch.setattr(verify, "MAX_VIRTUAL", 4)
    assert _verdict_with(TO_50, *SRC, *DST, result(), ALLOW).status == "isolated"


def test_an_unmodelled_conjunction_only_concerns_the_headers_it_could_decide():
    """A broken conjunction whose clause flows pay-1's frames (reg1=1, reg2=2) match none of
    is never reached: the allow below still shows the leak."""
    v = _verdict_with(TO_50, clause(1, cid=9, reg1=5), clause(2, cid=9, n=3, reg2=6), ALLOW)
    assert v.status == "broken" and "delivered to web-1" in v.witness[-1], v.reason


@pytest.mark.parametrize("allow_first", [True, False])
def test_a_hand_made_allow_beside_the_isolation_drop_at_its_priority_is_found(allow_first):
    """OVS picks one of two flows of one priority that both match, and which is not
    defined: the verdict must not depend on the order the flows were read in."""
    st = finance_state()
    flows = as_lists(desired.compile_network(st))
    drops = [f for f in flows[HV1] if f.table == Table.POLICY
             and (cookie_owner(f.cookie) or (None,))[0] == Owner.ISOLATION]
    assert drops, "the isolation drops are where the test expects"
    # overlapping each drop (never identical to one: OVS would replace it), from web-1
    def allows(delta):
        return [Flow(30, d.priority + delta, match(**dict(d.match), in_port=4),
                     (("apply", (("output", 3),)),), 0xBAD) for d in drops]

    flows[HV1] = [*allows(0), *flows[HV1]] if allow_first else [*flows[HV1], *allows(0)]
    (v,) = verify.verify(st, flows, ports(st))
    assert v.status == "broken", (v.status, v.reason)
    assert "cookie 0xbad" in " ".join(v.witness) and "delivered to pay-1" in v.witness[-1]
    # positive control: the same flows one priority below the drops change nothing
    flows[HV1] = [f for f in flows[HV1] if f.cookie != 0xBAD] + allows(-1)
    (v,) = verify.verify(st, flows, ports(st))
    assert v.isolated, v.witness


def test_a_hand_made_flow_at_a_standby_port_is_found_both_ways():
    """During a migration the target's standby port already has the VM's flows: a hole
    there (to or from it) is a hole, though the VM is still bound on the old host."""
    from vfence.controller.model import Binding, PortRef

    st = finance_state()
    st.standby["pay-1"] = Binding("pay-1", PortRef(HV2, 9), "pay-1-new", "standby")
    flows = as_lists(desired.compile_network(st))
    live = ports(st)
    live[HV2].add(9)
    (v,) = verify.verify(st, flows, live)
    assert v.isolated and v.complete, v.witness  # control: compiled flows keep it closed
    for rule in (match(in_port=5), match(in_port=9)):  # web-2 -> standby, standby -> web-2
        out = 9 if rule == match(in_port=5) else 5
        hole = Flow(0, 65000, rule, (("apply", (("output", out),)),), 0xBAD)
        (v,) = verify.verify(st, {**flows, HV2: [*flows[HV2], hole]}, live)
        assert v.status == "broken", (rule, v.status, v.reason)
        assert "cookie 0xbad" in " ".join(v.witness), v.witness
        assert ("pay-1 (standby)" in v.witness[-1]) == (out == 9), v.witness
        assert v.witness[0].startswith("pay-1 (standby)") == (out == 5), v.witness
