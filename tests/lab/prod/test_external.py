"""North-south on the production-shaped lab: every hypervisor has an uplink into a real
uplink network (mininet_topos/external.py) where FRR routes to an external client; router
r1 (rweb, rdb) reaches it through each host's own uplink, and vfence announces each
routed VM's /32 to FRR by BGP with its host's uplink address as next hop.

Policy over test_routing's: the client's network may reach rweb (anything), rweb may
ping the client; nothing else crosses. Runs after test_routing (which moved rdb-1 and
rpay-2); it moves rweb-1 hv1 -> hv2 last.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from datetime import datetime

import httpx
import pytest

from vfence.controller import dns, policy
from vfence.controller.model import VM, NetworkState
from vfence.mininet_topos import external as ext
from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.named import KEY_NAME
from vfence.mininet_topos.prodlab import migrate

from .conftest import DOC, MAC, ROUTED_VMS, nic
from .test_routing import GATEWAY, GATEWAY6, IP6, bound, delivered, ping, routed_doc

IP = {n: ip for n, _, _, ip, _ in ROUTED_VMS}
HOSTS = (1, 2, 3)
ZONE = "vms.lab.example."
ALLOWED = "198.51.100.0/25"  # the part of the client's network the rules let in
OUTSIDER = "198.51.100.200"  # a second address of the client, outside it
VLAN = 100  # rlab (10.30.9.0/24) is bridged on it, out to a physical host:
LEGACY_IP, LEGACY_OUTSIDER = "10.30.9.200", "10.30.9.50"  # the rules let the first in


def external_doc() -> dict:
    doc = routed_doc()
    doc["routers"][0]["external"] = "dc"
    doc["external"] = [{"name": "dc", "subnet": ext.SUBNET, "gateway": ext.GATEWAY,
                        "subnet6": ext.SUBNET6, "gateway6": ext.GATEWAY6,
                        "bgp": {"local_asn": ext.LOCAL_ASN, "peer": ext.GATEWAY,
                                "peer_asn": ext.ROUTER_ASN}}]
    doc["hosts"] = [{"name": f"hv{h}", "uplink": f"up{h}", "address": ext.host_address(h),
                     "address6": ext.host_address6(h)} for h in HOSTS]
    next(s for s in doc["segments"] if s["name"] == "rlab")["bridged"] = {"uplink_vlan": VLAN}
    doc["dns"] = {"server": ext.DNS_IP, "zone": ZONE, "reverse": True, "ttl": 30,
                  "tsig": {"name": KEY_NAME, "secret_file": str(ext.DNS_DIR / "vfence.key")}}
    doc["rules"] = [{"name": "client-in", "from": ALLOWED, "to": "rweb", "action": "allow"},
                    {"name": "legacy-in", "from": "10.30.9.128/25", "to": "rlab",
                     "protocol": "icmp", "action": "allow"},
                    {"name": "rweb-out-icmp", "from": "rweb", "to": ext.CLIENT_NET,
                     "protocol": "icmp", "action": "allow"},
                    {"name": "client-in6", "from": ext.CLIENT_NET6, "to": "rweb",
                     "action": "allow"},
                    {"name": "rweb-out-icmpv6", "from": "rweb", "to": ext.CLIENT_NET6,
                     "protocol": "icmpv6", "action": "allow"}] + doc["rules"]
    return doc


def external(lab) -> dict:
    (dc,) = httpx.get(lab.api + "/v1/external", timeout=30).json()
    return dc


def zones(doc: dict) -> list[str]:
    """Every zone the document's VMs have records in (forward and reverse)."""
    pol = policy.parse(doc)
    vms = {v.name: VM(i, v.name, v.mac, v.ips, 1, v.segment)
           for i, v in enumerate(pol.vms, start=1)}
    return sorted({r.zone for r in dns.wanted(NetworkState(policy=pol, vms=vms))})


def dig(name: str, rtype: str = "A") -> list[str]:
    """The real server's answer, asked with dig (+short) from the root namespace."""
    args = ["-x", name] if rtype == "PTR" else [name, rtype]
    r = subprocess.run(["dig", f"@{ext.DNS_IP}", "+short", "+time=1", "+tries=1", *args],
                       capture_output=True, text=True)
    return sorted(r.stdout.split())


@pytest.fixture(scope="module")
def outside(lab):
    net = ext.ExternalNet().start()
    try:
        net.start_dns(zones(external_doc()))
        net.start_legacy(VLAN, [f"{LEGACY_IP}/24", f"{LEGACY_OUTSIDER}/24"])
        net.client("ip", "addr", "add", f"{OUTSIDER}/24", "dev", "eth0", check=True)
        for h in HOSTS:
            sw = lab.switch(f"hv{h}")
            net.attach(sw.netns, h, sw.attach)
        r = httpx.put(lab.api + "/v1/policy", json=external_doc(), timeout=60)
        assert r.status_code == 200, r.text
        for name, _, seg, _, _ in ROUTED_VMS:
            lab.wait_for(lambda name=name: bound(lab, name), 20, f"{name} bound")
            if seg in GATEWAY:
                lab.host(name).cmd(f"ip route replace default via {GATEWAY[seg]}")
            if name in IP6:  # (as test_routing's guests have them, when it ran first)
                lab.host(name).cmd(f"ip -6 addr replace {IP6[name]}/64 dev {nic(lab, name)} "
                                   f"nodad; ip -6 route replace default via {GATEWAY6[seg]}")
        lab.wait_for(lambda: len(external(lab)["gateway_macs"]) == len(HOSTS) and len(
            external(lab)["gateway6_macs"]) == len(HOSTS) and all(
            h["ofport"] for h in external(lab)["hosts"]), 20,
            "every uplink found, each host's gateway and gateway6 MAC resolved")
        lab.wait_for(lambda: external(lab)["bgp"]["session"]["state"] == "established", 40,
                     "the BGP session")
        lab.wait_for(lambda: net.route_via(IP["rweb-1"]) is not None
                     and net.route_via(IP6["rweb-1"]) is not None, 15, "FRR's routes")
        yield lab, net
    finally:
        httpx.put(lab.api + "/v1/policy", json=DOC, timeout=60).raise_for_status()
        net.stop()
        for h in HOSTS:
            lab.switch(f"hv{h}").detach(f"up{h}")


def host_of(lab, vm: str) -> int:
    return int(lab.get(f"/v1/vms/{vm}/location")["host"]["name"].removeprefix("hv"))


def client_ping(net, ip: str, count: int = 2) -> str:
    return net.client("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", ip)


def test_the_outside_reaches_a_routed_vm_through_its_host_and_frr_routes_it_there(outside):
    lab, net = outside
    for vm in ("rweb-1", "rdb-1", "rpay-2"):  # each via the uplink of the host it is on
        assert net.route_via(IP[vm]) == ext.host_address(host_of(lab, vm)), vm
    assert net.route_via(IP["rlab-1"]) is None  # rlab: no router, nothing announced
    out = client_ping(net, IP["rweb-1"], 3)
    assert delivered(out), out
    assert re.search(r"ttl=6[23]", out), out  # routed at the host on the way back
    assert not delivered(client_ping(net, IP["rdb-1"], 3))  # routed there, the policy says no
    assert not delivered(client_ping(net, GATEWAY["rweb"], 2))  # gateways answer inside only
    assert delivered(ping(lab, "rweb-1", ext.CLIENT_IP, 2))  # a VM starts it: allowed
    assert not delivered(ping(lab, "rdb-1", ext.CLIENT_IP, 2))  # rdb may not
    dc = external(lab)
    routes = {r["prefix"]: r["next_hop"] for r in dc["bgp"]["routes"]}
    assert routes[f"{IP['rweb-1']}/32"] == ext.host_address(host_of(lab, "rweb-1"))
    assert f"{IP['rlab-1']}/32" not in routes
    text = httpx.get(lab.api + "/metrics", timeout=30).text
    assert re.search(rf'^vfence_bgp_session_up{{peer="{ext.GATEWAY}"}} 1\.0$', text, re.M)


def test_ipv6_north_south_the_same_way_with_each_vms_128_via_its_hosts_address6(outside):
    """IPv6 over the same uplinks: FRR has each routed VM's /128 via the address6 of the
    host it is on (one BGP session carries both families); the client reaches rweb-1
    and back, rweb-1 reaches the client, rdb-1 (no rule) is refused beside it."""
    lab, net = outside
    for vm in ("rweb-1", "rdb-1", "rpay-2"):
        assert net.route_via(IP6[vm]) == ext.host_address6(host_of(lab, vm)), vm
    out = client_ping(net, IP6["rweb-1"], 3)
    assert delivered(out), out
    assert re.search(r"ttl=6[23]", out), out  # routed at the host on the way back
    assert not delivered(client_ping(net, IP6["rdb-1"], 2))  # no rule lets it in
    assert delivered(ping(lab, "rweb-1", ext.CLIENT_IP6, 2))  # a VM starts it: allowed
    assert not delivered(ping(lab, "rdb-1", ext.CLIENT_IP6, 2))  # rdb may not
    assert not delivered(client_ping(net, GATEWAY6["rweb"], 2))  # gateway6: inside only
    dc = external(lab)
    routes = {r["prefix"]: r["next_hop"] for r in dc["bgp"]["routes"]}
    assert routes[f"{IP6['rweb-1']}/128"] == ext.host_address6(host_of(lab, "rweb-1"))
    assert dc["subnet6"] == ext.SUBNET6 and len(dc["gateway6_macs"]) == len(HOSTS)
    assert {h["address6"] for h in dc["hosts"]} == {ext.host_address6(h) for h in HOSTS}


def test_north_south_policy_sources_state_and_isolation(outside):
    """Only the allowed part of the outside gets in; a VM that only connects out gets no
    unsolicited traffic from outside; the rfront/rpay isolation pair holds while both
    are reachable from outside by their rules. Each refusal beside its control."""
    lab, net = outside
    assert delivered(client_ping(net, IP["rweb-1"]))
    refused = net.client("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", OUTSIDER,
                         IP["rweb-1"])
    assert "2 packets transmitted" in refused and not delivered(refused), refused
    # rdb-1 connects out by no rule and nobody may call in: the VM starts nothing
    assert delivered(ping(lab, "rweb-1", ext.CLIENT_IP))  # rweb may ping out
    assert not delivered(client_ping(net, IP["rdb-1"]))  # unsolicited inbound: dropped
    assert net.route_via(IP["rdb-1"]) is not None  # though the outside has its route
    # isolation: rfront is reachable from outside (client-in) and reaches out, rpay-2 is
    # announced too, and still rfront and rpay-2 never meet (through the router or out)
    assert delivered(client_ping(net, IP["rfront"]))
    assert delivered(ping(lab, "rfront", ext.CLIENT_IP))
    assert net.route_via(IP["rpay-2"]) is not None
    assert not delivered(ping(lab, "rfront", IP["rpay-2"], 2))
    assert not delivered(ping(lab, "rpay-2", IP["rfront"], 2))
    assert delivered(ping(lab, "rweb-1", IP["rdb-1"]))  # the router itself routes


def legacy_ping(net, ip: str, source: str = LEGACY_IP) -> str:
    return net.legacy("ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", "-I", source, ip)


def _relearned(net, mac: str, port: str, seen: list[float], deadline: float) -> None:
    """Watch the uplink bridge's MAC table until ``mac`` is on ``port`` (the time, in
    ``seen``)."""
    while time.monotonic() < deadline and not seen:
        if net.learned_port(mac) == port:
            seen.append(time.monotonic())
        time.sleep(0.001)


def _arrivals(pcap, mac: str) -> dict[str, float]:
    """First arrival (wall clock), at the physical switch's port, of any frame from the
    VM's MAC (what the switch relearns from), of vfence's announcement (a gratuitous ARP)
    and of QEMU's RARP."""
    out = subprocess.run(["tcpdump", "-r", str(pcap), "-tt", "-e", "-n"],
                         capture_output=True, text=True).stdout
    first: dict[str, float] = {}
    for line in out.splitlines():
        at = float(line.split()[0])
        first.setdefault("any", at)
        if re.search(r"who-has (\S+) tell \1,", line):
            first.setdefault("garp", at)
        if "Reverse ARP" in line or "0x8035" in line:
            first.setdefault("rarp", at)
    return first


def _move_under_stream(lab, net, tmp_path, target: str, announce: bool, name: str):
    """rlab-1 to ``target`` under a 10 ms ping stream from the physical host; returns
    (switch relearn delay after the switch-over, stream sent/received, arrivals of the
    announcements at the new uplink's bridge port relative to the switch-over)."""
    vm, mac = "rlab-1", MAC["rlab-1"]
    port = f"hv{target.removeprefix('hv')}-up"
    pcap = tmp_path / f"{name}.pcap"
    dump = subprocess.Popen(["ip", "netns", "exec", ext.SW, "tcpdump", "-i", port,
                             "--immediate-mode", "-U", "-w", str(pcap), "ether", "src", mac],
                            stderr=subprocess.DEVNULL)
    out = tmp_path / f"{name}.txt"
    stream = net.legacy_popen(f"ping -n -i 0.01 -W 1 -c 400 {IP[vm]}", out)
    time.sleep(1)
    seen: list[float] = []
    watcher = threading.Thread(target=_relearned,
                               args=(net, mac, port, seen, time.monotonic() + 20))
    watcher.start()
    wall = time.time() - time.monotonic()
    migrate(lab, vm, target, announce=announce)
    watcher.join()
    stream.wait(timeout=30)
    time.sleep(0.3)
    dump.terminate()
    dump.wait(timeout=5)
    assert seen, f"the physical switch never learned {vm} on {port}"
    since = lab.get(f"/v1/vms/{vm}/location")["since"]  # vfence's switch-over (wall clock)
    moved = datetime.fromisoformat(since).timestamp() - wall  # as monotonic time
    at = {k: round((v - wall - moved) * 1000) for k, v in _arrivals(pcap, mac).items()}
    return seen[0] - moved, ping_stream_result(out), at


def test_a_bridged_segment_meets_the_physical_network_which_relearns_a_move(outside,
                                                                            tmp_path):
    """rlab is bridged on VLAN 100: a physical host behind a plain learning switch
    reaches rlab-1 (only from the allowed half of the subnet) and back. rlab-1 moves
    hv3 -> hv1 as usual (its own frames, QEMU's RARPs, teach a plain learning network),
    then back with a guest that sends nothing (no IPv6, no RARP): vfence's announcement
    alone makes the switch relearn, at once after vfence's switch-over."""
    lab, net = outside
    vm, mac = "rlab-1", MAC["rlab-1"]
    assert host_of(lab, vm) == 3
    assert delivered(legacy_ping(net, IP[vm]))
    assert net.learned_port(mac) == "hv3-up"
    assert delivered(ping(lab, vm, LEGACY_IP))
    refused = legacy_ping(net, IP[vm], LEGACY_OUTSIDER)  # outside legacy-in's /25
    assert "2 packets transmitted" in refused and not delivered(refused), refused
    relearn, (sent, got), at = _move_under_stream(lab, net, tmp_path, "hv1", True, "qemu")
    print(f"bridged move, guest and QEMU announcing: at the new uplink's switch port its "
          f"first frame came {at.get('any')} ms, QEMU's RARP {at.get('rarp')} ms, vfence's "
          f"announcement {at.get('garp')} ms after vfence's switch-over (polled relearn "
          f"{relearn * 1000:.0f} ms); the physical host lost {sent - got}/{sent}")
    assert "garp" in at and at["garp"] < 1000, at
    assert got > 300, (sent, got)
    guest = lab.host(vm)
    guest.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=1")  # no MLD, no solicitation
    try:
        relearn2, (sent2, got2), at2 = _move_under_stream(lab, net, tmp_path, "hv3", False,
                                                          "silent")
    finally:
        guest.cmd("sysctl -qw net.ipv6.conf.all.disable_ipv6=0")
    print(f"bridged move, guest silent: vfence's announcement reached the switch "
          f"{at2.get('garp')} ms after its switch-over, the first frame from the VM's MAC "
          f"{at2.get('any')} ms (polled relearn {relearn2 * 1000:.0f} ms); the physical host "
          f"lost {sent2 - got2}/{sent2}")
    assert "rarp" not in at2 and at2.get("any") == at2.get("garp"), at2  # nothing else
    assert at2["garp"] < 1000, at2
    assert got2 > 100, (sent2, got2)  # it came back without a word from the guest
    assert delivered(legacy_ping(net, IP[vm]))


def readdress_guest(lab, vm: str, ip: str, gateway: str) -> None:
    """What the guest's own DHCP would do after a re-IP: its new address and route."""
    dev = nic(lab, vm)
    lab.host(vm).cmd(f"ip addr flush dev {dev}; ip addr add {ip}/24 dev {dev}; "
                     f"ip route replace default via {gateway}")


def test_dns_and_bgp_follow_a_vm_readdressed_across_subnets(outside):
    """rlab-1 (unrouted rlab) is re-addressed into rweb (routed) with PATCH: the real
    server answers its new A and PTR at once and the old PTR is gone; BGP announces the
    new /32. Then the DNS server is killed: a second PATCH is programmed as usual (the
    guest's traffic flows), the update is pending, and lands once the server is back.
    Deleting the VM withdraws its route and its names."""
    lab, net = outside
    fqdn, old, new, newer = f"rlab-1.{ZONE}", IP["rlab-1"], "10.30.1.99", "10.30.1.98"
    lab.wait_for(lambda: dig(fqdn) == [old] and dig(f"rweb-1.{ZONE}") == [IP["rweb-1"]],
                 15, "the VMs' names on the server")
    assert dig(old, "PTR") == [fqdn]
    t0 = time.monotonic()  # from the request (its answer comes after the switches')
    r = httpx.patch(lab.api + "/v1/vms/rlab-1", json={"segment": "rweb", "ips": [new]},
                    timeout=30)
    assert r.status_code == 200 and r.json()["segment"] == "rweb", r.text
    while dig(fqdn) != [new] and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    took = time.monotonic() - t0
    print(f"the server answered rlab-1's new address {took * 1000:.0f} ms after the PATCH "
          "was sent (goal < 1 s)")
    assert dig(fqdn) == [new] and dig(new, "PTR") == [fqdn] and dig(old, "PTR") == []
    stored = {v["name"]: v for v in httpx.get(lab.api + "/v1/policy", timeout=30).json()["vms"]}
    assert stored["rlab-1"]["segment"] == "rweb" and stored["rlab-1"]["ips"] == [new]
    lab.wait_for(lambda: net.route_via(new) == ext.host_address(3), 10, "the new /32")
    readdress_guest(lab, "rlab-1", new, GATEWAY["rweb"])
    assert delivered(ping(lab, "rlab-1", ext.CLIENT_IP))  # rlab-out: it connects out
    assert not delivered(client_ping(net, new))  # and nothing calls in
    lab.wait_for(lambda: lab.get("/v1/dns")["state"] == "current", 10, "DNS current")
    # the DNS server dies: programming goes on, the update waits in the database
    net.named.kill()
    r = httpx.patch(lab.api + "/v1/vms/rlab-1", json={"ips": [newer]}, timeout=30)
    assert r.status_code == 200, r.text
    readdress_guest(lab, "rlab-1", newer, GATEWAY["rweb"])
    lab.wait_for(lambda: net.route_via(newer) == ext.host_address(3), 10, "BGP, DNS or not")
    assert delivered(ping(lab, "rlab-1", ext.CLIENT_IP))  # the answer comes by that route
    lab.wait_for(lambda: lab.get("/v1/dns")["state"] == "failing", 10, "DNS failing")
    status = lab.get("/v1/dns")
    # the A, the old PTR's removal and the new PTR (each PTR with vfence's marker)
    assert status["pending"] == 5 and fqdn in status["pending_names"], status
    assert lab.get("/v1/events?type=dns-failed")
    assert "vfence_dns_pending 5.0" in httpx.get(lab.api + "/metrics", timeout=30).text
    net.named.start()
    lab.wait_for(lambda: dig(fqdn) == [newer], 30, "the update after the server's restart")
    assert dig(newer, "PTR") == [fqdn] and dig(new, "PTR") == []
    lab.wait_for(lambda: lab.get("/v1/dns")["state"] == "current", 10, "DNS current")
    assert lab.get("/v1/events?type=dns-caught-up")
    # deleting the VM withdraws its route and its names
    assert httpx.delete(lab.api + "/v1/vms/rlab-1", timeout=30).status_code == 204
    lab.wait_for(lambda: net.route_via(newer) is None and dig(fqdn) == [], 10,
                 "route and name withdrawn")
    assert dig(newer, "PTR") == [] and net.route_via(IP["rweb-1"]) is not None
    readdress_guest(lab, "rlab-1", old, "10.30.9.1")


def test_a_moved_vm_is_announced_via_its_new_host_and_the_outside_barely_notices(outside,
                                                                                 tmp_path):
    """rweb-1 moves hv1 -> hv2 under two 10 ms ping streams: from the external client
    (north-south) and from rfront (east-west, same segment, hv1). FRR's next hop follows
    in one UPDATE; the outside loses at most what east-west loses plus BGP's time."""
    lab, net = outside
    target = IP["rweb-1"]
    ns_out = tmp_path / "north-south.txt"
    stream = net.client_popen(f"ping -n -i 0.01 -W 1 -c 500 {target}", ns_out)
    start_ping_stream(lab.host("rfront"), target, tmp_path / "east-west.txt", 500)
    time.sleep(1)
    assert host_of(lab, "rweb-1") == 1
    new_hop = ext.host_address(2)
    seen: list[float] = []  # when FRR's kernel route first pointed at hv2 (watched while
    # the move runs: migrate() returns only once the old port is gone, a second later)

    def watch() -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not seen:
            if net.route_via(target) == new_hop:
                seen.append(time.monotonic())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    m = migrate(lab, "rweb-1", "hv2")
    watcher.join()
    assert seen, "FRR never learned the move"
    bgp_s = seen[0] - m.switched
    stream.wait(timeout=30)
    ns_sent, ns_got = ping_stream_result(ns_out)
    ew_sent, ew_got = ping_stream_result(tmp_path / "east-west.txt")
    print(f"FRR's next hop moved {bgp_s * 1000:.0f} ms after the switch-over (goal < 100 ms); "
          f"north-south lost {ns_sent - ns_got}/{ns_sent}, east-west {ew_sent - ew_got}/"
          f"{ew_sent}")
    assert net.route_via(target) == new_hop
    assert lab.get("/v1/vms/rweb-1/location")["host"]["name"] == "hv2"
    assert ns_got > 300 and ew_got > 300, (ns_sent, ns_got, ew_sent, ew_got)  # both ran
    # one trial (a 10 ms ping is one packet either way): the bound is generous; the
    # benchmark reports the figures over many moves
    allowed = (ew_sent - ew_got) + int(bgp_s / 0.01) + 10
    assert ns_sent - ns_got <= allowed, (ns_sent, ns_got, ew_sent, ew_got, bgp_s)
    assert delivered(client_ping(net, target, 2))  # and through hv2's uplink now
    lab.wait_for(lambda: net.route_via(IP6["rweb-1"]) == ext.host_address6(2), 10,
                 "the /128 via hv2's address6 (in the same moment's UPDATEs)")
    assert delivered(client_ping(net, IP6["rweb-1"], 2))
