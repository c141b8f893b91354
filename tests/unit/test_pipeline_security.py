"""Compiled flows walked with one concrete frame each (tests/unit/pipeline.py): deny
holds for every destination MAC, IPv6 neighbour discovery works under any rules but only
for a VM's own addresses, LLDP is heard only on fabric ports. The lab repeats the
attacks on real Open vSwitch; these pin the compiler's part in microseconds."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from vfence.controller import compiler, desired
from vfence.controller.flows import OFPP_CONTROLLER, OFPVID_PRESENT
from vfence.controller.model import Endpoint, Policy, Rule, eui64_link_local

from .netfixtures import HV1, HV2, add_vm, two_hosts_two_spines
from .pipeline import Pipeline

BCAST = "ff:ff:ff:ff:ff:ff"
IP4, IP6, ARP, LLDP = 0x0800, 0x86DD, 0x0806, 0x88CC
ZERO = "00:00:00:00:00:00"


def _network(rules=(), inter_group="allow", isolation=()):
    """guest (hv1 p3), db (hv1 p4), web (hv1 p5) and db2 (hv2 p3), one segment."""
    st = two_hosts_two_spines()
    vms = {}
    for vid, name, dpid, port, group in [(1, "guest", HV1, 3, "guest"), (2, "db", HV1, 4, "db"),
                                         (3, "web", HV1, 5, "web"), (4, "db2", HV2, 3, "db")]:
        vm = add_vm(st, vid, name, 1, dpid, port, ip=f"10.0.0.{vid}")
        vms[name] = st.vms[name] = dataclasses.replace(
            vm, groups=(group,), ips=(f"10.0.0.{vid}", f"fd00::{vid}"))
    st.group_bits = {"guest": 0, "db": 1, "web": 2}
    st.policy = Policy(groups=("guest", "db", "web"), rules=tuple(rules),
                       inter_group=inter_group, isolation=tuple(isolation))
    flows = desired.compile_network(st)
    return vms, Pipeline(flows[HV1]), Pipeline(flows[HV2])


def _deny(src, dst, index=0, **kw):
    return Rule(index, f"r{index}", Endpoint("group", src), Endpoint("group", dst), "deny",
                **kw)


def _udp(vm, eth_dst, ip_dst, port=3):
    return {"in_port": port, "eth_src": vm.mac, "eth_dst": eth_dst, "eth_type": IP4,
            "ipv4_src": vm.ips[0], "ipv4_dst": ip_dst, "ip_proto": 17, "udp_dst": 9999}


def _over_fabric(pipe_out, label=2, in_port=1):
    """The labelled copy hv1 sent, as hv2 receives it on its fabric port."""
    (frame,) = [f for p, f in pipe_out if f.get("vlan_vid") == OFPVID_PRESENT | label]
    return {k: v for k, v in frame.items() if k in (
        "eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst", "ip_proto", "udp_dst",
        "ipv6_src", "ipv6_dst", "icmpv6_type", "ipv6_nd_target")} | {
        "in_port": in_port, "vlan_vid": frame["vlan_vid"]}


@pytest.mark.parametrize("eth_dst", [BCAST, "01:00:5e:00:00:fb", "33:33:00:00:00:01"])
def test_deny_holds_for_broadcast_and_multicast_on_both_hosts(eth_dst):
    vms, hv1, hv2 = _network([_deny("guest", "db")])
    out = hv1.run(_udp(vms["guest"], eth_dst, vms["db"].ips[0]))
    ports = [p for p, _ in out]
    assert 5 in ports  # control: web may hear guest's broadcast
    assert 4 not in ports  # db may not, though the frame carries db's IP
    # the copy for hv2 is judged there: db2 gets nothing
    assert hv2.ports(_over_fabric(out)) == []
    # control on hv2: a broadcast from web does reach db2
    out = hv1.run(_udp(vms["web"], eth_dst, "10.0.0.255", port=5))
    assert 4 in [p for p, _ in out] and hv2.ports(_over_fabric(out)) == [3]


def test_deny_holds_for_unicast_and_unknown_unicast():
    vms, hv1, _ = _network([_deny("guest", "db")])
    assert hv1.ports(_udp(vms["guest"], vms["db"].mac, vms["db"].ips[0])) == []
    assert hv1.ports(_udp(vms["guest"], vms["web"].mac, vms["web"].ips[0])) == [5]
    assert hv1.ports(_udp(vms["guest"], "02:00:00:00:99:99", vms["db"].ips[0])) == []


def test_isolation_pair_blocks_broadcast_both_ways():
    vms, hv1, _ = _network(isolation=[("guest", "db")])
    assert 4 not in hv1.ports(_udp(vms["guest"], BCAST, "10.0.0.255"))
    assert 3 not in hv1.ports(_udp(vms["db"], BCAST, "10.0.0.255", port=4))
    assert 5 in hv1.ports(_udp(vms["db"], BCAST, "10.0.0.255", port=4))


def _ns(vm, target, port, src=None):
    group = compiler._solicited_node(target)
    low = ipaddress.IPv6Address(group).packed[-4:]
    return {"in_port": port, "eth_src": vm.mac, "eth_dst": "33:33:" + low.hex(":"),
            "eth_type": IP6, "ipv6_src": src or eui64_link_local(vm.mac),
            "ipv6_dst": group, "ip_proto": 58, "icmpv6_type": 135,
            "ipv6_nd_target": target, "ipv6_nd_sll": vm.mac}


def _na(vm, target, to, port, tll=None):
    return {"in_port": port, "eth_src": vm.mac, "eth_dst": to.mac, "eth_type": IP6,
            "ipv6_src": eui64_link_local(vm.mac), "ipv6_dst": eui64_link_local(to.mac),
            "ip_proto": 58, "icmpv6_type": 136, "ipv6_nd_target": target,
            "ipv6_nd_tll": tll or vm.mac}


@pytest.mark.parametrize("target", ["ll", "global"])
def test_neighbour_solicitation_goes_to_the_owner_alone_under_default_deny(target):
    # only web -> db is allowed: db must still answer web's solicitations
    allow = Rule(0, "r0", Endpoint("group", "web"), Endpoint("group", "db"), "allow",
                 protocol="tcp", ports=((5432, 5432),))
    vms, hv1, _ = _network([allow], inter_group="deny")
    db = vms["db"]
    addr = eui64_link_local(db.mac) if target == "ll" else "fd00::2"
    out = hv1.run(_ns(vms["web"], addr, 5))
    assert [p for p, _ in out] == [4]
    assert out[0][1]["eth_dst"] == db.mac  # unicast to the owner, nobody else sees it
    assert hv1.ports(_na(db, addr, vms["web"], 4)) == [5]  # and the answer comes back
    # guest may reach nobody and nobody may reach guest: its solicitation goes nowhere
    assert hv1.ports(_ns(vms["guest"], addr, 3)) == []
    # a solicitation for an address nobody holds is dropped, never flooded
    assert hv1.ports(_ns(vms["web"], "fd00::99", 5)) == []


def test_neighbour_discovery_respects_a_deny_both_ways():
    vms, hv1, _ = _network([_deny("guest", "db"), _deny("db", "guest", 1)])
    assert hv1.ports(_ns(vms["guest"], "fd00::2", 3)) == []
    assert hv1.ports(_ns(vms["guest"], "fd00::3", 3)) == [5]  # control: web


def test_neighbour_advertisement_only_for_own_address_and_mac():
    vms, hv1, _ = _network()
    guest, web = vms["guest"], vms["web"]
    assert hv1.ports(_na(guest, "fd00::1", web, 3)) == [5]  # control: its own address
    assert hv1.ports(_na(guest, "fd00::2", web, 3)) == []  # db's address: spoof
    assert hv1.ports(_na(guest, eui64_link_local(vms["db"].mac), web, 3)) == []
    assert hv1.ports(_na(guest, "fd00::1", web, 3, tll="02:00:00:00:66:66")) == []


@pytest.mark.parametrize("icmp_type", [133, 134, 137])
def test_router_messages_from_a_vm_reach_no_other_vm(icmp_type):
    """Advertisements and redirects are dropped; a solicitation goes to the controller
    alone (metered: it answers with the segment's advertisement), never to the VMs."""
    vms, hv1, _ = _network()
    guest = vms["guest"]
    ra = {"in_port": 3, "eth_src": guest.mac, "eth_dst": "33:33:00:00:00:01",
          "eth_type": IP6, "ipv6_src": eui64_link_local(guest.mac), "ipv6_dst": "ff02::1",
          "ip_proto": 58, "icmpv6_type": icmp_type}
    assert hv1.ports(ra) == ([OFPP_CONTROLLER] if icmp_type == 133 else [])
    assert 5 in hv1.ports({**ra, "icmpv6_type": 128})  # control: an echo to all nodes


def test_ipv6_source_only_own_link_local_or_registered():
    vms, hv1, _ = _network()
    guest, web = vms["guest"], vms["web"]
    pkt = {"in_port": 3, "eth_src": guest.mac, "eth_dst": web.mac, "eth_type": IP6,
           "ip_proto": 17, "udp_dst": 9, "ipv6_dst": "fd00::3"}
    assert hv1.ports({**pkt, "ipv6_src": "fd00::1"}) == [5]
    assert hv1.ports({**pkt, "ipv6_src": eui64_link_local(guest.mac)}) == [5]
    assert hv1.ports({**pkt, "ipv6_src": "fe80::1"}) == []
    assert hv1.ports({**pkt, "ipv6_src": eui64_link_local(web.mac)}) == []
    assert hv1.ports({**pkt, "ipv6_src": "::"}) == []  # unspecified: ICMPv6 only


def test_lldp_reaches_the_controller_only_from_fabric_ports():
    vms, hv1, _ = _network()
    lldp = {"eth_src": vms["guest"].mac, "eth_dst": "01:80:c2:00:00:0e", "eth_type": LLDP}
    assert hv1.ports({**lldp, "in_port": 1}) == [OFPP_CONTROLLER]
    assert hv1.ports({**lldp, "in_port": 3}) == []  # a VM's port: never a probe
    assert hv1.ports({**lldp, "in_port": 9}) == [OFPP_CONTROLLER]  # unbound: punted...
    # ... through the binding-detection meter, as any frame: the app ignores it as LLDP
    assert hv1.trace[0].instructions[0] == ("meter", compiler.METER_PUNT)


# --- found by the attack review ---------------------------------------------------------


def test_an_established_packet_readdressed_to_a_denied_vm_reaches_nobody():
    """guest has an allowed connection to web; its packets re-addressed to db's MAC are
    'established' for conntrack, but db's MAC only takes db's own addresses."""
    vms, hv1, _ = _network([_deny("guest", "db")])
    pkt = _udp(vms["guest"], vms["db"].mac, vms["web"].ips[0])
    assert hv1.ports(pkt, ct_state=0x22) == []
    assert hv1.ports({**pkt, "eth_dst": vms["web"].mac}, ct_state=0x22) == [5]  # control


def test_a_related_packet_is_judged_like_a_new_one():
    """A forged ICMP error 'related' to db's own connection with web, from guest."""
    vms, hv1, _ = _network([_deny("guest", "db")])
    err = {**_udp(vms["guest"], vms["db"].mac, vms["db"].ips[0]), "ip_proto": 1,
           "icmpv4_type": 3, "icmpv4_code": 3}
    del err["udp_dst"]
    assert hv1.ports(err, ct_state=0x24) == []
    assert hv1.ports({**err, "eth_dst": vms["web"].mac, "ipv4_dst": vms["web"].ips[0]},
                     ct_state=0x24) == [5]  # control: guest may reach web


def test_a_deny_naming_a_vms_mac_holds_for_broadcast():
    vms, hv1, _ = _network([Rule(0, "r0", Endpoint("group", "guest"),
                                 Endpoint("mac", "00:00:00:00:00:02"), "deny")])
    ports = hv1.ports(_udp(vms["guest"], BCAST, "10.0.0.255"))
    assert 5 in ports and 4 not in ports


def test_a_cidr_deny_holds_back_only_its_family_of_broadcasts():
    vms, hv1, _ = _network([Rule(0, "r0", Endpoint("group", "guest"),
                                 Endpoint("cidr", "fd00::/64"), "deny")])
    assert 5 in hv1.ports(_udp(vms["guest"], BCAST, "10.0.0.255"))  # IPv4 unaffected
    v6 = {"in_port": 3, "eth_src": vms["guest"].mac, "eth_dst": "33:33:00:00:00:01",
          "eth_type": IP6, "ipv6_src": "fd00::1", "ipv6_dst": "ff02::1", "ip_proto": 17,
          "udp_dst": 9}
    assert hv1.ports(v6) == [1]  # only the copy for hv2, judged (and dropped) there


def test_duplicate_address_detection_only_for_own_addresses():
    """An NS from :: makes its target give up a tentative address: only about itself."""
    vms, hv1, _ = _network()
    guest = vms["guest"]
    dad = {**_ns(guest, "fd00::2", 3, src="::"), "ipv6_nd_sll": ZERO}
    assert hv1.ports(dad) == []
    assert hv1.trace[0].priority == compiler.PRIO_SPOOFED_ND
    own = {**_ns(guest, "fd00::1", 3, src="::"), "ipv6_nd_sll": ZERO}
    assert hv1.ports(own) == []  # passes port security, never answered: DAD succeeds
    assert hv1.trace[0].priority == compiler.PRIO_ND_OWN


@pytest.mark.parametrize("family, sport, dport", [(IP4, 6767, 68), (IP4, 67, 68),
                                                  (IP6, 5000, 546)])
def test_dhcp_answers_from_a_vm_are_dropped_whatever_the_source_port(family, sport, dport):
    vms, hv1, _ = _network()
    guest = vms["guest"]
    src = {"ipv4_src": guest.ips[0], "ipv4_dst": "255.255.255.255"} if family == IP4 else {
        "ipv6_src": "fd00::1", "ipv6_dst": "ff02::1:2"}
    pkt = {"in_port": 3, "eth_src": guest.mac, "eth_dst": BCAST, "eth_type": family,
           "ip_proto": 17, "udp_src": sport, "udp_dst": dport, **src}
    assert hv1.ports(pkt) == []
    assert 5 in hv1.ports({**pkt, "udp_dst": 9999, "udp_src": 9999})  # control
