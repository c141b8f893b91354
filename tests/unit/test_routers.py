"""Layer 3, the contract: segments with gateways and the routers that join them, as
the policy document gives them, validated like the rest, and shown by the API and the
CLI. (Routing itself in the datapath builds on this.)"""

from __future__ import annotations

import copy
import json

import httpx
import pytest
from fastapi.testclient import TestClient

from vfence.controller import addresses, policy
from vfence.controller.api import create_app
from vfence.controller.model import eui64_link_local
from vfence.controller.service import Service
from vfence.controller.store import db

from .. import LOOPBACK
from .test_api_ops import cli, live_api  # noqa: F401 (a fixture)
from .test_trust import _service

DOC = {
    "segments": [{"name": "web", "subnet": "10.10.1.0/24", "gateway": "10.10.1.1",
                  "subnet6": "fd00:10:1::/64", "gateway6": "fd00:10:1::1"},
                 {"name": "db", "subnet": "10.10.2.0/24", "gateway": "10.10.2.1"},
                 {"name": "lab", "subnet": "10.20.0.0/24"}],
    "routers": [{"name": "r1", "segments": ["web", "db"]}],
    "groups": [{"name": "g"}],
    "vms": [{"name": "web-1", "mac": "00:00:00:00:01:01", "ips": ["10.10.1.11"],
             "segment": "web", "groups": ["g"]}],
}


R1_LLA = eui64_link_local(addresses.router_mac("r1"))


def _errors(doc):
    with pytest.raises(policy.PolicyError) as e:
        policy.parse(doc)
    return {(x["field"], x["reason"]) for x in e.value.errors}


def test_a_router_gets_a_stable_mac_and_its_segments_gateways():
    p = policy.parse(DOC)
    (r,) = p.routers
    assert r.segments == ("web", "db") and r.mac == addresses.router_mac("r1")
    assert r.mac == policy.parse(copy.deepcopy(DOC)).routers[0].mac  # same every time
    assert int(r.mac[:2], 16) & 0b11 == 0b10  # locally administered, unicast
    assert addresses.router_mac("r2") != r.mac
    web = next(s for s in p.segment_specs if s.name == "web")
    assert (web.gateway, web.gateway6) == ("10.10.1.1", "fd00:10:1::1")


@pytest.mark.parametrize("change, field, reason", [
    (lambda d: d["routers"][0]["segments"].append("nope"), "routers[0].segments[2]",
     "unknown segment 'nope'"),
    (lambda d: d["routers"][0]["segments"].append("lab"), "routers[0].segments[2]",
     "segment 'lab' has a subnet but no gateway"),
    (lambda d: d["segments"][1].update(subnet="10.10.0.0/16", gateway="10.10.3.1"),
     "routers[0].segments[1]", "subnet 10.10.0.0/16 of 'db' overlaps segment 'web''s, "
     "which this router also joins"),
    (lambda d: d["routers"].append({"name": "r2", "segments": ["db"]}),
     "routers[1].segments[0]", "segment 'db' is already joined by router 'r1' (a segment "
     "has one gateway)"),
    (lambda d: d["routers"].append({"name": "r1", "segments": ["lab"]}), "routers[1].name",
     "duplicate name 'r1'"),
    (lambda d: d["vms"][0].update(mac=addresses.router_mac("r1")), "vms[0].mac",
     f"{addresses.router_mac('r1')} is router 'r1''s MAC"),
    (lambda d: d["vms"][0].update(ips=["10.10.1.1"]), "vms[0].ips[0]",
     "10.10.1.1 is router 'r1''s address in segment 'web'"),
    (lambda d: d["vms"][0].update(ips=["10.10.1.11", R1_LLA]), "vms[0].ips[1]",
     f"{R1_LLA} is router 'r1''s address in segment 'web'"),  # its advertisements' source
    (lambda d: d["routers"][0].update(segments=[]), "routers[0].segments",
     "[] should be non-empty"),
])
def test_a_bad_router_is_refused_naming_the_field(change, field, reason):
    doc = copy.deepcopy(DOC)
    change(doc)
    errors = _errors(doc)
    assert (field, reason) in errors, errors


def test_api_shows_routers_and_segments_and_a_bad_document_changes_nothing(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    assert client.put("/v1/policy", json=DOC).status_code == 200
    (r1,) = client.get("/v1/routers").json()
    assert r1["name"] == "r1" and r1["mac"] == addresses.router_mac("r1")
    assert [(s["name"], s["gateway"], s["gateway6"]) for s in r1["segments"]] == [
        ("web", "10.10.1.1", "fd00:10:1::1"), ("db", "10.10.2.1", None)]
    segs = {s["name"]: s for s in client.get("/v1/segments").json()}
    assert (segs["web"]["subnet"], segs["web"]["gateway"], segs["web"]["router"]) == (
        "10.10.1.0/24", "10.10.1.1", "r1")
    assert segs["web"]["subnet6"] == "fd00:10:1::/64"
    # a bad document: 422 naming the field, nothing applied
    bad = copy.deepcopy(DOC)
    bad["routers"].append({"name": "r2", "segments": ["web", "lab"]})
    r = client.put("/v1/policy", json=bad)
    assert r.status_code == 422, r.text
    fields = {e["field"] for e in r.json()["errors"]}
    assert {"routers[1].segments[0]", "routers[1].segments[1]"} <= fields
    assert [x["name"] for x in client.get("/v1/routers").json()] == ["r1"]
    # a restart (a new controller on the same database) gives the same router MAC
    again = Service(db.sessions(db.make_engine(sqlite_url)))
    assert TestClient(create_app(again), base_url=LOOPBACK).get("/v1/routers").json() == [r1]


def test_cli_shows_routers_and_segments(live_api):  # noqa: F811
    url, service = live_api
    assert httpx.put(url + "/v1/policy", json=DOC).status_code == 200
    r = cli("net", "routers", "--json", "--api", url)
    assert r.returncode == 0, r.stderr
    (r1,) = json.loads(r.stdout)
    assert r1["mac"] == addresses.router_mac("r1")
    r = cli("net", "routers", "--api", url)
    assert r.returncode == 0 and addresses.router_mac("r1") in r.stdout and "10.10.2.1" in r.stdout
    r = cli("net", "segments", "--api", url)
    assert r.returncode == 0 and "10.10.1.1" in r.stdout and "r1" in r.stdout


def test_a_vm_registered_through_the_api_cannot_take_a_routers_mac_or_gateway(sqlite_url):
    """The document checks its own VMs; a VM added by POST /v1/vms on a router's MAC or
    a routed gateway's address is a conflict too, and changes nothing. (A document
    replaces every VM it does not list, so its own check covers the other way round.)"""
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    assert client.put("/v1/policy", json=DOC).status_code == 200
    vm = {"name": "x", "mac": addresses.router_mac("r1"), "ips": [], "segment": "web"}
    r = client.post("/v1/vms", json=vm)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "mac", r.text
    r = client.post("/v1/vms", json=dict(vm, mac="00:00:00:00:09:09", ips=["10.10.2.1"],
                                         segment="db"))
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "ips[0]", r.text
    r = client.post("/v1/vms", json=dict(vm, mac="00:00:00:00:09:09",
                                         ips=["10.10.1.9", R1_LLA]))
    assert r.status_code == 409 and r.json()["errors"][0] == {
        "field": "ips[1]", "reason": f"{R1_LLA} is router 'r1''s address in segment 'web'"}
    ok = client.post("/v1/vms", json=dict(vm, mac="00:00:00:00:09:09", ips=["10.20.0.1"],
                                          segment="lab"))
    assert ok.status_code == 201, ok.text  # control: an unrouted segment's address is fine
    assert {v["name"] for v in client.get("/v1/vms").json()} == {"web-1", "x"}
    assert client.get("/v1/vms/x").json()["segment"] == "lab"  # the refused ones left nothing


def test_a_routed_gateway_answers_arp_with_the_routers_mac_in_the_datapath():
    """Walked through the unit pipeline: a VM asking for its segment's gateway gets the
    router's MAC back out of its own port; the gateway of a segment no router joins gets
    no answer (an unknown request is dropped, never flooded)."""
    from vfence.controller import desired
    from vfence.controller.model import VM, Binding, PortRef

    from .netfixtures import HV1, two_hosts_two_spines
    from .pipeline import Pipeline

    st = two_hosts_two_spines()
    st.policy = policy.parse(DOC)
    st.segment_tags = {"web": 1, "db": 2, "lab": 3}
    st.router_numbers = {"r1": 0}
    for i, (name, seg, tag, ip) in enumerate([("w", "web", 1, "10.10.1.11"),
                                              ("l", "lab", 3, "10.20.0.11")], start=1):
        st.vms[name] = VM(i, name, f"00:00:00:00:00:0{i}", (ip,), tag, seg, ())
        st.bindings[name] = Binding(name, PortRef(HV1, 2 + i))
    hv1 = Pipeline(desired.compile_network(st)[HV1])

    def ask(vm, port, ip):
        return hv1.run({"in_port": port, "eth_src": vm.mac, "eth_dst": "ff:ff:ff:ff:ff:ff",
                        "eth_type": 0x0806, "arp_op": 1, "arp_sha": vm.mac,
                        "arp_spa": vm.ips[0], "arp_tha": "00:00:00:00:00:00",
                        "arp_tpa": ip})

    mac = addresses.router_mac("r1")
    ((port, reply),) = ask(st.vms["w"], 3, "10.10.1.1")
    assert port == 3 and reply["arp_op"] == 2 and reply["arp_spa"] == "10.10.1.1"
    assert reply["eth_src"] == mac and reply["arp_sha"] == mac
    assert reply["eth_dst"] == st.vms["w"].mac and reply["arp_tpa"] == "10.10.1.11"
    assert ask(st.vms["w"], 3, "10.10.2.1") == []  # another segment's gateway: not here
    # lab has a gateway in no router's segment list: not answered
    st.policy = policy.parse(dict(DOC, segments=[*DOC["segments"][:2], {
        "name": "lab", "subnet": "10.20.0.0/24", "gateway": "10.20.0.1"}]))
    hv1 = Pipeline(desired.compile_network(st)[HV1])
    assert ask(st.vms["l"], 4, "10.20.0.1") == []
    assert ask(st.vms["w"], 3, "10.10.1.1")  # control: the routed one still answers
