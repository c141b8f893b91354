"""North-south, the contract and the datapath: external networks, routers that reach one,
hosts' uplinks (checked like the rest of the document); each host routes its own VMs'
outside traffic straight out of its uplink to the external gateway, under the policy,
and takes what comes in for its VMs on it; its uplink address is answered in the
datapath; BGP announces each routed VM's /32 via its host's uplink address."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from vfence.controller import desired, external, policy
from vfence.controller.flows import OFPP_CONTROLLER
from vfence.controller.model import PortRef

from .netfixtures import HV1, HV2
from .pipeline import Pipeline
from .test_routing import DOC as ROUTED
from .test_routing import R1, _network

GW_MAC = "00:00:5e:00:01:01"
UPLINK = 9  # each host's uplink port here
DOC = copy.deepcopy(ROUTED)
DOC["routers"][0]["external"] = "dc"
DOC["external"] = [{"name": "dc", "subnet": "198.18.10.0/24", "gateway": "198.18.10.1",
                    "bgp": {"local_asn": 65010, "peer": "198.18.10.1", "peer_asn": 65000}}]
DOC["external"][0].update(subnet6="2001:db8:10::/64", gateway6="2001:db8:10::1")
DOC["hosts"] = [{"name": f"hv{i}", "uplink": f"up{i}", "address": f"198.18.10.1{i}",
                 "address6": f"2001:db8:10::1{i}"} for i in (1, 2, 3)]
DOC["segments"] = [{**s, "subnet6": f"fd00:1{i}::/64", "gateway6": f"fd00:1{i}::1"}
                   if s["name"] in ("web", "db") else s
                   for i, s in enumerate(DOC["segments"], start=1)]
DOC["rules"] = [*DOC["rules"],
                {"name": "web-out", "from": "web", "to": "198.51.100.0/24", "protocol": "tcp",
                 "ports": "443", "action": "allow"},
                {"name": "in-web", "from": "198.51.100.0/24", "to": "web", "protocol": "tcp",
                 "ports": "80", "action": "allow"},
                {"name": "web-out6", "from": "web", "to": "2001:db8:51::/64",
                 "protocol": "tcp", "ports": "443", "action": "allow"},
                {"name": "in-web6", "from": "2001:db8:51::/64", "to": "web", "protocol": "tcp",
                 "ports": "80", "action": "allow"}]
IP6 = {"w1": "fd00:11::11", "d1": "fd00:12::11", "f1": "fd00:11::21"}  # (f1: hv1, w1's)
GW6_MAC = "00:00:5e:00:02:01"  # (VRRPv3's for IPv6: not IPv4's)


def uplinked(gateway_mac: str | None = GW_MAC):
    """test_routing's network (r1: web, db; lab unrouted) with r1 reaching dc through
    every host's uplink (port 9), the gateway's MAC resolved."""
    st = _network()
    st.policy = policy.parse(DOC)
    st.port_names = {d: {f"up{d - 0x100}": UPLINK} for d in (0x101, 0x102, 0x103)}
    st.gateway_macs = {d: gateway_mac for d in (0x101, 0x102, 0x103)} if gateway_mac else {}
    st.gateway6_macs = {d: GW6_MAC for d in (0x101, 0x102, 0x103)} if gateway_mac else {}
    for name, ip6 in IP6.items():
        st.vms[name] = dataclasses.replace(st.vms[name], ips=(*st.vms[name].ips, ip6))
    return st


def _out(st, src, dst="198.51.100.7", port=443, ttl=64):
    vm = st.vms[src]
    from .test_routing import PLACES
    return {"in_port": PLACES[src][4], "eth_src": vm.mac, "eth_dst": R1, "eth_type": 0x0800,
            "ipv4_src": vm.ips[0], "ipv4_dst": dst, "ip_proto": 6, "tcp_dst": port,
            "tcp_src": 40000, "nw_ttl": ttl}


def _in(st, dst, src="198.51.100.7", port=80, host=HV1):
    return {"in_port": UPLINK, "eth_src": GW_MAC,
            "eth_dst": external.uplink_mac(f"hv{host - 0x100}"), "eth_type": 0x0800,
            "ipv4_src": src, "ipv4_dst": st.vms[dst].ips[0], "ip_proto": 6, "tcp_dst": port,
            "tcp_src": 40000, "nw_ttl": 60}


def test_the_contract_parses_and_bad_parts_are_refused_naming_the_field():
    p = policy.parse(DOC)
    (dc,) = p.externals
    assert (dc.gateway, dc.bgp.peer_asn, p.routers[0].external) == ("198.18.10.1", 65000, "dc")
    assert [u.address for u in p.uplinks] == ["198.18.10.11", "198.18.10.12", "198.18.10.13"]
    cases = [
        (lambda d: d["routers"][0].update(external="nope"), "routers[0].external",
         "unknown external network 'nope'"),
        (lambda d: d["external"][0].update(gateway="198.18.11.1"), "external[0].gateway",
         "198.18.11.1 is not a host address of 198.18.10.0/24"),
        (lambda d: d["external"][0].update(subnet="198.18.10.1/24"), "external[0].subnet",
         "'198.18.10.1/24' is not an IPv4 network (198.18.10.1/24 has host bits set)"),
        (lambda d: d["hosts"][1].update(address="198.18.10.11"), "hosts[1].address",
         "198.18.10.11 is host 'hv1''s"),
        (lambda d: d["hosts"][0].update(address="10.9.9.9"), "hosts[0].address",
         "10.9.9.9 is in no external network's subnet"),
        (lambda d: d["hosts"][0].update(address="198.18.10.1"), "hosts[0].address",
         "198.18.10.1 is external 'dc''s gateway"),
        (lambda d: d["external"][0].pop("gateway6"), "external[0].gateway6",
         "subnet6 and gateway6 go together (IPv6 leaves through the gateway6, which is in "
         "the subnet6)"),
        (lambda d: d["external"][0].update(gateway6="2001:db8:11::1"), "external[0].gateway6",
         "2001:db8:11::1 is outside the network's subnet6 2001:db8:10::/64"),
        (lambda d: d["hosts"][2].update(address6="2001:db8:10::11"), "hosts[2].address6",
         "2001:db8:10::11 is host 'hv1''s"),
        (lambda d: d["hosts"][2].update(address6="2001:db8:10::1"), "hosts[2].address6",
         "2001:db8:10::1 is external 'dc''s gateway"),
        (lambda d: d["hosts"][0].update(address6="198.18.10.99"), "hosts[0].address6",
         "198.18.10.99 is not an IPv6 address (the subnet6 is 2001:db8:10::/64)"),
        (lambda d: [d["external"][0].pop(k) for k in ("subnet6", "gateway6")],
         "hosts[0].address6", "external network 'dc' has no subnet6"),
        (lambda d: d["external"][0].update(subnet6="fe80::/64", gateway6="fe80::1"),
         "external[0].subnet6", "fe80::/64 overlaps link-local (fe80::/10): BGP's next hop "
         "must be a global address"),
        (lambda d: d["external"][0].update(subnet6="::ffff:198.18.10.0/120",
                                           gateway6="::ffff:198.18.10.1"),
         "external[0].subnet6", "::ffff:c612:a00/120 overlaps IPv4-mapped (::ffff:0:0/96): "
         "BGP's next hop must be a global address"),
        (lambda d: d["external"][0].update(subnet6="fd00:10::/28", gateway6="fd00:10::1"),
         "routers[0].external", "segment 'web''s subnet6 fd00:11::/64 overlaps external "
         "network 'dc' (fd00:10::/28)"),
        (lambda d: d["external"][0].update(subnet="10.10.0.0/16", gateway="10.10.9.1"),
         "routers[0].external", "segment 'web''s subnet 10.10.1.0/24 overlaps external "
         "network 'dc' (10.10.0.0/16)"),
        (lambda d: d["external"].append({"name": "dr", "subnet": "198.18.20.0/24",
                                         "gateway": "198.18.20.1", "bgp": {
                                             "local_asn": 65011, "peer": "198.18.20.1",
                                             "peer_asn": 65000}}),
         "external[1].bgp", "one BGP session per controller (os-ken's speaker keeps one "
                            "table for every peer): set bgp on one network"),
        (lambda d: (d["segments"].append({"name": "web2", "subnet": "10.10.1.0/25",
                                          "gateway": "10.10.1.1"}),
                    d["routers"].append({"name": "r2", "segments": ["web2"], "external": "dc"})),
         "routers[1].external", "segment 'web2''s subnet 10.10.1.0/25 overlaps router 'r1''s, "
                                "which reaches 'dc' too"),
    ]
    for change, field, reason in cases:
        doc = copy.deepcopy(DOC)
        change(doc)
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(doc)
        assert (field, reason) in {(x["field"], x["reason"]) for x in e.value.errors}, \
            e.value.errors


def test_a_vm_reaches_the_outside_through_its_own_hosts_uplink_under_the_policy():
    st = uplinked()
    hv1 = Pipeline(desired.compile_network(st)[HV1])
    ((port, pkt),) = hv1.run(_out(st, "w1"))
    assert port == UPLINK
    assert (pkt["eth_src"], pkt["eth_dst"], pkt["nw_ttl"]) == (
        external.uplink_mac("hv1"), GW_MAC, 63)
    assert hv1.run(_out(st, "w1", port=22)) == []  # no rule allows it: the default denies
    assert hv1.run(_out(st, "l1")) == []  # lab: no router (and not on hv1 anyway)
    assert [p for p, _ in hv1.run(_out(st, "w1", ttl=1))] == [OFPP_CONTROLLER]  # expires
    # the gateway's MAC not resolved yet: no way out (dropped, never flooded)
    assert Pipeline(desired.compile_network(uplinked(None))[HV1]).run(_out(st, "w1")) == []


def test_the_outside_reaches_a_vm_through_the_uplink_of_its_host_and_nothing_else_passes():
    st = uplinked()
    flows = desired.compile_network(st)
    hv1, hv2 = Pipeline(flows[HV1]), Pipeline(flows[HV2])
    ((port, pkt),) = hv1.run(_in(st, "w1"))
    assert port == 3 and (pkt["eth_src"], pkt["eth_dst"], pkt["nw_ttl"]) == (
        R1, st.vms["w1"].mac, 59)
    assert hv1.run(_in(st, "w1", port=22)) == []  # not allowed in
    assert hv1.run(_in(st, "w1", src="10.10.2.11")) == []  # an inside source from outside
    assert hv1.run(_in(st, "w1", src="10.20.0.11")) == []  # any segment's, routed or not
    gw_ping = dict(_in(st, "w1"), ipv4_dst="10.10.1.1", ip_proto=1, icmpv4_type=8)
    assert hv1.run(gw_ping) == []  # the gateways answer inside only
    assert hv1.run(dict(_in(st, "w1"), eth_dst="02:00:00:00:00:01")) == []  # not our MAC
    assert hv1.run(_in(st, "w1", host=HV2)) == []  # another host's MAC
    assert hv2.ports(_in(st, "d1", port=5432, host=HV2)) == []  # db: no rule lets it in
    # the host's uplink address is answered in the datapath, nothing else
    arp = {"in_port": UPLINK, "eth_src": GW_MAC, "eth_dst": "ff:ff:ff:ff:ff:ff",
           "eth_type": 0x0806, "arp_op": 1, "arp_sha": GW_MAC, "arp_spa": "198.18.10.1",
           "arp_tha": "00:00:00:00:00:00", "arp_tpa": "198.18.10.11"}
    ((port, reply),) = hv1.run(arp)
    assert port == UPLINK and (reply["arp_op"], reply["arp_sha"], reply["arp_spa"]) == (
        2, external.uplink_mac("hv1"), "198.18.10.11")
    assert hv1.run(dict(arp, arp_tpa="198.18.10.12")) == []  # hv2's: not here
    gw_reply = dict(arp, eth_dst=external.uplink_mac("hv1"), arp_op=2, arp_tpa="198.18.10.11")
    assert [p for p, _ in hv1.run(gw_reply)] == [OFPP_CONTROLLER]  # its MAC, learned


def test_each_host_keeps_its_own_gateway_mac_and_a_vm_is_announced_once_it_can_leave():
    """A gateway MAC one host learned redirects no other host's traffic; a host whose
    uplink has no gateway MAC yet (no way out) announces none of its VMs."""
    st = uplinked()
    st.gateway_macs = {0x101: GW_MAC, 0x102: "02:66:66:66:66:66"}  # hv2 poisoned, say
    flows = desired.compile_network(st)
    ((_, pkt),) = Pipeline(flows[HV1]).run(_out(st, "w1"))
    assert pkt["eth_dst"] == GW_MAC  # hv1's own
    routes = external.announcements(st)["dc"]
    assert routes["10.10.1.11/32"] == "198.18.10.11" and "10.10.2.22/32" not in routes  # hv3


def test_a_hosts_uplink_port_is_never_bound_to_a_vm():
    """The uplink is refused as a VM port like a fabric port, by the name the policy
    gives it in the switch's own port list (before its OVSDB has said anything)."""
    from vfence.controller import binding

    st = uplinked()
    world = binding.World.of(st, {0x101: {9: "up1", 3: "vnet1"}}, None, True)
    assert 9 in world.fabric[0x101] and 3 not in world.fabric[0x101]


def test_bgp_announces_each_routed_vm_via_its_hosts_uplink_address():
    st = uplinked()
    assert external.announcements(st) == {"dc": {
        "10.10.1.11/32": "198.18.10.11", "10.10.2.11/32": "198.18.10.12",
        "10.10.2.12/32": "198.18.10.11", "10.10.1.21/32": "198.18.10.11",
        "10.10.2.21/32": "198.18.10.11", "10.10.2.22/32": "198.18.10.13",
        "fd00:11::11/128": "2001:db8:10::11", "fd00:12::11/128": "2001:db8:10::12",
        "fd00:11::21/128": "2001:db8:10::11"}}
    from vfence.controller.model import Binding, PortRef

    st.bindings["d1"] = Binding("d1", PortRef(0x103, 7))  # moved to hv3
    assert external.announcements(st)["dc"]["10.10.2.11/32"] == "198.18.10.13"


def test_each_hosts_ovsdb_keeps_its_own_port_names():
    """Every host's OVSDB reports its own bridges: one snapshot replaces that host's
    interfaces only (an uplink found on hv1 stays found when hv2 reports)."""
    from vfence.controller import edits
    from vfence.controller.hosts import Interface

    st = uplinked()
    st.port_names = {}

    def listed(dpid: int, names: dict[str, int]) -> None:
        ifaces = [Interface(dpid, no, name) for name, no in names.items()]
        edits.host_listed({}, {}, ifaces, frozenset({dpid}), lambda s: None)(st, None)

    listed(0x101, {"up1": 9, "vnet1": 3})
    listed(0x102, {"up2": 9})
    listed(0x101, {"up1": 9})  # hv1 again: vnet1 went
    assert st.port_names == {0x101: {"up1": 9}, 0x102: {"up2": 9}}
    assert external.host_out(st, 0x101).port == 9


def _out6(st, src, dst="2001:db8:51::7", port=443, **more):
    from .test_routing import PLACES
    vm = st.vms[src]
    return {"in_port": PLACES[src][4], "eth_src": vm.mac, "eth_dst": R1, "eth_type": 0x86DD,
            "ipv6_src": IP6[src], "ipv6_dst": dst, "ip_proto": 6, "tcp_dst": port,
            "tcp_src": 40000, "nw_ttl": 64, **more}


def _in6(st, dst, src="2001:db8:51::7", port=80, host=HV1):
    return {"in_port": UPLINK, "eth_src": GW6_MAC,
            "eth_dst": external.uplink_mac(f"hv{host - 0x100}"), "eth_type": 0x86DD,
            "ipv6_src": src, "ipv6_dst": IP6[dst], "ip_proto": 6, "tcp_dst": port,
            "tcp_src": 40000, "nw_ttl": 60}


def test_ipv6_leaves_through_gateway6_and_comes_in_under_the_policy():
    """The same north-south routing over IPv6: out through the host's uplink to gateway6's
    own MAC (resolved apart from the IPv4 gateway's), in for the routers' subnet6s, by
    the rules' IPv6 CIDRs; link-local and multicast scopes never cross; inside sources
    from outside and gateway6 from outside are dropped."""
    st = uplinked()
    flows = desired.compile_network(st)
    hv1 = Pipeline(flows[HV1])
    ((port, pkt),) = hv1.run(_out6(st, "w1"))
    assert port == UPLINK and (pkt["eth_src"], pkt["eth_dst"], pkt["nw_ttl"]) == (
        external.uplink_mac("hv1"), GW6_MAC, 63)
    assert hv1.run(_out6(st, "w1", port=22)) == []  # no rule: the default denies
    assert hv1.run(_out6(st, "w1", nw_ttl=1)) == []  # hop limit expires: dropped
    for scope in ({"ipv6_dst": "fe80::1"}, {"ipv6_dst": "ff0e::1"},
                  {"ipv6_src": "fe80::200:ff:fe00:1"}):  # (the VM's own link-local)
        assert hv1.run(_out6(st, "w1", **scope)) == [], scope
    ((port, pkt),) = hv1.run(_in6(st, "w1"))
    assert port == 3 and (pkt["eth_src"], pkt["eth_dst"], pkt["nw_ttl"]) == (
        R1, st.vms["w1"].mac, 59)
    assert hv1.run(_in6(st, "w1", port=22)) == []  # not allowed in
    assert hv1.run(_in6(st, "w1", src="fd00:12::99")) == []  # an inside source
    assert hv1.run(dict(_in6(st, "w1"), ipv6_dst="fd00:11::1", ip_proto=58,
                        icmpv6_type=128)) == []  # gateway6 answers inside only
    assert hv1.run(_in6(st, "w1", host=HV2)) == []  # another host's MAC
    # d1 (hv2) from outside at hv1 (BGP not yet moved, say): over the fabric to hv2
    st.bindings["w1"] = dataclasses.replace(st.bindings["w1"], port=PortRef(HV2, 7))
    moved = desired.compile_network(st)
    fabric = {lk.src.port_no for lk in st.links if lk.src.dpid == HV1}
    assert [p for p, _ in Pipeline(moved[HV1]).run(_in6(st, "w1"))][0] in fabric
    # without gateway6's MAC there is no way out, and no /128 is announced
    st = uplinked()
    st.gateway6_macs = {}
    assert Pipeline(desired.compile_network(st)[HV1]).run(_out6(st, "w1")) == []
    assert not any(p.endswith("/128") for p in external.announcements(st)["dc"])
    assert "10.10.1.11/32" in external.announcements(st)["dc"]  # IPv4 unaffected


def test_a_host_answers_for_its_address6_on_the_uplink_and_hears_gateway6():
    st = uplinked()
    hv1 = Pipeline(desired.compile_network(st)[HV1])
    me = external.uplink_mac("hv1")
    ns = {"in_port": UPLINK, "eth_src": GW6_MAC, "eth_dst": "33:33:ff:00:00:11",
          "eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135,
          "ipv6_src": "2001:db8:10::1", "ipv6_dst": "ff02::1:ff00:11", "nw_ttl": 255,
          "ipv6_nd_target": "2001:db8:10::11", "ipv6_nd_sll": GW6_MAC}
    ((port, na),) = hv1.run(ns)
    assert port == UPLINK
    assert (na["icmpv6_type"], na["eth_src"], na["eth_dst"], na["ipv6_src"], na["ipv6_dst"],
            na["ipv6_nd_tll"]) == (136, me, GW6_MAC, "2001:db8:10::11", "2001:db8:10::1", me)
    assert hv1.run(dict(ns, ipv6_nd_target="2001:db8:10::12")) == []  # hv2's
    assert hv1.run(dict(ns, ipv6_src="::", ipv6_nd_sll="00:00:00:00:00:00")) == []  # DAD
    # an advertisement from outside for the host's address is no answer of ours
    assert hv1.run(dict(ns, icmpv6_type=136, eth_dst=me, ipv6_nd_tll=GW6_MAC)) == []
    na_gw = dict(ns, icmpv6_type=136, eth_dst=me, ipv6_dst="2001:db8:10::11",
                 ipv6_nd_target="2001:db8:10::1", ipv6_nd_tll=GW6_MAC)
    assert [p for p, _ in hv1.run(na_gw)] == [OFPP_CONTROLLER]  # gateway6's MAC, learned


def test_a_host_without_address6_routes_no_ipv6_out_or_in():
    doc = copy.deepcopy(DOC)
    doc["hosts"][0].pop("address6")
    st = uplinked()
    st.policy = policy.parse(doc)
    hv1 = Pipeline(desired.compile_network(st)[HV1])
    assert hv1.run(_out6(st, "w1")) == [] and hv1.run(_in6(st, "w1")) == []
    assert [p for p, _ in hv1.run(_out(st, "w1"))] == [UPLINK]  # IPv4 still leaves
    assert "fd00:11::11/128" not in external.announcements(st)["dc"]


def test_gateway6s_advertisement_is_kept_apart_from_the_ipv4_gateways_mac():
    from vfence.controller import edits

    st = uplinked()
    st.gateway6_macs = {}
    edits.gateway_seen(HV1, UPLINK, "2001:db8:10::1", "00:00:5E:00:02:09")(st, _NoSession())
    edits.gateway_seen(HV1, UPLINK, "2001:db8:10::99", "02:00:00:00:00:99")(st, _NoSession())
    edits.gateway_seen(HV1, 4, "2001:db8:10::1", "02:00:00:00:00:98")(st, _NoSession())
    assert st.gateway6_macs == {HV1: "00:00:5e:00:02:09"} and st.gateway_macs[HV1] == GW_MAC


class _NoSession:
    def add(self, row) -> None:
        pass


def test_the_probe_and_the_answer_are_real_neighbour_discovery():
    """The host's solicitation for gateway6 as os-ken parses it, and the gateway's answer
    read back (only with the frame's own unicast MAC)."""
    from os_ken.lib.packet import ethernet, icmpv6, ipv6, packet

    from vfence.apps import router_answers

    probe = packet.Packet(router_answers.neighbor_solicitation(
        "0a:00:00:00:00:01", "2001:db8:10::11", "2001:db8:10::1"))
    eth, ip, icmp = (probe.get_protocol(c) for c in (ethernet.ethernet, ipv6.ipv6,
                                                     icmpv6.icmpv6))
    assert (eth.dst, ip.dst, ip.hop_limit, icmp.type_, icmp.data.dst,
            icmp.data.option.hw_src) == ("33:33:ff:00:00:01", "ff02::1:ff00:1", 255, 135,
                                         "2001:db8:10::1", "0a:00:00:00:00:01")

    def answer(eth_src: str, tll: str, flags: int = 7) -> packet.Packet:
        out = packet.Packet()
        out.add_protocol(ethernet.ethernet(dst="0a:00:00:00:00:01", src=eth_src,
                                           ethertype=0x86DD))
        out.add_protocol(ipv6.ipv6(src="2001:db8:10::1", dst="2001:db8:10::11", nxt=58))
        out.add_protocol(icmpv6.icmpv6(type_=136, data=icmpv6.nd_neighbor(
            res=flags, dst="2001:db8:10::1", option=icmpv6.nd_option_tla(hw_src=tll))))
        out.serialize()
        return packet.Packet(bytes(out.data))

    assert router_answers.gateway_answer(answer(GW6_MAC, GW6_MAC)) == (
        "2001:db8:10::1", GW6_MAC)
    assert router_answers.gateway_answer(answer(GW6_MAC, "02:00:00:00:00:07")) is None
    # unsolicited (S clear): anyone may announce, it answers no probe (found by review)
    assert router_answers.gateway_answer(answer(GW6_MAC, GW6_MAC, flags=0b101)) is None
    assert router_answers.gateway_answer(answer("33:33:00:00:00:01", "33:33:00:00:00:01")) \
        is None



def _with_rule(rule: dict):
    """The uplinked network with one more rule, and hv1's pipeline."""
    doc = copy.deepcopy(DOC)
    doc["rules"].append(rule)
    st = uplinked()
    st.policy = policy.parse(doc)
    return st, Pipeline(desired.compile_network(st)[HV1])


@pytest.mark.parametrize("src", ["fe80::200:ff:fe00:99", "ff02::1", "::", "::1",
                                 "::ffff:10.0.0.1"])
def test_found_by_review_impossible_ipv6_sources_from_outside_never_reach_a_vm(src):
    """With a rule letting any IPv6 source in (::/0), an outside packet from a link-local,
    multicast, unspecified, loopback or IPv4-mapped source is dropped on the uplink; a
    global one passes (the control)."""
    st, hv1 = _with_rule({"name": "in-any6", "from": "::/0", "to": "web", "protocol": "tcp",
                         "ports": "80", "action": "allow"})
    assert hv1.ports(_in6(st, "w1", src="2001:db8:99::7")) == [3]
    assert hv1.ports(_in6(st, "w1", src=src)) == []


@pytest.mark.parametrize("src", ["0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.5",
                                 "255.255.255.255"])
def test_impossible_ipv4_sources_from_outside_never_reach_a_vm(src):
    st, hv1 = _with_rule({"name": "in-any", "from": "0.0.0.0/0", "to": "web",
                         "protocol": "tcp", "ports": "80", "action": "allow"})
    assert hv1.ports(_in(st, "w1", src="203.0.113.9")) == [3]
    assert hv1.ports(_in(st, "w1", src=src)) == []


def test_found_by_review_a_link_local_source_is_never_routed_even_across_hosts():
    """A VM may send from its link-local address, but a router never forwards that: not
    on its host, not to another (w1 on hv1 -> d1 on hv2), not out of the uplink."""
    st, hv1 = _with_rule({"name": "web-db6", "from": "web", "to": "db", "action": "allow"})
    east = dict(_out6(st, "w1", dst=IP6["d1"]), ipv6_src=IP6["w1"])
    fabric = {lk.src.port_no for lk in st.links if lk.src.dpid == HV1}
    assert [p for p, _ in hv1.run(east)][0] in fabric  # the control: routed on to hv2
    for bad in ({"ipv6_src": "fe80::200:ff:fe00:1"}, {"ipv6_dst": "ff02::1"},
                {"ipv6_dst": "fe80::1"}, {"ipv6_dst": "::1"}):
        assert hv1.run({**east, **bad}) == [], bad
        assert hv1.run({**_out6(st, "w1"), **bad}) == [], bad



@pytest.mark.parametrize("dst", ["239.1.1.1", "255.255.255.255", "169.254.1.1",
                                 "127.0.0.1", "0.0.0.1"])
def test_found_by_review_ipv4_to_impossible_destinations_never_leaves(dst):
    """IPv4 as IPv6 (and as RFC 1812 says): a router does not forward to multicast,
    broadcast, link-local, loopback or this-network addresses; a global one leaves (the
    control)."""
    st, hv1 = _with_rule({"name": "web-out-any", "from": "web", "to": "0.0.0.0/0",
                         "protocol": "tcp", "ports": "443", "action": "allow"})
    assert hv1.ports(_out(st, "w1", dst="203.0.113.9")) == [UPLINK]
    assert hv1.ports(_out(st, "w1", dst=dst)) == []
