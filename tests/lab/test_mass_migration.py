"""20 VMs migrate at once (every VM moves to the next hypervisor): all locations and
flows end up right, and everything that could talk before still can."""

from __future__ import annotations

import subprocess
import threading
import time

import httpx
import pytest

from vfence.controller.flows import Owner, cookie
from vfence.mininet_topos.datacenter import vm
from vfence.mininet_topos.lab import Lab
from vfence.mininet_topos.migration import migrate_many

from .conftest import ports, vm_id

HOSTS = 4
PLAN = [vm(f"m{h}{i}", h, "blue", index=i) for h in range(1, HOSTS + 1) for i in range(1, 6)]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    of_port, api_port = ports()
    work = tmp_path_factory.mktemp("mass")
    with Lab(HOSTS, 2, PLAN, db_url=f"sqlite:///{work}/vfence.db", workdir=work,
              of_port=of_port, api_port=api_port) as lab:
        yield lab


def delivery_ports(bridge: str, vid: int) -> list[str]:
    """FORWARD flows that deliver to VM ``vid`` on a port of this bridge (not labelled
    toward another host)."""
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--no-stats", "dump-flows", bridge,
                          f"table=40,cookie={cookie(Owner.VM, vid):#x}/-1"],
                         capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if "actions=output:" in ln]


def hammer(api: str, stop: threading.Event, results: list[int]) -> None:
    """Registers, reads and removes VMs as fast as it can while the network changes."""
    i = 0
    with httpx.Client(base_url=api, timeout=30) as c:
        while not stop.is_set():
            name = f"h{threading.get_ident() % 1000}-{i}"
            body = {"name": name, "mac": f"02:00:00:{i >> 8 & 255:02x}:{i & 255:02x}:"
                    f"{threading.get_ident() % 251:02x}", "ips": [], "segment": "blue"}
            for r in (c.post("/v1/vms", json=body), c.get("/v1/vms"), c.get("/v1/hosts"),
                      c.get(f"/v1/vms/{name}"), c.delete(f"/v1/vms/{name}"),
                      c.get("/v1/events", params={"type": "vm-moved"})):
                results.append(r.status_code)
            i += 1


def test_twenty_vms_move_at_once_while_the_api_is_hammered(lab):
    target = {p.name: f"hv{p.host % HOSTS + 1}" for p in PLAN}
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=hammer, args=(lab.api, stop, results))
               for _ in range(4)]
    for t in threads:
        t.start()
    try:
        migrate_many(lab.net, [(p, target[p.name]) for p in PLAN])
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert len(results) > 100 and all(s < 500 for s in results), sorted(set(results))
    assert set(results) <= {200, 201, 204}, sorted(set(results))
    leftovers = [v["name"] for v in lab.get("/v1/vms") if v["name"].startswith("h")]
    assert leftovers == []  # every hammer VM was removed again

    def all_moved() -> bool:
        vms = lab.get("/v1/vms") or []
        return all(v["location"] and v["location"]["host"]["name"] == target[v["name"]]
                   for v in vms) and len(vms) == len(PLAN)
    lab.wait_for(all_moved, 30, "all 20 locations")
    for p in PLAN:
        vid = vm_id([f"hv{h}" for h in range(1, HOSTS + 1)], p.mac)
        for h in range(1, HOSTS + 1):
            n = len(delivery_ports(f"hv{h}", vid))
            assert n == (1 if f"hv{h}" == target[p.name] else 0), (p.name, h)
        hist = lab.get(f"/v1/vms/{p.name}/history")
        assert [x["host"]["name"] for x in hist][-2:] == [f"hv{p.host}", target[p.name]]
    for i, p in enumerate(PLAN):  # each VM reaches one on another host, after the move
        other = PLAN[(i + 7) % len(PLAN)]
        assert lab.ping(p.name, other.name), (p.name, other.name)
