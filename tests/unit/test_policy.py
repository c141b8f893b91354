"""Policy documents: validation (each class of bad document, with its path) and compilation."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml

from controller import compiler, policy
from controller.flows import CT_EST, CT_TRK, Owner, Table, cookie
from controller.model import NetworkState, Switch

from .netfixtures import HV1, HV2, add_vm, two_hosts_two_spines

FINANCE = yaml.safe_load(
    (Path(__file__).parents[2] / "mininet_topos" / "finance.yaml").read_text())


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


def test_rules_compile_to_group_tag_matches():
    st = finance_state()
    flows = compiler.compile_network(st)[HV1]
    mine = [f for f in flows if f.cookie == cookie(Owner.RULE, 0)]
    web_to_api = [f for f in mine if f.table == Table.POLICY]
    # tcp/8443 for IPv4 and IPv6, each committed to conntrack
    assert len(web_to_api) == 2
    # the same rule judges broadcast copies (stateless, v4 + v6) and, as "web may reach
    # api", neighbour discovery both ways
    assert sorted(f.table for f in mine if f not in web_to_api) == [
        Table.ND_REACH, Table.ND_REACH_REV, Table.FLOOD_POLICY, Table.FLOOD_POLICY]
    for f in web_to_api:
        m = dict(f.match)
        assert m["reg0"] == (1 << 1, 1 << 1) and m["reg2"] == (1 << 2, 1 << 2)
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
            st.vms[vm.name] = vm.__class__(**{**vm.__dict__, "groups": (
                rnd.choice(st.policy.groups),)})
        return len(compiler.compile_network(st)[HV1])
    a, b, c = policy_count(20), policy_count(40), policy_count(80)
    assert c - b == 2 * (b - a)


def test_bench_scale_flow_count_is_linear():
    """5,000 VMs, 10 hosts, 50 groups, 200 rules: flows per host stay near
    (local + remote VMs) x const + rules, far below pairwise."""
    from bench.policy_scale import build_state

    st = build_state(1000, hosts=10, groups=50, rules=200)
    flows = compiler.compile_network(st)
    per_host = max(len(f) for f in flows.values())
    # each rule is judged four ways (unicast, per broadcast receiver, ND reach both ways)
    assert per_host < 1000 * 8 + 200 * 16
    assert per_host < 1000 * 1000 / 10


def test_switch_list_only_gets_flows():
    st = NetworkState()
    st.switches[1] = Switch(1, "solo", 1)
    assert set(compiler.compile_network(st)) == {1}
