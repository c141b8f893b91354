"""Groups without a cap: a VM's groups travel as group numbers in register slots, and a
rule naming a group matches any slot in use: one flow while every VM is in one group,
an OVS conjunctive match (one flow per slot, never a cross product) when some are in
several. Walked with concrete frames through tests/unit/pipeline.py, which models OVS's
conjunction lookup; the lab checks the same on real Open vSwitch."""

from __future__ import annotations

import dataclasses
import random

import pytest

from vfence.controller import compiler, desired
from vfence.controller.flows import cookie
from vfence.controller.model import Endpoint, NetworkState, Policy, Rule
from vfence.controller.pipeline import GROUP_SLOTS, Owner, Table

from .netfixtures import HV1, HV2, add_vm, two_hosts_two_spines
from .pipeline import Pipeline

GROUPS = tuple(f"g{i}" for i in range(200))  # far beyond the old 64
IP4 = 0x0800


def _rule(i, src, dst, action="allow", **kw):
    return Rule(i, f"r{i}", Endpoint("group", src), Endpoint("group", dst), action, **kw)


def _network(rules, isolation=(), intra="allow", extra=()):
    """a: g150 (hv1 p3); b: g150+g7 (hv1 p4); c: g199 (hv1 p5); d: g7 (hv2 p3); and e
    (hv2 p4) in the ``extra`` groups."""
    st = two_hosts_two_spines()
    vms = {}
    for vid, name, dpid, port, groups in [(1, "a", HV1, 3, ("g150",)),
                                          (2, "b", HV1, 4, ("g150", "g7")),
                                          (3, "c", HV1, 5, ("g199",)),
                                          (4, "d", HV2, 3, ("g7",)),
                                          (5, "e", HV2, 4, extra)]:
        vm = add_vm(st, vid, name, 1, dpid, port, ip=f"10.0.0.{vid}")
        vms[name] = st.vms[name] = dataclasses.replace(vm, groups=groups)
    st.group_bits = {g: i for i, g in enumerate(GROUPS)}
    st.policy = Policy(groups=GROUPS, rules=tuple(rules), inter_group="deny",
                       intra_group=intra, isolation=tuple(isolation))
    flows = desired.compile_network(st)
    return st, vms, flows, Pipeline(flows[HV1]), Pipeline(flows[HV2])


def _tcp(vm, to, port, in_port):
    return {"in_port": in_port, "eth_src": vm.mac, "eth_dst": to.mac, "eth_type": IP4,
            "ipv4_src": vm.ips[0], "ipv4_dst": to.ips[0], "ip_proto": 6, "tcp_dst": port}


def _fabric_copy(out, in_port=1):
    (frame,) = [f for _, f in out if f.get("vlan_vid", 0) & 0x1000]
    keep = ("eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst", "ip_proto", "tcp_dst")
    return {k: frame[k] for k in keep} | {"in_port": in_port, "vlan_vid": frame["vlan_vid"]}


def test_slots_hold_group_numbers_smallest_first_two_to_a_register():
    st, vms, *_ = _network([])
    assert compiler.slots_of(st, vms["b"]) == (8, 151)  # g7, g150: number + 1
    assert compiler.packed((8, 151)) == (8 | 151 << 16,)
    assert compiler.packed((8,), regs=2) == (8, 0)
    assert compiler.slots_in_use(st) == 2
    assert GROUP_SLOTS == 8


def test_rule_between_groups_beyond_64_and_isolation_by_conjunction():
    # isolation (g7, g199) holds for b although the rule allows its other group, g150
    _, vms, _, hv1, _ = _network([_rule(0, "g150", "g199", protocol="tcp", ports=((80, 80),))],
                                 isolation=[("g7", "g199")])
    a, b, c = vms["a"], vms["b"], vms["c"]
    assert hv1.ports(_tcp(a, c, 80, 3)) == [5]  # the rule allows a (g150 alone)
    assert hv1.ports(_tcp(a, c, 22, 3)) == []  # its port only: the default denies
    assert hv1.ports(_tcp(b, c, 80, 4)) == []  # b is also in g7, isolated from g199
    assert hv1.trace[-1].cookie == cookie(Owner.ISOLATION, 0)  # dropped by the pair


def test_isolation_pairs_sharing_a_group_share_its_clause_flows():
    """A VM in three groups: three slots, isolation as conjunctions; the pairs (g7, g199)
    and (g7, g150) both need "the source holds g7": one flow with both conjunctions."""
    rule = _rule(0, "g150", "g199", protocol="tcp", ports=((80, 80),))
    st, vms, flows, hv1, _ = _network([rule], isolation=[("g7", "g199"), ("g7", "g150")],
                                      extra=("g1", "g2", "g3"))
    a, b, c = vms["a"], vms["b"], vms["c"]
    assert compiler.slots_in_use(st) == 3
    assert hv1.ports(_tcp(a, c, 80, 3)) == [5]  # control: the rule allows a
    assert hv1.ports(_tcp(b, c, 80, 4)) == []  # b in g7: isolated from g199
    assert dict(hv1.trace[-1].match).get("conj_id") and hv1.trace[-1].cookie == cookie(
        Owner.ISOLATION, 0)
    assert hv1.ports(_tcp(a, b, 80, 3)) == []  # b in g7 and a in g150: isolated too,
    assert hv1.trace[-1].cookie == cookie(Owner.ISOLATION, 1)  # though intra-group allows
    shared = [f for f in flows[HV1] if f.table == Table.POLICY and len(
        [a for ins in f.instructions if ins[0] == "apply" for a in ins[1]
         if a[0] == "conjunction"]) == 2]
    # g7 in each of three slots, as source (both pairs one way) and destination (back)
    assert len(shared) == 6, shared


def test_a_rule_over_several_slots_is_one_conjunction():
    rule = _rule(0, "g150", "g7", protocol="tcp", ports=((80, 80), (443, 443)))
    st, vms, flows, hv1, hv2 = _network([rule])
    a, b, d = vms["a"], vms["b"], vms["d"]
    out = hv1.run(_tcp(a, d, 443, 3))
    assert out and hv2.ports(_fabric_copy(out)) == [3]  # a (g150) reaches d (g7) on 443
    assert hv1.ports(_tcp(a, d, 22, 3)) == []  # not on 22
    assert hv1.ports(_tcp(b, d, 22, 4)) != []  # control: b and d share g7 (intra-group)
    mine = [f for f in flows[HV1] if f.cookie == cookie(Owner.RULE, rule.priority)
            and f.table == Table.POLICY]
    # 2 slots (src) x 2 slots (dst) x 4 variants (v4/v6, two ports): 16 as a product;
    # one flow per entry and a result flow as a conjunction
    # (the result flow once per address family: ct() needs it in the match)
    assert len(mine) == 2 + 2 + 4 + 2, mine
    assert sum(1 for f in mine if dict(f.match).get("conj_id") == rule.priority) == 2


def test_intra_group_allow_with_several_slots():
    _, vms, _, hv1, hv2 = _network([])
    b, d, a = vms["b"], vms["d"], vms["a"]
    out = hv1.run(_tcp(b, d, 5432, 4))
    assert out and hv2.ports(_fabric_copy(out)) == [3]  # b and d share g7
    assert hv1.ports(_tcp(a, d, 5432, 3)) == []  # a and d share nothing: denied
    assert hv1.ports(_tcp(a, b, 5432, 3)) == [4]  # a and b share g150
    _, vms, _, hv1, _ = _network([], intra="deny")
    assert hv1.ports(_tcp(vms["a"], vms["b"], 5432, 3)) == []  # and only by that allow


def test_rule_flows_grow_with_slots_not_with_members():
    st = NetworkState(policy=Policy(groups=GROUPS[:40], inter_group="deny"))
    st.group_bits = {g: i for i, g in enumerate(GROUPS[:40])}
    rnd = random.Random(7)
    for i in range(1, 301):
        vm = add_vm(st, i, f"v{i}", 1, None)
        st.vms[vm.name] = dataclasses.replace(vm, groups=tuple(rnd.sample(GROUPS[:40], 3)))
    rule = _rule(0, "g1", "g2", protocol="tcp", ports=((80, 80),))
    flows = compiler.rule_flows(rule, st)
    assert compiler.slots_in_use(st) == 3
    # a flow per slot each side, v4/v6, the result (per family: it commits to conntrack)
    assert len(flows) == 3 + 3 + 2 + 2
    one = NetworkState(policy=st.policy, group_bits=st.group_bits,
                       vms={n: dataclasses.replace(v, groups=v.groups[:1])
                            for n, v in st.vms.items()})
    assert len(compiler.rule_flows(rule, one)) == 2  # one slot: v4 and v6, as bits were


@pytest.mark.parametrize("groups", [64, 4096])
def test_as_many_groups_as_numbers_compile(groups):
    """A VM per group, a rule per neighbouring pair of groups: flows grow linearly in
    groups and rules, and the VM in the last group carries its number."""
    names = tuple(f"g{i}" for i in range(groups))
    st = NetworkState(policy=Policy(groups=names, inter_group="deny",
                                    rules=tuple(_rule(i, names[i], names[i + 1])
                                                for i in range(0, groups - 1, 2))))
    st.group_bits = {g: i for i, g in enumerate(names)}
    for i in range(groups):
        vm = add_vm(st, i + 1, f"v{i}", 1, None)
        st.vms[vm.name] = dataclasses.replace(vm, groups=(names[i],))
    flows = list(compiler.policy_flows(st))
    per_rule = {f.cookie for f in flows if f.cookie >> 56 == 0xA0 | Owner.RULE}
    assert len(per_rule) == groups // 2
    assert len(flows) < 40 * groups
    assert compiler.slots_of(st, st.vms[f"v{groups - 1}"]) == (groups,)


def test_a_vm_in_more_groups_than_slots_is_refused_naming_the_field():
    from vfence.controller import policy

    doc = {"segments": [{"name": "s"}], "groups": [{"name": g} for g in GROUPS[:9]],
           "vms": [{"name": "v", "mac": "02:00:00:00:00:01", "segment": "s",
                    "groups": list(GROUPS[:9])}]}
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(doc)
    assert [x["field"] for x in e.value.errors] == ["vms[0].groups"], e.value.errors
    doc["vms"][0]["groups"] = list(GROUPS[:GROUP_SLOTS])
    assert policy.parse(doc).vms[0].groups == GROUPS[:GROUP_SLOTS]  # control: eight do
    with pytest.raises(ValueError, match="at most 8"):
        compiler.packed(tuple(range(1, 10)))  # and the compiler never drops one silently


def test_verify_proves_isolation_through_conjunctions_and_finds_a_hole():
    from vfence.controller import verify
    from vfence.controller.flows import Flow

    rule = _rule(0, "g150", "g199", protocol="tcp", ports=((80, 80),))
    st, vms, flows, _, _ = _network([rule], isolation=[("g7", "g199")], extra=("g1", "g2", "g3"))
    ports = {d: set(range(1, 8)) for d in st.switches}
    lists = {d: sorted(f) for d, f in flows.items()}
    assert any(dict(f.match).get("conj_id") for f in lists[HV1])  # conjunctions in play
    (v,) = verify.verify(st, lists, ports)
    assert v.status == "isolated" and v.complete, (v.reason, v.witness)
    # a hole: the rule's result flow drops the isolation... by a higher allow for b's slot
    b_slot = compiler.slots_of(st, vms["b"])[0]
    lists[HV1].append(Flow(Table.POLICY, 65535, (("reg0", (b_slot, 0xFFFF)),),
                           (("goto", int(Table.FORWARD)),), 0))
    (v,) = verify.verify(st, lists, ports)
    assert v.status == "broken" and "delivered to c" in v.witness[-1], v


def test_the_policy_schema_limits_are_the_pipelines():
    """What the document may hold is what the flows can carry: group numbers 0..65534,
    GROUP_SLOTS groups per VM, isolation pair indexes that fit their conjunction ids."""
    import json
    from importlib import resources

    from vfence.controller.pipeline import CONJ_ISOLATION, MAX_GROUPS, MAX_ISOLATION_PAIRS

    schema = json.loads(resources.files("vfence.schemas").joinpath(
        "policy.schema.json").read_text())
    props = schema["properties"]
    assert props["groups"]["maxItems"] == MAX_GROUPS == 65535
    assert props["vms"]["items"]["properties"]["groups"]["maxItems"] == GROUP_SLOTS
    assert props["isolation"]["maxItems"] == MAX_ISOLATION_PAIRS
    assert (MAX_ISOLATION_PAIRS - 1) << 1 | 1 < CONJ_ISOLATION  # ids never reach the tag
