"""Every flow the compiler emits keeps to the pipeline declared in controller/pipeline.py:
its table is declared, its priority lies in one of that table's bands and its cookie names
the band's owner, gotos only go forward and only to a declared next table, resubmits and
conntrack recirculations only to declared next tables, meters are declared. And the
other way round: every declared band and every declared next table is used, so the
declaration cannot keep what the compiler no longer does."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
from bench.policy_scale import build_state

from vfence.controller import desired, pipeline, policy
from vfence.controller.flows import (
    Flow,
    Owner,
    cookie,
    cookie_owner,
    goto,
    learned,
    match,
    meter,
)
from vfence.controller.model import Binding, NetworkState, PortRef
from vfence.controller.pipeline import TABLE_SPECS, TABLES, Table, table_name

from .netfixtures import FINANCE, FINANCE_ON_3, HV2, HV3, finance, leaf_spine

DOC = Path(__file__).parents[2] / "docs" / "pipeline.md"
METER_IDS = {m.id for m in pipeline.METERS}


def undeclared(f: Flow) -> list[str]:
    """What in ``f`` the declaration does not allow; empty when it keeps to it."""
    spec = TABLE_SPECS.get(f.table)
    if spec is None:
        return [f"table {f.table} is not declared"]
    out = []
    band = spec.band_at(f.priority)
    owner = cookie_owner(f.cookie)
    if band is None:
        out.append(f"priority {f.priority} is in no band of {spec.name}")
    if owner is None or owner[0] not in pipeline.OWNERS:
        out.append(f"cookie {f.cookie:#x} names no declared owner")
    elif band is not None and owner[0] != band.owner:
        out.append(f"{owner[0].name} flow in {spec.name}'s {band.name} band "
                   f"(owned by {band.owner.name})")
    for kind, target in _next_tables(f):
        if target not in spec.next:
            out.append(f"{kind} to {table_name(target)}: not a next table of {spec.name}")
        if kind == "goto" and target <= f.table:
            out.append(f"goto to {table_name(target)} goes backward from {spec.name}")
    out += [f"meter {ins[1]} is not declared" for ins in f.instructions
            if ins[0] == "meter" and ins[1] not in METER_IDS]
    return out


def _next_tables(f: Flow) -> list[tuple[str, int]]:
    """(how, table) for every table ``f`` continues in: goto, resubmit, ct recirculation."""
    out = []
    for ins in f.instructions:
        if ins[0] == "goto":
            out.append(("goto", ins[1]))
        elif ins[0] == "apply":
            out += [("resubmit", a[1]) for a in ins[1] if a[0] == "resubmit"]
            out += [("ct", a[4]) for a in ins[1]
                    if a[0] == "ct" and a[4] != pipeline.CT_NO_RECIRC]
    return out


# --- representative networks ----------------------------------------------------------------

EXTRA_RULES = [  # every kind of endpoint, protocol and action the compiler knows
    {"name": "v6-deny", "from": "fd00::/64", "to": "payroll", "protocol": "tcp",
     "ports": "1-1023", "action": "deny"},
    {"name": "ping6-api", "from": "ops-1", "to": "00:00:00:00:02:03", "protocol": "icmpv6",
     "icmp_type": 128, "action": "allow"},
    {"name": "ops-raw", "from": "ops", "to": "any", "ethertype": 0x88B5, "action": "allow"},
    {"name": "gre-log", "from": "any", "to": "finance-api", "protocol": 47,
     "action": "deny-and-log"},
    {"name": "dns", "from": "00:00:00:00:03:04", "to": "10.0.2.0/24", "protocol": "udp",
     "ports": "53", "action": "allow"},
    {"name": "v6-web", "from": "any", "to": "fd00::20/124", "protocol": "ip", "action": "deny"},
    {"name": "ops-any", "from": "ops", "to": "api-1", "action": "allow"},
    {"name": "icmp-err", "from": "any", "to": "any", "protocol": "icmp", "icmp_type": 3,
     "icmp_code": 4, "action": "allow"},
]


def finance_plus(intra: str = "allow", inter: str = "deny") -> NetworkState:
    """Finance on three hosts and two spines, with IPv6 addresses, more rules and isolation
    pairs, a router, a migration under way (api-1 standby on hv3, web-1 announced to
    hv2)."""
    doc = copy.deepcopy(FINANCE)
    doc["segments"][0]["subnet6"] = "fd00::/64"
    for i, vm in enumerate(doc["vms"], start=1):
        vm["ips"].append(f"fd00::{16 * i:x}")
    doc["rules"] += EXTRA_RULES
    doc["isolation"].append(["ops", "frontend"])
    doc["defaults"] = {"intra_group": intra, "inter_group": inter}
    doc["segments"][0].update(gateway="10.0.0.254", gateway6="fd00::fe")
    doc["routers"] = [{"name": "r1", "segments": [doc["segments"][0]["name"]]}]
    st = finance(leaf_spine(3, 2), FINANCE_ON_3, doc)
    st.segment_tags = {doc["segments"][0]["name"]: 1}
    st.standby["api-1"] = Binding("api-1", PortRef(HV3, 7))
    st.expected["web-1"] = HV2
    return st


def routed() -> NetworkState:
    """test_routing's network with IPv6 on the db segment (its gateway6 answered)."""
    import copy

    from . import test_routing

    st = test_routing._network()
    doc = copy.deepcopy(test_routing.DOC)
    doc["segments"][1].update(subnet6="fd00:10:2::/64", gateway6="fd00:10:2::1")
    doc["vms"] = [{"name": "d9", "mac": "00:00:00:00:09:09", "segment": "db",
                   "ips": ["10.10.2.99", "fd00:10:2::99"]}]
    st.policy = policy.parse(doc)
    return st


def uplinked() -> NetworkState:
    from .test_external import uplinked as build

    return build()


def bridged() -> NetworkState:
    from .test_bridged import bridged_net

    return bridged_net()


NETWORKS = {
    "routed": routed,
    "uplinked": uplinked,
    "bridged": bridged,
    "finance-3-hosts": lambda: finance(leaf_spine(3, 2), FINANCE_ON_3),
    "finance-plus": finance_plus,
    "finance-plus-open": lambda: finance_plus(intra="deny", inter="allow"),
    "bench-scale": lambda: build_state(60, hosts=3, groups=8, rules=30),
}


@pytest.fixture(scope="module")
def compiled() -> dict[str, list[Flow]]:
    """Every compiled flow, and every flow a learn() among them installs."""
    out = {}
    for name, build in NETWORKS.items():
        flows = [f for fl in desired.compile_network(build()).values() for f in fl]
        out[name] = flows + [learned(a) for f in flows for ins in f.instructions
                             if ins[0] == "apply" for a in ins[1] if a[0] == "learn"]
    return out


@pytest.mark.parametrize("network", NETWORKS)
def test_every_compiled_flow_keeps_to_the_declared_pipeline(compiled, network):
    bad = {f: why for f in compiled[network] if (why := undeclared(f))}
    assert not bad, "\n".join(f"{f}: {why}" for f, why in list(bad.items())[:10])


def test_every_declared_band_and_next_table_is_used(compiled):
    flows = [f for fl in compiled.values() for f in fl]
    bands = {(t.name, b.name) for t in TABLES for b in t.bands}
    used = {(TABLE_SPECS[f.table].name, b.name) for f in flows
            if (b := TABLE_SPECS[f.table].band_at(f.priority)) is not None}
    assert bands - used == set()
    edges = {(int(t.number), int(n)) for t in TABLES for n in t.next}
    taken = {(f.table, n) for f in flows for _, n in _next_tables(f)}
    assert edges - taken == set()
    meters = {ins[1] for f in flows for ins in f.instructions if ins[0] == "meter"}
    assert meters == METER_IDS


def test_the_check_reports_what_the_declaration_does_not_allow():
    base, rule = cookie(Owner.BASE), cookie(Owner.RULE, 0)
    fine = Flow(Table.ARP, pipeline.PRIO_MISS, (), (goto(Table.DST_LOOKUP),), base)
    assert undeclared(fine) == []
    cases = {
        # ARP may go on to DST_LOOKUP only
        Flow(Table.ARP, pipeline.PRIO_MISS, (), (goto(Table.FORWARD),), base):
            "goto to forward: not a next table of arp",
        # FORWARD resubmits to FLOOD_POLICY, but a goto there would go backward
        Flow(Table.FORWARD, pipeline.PRIO_MISS, (), (goto(Table.FLOOD_POLICY),), base):
            "goto to flood_policy goes backward from forward",
        Flow(Table.POLICY, 1050, match(eth_type=0x0800), (), rule):
            "priority 1050 is in no band of policy",
        Flow(Table.CLASSIFY, 195, match(in_port=3), (), cookie(Owner.VM, 1)):
            "priority 195 is in no band of classify",
        Flow(Table.POLICY, pipeline.PRIO_DEFAULT, (), (), rule):
            "RULE flow in policy's default band (owned by POLICY)",
        Flow(Table.CLASSIFY, pipeline.PRIO_MISS, (), (meter(9),), base):
            "meter 9 is not declared",
        Flow(Table.FORWARD, pipeline.PRIO_MISS, (), (("apply", (("resubmit", 30),)),), base):
            "resubmit to policy: not a next table of forward",
        Flow(Table.CONNTRACK, pipeline.PRIO_CT_TRACK, (),
             (("apply", (("ct", 0, "reg5", 15, 40),)),), base):
            "ct to forward: not a next table of conntrack",
        Flow(Table.FORWARD, pipeline.PRIO_MISS, (), (), 0x1234):
            "cookie 0x1234 names no declared owner",
        Flow(50, 10, (), (), base): "table 50 is not declared",
    }
    for flow, why in cases.items():
        assert why in undeclared(flow), (flow, undeclared(flow))


def test_declaration_is_consistent():
    assert [int(t.number) for t in TABLES] == sorted(int(t) for t in Table)
    assert len({t.name for t in TABLES}) == len(TABLES)
    for t in TABLES:
        assert set(t.next) <= set(Table) and t.band_at(pipeline.PRIO_MISS).name == "table_miss"
        ranges = sorted((b.low, b.high) for b in t.bands)
        assert all(lo <= hi for lo, hi in ranges)
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False)), t.name
    assert table_name(30) == "policy" and table_name(33) == "nd_reach_rev"
    assert table_name(50) == "table50"
    assert len({m.id for m in pipeline.METERS}) == len(pipeline.METERS)
    # the last rule still sits above the intra-group allows, the first below the plumbing
    assert pipeline.rule_priority(pipeline.MAX_RULES - 1) - 1 > pipeline.PRIO_INTRA_GROUP
    assert pipeline.RULE_PRIORITY_TOP < pipeline.PRIO_FABRIC_PASS


def test_the_document_has_a_section_per_declared_table():
    headings = re.findall(r"^## Table (\d+): (\w+)$", DOC.read_text(), re.MULTILINE)
    assert {(int(n), name) for n, name in headings} == {(int(t.number), t.name)
                                                        for t in TABLES}


def test_the_document_is_what_its_generator_writes():
    from docs.gen_pipeline import render

    assert DOC.read_text() == render() + "\n", (
        "docs/pipeline.md is stale: PYTHONPATH=src python -m docs.gen_pipeline > "
        "docs/pipeline.md")


def test_the_grafana_dashboard_is_what_its_generator_writes_and_names_real_metrics():
    """docs/grafana/vfence.json is generated (the lab evaluates its queries against a
    real Prometheus); every metric a panel names is one vfence exports."""
    import json
    import re

    from docs.grafana.gen_dashboard import dashboard

    from vfence.controller.metrics import Metrics

    path = DOC.parent / "grafana" / "vfence.json"
    assert json.loads(path.read_text()) == dashboard(), (
        "docs/grafana/vfence.json is stale: python -m docs.grafana.gen_dashboard > "
        "docs/grafana/vfence.json")
    exported = {m.name for m in Metrics().registry.collect()}
    for panel in dashboard()["panels"]:
        for t in panel["targets"]:
            for name in re.findall(r"\bvfence_\w+", t["expr"]):
                base = re.sub(r"_(bucket|total|sum|count)$", "", name)
                assert base in exported, (panel["title"], name)
