"""The compiler: given state -> exact flows, without a switch."""

from __future__ import annotations

from vfence.controller import compiler, desired
from vfence.controller.flows import (
    META_FROM_FABRIC,
    OFPP_IN_PORT,
    OFPVID_NONE,
    OFPVID_PRESENT,
    Owner,
    Table,
    cookie,
    cookie_owner,
)

from .netfixtures import HV1, HV2, SP1, SP2, add_vm, two_hosts_two_spines


def _by_table(flows, table):
    return sorted(f for f in flows if f.table == table)


def _find(flows, table, **m):
    want = set(m.items())
    return [f for f in flows if f.table == table and want <= set(f.match)]


def test_empty_switch_gets_skeleton_only():
    st = two_hosts_two_spines()
    flows = desired.compile_network(st)
    base = list(compiler.base_flows())
    policy = set(compiler.policy_flows(st))
    # skeleton + 2 fabric ports (LLDP, rest) + own label + 3 transit labels + the policy
    assert len(flows[HV1]) == len(base) + 2 * 2 + 1 + 3 + len(policy)
    owners = {cookie_owner(f.cookie)[0] for f in flows[HV1]}
    assert owners == {Owner.BASE, Owner.FABRIC, Owner.POLICY}


def test_every_flow_has_a_vfence_owner_cookie():
    st = two_hosts_two_spines()
    add_vm(st, 1, "a", 1, HV1, 3)
    add_vm(st, 2, "b", 1, HV2, 3)
    for flows in desired.compile_network(st).values():
        for f in flows:
            assert cookie_owner(f.cookie) is not None, f


def test_local_vm_is_classified_only_with_its_mac_untagged():
    st = two_hosts_two_spines()
    vm = add_vm(st, 1, "a", 7, HV1, 3)
    flows = desired.compile_network(st)[HV1]
    classify = _find(flows, Table.CLASSIFY, in_port=3)
    allowed = [f for f in classify if ("goto", Table.ARP) in f.instructions]
    me = {"in_port": 3, "eth_src": vm.mac, "vlan_vid": OFPVID_NONE}
    plain = [f for f in allowed if "icmpv6_type" not in dict(f.match)]
    # own IPv4 source, own ARP sender, own IPv6 (only the EUI-64 link-local here),
    # the unspecified IPv6 source for ICMPv6 only, and non-IP
    assert sorted(tuple(sorted(set(dict(f.match)) - set(me))) for f in plain) == sorted([
        ("arp_sha", "arp_spa", "eth_type"), ("eth_type", "ipv4_src"), ("eth_type", "ipv6_src"),
        ("eth_type", "ip_proto", "ipv6_src"), (), ])
    assert all(me.items() <= dict(f.match).items() for f in allowed)
    (v4,) = [f for f in allowed if dict(f.match).get("ipv4_src")]
    assert dict(v4.match)["ipv4_src"] == vm.ips[0]
    assert {dict(f.match).get("ipv6_src") for f in plain} >= {"fe80::200:ff:fe00:1", "::"}
    drops = [f for f in classify if f.instructions == ()]
    # rogue DHCP (server and client ports, v4 and v6) > RA, redirect > other ND (NS, NA) >
    # RS (quietly: no router here) > other source IP / ARP sender / IPv6 > any other MAC or
    # a tag
    assert sorted(f.priority for f in drops) == [190, 205, 205, 205, 211, 214, 214, 218, 218,
                                                 220, 220, 220, 220]
    assert max(f.priority for f in allowed) < 218 and min(f.priority for f in allowed) > 190
    assert {f.cookie for f in classify} == {cookie(Owner.VM, 1)}


def test_unicast_to_local_and_remote_vm_and_no_flood_flow():
    st = two_hosts_two_spines()
    a = add_vm(st, 1, "a", 1, HV1, 3)
    b = add_vm(st, 2, "b", 1, HV2, 3)
    flows = desired.compile_network(st)[HV1]
    (to_a,) = _find(flows, Table.FORWARD, reg4=a.id)
    assert to_a.instructions == (("apply", (("output", 3),)),)
    (to_b,) = _find(flows, Table.FORWARD, reg4=b.id)
    # labelled with hv2's label (2), sent out of the lower-numbered equal-cost port
    assert to_b.instructions == (("apply", (("push_vlan", 0x8100),
                                            ("set", "vlan_vid", OFPVID_PRESENT | 2),
                                            ("move", "reg10", "vlan_pcp", 3),
                                            ("output", 1))),)
    # frames from the fabric never go back into it
    assert dict(to_b.match)["metadata"] == (0, META_FROM_FABRIC)
    # the only catch-all in FORWARD drops: unknown unicast is never flooded
    (miss,) = [f for f in flows if f.table == Table.FORWARD and f.priority == 0]
    assert miss.instructions == ()


def test_other_segment_vms_are_not_installed():
    st = two_hosts_two_spines()
    add_vm(st, 1, "a", 1, HV1, 3)
    c = add_vm(st, 3, "c", 2, HV2, 4)
    flows = desired.compile_network(st)[HV1]
    assert not [f for f in flows if ("eth_dst", c.mac) in f.match]
    assert not [f for f in flows if ("eth_src", c.mac) in f.match]


def test_broadcast_stays_in_segment():
    st = two_hosts_two_spines()
    add_vm(st, 1, "a", 1, HV1, 3)
    add_vm(st, 2, "a2", 1, HV1, 5)
    add_vm(st, 3, "c", 2, HV1, 4)
    add_vm(st, 4, "b", 1, HV2, 3)
    flows = desired.compile_network(st)[HV1]
    seg1 = [f for f in flows if f.cookie == cookie(Owner.SEGMENT, 1)]
    local_src = next(f for f in seg1 if dict(f.match)["metadata"] == (1, 0x1_0000_FFFF))
    acts = local_src.instructions[0][1]
    # each local receiver of the segment (a: 1, a2: 2, not c: 3) is judged on its own:
    # its tag in reg4, its groups in reg2/3 (cleared), then FLOOD_POLICY
    judged = [acts[i - 1][2] for i, a in enumerate(acts) if a == ("resubmit", 35)]
    assert judged == [1, 2]
    assert [a for a in acts if a[0] == "output"] == [("output", 1)]  # one copy to hv2
    assert ("set", "vlan_vid", OFPVID_PRESENT | 2) in acts
    assert dict(local_src.match)["reg4"] == 0  # a receiver's own lookup never lands here
    from_fabric = next(f for f in seg1 if f is not local_src)
    assert [a for a in from_fabric.instructions[0][1] if a[0] != "set"] == [
        ("resubmit", 35), ("resubmit", 35)]


def test_arp_answered_in_datapath_for_segment_ips_only():
    st = two_hosts_two_spines()
    add_vm(st, 1, "a", 1, HV1, 3, ip="10.0.0.1")
    add_vm(st, 2, "b", 1, HV2, 3, ip="10.0.0.2")
    add_vm(st, 3, "c", 2, HV2, 4, ip="10.0.0.3")
    flows = desired.compile_network(st)[HV1]
    answers = [f for f in flows if f.table == Table.ARP and f.priority == 100
               and "arp_tpa" in dict(f.match)]
    assert sorted(dict(f.match)["arp_tpa"] for f in answers) == ["10.0.0.1", "10.0.0.2"]
    acts = answers[0].instructions[0][1]
    assert acts[-1] == ("output", OFPP_IN_PORT)
    # unanswered requests (ARP, neighbour solicitations) are dropped, never flooded
    drops = [f for f in flows if f.table == Table.ARP and f.priority == 50]
    assert len(drops) == 2 and all(f.instructions == () for f in drops)


def test_spines_forward_labels_only_and_ignore_vms():
    st = two_hosts_two_spines()
    add_vm(st, 1, "a", 1, HV1, 3)
    before = desired.compile_network(st)[SP1]
    add_vm(st, 2, "b", 1, HV2, 3)
    st.bindings["a"] = st.bindings["a"].__class__("a", st.bindings["b"].port.__class__(HV2, 9))
    after = desired.compile_network(st)[SP1]
    assert before == after  # VM moves never touch the fabric
    transit = [f for f in after if f.table == Table.FABRIC and f.priority == 100]
    assert {dict(f.match)["vlan_vid"] & 0xFFF for f in transit} == {1, 2, 3, 4}


def test_paths_are_loop_free_on_a_looped_fabric():
    st = two_hosts_two_spines()
    flows = desired.compile_network(st)
    # follow label 2 (hv2) from hv1: must reach hv2 in at most 2 hops
    def out_port(dpid, label):
        for f in flows[dpid]:
            if f.table == Table.FABRIC and dict(f.match).get("vlan_vid") == OFPVID_PRESENT | label:
                return f.instructions[0][1][-1][1] if f.instructions[0][0] == "apply" else None
        return None
    nbr = {(HV1, 1): SP1, (HV1, 2): SP2, (SP1, 2): HV2, (SP2, 2): HV2, (SP1, 1): HV1,
           (SP2, 1): HV1}
    node, hops = HV1, 0
    while node != HV2:
        node = nbr[(node, out_port(node, 2))]
        hops += 1
        assert hops <= 2


def test_flow_count_grows_linearly_not_pairwise():
    def count(n):
        st = two_hosts_two_spines()
        for i in range(1, n + 1):
            add_vm(st, i, f"v{i}", 1, HV1 if i % 2 else HV2, 10 + i)
        return len(desired.compile_network(st)[HV1])
    c10, c20, c40 = count(10), count(20), count(40)
    assert c40 - c20 == 2 * (c20 - c10)  # exactly linear


def test_compile_is_deterministic():
    st = two_hosts_two_spines()
    for i in range(1, 30):
        add_vm(st, i, f"v{i}", i % 3, HV1 if i % 2 else HV2, 10 + i)
    assert desired.compile_network(st) == desired.compile_network(st)


def test_unbound_vm_gets_nothing_and_unknown_switch_binding_ignored():
    st = two_hosts_two_spines()
    v = add_vm(st, 1, "a", 1, None)
    add_vm(st, 2, "b", 1, 0xDEAD, 1)
    flows = desired.compile_network(st)
    assert not any(("eth_dst", v.mac) in f.match for fl in flows.values() for f in fl)
    assert set(flows) == {HV1, HV2, SP1, SP2}
