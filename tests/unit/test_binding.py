"""The binding and migration state machine (controller/binding.py) on its own, and the
service's one path: a dry run or a refused change leaves the live state as it was."""

from __future__ import annotations

import copy

import pytest
import yaml
from fastapi.testclient import TestClient

from vfence.controller import binding
from vfence.controller.api import create_app
from vfence.controller.hosts import Interface
from vfence.controller.model import VM, Binding, PortRef

from .. import LOOPBACK
from .test_trust import HV1, HV2, _connect, _host, _service

PAY = VM(1, "pay-1", "00:00:00:00:01:01", ("10.0.0.11",), 1, "prod", ("payroll",))
OLD, NEW, OTHER = PortRef(HV1, 3), PortRef(HV2, 7), PortRef(HV2, 8)


def world(ports: dict[int, dict[int, str]], learns: bool = False, now: float = 100.0,
          interfaces: tuple[Interface, ...] | None = None) -> binding.World:
    return binding.World({"pay-1": PAY}, ports, {}, interfaces, lambda dpid: learns,
                         lambda dpid: f"hv{dpid & 0xF}", now)


def placed() -> binding.Places:
    return binding.Places(bindings={"pay-1": Binding("pay-1", OLD, "vnet0", "ovsdb")})


def kinds(out: binding.Outcome) -> list[str]:
    return [e.kind if isinstance(e, binding.Audit) else type(e).__name__ for e in out.effects]


def test_step_never_changes_its_input():
    places = placed()
    places.announced["pay-1"] = binding.Announcement(HV2, frozenset({8}), 700.0)
    before = copy.deepcopy(places)
    w = world({HV1: {3: "vnet0"}, HV2: {7: "vnet7", 8: "vnet8"}}, learns=True)
    for event in (binding.FirstFrame(NEW, PAY.mac, "vnet7"), binding.Expire(1e9),
                  binding.Forget("pay-1"), binding.PortsChanged(HV1),
                  binding.Rebind()):
        binding.step(places, w, event)
        assert places == before, f"{event} changed the places it was given"


def test_an_announced_move_completes_on_a_port_that_appeared_since():
    w = world({HV1: {3: "vnet0"}, HV2: {8: "vnet8"}})
    out = binding.step(placed(), w, binding.Announce("pay-1", HV2))
    assert out.places.view()[2] == {"pay-1": HV2} and kinds(out) == ["migration-announced"]
    # a port that was there at the announcement cannot take the VM
    stale = binding.step(out.places, w, binding.FirstFrame(OTHER, PAY.mac))
    assert stale.places.bindings["pay-1"].port == OLD and not stale.effects
    w = world({HV1: {3: "vnet0"}, HV2: {7: "vnet7", 8: "vnet8"}})  # the VM's port came
    moved = binding.step(out.places, w, binding.FirstFrame(NEW, PAY.mac, "vnet7"))
    assert moved.places.bindings["pay-1"] == Binding("pay-1", NEW, "vnet7", "announce")
    assert moved.moves == [binding.Moved("pay-1", HV1, HV2)]
    assert kinds(moved) == ["Moved", "Located", "vm-moved"]
    assert moved.places.view()[2] == {}, "the announcement ends with the move"
    assert ("pay-1", OLD) in moved.places.retired


def test_a_frame_alone_does_not_move_a_vm_that_is_still_up():
    w = world({HV1: {3: "vnet0"}, HV2: {7: "vnet7"}}, learns=True)
    out = binding.step(placed(), w, binding.FirstFrame(NEW, PAY.mac, "vnet7"))
    assert out.places.bindings["pay-1"].port == OLD
    assert out.places.candidates["pay-1"][0].port == NEW
    assert kinds(out) == ["move-refused"] and out.once
    # the old port goes: the move completes on the candidate port
    gone = world({HV1: {}, HV2: {7: "vnet7"}}, learns=True)
    done = binding.step(out.places, gone, binding.PortsChanged(HV1))
    assert done.places.bindings["pay-1"].port == NEW and done.moves


def test_a_refused_frame_holds_no_claim_on_the_vm_for_long():
    """A forged first frame while the VM is up elsewhere makes its port a candidate: not
    one that takes the VM when its real port goes much later (a reboot, a re-plug)."""
    w = world({HV1: {3: "vnet0"}, HV2: {7: "vnet7"}}, learns=True)
    out = binding.step(placed(), w, binding.FirstFrame(NEW, PAY.mac, "vnet7"))
    late = 100.0 + binding.CANDIDATE_LIFETIME + 1
    gone = world({HV1: {}, HV2: {7: "vnet7"}}, learns=True, now=late)
    done = binding.step(out.places, gone, binding.PortsChanged(HV1))
    assert "pay-1" not in done.places.bindings and kinds(done) == ["Unlocated", "vm-unbound"]
    swept = binding.step(out.places, world({}, now=late), binding.Expire(late))
    assert not swept.places.candidates


def test_a_standby_port_takes_over_on_the_vms_first_frame_only():
    up = {HV1: {3: "vnet0"}, HV2: {7: "vnet7"}}
    ifaces = (Interface(HV1, 3, "vnet0", PAY.mac, "pay-1"),
              Interface(HV2, 7, "vnet7", PAY.mac, "pay-1"))
    out = binding.step(placed(), world(up, interfaces=ifaces), binding.Rebind())
    assert out.places.standby["pay-1"].port == NEW and kinds(out) == ["vm-standby"]
    forged = binding.step(out.places, world(up), binding.StandbyFrame(NEW, "00:00:00:00:09:09"))
    assert forged.places.standby and not forged.effects
    seen = binding.step(out.places, world(up), binding.StandbyFrame(NEW, PAY.mac))
    assert seen.places.bindings["pay-1"].port == NEW and not seen.places.standby
    assert seen.moves == [binding.Moved("pay-1", HV1, HV2)]


def test_announcements_expire_and_go_with_their_vm():
    w = world({HV1: {3: "vnet0"}, HV2: {}})
    out = binding.step(placed(), w, binding.Announce("pay-1", HV2))
    assert binding.step(out.places, w, binding.Expire(100.0)).places.announced
    late = binding.step(out.places, w, binding.Expire(100.0 + binding.ANNOUNCE_LIFETIME + 1))
    assert not late.places.announced and kinds(late) == ["migration-expired"]
    gone = binding.step(out.places, w, binding.Forget("pay-1"))
    assert not gone.places.announced and not gone.places.bindings


# --- the service's one path --------------------------------------------------------------

VM_BODY = {"name": "pay-1", "mac": PAY.mac, "ips": ["10.0.0.11"], "segment": "prod",
           "groups": ["payroll"]}


def _mid_migration(sqlite_url):
    """pay-1 bound on hv1 and prepared (standby) on hv2: a live migration in progress."""
    service, rec = _service(sqlite_url)
    _host(service, "hv1", HV1, [Interface(HV1, 3, "vnet0", PAY.mac, "pay-1")])
    _host(service, "hv2", HV2, [Interface(HV2, 7, "vnet7", PAY.mac, "pay-1")])
    _connect(service, HV1, {3: "vnet0"})
    _connect(service, HV2, {7: "vnet7"})
    client = TestClient(create_app(service), base_url=LOOPBACK)
    assert client.post("/v1/vms", json=VM_BODY).status_code == 201
    assert service.places.standby["pay-1"].port == NEW
    return service, rec, client


def _live(service):
    with service.sessions() as s:
        from vfence.controller import registry
        rows = [(e.type, e.vm) for e in registry.events(s, limit=1000)]
    return (copy.deepcopy(service.state), copy.deepcopy(service.places),
            dict(service.switches.installed), rows)


# moves pay-1 out of its group, adds web-1, and turns default deny on: every switch changes
DOC = {"segments": [{"name": "prod"}], "groups": [{"name": "payroll"}],
       "vms": [{**VM_BODY, "groups": []}, {"name": "web-1", "mac": "00:00:00:00:01:02",
                                            "ips": ["10.0.0.21"], "segment": "prod"}],
       "rules": [], "defaults": {"intra_group": "allow", "inter_group": "deny"}}


def test_a_dry_run_mid_migration_touches_nothing_live(sqlite_url):
    service, rec, client = _mid_migration(sqlite_url)
    before, sent = _live(service), len(rec.sent)
    r = client.put("/v1/policy", params={"dry_run": True}, json=DOC)
    assert r.status_code == 200, r.text
    assert r.json()["dry_run"] and r.json()["vms"]["added"] == ["web-1"]
    assert r.json()["hosts"]["hv1"]["add"] > 0, "the report says what would change"
    assert _live(service) == before and len(rec.sent) == sent
    assert client.get("/v1/vms").json()[0]["groups"] == ["payroll"]


def test_a_refused_change_mid_migration_touches_nothing_live(sqlite_url):
    service, rec, client = _mid_migration(sqlite_url)
    before = _live(service)
    rec.fail = True  # every switch refuses its bundle
    r = client.put("/v1/policy", json=DOC)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
    assert "refused" in r.json()["detail"] and "rolled back" in r.json()["detail"]
    assert _live(service) == before
    rec.fail = False
    assert client.get("/v1/vms/web-1").status_code == 404
    # the same change, accepted, goes through the same path
    assert client.put("/v1/policy", json=DOC).status_code == 200
    assert "web-1" in service.state.vms and service.places.standby["pay-1"].port == NEW


@pytest.mark.parametrize("bad", ["rules: [{name: r}]", "vms: [{name: x, mac: nope}]"])
def test_an_invalid_policy_mid_migration_touches_nothing_live(sqlite_url, bad):
    service, rec, client = _mid_migration(sqlite_url)
    before, sent = _live(service), len(rec.sent)
    r = client.put("/v1/policy", json={"segments": [{"name": "prod"}], **yaml.safe_load(bad)})
    assert r.status_code == 422, r.text
    assert _live(service) == before and len(rec.sent) == sent


def test_listing_binds_the_up_port_and_makes_the_down_one_its_standby_in_either_order():
    """A VM registered (or a controller restarted) mid-migration: both ports listed, one
    link up, one not yet. Whatever the port order, the up one holds the VM and the down
    one waits as its standby; an unbound VM on a down port alone stays unbound."""
    for up, down in ((OLD, NEW), (NEW, OLD)):
        ifaces = tuple(Interface(p.dpid, p.port_no, f"vnet{p.port_no}", PAY.mac, "pay-1")
                       for p in (up, down))
        w = world({up.dpid: {up.port_no: "up"}, down.dpid: {}}, interfaces=ifaces)
        out = binding.step(binding.Places(), w, binding.HostListed(frozenset({HV1, HV2}),
                                                                   frozenset({up, down})))
        assert out.places.bindings["pay-1"].port == up
        assert out.places.standby["pay-1"].port == down
        alone = binding.step(binding.Places(), world({down.dpid: {}}, interfaces=ifaces[1:]),
                             binding.HostListed(frozenset({HV1, HV2}), frozenset({down})))
        assert "pay-1" not in alone.places.bindings


def test_a_standby_on_a_port_whose_link_is_down_survives_a_port_status_of_its_switch():
    """The target's port exists (its OVSDB lists it) but its link is not up until the VM
    resumes there: a port-status from that switch (another port, or this one's link
    going up late, as a busy controller may see them) must not drop the standby, or the
    move becomes an unbind and a bind. The port's removal does drop it."""
    ifaces = tuple(Interface(p.dpid, p.port_no, f"vnet{p.port_no}", PAY.mac, "pay-1")
                   for p in (OLD, NEW))
    w = world({HV1: {OLD.port_no: "up"}, HV2: {}}, interfaces=ifaces)
    places = binding.step(binding.Places(), w, binding.HostListed(
        frozenset({HV1, HV2}), frozenset({OLD, NEW}))).places
    assert places.standby["pay-1"].port == NEW
    # switch-over: the old port's link went down, the new one's "up" is not seen yet
    w_over = world({HV1: {}, HV2: {}}, interfaces=ifaces)
    out = binding.step(places, w_over, binding.PortsChanged(HV2))
    assert out.places.standby["pay-1"].port == NEW, kinds(out)
    # the old port goes: the move completes on the standby (not unbound, then bound)
    w_gone = world({HV1: {}, HV2: {NEW.port_no: "up"}}, interfaces=ifaces[1:])
    out = binding.step(out.places, w_gone, binding.PortsChanged(HV1))
    assert out.places.bindings["pay-1"].port == NEW and "vm-unbound" not in kinds(out)
    assert "Moved" in kinds(out)
    # control: the standby's port removed from its host's OVSDB: the standby goes
    w_removed = world({HV1: {OLD.port_no: "up"}, HV2: {}}, interfaces=ifaces[:1])
    out = binding.step(places, w_removed, binding.PortsChanged(HV2))
    assert "pay-1" not in out.places.standby


def test_a_standby_whose_link_is_not_up_yet_survives_the_old_port_going_first():
    """A frozen or busy controller hears of the old port's link going down (or the port
    going) before the new port's link coming up: the VM keeps its standby, and the new
    link completes the move (a move, never an unbind and a bind)."""
    ifaces = tuple(Interface(p.dpid, p.port_no, f"vnet{p.port_no}", PAY.mac, "pay-1")
                   for p in (OLD, NEW))
    w = world({HV1: {OLD.port_no: "up"}, HV2: {}}, interfaces=ifaces)
    places = binding.step(binding.Places(), w, binding.HostListed(
        frozenset({HV1, HV2}), frozenset({OLD, NEW}))).places
    old_down = world({HV1: {}, HV2: {}}, interfaces=ifaces)
    out = binding.step(places, old_down, binding.PortsChanged(HV1))
    assert out.places.standby["pay-1"].port == NEW, kinds(out)
    assert "vm-unbound" not in kinds(out)
    gone = world({HV1: {}, HV2: {}}, interfaces=ifaces[1:])  # the old port is deleted too
    out = binding.step(out.places, gone, binding.HostListed(frozenset({HV1, HV2}),
                                                            frozenset({NEW})))
    assert out.places.standby["pay-1"].port == NEW and "vm-unbound" not in kinds(out)
    up = world({HV1: {}, HV2: {NEW.port_no: "up"}}, interfaces=ifaces[1:])
    out = binding.step(out.places, up, binding.PortsChanged(HV2))
    assert out.places.bindings["pay-1"].port == NEW and "Moved" in kinds(out), kinds(out)
    assert "pay-1" not in out.places.standby
