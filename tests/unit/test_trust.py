"""Trust boundaries in the service, on a real SQLite database with recording switches:
host names come from each host's OVSDB, only operator-marked fabric ports make links,
LLDP probes are single-use, a VM that is up elsewhere cannot be moved by a frame."""

from __future__ import annotations

from fastapi.testclient import TestClient

from vfence.apps import lldp
from vfence.controller.api import create_app
from vfence.controller.hosts import Bridge, HostDb, Interface, fabric_ports, switch_names
from vfence.controller.model import Link, PortRef
from vfence.controller.service import Service
from vfence.controller.store import db

from .. import LOOPBACK
from .test_api import Recorder

HV1, HV2, SP1 = 0x101, 0x102, 0x201
VM = {"name": "pay-1", "mac": "00:00:00:00:01:01", "ips": ["10.0.0.11"], "segment": "prod",
      "groups": ["payroll"]}


def _service(url: str, **kw) -> tuple[Service, Recorder]:
    engine = db.make_engine(url)
    db.upgrade(engine)
    service = Service(db.sessions(engine), **kw)
    service.switches.programmer = rec = Recorder()
    return service, rec


def _host(service: Service, name: str, dpid: int, ifaces: list[Interface],
          fabric_switch: bool = False) -> None:
    service.ovsdb_snapshot(ifaces, [Bridge(dpid, "br-int", None, fabric_switch)],
                           f"unix:/run/{name}/db.sock", name)


def _connect(service: Service, dpid: int, ports: dict[int, str]) -> None:
    service.switch_connected(dpid, "br-int", ports, [])
    service.switch_ready(dpid)


# --- names -----------------------------------------------------------------------------


def test_every_br_int_is_named_by_its_host_everywhere(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _host(service, "hv2", HV2, [])
    for dpid in (HV1, HV2):
        _connect(service, dpid, {3: "vnet0"})
    assert sorted(h["name"] for h in client.get("/v1/hosts").json()) == ["hv1", "hv2"]
    assert client.post("/v1/vms", json=VM).status_code == 201
    assert client.get("/v1/vms/pay-1/location").json()["host"]["name"] == "hv1"
    bound = client.get("/v1/events", params={"type": "vm-bound"}).json()
    assert [e["host"] for e in bound] == ["hv1"]
    assert client.get("/v1/hosts/hv2/flows").status_code == 200


def test_a_switch_that_connects_before_its_ovsdb_is_renamed(sqlite_url):
    service, _ = _service(sqlite_url)
    _connect(service, HV1, {})
    _connect(service, HV2, {3: "vnet0"})
    # both report "br-int": the second cannot take a name that is already used
    assert {sw.name for sw in service.state.switches.values()} == {"br-int",
                                                                  "0000000000000102"}
    client = TestClient(create_app(service), base_url=LOOPBACK)
    assert client.post("/v1/vms", json=VM).status_code == 201
    # the snapshot that names hv2 also shows the VM's port there: the VM's location and
    # its event carry the host's name, not the dpid it had a moment before
    _host(service, "hv1", HV1, [])
    _host(service, "hv2", HV2, [Interface(HV2, 3, "vnet0", VM["mac"], "pay-1")])
    assert {sw.name for sw in service.state.switches.values()} == {"hv1", "hv2"}
    assert service.state.find_switch("hv2") == HV2
    assert client.get("/v1/vms/pay-1/location").json()["host"]["name"] == "hv2"
    bound = client.get("/v1/events", params={"type": "vm-bound"}).json()
    assert [e["host"] for e in bound] == ["hv2"]


def test_names_from_ovsdb_rules():
    one = HostDb("a", bridges=(Bridge(1, "br-int"),), host="hv1")
    two = HostDb("b", bridges=(Bridge(2, "br-int"), Bridge(3, "br-ex", host="edge")),
                 host="hv2")
    dup = HostDb("c", bridges=(Bridge(4, "br-int"),), host="hv1")
    unnamed = HostDb("d", bridges=(Bridge(5, "br-int"),))
    assert switch_names([one, two, dup, unnamed]) == {
        1: "hv1", 2: "hv2/br-int", 3: "edge", 4: "hv1@0000000000000004"}


def test_learn_first_frame_on_one_host_only(sqlite_url):
    service, _ = _service(sqlite_url, learn_first_frame=frozenset({"hv2"}))
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 5, "tap5")])
    _host(service, "hv2", HV2, [Interface(HV2, 5, "tap5")])
    _connect(service, HV1, {5: "tap5"})
    _connect(service, HV2, {5: "tap5"})
    client.post("/v1/vms", json=VM)
    service.unbound_frame(HV1, 5, VM["mac"])  # hv1 does not learn from frames
    assert client.get("/v1/vms/pay-1/location").status_code == 404
    service.unbound_frame(HV2, 5, VM["mac"])
    assert client.get("/v1/vms/pay-1/location").json()["host"]["name"] == "hv2"


# --- fabric ----------------------------------------------------------------------------


def _fabric_lab(url: str) -> Service:
    service, _ = _service(url)
    _host(service, "hv1", HV1, [Interface(HV1, 1, "up0", fabric=True),
                                Interface(HV1, 3, "vnet0"),
                                Interface(HV1, 4, "vnet1", VM["mac"], "pay-1", fabric=True)])
    _host(service, "sp1", SP1, [Interface(SP1, 1, "d1"), Interface(SP1, 2, "d2")],
          fabric_switch=True)
    _connect(service, HV1, {1: "up0", 3: "vnet0", 4: "vnet1"})
    _connect(service, SP1, {1: "d1", 2: "d2"})
    return service


def _both(a: PortRef, b: PortRef) -> list[Link]:
    return [Link(a, b), Link(b, a)]


def test_links_only_between_marked_fabric_ports_of_two_switches(sqlite_url):
    service = _fabric_lab(sqlite_url)
    up, down = PortRef(HV1, 1), PortRef(SP1, 1)
    assert all(service.link_seen(lk) for lk in _both(up, down))  # control
    assert service.state.links == set(_both(up, down))
    vm_port = PortRef(HV1, 3)
    # a VM echoing a probe (a self-link), a VM relaying between its two ports, a VM port
    # claiming to face the spine: none makes a link
    assert not service.link_seen(Link(vm_port, vm_port))
    assert not service.link_seen(Link(vm_port, PortRef(HV1, 4)))
    assert not any(service.link_seen(lk) for lk in _both(vm_port, PortRef(SP1, 2)))
    assert service.state.links == set(_both(up, down))


def test_a_marked_port_with_a_vm_is_never_fabric(sqlite_url):
    service = _fabric_lab(sqlite_url)
    assert service.state.fabric.get(HV1, frozenset()) == {1}  # vnet1 carries pay-1's ids: refused
    assert service.state.fabric.get(SP1, frozenset()) == {1, 2}
    with service.sessions() as s:
        from vfence.controller import registry
        refused = [e for e in registry.events(s, type_="fabric-refused")]
    assert [e.detail["port_name"] for e in refused] == ["vnet1"]
    # a port a VM was bound to stays out even once its ids are gone and it is marked
    client = TestClient(create_app(service), base_url=LOOPBACK)
    client.post("/v1/vms", json=VM)
    assert client.get("/v1/vms/pay-1/location").json()["port"]["number"] == 4
    _host(service, "hv1", HV1, [Interface(HV1, 1, "up0", fabric=True),
                                Interface(HV1, 4, "vnet1", fabric=True)])
    assert service.state.fabric.get(HV1, frozenset()) == {1}


def test_unmarking_a_port_drops_its_link(sqlite_url):
    service = _fabric_lab(sqlite_url)
    for lk in _both(PortRef(HV1, 1), PortRef(SP1, 1)):
        service.link_seen(lk)
    _host(service, "hv1", HV1, [Interface(HV1, 1, "up0")])
    assert service.state.links == set()


def test_links_expire_without_fresh_probes(sqlite_url):
    service = _fabric_lab(sqlite_url)
    for lk in _both(PortRef(HV1, 1), PortRef(SP1, 1)):
        service.link_seen(lk, now=100.0)
    service.housekeeping(now=110.0)
    assert len(service.state.links) == 2
    service.housekeeping(now=125.0)
    assert service.state.links == set()


def test_probes_are_single_use_fresh_and_bound_to_their_port():
    book = lldp.ProbeBook(lifetime=10)
    frame = lldp.probe(HV1, 1, "02:00:00:00:00:01", book.issue(HV1, 1, now=0))
    dpid, port, nonce = lldp.parse(frame)
    assert (dpid, port) == (HV1, 1)
    assert book.redeem(dpid, port, nonce, now=1)  # control
    assert not book.redeem(dpid, port, nonce, now=2)  # replayed
    late = book.issue(HV1, 1, now=0)
    assert not book.redeem(HV1, 1, late, now=11)  # expired
    other = book.issue(HV1, 2, now=0)
    assert not book.redeem(HV1, 1, other, now=1)  # issued for another port
    forged = frame.replace(b"dpid:0000000000000101", b"dpid:0000000000000102")
    assert lldp.parse(forged) is None  # the HMAC covers switch, port and nonce


# --- moves -----------------------------------------------------------------------------


def _vm_on_hv1_and_a_rogue_on_hv2(url: str, rogue_port: int, **kw
                                   ) -> tuple[Service, TestClient]:
    """pay-1 bound on hv1 port 3 (libvirt ids), an unbound port on hv2."""
    service, _ = _service(url, **kw)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _host(service, "hv2", HV2, [Interface(HV2, rogue_port, "rogue")])
    _connect(service, HV1, {3: "vnet0"})
    _connect(service, HV2, {rogue_port: "rogue"})
    client.post("/v1/vms", json=VM)
    return service, client


def test_a_frame_cannot_steal_a_vm_that_is_up_elsewhere(sqlite_url):
    service, client = _vm_on_hv1_and_a_rogue_on_hv2(sqlite_url, 5, learn_first_frame=True)
    for _ in range(5):  # QEMU's announcement pattern, from an attacker on hv2
        service.unbound_frame(HV2, 5, VM["mac"])
    loc = client.get("/v1/vms/pay-1/location").json()
    assert (loc["host"]["name"], loc["port"]["number"]) == ("hv1", 3)
    refused = client.get("/v1/events", params={"type": "move-refused"}).json()
    assert len(refused) == 1 and refused[0]["host"] == "hv2"  # audited once, not 5 times
    # once the VM's old port is gone (its link down or deleted), the move completes there,
    # even if nothing more comes from the new port
    service.ports_changed(HV1, {})
    loc = client.get("/v1/vms/pay-1/location").json()
    assert (loc["host"]["name"], loc["port"]["number"], loc["how"]) == ("hv2", 5, "first-frame")


def test_an_announced_move_completes_on_the_first_frame(sqlite_url):
    service, client = _vm_on_hv1_and_a_rogue_on_hv2(sqlite_url, 4)
    assert client.post("/v1/vms/pay-1/migrations",
                       json={"target_host": "hv2"}).status_code == 202
    # a port that was there before the announcement cannot take the VM
    service.unbound_frame(HV2, 4, VM["mac"])
    assert client.get("/v1/vms/pay-1/location").json()["host"]["name"] == "hv1"
    # the VM's new port appears (libvirt plugs it, here without ids), then its RARP
    service.ports_changed(HV2, {4: "rogue", 5: "vnet9"})
    service.unbound_frame(HV2, 5, VM["mac"])
    assert client.get("/v1/vms/pay-1/location").json()["host"]["name"] == "hv2"


def test_an_announcement_expires_and_goes_with_its_vm(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _host(service, "hv2", HV2, [])
    _connect(service, HV1, {3: "vnet0"})
    _connect(service, HV2, {})
    client.post("/v1/vms", json=VM)
    client.post("/v1/vms/pay-1/migrations", json={"target_host": "hv2"})
    import time

    from vfence.controller import binding
    service.housekeeping(now=time.monotonic() + binding.ANNOUNCE_LIFETIME + 1)
    assert "pay-1" not in service.state.expected and not service.places.announced
    client.post("/v1/vms/pay-1/migrations", json={"target_host": "hv2"})
    assert client.delete("/v1/vms/pay-1").status_code == 204
    assert "pay-1" not in service.state.expected and not service.places.announced


def test_a_vm_whose_switch_has_not_reconnected_cannot_be_claimed(sqlite_url):
    """After a controller restart, bindings come from the database before the switches
    report their ports: the VM is still up there until its switch says otherwise."""
    service, _ = _service(sqlite_url, learn_first_frame=True)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _connect(service, HV1, {3: "vnet0"})
    client.post("/v1/vms", json=VM)
    restarted = Service(service.sessions, learn_first_frame=True)
    restarted.switches.programmer = Recorder()
    _host(restarted, "hv2", HV2, [Interface(HV2, 5, "rogue")])
    _connect(restarted, HV2, {5: "rogue"})
    restarted.unbound_frame(HV2, 5, VM["mac"])
    assert restarted.state.bindings["pay-1"].port == PortRef(HV1, 3)


def test_a_vm_port_whose_link_comes_back_is_rebound(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", VM["mac"], "pay-1")])
    _connect(service, HV1, {3: "vnet0"})
    client.post("/v1/vms", json=VM)
    service.ports_changed(HV1, {})  # link down (a guest reboot)
    assert client.get("/v1/vms/pay-1/location").status_code == 404
    service.ports_changed(HV1, {3: "vnet0"})
    assert client.get("/v1/vms/pay-1/location").json()["port"]["number"] == 3


def test_fabric_ports_and_vm_ports_helper_refuses_with_reason():
    db_ = HostDb("x", interfaces=(Interface(1, 1, "a", fabric=True),
                                  Interface(1, 2, "b", "00:00:00:00:00:01", fabric=True),
                                  Interface(1, 3, "c", fabric=True)))
    ports, refused = fabric_ports([db_], {PortRef(1, 3)})
    assert ports == {1: frozenset({1})}
    assert [(i.name, why.split()[0]) for i, why in refused] == [("b", "the"), ("c", "a")]


# --- a stored policy that stricter checks now refuse ------------------------------------


def test_a_stored_policy_that_no_longer_validates_stops_serve_with_the_field(sqlite_url):
    """Checks grew stricter (loopback VM addresses): a document stored before must not be
    silently dropped (fail open) nor crash with a traceback."""
    import pytest
    from typer.testing import CliRunner

    from vfence.controller.cli import app
    from vfence.controller.policy import PolicyError
    from vfence.controller.store import models as m

    engine = db.make_engine(sqlite_url)
    db.upgrade(engine)
    old = {"segments": [{"name": "prod"}],
           "vms": [{"name": "v", "mac": "00:00:00:00:00:01", "ips": ["127.0.0.5"],
                    "segment": "prod"}]}
    with db.sessions(engine).begin() as s:
        s.add(m.PolicyDocument(document=old))
    with pytest.raises(PolicyError):
        Service(db.sessions(engine))
    r = CliRunner().invoke(app, ["serve", "--db", sqlite_url])
    assert r.exit_code == 2
    assert "no longer validates" in r.output and "vms[0].ips[0]" in r.output
    # a replacement document given at start-up is fine: the old one is not used
    service = Service(db.sessions(engine), replace_stored_policy=True)
    assert service.state.policy.vms == ()


def test_nobody_registers_another_vms_link_local(sqlite_url):
    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    db_vm = {"name": "db", "mac": "00:00:00:00:00:02", "ips": [], "segment": "s"}
    own = {"name": "web", "mac": "00:00:00:00:00:05", "ips": ["fe80::200:ff:fe00:5"],
           "segment": "s"}
    assert client.post("/v1/vms", json=db_vm).status_code == 201
    assert client.post("/v1/vms", json=own).status_code == 201  # its own: fine
    steal = {"name": "guest", "mac": "00:00:00:00:00:01", "ips": ["fe80::200:ff:fe00:2"],
             "segment": "s"}
    r = client.post("/v1/vms", json=steal)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "ips[0]", r.json()
    # the other way round: the address is registered first, then its MAC's VM comes
    early = {"name": "early", "mac": "00:00:00:00:00:07", "ips": ["fe80::200:ff:fe00:3"],
             "segment": "s"}
    assert client.post("/v1/vms", json=early).status_code == 201
    late = {"name": "late", "mac": "00:00:00:00:00:03", "ips": [], "segment": "s"}
    r = client.post("/v1/vms", json=late)
    assert r.status_code == 409 and r.json()["errors"][0]["field"] == "mac", r.json()
    assert client.get("/v1/vms/guest").status_code == 404
    assert client.get("/v1/vms/late").status_code == 404


def test_the_operator_names_a_host_on_the_command_line():
    from vfence.apps.ovsdb import parse_remote

    assert parse_remote("hv7=tcp:192.0.2.7:6640") == ("hv7", "tcp:192.0.2.7:6640")
    assert parse_remote("unix:/run/openvswitch/db.sock") == (None,
                                                             "unix:/run/openvswitch/db.sock")
    assert parse_remote("tcp:[fd00::1]:6640") == (None, "tcp:[fd00::1]:6640")
    own = HostDb("r", bridges=(Bridge(1, "br-int", host="from-bridge"),), host="from-ovs")
    assert switch_names([own]) == {1: "from-bridge"}
    assert switch_names([HostDb(**{**own.__dict__, "override": "hv7"})]) == {1: "hv7"}


def test_vms_stored_in_more_groups_than_slots_stop_serve_naming_them(sqlite_url):
    """An older version carried up to 64 groups per VM; this one carries 8. Such a VM would
    make every compile fail (nothing programmed) and dropping a group could drop an
    isolation: refuse to start and name each VM."""
    import pytest
    from typer.testing import CliRunner

    from vfence.controller.cli import app
    from vfence.controller.policy import PolicyError
    from vfence.controller.store import models as m

    service, _ = _service(sqlite_url)
    client = TestClient(create_app(service), base_url=LOOPBACK)
    for name, mac in (("wide", "00:00:00:00:00:01"), ("fine", "00:00:00:00:00:02")):
        vm = {"name": name, "mac": mac, "ips": [], "segment": "s", "groups": ["g0"]}
        assert client.post("/v1/vms", json=vm).status_code == 201
    with service.sessions.begin() as s:  # what the older version could store
        row = s.query(m.VM).filter_by(name="wide").one()
        row.groups += [m.Group(name=f"x{i}", bit=100 + i) for i in range(8)]
    with pytest.raises(PolicyError) as e:
        Service(service.sessions)
    assert [x["field"] for x in e.value.errors] == ["vms.wide.groups"]
    assert "in 9 groups, at most 8" in e.value.errors[0]["reason"]
    r = CliRunner().invoke(app, ["serve", "--db", sqlite_url])
    assert r.exit_code == 2 and "vms.wide.groups" in r.output, r.output
    with service.sessions.begin() as s:  # the operator removes one: it starts again
        row = s.query(m.VM).filter_by(name="wide").one()
        row.groups = row.groups[:8]
    assert len(Service(service.sessions).state.vms["wide"].groups) == 8
