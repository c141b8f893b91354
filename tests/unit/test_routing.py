"""Layer 3 in the datapath: every host's switch routes what its VMs send to a router's
MAC, once, at the source host, then delivers it like switched traffic under the same
policy. Concrete packets walked through tests/unit/pipeline.py across three hosts (the
prod lab checks the same on real Open vSwitch)."""

from __future__ import annotations

import pytest

from vfence.controller import addresses, desired, policy, verify
from vfence.controller.flows import OFPP_CONTROLLER, Flow, Owner, cookie, match
from vfence.controller.model import VM, Binding, PortRef
from vfence.controller.pipeline import ROUTER_ZONE_BASE, Table

from .netfixtures import HV1, HV2, HV3, leaf_spine
from .pipeline import Pipeline

R1 = addresses.router_mac("r1")
LABEL = {HV1: 1, HV2: 2, HV3: 3}
EST, NEW = 0x22, 0x21
DOC = {
    "segments": [{"name": "web", "subnet": "10.10.1.0/24", "gateway": "10.10.1.1"},
                 {"name": "db", "subnet": "10.10.2.0/24", "gateway": "10.10.2.1"},
                 {"name": "lab", "subnet": "10.20.0.0/24"}],
    "routers": [{"name": "r1", "segments": ["web", "db"]}],
    "groups": [{"name": "web"}, {"name": "db"}, {"name": "lab"}, {"name": "front"},
               {"name": "payroll"}],
    "rules": [{"name": "web-db", "from": "web", "to": "db", "protocol": "tcp",
               "ports": "5432", "action": "allow"},
              {"name": "icmp", "from": "web", "to": "db", "protocol": "icmp",
               "action": "allow"},
              {"name": "lab-any", "from": "lab", "to": "any", "action": "allow"}],
    "isolation": [["front", "payroll"]],
    "defaults": {"inter_group": "deny"},
}
# name: (segment, tag, ip, host, port, groups)
PLACES = {"w1": ("web", 1, "10.10.1.11", HV1, 3, ("web",)),
          "d1": ("db", 2, "10.10.2.11", HV2, 3, ("db",)),
          "d2": ("db", 2, "10.10.2.12", HV1, 4, ("db",)),
          "f1": ("web", 1, "10.10.1.21", HV1, 5, ("web", "front")),
          "p1": ("db", 2, "10.10.2.21", HV1, 6, ("db", "payroll")),
          "p2": ("db", 2, "10.10.2.22", HV3, 4, ("db", "payroll")),
          "l1": ("lab", 3, "10.20.0.11", HV3, 3, ("lab",))}


def _network():
    st = leaf_spine(3, 2)
    st.policy = policy.parse(DOC)
    st.router_numbers = {"r1": 0}
    st.group_bits = {g: i for i, g in enumerate(st.policy.groups)}
    st.segment_tags = {"web": 1, "db": 2, "lab": 3}
    for i, (n, (seg, tag, ip, dpid, port, groups)) in enumerate(PLACES.items(), start=1):
        st.vms[n] = VM(i, n, f"00:00:00:00:00:{i:02x}", (ip,), tag, seg, groups)
        st.bindings[n] = Binding(n, PortRef(dpid, port))
    return st


@pytest.fixture(scope="module")
def net():
    st = _network()
    flows = desired.compile_network(st)
    return st, flows


def _hv(flows, d):
    return Pipeline(flows[d])


def _pkt(st, src, dst, port=5432, ttl=64, to_router=True, proto=6):
    s, d = st.vms[src], st.vms[dst]
    return {"in_port": PLACES[src][4], "eth_src": s.mac,
            "eth_dst": R1 if to_router else d.mac, "eth_type": 0x0800, "ip_proto": proto,
            "ipv4_src": s.ips[0], "ipv4_dst": d.ips[0], "nw_ttl": ttl,
            **({"tcp_dst": port} if proto == 6 else {"icmpv4_type": 8})}


def _arrive(frame):
    """A labelled frame as the host it is labelled for receives it from its spine."""
    keep = ("eth_src", "eth_dst", "eth_type", "ipv4_src", "ipv4_dst", "ip_proto", "tcp_dst",
            "icmpv4_type", "nw_ttl", "vlan_vid", "vlan_pcp")
    return {k: frame[k] for k in keep if k in frame} | {"in_port": 1}


def _labelled(out, label):
    return [f for port, f in out if port in (1, 2) and f["vlan_vid"] == 0x1000 | label]


def test_a_routed_packet_is_routed_once_at_the_source_host_and_delivered(net):
    st, flows = net
    hv1, hv2 = _hv(flows, HV1), _hv(flows, HV2)
    out = hv1.run(_pkt(st, "w1", "d1"))
    (frame,) = _labelled(out, LABEL[HV2])
    assert len(out) == 1  # one copy, toward d1's host only
    assert (frame["eth_src"], frame["eth_dst"]) == (R1, st.vms["d1"].mac)
    assert frame["nw_ttl"] == 63 and frame["ipv4_dst"] == "10.10.2.11"
    assert Table.ROUTE in [f.table for f in hv1.trace]  # routed here, at the source
    ((port, got),) = hv2.run(_arrive(frame))
    assert port == 3 and got["nw_ttl"] == 63 and got["eth_src"] == R1
    assert Table.ROUTE not in [f.table for f in hv2.trace]  # never routed twice
    # on one host: w1 -> d2 straight to d2's port, TTL one less
    ((port, got),) = hv1.run(_pkt(st, "w1", "d2"))
    assert port == 4 and got["nw_ttl"] == 63 and got["eth_dst"] == st.vms["d2"].mac


def test_policy_judges_routed_traffic_statefully(net):
    st, flows = net
    hv1, hv2 = _hv(flows, HV1), _hv(flows, HV2)
    assert _labelled(hv1.run(_pkt(st, "w1", "d1", 5432)), LABEL[HV2])  # control: allowed
    assert hv1.run(_pkt(st, "w1", "d1", 22)) == []  # no rule allows tcp/22
    back = _pkt(st, "d1", "w1", 5432)
    (reply,) = _labelled(hv2.run(back, ct_state=EST), LABEL[HV1])  # a reply passes
    assert hv1.ports(_arrive(reply), ct_state=EST) == [3]
    assert hv2.run(back, ct_state=NEW) == []  # unsolicited reverse traffic: dropped


def test_an_isolation_pair_holds_across_segments_on_a_shared_host_and_across_hosts(net):
    st, flows = net
    hv1 = _hv(flows, HV1)
    assert hv1.ports(_pkt(st, "w1", "p1")) == [6]  # control: web may reach db on 5432
    assert hv1.run(_pkt(st, "f1", "p1")) == []  # front -> payroll on one host
    assert hv1.run(_pkt(st, "f1", "p2")) == []  # and across hosts
    assert hv1.run(_pkt(st, "f1", "d1")) != []  # control: f1 may route to db


def test_a_segment_no_router_joins_exchanges_nothing(net):
    st, flows = net
    hv3 = _hv(flows, HV3)
    lab = _pkt(st, "l1", "p2", proto=1)
    assert hv3.run(lab) == []  # the lab VM to the router's MAC: no way into ROUTE
    hv1 = _hv(flows, HV1)
    to_lab = dict(_pkt(st, "w1", "d1", proto=1), ipv4_dst="10.20.0.11")
    assert hv1.run(to_lab) == []  # outside every subnet the router joins
    assert hv1.run(_pkt(st, "w1", "d1", proto=1)) != []  # control


def test_an_unused_routed_address_is_dropped_and_counted_by_its_own_flow(net):
    st, flows = net
    hv1 = _hv(flows, HV1)
    assert hv1.run(dict(_pkt(st, "w1", "d1"), ipv4_dst="10.10.2.99")) == []
    last = hv1.trace[-1]
    assert (last.table, last.cookie) == (Table.ROUTE, cookie(Owner.ROUTER, 0))
    assert not last.instructions  # a drop: its packet counter is the count
    assert hv1.run(_pkt(st, "w1", "d1")) != []  # control


def test_an_expiring_ttl_goes_to_the_controller_not_on(net):
    st, flows = net
    hv1 = _hv(flows, HV1)
    for ttl in (1, 0):
        out = hv1.run(_pkt(st, "w1", "d1", ttl=ttl))
        assert [p for p, _ in out] == [OFPP_CONTROLLER], ttl
        assert hv1.trace[-1].instructions[0] == ("meter", 6)  # the ttl meter
    (got,) = _labelled(hv1.run(_pkt(st, "w1", "d1", ttl=2)), LABEL[HV2])
    assert got["nw_ttl"] == 1  # control: TTL 2 is routed with 1 left
    # only for the router's own subnets: TTL 1 toward anywhere else is dropped here,
    # and IPv6 (no ICMPv6 answer yet) too, never punted
    assert hv1.run(dict(_pkt(st, "w1", "d1", ttl=1), ipv4_dst="192.0.2.1")) == []
    v6 = {"in_port": 3, "eth_src": st.vms["w1"].mac, "eth_dst": R1, "eth_type": 0x86DD,
          "ipv6_src": "fe80::200:ff:fe00:1", "ipv6_dst": "fd00::1", "ip_proto": 17,
          "nw_ttl": 1}
    assert hv1.run(v6) == []


def test_routed_segments_share_one_conntrack_zone_and_plain_ones_keep_their_own(net):
    st, flows = net
    zones = {}
    for f in flows[HV1]:
        if f.table == Table.CLASSIFY and f.cookie >> 56 == 0xA0 | Owner.VM:
            for ins in f.instructions:
                for a in ins[1] if ins[0] == "apply" else ():
                    if a[:2] == ("set", "reg5"):
                        zones[f.cookie & 0xFFFF] = a[2]
    assert {zones[st.vms[n].id] for n in ("w1", "d2", "f1", "p1")} == {ROUTER_ZONE_BASE}
    zones3 = {a[2] for f in flows[HV3] if f.table == Table.CLASSIFY
              and f.cookie == cookie(Owner.VM, st.vms["l1"].id)
              for ins in f.instructions if ins[0] == "apply" for a in ins[1]
              if a[:2] == ("set", "reg5")}
    assert zones3 == {3}


def test_a_routed_vm_is_known_where_any_segment_of_its_router_is(net):
    """hv3 has only p2 (db) and l1 (lab): it can still route to web's VMs."""
    st, flows = net
    hv3 = _hv(flows, HV3)
    back = {"in_port": 4, "eth_src": st.vms["p2"].mac, "eth_dst": R1, "eth_type": 0x0800,
            "ip_proto": 6, "ipv4_src": "10.10.2.22", "ipv4_dst": "10.10.1.11", "tcp_dst": 80,
            "nw_ttl": 64}
    (frame,) = _labelled(hv3.run(back, ct_state=EST), LABEL[HV1])
    assert frame["eth_dst"] == st.vms["w1"].mac
    # and the routed frame is recognised on arrival by the router's MAC and p2's address
    hv1 = _hv(flows, HV1)
    assert hv1.ports(_arrive(frame), ct_state=EST) == [3]


def test_verify_proves_isolation_across_routed_paths_and_names_the_route_step(net):
    st, flows = net
    lists = {d: list(f) for d, f in flows.items()}
    ports = {d: {1, 2, 3, 4, 5, 6} for d in (HV1, HV2, HV3)}
    ports.update({0x201: {1, 2, 3}, 0x202: {1, 2, 3}})
    (v,) = verify.verify(st, lists, ports)
    assert v.isolated, (v.status, v.reason, v.witness)
    hole = Flow(Table.POLICY, 65501, match(in_port=5), (("goto", Table.FORWARD),), 0x1234)
    (v,) = verify.verify(st, {**lists, HV1: [*lists[HV1], hole]}, ports)
    assert v.status == "broken"
    text = "\n".join(v.witness)
    assert "table 16 (route)" in text and "delivered to p" in text, text


def test_a_routed_stream_follows_a_migrating_destination(net):
    """d1 moves hv2 -> hv3: its first frame from the standby port switches hv2 over, and
    what hv1 routes to it (still labelled for hv2) goes on to hv3, to the standby port."""
    st = _network()
    st.standby["d1"] = Binding("d1", PortRef(HV3, 9), "d1-new")
    flows = desired.compile_network(st)
    hv = {d: Pipeline(flows[d]) for d in (HV1, HV2, HV3)}
    rarp = {"in_port": 9, "eth_src": st.vms["d1"].mac, "eth_dst": "ff:ff:ff:ff:ff:ff",
            "eth_type": 0x8035}
    (copy,) = _labelled(hv[HV3].run(rarp), LABEL[HV2])
    hv[HV2].run(_arrive(copy))
    assert hv[HV2].learned
    (frame,) = _labelled(hv[HV1].run(_pkt(st, "w1", "d1")), LABEL[HV2])
    (onward,) = _labelled(hv[HV2].run(_arrive(frame)), LABEL[HV3])
    assert hv[HV3].ports(_arrive(onward)) == [9]


def test_an_expired_ttl_is_answered_from_the_senders_gateway(net):
    """The controller's answer: ICMP time exceeded from the gateway of the sender's own
    segment, at the router's MAC, quoting the expired datagram (traceroute matches its
    probe by the quoted ports); nothing for a port no routed VM sends on, nor for an
    ICMP error (never an error about an error)."""
    from scapy.layers.inet import ICMP, IP, UDP, IPerror, UDPerror
    from scapy.layers.l2 import Ether

    from vfence.apps.router_answers import time_exceeded
    from vfence.controller.routing import answering_gateway

    st, _ = net
    w1 = st.vms["w1"]
    assert answering_gateway(st, HV1, 3) == (R1, "10.10.1.1")
    assert answering_gateway(st, HV3, 3) is None  # l1: lab has no router
    assert answering_gateway(st, HV1, 99) is None
    probe = bytes(Ether(src=w1.mac, dst=R1) / IP(src=w1.ips[0], dst="10.10.2.11", ttl=1)
                  / UDP(sport=40000, dport=33434) / b"probe")
    got = Ether(time_exceeded(probe, R1, "10.10.1.1"))
    assert (got.src, got.dst) == (R1, w1.mac)
    assert (got[IP].src, got[IP].dst, got[ICMP].type, got[ICMP].code) == (
        "10.10.1.1", w1.ips[0], 11, 0)
    assert got[IPerror].dst == "10.10.2.11" and got[UDPerror].dport == 33434
    fresh = got[ICMP].copy()
    del fresh.chksum  # scapy computes it again: the answer's checksum is right
    assert ICMP(bytes(fresh)).chksum == got[ICMP].chksum
    unreachable = bytes(Ether(src=w1.mac, dst=R1) / IP(src=w1.ips[0], dst="10.10.2.11",
                                                       ttl=1) / ICMP(type=3) / (b"x" * 8))
    assert time_exceeded(unreachable, R1, "10.10.1.1") is None


def test_a_routers_zone_stays_when_its_segments_get_tags_or_change():
    """The zone is the router's own: a segment joining with a lower tag, or the first VM
    of a routed segment arriving, moves no live connection to another zone."""
    from vfence.controller import routing

    st = _network()
    assert routing.zone(st, 1) == routing.zone(st, 2) == ROUTER_ZONE_BASE
    assert routing.zone(st, 3) == 3  # lab: its own tag
    doc = dict(DOC, segments=[*DOC["segments"], {"name": "app", "subnet": "10.10.3.0/24",
                                                 "gateway": "10.10.3.1"}],
               routers=[{"name": "r1", "segments": ["web", "db", "app"]}])
    st.policy = policy.parse(doc)
    st.segment_tags = {"app": 0, "web": 1, "db": 2, "lab": 3} | {"app": 4}
    assert routing.zone(st, 4) == routing.zone(st, 1) == ROUTER_ZONE_BASE


def test_a_ping_to_any_gateway_of_the_router_is_answered_in_the_datapath(net):
    """An echo request to the segment's own gateway, or to another gateway of its router,
    comes back out of its port as the reply, from that gateway at the router's MAC; a
    segment no router joins gets nothing; the same over IPv6 to gateway6."""
    from .test_pipeline_declared import routed

    st, flows = net
    hv1 = _hv(flows, HV1)
    w1 = st.vms["w1"]
    echo = dict(_pkt(st, "w1", "d2", proto=1), ipv4_dst="10.10.1.1", icmpv4_type=8,
                icmpv4_code=0)
    for gw in ("10.10.1.1", "10.10.2.1"):
        ((port, reply),) = hv1.run(dict(echo, ipv4_dst=gw))
        assert port == 3 and (reply["eth_src"], reply["eth_dst"]) == (R1, w1.mac)
        assert (reply["ipv4_src"], reply["ipv4_dst"], reply["icmpv4_type"]) == (
            gw, w1.ips[0], 0)
    assert hv1.run(dict(echo, ipv4_dst="10.10.2.2")) == []  # an unused address: dropped
    st6 = routed()
    d1 = st6.vms["d1"]
    hv2 = Pipeline(desired.compile_network(st6)[HV2])
    echo6 = {"in_port": 3, "eth_src": d1.mac, "eth_dst": R1, "eth_type": 0x86DD,
             "ipv6_src": "fe80::200:ff:fe00:2", "ipv6_dst": "fd00:10:2::1", "ip_proto": 58,
             "icmpv6_type": 128, "icmpv6_code": 0, "nw_ttl": 64}
    ((port, reply),) = hv2.run(echo6)
    assert port == 3 and (reply["ipv6_src"], reply["ipv6_dst"], reply["icmpv6_type"]) == (
        "fd00:10:2::1", "fe80::200:ff:fe00:2", 129)


def test_a_routers_zone_and_cookies_are_its_registry_number_not_its_place():
    """Another router listed before it, or removed, moves nothing of r1's; a router the
    registry has not numbered yet routes nothing."""
    from vfence.controller import routing
    from vfence.controller.flows import Owner, cookie

    st = _network()
    st.router_numbers = {"r1": 7}
    before = {f for fl in desired.compile_network(st).values() for f in fl
              if f.cookie == cookie(Owner.ROUTER, 7)}
    assert before and routing.zone(st, 1) == ROUTER_ZONE_BASE + 7
    lab = {"name": "lab", "subnet": "10.20.0.0/24", "gateway": "10.20.0.1"}
    st.policy = policy.parse(dict(DOC, segments=[*DOC["segments"][:2], lab],
                                  routers=[{"name": "r0", "segments": ["lab"]},
                                           *DOC["routers"]]))
    st.router_numbers = {"r0": 0, "r1": 7}
    assert routing.zone(st, 1) == ROUTER_ZONE_BASE + 7 and routing.zone(st, 3) == ROUTER_ZONE_BASE
    after = {f for fl in desired.compile_network(st).values() for f in fl
             if f.cookie == cookie(Owner.ROUTER, 7)}
    assert after == before
    st.router_numbers = {"r1": 7}  # r0 not numbered yet: lab stays a closed segment
    assert routing.zone(st, 3) == 3


def test_a_rule_naming_a_vms_mac_holds_for_its_routed_traffic():
    """A router rewrites the source MAC: a rule naming a VM by MAC matches the VM itself
    (its tag), so routing does not step around it."""
    doc = dict(DOC, rules=[{"name": "quarantine", "from": "00:00:00:00:00:01", "to": "any",
                            "action": "deny"}, *DOC["rules"]])
    st = _network()
    st.policy = policy.parse(doc)
    hv1 = Pipeline(desired.compile_network(st)[HV1])
    assert hv1.run(_pkt(st, "w1", "d2")) == []  # w1 (that MAC), routed: denied
    assert hv1.ports(_pkt(st, "f1", "d2")) == [4]  # control: another web VM routes


@pytest.mark.parametrize("change, field, reason", [
    (lambda d: d["vms"].extend([
        {"name": "a", "mac": "00:00:00:00:01:01", "ips": ["fd00:10::1"], "segment": "web"},
        {"name": "b", "mac": "00:00:00:00:01:02", "ips": ["10.10.2.5"], "segment": "db"}]),
     "vms[0].ips[0]", "fd00:10::1: segment 'web' has no subnet6, and router 'r1' joins it"),
    (lambda d: d["rules"].append({"name": "to-router", "from": "any", "to": R1,
                                  "action": "deny"}),
     "rules[3].to", f"{R1} is router 'r1''s MAC: routing rewrites it, name the VMs, groups "
                    "or CIDRs behind it"),
])
def test_what_would_make_a_routers_lookup_ambiguous_is_refused(change, field, reason):
    import copy

    doc = copy.deepcopy(DOC)
    doc["vms"] = []
    change(doc)
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(doc)
    assert (field, reason) in {(x["field"], x["reason"]) for x in e.value.errors}, e.value


def test_the_api_refuses_an_address_a_router_could_not_tell_apart(sqlite_url):
    """POST /v1/vms: an IPv6 address in a routed segment without subnet6 (it could be
    another routed VM's) is a 422 naming the field, and changes nothing; the same in a
    segment no router joins is fine."""
    import copy

    from fastapi.testclient import TestClient

    from vfence.controller.api import create_app

    from .. import LOOPBACK
    from .test_trust import _service

    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    doc = copy.deepcopy(DOC)
    doc["vms"] = []
    assert client.put("/v1/policy", json=doc).status_code == 200
    vm = {"name": "x", "mac": "00:00:00:00:09:09", "ips": ["10.10.1.5", "2001:db8::5"],
          "segment": "web"}
    r = client.post("/v1/vms", json=vm)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "ips[1]", r.text
    assert "has no subnet6, and router 'r1' joins it" in r.text
    assert client.get("/v1/vms").json() == []  # nothing written
    ok = client.post("/v1/vms", json=dict(vm, ips=["10.20.0.5", "2001:db8::5"],
                                          segment="lab"))
    assert ok.status_code == 201, ok.text  # control: no router there


def test_a_solicitation_for_gateway6_is_answered_in_the_datapath():
    """The solicitation comes back out of its port as the router's advertisement; one
    without a source link-layer option (DAD) gets nothing; another segment's gateway6
    is not answered here."""
    from .test_pipeline_declared import routed

    st = routed()
    hv2 = Pipeline(desired.compile_network(st)[0x102])
    d1 = st.vms["d1"]
    from vfence.controller.model import eui64_link_local

    src = eui64_link_local(d1.mac)
    ns = {"in_port": 3, "eth_src": d1.mac, "eth_dst": "33:33:ff:00:00:01", "eth_type": 0x86DD,
          "ip_proto": 58, "ipv6_src": src, "ipv6_dst": "ff02::1:ff00:1", "icmpv6_type": 135,
          "ipv6_nd_target": "fd00:10:2::1", "ipv6_nd_sll": d1.mac}
    ((port, na),) = hv2.run(ns)
    assert port == 3 and (na["eth_src"], na["eth_dst"]) == (R1, d1.mac)
    assert (na["ipv6_src"], na["ipv6_dst"], na["icmpv6_type"]) == ("fd00:10:2::1", src, 136)
    assert (na["nd_reserved"], na["nd_options_type"], na["ipv6_nd_tll"]) == (
        0xE0000000, 2, R1)  # R|S|O, the option now the target's, carrying the router's MAC
    assert hv2.run(dict(ns, ipv6_src="::", ipv6_nd_sll="00:00:00:00:00:00")) == []
    assert hv2.run(dict(ns, ipv6_nd_target="fd00:10:1::1")) == []  # not a gateway here


def test_an_expiring_hop_limit_is_punted_and_answered_from_gateway6():
    """IPv6 to the router's subnet6 with hop limit 1 goes to the controller (ttl meter);
    the answer is ICMPv6 time exceeded from gateway6, quoting the packet."""
    from scapy.layers.inet6 import UDP, ICMPv6TimeExceeded, IPerror6, IPv6
    from scapy.layers.l2 import Ether

    from vfence.apps.router_answers import time_exceeded6
    from vfence.controller.model import eui64_link_local
    from vfence.controller.routing import answering_gateway

    from .test_pipeline_declared import routed

    st = routed()
    d1 = st.vms["d1"]
    hv2 = Pipeline(desired.compile_network(st)[0x102])
    pkt = {"in_port": 3, "eth_src": d1.mac, "eth_dst": R1, "eth_type": 0x86DD,
           "ipv6_src": eui64_link_local(d1.mac), "ipv6_dst": "fd00:10:2::99",
           "ip_proto": 17, "nw_ttl": 1}
    assert [p for p, _ in hv2.run(pkt)] == [OFPP_CONTROLLER]
    assert hv2.trace[-1].instructions[0] == ("meter", 6)
    assert hv2.run(dict(pkt, ipv6_dst="fd00:99::1")) == []  # not the router's: dropped
    assert answering_gateway(st, 0x102, 3, 6) == (R1, "fd00:10:2::1")
    probe = bytes(Ether(src=d1.mac, dst=R1) / IPv6(src="fd00:10:2::5", dst="fd00:10:2::99",
                                                   hlim=1) / UDP(dport=33434) / b"probe")
    got = Ether(time_exceeded6(probe, R1, "fd00:10:2::1"))
    assert (got.src, got.dst, got[IPv6].src, got[IPv6].dst) == (
        R1, d1.mac, "fd00:10:2::1", "fd00:10:2::5")
    assert got.haslayer(ICMPv6TimeExceeded) and got[IPerror6].dst == "fd00:10:2::99"
    fresh = got[IPv6].copy()
    del fresh[ICMPv6TimeExceeded].cksum
    assert IPv6(bytes(fresh))[ICMPv6TimeExceeded].cksum == got[ICMPv6TimeExceeded].cksum
    assert time_exceeded6(bytes(got), R1, "fd00:10:2::1") is None  # never about an error
