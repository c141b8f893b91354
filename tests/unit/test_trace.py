"""vfence trace over compiled flows (the fake switches of test_routing's network: three
hosts, two spines; the lab checks the same over the flows read from real switches)."""

from __future__ import annotations

import pytest

from vfence.controller import desired, trace
from vfence.controller.errors import Invalid, NotFound
from vfence.controller.flows import DROP, Flow, match
from vfence.controller.pipeline import Table

from .netfixtures import HV1, HV2
from .test_routing import _network


@pytest.fixture(scope="module")
def net():
    st = _network()
    return st, {d: list(f) for d, f in desired.compile_network(st).items()}


def test_a_delivered_packet_is_shown_hop_by_hop_across_the_fabric(net):
    st, flows = net
    r = trace.trace(st, flows, "w1", "d1", "tcp", 5432)
    assert r.verdict == "delivered" and r.reached == ["d1"] and r.reason == ""
    assert [h.switch for h in r.hops][0] == "hv1" and r.hops[-1].switch == "hv2"
    assert "sp1" in {h.switch for h in r.hops} or "sp2" in {h.switch for h in r.hops}
    judged = [h for h in r.hops if h.band == "rules"]
    assert [h.owner for h in judged] == ["rule web-db (allow)"]
    assert (r.hops[-1].band, r.hops[-1].owner) == ("deliver", "VM d1")
    assert r.packet["ipv4_dst"] == "10.10.2.11" and r.packet["tcp_dst"] == 5432


def test_a_drop_names_the_isolation_pair_the_rule_or_the_default(net):
    st, flows = net
    r = trace.trace(st, flows, "f1", "p1", "tcp", 5432)
    assert r.verdict == "dropped" and r.dropped_by.owner == "isolation pair front/payroll"
    assert r.reason.startswith("isolation pair front/payroll, in policy on hv1")
    r = trace.trace(st, flows, "w1", "d1", "tcp", 22)  # no rule: the default denies
    assert r.verdict == "dropped" and r.dropped_by.band == "default", r.reason
    r = trace.trace(st, flows, "l1", "w1", "tcp", 80)  # no router joins lab
    assert r.verdict == "dropped" and r.reached == []
    r = trace.trace(st, flows, "w1", "10.10.2.12", "icmp")  # by address; rule icmp
    assert r.verdict == "delivered" and r.reached == ["d2"]
    assert "rule icmp (allow)" in {h.owner for h in r.hops}


def test_a_hand_added_flow_that_drops_it_is_named_as_the_culprit(net):
    st, flows = net
    culprit = Flow(Table.POLICY, 65535, match(eth_type=0x0800, ip_proto=6, tcp_dst=5432),
                   DROP, 0x1234)
    r = trace.trace(st, {**flows, HV2: [*flows[HV2], culprit]}, "w1", "d1", "tcp", 5432)
    assert r.verdict == "dropped" and r.dropped_by.switch == "hv2"
    assert r.dropped_by.owner == "a flow vfence did not install (cookie 0x1234)"
    assert r.dropped_by.band == "" and "hv2" in r.reason


@pytest.mark.parametrize("args, error, field", [
    (("nobody", "d1", "tcp", 5432), NotFound, "source"),
    (("w1", "nowhere", "tcp", 5432), NotFound, "destination"),
    (("w1", "d1", "tcp", None), Invalid, "port"),
    (("w1", "d1", "icmp", 80), Invalid, "port"),
    (("w1", "d1", "sctp", 80), Invalid, "protocol"),
    (("w1", "fd00::1", "tcp", 80), Invalid, "source"),  # w1 has no IPv6
])
def test_a_bad_question_names_the_field(net, args, error, field):
    st, flows = net
    with pytest.raises(error) as e:
        trace.trace(st, flows, *args)
    assert e.value.field == field, e.value


def test_a_switch_whose_flows_were_not_read_makes_it_unknown(net):
    st, flows = net
    r = trace.trace(st, {d: f for d, f in flows.items() if d != HV2}, "w1", "d1", "tcp", 5432)
    assert r.verdict == "unknown" and "hv2" in r.reason


def test_a_hand_added_normal_action_is_not_guessed_at(net):
    st, flows = net
    normal = Flow(Table.CLASSIFY, 65535, match(in_port=3),
                  (("apply", (("output", 0xFFFFFFFA),)),), 0x99)  # w1's port: NORMAL
    r = trace.trace(st, {**flows, HV1: [*flows[HV1], normal]}, "w1", "d1", "tcp", 5432)
    assert r.verdict == "unknown" and "on hv1: output to reserved port 0xfffffffa" in r.reason
    assert r.hops[-1].owner == "a flow vfence did not install (cookie 0x99)"
