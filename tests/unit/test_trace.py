"""vfence trace over compiled flows (the fake switches of test_routing's network: three
hosts, two spines; the lab checks the same over the flows read from real switches)."""

from __future__ import annotations

import pytest

from vfence.controller import desired, policy, trace
from vfence.controller.errors import Invalid, NotFound
from vfence.controller.flows import DROP, Flow, match
from vfence.controller.pipeline import Table

from .netfixtures import HV1, HV2
from .test_routing import DOC, _network


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


def test_found_by_review_the_packet_carries_what_rules_match_and_addresses_read_right():
    """A rule with an ICMP code matches the traced ping (the packet carries code 0, and a
    TCP SYN's flags); an IPv6 address that looks like a MAC to a careless parser
    (fd00:abcd::5:6:17) matches its CIDR."""
    import ipaddress

    from vfence.controller import policy
    from vfence.controller.walk import _int

    from .test_routing import DOC

    d = {**DOC, "rules": [{"name": "ping-code", "from": "web", "to": "db", "protocol": "icmp",
                           "icmp_type": 8, "icmp_code": 0, "action": "allow"}]}
    st = _network()
    st.policy = policy.parse(d)
    flows = {k: list(f) for k, f in desired.compile_network(st).items()}
    assert trace.trace(st, flows, "w1", "d1", "icmp").verdict == "delivered"
    assert _int("fd00:abcd::5:6:17") == int(ipaddress.ip_address("fd00:abcd::5:6:17"))
    assert _int("00:00:5e:00:01:01") == 0x00005E000101


def test_found_by_review_write_actions_a_leak_and_odd_destinations(net):
    st, flows = net
    wa = Flow(Table.CLASSIFY, 65535, match(in_port=3), (("actions3", (("output", 4),)),), 0x77)
    r = trace.trace(st, {**flows, HV1: [*flows[HV1], wa]}, "w1", "d1", "tcp", 5432)
    assert r.verdict == "unknown" and "'actions3'" in r.reason, r
    # to d2 (hv1 port 4) and to p1 (port 6) as well: not "delivered"
    leak = Flow(Table.CLASSIFY, 65535, match(in_port=3), (("apply", (
        ("output", 4), ("output", 6))),), 0x78)
    r = trace.trace(st, {**flows, HV1: [*flows[HV1], leak]}, "w1", "d2", "icmp")
    assert r.verdict == "misdelivered" and r.reached == ["d2", "p1"], r
    assert r.reason == "reached d2 and also p1"
    import dataclasses

    bare = dataclasses.replace(st.vms["d1"], ips=("fe80::11",))
    odd = dataclasses.replace(st, vms={**st.vms, "d1": bare})
    with pytest.raises(Invalid) as e:
        trace.trace(odd, flows, "w1", "d1", "icmp")
    assert e.value.field == "destination" and "no routable IP address" in e.value.reason


def test_a_deny_and_log_rule_is_a_drop_that_names_the_rule():
    """Its flow sends a sample to the controller (through the log meter), which only
    logs it: the packet is dropped, by that rule (found by the console's browser test)."""
    st = _network()
    st.policy = policy.parse({**DOC, "rules": [
        {"name": "log-db", "from": "web", "to": "db", "protocol": "udp", "ports": "9000",
         "action": "deny-and-log"}, *DOC["rules"]]})
    flows = {d: list(f) for d, f in desired.compile_network(st).items()}
    r = trace.trace(st, flows, "w1", "d1", "udp", 9000)
    assert r.verdict == "dropped" and r.dropped_by.owner == "rule log-db (deny-and-log)"
    assert r.reason.endswith("(a sample goes to the controller, which logs it)"), r.reason
    assert trace.trace(st, flows, "w1", "d1", "tcp", 5432).verdict == "delivered"
