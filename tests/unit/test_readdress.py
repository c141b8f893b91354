"""PATCH /v1/vms/{name}: new addresses and/or segment, for a VM the API registered (the
registry changes) and for one the policy document defines (the stored document changes);
bad bodies are refused naming the field and change nothing."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from vfence.controller.api import create_app
from vfence.controller.desired import rebuild
from vfence.controller.flows import Owner, cookie
from vfence.controller.service import Interface

from .. import LOOPBACK
from .test_api import VM, make_service

DOC = {
    "segments": [{"name": "prod", "subnet": "10.0.0.0/24", "gateway": "10.0.0.1"},
                 {"name": "dr", "subnet": "10.9.0.0/24", "gateway": "10.9.0.1"}],
    "routers": [{"name": "r1", "segments": ["prod", "dr"]}],
    "vms": [{"name": "pay-1", "mac": "00:00:00:00:01:01", "ips": ["10.0.0.11"],
             "segment": "prod"},
            {"name": "web-1", "mac": "00:00:00:00:01:02", "ips": ["10.0.0.12"],
             "segment": "prod"}],
}


@pytest.fixture
def env(sqlite_url):
    service, rec = make_service(sqlite_url)
    return TestClient(create_app(service), base_url=LOOPBACK), service, rec


def _events(client, kind):
    return [e for e in client.get("/v1/events", params={"type": kind}).json()]


def test_an_api_vm_gets_new_addresses_and_its_flows_follow(env):
    client, service, rec = env
    assert client.post("/v1/vms", json=VM).status_code == 201
    service.ovsdb_snapshot([Interface(0x101, 3, "hv1-eth3", VM["mac"], None)])
    rec.sent.clear()
    r = client.patch("/v1/vms/pay-1", json={"ips": ["10.0.0.21", "fd00::21"]})
    assert r.status_code == 200, r.text
    assert r.json()["ips"] == ["10.0.0.21", "fd00::21"] and r.json()["segment"] == "prod"
    (dpid, changes), = rec.sent  # the VM's own flows, replaced in one bundle
    vm = service.state.vms["pay-1"]
    assert dpid == 0x101 and {f.cookie for f in changes.add} >= {cookie(Owner.VM, vm.id)}
    assert any(dict(f.match).get("ipv4_src") == "10.0.0.21" for f in changes.add)
    assert not any(dict(f.match).get("ipv4_src") == "10.0.0.21" for f in changes.delete)
    assert any(dict(f.match).get("ipv4_src") == "10.0.0.11" for f in changes.delete)
    assert dict(rebuild(None, service.state)) == dict(service.desired)
    (e,), = [_events(client, "vm-readdressed")]
    assert e["vm"] == "pay-1" and e["detail"]["was"] == {"ips": ["10.0.0.11"],
                                                        "segment": "prod"}


def test_an_api_vm_moves_to_a_new_segment(env):
    client, service, _ = env
    client.post("/v1/vms", json=VM)
    r = client.patch("/v1/vms/pay-1", json={"segment": "dr", "ips": ["10.9.0.5"]})
    assert r.status_code == 200 and r.json()["segment"] == "dr", r.text
    assert service.state.vms["pay-1"].segment == "dr"
    assert "dr" in {s["name"] for s in client.get("/v1/segments").json()}


@pytest.mark.parametrize("body, status, field", [
    ({}, 422, "body"),
    ({"ips": ["10.0.0.256"]}, 422, "body.ips[0]"),
    ({"ips": ["10.0.0.5", "10.0.0.5"]}, 422, "body.ips"),
    ({"mac": "00:00:00:00:09:09"}, 422, "body.mac"),
    ({"ips": ["10.0.0.12"]}, 409, "ips[0]"),  # web-1's
    ({"segment": "bad name!"}, 422, "body.segment"),
])
def test_a_bad_patch_names_the_field_and_changes_nothing(env, body, status, field):
    client, service, rec = env
    client.post("/v1/vms", json=VM)
    client.post("/v1/vms", json=VM | {"name": "web-1", "mac": "00:00:00:00:01:02",
                                      "ips": ["10.0.0.12"]})
    before, sent = dict(service.state.vms), len(rec.sent)
    r = client.patch("/v1/vms/pay-1", json=body)
    assert r.status_code == status, r.text
    assert field in {e["field"] for e in r.json()["errors"]}, r.json()
    assert service.state.vms == before and len(rec.sent) == sent
    assert client.get("/v1/vms/pay-1").json()["ips"] == ["10.0.0.11"]
    assert not _events(client, "vm-readdressed")


def test_patching_an_unknown_vm_is_404(env):
    client, _, _ = env
    r = client.patch("/v1/vms/nobody", json={"ips": ["10.0.0.5"]})
    assert r.status_code == 404 and r.json()["errors"][0]["field"] == "name"


def test_a_document_vm_changes_in_the_stored_document(env):
    client, service, _ = env
    assert client.put("/v1/policy", json=DOC).status_code == 200
    r = client.patch("/v1/vms/pay-1", json={"segment": "dr", "ips": ["10.9.0.11"]})
    assert r.status_code == 200, r.text
    stored = client.get("/v1/policy").json()
    assert stored["vms"][0] == DOC["vms"][0] | {"segment": "dr", "ips": ["10.9.0.11"]}
    assert stored["vms"][1] == DOC["vms"][1] and stored["routers"] == DOC["routers"]
    assert service.state.policy.vms[0].ips == ("10.9.0.11",)
    assert service.state.vms["pay-1"].segment == "dr"


@pytest.mark.parametrize("body, field, words", [
    ({"ips": ["10.9.0.11"]}, "ips[0]", "10.0.0.0/24"),  # outside its segment's subnet
    ({"ips": ["10.0.0.12"]}, "ips[0]", "web-1"),
    ({"segment": "nowhere"}, "segment", "unknown segment"),
    ({"ips": ["10.0.0.1"]}, "ips[0]", "router"),  # the gateway
])
def test_a_bad_patch_of_a_document_vm_names_the_body_field(env, body, field, words):
    client, service, _ = env
    client.put("/v1/policy", json=DOC)
    before = service.state
    r = client.patch("/v1/vms/pay-1", json=body)
    assert r.status_code == 422, r.text
    (err,) = [e for e in r.json()["errors"] if e["field"] == field] or [r.json()]
    assert words in err["reason"], err
    assert client.get("/v1/policy").json() == DOC and service.state is before


def test_patching_a_document_vm_leaves_the_apis_vms_alone(env):
    """Found by review: the PATCH used to apply the whole document, which removes every
    VM the document does not list (the API's)."""
    client, service, _ = env
    client.put("/v1/policy", json=DOC)
    api = {"name": "api-1", "mac": "00:00:00:00:01:09", "segment": "prod",
           "ips": ["10.0.0.30"]}
    assert client.post("/v1/vms", json=api).status_code == 201
    r = client.patch("/v1/vms/pay-1", json={"ips": ["10.0.0.21"]})
    assert r.status_code == 200, r.text
    assert {v["name"] for v in client.get("/v1/vms").json()} == {"api-1", "pay-1", "web-1"}
    (e,) = _events(client, "vm-readdressed")
    assert e["vm"] == "pay-1" and e["detail"]["was"]["ips"] == ["10.0.0.11"]
    # and the API VM's address is taken: refused, nothing changes
    r = client.patch("/v1/vms/pay-1", json={"ips": ["10.0.0.30"]})
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "ips[0]", r.text
    assert service.state.vms["pay-1"].ips == ("10.0.0.21",)
