"""The cluster lab every test in this package shares (one per session): the
production-shaped network (4 hypervisors, 2 fabric switches: 6 switches, each in its own
namespace with its own OVS), three controller members on one real PostgreSQL server, and
a fourth member listed by every switch but started by the scale-out test.

Policy: the finance scenario; placement puts isolated pay-1 and web-1 on one host.

hv1: pay-1 (payroll), web-1 (frontend)   hv2: api-1 (finance-api), rweb-1
hv3: pay-2 (payroll)                      hv4: web-2 (frontend), ops-1 (ops)

rweb-1 is plugged but registered only by the north-south test's policy (a routed
segment). Each member cN has its own BGP address, 198.18.10.(2+N), on the controller's
interface of the uplink network that test builds.
"""

from __future__ import annotations

import pytest
import yaml

from vfence.mininet_topos.cluster import ClusterLab
from vfence.mininet_topos.datacenter import FINANCE_POLICY, VMPlan, plan_from_policy

from ...conftest import fresh_postgres

DOC = yaml.safe_load(FINANCE_POLICY.read_text())
PLACEMENT = {"pay-1": 1, "web-1": 1, "api-1": 2, "pay-2": 3, "web-2": 4, "ops-1": 4}
ROUTED = VMPlan("rweb-1", 2, "rweb", "00:00:00:00:0e:01", "10.30.1.11", ("rweb",),
                register=False, prefix=24)
PLAN = plan_from_policy(DOC, PLACEMENT) + [ROUTED]
IP = {p.name: p.ip for p in PLAN}


def bgp_address(member: str) -> str:
    return f"198.18.10.{2 + int(member.removeprefix('c'))}"

SWITCHES = ("hv1", "hv2", "hv3", "hv4", "sp1", "sp2")


@pytest.fixture(scope="package")
def lab(tmp_path_factory, postgres_url):
    work = tmp_path_factory.mktemp("cluster")
    with ClusterLab(3, 4, 2, PLAN, spare=1, db_url=fresh_postgres(postgres_url),
                    workdir=work, policy=DOC,
                    member_args=lambda name: ("--bgp-address", bgp_address(name))) as lab:
        yield lab
