"""DHCPv4 for registered VMs: the datapath sends a VM's DHCP (from 0.0.0.0 too) to the
controller, metered, never to other VMs; the controller answers with the VM's own lease
(address, prefix, gateway, resolvers, domain, MTU, lease time) looked up by port and MAC;
rogue server replies from VMs stay dropped. Messages built and read back with scapy."""

from __future__ import annotations

import copy

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vfence.apps import dhcp_server
from vfence.controller import desired, dhcp, policy
from vfence.controller.flows import OFPP_CONTROLLER

from .netfixtures import HV1, HV3
from .pipeline import Pipeline
from .test_routing import DOC, R1, _network

BCAST = "ff:ff:ff:ff:ff:ff"


def _client(mac: str, kind: str, requested: str | None = None, ciaddr: str = "0.0.0.0",
            chaddr: str | None = None, src: str = "0.0.0.0", dst: str = "255.255.255.255"
            ) -> bytes:
    opts = [("message-type", kind)] + ([("requested_addr", requested)] if requested else [])
    return bytes(Ether(src=mac, dst=BCAST if dst.endswith("255") else R1)
                 / IP(src=src, dst=dst) / UDP(sport=68, dport=67)
                 / BOOTP(op=1, chaddr=bytes.fromhex((chaddr or mac).replace(":", "")),
                         xid=0x1234, ciaddr=ciaddr)
                 / DHCP(options=[*opts, "end"]))


def _options(frame: bytes) -> dict:
    return {o[0]: (o[1] if len(o) == 2 else o[1:]) for o in Ether(frame)[DHCP].options
            if isinstance(o, tuple)}


@pytest.fixture(scope="module")
def net():
    doc = copy.deepcopy(DOC)
    doc["segments"][1].update(dns_servers=["10.10.2.53", "10.0.0.53"], domain="db.example.",
                              mtu=1400, lease_time=600)
    st = _network()
    st.policy = policy.parse(doc)
    return st


def test_a_vm_gets_its_own_lease_and_nobody_else_does(net):
    st = net
    d1 = st.vms["d1"]
    lease = dhcp.lease_for(st, 0x102, 3, d1.mac)
    assert lease == dhcp.Lease("10.10.2.11", "255.255.255.0", "10.10.2.1", R1, "10.10.2.1",
                               ("10.10.2.53", "10.0.0.53"), "db.example", 1400, 600)
    assert dhcp.lease_for(st, 0x102, 3, st.vms["w1"].mac) is None  # not the MAC bound there
    assert dhcp.lease_for(st, HV1, 3, d1.mac) is None  # not d1's port
    assert dhcp.lease_for(st, HV3, 3, st.vms["l1"].mac) is None  # lab: no gateway


def test_discover_offer_request_ack_and_a_nak_for_another_address(net):
    st = net
    d1 = st.vms["d1"]
    lease = dhcp.lease_for(st, 0x102, 3, d1.mac)
    offer = dhcp_server.answer(dhcp_server.parse(_client(d1.mac, "discover")), lease)
    got = Ether(offer)
    assert got[BOOTP].yiaddr == "10.10.2.11" and got[BOOTP].xid == 0x1234
    assert (got.src, got.dst, got[IP].src, got[IP].dst) == (R1, d1.mac, "10.10.2.1",
                                                            "10.10.2.11")
    assert (got[UDP].sport, got[UDP].dport) == (67, 68)
    opts = _options(offer)
    assert opts["message-type"] == 2 and opts["server_id"] == "10.10.2.1"
    assert opts["subnet_mask"] == "255.255.255.0" and opts["router"] == "10.10.2.1"
    assert opts["name_server"] == ("10.10.2.53", "10.0.0.53")
    assert opts["domain"] == b"db.example" and opts["interface-mtu"] == 1400
    assert (opts["lease_time"], opts["renewal_time"]) == (600, 300)
    ack = dhcp_server.answer(dhcp_server.parse(_client(d1.mac, "request", "10.10.2.11")),
                             lease)
    assert _options(ack)["message-type"] == 5 and Ether(ack)[BOOTP].yiaddr == "10.10.2.11"
    renew = _client(d1.mac, "request", ciaddr="10.10.2.11", src="10.10.2.11",
                    dst="10.10.2.1")
    ack = Ether(dhcp_server.answer(dhcp_server.parse(renew), lease))
    assert ack[DHCP].options[0] == ("message-type", 5) and ack[IP].dst == "10.10.2.11"
    nak = dhcp_server.answer(dhcp_server.parse(_client(d1.mac, "request", "10.10.2.12")),
                             lease)
    assert _options(nak)["message-type"] == 6 and Ether(nak)[BOOTP].yiaddr == "0.0.0.0"
    assert Ether(nak).dst == BCAST
    assert dhcp_server.answer(dhcp_server.parse(_client(d1.mac, "release")), lease) is None


def test_a_client_asking_for_another_macs_lease_or_a_reply_is_not_a_request(net):
    st = net
    d1, w1 = st.vms["d1"], st.vms["w1"]
    assert dhcp_server.parse(_client(d1.mac, "discover", chaddr=w1.mac)) is None
    assert dhcp_server.parse(_client(d1.mac, "discover")) is not None  # control
    assert dhcp_server.parse(b"\x00" * 60) is None


def test_the_datapath_sends_dhcp_to_the_controller_alone_and_drops_rogue_servers(net):
    st = net
    d1 = st.vms["d1"]
    hv2 = Pipeline(desired.compile_network(st)[0x102])
    discover = {"in_port": 3, "eth_src": d1.mac, "eth_dst": BCAST, "eth_type": 0x0800,
                "ipv4_src": "0.0.0.0", "ipv4_dst": "255.255.255.255", "ip_proto": 17,
                "udp_src": 68, "udp_dst": 67}
    assert hv2.ports(discover) == [OFPP_CONTROLLER]  # to the controller, to nobody else
    assert hv2.trace[-1].instructions[0] == ("meter", 5)
    assert hv2.run(dict(discover, eth_src="00:00:00:00:99:99")) == []  # a foreign MAC
    rogue = dict(discover, ipv4_src="10.10.2.11", udp_src=67, udp_dst=68)
    assert hv2.run(rogue) == []  # a VM answering as a DHCP server: dropped


@pytest.mark.parametrize("change, field", [
    (lambda s: s.update(dns_servers=["10.0.0.53/24"]), "segments[1].dns_servers[0]"),
    (lambda s: s.update(dns_servers=["resolver"]), "segments[1].dns_servers[0]"),
    (lambda s: s.update(domain="bad domain"), "segments[1].domain"),
    (lambda s: s.update(lease_time=5), "segments[1].lease_time"),
    (lambda s: s.update(mtu=100), "segments[1].mtu"),
])
def test_bad_dhcp_settings_are_refused_naming_the_field(change, field):
    doc = copy.deepcopy(DOC)
    change(doc["segments"][1])
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(doc)
    assert field in {x["field"] for x in e.value.errors}, e.value.errors
