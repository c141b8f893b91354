"""Live migration on the production-shaped lab: the network and the policy follow the VM.

Finance lab (hv1: pay-1 web-1 | hv2: pay-2 api-1 | hv3: web-2 ops-1, plus the dmz VMs);
the controller may learn from first frames on hv3 only. These tests run last on the
shared lab: they move VMs.
"""

from __future__ import annotations

import re
import sys
import time

import httpx

from vfence.controller.flows import Owner, cookie
from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.prodlab import migrate

from ..conftest import ATTACKS, SOCK, Capture, probe, serve, vm_id
from .conftest import IP, MAC, nic


def where(lab, vm: str) -> str:
    return lab.get(f"/v1/vms/{vm}/location")["host"]["name"]


def vm_flows(lab, host: str, vm_id: int) -> list[str]:
    out = lab.switch(host).ofctl("dump-flows", "--no-stats",
                                 f"cookie={cookie(Owner.VM, vm_id):#x}/-1")
    return [ln.strip() for ln in out.splitlines() if "actions=" in ln]


def assert_only_remote_flows(lab, host: str, vid: int, old_port: str) -> None:
    """The old host keeps only what any host of the segment has for a remote VM."""
    ofport = lab.switch(host).run("ovs-vsctl", "--if-exists", "get", "Interface", old_port,
                                  "ofport", check=False).strip()
    for ln in vm_flows(lab, host, vid):
        assert re.search(r"table=(2|10|15|40)\b", ln), ln
        assert "in_port=" not in ln, ln  # no port security left on the old port
        if "table=40" in ln:
            assert "push_vlan" in ln, ln  # sent toward the new host, not delivered here
        if ofport:
            assert f"output:{ofport}" not in ln, ln


def test_ovsdb_migration_onto_the_isolated_groups_host(lab, tmp_path):
    """web-2 (frontend) moves hv3 -> hv2, where pay-2 (payroll) runs."""
    vid = vm_id([lab.mgmt(h["name"]) for h in lab.get("/v1/hosts")], MAC["web-2"])
    # an allowed peer, then the isolated group on the target host and on another host
    start_ping_stream(lab.host("web-1"), IP["web-2"], tmp_path / "peer.txt", 400)
    start_ping_stream(lab.host("pay-2"), IP["web-2"], tmp_path / "iso-local.txt", 400)
    start_ping_stream(lab.host("pay-1"), IP["web-2"], tmp_path / "iso-far.txt", 400)
    time.sleep(1)
    mig = migrate(lab, "web-2", "hv2", announce=False)
    time.sleep(3.5)
    sent, got = ping_stream_result(tmp_path / "peer.txt")
    assert sent - got <= 20, (sent, got)  # at most ~200 ms of 10 ms pings (bench: real figure)
    for stream in ("iso-local.txt", "iso-far.txt"):
        assert ping_stream_result(tmp_path / stream)[1] == 0, stream  # not one packet, ever
    assert where(lab, "web-2") == "hv2"
    hist = lab.get("/v1/vms/web-2/history")
    assert [h["host"]["name"] for h in hist[-2:]] == ["hv3", "hv2"]
    assert hist[-1]["how"] == "ovsdb" and hist[-2]["until"] is not None
    assert hist[-1]["convergence_ms"] is not None
    assert_only_remote_flows(lab, "hv3", vid, mig.old_port)
    assert lab.ping("web-1", "web-2") and not lab.ping("pay-2", "web-2", tries=1)
    moved = lab.get("/v1/events?type=vm-moved&vm=web-2")
    assert moved and moved[-1]["host"] == "hv2"


def test_long_lived_tcp_survives_server_migration(lab, tmp_path):
    """web-1 -> api-1 tcp/8443 with data both ways while api-1 moves hv2 -> hv3."""
    out = tmp_path / "stream.txt"
    lab.host("web-1").cmd(f"{sys.executable} {SOCK} stream {IP['api-1']} 8443 6 > {out} &")
    time.sleep(1.5)
    migrate(lab, "api-1", "hv3")
    time.sleep(6)
    res = dict(kv.split("=") for kv in out.read_text().split())
    assert res["broken"] == "0", res
    assert int(res["ok"]) > 100, res
    assert where(lab, "api-1") == "hv3"
    # nothing was opened that the policy would not: the other direction is still closed
    serve(lab.host("web-1"), "tcp", 8443, 30)
    assert not probe(lab.host("api-1"), [("tcp", IP["web-1"], 8443)])[("tcp", IP["web-1"],
                                                                         8443)]


def test_pre_announced_migration(lab):
    """ops-1 moves hv3 -> hv1 with no external_ids: only the announcement lets its first
    frame bind it (hv1 does not learn from first frames)."""
    r = httpx.post(f"{lab.api}/v1/vms/ops-1/migrations", json={"target_host": "hv1"})
    assert r.status_code == 202 and r.json()["state"] == "prepared", r.text
    migrate(lab, "ops-1", "hv1", libvirt_ids=False)
    lab.wait_for(lambda: where(lab, "ops-1") == "hv1", 10, "ops-1 on hv1")
    assert lab.get("/v1/vms/ops-1/history")[-1]["how"] == "announce"
    assert lab.ping("ops-1", "pay-1") is False  # still only tcp/22 is allowed
    serve(lab.host("pay-1"), "tcp", 22, 30)
    time.sleep(0.3)
    assert probe(lab.host("ops-1"), [("tcp", IP["pay-1"], 22)])[("tcp", IP["pay-1"], 22)]


def test_unannounced_move_without_ids_is_not_learnt_where_not_allowed(lab):
    """pay-1 moves hv1 -> hv2 with no external_ids and no announcement: hv2 may not
    learn from first frames, so pay-1 stays unbound there (fail closed)."""
    migrate(lab, "pay-1", "hv2", libvirt_ids=False)
    time.sleep(1.5)
    r = httpx.get(f"{lab.api}/v1/vms/pay-1/location")
    assert r.status_code == 404  # its old port went, nothing new was trusted
    assert not lab.ping("pay-1", "pay-2", tries=1)


def test_first_frame_migration_where_allowed(lab):
    """...but hv3 may learn: the same kind of move onto hv3 binds on the first RARP."""
    migrate(lab, "pay-1", "hv3", libvirt_ids=False)
    lab.wait_for(lambda: (lab.get("/v1/vms/pay-1") or {}).get("location") is not None, 10,
                 "pay-1 bound")
    assert where(lab, "pay-1") == "hv3"
    assert lab.get("/v1/vms/pay-1/history")[-1]["how"] == "first-frame"
    assert lab.ping("pay-1", "pay-2")


def test_registered_mac_from_another_bound_port_is_a_spoof(lab, tmp_path):
    """web-1 sends with pay-2's MAC: refused (no move), dropped, audited."""
    before = where(lab, "pay-2")
    cap = Capture(lab.host("api-1"), nic(lab, "api-1"), tmp_path / "api1.pcap")
    out = lab.host("web-1").cmd(f"{sys.executable} {ATTACKS} {nic(lab, 'web-1')} vfspoof macspoof "
                                f"{MAC['pay-2']} {MAC['api-1']} {IP['api-1']}; echo rc=$?")
    assert "rc=0" in out, out
    assert probe(lab.host("web-1"), [("tcp", IP["api-1"], 8443)])  # control: web-1 is up
    assert not [f for f in cap.stop() if b"vfspoof" in bytes(f)]

    def audited():
        evs = lab.get("/v1/events?type=spoof-dropped&vm=web-1") or []
        return [e for e in evs if e["detail"]["kind"] == "spoofed-source"]
    lab.wait_for(lambda: bool(audited()), 10, "spoof audit event")
    assert where(lab, "pay-2") == before
    assert not lab.get("/v1/events?type=vm-moved&vm=pay-2")


def test_unannounced_move_on_a_learning_host_completes_when_the_old_port_goes(lab, tmp_path):
    """guest-1 moves hv2 -> hv3 (which learns from first frames) with no ids and no
    announcement, and its old tap stays up until the source removes it, as QEMU's does.
    Its frames from hv3 are refused while the old port is up (that is what stops a theft)
    and the move completes the moment the old port goes: the outage is that gap."""
    out = tmp_path / "stream.txt"
    start_ping_stream(lab.host("guest-1"), IP["app-1"], out, 400)
    time.sleep(0.5)
    mig = migrate(lab, "guest-1", "hv3", libvirt_ids=False, old_link_down=False,
                  remove_old_after=1.0)
    sent, got = ping_stream_result(out)
    loc = lab.get("/v1/vms/guest-1/location")
    assert loc["host"]["name"] == "hv3" and loc["port"]["name"] == mig.new_port
    assert lab.get("/v1/vms/guest-1/history")[-1]["how"] == "first-frame"
    lost = sent - got
    stall = re.search(r"rtt min/avg/max/mdev = [\d.]+/[\d.]+/([\d.]+)", out.read_text())
    (tmp_path.parent / "unannounced-outage.txt").write_text(
        f"{lost} of {sent} pings lost, longest round trip {stall and stall.group(1)} ms "
        f"(pings queued in the guest while its new port was refused)\n")
    longest = float(stall.group(1)) if stall else 0.0
    # the frames refused while the old port was up show as lost pings, or as pings the
    # guest queued until the move completed (a CI run: 0 of 400 lost, longest round trip
    # 1,026 ms); either way about the 1 s until the old port went, not more
    assert lost > 0 or longest > 500, (sent, got, longest)
    assert lost < 250 and longest < 2500, (sent, got, longest)
    assert lab.ping("guest-1", "app-1")


def _learned(lab, host: str, vid: int) -> list[str]:
    out = lab.switch(host).ofctl("dump-flows", "--no-stats",
                                 f"cookie={cookie(Owner.LEARNED, vid):#x}/-1")
    return [ln.strip() for ln in out.splitlines() if "actions=" in ln]


def test_the_datapath_switches_over_on_the_first_frame_with_the_controller_stopped(
        lab, tmp_path):
    """web-1 moves hv1 -> hv3 while the controller is frozen (SIGSTOP) from the moment its
    standby port is ready: QEMU's first RARP from hv3 makes every host send to the new
    port by itself (learn()), so web-2 on hv2 keeps reaching web-1 and the payroll VMs
    (pay-2 on hv2, pay-1 wherever earlier tests left it) still reach nothing. Once the
    controller runs again it confirms the move and removes every learned flow."""
    import os
    import signal
    import threading

    vid = vm_id([lab.mgmt(h["name"]) for h in lab.get("/v1/hosts")], MAC["web-1"])
    assert where(lab, "web-1") == "hv1"
    assert lab.ping("web-2", "web-1")  # positive control before anything moves
    moved: list = []
    mover = threading.Thread(target=lambda: moved.append(
        migrate(lab, "web-1", "hv3", precopy=3.0)))
    mover.start()
    lab.wait_for(lambda: "learn(" in lab.switch("hv3").ofctl("dump-flows", "--no-stats",
                                                              "table=0"),
                 10, "web-1's standby port prepared on hv3")
    assert lab.proc is not None
    os.killpg(lab.proc.pid, signal.SIGSTOP)
    try:
        mover.join(30)
        assert moved, "the migration did not finish"
        for host in ("hv1", "hv2", "hv3"):  # the RARP reached every host of the segment
            lab.wait_for(lambda host=host: bool(_learned(lab, host, vid)), 5,
                         f"{host} learned web-1's new place")
        start_ping_stream(lab.host("web-2"), IP["web-1"], tmp_path / "peer.txt", 150)
        start_ping_stream(lab.host("pay-2"), IP["web-1"], tmp_path / "iso-far.txt", 150)
        start_ping_stream(lab.host("pay-1"), IP["web-1"], tmp_path / "iso-local.txt", 150)
        sent, got = ping_stream_result(tmp_path / "peer.txt")
        isolated = [ping_stream_result(tmp_path / f)[1]
                    for f in ("iso-far.txt", "iso-local.txt")]
    finally:
        os.killpg(lab.proc.pid, signal.SIGCONT)
    assert got >= sent - 5, (sent, got)  # delivered with the controller frozen
    assert isolated == [0, 0], isolated  # not one packet between the isolated groups
    lab.wait_for(lambda: (lab.get("/v1/vms/web-1") or {}).get("location") and
                 where(lab, "web-1") == "hv3", 20, "the controller confirmed")
    # a move, though the frozen controller hears of the old port's link, the new port
    # and its frames late and out of order: never unbound on the way
    assert not lab.get("/v1/events?type=vm-unbound&vm=web-1")
    assert lab.get("/v1/events?type=vm-moved&vm=web-1")
    for host in ("hv1", "hv2", "hv3"):
        lab.wait_for(lambda host=host: not _learned(lab, host, vid), 10,
                     f"{host}'s learned flow removed")
    assert lab.ping("web-2", "web-1") and not lab.ping("pay-1", "web-1", tries=1)
    verdicts = httpx.post(lab.api + "/v1/verify", timeout=120).json()
    assert [(v["pair"], v["status"]) for v in verdicts] == [
        (["payroll", "frontend"], "isolated")], verdicts
