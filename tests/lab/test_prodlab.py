"""Smoke test of the production-shaped lab (mininet_topos/prodlab.py): one Open vSwitch
per hypervisor and fabric switch, each in its own network namespace, every bridge br-int.

3 hypervisors x 2 VMs (vmH1 blue, vmH2 red), 2 fabric switches.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest

from mininet_topos.datacenter import default_plan, hv_name
from mininet_topos.lab import ping_stream_result, start_ping_stream
from mininet_topos.prodlab import BRIDGE, ProdLab, migrate

from .conftest import ports, probe, serve

PLAN = default_plan(3, 2)
IP = {p.name: p.ip for p in PLAN}
SWITCHES = ("hv1", "hv2", "hv3", "sp1", "sp2")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    of_port, api_port = ports()
    work = tmp_path_factory.mktemp("prodlab")
    t0 = time.monotonic()
    with ProdLab(3, 2, PLAN, db_url=f"sqlite:///{work}/vfence.db", workdir=work,
                 of_port=of_port, api_port=api_port) as lab:
        lab.timings["up"] = time.monotonic() - t0
        (work / "timings.txt").write_text(repr(lab.timings))
        yield lab


def netns(pid: int) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def ovs_daemons_by_netns() -> Counter:
    """(daemon, netns inode) of every OVS daemon on the machine."""
    found: Counter = Counter()
    for proc in Path("/proc").iterdir():
        try:
            comm = (proc / "comm").read_text().strip()
            if comm in ("ovs-vswitchd", "ovsdb-server"):
                found[comm, netns(int(proc.name))] += 1
        except (OSError, ValueError):
            continue
    return found


def get(sw, *args: str) -> str:
    return sw.run("ovs-vsctl", "get", *args).strip().strip('"')


def test_one_ovs_per_switch_each_in_its_own_namespace(lab):
    root = netns(os.getpid())
    daemons = ovs_daemons_by_netns()
    seen = set()
    for sw in lab.switches:
        pids = sw.daemon_pids()
        assert set(pids) == {"ovsdb-server", "ovs-vswitchd"}, (sw.name, pids)
        here = netns(sw.pid)  # the node's shell: the switch's namespace
        assert {netns(p) for p in pids.values()} == {here}, sw.name
        assert here != root and here not in seen, sw.name
        seen.add(here)
        assert daemons["ovs-vswitchd", here] == daemons["ovsdb-server", here] == 1, sw.name
        # one bridge, br-int, reachable over its own management socket
        assert sw.run("ovs-vsctl", "list-br").split() == [BRIDGE], sw.name
        assert f"dpid:{sw.dpid:016x}" in sw.ofctl("show"), sw.name
        assert get(sw, "Open_vSwitch", ".", "external_ids:vfence-host") == sw.name
    assert len(seen) == len(SWITCHES)
    for h in range(1, 4):
        sw = lab.switch(hv_name(h))
        fabric = sw.run("ovs-vsctl", "--bare", "--columns=name", "find", "Interface",
                        "external_ids:vfence-fabric=true").split()
        assert sorted(fabric) == ["fab-sp1", "fab-sp2"]
        for p in (p for p in PLAN if p.host == h):
            hv, port = lab.vm_port(p.name)
            assert hv == sw.name
            assert get(sw, "Interface", port, "external_ids:attached-mac") == p.mac
            assert get(sw, "Interface", port, "external_ids:iface-id") == p.name
    for s in ("sp1", "sp2"):
        assert get(lab.switch(s), "Bridge", BRIDGE, "external_ids:vfence-role") == "fabric"


def test_same_segment_across_hypervisors_and_not_across_segments(lab):
    assert lab.ping("vm11", "vm21") and lab.ping("vm21", "vm31")  # blue
    assert lab.ping("vm12", "vm32") and lab.ping("vm32", "vm22")  # red
    assert not lab.ping("vm11", "vm22", tries=1)
    assert not lab.ping("vm31", "vm12", tries=1)
    serve(lab.host("vm31"), "tcp", 9000, seconds=60)  # TCP needs checksum offload off
    time.sleep(0.5)
    assert probe(lab.host("vm11"), [("tcp", IP["vm31"], 9000)]) == {
        ("tcp", IP["vm31"], 9000): True}


def test_hosts_are_named_by_their_vfence_host_id(lab):
    """Needs the controller to read external_ids:vfence-host (every bridge is br-int)."""
    hosts = {h["name"]: h["dpid"] for h in lab.get("/v1/hosts")}
    assert hosts == {n: f"{lab.switch(n).dpid:016x}" for n in SWITCHES}
    for p in PLAN:
        assert lab.get(f"/v1/vms/{p.name}/location")["host"]["name"] == hv_name(p.host)


def test_live_migration_keeps_a_ping_stream(lab, tmp_path):
    """vm31 (blue) moves hv3 -> hv2 while vm11 pings it every 10 ms."""
    start_ping_stream(lab.host("vm11"), IP["vm31"], tmp_path / "peer.txt", 400)
    time.sleep(1)
    mig = migrate(lab, "vm31", "hv2")
    sent, got = ping_stream_result(tmp_path / "peer.txt")
    assert sent - got <= 10, (sent, got)  # at most ~100 ms of 10 ms pings lost
    assert lab.vm_port("vm31") == ("hv2", mig.new_port)
    assert mig.old_port not in lab.switch("hv3").run("ovs-vsctl", "list-ports", BRIDGE).split()

    def moved() -> bool:
        loc = lab.get("/v1/vms/vm31/location")
        return bool(loc) and loc["host"]["dpid"] == f"{0x102:016x}" \
            and loc["port"]["name"] == mig.new_port

    lab.wait_for(moved, 10, "vm31's location on hv2")
    assert lab.ping("vm21", "vm31") and not lab.ping("vm22", "vm31", tries=1)
