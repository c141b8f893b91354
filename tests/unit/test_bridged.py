"""Bridged segments, the contract and the datapath: a segment carried tagged on every
host's uplink. Each host sends its own VMs' traffic for no VM out of its own uplink
(broadcasts once, from the sender's host) and takes in what comes for its own VMs;
what enters from outside claims no VM's MAC or address and meets the policy."""

from __future__ import annotations

import copy

import pytest

from vfence.controller import desired, policy
from vfence.controller.model import VM, Binding, PortRef
from vfence.controller.policy import PolicyError

from .netfixtures import HV1, HV2, HV3
from .pipeline import Pipeline
from .test_external import DOC as EXTERNAL
from .test_external import UPLINK, uplinked

VLAN = 100
TAGGED = 0x1000 | VLAN
OUTSIDER, OUTSIDER_IP = "00:00:00:00:99:01", "10.20.0.200"
BCAST = "ff:ff:ff:ff:ff:ff"


def _doc() -> dict:
    doc = copy.deepcopy(EXTERNAL)
    doc["segments"][2]["bridged"] = {"uplink_vlan": VLAN}  # lab, 10.20.0.0/24
    doc["rules"].append({"name": "outside-in", "from": "10.20.0.128/25", "to": "lab",
                         "protocol": "tcp", "ports": "22", "action": "allow"})
    return doc


def bridged_net():
    """test_external's network with ``lab`` bridged on VLAN 100: l1 on hv3 (port 3), l2
    on hv1 (port 7); hv2 has no VM of it."""
    st = uplinked()
    st.policy = policy.parse(_doc())
    st.vms["l2"] = VM(8, "l2", "00:00:00:00:00:08", ("10.20.0.12",), 3, "lab", ("lab",))
    st.bindings["l2"] = Binding("l2", PortRef(HV1, 7))
    return st


@pytest.fixture(scope="module")
def net():
    st = bridged_net()
    return st, {d: Pipeline(f) for d, f in desired.compile_network(st).items()}


def _from_vm(st, name, **pkt):
    vm = st.vms[name]
    port = {"l1": 3, "l2": 7}[name]
    return {"in_port": port, "eth_src": vm.mac, **pkt}


def _tcp(src_ip, dst_ip, port=22):
    return {"eth_type": 0x0800, "ipv4_src": src_ip, "ipv4_dst": dst_ip, "ip_proto": 6,
            "tcp_src": 40000, "tcp_dst": port}


def _arp_request(sha, spa, tpa):
    return {"eth_dst": BCAST, "eth_type": 0x0806, "arp_op": 1, "arp_sha": sha,
            "arp_spa": spa, "arp_tpa": tpa}


def test_a_vm_reaches_a_physical_host_out_of_its_own_hosts_uplink_tagged(net):
    st, sw = net
    out = sw[HV3].run(_from_vm(st, "l1", eth_dst=OUTSIDER, **_tcp("10.20.0.11", OUTSIDER_IP)))
    assert [(p, f["vlan_vid"]) for p, f in out] == [(UPLINK, TAGGED)]
    # to another VM of the segment: the fabric, never the uplink
    out = sw[HV3].ports(_from_vm(st, "l1", eth_dst=st.vms["l2"].mac,
                                 **_tcp("10.20.0.11", "10.20.0.12")))
    assert UPLINK not in out and out


def test_a_broadcast_goes_out_of_the_senders_uplink_once(net):
    st, sw = net
    arp = _arp_request(st.vms["l1"].mac, "10.20.0.11", OUTSIDER_IP)
    out = sw[HV3].run(_from_vm(st, "l1", **arp))
    tagged = [f["vlan_vid"] for p, f in out if p == UPLINK]
    assert tagged == [TAGGED] and len(out) == 2, out  # the uplink, and hv1 (l2) labelled


def test_from_outside_the_policy_judges_and_established_replies_pass(net):
    st, sw = net
    inbound = {"in_port": UPLINK, "vlan_vid": TAGGED, "eth_src": OUTSIDER,
               "eth_dst": st.vms["l1"].mac}
    new22 = sw[HV3].run({**inbound, **_tcp("10.20.0.200", "10.20.0.11", 22)})
    assert [(p, f["vlan_vid"]) for p, f in new22] == [(3, 0)]  # outside-in: allowed, untagged
    assert sw[HV3].ports({**inbound, **_tcp("10.20.0.200", "10.20.0.11", 80)}) == []  # no rule
    assert sw[HV3].ports({**inbound, **_tcp("10.20.0.5", "10.20.0.11", 22)}) == []  # not /25
    assert sw[HV3].ports({**inbound, **_tcp("10.20.0.5", "10.20.0.11", 80)}, 0x22) == [3]


def test_nothing_from_outside_may_claim_a_vm(net):
    st, sw = net
    inbound = {"in_port": UPLINK, "vlan_vid": TAGGED, "eth_dst": st.vms["l1"].mac}
    ok = {**inbound, "eth_src": OUTSIDER, **_tcp("10.20.0.200", "10.20.0.11")}
    assert sw[HV3].ports(ok) == [3]  # the control
    assert sw[HV3].ports({**ok, "eth_src": st.vms["l2"].mac}) == []  # a VM's MAC
    assert sw[HV3].ports({**ok, "ipv4_src": "10.20.0.12"}) == []  # a VM's address
    spoofed_arp = {"in_port": UPLINK, "vlan_vid": TAGGED, "eth_src": OUTSIDER,
                   **_arp_request(OUTSIDER, "10.20.0.12", "10.20.0.11")}
    assert sw[HV3].ports(spoofed_arp) == []
    honest_arp = {**spoofed_arp, "arp_spa": OUTSIDER_IP}
    # the VM answers for itself: delivered to it, never answered by the datapath (every
    # host would answer, and the physical switch would see l1's MAC on every uplink)
    assert sw[HV3].ports(honest_arp) == [3]
    assert sw[HV1].ports(honest_arp) == [7]  # each host its own receivers, no fabric copy


def test_other_vlans_untagged_and_hosts_without_the_segment_take_nothing(net):
    st, sw = net
    frame = {"in_port": UPLINK, "eth_src": OUTSIDER, "eth_dst": st.vms["l1"].mac,
             **_tcp("10.20.0.200", "10.20.0.11")}
    assert sw[HV3].ports({**frame, "vlan_vid": TAGGED}) == [3]  # the control
    assert sw[HV3].ports({**frame, "vlan_vid": 0x1000 | 200}) == []
    assert sw[HV3].ports(frame) == []  # untagged: an inside address from outside
    assert sw[HV2].ports({**frame, "vlan_vid": TAGGED}) == []  # no VM of it on hv2


def test_a_moved_vm_takes_its_segment_uplink_flows_along_incrementally():
    st = bridged_net()
    prev = desired.build(st)
    moved = st.copy()
    moved.bindings["l1"] = Binding("l1", PortRef(HV2, 5))
    now = desired.rebuild(prev, moved)
    assert dict(now) == dict(desired.build(moved))
    sw = Pipeline(now[HV2])
    inbound = {"in_port": UPLINK, "vlan_vid": TAGGED, "eth_src": OUTSIDER,
               "eth_dst": st.vms["l1"].mac, **_tcp("10.20.0.200", "10.20.0.11")}
    assert sw.ports(inbound) == [5]
    assert Pipeline(now[HV3]).ports(inbound) == []  # hv3 has no VM of it any more


@pytest.mark.parametrize("edit, field, words", [
    (lambda d: d["routers"][0]["segments"].append("lab"), "routers[0].segments[2]",
     "bridged"),
    (lambda d: d["segments"][2].update(subnet6="fd00:20::/64"), "segments[2].subnet6",
     "IPv4 only"),
    (lambda d: d["segments"][1].update(bridged={"uplink_vlan": VLAN}),
     "segments[2].bridged.uplink_vlan", "already carries segment 'db'"),
    (lambda d: d["segments"][2].update(bridged={"uplink_vlan": 4095}),
     "segments[2].bridged.uplink_vlan", "4094"),
])
def test_bad_bridged_segments_are_refused_naming_the_field(edit, field, words):
    doc = _doc()
    edit(doc)
    with pytest.raises(PolicyError) as e:
        policy.parse(doc)
    assert any(err["field"] == field and words in err["reason"] for err in e.value.errors), \
        e.value.errors


def test_a_vm_arriving_at_a_host_is_announced_out_of_that_hosts_uplink():
    from os_ken.lib.packet import arp, packet, vlan

    from vfence.apps.bridged import announcement
    from vfence.controller import bridged

    st = bridged_net()
    moved = [("l1", Binding("l1", PortRef(HV2, 5))), ("w1", st.bindings["w1"])]
    (got,) = bridged.announcements(st, moved)  # w1: not bridged
    assert got[:2] == (HV2, UPLINK) and got[2].name == "l1" and got[3] == VLAN
    pkt = packet.Packet(announcement(got[2], VLAN))
    tag, garp = pkt.get_protocol(vlan.vlan), pkt.get_protocol(arp.arp)
    assert tag.vid == VLAN and garp.opcode == arp.ARP_REQUEST
    assert garp.src_ip == garp.dst_ip == "10.20.0.11" and garp.src_mac == st.vms["l1"].mac
    v6only = VM(9, "x", "00:00:00:00:00:09", (), 3, "lab")
    rarp = packet.Packet(announcement(v6only, VLAN))
    assert rarp.get_protocol(vlan.vlan).ethertype == 0x8035
    no_uplink = st.copy()
    no_uplink.port_names = {}
    assert list(bridged.announcements(no_uplink, moved)) == []


def test_no_vm_may_hold_a_bridged_segments_gateway():
    """Found by review: the uplink would drop the real router's frames as spoofed."""
    doc = _doc()
    doc["segments"][2]["gateway"] = "10.20.0.1"
    doc["vms"] = [{"name": "x", "mac": "02:00:00:00:00:99", "segment": "lab",
                   "ips": ["10.20.0.1"]}]
    with pytest.raises(PolicyError) as e:
        policy.parse(doc)
    assert any(err["field"] == "vms[0].ips[0]" and "gateway of bridged" in err["reason"]
               for err in e.value.errors), e.value.errors
