"""REST API on a real SQLite database; switches are a recorder (fast, no OVS)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from vfence.controller.api import create_app
from vfence.controller.flows import Owner, cookie, cookie_owner
from vfence.controller.reconcile import FlowDiff
from vfence.controller.service import Interface, Service
from vfence.controller.store import db
from vfence.controller.store import models as m

from .. import LOOPBACK

VM = {"name": "pay-1", "mac": "00:00:00:00:01:01", "ips": ["10.0.0.11"], "segment": "prod",
      "groups": ["payroll"]}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[int, FlowDiff]] = []
        self.fail = False

    def program(self, dpid: int, changes: FlowDiff) -> None:
        if self.fail:
            raise RuntimeError("switch refused the bundle")
        self.sent.append((dpid, changes))
        self.flows = getattr(self, "flows", {})
        have = {f.key: f for f in self.flows.get(dpid, ())}
        for f in changes.delete:
            have.pop(f.key, None)
        for f in changes.add:
            have[f.key] = f
        self.flows[dpid] = list(have.values())

    def read_flows(self, dpid: int, table=None, owner=None):
        """As a switch filters a flow-stats request by table and cookie owner."""
        return [(f, 7, 700) for f in getattr(self, "flows", {}).get(dpid, [])
                if (table is None or f.table == table)
                and (owner is None or (cookie_owner(f.cookie) or (None,))[0] == owner)]


def make_service(url: str) -> tuple[Service, Recorder]:
    """A service on a migrated database, with one recording switch (hv1) connected."""
    engine = db.make_engine(url)
    db.upgrade(engine)
    service = Service(db.sessions(engine))
    service.switches.programmer = rec = Recorder()
    service.switch_connected(0x101, "hv1", {1: "hv1-eth1", 3: "hv1-eth3"}, [])
    service.switch_ready(0x101)
    return service, rec


@pytest.fixture
def env(sqlite_url):
    service, rec = make_service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    engine = service.sessions.kw["bind"]
    return client, service, rec, engine


def count(engine, model) -> int:
    with db.sessions(engine)() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_create_get_list_delete(env):
    client, service, rec, engine = env
    r = client.post("/v1/vms", json=VM)
    assert r.status_code == 201, r.text
    assert r.json() == {**VM, "location": None}
    assert count(engine, m.VM) == 1 and count(engine, m.Segment) == 1
    assert client.get("/v1/vms").json()[0]["name"] == "pay-1"
    assert client.get("/v1/vms/pay-1").json()["mac"] == VM["mac"]
    assert client.delete("/v1/vms/pay-1").status_code == 204
    assert client.get("/v1/vms/pay-1").status_code == 404
    assert count(engine, m.VM) == 0
    with db.sessions(engine)() as s:
        kinds = [e.type for e in s.scalars(select(m.Event).order_by(m.Event.id))]
    assert kinds == ["switch-connected", "vm-added", "vm-removed"]


def test_mac_is_normalised(env):
    client, *_ = env
    r = client.post("/v1/vms", json={**VM, "mac": "00-00-00-00-01-AB"})
    assert r.json()["mac"] == "00:00:00:00:01:ab"


@pytest.mark.parametrize("patch, field", [
    ({"mac": "zz:00:00:00:00:01"}, "body.mac"),
    ({"mac": "01:00:5e:00:00:01"}, "body.mac"),
    ({"ips": ["10.0.0.300"]}, "body.ips[0]"),
    ({"name": "bad name!"}, "body.name"),
    ({"segment": ""}, "body.segment"),
    ({"groups": ["a", "a"]}, "body.groups"),
    ({"groups": [f"g{i}" for i in range(9)]}, "body.groups"),  # eight register slots
    ({"colour": "red"}, "body.colour"),
    ({"name": None}, "body.name"),
])
def test_invalid_body_is_422_naming_the_field_and_writes_nothing(env, patch, field):
    client, _, _, engine = env
    r = client.post("/v1/vms", json={**VM, **patch})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 422 and field in [e["field"] for e in body["errors"]], body
    assert count(engine, m.VM) == 0 and count(engine, m.Segment) == 0


def test_missing_field_and_non_json(env):
    client, *_ = env
    r = client.post("/v1/vms", json={"name": "x"})
    assert r.status_code == 422
    assert {"body.mac", "body.segment"} <= {e["field"] for e in r.json()["errors"]}
    r = client.post("/v1/vms", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("patch, field", [
    ({"mac": "00:00:00:00:09:09"}, "name"),
    ({"name": "other"}, "mac"),
    ({"name": "other", "mac": "00:00:00:00:09:09"}, "ips[0]"),
])
def test_duplicates_are_409_and_write_nothing(env, patch, field):
    client, _, _, engine = env
    assert client.post("/v1/vms", json=VM).status_code == 201
    r = client.post("/v1/vms", json={**VM, **patch})
    assert r.status_code == 409
    assert r.json()["errors"] == [{"field": field, "reason": r.json()["errors"][0]["reason"]}]
    assert count(engine, m.VM) == 1 and count(engine, m.VMAddress) == 1


def test_location_follows_ovsdb_binding_and_programs_the_switch(env):
    client, service, rec, engine = env
    client.post("/v1/vms", json=VM)
    r = client.get("/v1/vms/pay-1/location")
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "name"
    rec.sent.clear()
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", "00:00:00:00:01:01", None)])
    loc = client.get("/v1/vms/pay-1/location").json()
    assert loc["host"] == {"name": "hv1", "dpid": "0000000000000101"}
    assert loc["port"] == {"number": 3, "name": "hv1-eth3"} and loc["how"] == "ovsdb"
    (dpid, changes), = rec.sent
    vm = service.state.vms["pay-1"]
    assert dpid == 0x101 and changes.add and not changes.delete
    owners = {f.cookie for f in changes.add}
    assert owners == {cookie(Owner.VM, vm.id), cookie(Owner.SEGMENT, vm.segment_id)}
    assert count(engine, m.LocationHistory) == 1
    # the port disappears: the VM is unbound and its flows go
    rec.sent.clear()
    service.ovsdb_snapshot([])
    service.ovsdb_snapshot([Interface(0x101, 1, "hv1-eth1")])
    assert client.get("/v1/vms/pay-1/location").status_code == 404
    (_, changes), = rec.sent
    assert changes.delete and not changes.add


def test_failed_switch_programming_writes_nothing(env):
    client, service, rec, engine = env
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", "00:00:00:00:01:01", None)])
    rec.fail = True
    r = client.post("/v1/vms", json=VM)  # 503: retry later, nothing was written
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert count(engine, m.VM) == 0 and count(engine, m.Location) == 0
    assert "pay-1" not in service.state.vms


def test_unknown_vm_paths_are_404(env):
    client, *_ = env
    for method, path in [("GET", "/v1/vms/nope"), ("DELETE", "/v1/vms/nope"),
                         ("GET", "/v1/vms/nope/location")]:
        r = client.request(method, path)
        assert r.status_code == 404 and r.json()["errors"][0]["field"] == "name"


def test_health_and_hosts(env):
    client, *_ = env
    h = client.get("/v1/health").json()
    assert h["status"] == "ok" and h["switches_connected"] == 1 and h["switches_ready"] == 1
    (host,) = client.get("/v1/hosts").json()
    assert host["name"] == "hv1" and host["label"] == 1 and host["connected"]


def test_checked_in_openapi_spec_is_what_is_served(env):
    from pathlib import Path

    from vfence.controller.openapi import render

    served = env[0].get("/openapi.json").json()
    checked_in = Path(__file__).parents[2] / "schemas" / "openapi.json"
    assert json.loads(checked_in.read_text()) == served, \
        "regenerate: python -m vfence.controller.openapi > schemas/openapi.json"
    assert render() == checked_in.read_text()


# --- addresses: what a VM may claim -------------------------------------------------------


@pytest.mark.parametrize("ips, field, words", [
    (["fe80::1%eth0"], "body.ips[0]", ["scoped"]),
    (["10.0.0.1", "224.0.0.5"], "body.ips[1]", ["multicast"]),
    (["ff02::1"], "body.ips[0]", ["multicast"]),
    (["0.0.0.0"], "body.ips[0]", ["unspecified"]),
    (["::"], "body.ips[0]", ["unspecified"]),
    (["127.0.0.1"], "body.ips[0]", ["loopback"]),
    (["::1"], "body.ips[0]", ["loopback"]),
    (["::ffff:127.0.0.1"], "body.ips[0]", ["loopback"]),
    (["255.255.255.255"], "body.ips[0]", ["broadcast"]),
    (["fd00::1", "FD00::0001"], "body.ips", ["repeat"]),
])
def test_an_address_no_vm_may_have_is_422_naming_it_and_writes_nothing(env, ips, field, words):
    client, _, _, engine = env
    r = client.post("/v1/vms", json={**VM, "ips": ips})
    assert r.status_code == 422, r.text
    (err,) = [e for e in r.json()["errors"] if e["field"] == field]
    assert all(w in err["reason"] for w in words), err
    assert count(engine, m.VM) == 0 and count(engine, m.Segment) == 0


def test_legal_vm_addresses_are_accepted_normalised(env):
    client, *_ = env
    ips = ["10.0.0.11", "fe80::5", "FD00::0001", "169.254.3.4", "100.64.0.1"]
    r = client.post("/v1/vms", json={**VM, "ips": ips})
    assert r.status_code == 201, r.text
    assert r.json()["ips"] == ["10.0.0.11", "fe80::5", "fd00::1", "169.254.3.4", "100.64.0.1"]


@pytest.mark.parametrize("ip, words", [
    ("10.0.1.5", ["outside", "10.0.0.0/24"]),
    ("10.0.0.0", ["network address"]),
    ("10.0.0.255", ["broadcast address"]),
])
def test_a_vm_address_must_be_a_host_of_its_segments_subnet(env, ip, words):
    client, service, _, engine = env
    service.apply_policy({"segments": [{"name": "prod", "subnet": "10.0.0.0/24"}]})
    r = client.post("/v1/vms", json={**VM, "ips": ["fe80::5", ip]})
    assert r.status_code == 422, r.text
    (err,) = r.json()["errors"]
    assert err["field"] == "ips[1]" and all(w in err["reason"] for w in words), err
    assert count(engine, m.VM) == 0
    assert client.post("/v1/vms", json={**VM, "ips": ["10.0.0.254"]}).status_code == 201


def test_a_policy_document_with_a_bad_address_changes_nothing(env):
    client, service, rec, engine = env
    good = {"segments": [{"name": "prod", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1"}],
            "vms": [{**{k: VM[k] for k in ("name", "mac", "segment")}, "ips": ["10.0.0.11"]}]}
    assert client.put("/v1/policy", json=good).status_code == 200
    sent = len(rec.sent)
    bad = json.loads(json.dumps(good))
    bad["segments"][0]["gateway"] = "10.0.0.255"
    bad["vms"][0]["ips"] = ["10.0.0.12", "::1"]
    bad["vms"].append({"name": "web-1", "mac": "00:00:00:00:01:02", "segment": "prod"})
    r = client.put("/v1/policy", json=bad)
    assert r.status_code == 422
    fields = {e["field"]: e["reason"] for e in r.json()["errors"]}
    assert "broadcast" in fields["segments[0].gateway"]
    assert "loopback" in fields["vms[0].ips[1]"]
    assert client.get("/v1/policy").json() == good
    assert client.get("/v1/vms/pay-1").json()["ips"] == ["10.0.0.11"]
    assert count(engine, m.VM) == 1 and len(rec.sent) == sent


# --- limits through the API ------------------------------------------------------------------


def test_the_65536th_vm_is_409_naming_the_field_and_writes_nothing(env):
    """The real limit: 65,533 VMs bulk-inserted beside one registered through the API."""
    from sqlalchemy import insert

    from vfence.controller.flows import MAX_VM_TAG

    client, _, _, engine = env
    assert client.post("/v1/vms", json=VM).status_code == 201  # tag 1, segment prod
    with db.sessions(engine).begin() as s:
        seg = s.scalar(select(m.Segment.id))
        s.execute(insert(m.VM), [{"name": f"bulk-{t}", "mac": f"02:00:00:00:{t >> 8:02x}:"
                                  f"{t & 255:02x}", "segment_id": seg, "tag": t}
                                 for t in range(2, MAX_VM_TAG)])
    last = {**VM, "name": "last", "mac": "00:00:00:00:09:01", "ips": ["10.0.0.12"]}
    r = client.post("/v1/vms", json=last)
    assert r.status_code == 201, r.text  # the 65,535th
    r = client.post("/v1/vms", json={**last, "name": "one-more", "mac": "00:00:00:00:09:02",
                                     "ips": ["10.0.0.13"], "groups": ["new"]})
    assert r.status_code == 409 and r.headers["content-type"] == "application/problem+json"
    (err,) = r.json()["errors"]
    assert err["field"] == "name" and f"at most {MAX_VM_TAG} VMs" in err["reason"], err
    assert count(engine, m.VM) == MAX_VM_TAG and count(engine, m.Group) == 1
    assert count(engine, m.VMAddress) == 2
