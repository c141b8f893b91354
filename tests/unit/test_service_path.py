"""The service's one path keeps what the old service did, and heals where it did not:
found by a review of the split (each failed on the first cut of the refactor)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client import generate_latest

from vfence.controller.api import create_app
from vfence.controller.hosts import Interface
from vfence.controller.model import VM as VMRow
from vfence.controller.model import Binding, Link, PortRef

from .. import LOOPBACK
from .test_trust import HV1, HV2, SP1, VM, _connect, _host, _service


def _events(client, kind):
    return client.get("/v1/events", params={"type": kind}).json()


# 1. probe_fabric is never called: `grew` is computed after the swap, against the new fabric
def test_new_fabric_ports_are_probed_at_once(sqlite_url):
    service, rec = _service(sqlite_url)
    probed: list[set[int]] = []
    rec.probe_fabric = lambda dpids: probed.append(set(dpids))
    _connect(service, HV1, {1: "up0"})
    _host(service, "hv1", HV1, [Interface(HV1, 1, "up0", fabric=True)])
    assert probed == [{HV1}]


# 2. names: the snapshot that names a host and binds a VM on it records the old name
def test_a_vm_bound_by_the_snapshot_that_names_its_host_is_located_there(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _connect(service, HV1, {3: "vnet0"})  # no OVSDB yet: called br-int
    assert client.post("/v1/vms", json=VM).status_code == 201
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    assert client.get("/v1/vms/pay-1/location").json()["host"]["name"] == "hv1"
    assert [e["host"] for e in _events(client, "vm-bound")] == ["hv1"]


# 3. a refused bundle during housekeeping: the link is never expired afterwards
def _two_hosts_and_a_spine(url):
    service, rec = _service(url)
    _host(service, "hv1", HV1, [Interface(HV1, 1, "up0", fabric=True),
                                Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _host(service, "hv2", HV2, [Interface(HV2, 1, "up0", fabric=True)])
    _host(service, "sp1", SP1, [Interface(SP1, 1, "d1"), Interface(SP1, 2, "d2")],
          fabric_switch=True)
    _connect(service, HV1, {1: "up0", 3: "vnet0"})
    _connect(service, HV2, {1: "up0"})
    _connect(service, SP1, {1: "d1", 2: "d2"})
    client = TestClient(create_app(service), base_url=LOOPBACK)
    assert client.post("/v1/vms", json=VM).status_code == 201
    return service, rec, client


def test_links_still_expire_after_a_refused_bundle(sqlite_url):
    service, rec, _ = _two_hosts_and_a_spine(sqlite_url)
    for a, b in ((PortRef(HV1, 1), PortRef(SP1, 1)), (PortRef(HV2, 1), PortRef(SP1, 2))):
        service.link_seen(Link(a, b), now=0.0)
        service.link_seen(Link(b, a), now=0.0)
    assert len(service.state.links) == 4
    rec.fail = True
    with pytest.raises(RuntimeError):
        service.housekeeping(now=30.0)  # the links are stale; a switch refuses
    rec.fail = False
    service.housekeeping(now=60.0)  # no probe confirmed them since
    assert service.state.links == set(), "dead links stay in the topology for good"


# 4. fabric-refused is marked as said before its transaction commits
def test_fabric_refused_is_audited_even_if_the_change_fails(sqlite_url):
    service, rec = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _connect(service, HV1, {1: "up0", 4: "vnet1"})
    ifaces = [Interface(HV1, 1, "up0", fabric=True),
              Interface(HV1, 4, "vnet1", VM["mac"], "pay-1", fabric=True)]
    rec.fail = True
    with pytest.raises(RuntimeError):
        _host(service, "hv1", HV1, ifaces)
    rec.fail = False
    _host(service, "hv1", HV1, ifaces)
    assert len(_events(client, "fabric-refused")) == 1


# 5. bindings written into service.state (bench/program_switch.py) vanish on the next change
def test_bench_style_bindings_survive_a_switch_connect(sqlite_url):
    service, rec = _service(sqlite_url)
    service.state.vms["v1"] = VMRow(1, "v1", "02:00:00:00:00:01", ("10.0.0.1",), 1, "bench")
    service.places.bindings["v1"] = Binding("v1", PortRef(HV1, 11), "p1")  # the machine's
    service.switch_connected(HV1, "br-bench", {11: "p1"}, [])
    assert "v1" in service.state.bindings
    sent = {f for d, c in rec.sent if d == HV1 for f in c.add}
    assert any("02:00:00:00:00:01" in str(f.match) for f in sent)


# 6. the port-status edge is consumed even when the change that handles it fails
def test_a_port_that_went_during_a_refused_bundle_still_ends_the_binding(sqlite_url):
    service, rec = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _connect(service, HV1, {3: "vnet0"})
    assert client.post("/v1/vms", json=VM).status_code == 201
    rec.fail = True
    with pytest.raises(RuntimeError):
        service.ports_changed(HV1, {})
    rec.fail = False
    service.ports_changed(HV1, {})  # the next port status repeats the full table
    assert "pay-1" not in service.state.bindings


# 7. metrics: the first bundle to a switch is counted under its dpid, not its name
def test_first_bundle_is_counted_under_the_switch_name(sqlite_url):
    service, _ = _service(sqlite_url)
    service.switch_connected(HV1, "br-int", {}, [])
    text = generate_latest(service.metrics.registry).decode()
    assert 'vfence_bundles_total{switch="br-int"}' in text, text


# 8. a switch left out of sync by a refused bundle is repaired only when the state changes
def test_a_switch_whose_full_program_failed_is_repaired_at_the_next_event(sqlite_url):
    from vfence.controller.flows import Flow
    service, rec = _service(sqlite_url)
    stale = Flow(30, 1234, (("in_port", 9),), (("goto", 40),), 0x0300000000000001)
    service.switch_connected(HV1, "br-int", {3: "vnet0"}, [stale])  # left from before
    rec.fail = True
    with pytest.raises(RuntimeError):
        service.switch_ready(HV1)  # the full program (which deletes `stale`) is refused
    rec.fail = False
    service.ports_changed(HV1, {3: "vnet0", 4: "vnet4"})  # any later event
    assert stale not in service.switches.installed[HV1], \
        "a flow the policy no longer has stays installed"
