"""The finance scenario on real OVS + conntrack (mininet_topos/finance.yaml).

hv1: pay-1 (payroll), web-1 (frontend)   <- an isolation pair sharing one host
hv2: pay-2 (payroll), api-1 (finance-api)
hv3: web-2 (frontend), ops-1 (ops, 10.9.0.5: the mgmt CIDR)
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from controller.flows import Owner, cookie
from mininet_topos.datacenter import (
    FINANCE_PLACEMENT,
    FINANCE_POLICY,
    plan_from_policy,
    switch_intf,
)
from mininet_topos.lab import Lab

from .conftest import (
    Capture,
    attack,
    flow_packets,
    flows_text,
    ports,
    probe,
    send_frames,
    serve,
    vm_id,
)

DOC = yaml.safe_load(FINANCE_POLICY.read_text())
PLAN = plan_from_policy(DOC, FINANCE_PLACEMENT)
IP = {p.name: p.ip for p in PLAN}
MAC = {p.name: p.mac for p in PLAN}
HOSTS = {p.name: f"hv{p.host}" for p in PLAN}
BRIDGES = ("hv1", "hv2", "hv3", "sp1", "sp2")
TCP_PORTS = (22, 80, 5432, 8443)
UDP_PORTS = (53, 9000)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    of_port, api_port = ports()
    work = tmp_path_factory.mktemp("finance")
    with Lab(3, 2, PLAN, db_url=f"sqlite:///{work}/vfence.db", workdir=work,
              of_port=of_port, api_port=api_port, policy=DOC) as lab:
        for name in IP:
            for port in TCP_PORTS:
                serve(lab.host(name), "tcp", port)
            for port in UDP_PORTS + (9050,):
                serve(lab.host(name), "udp", port)
        time.sleep(1)
        yield lab


def reach(lab, src: str, dst: str, proto: str, port: int) -> bool:
    return probe(lab.host(src), [(proto, IP[dst], port)])[(proto, IP[dst], port)]


def test_allowed_connections_and_their_replies(lab):
    assert reach(lab, "web-1", "api-1", "tcp", 8443)   # frontend -> finance-api
    assert reach(lab, "web-2", "api-1", "tcp", 8443)
    assert reach(lab, "api-1", "pay-1", "tcp", 5432)   # finance-api -> payroll (hv2 -> hv1)
    assert reach(lab, "api-1", "pay-2", "tcp", 5432)   # same host
    assert reach(lab, "ops-1", "pay-1", "tcp", 22)     # CIDR rule 10.9.0.0/16
    assert lab.ping("web-1", "api-1")                  # icmp rule


def test_only_what_the_rules_name(lab):
    assert not reach(lab, "web-1", "api-1", "tcp", 80)    # right pair, wrong port
    assert not reach(lab, "api-1", "pay-1", "tcp", 22)    # mgmt port is for ops only
    assert not reach(lab, "ops-1", "api-1", "tcp", 8443)  # inter-group default deny


def test_unsolicited_traffic_the_other_way_is_blocked(lab):
    assert not reach(lab, "api-1", "web-1", "tcp", 8443)
    assert not reach(lab, "pay-1", "api-1", "tcp", 5432)
    assert not lab.ping("api-1", "web-2", tries=1)


def test_intra_group_traffic_works(lab):
    assert lab.ping("pay-1", "pay-2") and lab.ping("web-1", "web-2")
    assert reach(lab, "pay-2", "pay-1", "udp", 53)


@pytest.mark.parametrize("a, b", [("web-1", "pay-1"), ("pay-1", "web-1"),   # shared host
                                  ("web-2", "pay-2"), ("pay-2", "web-2"),   # across hosts
                                  ("web-1", "pay-2"), ("pay-1", "web-2")])
def test_frontend_and_payroll_never_talk(lab, a, b):
    assert reach(lab, a, b, "tcp", 8443) is False or pytest.fail(f"{a}->{b} tcp/8443")
    targets = [("tcp", IP[b], p) for p in TCP_PORTS] + [("udp", IP[b], p) for p in UDP_PORTS]
    got = probe(lab.host(a), targets)
    assert not any(got.values()), got
    assert not lab.ping(a, b, tries=1)


def test_isolation_holds_for_raw_l2_frames(lab, tmp_path):
    cap = Capture(lab.host("pay-1"), "pay-1-eth0", tmp_path / "pay1.pcap")
    send_frames(lab.host("web-1"), "web-1-eth0", MAC["web-1"], MAC["pay-1"], 5)
    send_frames(lab.host("pay-2"), "pay-2-eth0", MAC["pay-2"], MAC["pay-1"], 3)  # control
    cap.wait(lambda fs: sum(1 for f in fs if f.src == MAC["pay-2"]) >= 3)
    frames = cap.stop()
    assert sum(1 for f in frames if f.src == MAC["pay-2"]) >= 3
    assert not [f for f in frames if f.src == MAC["web-1"]]


def test_isolation_drops_are_counted(lab):
    before = flow_packets("hv1", cookie(Owner.ISOLATION, 0))
    reach(lab, "web-1", "pay-1", "tcp", 5432)
    assert flow_packets("hv1", cookie(Owner.ISOLATION, 0)) > before


def test_deny_and_log_records_an_audit_event(lab):
    before = flow_packets(HOSTS["web-1"], cookie(Owner.RULE, 4))
    assert not reach(lab, "web-1", "api-1", "udp", 9050)
    assert flow_packets(HOSTS["web-1"], cookie(Owner.RULE, 4)) > before

    def logged():
        evs = lab.get("/v1/events?type=denied") or []
        return [e for e in evs if e["detail"]["rule"] == "probe-log"
                and e["detail"]["dst_vm"] == "api-1" and e["detail"]["port"] == 9050]
    lab.wait_for(lambda: bool(logged()), 10, "denied event")
    ev = logged()[0]
    assert ev["detail"]["src_vm"] == "web-1" and ev["detail"]["protocol"] == "udp"


# --- attacks from a compromised frontend VM (web-1, on payroll's host) ----------------------


def _legit_still_flows(lab):
    assert reach(lab, "web-1", "api-1", "tcp", 8443)
    assert lab.ping("pay-1", "pay-2")
    assert lab.get("/v1/health")["status"] == "ok"


def test_mac_spoofing_is_dropped(lab, tmp_path):
    cap = Capture(lab.host("pay-1"), "pay-1-eth0", tmp_path / "p.pcap")
    # pretend to be finance-api, which may reach payroll
    attack(lab.host("web-1"), "web-1-eth0", "macspoof", MAC["api-1"], MAC["pay-1"], IP["pay-1"])
    frames = cap.stop()
    assert not [f for f in frames if f.src == MAC["api-1"]]
    _legit_still_flows(lab)


def test_ip_spoofing_is_dropped(lab, tmp_path):
    drops = flow_packets("hv1", cookie(Owner.VM, _vm_id(lab, "web-1")))
    cap = Capture(lab.host("pay-1"), "pay-1-eth0", tmp_path / "p.pcap")
    attack(lab.host("web-1"), "web-1-eth0", "ipspoof", MAC["web-1"], IP["api-1"], MAC["pay-1"],
           IP["pay-1"], "5432")
    frames = cap.stop()
    assert not [f for f in frames if f.src == MAC["web-1"]]
    assert flow_packets("hv1", cookie(Owner.VM, _vm_id(lab, "web-1"))) >= drops + 5
    _legit_still_flows(lab)


def test_arp_cache_poisoning_is_dropped(lab):
    web2 = lab.host("web-2")
    assert lab.ping("web-2", "web-1")  # web-2 knows web-1's real MAC
    web2.cmd(f"ip neigh replace {IP['api-1']} lladdr {MAC['api-1']} dev web-2-eth0 nud stale")
    # web-1 tells web-2 that api-1's address is at web-1's MAC
    attack(lab.host("web-1"), "web-1-eth0", "arppoison", MAC["web-1"], MAC["web-2"], IP["web-2"],
           IP["api-1"])
    time.sleep(0.5)
    neigh = web2.cmd(f"ip neigh show {IP['api-1']}").lower()
    assert MAC["web-1"] not in neigh and MAC["api-1"] in neigh
    _legit_still_flows(lab)


def test_rogue_dhcp_server_is_dropped(lab, tmp_path):
    caps = [Capture(lab.host(n), f"{n}-eth0", tmp_path / f"{n}.pcap") for n in ("web-2", "pay-1")]
    before = flow_packets("hv1", cookie(Owner.VM, _vm_id(lab, "web-1")))
    attack(lab.host("web-1"), "web-1-eth0", "dhcp", MAC["web-1"], IP["web-1"])
    for c in caps:
        assert not [f for f in c.stop() if f.src == MAC["web-1"]]
    assert flow_packets("hv1", cookie(Owner.VM, _vm_id(lab, "web-1"))) >= before + 5
    _legit_still_flows(lab)


def test_mac_flood_is_dropped_in_the_datapath(lab):
    flows_before = {br: len(flows_text(br)) for br in BRIDGES}
    packet_in_before = lab.get("/v1/health")["packet_in"]
    drops = flow_packets("hv1", cookie(Owner.VM, _vm_id(lab, "web-1")))
    attack(lab.host("web-1"), "web-1-eth0", "macflood", "10000")
    t0 = time.monotonic()
    health = lab.get("/v1/health")
    assert health is not None and time.monotonic() - t0 < 2  # the controller answers
    assert flow_packets("hv1", cookie(Owner.VM, _vm_id(lab, "web-1"))) >= drops + 10000
    assert {br: len(flows_text(br)) for br in BRIDGES} == flows_before  # no table grew
    assert health["packet_in"] - packet_in_before < 50  # none of it reached the controller
    _legit_still_flows(lab)


def _vm_id(lab, name: str) -> int:
    return vm_id([HOSTS[name]], MAC[name])


# --- policy changes -------------------------------------------------------------------------


def _snapshot(lab):
    return ({br: flows_text(br) for br in BRIDGES}, lab.get("/v1/policy"), lab.get("/v1/vms"))


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["rules"].append({"name": "oops", "from": "frontend", "to": "payroll",
                                  "protocol": "tcp", "ports": "5432", "action": "allow"}),
     "rules[5]"),
    (lambda d: d["vms"][1].update({"mac": d["vms"][0]["mac"]}), "vms[1].mac"),
    (lambda d: d["rules"][0].update({"ports": "99999"}), "rules[0].ports"),
    (lambda d: d["rules"][0].update({"to": "unknown-group"}), "rules[0].to"),
    (lambda d: d["rules"][2].update({"from": "10.9.0.0/40"}), "rules[2].from"),
])
def test_rejected_policy_changes_nothing(lab, mutate, field):
    before = _snapshot(lab)
    bad = copy.deepcopy(DOC)
    mutate(bad)
    r = httpx.put(lab.api + "/v1/policy", json=bad, timeout=30)
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]], r.json()
    assert _snapshot(lab) == before


def test_dry_run_reports_what_apply_then_does(lab):
    new = copy.deepcopy(DOC)
    new["rules"].insert(0, {"name": "web-to-api-http", "from": "frontend", "to": "finance-api",
                            "protocol": "tcp", "ports": "80,8080-8081", "action": "allow"})
    before = {br: flows_text(br) for br in BRIDGES}
    dry = httpx.put(lab.api + "/v1/policy", params={"dry_run": "true"}, json=new, timeout=30)
    assert dry.status_code == 200, dry.text
    report = dry.json()
    assert report["dry_run"] and report["rules"][0] == "web-to-api-http"
    assert {br: flows_text(br) for br in BRIDGES} == before  # dry run changed nothing
    assert not reach(lab, "web-1", "api-1", "tcp", 80)
    applied = httpx.put(lab.api + "/v1/policy", json=new, timeout=30).json()
    assert applied["hosts"] == report["hosts"]
    for br in BRIDGES:
        after = flows_text(br)
        h = report["hosts"][br]
        assert len(after) == h["flows"], br
        changed = len(set(after) - set(before[br])) + len(set(before[br]) - set(after))
        assert changed <= h["add"] + h["delete"] and (h["add"] + h["delete"] == 0) == (
            changed == 0), br
    assert reach(lab, "web-1", "api-1", "tcp", 80)
    assert lab.get("/v1/policy")["rules"][0]["name"] == "web-to-api-http"
    httpx.put(lab.api + "/v1/policy", json=DOC, timeout=30).raise_for_status()
    assert not reach(lab, "web-1", "api-1", "tcp", 80)


# --- verify and metrics on the real switches ------------------------------------------------


def _ofport(intf: str) -> int:
    return int(subprocess.run(["ovs-vsctl", "get", "Interface", intf, "ofport"],
                              capture_output=True, text=True, check=True).stdout)


def test_verify_proves_isolation_then_catches_a_hand_made_hole(lab):
    ok = httpx.post(lab.api + "/v1/verify", timeout=120).json()
    assert [(v["pair"], v["isolated"], v["complete"]) for v in ok] == [
        (["payroll", "frontend"], True, True)], ok
    web1 = _ofport(switch_intf(lab.net, "web-1"))
    pay1 = _ofport(switch_intf(lab.net, "pay-1"))
    hole = f"table=0,priority=65000,in_port={web1},actions=output:{pay1}"
    subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", "hv1", hole], check=True)
    try:
        r = subprocess.run([sys.executable, "-m", "controller", "verify", "--json", "--api",
                            lab.api], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr  # the CLI says: broken
        (v,) = json.loads(r.stdout)
        assert not v["isolated"]
        assert any("prio 65000" in s and "cookie 0x0" in s for s in v["witness"]), v
        assert v["witness"][-1].startswith("delivered to pay-1")
    finally:
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "--strict", "hv1",
                        f"table=0,priority=65000,in_port={web1}"], check=True)
    assert httpx.post(lab.api + "/v1/verify", timeout=120).json()[0]["isolated"]


def test_metrics_during_the_lab(lab):
    reach(lab, "web-1", "pay-1", "tcp", 5432)  # a denied attempt to count
    text = httpx.get(lab.api + "/metrics", timeout=30).text
    assert "vfence_switches_connected 5.0" in text
    for br in BRIDGES:
        assert f'vfence_flows{{switch="{br}",table="0"}}' in text
    packets = re.search(r'vfence_rule_packets\{rule="isolation\[0\]"\} (\d+)', text)
    assert packets and float(packets.group(1)) > 0
    assert re.search(r'vfence_rule_packets\{rule="web-to-api"\} \d+', text)
    assert 'vfence_packet_in_total{reason="base"}' in text or "vfence_packet_in_total" in text
