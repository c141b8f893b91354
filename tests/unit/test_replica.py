"""What cluster members send each other: flow sets and the binding machine's state survive
JSON whole; link probes signed with the cluster's key are good at any member, once; the
cluster's endpoints and flags refuse what they cannot do, naming why."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from vfence.apps import lldp
from vfence.controller.api import create_app
from vfence.controller.binding import Announcement, Places
from vfence.controller.desired import compile_network
from vfence.controller.errors import Invalid
from vfence.controller.model import Binding, NetworkState, PortRef
from vfence.controller.replica import (
    Replica,
    flows_from_json,
    flows_json,
    gateways_from_json,
    places_from_json,
    shared_json,
)

from .. import LOOPBACK
from .netfixtures import FINANCE_ON_3, HV1, finance, leaf_spine
from .test_trust import _connect, _service


def test_every_compiled_flow_survives_the_trip_to_another_member():
    flows = compile_network(finance(leaf_spine(3, 2), FINANCE_ON_3))
    assert sum(len(f) for f in flows.values()) > 300
    for dpid, mine in flows.items():
        assert flows_from_json(flows_json(mine)) == mine, dpid


@pytest.mark.parametrize("rows", [
    [[0, 100, [], []]],  # four fields, not five
    [[True, 100, [], [], 0]], [[0, 1.5, [], [], 0]], [[0, 100, [], [], "0x1"]],
    [[0, -1, [], [], 0]],
])
def test_a_flow_list_that_is_not_one_is_refused_naming_the_field(rows):
    with pytest.raises(Invalid) as e:
        flows_from_json(rows)
    assert e.value.field == "flows"


def test_the_binding_machines_state_survives_the_trip_with_its_deadlines():
    now = time.monotonic()
    b = Binding("web-2", PortRef(0x104, 5), "vnet9", "ovsdb")
    p = Places({"web-2": b}, {"web-2": Binding("web-2", PortRef(0x101, 7), "vnet3", "ovsdb")},
               {"ops-1": Announcement(0x101, frozenset({1, 2, 7}), now + 600)},
               {"api-1": (Binding("api-1", PortRef(0x102, 9), "vnet4", "first-frame"),
                          now + 10)},
               {("pay-1", PortRef(0x101, 3))}, {PortRef(0x104, 5), PortRef(0x101, 7)})
    back = places_from_json(shared_json(p, NetworkState()))
    assert (back.bindings, back.standby, back.retired, back.vm_ports) == (
        p.bindings, p.standby, p.retired, p.vm_ports)
    assert back.announced["ops-1"].before == frozenset({1, 2, 7})
    assert abs(back.announced["ops-1"].deadline - (now + 600)) < 0.5
    assert back.candidates["api-1"][0] == p.candidates["api-1"][0]
    assert abs(back.candidates["api-1"][1] - (now + 10)) < 0.5
    assert back.view() == p.view()


def test_the_gateways_macs_travel_with_it():
    """Only a host's master hears its external gateway answer; every member compiles
    that host's way out, so the MAC is shared."""
    st = NetworkState(gateway_macs={0x101: "02:aa:00:00:00:01"},
                      gateway6_macs={0x102: "02:aa:00:00:00:02"})
    assert gateways_from_json(shared_json(Places(), st)) == (st.gateway_macs,
                                                              st.gateway6_macs)


def test_a_probe_another_member_sent_counts_once_if_the_cluster_key_signed_it():
    saved = lldp._KEYS[0]
    try:
        lldp.use_key(b"k" * 32)
        sender, receiver = lldp.ProbeBook(shared=True), lldp.ProbeBook(shared=True)
        nonce = sender.issue(0x101, 1)
        frame = lldp.probe(0x101, 1, "02:00:00:00:00:01", nonce)
        seen = lldp.parse(frame)
        assert seen == (0x101, 1, nonce)
        assert receiver.redeem(*seen) is True
        assert receiver.redeem(*seen) is False  # a replay
        assert lldp.ProbeBook().redeem(*seen) is False  # a lone controller: its own only
        old = lldp.ProbeBook(lifetime=0.0, shared=True)
        time.sleep(0.01)
        assert old.redeem(*seen) is False  # expired by the time in its nonce
        lldp.use_key(b"x" * 32)  # another cluster's key: the signature fails
        assert lldp.parse(frame) is None
    finally:
        lldp.use_key(saved)


def test_cluster_endpoints_of_a_lone_controller_are_404(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    for r in (client.get("/v1/cluster"), client.post("/v1/cluster/apply", json={
            "dpid": f"{HV1:016x}", "term": 1, "flows": []})):
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "cluster"


def test_a_member_refuses_flows_for_a_switch_it_does_not_master(sqlite_url):
    service, rec = _service(sqlite_url)
    service.replica = Replica(service.sessions, service.switches, "c1", "http://c1")
    _connect(service, HV1, {1: "up0"})
    client = TestClient(create_app(service), base_url=LOOPBACK)
    body = {"dpid": f"{HV1:016x}", "term": 1, "flows": []}
    r = client.post("/v1/cluster/apply", json=body)  # a client's token is not enough
    assert r.status_code == 403
    assert r.json()["errors"][0]["field"] == "header.x-vfence-member", r.text
    at = int(time.time())
    signed = {"x-vfence-member": f"c2 {at} " + service.replica._signature(
        "c2", at, body["dpid"], 1, [])}
    forged = {"x-vfence-member": f"c2 {at} " + "0" * 64}
    stale = {"x-vfence-member": f"c2 {at - 60} " + service.replica._signature(
        "c2", at - 60, body["dpid"], 1, [])}
    for headers in (forged, stale):
        assert client.post("/v1/cluster/apply", json=body, headers=headers).status_code == 403
    r = client.post("/v1/cluster/apply", json={**body, "term": 2}, headers=signed)
    assert r.status_code == 403  # (signed for term 1)
    r = client.post("/v1/cluster/apply", json=body, headers=signed)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "term", r.text
    r = client.post("/v1/cluster/apply", json={"dpid": "xyz", "term": 0, "flows": []})
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"body.dpid", "body.term"}
    assert client.get("/v1/cluster").json()["me"] is None  # (no member loop yet)


def test_drift_names_what_a_switch_lacks_and_what_it_has_that_nobody_compiled(sqlite_url):
    service, rec = _service(sqlite_url)
    _connect(service, HV1, {1: "up0"})
    client = TestClient(create_app(service), base_url=LOOPBACK)
    [d] = client.get("/v1/drift").json()
    assert d["flows"] > 0 and (d["missing"], d["extra"]) == (0, 0)
    gone = rec.flows[HV1].pop()
    rec.flows[HV1].append(type(gone)(gone.table, 1, (("in_port", 99),), (), 0))
    [d] = client.get("/v1/drift").json()
    assert (d["missing"], d["extra"]) == (1, 1) and len(d["examples"]) == 2


def _serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfence", "serve", *args],
                          capture_output=True, text=True, timeout=60)


def test_a_cluster_needs_postgresql(tmp_path):
    r = _serve("--cluster", "--db", f"sqlite:///{tmp_path}/v.db", "--check")
    assert r.returncode == 2 and "--cluster" in r.stderr and "PostgreSQL" in r.stderr


def test_a_member_listening_everywhere_must_say_where_it_is_reached(postgres_url, tmp_path):
    import os

    env = dict(os.environ, VFENCE_API_TOKEN="t0ken")
    base = [sys.executable, "-m", "vfence", "serve", "--cluster", "--db", postgres_url,
            "--api-host", "0.0.0.0", "--check"]
    r = subprocess.run(base, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and "--advertise" in r.stderr, r.stderr
    r = subprocess.run(base + ["--advertise", "http://10.0.0.5:8080", "--member", "c1"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "as cluster member c1 at http://10.0.0.5:8080" in r.stdout
