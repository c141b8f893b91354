"""Live migration on real OVS: the network and the policy follow the VM.

Finance lab (hv1: pay-1 web-1 | hv2: pay-2 api-1 | hv3: web-2 ops-1); the controller
may learn from first frames on hv3 only.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import pytest
import yaml

from controller.flows import Owner, cookie
from mininet_topos.datacenter import FINANCE_PLACEMENT, FINANCE_POLICY, plan_from_policy
from mininet_topos.lab import Lab, ping_stream_result, start_ping_stream
from mininet_topos.migration import migrate

from .conftest import SOCK, attack, ports, serve, vm_id

DOC = yaml.safe_load(FINANCE_POLICY.read_text())
PLAN = {p.name: p for p in plan_from_policy(DOC, FINANCE_PLACEMENT)}
IP = {n: p.ip for n, p in PLAN.items()}
MAC = {n: p.mac for n, p in PLAN.items()}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    of_port, api_port = ports()
    work = tmp_path_factory.mktemp("migration")
    with Lab(3, 2, list(PLAN.values()), db_url=f"sqlite:///{work}/vfence.db", workdir=work,
              of_port=of_port, api_port=api_port, policy=DOC,
              extra_args=("--learn-first-frame-on", "hv3")) as lab:
        serve(lab.host("api-1"), "tcp", 8443)
        yield lab


def where(lab, vm: str) -> str:
    return lab.get(f"/v1/vms/{vm}/location")["host"]["name"]


def vm_flows(bridge: str, vm_id: int) -> list[str]:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge,
                          f"cookie={cookie(Owner.VM, vm_id):#x}/-1"], capture_output=True,
                         text=True, check=True).stdout
    return [ln.strip() for ln in out.splitlines() if "actions=" in ln]


def assert_only_remote_flows(bridge: str, vid: int, old_port: str) -> None:
    """The old host keeps only what any host of the segment has for a remote VM."""
    ofport = subprocess.run(["ovs-vsctl", "--if-exists", "get", "Interface", old_port,
                             "ofport"], capture_output=True, text=True).stdout.strip()
    for ln in vm_flows(bridge, vid):
        assert re.search(r"table=(2|10|15|40)\b", ln), ln
        assert "in_port=" not in ln, ln  # no port security left on the old port
        if "table=40" in ln:
            assert "push_vlan" in ln, ln  # sent toward the new host, not delivered here
        if ofport:
            assert f"output:{ofport}" not in ln, ln


def test_ovsdb_migration_onto_the_isolated_groups_host(lab, tmp_path):
    """web-2 (frontend) moves hv3 -> hv2, where pay-2 (payroll) runs."""
    vid = vm_id([h["name"] for h in lab.get("/v1/hosts")], MAC["web-2"])
    # an allowed peer, then the isolated group on the target host and on another host
    start_ping_stream(lab.host("web-1"), IP["web-2"], tmp_path / "peer.txt", 400)
    start_ping_stream(lab.host("pay-2"), IP["web-2"], tmp_path / "iso-local.txt", 400)
    start_ping_stream(lab.host("pay-1"), IP["web-2"], tmp_path / "iso-far.txt", 400)
    time.sleep(1)
    mig = migrate(lab.net, PLAN["web-2"], "hv2", announce=False)
    time.sleep(3.5)
    sent, got = ping_stream_result(tmp_path / "peer.txt")
    assert sent - got <= 5, (sent, got)  # at most a few 10 ms pings lost
    for probe in ("iso-local.txt", "iso-far.txt"):
        assert ping_stream_result(tmp_path / probe)[1] == 0, probe  # not one packet, ever
    assert where(lab, "web-2") == "hv2"
    hist = lab.get("/v1/vms/web-2/history")
    assert [h["host"]["name"] for h in hist[-2:]] == ["hv3", "hv2"]
    assert hist[-1]["how"] == "ovsdb" and hist[-2]["until"] is not None
    assert hist[-1]["convergence_ms"] is not None
    assert_only_remote_flows("hv3", vid, mig.old_port)
    assert lab.ping("web-1", "web-2") and not lab.ping("pay-2", "web-2", tries=1)
    moved = lab.get("/v1/events?type=vm-moved&vm=web-2")
    assert moved and moved[-1]["host"] == "hv2"


def test_long_lived_tcp_survives_server_migration(lab, tmp_path):
    """web-1 -> api-1 tcp/8443 with data both ways while api-1 moves hv2 -> hv3."""
    out = tmp_path / "stream.txt"
    lab.host("web-1").cmd(f"{sys.executable} {SOCK} stream {IP['api-1']} 8443 6 > {out} &")
    time.sleep(1.5)
    migrate(lab.net, PLAN["api-1"], "hv3")
    time.sleep(6)
    res = dict(kv.split("=") for kv in out.read_text().split())
    assert res["broken"] == "0", res
    assert int(res["ok"]) > 100, res
    assert where(lab, "api-1") == "hv3"
    # nothing was opened that the policy would not: the other direction is still closed
    serve(lab.host("web-1"), "tcp", 8443, 30)
    from .conftest import probe
    assert not probe(lab.host("api-1"), [("tcp", IP["web-1"], 8443)])[("tcp", IP["web-1"],
                                                                         8443)]


def test_pre_announced_migration(lab):
    """ops-1 moves hv3 -> hv1 with no external_ids: only the announcement lets its first
    frame bind it (hv1 does not learn from first frames)."""
    r = httpx.post(f"{lab.api}/v1/vms/ops-1/migrations", json={"target_host": "hv1"})
    assert r.status_code == 202 and r.json()["state"] == "prepared", r.text
    migrate(lab.net, PLAN["ops-1"], "hv1", libvirt_ids=False)
    lab.wait_for(lambda: where(lab, "ops-1") == "hv1", 10, "ops-1 on hv1")
    assert lab.get("/v1/vms/ops-1/history")[-1]["how"] == "announce"
    assert lab.ping("ops-1", "pay-1") is False  # still only tcp/22 is allowed
    from .conftest import probe
    serve(lab.host("pay-1"), "tcp", 22, 30)
    time.sleep(0.3)
    assert probe(lab.host("ops-1"), [("tcp", IP["pay-1"], 22)])[("tcp", IP["pay-1"], 22)]


def test_unannounced_move_without_ids_is_not_learnt_where_not_allowed(lab):
    """pay-1 moves hv1 -> hv2 with no external_ids and no announcement: hv2 may not
    learn from first frames, so pay-1 stays unbound there (fail closed)."""
    migrate(lab.net, PLAN["pay-1"], "hv2", libvirt_ids=False)
    time.sleep(1.5)
    r = httpx.get(f"{lab.api}/v1/vms/pay-1/location")
    assert r.status_code == 404  # its old port went, nothing new was trusted
    assert not lab.ping("pay-1", "pay-2", tries=1)


def test_first_frame_migration_where_allowed(lab):
    """...but hv3 may learn: the same kind of move onto hv3 binds on the first RARP."""
    migrate(lab.net, PLAN["pay-1"], "hv3", libvirt_ids=False)
    lab.wait_for(lambda: (lab.get("/v1/vms/pay-1") or {}).get("location") is not None, 10,
                 "pay-1 bound")
    assert where(lab, "pay-1") == "hv3"
    assert lab.get("/v1/vms/pay-1/history")[-1]["how"] == "first-frame"
    assert lab.ping("pay-1", "pay-2")


def test_registered_mac_from_another_bound_port_is_a_spoof(lab):
    """web-1 sends with pay-2's MAC: refused (no move), dropped, audited."""
    before = where(lab, "pay-2")
    attack(lab.host("web-1"), "web-1-eth0", "macspoof", MAC["pay-2"], MAC["api-1"], IP["api-1"])

    def audited():
        evs = lab.get("/v1/events?type=spoof-dropped&vm=web-1") or []
        return [e for e in evs if e["detail"]["kind"] == "spoofed-source"]
    lab.wait_for(lambda: bool(audited()), 10, "spoof audit event")
    assert where(lab, "pay-2") == before
    assert not lab.get("/v1/events?type=vm-moved&vm=pay-2")
