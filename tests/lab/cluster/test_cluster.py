"""A cluster of three controllers on PostgreSQL and OpenFlow roles (issue 13), on the
production-shaped lab: real OVS per host, real member processes, a real database."""

from __future__ import annotations

import collections

import pytest

from vfence.mininet_topos.cluster import wait_until

from .conftest import SWITCHES

pytestmark = pytest.mark.lab


def roles(lab, switch: str) -> dict[int, tuple[str, bool]]:
    """OpenFlow port of each controller the switch lists -> (its role there, connected),
    as the switch's own OVSDB reports them."""
    out = lab.switch(switch).run("ovs-vsctl", "--format=csv", "--data=bare", "--no-headings",
                                 "--columns=target,role,is_connected", "list", "Controller")
    rows = {}
    for line in out.strip().splitlines():
        target, role, connected = line.split(",")
        rows[int(target.rsplit(":", 1)[1])] = (role, connected == "true")
    return rows


def test_three_members_master_two_switches_each_and_each_switch_knows_one_master(lab):
    masters = lab.masters()
    assert set(masters) == set(SWITCHES)
    assert sorted(collections.Counter(masters.values()).values()) == [2, 2, 2]
    port_of = {name: of for name, (of, _) in lab.ports.items()}
    for switch, member in masters.items():
        # (OVS writes a controller's role into its database every few seconds)
        wait_until(lambda s=switch, m=member: roles(lab, s)[port_of[m]] == ("master", True),
                   15, 0.5)
        seen = roles(lab, switch)
        assert seen[port_of[member]] == ("master", True), (switch, seen)
        others = {p: r for p, r in seen.items() if p != port_of[member] and r[1]}
        assert others and all(r[0] == "slave" for r in others.values()), (switch, seen)
    c = lab.cluster()
    assert {m["name"] for m in c["members"] if m["live"]} == {"c1", "c2", "c3"}
    assert all(s["term"] >= 1 for s in c["switches"])
    # the policy holds across members: allowed across hosts, isolated on one host
    assert lab.ping("web-1", "api-1")
    assert not lab.ping("pay-1", "web-1", tries=1)
