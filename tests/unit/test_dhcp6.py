"""IPv6 address configuration for registered VMs: the router of a routed segment with
subnet6 advertises itself (its link-local address as default router, answered in the
datapath; the prefix on-link, "managed": no autoconfiguration, which port security would
refuse) and DHCPv6 gives a VM its registered addresses, resolvers and domain, looked up
by port and MAC. Messages built and read back with scapy."""

from __future__ import annotations

import copy
import dataclasses

import pytest
from scapy.layers.dhcp6 import (
    DUID_LL,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIAAddress,
    DHCP6OptRapidCommit,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
)
from scapy.layers.inet import UDP
from scapy.layers.inet6 import (
    ICMPv6ND_RA,
    ICMPv6NDOptDNSSL,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptRDNSS,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether

from vfence.apps import dhcp_server, guest_config
from vfence.controller import desired, dhcp, policy
from vfence.controller.flows import OFPP_CONTROLLER
from vfence.controller.model import eui64_link_local

from .netfixtures import HV1, HV2, HV3
from .pipeline import Pipeline
from .test_routing import DOC, R1, _network

R1_LLA = eui64_link_local(R1)
D1_IP6 = "fd00:10:2::11"


@pytest.fixture(scope="module")
def net():
    doc = copy.deepcopy(DOC)
    doc["segments"][1].update(subnet6="fd00:10:2::/64", gateway6="fd00:10:2::1", mtu=1400,
                              dns_servers=["10.10.2.53", "fd00:10:2::53"],
                              domain="db.example.", lease_time=600)
    st = _network()
    st.policy = policy.parse(doc)
    st.vms["d1"] = dataclasses.replace(st.vms["d1"], ips=("10.10.2.11", D1_IP6))
    return st


def _client(mac: str, msg, *opts, server: bytes | None = None) -> bytes:
    body = msg(trid=0x4242) / DHCP6OptClientId(duid=DUID_LL(lladdr=mac))
    if server is not None:
        body /= DHCP6OptServerId(duid=DUID_LL(server))
    for o in opts:
        body /= o
    return bytes(Ether(src=mac, dst="33:33:00:01:00:02")
                 / IPv6(src=eui64_link_local(mac), dst="ff02::1:2")
                 / UDP(sport=546, dport=547) / body)


def _ask(st, mac: str, msg, *opts, server: bytes | None = None, port=(HV2, 3)):
    frame = _client(mac, msg, *opts, server=server)
    reply = guest_config.answer(st, *port, guest_config.DHCP6, frame)
    return None if reply is None else Ether(reply)


def _ia(*addrs: str) -> DHCP6OptIA_NA:
    return DHCP6OptIA_NA(iaid=7, ianaopts=[DHCP6OptIAAddress(addr=a) for a in addrs])


def test_a_vm_gets_its_own_ipv6_lease_and_nobody_else_does(net):
    st = net
    d1 = st.vms["d1"]
    assert dhcp.lease6_for(st, HV2, 3, d1.mac) == dhcp.Lease6(
        (D1_IP6,), R1, R1_LLA, ("fd00:10:2::53",), "db.example", 600)
    assert dhcp.lease6_for(st, HV2, 3, st.vms["w1"].mac) is None  # not the MAC bound there
    assert dhcp.lease6_for(st, HV1, 3, d1.mac) is None  # not d1's port
    assert dhcp.lease6_for(st, HV1, 3, st.vms["w1"].mac) is None  # web: no subnet6
    # the IPv4 lease carries the IPv4 resolvers only
    assert dhcp.lease_for(st, HV2, 3, d1.mac).dns == ("10.10.2.53",)


def test_solicit_advertise_request_reply_with_the_registered_address(net):
    st = net
    d1 = st.vms["d1"]
    adv = _ask(st, d1.mac, DHCP6_Solicit, _ia())
    assert adv.haslayer(DHCP6_Advertise) and adv[DHCP6_Advertise].trid == 0x4242
    assert (adv.src, adv.dst, adv[IPv6].src, adv[IPv6].dst) == (
        R1, d1.mac, R1_LLA, eui64_link_local(d1.mac))
    assert (adv[UDP].sport, adv[UDP].dport) == (547, 546)
    assert adv[DHCP6OptServerId].duid.lladdr == R1
    assert adv[DHCP6OptClientId].duid.lladdr == d1.mac
    ia = adv[DHCP6OptIA_NA]
    assert (ia.iaid, ia.T1, ia.T2) == (7, 300, 480)
    addr = ia[DHCP6OptIAAddress]
    assert (addr.addr, addr.preflft, addr.validlft) == (D1_IP6, 600, 600)
    assert adv[DHCP6OptDNSServers].dnsservers == ["fd00:10:2::53"]
    assert adv[DHCP6OptDNSDomains].dnsdomains == ["db.example."]
    server = bytes(adv[DHCP6OptServerId].duid)
    reply = _ask(st, d1.mac, DHCP6_Request, _ia(), server=server)
    assert reply.haslayer(DHCP6_Reply) and reply[DHCP6OptIAAddress].addr == D1_IP6
    assert _ask(st, d1.mac, DHCP6_Request, _ia(), server=bytes(DUID_LL(
        lladdr="02:00:00:00:00:99"))) is None  # for another server
    # a client's checksum is right: what a guest's kernel accepts
    fresh = reply[IPv6].copy()
    del fresh[UDP].chksum
    assert IPv6(bytes(fresh))[UDP].chksum == reply[UDP].chksum


def test_rapid_commit_renew_rebind_confirm_and_information_request(net):
    st = net
    d1 = st.vms["d1"]
    server = bytes(DUID_LL(lladdr=R1))
    rapid = _ask(st, d1.mac, DHCP6_Solicit, _ia(), DHCP6OptRapidCommit())
    assert rapid.haslayer(DHCP6_Reply) and rapid.haslayer(DHCP6OptRapidCommit)
    renew = _ask(st, d1.mac, DHCP6_Renew, _ia(D1_IP6, "fd00:10:2::77"), server=server)
    got = {a.addr: a.validlft for a in renew[DHCP6OptIA_NA].ianaopts
           if isinstance(a, DHCP6OptIAAddress)}
    assert got == {D1_IP6: 600, "fd00:10:2::77": 0}  # not its own: lifetime 0
    assert _ask(st, d1.mac, DHCP6_Rebind, _ia(D1_IP6))[DHCP6OptIAAddress].addr == D1_IP6
    ok = _ask(st, d1.mac, DHCP6_Confirm, _ia(D1_IP6))
    assert ok[DHCP6OptStatusCode].statuscode == 0
    moved = _ask(st, d1.mac, DHCP6_Confirm, _ia("fd00:99::1"))
    assert moved[DHCP6OptStatusCode].statuscode == 4  # NotOnLink
    info = _ask(st, d1.mac, DHCP6_InfoRequest)
    assert info.haslayer(DHCP6_Reply) and not info.haslayer(DHCP6OptIA_NA)
    assert info[DHCP6OptDNSServers].dnsservers == ["fd00:10:2::53"]
    anonymous = bytes(Ether(src=d1.mac) / IPv6(src=eui64_link_local(d1.mac), dst="ff02::1:2")
                      / UDP(sport=546, dport=547) / DHCP6_InfoRequest(trid=9)
                      / DHCP6OptElapsedTime())
    got = Ether(guest_config.answer(st, HV2, 3, guest_config.DHCP6, anonymous))
    assert got.haslayer(DHCP6_Reply) and not got.haslayer(DHCP6OptClientId)  # none asked
    assert _ask(st, d1.mac, DHCP6_InfoRequest, _ia()) is None  # asks for addresses too
    assert _ask(st, d1.mac, DHCP6_Confirm) is None  # nothing to confirm: silent
    assert _ask(st, d1.mac, DHCP6_Confirm, _ia(D1_IP6), server=server) is None
    assert _ask(st, d1.mac, DHCP6_Solicit, _ia(), server=server) is None  # names a server
    assert _ask(st, d1.mac, DHCP6_Solicit, _ia(), port=(HV1, 4)) is None  # d2's port


def test_the_datapath_sends_dhcpv6_and_solicitations_to_the_controller_alone(net):
    st = net
    d1, l1 = st.vms["d1"], st.vms["l1"]
    flows = desired.compile_network(st)
    hv2, hv3 = Pipeline(flows[HV2]), Pipeline(flows[HV3])
    solicit = {"in_port": 3, "eth_src": d1.mac, "eth_dst": "33:33:00:01:00:02",
               "eth_type": 0x86DD, "ipv6_src": eui64_link_local(d1.mac),
               "ipv6_dst": "ff02::1:2", "ip_proto": 17, "udp_src": 546, "udp_dst": 547}
    assert hv2.ports(solicit) == [OFPP_CONTROLLER]  # to the controller, to nobody else
    assert hv2.trace[-1].instructions[0] == ("meter", 5)
    assert hv2.run(dict(solicit, eth_src="00:00:00:00:99:99")) == []  # a foreign MAC
    rogue = dict(solicit, ipv6_src=D1_IP6, udp_src=547, udp_dst=546)
    assert hv2.run(rogue) == []  # a VM answering as a DHCPv6 server: dropped
    rs = {"in_port": 3, "eth_src": d1.mac, "eth_dst": "33:33:00:00:00:02", "eth_type": 0x86DD,
          "ipv6_src": eui64_link_local(d1.mac), "ipv6_dst": "ff02::2", "ip_proto": 58,
          "icmpv6_type": 133}
    assert hv2.ports(rs) == [OFPP_CONTROLLER]
    assert hv2.trace[-1].instructions[0] == ("meter", 5)
    assert hv2.run(dict(rs, eth_src="00:00:00:00:99:99")) == []
    # lab: no router, but maybe a subnet6: the controller decides (metered all the same)
    assert hv3.ports(dict(rs, in_port=3, eth_src=l1.mac,
                          ipv6_src=eui64_link_local(l1.mac))) == [OFPP_CONTROLLER]


def test_the_router_advertises_itself_managed_with_the_prefix_on_link(net):
    st = net
    d1 = st.vms["d1"]
    rs = bytes(Ether(src=d1.mac, dst="33:33:00:00:00:02")
               / IPv6(src=eui64_link_local(d1.mac), dst="ff02::2")) + bytes(8)
    ra = Ether(guest_config.answer(st, HV2, 3, guest_config.SOLICITATION, rs))
    assert (ra.src, ra.dst, ra[IPv6].src, ra[IPv6].dst, ra[IPv6].hlim) == (
        R1, "33:33:00:00:00:01", R1_LLA, "ff02::1", 255)
    adv = ra[ICMPv6ND_RA]
    assert (adv.M, adv.O, adv.routerlifetime, adv.chlim) == (1, 1, 9000, 64)
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == R1
    pi = ra[ICMPv6NDOptPrefixInfo]
    assert (pi.prefix, pi.prefixlen, pi.L, pi.A) == ("fd00:10:2::", 64, 1, 0)
    assert ra[ICMPv6NDOptMTU].mtu == 1400
    assert ra[ICMPv6NDOptRDNSS].dns == ["fd00:10:2::53"]
    assert ra[ICMPv6NDOptDNSSL].searchlist == ["db.example."]
    fresh = ra[IPv6].copy()
    del fresh[ICMPv6ND_RA].cksum
    assert IPv6(bytes(fresh))[ICMPv6ND_RA].cksum == adv.cksum
    # only to the VM bound on the port, from its MAC; web has no subnet6: nothing
    assert guest_config.answer(st, HV1, 3, guest_config.SOLICITATION, rs) is None
    w1 = st.vms["w1"]
    assert guest_config.answer(st, HV1, 3, guest_config.SOLICITATION,
                               bytes(Ether(src=w1.mac) / IPv6()) + bytes(8)) is None
    # the unsolicited ones: every bound VM of a routed segment with subnet6
    assert sorted((d, p) for d, p, _ in dhcp.adverts(st)) == [(HV1, 4), (HV1, 6), (HV2, 3),
                                                                (HV3, 4)]


def test_many_identity_associations_get_a_small_answer_with_each_address_once(net):
    """A solicitation asking for 90 identity associations (a hostile guest): the first
    four distinct ones are answered, the addresses in the first only."""
    st = net
    d1 = st.vms["d1"]
    many = [DHCP6OptIA_NA(iaid=i) for i in range(90)] + [DHCP6OptIA_NA(iaid=0)]
    adv = _ask(st, d1.mac, DHCP6_Solicit, *many)
    ias = [adv.getlayer(DHCP6OptIA_NA, i) for i in range(1, 10)
           if adv.getlayer(DHCP6OptIA_NA, i) is not None]
    assert [ia.iaid for ia in ias] == [0, 1, 2, 3] and len(bytes(adv)) < 400
    assert [a.addr for a in ias[0].ianaopts if isinstance(a, DHCP6OptIAAddress)] == [D1_IP6]
    assert all(ia[DHCP6OptStatusCode].statuscode == 2 for ia in ias[1:])  # NoAddrsAvail


def test_a_segment_with_subnet6_and_no_router_advertises_no_default_router(net):
    """The DHCP server (the segment's own MAC) advertises the prefix on-link and M/O (so
    guests start DHCPv6) with router lifetime 0: nobody is their default router."""
    st = copy.deepcopy(net)
    doc = copy.deepcopy(st.policy.document)
    doc["segments"][2].update(subnet6="fd00:20::/64", mtu=1000)  # lab, no router; an MTU
    st.policy = policy.parse(doc)  # below IPv6's minimum is not advertised
    l1 = st.vms["l1"]
    rs = bytes(Ether(src=l1.mac, dst="33:33:00:00:00:02")
               / IPv6(src=eui64_link_local(l1.mac), dst="ff02::2")) + bytes(8)
    ra = Ether(guest_config.answer(st, HV3, 3, guest_config.SOLICITATION, rs))
    assert ra[ICMPv6ND_RA].routerlifetime == 0 and ra[ICMPv6ND_RA].M == 1
    assert ra.src != R1 and ra[ICMPv6NDOptPrefixInfo].prefix == "fd00:20::"
    assert not ra.haslayer(ICMPv6NDOptMTU)
    assert dhcp.lease6_for(st, HV3, 3, l1.mac).server_mac == ra.src  # one server


def test_the_routers_link_local_address_is_resolved_in_the_datapath(net):
    st = net
    d1 = st.vms["d1"]
    hv2 = Pipeline(desired.compile_network(st)[HV2])
    src = eui64_link_local(d1.mac)
    ns = {"in_port": 3, "eth_src": d1.mac, "eth_dst": "33:33:ff:00:00:01", "eth_type": 0x86DD,
          "ip_proto": 58, "ipv6_src": src, "ipv6_dst": "ff02::1:ff00:1", "icmpv6_type": 135,
          "ipv6_nd_target": R1_LLA, "ipv6_nd_sll": d1.mac}
    ((port, na),) = hv2.run(ns)
    assert port == 3 and (na["eth_src"], na["ipv6_src"], na["ipv6_nd_tll"]) == (R1, R1_LLA, R1)
    w1 = st.vms["w1"]  # web has no subnet6: its router has no link-local address there
    hv1 = Pipeline(desired.compile_network(st)[HV1])
    assert hv1.run(dict(ns, eth_src=w1.mac, ipv6_src=eui64_link_local(w1.mac),
                        ipv6_nd_sll=w1.mac)) == []


def test_a_malformed_or_relayed_dhcpv6_message_is_not_a_request(net):
    d1 = net.vms["d1"]
    assert dhcp_server.parse6(_client(d1.mac, DHCP6_Solicit)) is not None  # control
    assert dhcp_server.parse6(_client(d1.mac, DHCP6_Solicit)[:70]) is None
    no_client = bytes(Ether(src=d1.mac) / IPv6(src=eui64_link_local(d1.mac), dst="ff02::1:2")
                      / UDP(sport=546, dport=547) / DHCP6_Solicit(trid=1) / _ia())
    assert dhcp_server.parse6(no_client) is None  # no client identifier
