"""The production-shaped lab that every test in this package shares (one lab for this
shape per session): one Open vSwitch per hypervisor and fabric switch, each in its own
network namespace, every bridge ``br-int``, the controller started with one ``--ovsdb``
per host, learning from first frames on hv3 only.

Policy: the finance scenario (mininet_topos/finance.yaml) plus a ``dmz`` segment where
guest -> db is denied and guest may otherwise reach anyone (the attack suite's case):

hv1: pay-1 (payroll), web-1 (frontend)    app-2 (app)
hv2: pay-2 (payroll), api-1 (finance-api) guest-1 (guest), db-1 (db)
hv3: web-2 (frontend), ops-1 (ops)        db-2 (db), app-1 (app), rogue (unregistered)
"""

from __future__ import annotations

import copy

import pytest
import yaml

from vfence.mininet_topos.datacenter import (
    FINANCE_PLACEMENT,
    FINANCE_POLICY,
    VMPlan,
    plan_from_policy,
)
from vfence.mininet_topos.prodlab import ProdLab

from ..conftest import ports, serve

FINANCE = yaml.safe_load(FINANCE_POLICY.read_text())
DMZ_VMS = [  # name, host, group, index
    ("guest-1", 2, "guest", 0x11), ("db-1", 2, "db", 0x12), ("db-2", 3, "db", 0x13),
    ("app-1", 3, "app", 0x14), ("app-2", 1, "app", 0x15),
]


def _doc() -> dict:
    doc = copy.deepcopy(FINANCE)
    doc["segments"].append({"name": "dmz", "subnet": "10.20.0.0/16",
                            "subnet6": "fd00:20::/64"})
    doc["groups"] += [{"name": g} for g in ("guest", "db", "app")]
    doc["vms"] += [{"name": n, "mac": f"00:00:00:00:0d:{i:02x}", "segment": "dmz",
                    "ips": [f"10.20.0.{i}", f"fd00:20::{i:x}"], "groups": [g]}
                   for n, _, g, i in DMZ_VMS]
    doc["rules"] += [
        {"name": "guest-db", "from": "guest", "to": "db", "action": "deny"},
        {"name": "guest-out", "from": "guest", "to": "any", "action": "allow"},
        {"name": "app-db", "from": "app", "to": "db", "protocol": "tcp", "ports": "5432",
         "action": "allow"},
    ]
    return doc


DOC = _doc()
PLACEMENT = FINANCE_PLACEMENT | {n: h for n, h, _, _ in DMZ_VMS}
# the routing tests' VMs: plugged like every VM, registered only by the routed policy
# those tests apply (test_routing.py), so the rest of the lab never sees them
ROUTED_VMS = [  # name, host, segment, ip, groups
    ("rweb-1", 1, "rweb", "10.30.1.11", ("rweb",)),
    ("rfront", 1, "rweb", "10.30.1.21", ("rweb", "rfront")),
    ("rdb-1", 2, "rdb", "10.30.2.11", ("rdb",)),
    ("rpay-1", 1, "rdb", "10.30.2.21", ("rdb", "rpay")),
    ("rpay-2", 2, "rdb", "10.30.2.22", ("rdb", "rpay")),
    ("rlab-1", 3, "rlab", "10.30.9.11", ("rlab",)),
]
PLAN = plan_from_policy(DOC, PLACEMENT) + [
    VMPlan("rogue", 3, "dmz", "00:00:00:00:0d:99", "10.20.0.99", register=False, prefix=16)
] + [VMPlan(n, h, seg, f"00:00:00:00:0e:{i:02x}", ip, groups, register=False, prefix=24)
     for i, (n, h, seg, ip, groups) in enumerate(ROUTED_VMS, start=1)]
IP = {p.name: p.ip for p in PLAN}
MAC = {p.name: p.mac for p in PLAN}
IP6 = {n: f"fd00:20::{i:x}" for n, _, _, i in DMZ_VMS}
HOSTS = {p.name: f"hv{p.host}" for p in PLAN}
SWITCHES = ("hv1", "hv2", "hv3", "sp1", "sp2")
TCP_PORTS = (22, 80, 5432, 8443)
UDP_PORTS = (53, 9000)


def ofport(lab, vm: str) -> int:
    """The OpenFlow port a VM's interface has now on its switch."""
    hv, port = lab.vm_port(vm)
    return int(lab.switch(hv).run("ovs-vsctl", "get", "Interface", port, "ofport"))


def nic(lab, vm: str) -> str:
    """A VM's interface now (a migration gives it a new one)."""
    return lab.host(vm).defaultIntf().name


@pytest.fixture(scope="package")
def lab(tmp_path_factory):
    of_port, api_port = ports()
    work = tmp_path_factory.mktemp("prod")
    registered = {p.name for p in PLAN if p.register}
    routed = {n for n, *_ in ROUTED_VMS}
    with ProdLab(3, 2, PLAN, db_url=f"sqlite:///{work}/vfence.db", workdir=work,
                 of_port=of_port, api_port=api_port, policy=DOC,
                 libvirt_ids=registered | routed,
                 ipv6=True, extra_args=("--learn-first-frame-on", "hv3")) as lab:
        for name in registered:
            host = lab.host(name)
            if name in IP6:
                host.cmd(f"ip -6 addr add {IP6[name]}/64 dev {name}-eth0 nodad")
            for port in TCP_PORTS:
                serve(host, "tcp", port)
            for port in UDP_PORTS + (9050,):
                serve(host, "udp", port)
        yield lab


ORDER = ("test_prodlab", "test_policy", "test_attacks", "test_routing", "test_external",
         "test_console", "test_migration")


def pytest_collection_modifyitems(config, items):
    """Migrations move VMs: they run last on the shared lab."""
    def rank(item):
        mod = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return ORDER.index(mod) if mod in ORDER else len(ORDER)
    mine = [i for i in items if "/tests/lab/prod/" in str(i.fspath)]
    if mine:
        start = items.index(mine[0])
        rest = [i for i in items if i not in mine]
        items[:] = rest[:start] + sorted(mine, key=rank) + rest[start:]
