"""The production-shaped lab itself (mininet_topos/prodlab.py): one Open vSwitch per
hypervisor and fabric switch, each in its own network namespace, every bridge br-int,
hosts named from their OVSDB. Runs first on the shared lab (see conftest.py).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

from vfence.mininet_topos.datacenter import hv_name
from vfence.mininet_topos.lab import ping_stream_result, start_ping_stream
from vfence.mininet_topos.prodlab import BRIDGE, migrate

from ..conftest import probe
from .conftest import IP, PLAN, SWITCHES


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
        for p in (p for p in PLAN if p.host == h and p.register):
            hv, port = lab.vm_port(p.name)
            assert hv == sw.name
            assert get(sw, "Interface", port, "external_ids:attached-mac") == p.mac
            assert get(sw, "Interface", port, "external_ids:iface-id") == p.name
    for s in ("sp1", "sp2"):
        assert get(lab.switch(s), "Bridge", BRIDGE, "external_ids:vfence-role") == "fabric"


def test_same_segment_across_hypervisors_and_not_across_segments(lab):
    assert lab.ping("pay-1", "pay-2") and lab.ping("app-2", "app-1")  # hv1-hv2, hv1-hv3
    assert not lab.ping("app-2", "pay-1", tries=1)  # dmz and prod share hv1, nothing more
    assert not lab.ping("pay-2", "db-1", tries=1)  # and hv2
    # TCP needs checksum offload off on the userspace datapath
    assert probe(lab.host("app-2"), [("tcp", IP["app-1"], 5432)]) == {
        ("tcp", IP["app-1"], 5432): True}


def test_hosts_are_named_by_their_vfence_host_id(lab):
    """Every bridge is br-int: names come from external_ids:vfence-host in each OVSDB."""
    hosts = {h["name"]: h["dpid"] for h in lab.get("/v1/hosts")}
    assert hosts == {n: f"{lab.switch(n).dpid:016x}" for n in SWITCHES}
    for p in PLAN:
        if p.register:
            assert lab.get(f"/v1/vms/{p.name}/location")["host"]["name"] == hv_name(p.host)
    connected = lab.get("/v1/events?type=switch-connected") or []
    assert {e["host"] for e in connected} >= set(SWITCHES)


def test_live_migration_there_and_back_keeps_a_ping_stream(lab, tmp_path):
    """app-1 moves hv3 -> hv2 and back while app-2 pings it every 10 ms."""
    for target, back in (("hv2", "hv3"), ("hv3", "hv2")):
        out = tmp_path / f"to-{target}.txt"
        start_ping_stream(lab.host("app-2"), IP["app-1"], out, 300)
        time.sleep(0.5)
        mig = migrate(lab, "app-1", target)
        sent, got = ping_stream_result(out)
        assert sent - got <= 25, (target, sent, got)  # generous: bench/ has the figure
        assert lab.vm_port("app-1") == (target, mig.new_port)
        assert mig.old_port not in lab.switch(back).run("ovs-vsctl", "list-ports",
                                                        BRIDGE).split()

        def moved(target=target, mig=mig) -> bool:
            loc = lab.get("/v1/vms/app-1/location")
            return bool(loc) and loc["host"]["name"] == target \
                and loc["port"]["name"] == mig.new_port

        lab.wait_for(moved, 10, f"app-1's location on {target}")
    assert lab.ping("app-2", "app-1") and not lab.ping("pay-1", "app-1", tries=1)
