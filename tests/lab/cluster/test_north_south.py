"""North-south through a cluster: an external client reaches a routed VM through FRR,
which learns the VM's route from every member (each speaks BGP from its own address and
announces every route). Killing the member whose path FRR prefers loses nothing: the
same route stays, from the others."""

from __future__ import annotations

import copy
import json
import signal
import time

import httpx
import pytest

from vfence.mininet_topos import external as ext
from vfence.mininet_topos.cluster import wait_until

from .conftest import DOC, ROUTED, bgp_address
from .test_cluster import _no_drift, _put_policy

pytestmark = pytest.mark.lab

GATEWAY = "10.30.1.1"


def north_south_doc() -> dict:
    doc = copy.deepcopy(DOC)
    doc["segments"].append({"name": "rweb", "subnet": "10.30.1.0/24", "gateway": GATEWAY})
    doc["routers"] = [{"name": "r1", "segments": ["rweb"], "external": "dc"}]
    doc["groups"].append({"name": "rweb"})
    doc["vms"].append({"name": ROUTED.name, "mac": ROUTED.mac, "ips": [ROUTED.ip],
                       "segment": "rweb", "groups": ["rweb"]})
    doc["external"] = [{"name": "dc", "subnet": ext.SUBNET, "gateway": ext.GATEWAY,
                        "bgp": {"local_asn": ext.LOCAL_ASN, "peer": ext.GATEWAY,
                                "peer_asn": ext.ROUTER_ASN}}]
    doc["hosts"] = [{"name": f"hv{h}", "uplink": f"up{h}", "address": ext.host_address(h)}
                    for h in range(1, 5)]
    doc["rules"] = [{"name": "client-in", "from": "198.51.100.0/25", "to": "rweb",
                     "action": "allow"}] + doc["rules"]
    return doc


def sessions_up(lab) -> set[str]:
    """Members whose BGP session with FRR is established (FRR's own view)."""
    up = set()
    for name in lab.live():
        dc = (lab.member_get(name, "/v1/external") or [{}])[0]
        if (dc.get("bgp") or {}).get("session", {}).get("state") == "established":
            up.add(name)
    return up


def best_peer(net, prefix: str) -> str | None:
    """The neighbor FRR's best path for ``prefix`` came from."""
    out = net.vtysh(f"show ip bgp {prefix} json")
    try:
        paths = json.loads(out).get("paths", [])
    except json.JSONDecodeError:
        return None
    best = next((p for p in paths if p.get("bestpath", {}).get("overall")), None)
    return best.get("peer", {}).get("peerId") if best else None


@pytest.fixture(scope="module")
def outside(lab):
    net = ext.ExternalNet(speakers=tuple(bgp_address(m) for m in lab.ports)).start()
    try:
        for h in range(1, 5):
            sw = lab.switch(f"hv{h}")
            net.attach(sw.netns, h, sw.attach)
        r = _put_policy(lab, "c1", north_south_doc())
        assert r.status_code == 200, r.text
        lab.wait_for(lambda: (lab.get(f"/v1/vms/{ROUTED.name}") or {}).get("location"), 30,
                     "rweb-1 bound")
        lab.host(ROUTED.name).cmd(f"ip route replace default via {GATEWAY}")
        lab.wait_for(lambda: sessions_up(lab) == set(lab.live()), 60,
                     "every member's BGP session")
        lab.wait_for(lambda: net.route_via(ROUTED.ip) == ext.host_address(ROUTED.host), 30,
                     "FRR's route to rweb-1")
        yield net
    finally:
        _put_policy(lab, "c1", DOC)
        net.stop()
        for h in range(1, 5):
            lab.switch(f"hv{h}").detach(f"up{h}")


def test_killing_the_member_whose_route_frr_uses_loses_no_packet(lab, outside, tmp_path):
    net = outside
    peer = best_peer(net, f"{ROUTED.ip}/32")
    victim = next(m for m in lab.live() if bgp_address(m) == peer)
    paths_before = net.vtysh(f"show ip bgp {ROUTED.ip}/32")
    out = tmp_path / "client.txt"
    proc = net.client_popen(f"ping -n -i 0.01 -c 500 -W 1 {ROUTED.ip}", out)
    time.sleep(1.5)
    lab.signal_member(victim, signal.SIGKILL)
    try:
        proc.wait(30)
        text = out.read_text()
        assert " 500 received" in text, text[-400:] + paths_before
        assert net.route_via(ROUTED.ip) == ext.host_address(ROUTED.host)
        assert best_peer(net, f"{ROUTED.ip}/32") not in (None, peer)
        for member in lab.live():
            drift = _no_drift(lab, member)
            assert drift == [], (member, [d["examples"] for d in drift])
    finally:
        lab.start_member(victim)
        lab.wait_converged()
        wait_until(lambda: sessions_up(lab) == set(lab.live()), 60, 0.5)
        httpx.get(lab.api + "/v1/health", timeout=10)
