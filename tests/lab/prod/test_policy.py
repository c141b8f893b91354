"""The finance scenario on the production-shaped lab (one OVS per host, every bridge
br-int, conntrack), mininet_topos/finance.yaml plus the dmz segment (see conftest.py).

hv1: pay-1 (payroll), web-1 (frontend)   <- an isolation pair sharing one host
hv2: pay-2 (payroll), api-1 (finance-api)
hv3: web-2 (frontend), ops-1 (ops, 10.9.0.5: the mgmt CIDR)
Attacks from a compromised VM are in test_attacks.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys

import httpx
import pytest

from vfence.controller.flows import Owner, cookie

from ..conftest import Capture, flow_packets, flows_text, probe, send_frames
from .conftest import DOC, HOSTS, IP, MAC, SWITCHES, TCP_PORTS, UDP_PORTS, nic, ofport


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
    control = CONTROL[a]  # something the same sender may reach, probed alongside
    targets = [("tcp", IP[b], p) for p in TCP_PORTS] + [("udp", IP[b], p) for p in UDP_PORTS]
    got = probe(lab.host(a), [*targets, control])
    assert got.pop(control), f"control {a} -> {control} failed: the lab is not working"
    assert not any(got.values()), got
    assert not lab.ping(a, b, tries=1)


CONTROL = {"web-1": ("tcp", IP["api-1"], 8443), "web-2": ("tcp", IP["api-1"], 8443),
           "pay-1": ("udp", IP["pay-2"], 53), "pay-2": ("udp", IP["pay-1"], 53)}


def test_isolation_holds_for_raw_l2_frames(lab, tmp_path):
    cap = Capture(lab.host("pay-1"), nic(lab, "pay-1"), tmp_path / "pay1.pcap")
    send_frames(lab.host("web-1"), nic(lab, "web-1"), MAC["web-1"], MAC["pay-1"], 5)
    send_frames(lab.host("pay-2"), nic(lab, "pay-2"), MAC["pay-2"], MAC["pay-1"], 3)  # control
    def mine(fs, src):  # only this test's frames (its ethertype), from ``src``
        return sum(1 for f in fs if f.src == src and f.type == 0x88B5)
    cap.wait(lambda fs: mine(fs, MAC["pay-2"]) >= 3)
    frames = cap.stop()
    assert mine(frames, MAC["pay-2"]) >= 3
    assert mine(frames, MAC["web-1"]) == 0


def test_isolation_drops_are_counted(lab):
    before = flow_packets(lab.mgmt("hv1"), cookie(Owner.ISOLATION, 0))
    reach(lab, "web-1", "pay-1", "tcp", 5432)
    assert flow_packets(lab.mgmt("hv1"), cookie(Owner.ISOLATION, 0)) > before


def test_deny_and_log_records_an_audit_event(lab):
    rule = cookie(Owner.RULE, lab.get("/v1/rules")[4]["priority"])  # its id in cookies
    before = flow_packets(lab.mgmt(HOSTS["web-1"]), rule)
    assert not reach(lab, "web-1", "api-1", "udp", 9050)
    assert flow_packets(lab.mgmt(HOSTS["web-1"]), rule) > before

    def logged():
        evs = lab.get("/v1/events?type=denied") or []
        return [e for e in evs if e["detail"]["rule"] == "probe-log"
                and e["detail"]["dst_vm"] == "api-1" and e["detail"]["port"] == 9050]
    lab.wait_for(lambda: bool(logged()), 10, "denied event")
    ev = logged()[0]
    assert ev["detail"]["src_vm"] == "web-1" and ev["detail"]["protocol"] == "udp"


# --- policy changes -------------------------------------------------------------------------


def _snapshot(lab):
    flows = {br: flows_text(lab.mgmt(br)) for br in SWITCHES}
    return flows, lab.get("/v1/policy"), lab.get("/v1/vms")


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["rules"].append({"name": "oops", "from": "frontend", "to": "payroll",
                                  "protocol": "tcp", "ports": "5432", "action": "allow"}),
     "rules[8]"),
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
    before = {br: flows_text(lab.mgmt(br)) for br in SWITCHES}
    dry = httpx.put(lab.api + "/v1/policy", params={"dry_run": "true"}, json=new, timeout=30)
    assert dry.status_code == 200, dry.text
    report = dry.json()
    assert report["dry_run"] and report["rules"][0] == "web-to-api-http"
    assert {br: flows_text(lab.mgmt(br)) for br in SWITCHES} == before  # dry run changed nothing
    assert not reach(lab, "web-1", "api-1", "tcp", 80)
    applied = httpx.put(lab.api + "/v1/policy", json=new, timeout=30).json()
    assert applied["hosts"] == report["hosts"]
    for br in SWITCHES:
        after = flows_text(lab.mgmt(br))
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


def test_verify_proves_isolation_then_catches_a_hand_made_hole(lab):
    ok = httpx.post(lab.api + "/v1/verify", timeout=120).json()
    assert [(v["pair"], v["status"]) for v in ok] == [(["payroll", "frontend"], "isolated")], ok
    web1, pay1 = ofport(lab, "web-1"), ofport(lab, "pay-1")
    hole = f"table=0,priority=65000,in_port={web1},actions=output:{pay1}"
    lab.switch("hv1").ofctl("add-flow", hole)
    try:
        r = subprocess.run([sys.executable, "-m", "vfence", "verify", "--json", "--api",
                            lab.api], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout + r.stderr  # the CLI says: broken
        (v,) = json.loads(r.stdout)
        assert not v["isolated"]
        assert any("prio 65000" in s and "cookie 0x0" in s for s in v["witness"]), v
        assert v["witness"][-1].startswith("delivered to pay-1")
    finally:
        lab.switch("hv1").ofctl("del-flows", "--strict",
                                f"table=0,priority=65000,in_port={web1}")
    assert httpx.post(lab.api + "/v1/verify", timeout=120).json()[0]["isolated"]


def _trace(lab, src: str, dst: str, port: int) -> dict:
    r = httpx.post(lab.api + "/v1/trace", json={"source": src, "destination": dst,
                                                "protocol": "tcp", "port": port}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def test_trace_over_the_real_switches_explains_a_delivery_and_each_drop(lab):
    """The finance scenario: frontend -> finance-api tcp/8443 is delivered, hop by hop
    across the fabric; frontend -> payroll tcp/5432 is dropped by the isolation pair; a
    flow added by hand on hv2 that drops 8443 is named as the culprit. Each answer next
    to what real packets do."""
    t = _trace(lab, "web-1", "api-1", 8443)
    assert t["verdict"] == "delivered" and t["reached"] == ["api-1"], t
    switches = [h["switch"] for h in t["hops"]]
    assert switches[0] == "hv1" and switches[-1] == "hv2" and {"sp1", "sp2"} & set(switches)
    assert "rule web-to-api (allow)" in {h["owner"] for h in t["hops"]}
    assert reach(lab, "web-1", "api-1", "tcp", 8443)
    r = subprocess.run([sys.executable, "-m", "vfence", "trace", "web-1", "pay-1", "--port",
                        "5432", "--api", lab.api], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "isolation pair payroll/frontend" in " ".join(
        r.stdout.split()), r.stdout + r.stderr
    assert not reach(lab, "web-1", "pay-1", "tcp", 5432)
    culprit = "table=0,priority=65000,tcp,tp_dst=8443,actions=drop"  # on hv2, api-1's
    lab.switch("hv2").ofctl("add-flow", culprit)
    try:
        t = _trace(lab, "web-1", "api-1", 8443)
        assert t["verdict"] == "dropped" and t["hops"][-1]["switch"] == "hv2", t
        assert t["hops"][-1]["owner"] == "a flow vfence did not install (cookie 0x0)", t
        assert t["hops"][-1]["match"].get("tcp_dst") == 8443, t["hops"][-1]
        assert not reach(lab, "web-1", "api-1", "tcp", 8443)  # it really does
    finally:
        lab.switch("hv2").ofctl("del-flows", "--strict", "table=0,priority=65000,tcp,tp_dst=8443")
    assert reach(lab, "web-1", "api-1", "tcp", 8443)


def test_metrics_during_the_lab(lab):
    reach(lab, "web-1", "pay-1", "tcp", 5432)  # a denied attempt to count
    text = httpx.get(lab.api + "/metrics", timeout=30).text
    assert "vfence_switches_connected 5.0" in text
    for br in SWITCHES:
        assert f'vfence_flows{{switch="{br}",table="0",table_name="classify"}}' in text
    packets = re.search(r'vfence_rule_packets\{rule="isolation\[0\]"\} (\d+)', text)
    assert packets and float(packets.group(1)) > 0
    assert re.search(r'vfence_rule_packets\{rule="web-to-api"\} \d+', text)
    assert 'vfence_packet_in_total{reason="base"}' in text or "vfence_packet_in_total" in text


# --- groups beyond 64, VMs in several: conjunctive matches on real Open vSwitch ----------


def _many_groups() -> dict:
    """DOC with 200 more groups (numbers far beyond the old 64), app-2 also in g150 and
    g151 (three groups: rules and isolation become conjunctions), g150 isolated from db,
    and g151 allowed to reach guest on udp/9000."""
    doc = copy.deepcopy(DOC)
    doc["groups"] += [{"name": f"g{i}"} for i in range(200)]
    (app2,) = [v for v in doc["vms"] if v["name"] == "app-2"]
    app2["groups"] = ["app", "g150", "g151"]
    doc["isolation"].append(["g150", "db"])
    doc["rules"].insert(0, {"name": "g151-guest", "from": "g151", "to": "guest",
                            "protocol": "udp", "ports": "9000", "action": "allow"})
    return doc


def test_groups_beyond_64_and_vms_in_several_groups(lab):
    r = httpx.put(lab.api + "/v1/policy", json=_many_groups(), timeout=60)
    assert r.status_code == 200, r.text
    try:
        numbers = {g["name"]: g["bit"] for g in lab.get("/v1/groups")}
        assert numbers["g151"] > 64, numbers
        hv1 = flows_text(lab.mgmt("hv1"))
        assert any("conjunction(" in ln for ln in hv1) and any("conj_id=" in ln for ln in hv1)
        assert reach(lab, "app-1", "db-2", "tcp", 5432)  # control: app -> db still allowed
        assert reach(lab, "app-1", "db-1", "tcp", 5432)  # (across hosts too)
        assert not reach(lab, "app-2", "db-1", "tcp", 5432)  # app-2 is in g150 too: isolated
        assert not reach(lab, "app-2", "db-2", "tcp", 5432)
        assert reach(lab, "app-2", "guest-1", "udp", 9000)  # g151 -> guest
        assert not reach(lab, "app-1", "guest-1", "udp", 9000)  # app alone: default deny
        assert reach(lab, "web-1", "api-1", "tcp", 8443)  # the finance rules unchanged
        assert not reach(lab, "web-1", "pay-1", "tcp", 5432)
        verdicts = httpx.post(lab.api + "/v1/verify", timeout=120).json()
        assert {tuple(v["pair"]): v["status"] for v in verdicts} == {
            ("payroll", "frontend"): "isolated", ("g150", "db"): "isolated"}, verdicts
    finally:
        httpx.put(lab.api + "/v1/policy", json=DOC, timeout=60).raise_for_status()
    assert reach(lab, "app-2", "db-1", "tcp", 5432)  # the document back: allowed again
    assert not any("conj_id=" in ln for ln in flows_text(lab.mgmt("hv1")))


def _gateway_lladdr(lab, vm: str, ip: str) -> str | None:
    """The MAC the VM's kernel resolved ``ip`` to (after one ping: the ARP is what
    counts here, the echo itself is not routed yet), or None."""
    host, dev = lab.host(vm), nic(lab, vm)
    host.cmd(f"ip neigh flush dev {dev}; ping -c 1 -W 1 {ip} >/dev/null 2>&1")
    m = re.search(r"lladdr ([0-9a-f:]{17})", host.cmd(f"ip neigh show {ip} dev {dev}"))
    return m.group(1) if m else None


def test_a_routed_gateway_answers_arp_with_the_routers_mac(lab):
    """dmz joined by router r1 (gateway 10.20.0.254): a VM there resolves its gateway to
    r1's MAC, answered by its host's switch. prod gets a gateway but no router: nobody
    answers for it (an ARP for an unknown address is dropped, never flooded)."""
    from vfence.controller.addresses import router_mac

    doc = copy.deepcopy(DOC)
    dmz = next(s for s in doc["segments"] if s["name"] == "dmz")
    dmz.update(gateway="10.20.0.254", gateway6="fd00:20::fe")
    prod = next(s for s in doc["segments"] if s["name"] == "prod")
    prod["gateway"] = "10.0.0.254"
    doc["routers"] = [{"name": "r1", "segments": ["dmz"]}]
    r = httpx.put(lab.api + "/v1/policy", json=doc, timeout=60)
    assert r.status_code == 200, r.text
    try:
        assert [x["mac"] for x in lab.get("/v1/routers")] == [router_mac("r1")]
        assert _gateway_lladdr(lab, "app-1", IP["app-2"]) == MAC["app-2"]  # control
        for vm in ("app-1", "guest-1", "app-2"):  # hv3, hv2 (or wherever), hv1
            assert _gateway_lladdr(lab, vm, "10.20.0.254") == router_mac("r1"), vm
        assert _gateway_lladdr(lab, "web-1", "10.0.0.254") is None  # no router: no answer
        assert _gateway_lladdr(lab, "web-1", IP["pay-1"]) == MAC["pay-1"]  # control
    finally:
        httpx.put(lab.api + "/v1/policy", json=DOC, timeout=60).raise_for_status()
    assert lab.get("/v1/routers") == []
    assert _gateway_lladdr(lab, "app-1", "10.20.0.254") is None  # the answer went with r1
