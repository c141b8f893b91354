"""The attack suite: what a hostile VM sends, on the production-shaped lab.

Every attack counts only the frames it sent (a marker in the payload), and sits next to
a positive control in the same test (the legitimate frame does arrive), so neither a
chatty host nor a dead lab decides the result. The numbers each test sees are written
to ``attack-results.txt`` in the lab's work directory (the closing note's table).
"""

from __future__ import annotations

import re
import time
import uuid

import httpx
import pytest

from vfence.controller.model import eui64_link_local

from ..conftest import ATTACKS, Capture, probe
from .conftest import IP, IP6, MAC, nic

RESULTS: list[str] = []


def marker() -> str:
    return "vf" + uuid.uuid4().hex[:12]


def marked(frames, mark: str) -> int:
    return sum(1 for f in frames if mark.encode() in bytes(f))


def cap(lab, vm: str, tmp_path, tag: str = "") -> Capture:
    return Capture(lab.host(vm), nic(lab, vm), tmp_path / f"{vm}{tag}.pcap")


def send(lab, vm: str, mark: str, kind: str, *args: str) -> None:
    import sys
    out = lab.host(vm).cmd(f"{sys.executable} {ATTACKS} {nic(lab, vm)} {mark} {kind} "
                           f"{' '.join(args)}; echo rc=$?")
    assert "rc=0" in out, out


def record(lab, attack: str, sent: int, delivered: int, control: int) -> None:
    RESULTS.append(f"{attack}\t{sent}\t{delivered}\t{control}")
    (lab.workdir / "attack-results.txt").write_text(
        "attack\tsent\tdelivered\tcontrol delivered\n" + "\n".join(RESULTS) + "\n")


def udp(vm: str, dst_mac: str, dst_ip: str, port: int = 9999) -> tuple[str, ...]:
    return (MAC[vm], IP[vm], dst_mac, dst_ip, str(port))


def links(lab) -> int:
    return lab.get("/v1/health")["links"]


# --- the fabric ---------------------------------------------------------------------------


def test_a_vm_cannot_become_a_fabric_port(lab, tmp_path):
    """No probe ever reaches a VM; forged LLDP, and a VM bridging two of its ports
    (a relay), make no link; frames posing as a registered VM still go nowhere."""
    hv1 = lab.switch("hv1")
    relay = lab.net.addHost("relay")
    for _ in range(2):
        link = lab.net.addLink(relay, hv1)
        hv1.attach(link.intf2)
    relay.cmd("ip link add br0 type bridge && ip link set relay-eth0 master br0 && "
              "ip link set relay-eth1 master br0 && ip link set relay-eth0 up && "
              "ip link set relay-eth1 up && ip link set br0 up")
    fabric = Capture(hv1, "fab-sp1", tmp_path / "fabric.pcap")  # control: probes flow there
    rogue = cap(lab, "rogue", tmp_path)
    mark = marker()
    send(lab, "rogue", mark, "lldp", MAC["rogue"])
    time.sleep(6)  # longer than one LLDP round
    probes_on_fabric = sum(1 for f in fabric.stop() if f.type == 0x88CC)
    probes_at_vm = sum(1 for f in rogue.stop(settle=0) if f.type == 0x88CC
                       and mark.encode() not in bytes(f))
    assert probes_on_fabric >= 1
    assert probes_at_vm == 0
    assert links(lab) == 6  # 3 hypervisors x 2 fabric switches, nothing more
    # the rogue, posing as app-2 (registered, on hv1), toward app-1 on its own host
    victim = cap(lab, "app-1", tmp_path)
    send(lab, "rogue", mark, "macspoof", MAC["app-2"], MAC["app-1"], IP["app-1"])
    good = marker()
    send(lab, "guest-1", good, "udp", *udp("guest-1", MAC["app-1"], IP["app-1"]))
    victim.wait(lambda fs: marked(fs, good) >= 1)
    frames = victim.stop()
    assert marked(frames, good) >= 1
    assert marked(frames, mark) == 0
    record(lab, "LLDP forgery + relay VM, then posing as a registered VM", 10, 0,
           marked(frames, good))
    lab.net.delHost(relay)


# --- deny means deny ------------------------------------------------------------------------


@pytest.mark.parametrize("dst_mac", ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:fb",
                                     "02:00:00:00:99:99"],
                         ids=["broadcast", "multicast", "unknown-unicast"])
def test_a_deny_rule_holds_whatever_the_destination_mac(lab, tmp_path, dst_mac):
    """guest -> db is denied, guest -> anyone else allowed: a frame to any MAC that
    carries db's IP reaches neither db (same host, other host) but does reach app."""
    caps = {vm: cap(lab, vm, tmp_path) for vm in ("db-1", "db-2", "app-1", "app-2")}
    mark = marker()
    send(lab, "guest-1", mark, "udp", *udp("guest-1", dst_mac, IP["db-1"]))
    good = marker()
    send(lab, "guest-1", good, "udp", *udp("guest-1", "ff:ff:ff:ff:ff:ff", "10.20.255.255"))
    for vm in ("app-1", "app-2"):  # the controls; the victims get the same time
        caps[vm].wait(lambda fs: marked(fs, good) >= 1)
    got = {vm: c.stop() for vm, c in caps.items()}
    assert marked(got["app-1"], good) >= 1 and marked(got["app-2"], good) >= 1
    assert marked(got["db-1"], good) == 0 and marked(got["db-2"], good) == 0
    assert marked(got["db-1"], mark) == 0 and marked(got["db-2"], mark) == 0
    record(lab, f"deny guest->db via {dst_mac}", 5, 0, marked(got["app-1"], good))


def test_tagged_frames_go_nowhere(lab, tmp_path):
    victim = cap(lab, "app-1", tmp_path)
    dot1q, qinq, good = marker(), marker(), marker()
    send(lab, "guest-1", dot1q, "vlan", MAC["guest-1"], IP["guest-1"], MAC["app-1"],
         IP["app-1"], "1")
    send(lab, "guest-1", qinq, "vlan", MAC["guest-1"], IP["guest-1"], MAC["app-1"],
         IP["app-1"], "2", "3")
    send(lab, "guest-1", good, "udp", *udp("guest-1", MAC["app-1"], IP["app-1"]))
    victim.wait(lambda fs: marked(fs, good) >= 1)
    frames = victim.stop()
    assert marked(frames, good) >= 1
    assert marked(frames, dot1q) == 0 and marked(frames, qinq) == 0
    record(lab, "802.1Q and QinQ tagged frames", 10, 0, marked(frames, good))


def test_forged_mid_stream_tcp_from_a_denied_group(lab, tmp_path):
    """Conntrack cannot be talked into an 'established' it never saw."""
    victim = cap(lab, "db-1", tmp_path)
    mark = marker()
    send(lab, "guest-1", mark, "tcpmid", *udp("guest-1", MAC["db-1"], IP["db-1"], 5432))
    # control: a real connection from an allowed group reaches the same server
    reached = probe(lab.host("app-1"), [("tcp", IP["db-1"], 5432)])[("tcp", IP["db-1"], 5432)]
    frames = victim.stop()
    assert reached
    assert sum(1 for f in frames if f.haslayer("TCP") and f["TCP"].dport == 5432) >= 1
    assert marked(frames, mark) == 0
    record(lab, "mid-stream TCP (no SYN) from a denied group", 5, 0, 1)


def test_rogue_dhcp_server(lab, tmp_path):
    """Offers from the server port, and from any port to the client port: dropped."""
    victim = cap(lab, "app-1", tmp_path)
    server, sneaky, good = marker(), marker(), marker()
    send(lab, "guest-1", server, "dhcp", MAC["guest-1"], IP["guest-1"], "67")
    send(lab, "guest-1", sneaky, "dhcp", MAC["guest-1"], IP["guest-1"], "6767")
    send(lab, "guest-1", good, "udp", *udp("guest-1", "ff:ff:ff:ff:ff:ff", "10.20.255.255"))
    victim.wait(lambda fs: marked(fs, good) >= 1)
    frames = victim.stop()
    assert marked(frames, good) >= 1
    assert marked(frames, server) == 0 and marked(frames, sneaky) == 0
    record(lab, "rogue DHCP offers (from port 67, and from 6767 to the client port)", 10, 0,
           marked(frames, good))


def test_mac_and_ip_and_arp_spoofing(lab, tmp_path):
    victim = cap(lab, "app-1", tmp_path)
    mac, ip, arp, good = marker(), marker(), marker(), marker()
    send(lab, "guest-1", mac, "macspoof", MAC["app-2"], MAC["app-1"], IP["app-1"])
    send(lab, "guest-1", ip, "ipspoof", MAC["guest-1"], IP["app-2"], MAC["app-1"],
         IP["app-1"], "5432")
    send(lab, "guest-1", arp, "arppoison", MAC["guest-1"], MAC["app-1"], IP["app-1"],
         IP["app-2"])
    send(lab, "guest-1", good, "udp", *udp("guest-1", MAC["app-1"], IP["app-1"]))
    victim.wait(lambda fs: marked(fs, good) >= 1)
    frames = victim.stop()
    assert marked(frames, good) >= 1
    assert (marked(frames, mac), marked(frames, ip), marked(frames, arp)) == (0, 0, 0)
    record(lab, "MAC, IP and ARP spoofing (5 each)", 15, 0, marked(frames, good))


def test_mac_flood_stays_in_the_datapath(lab, tmp_path):
    before = lab.get("/v1/health")["packet_in"]
    victim = cap(lab, "app-1", tmp_path)
    mark, good = marker(), marker()
    send(lab, "guest-1", mark, "macflood", "10000")
    health = lab.get("/v1/health")
    send(lab, "guest-1", good, "udp", *udp("guest-1", MAC["app-1"], IP["app-1"]))
    victim.wait(lambda fs: marked(fs, good) >= 1)
    frames = victim.stop()
    assert health is not None and health["packet_in"] - before < 50
    assert marked(frames, good) >= 1 and marked(frames, mark) == 0
    record(lab, "10,000 random source MACs", 10000, 0, marked(frames, good))


# --- IPv6 -----------------------------------------------------------------------------------


def _ping6(lab, src: str, addr: str, count: int = 3) -> int:
    out = lab.host(src).cmd(f"ping -6 -c {count} -i 0.2 -W 1 {addr}")
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def test_ipv6_between_vms_on_two_hosts_by_link_local_and_global(lab):
    ll = {vm: eui64_link_local(MAC[vm]) for vm in ("app-1", "app-2")}
    # app-1 (hv3) and app-2 (hv1): intra-group, in a segment with deny rules
    for _ in range(3):  # duplicate address detection and the first resolution take a moment
        if _ping6(lab, "app-1", f"{ll['app-2']}%{nic(lab, 'app-1')}", 1):
            break
    assert _ping6(lab, "app-1", f"{ll['app-2']}%{nic(lab, 'app-1')}") == 3
    assert _ping6(lab, "app-2", f"{ll['app-1']}%{nic(lab, 'app-2')}") == 3
    assert _ping6(lab, "app-1", IP6["app-2"]) == 3
    assert _ping6(lab, "app-2", IP6["app-1"]) == 3
    # guest may reach app (its replies come back through conntrack) but not db
    assert _ping6(lab, "guest-1", IP6["app-1"]) == 3
    assert _ping6(lab, "guest-1", IP6["db-2"], count=2) == 0


def test_neighbour_discovery_works_next_to_a_deny_rule(lab):
    """app -> db is allowed for tcp/5432 only: ping6 is denied, but app-1 still learns
    db-2's MAC (both on hv3), because db-2's advertisement reaches it."""
    host = lab.host("app-1")
    host.cmd(f"ip -6 neigh flush dev {nic(lab, 'app-1')}")
    assert _ping6(lab, "app-1", IP6["db-2"], count=2) == 0  # the policy: no ICMP
    neigh = host.cmd(f"ip -6 neigh show {IP6['db-2']} dev {nic(lab, 'app-1')}").lower()
    assert MAC["db-2"] in neigh and "failed" not in neigh, neigh


def test_router_advertisements_and_foreign_neighbour_advertisements(lab, tmp_path):
    ll = {vm: eui64_link_local(MAC[vm]) for vm in ("guest-1", "app-1", "app-2")}
    victims = {vm: cap(lab, vm, tmp_path) for vm in ("app-1", "app-2")}
    ra, na, good = marker(), marker(), marker()
    send(lab, "guest-1", ra, "ra", MAC["guest-1"], ll["guest-1"])
    # guest-1 claims app-1's address toward app-2
    send(lab, "guest-1", na, "na", MAC["guest-1"], ll["guest-1"], MAC["app-2"], ll["app-2"],
         IP6["app-1"])
    # control: an advertisement for its own address gets through (guest may reach app)
    send(lab, "guest-1", good, "na", MAC["guest-1"], ll["guest-1"], MAC["app-2"],
         ll["app-2"], IP6["guest-1"])
    victims["app-2"].wait(lambda fs: marked(fs, good) >= 1)
    got = {vm: c.stop() for vm, c in victims.items()}
    assert marked(got["app-2"], good) >= 1
    assert marked(got["app-1"], ra) == 0 and marked(got["app-2"], ra) == 0
    assert marked(got["app-2"], na) == 0
    routes = lab.host("app-1").cmd("ip -6 route")
    assert "2001:db8:bad" not in routes
    record(lab, "router advertisement", 5, 0, marked(got["app-2"], good))
    record(lab, "neighbour advertisement for another VM's address", 5, 0,
           marked(got["app-2"], good))


# --- moves and inputs -----------------------------------------------------------------------


def test_a_move_cannot_be_stolen(lab, tmp_path):
    """The rogue, on hv3 (a host that learns from first frames), announces app-2's MAC
    the way QEMU does after a migration, while app-2 is up on hv1."""
    rogue = cap(lab, "rogue", tmp_path)
    mark = marker()
    send(lab, "rogue", mark, "rarp", MAC["app-2"])
    time.sleep(1)
    pattern = mark.encode().hex()[:32]
    out = lab.host("app-1").cmd(f"ping -c 10 -i 0.1 -W 1 -p {pattern} {IP['app-2']}")
    frames = rogue.stop()
    received = int(re.search(r"(\d+) received", out).group(1))
    stolen = sum(1 for f in frames if bytes.fromhex(pattern) in bytes(f)
                 and f.dst == MAC["app-2"])
    assert received == 10  # control: every ping reached the real app-2
    assert stolen == 0
    assert lab.get("/v1/vms/app-2/location")["host"]["name"] == "hv1"
    refused = lab.get("/v1/events?type=move-refused&vm=app-2") or []
    assert refused and refused[0]["host"] == "hv3"
    record(lab, "RARP with a registered VM's MAC (move theft)", 5, stolen, received)


def test_first_frame_learning_is_per_host(lab):
    """--learn-first-frame-on hv3: an unannounced VM is learnt there, nowhere else."""
    from vfence.mininet_topos.datacenter import VMPlan

    results = {}
    for name, hv, idx in (("late-2", 2, 0x21), ("late-3", 3, 0x22)):
        p = VMPlan(name, hv, "dmz", f"00:00:00:00:0d:{idx:02x}", f"10.20.0.{idx}", prefix=16)
        host = lab.net.addHost(name)
        link = lab.net.addLink(host, lab.switch(f"hv{hv}"))
        lab.switch(f"hv{hv}").attach(link.intf2)
        host.setIP(f"{p.ip}/16", intf=link.intf1)
        host.setMAC(p.mac, intf=link.intf1)
        r = httpx.post(lab.api + "/v1/vms", json={**p.rest_body(), "groups": ["app"]},
                       timeout=10)
        assert r.status_code == 201, r.text
        host.cmd(f"ping -c 2 -W 1 {IP['app-1']}")
        results[name] = (lab.get(f"/v1/vms/{name}/location") or {}).get("host", {}).get("name")
    assert results == {"late-2": None, "late-3": "hv3"}
    for name in results:
        httpx.delete(lab.api + f"/v1/vms/{name}", timeout=10)
        lab.net.delHost(lab.host(name))


@pytest.mark.parametrize("bad", ["fe80::1%eth0", "ff02::1", "::", "127.0.0.1",
                                 "255.255.255.255", "224.0.0.5", "0.0.0.0"])
def test_addresses_that_cannot_be_a_vm_are_refused(lab, bad):
    body = {"name": "odd", "mac": "00:00:00:00:0d:77", "segment": "dmz", "ips": [bad]}
    r = httpx.post(lab.api + "/v1/vms", json=body, timeout=10)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["body.ips[0]"]
    assert lab.get("/v1/vms/odd") is None
    ok = httpx.post(lab.api + "/v1/vms", json={**body, "ips": ["10.20.0.77"]}, timeout=10)
    assert ok.status_code == 201  # control
    assert httpx.delete(lab.api + "/v1/vms/odd", timeout=10).status_code == 204
