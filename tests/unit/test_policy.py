"""Policy documents: validation (each class of bad document, with its path) and compilation."""

from __future__ import annotations

import copy
import dataclasses
import json
import random

import pytest

from vfence.controller import compiler, desired, policy
from vfence.controller.flows import CT_EST, CT_TRK, Owner, Table, cookie
from vfence.controller.model import NetworkState, Switch

from .netfixtures import FINANCE, HV1, HV2, add_vm, two_hosts_two_spines


def doc(**changes):
    d = copy.deepcopy(FINANCE)
    d.update(changes)
    return d


def rejected(d) -> list[dict[str, str]]:
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(d)
    return e.value.errors


def test_finance_document_is_valid():
    p = policy.parse(FINANCE)
    assert [r.name for r in p.rules][:3] == ["web-to-api", "api-to-payroll", "mgmt-ssh"]
    assert p.rules[2].src == policy.Endpoint("cidr", "10.9.0.0/16")
    assert p.rules[0].ports == ((8443, 8443),)
    assert p.isolation == (("payroll", "frontend"),)
    assert (p.intra_group, p.inter_group) == ("allow", "deny")


@pytest.mark.parametrize("mutate, field, words", [
    (lambda d: d["rules"].append({"name": "bad", "from": "payroll", "to": "frontend",
                                  "action": "allow"}),
     "rules[5]", ["payroll", "frontend", "isolation[0]"]),
    (lambda d: d["rules"].append({"name": "bad", "from": "web-1", "to": "pay-2",
                                  "protocol": "tcp", "ports": 80, "action": "allow"}),
     "rules[5]", ["isolation[0]"]),
    (lambda d: d["rules"][0].update({"to": "nosuchgroup"}), "rules[0].to", ["nosuchgroup"]),
    (lambda d: d["vms"][0].update({"groups": ["ghosts"]}), "vms[0].groups[0]", ["ghosts"]),
    (lambda d: d["vms"][1].update({"mac": "00:00:00:00:01:01"}), "vms[1].mac", ["pay-1"]),
    (lambda d: d["vms"][1].update({"ips": ["10.0.1.11"]}), "vms[1].ips[0]", ["pay-1"]),
    (lambda d: d["rules"][2].update({"from": "10.9.0.0/33"}), "rules[2].from", ["CIDR"]),
    (lambda d: d["rules"][0].update({"ports": "9000-80"}), "rules[0].ports", ["9000-80"]),
    (lambda d: d["rules"][0].update({"ports": "70000"}), "rules[0].ports", ["70000"]),
    (lambda d: d["rules"][0].update({"ports": "8x"}), "rules[0].ports", []),
    (lambda d: d["rules"][3].update({"ports": "22"}), "rules[3].ports", ["tcp or udp"]),
    (lambda d: d["rules"][0].update({"action": "maybe"}), "rules[0].action", ["maybe"]),
    (lambda d: d["vms"][0].update({"mac": "zz"}), "vms[0].mac", []),
    (lambda d: d["vms"][0].update({"ips": ["10.0.1.300"]}), "vms[0].ips[0]", ["10.0.1.300"]),
    (lambda d: d["vms"][0].update({"ips": ["192.168.1.1"]}), "vms[0].ips[0]", ["outside"]),
    (lambda d: d["vms"][0].update({"segment": "dev"}), "vms[0].segment", ["dev"]),
    (lambda d: d["isolation"].append(["payroll", "payroll"]), "isolation[1]", ["itself"]),
    (lambda d: d["isolation"].append(["payroll", "nobody"]), "isolation[1][1]", ["nobody"]),
    (lambda d: d["rules"].append(copy.deepcopy(d["rules"][0])), "rules[5].name", ["duplicate"]),
    (lambda d: d.update({"colour": "red"}), "(document)", ["colour"]),
    (lambda d: d["vms"][0].update({"groups": ["payroll", "frontend"]}), "vms[0].groups",
     ["both"]),
])
def test_each_bad_document_is_rejected_naming_the_field(mutate, field, words):
    d = copy.deepcopy(FINANCE)
    mutate(d)
    errors = rejected(d)
    hit = [e for e in errors if e["field"] == field]
    assert hit, errors
    for w in words:
        assert w in hit[0]["reason"], hit


def test_every_problem_is_reported_at_once():
    d = copy.deepcopy(FINANCE)
    d["rules"][0]["to"] = "ghost"
    d["vms"][1]["mac"] = d["vms"][0]["mac"]
    fields = {e["field"] for e in rejected(d)}
    assert {"rules[0].to", "vms[1].mac"} <= fields


def test_deny_rule_naming_an_isolation_pair_is_fine():
    d = doc()
    d["rules"].append({"name": "belt-and-braces", "from": "payroll", "to": "frontend",
                       "action": "deny"})
    policy.parse(d)


def test_yaml_syntax_error_is_reported():
    with pytest.raises(policy.PolicyError) as e:
        policy.load_text("rules: [unclosed")
    assert e.value.errors[0]["field"] == "(document)"


@pytest.mark.parametrize("lo, hi", [(0, 65535), (1000, 2000), (8443, 8443), (1, 1023),
                                    (5, 6), (65535, 65535)])
def test_port_masks_cover_exactly_the_range(lo, hi):
    masks = policy.port_masks(lo, hi)
    covered = {p for p in range(65536) if any(p & m == v for v, m in masks)}
    assert covered == set(range(lo, hi + 1))
    assert len(masks) <= 2 * 16


def finance_state(n_extra: int = 0) -> NetworkState:
    st = two_hosts_two_spines()
    st.policy = policy.parse(FINANCE)
    st.group_bits = {g: i for i, g in enumerate(st.policy.groups)}
    return st


def test_rules_compile_to_group_slot_matches():
    st = finance_state()
    flows = desired.compile_network(st)[HV1]
    mine = [f for f in flows if f.cookie == cookie(Owner.RULE, st.policy.rules[0].priority)]
    web_to_api = [f for f in mine if f.table == Table.POLICY]
    # tcp/8443 for IPv4 and IPv6, each committed to conntrack
    assert len(web_to_api) == 2
    # the same rule judges broadcast copies (stateless, v4 + v6) and, as "web may reach
    # api", neighbour discovery both ways
    assert sorted(f.table for f in mine if f not in web_to_api) == [
        Table.ND_REACH, Table.ND_REACH_REV, Table.FLOOD_POLICY, Table.FLOOD_POLICY]
    for f in web_to_api:
        m = dict(f.match)
        # no VM in two groups: one slot, holding the group's number + 1
        assert m["reg0"] == (1 + 1, 0xFFFF) and m["reg6"] == (2 + 1, 0xFFFF)
        assert m["tcp_dst"] == 8443 and f.instructions[0][1][0][0] == "ct"
    iso = [f for f in flows if f.cookie == cookie(Owner.ISOLATION, 0)]
    # both directions, for unicast (POLICY) and for each broadcast copy (FLOOD_POLICY)
    assert len(iso) == 4 and all(f.instructions == () for f in iso)
    assert sorted(f.table for f in iso) == [Table.POLICY] * 2 + [Table.FLOOD_POLICY] * 2
    est = [f for f in flows if f.table == Table.POLICY and dict(f.match).get("ct_state")
           == (CT_TRK | CT_EST, CT_TRK | CT_EST)]
    assert est and min(f.priority for f in iso) > est[0].priority  # isolation above all


def test_policy_flows_do_not_grow_with_vms_or_pairs():
    def policy_count(n_vms: int) -> int:
        st = finance_state()
        rnd = random.Random(n_vms)
        for i in range(1, n_vms + 1):
            vm = add_vm(st, i, f"v{i}", 1, HV1 if i % 2 else HV2, 10 + i)
            st.vms[vm.name] = dataclasses.replace(vm, groups=(rnd.choice(st.policy.groups),))
        return len(desired.compile_network(st)[HV1])
    a, b, c = policy_count(20), policy_count(40), policy_count(80)
    assert c - b == 2 * (b - a)


def test_bench_scale_flow_count_is_linear():
    """5,000 VMs, 10 hosts, 50 groups, 200 rules: flows per host stay near
    (local + remote VMs) x const + rules, far below pairwise."""
    from bench.policy_scale import build_state

    st = build_state(1000, hosts=10, groups=50, rules=200)
    flows = desired.compile_network(st)
    per_host = max(len(f) for f in flows.values())
    # each rule is judged four ways (unicast, per broadcast receiver, ND reach both ways),
    # each a conjunction over two group slots (VMs here are in up to two groups) and its
    # variants; each VM's destination lookup checks its addresses (IPv4, link-local,
    # solicited-node)
    assert per_host < 1000 * 14 + 200 * 40
    assert per_host < 1000 * 1000 / 10


def test_switch_list_only_gets_flows():
    st = NetworkState()
    st.switches[1] = Switch(1, "solo", 1)
    assert set(desired.compile_network(st)) == {1}


# --- addresses: VMs, subnets, gateways ----------------------------------------------------


def _seg(**fields):
    """Mutation: segments[0] (prod) gets ``fields``."""
    return lambda d: d["segments"][0].update(fields)


def _ips(i, *ips):
    return lambda d: d["vms"][i].update({"ips": list(ips)})


@pytest.mark.parametrize("mutate, field, words", [
    (_ips(2, "fe80::1%eth0"), "vms[2].ips[0]", ["scoped"]),
    (_ips(2, "10.0.1.21", "224.0.0.251"), "vms[2].ips[1]", ["multicast"]),
    (_ips(2, "ff02::fb"), "vms[2].ips[0]", ["multicast"]),
    (_ips(2, "0.0.0.0"), "vms[2].ips[0]", ["unspecified"]),
    (_ips(2, "::"), "vms[2].ips[0]", ["unspecified"]),
    (_ips(2, "127.0.0.53"), "vms[2].ips[0]", ["loopback"]),
    (_ips(2, "::1"), "vms[2].ips[0]", ["loopback"]),
    (_ips(2, "255.255.255.255"), "vms[2].ips[0]", ["broadcast"]),
    (_ips(2, "10.0.0.0"), "vms[2].ips[0]", ["network address", "10.0.0.0/8"]),
    (_ips(2, "10.255.255.255"), "vms[2].ips[0]", ["broadcast address", "10.0.0.0/8"]),
    (lambda d: (_seg(subnet6="fd00:1::/64")(d), _ips(2, "fd00:2::5")(d)), "vms[2].ips[0]",
     ["outside", "subnet6 fd00:1::/64"]),
    (lambda d: (_seg(subnet6="fd00:1::/64")(d), _ips(2, "fd00:1::")(d)), "vms[2].ips[0]",
     ["network address"]),
    (_seg(subnet="fe80::/64%eth0"), "segments[0].subnet", ["scoped"]),
    (_seg(subnet="10.0.0.0/33"), "segments[0].subnet", ["not a valid CIDR"]),
    (_seg(subnet="fd00::/64"), "segments[0].subnet", ["IPv6", "subnet6"]),
    (_seg(subnet="224.0.0.0/24"), "segments[0].subnet", ["multicast"]),
    (_seg(subnet="127.0.0.0/16"), "segments[0].subnet", ["loopback"]),
    (_seg(subnet="0.0.0.0/0"), "segments[0].subnet", ["unspecified"]),
    (_seg(subnet="255.255.255.0/24"), "segments[0].subnet", ["broadcast"]),
    (_seg(subnet6="10.0.0.0/8"), "segments[0].subnet6", ["IPv6"]),
    (_seg(subnet6="ff05::/16"), "segments[0].subnet6", ["multicast"]),
    (_seg(subnet6="::/0"), "segments[0].subnet6", ["unspecified"]),
    (_seg(subnet6="::1/128"), "segments[0].subnet6", ["loopback"]),
    (_seg(gateway="192.168.0.1"), "segments[0].gateway", ["outside", "10.0.0.0/8"]),
    (_seg(gateway="10.0.0.0"), "segments[0].gateway", ["network address"]),
    (_seg(gateway="10.255.255.255"), "segments[0].gateway", ["broadcast address"]),
    (_seg(gateway="224.0.0.1"), "segments[0].gateway", ["multicast"]),
    (_seg(gateway="fd00::1"), "segments[0].gateway", ["IPv4"]),
    (_seg(gateway="10.0.0.1%eth0"), "segments[0].gateway", ["scoped"]),
    (_seg(gateway6="fd00::1"), "segments[0].gateway6", ["needs", "subnet6"]),
    (_seg(subnet6="fd00::/64", gateway6="fd01::1"), "segments[0].gateway6", ["outside"]),
    (_seg(subnet6="fd00::/64", gateway6="fd00::"), "segments[0].gateway6",
     ["network address"]),
    (_seg(subnet6="fd00::/64", gateway6="fe80::1%eth0"), "segments[0].gateway6", ["scoped"]),
    (lambda d: d["segments"].append({"name": "dev", "gateway": "10.1.0.1"}),
     "segments[1].gateway", ["needs", "subnet"]),
])
def test_each_bad_address_is_rejected_naming_the_field(mutate, field, words):
    d = copy.deepcopy(FINANCE)
    mutate(d)
    hit = [e for e in rejected(d) if e["field"] == field]
    assert hit, rejected(d)
    assert all(w in hit[0]["reason"] for w in words), hit


def test_legal_addresses_prefixes_gateways_and_rule_cidrs():
    d = copy.deepcopy(FINANCE)
    d["segments"][0].update({"subnet": "10.0.0.7/8", "subnet6": "FD00:0:0:1::/64",
                             "gateway": "10.0.0.1", "gateway6": "fd00:0:0:1::1"})
    d["segments"].append({"name": "p2p", "subnet": "192.0.2.0/31", "subnet6": "2001:db8::/127"})
    d["vms"][2]["ips"] = ["10.0.1.21", "fd00:0:0:1::21", "fe80::5", "10.0.0.1"]
    d["vms"].append({"name": "edge", "mac": "00:00:00:00:04:01", "segment": "p2p",
                     "ips": ["192.0.2.0", "192.0.2.1", "2001:db8::"]})
    d["rules"].append({"name": "all4", "from": "0.0.0.0/0", "to": "payroll", "action": "deny"})
    d["rules"].append({"name": "all6", "from": "::/0", "to": "payroll", "action": "deny"})
    p = policy.parse(d)
    assert p.segments[0] == ("prod", "10.0.0.0/8")
    web1 = next(v for v in p.vms if v.name == "web-1")
    assert web1.ips == ("10.0.1.21", "fd00:0:0:1::21", "fe80::5", "10.0.0.1")
    assert [r.src.value for r in p.rules[-2:]] == ["0.0.0.0/0", "::/0"]


# --- limits of a document ---------------------------------------------------------------------


def _deny_rules(n):
    return [{"name": f"r{i}", "from": "frontend", "to": "ops", "action": "deny"}
            for i in range(n)]


def test_max_rules_is_the_limit_at_field_rules(tmp_path):
    """The real limit: MAX_RULES rules (each one priority band) parse and compile; one
    more is refused at ``rules``, also by ``vfence policy check``."""
    from typer.testing import CliRunner

    from vfence.controller.cli import app
    from vfence.controller.flows import MAX_RULES, rule_priority

    st = finance_state()
    st.policy = policy.parse(doc(rules=_deny_rules(MAX_RULES)))
    assert len(st.policy.rules) == MAX_RULES
    last = list(compiler.rule_flows(st.policy.rules[-1], st))
    assert last and {f.priority for f in last} == {rule_priority(MAX_RULES - 1)}
    assert rule_priority(MAX_RULES - 1) - 1 > 1000  # even its non-IP variant: above intra-group
    (err,) = rejected(doc(rules=_deny_rules(MAX_RULES + 1)))
    assert err["field"] == "rules" and f"at most {MAX_RULES} rules" in err["reason"]
    assert f"has {MAX_RULES + 1}" in err["reason"]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc(rules=_deny_rules(MAX_RULES + 1))))
    r = CliRunner().invoke(app, ["policy", "check", str(path)])
    assert r.exit_code == 1 and "rules" in r.output and f"at most {MAX_RULES}" in r.output


@pytest.mark.parametrize("key, limit_name", [("vms", "MAX_VM_TAG"),
                                             ("segments", "MAX_SEGMENT_TAG")])
def test_a_document_with_more_vms_or_segments_than_tags_is_refused(key, limit_name):
    """Over the real limit the document is refused up front (no seconds of checking). The
    registry tests (tests/store/test_limits.py) register the last VM and segment at the
    real limit; here the at-limit document uses a limit of 3 (monkeypatched), because a
    valid 65,535-VM document takes ~7 s to check."""
    import vfence.controller.flows as flows

    limit = getattr(flows, limit_name)
    items = [{"name": f"x{i}", "mac": f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}",
              "segment": "prod"} if key == "vms" else {"name": f"x{i}"}
             for i in range(limit + 1)]
    (err,) = rejected({key: items})
    assert err["field"] == key and f"at most {limit} {key}" in err["reason"]
    small = {**policy.SIZE_LIMITS, key: (3, "test")}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "SIZE_LIMITS", small)
        base = {"segments": [{"name": "prod"}]} if key == "vms" else {}
        policy.parse({**base, key: items[:3] if key == "vms" else [{"name": "prod"}] + items[:2]})
        (err,) = rejected({**base, key: items[:4]})
        assert err["field"] == key
