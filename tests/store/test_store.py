"""The store against SQLite and a real PostgreSQL, with the Alembic migration applied."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select

from vfence.controller import registry
from vfence.controller.errors import Conflict
from vfence.controller.model import Binding, PortRef
from vfence.controller.store import db
from vfence.controller.store import models as m

SPEC = registry.VMSpec("pay-1", "00:00:00:00:01:01", ("10.0.0.11",), "prod", ("payroll",))


def test_migration_creates_every_table_and_matches_models(engine):
    tables = set(inspect(engine).get_table_names())
    assert set(m.Base.metadata.tables) <= tables
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), m.Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(engine):
    db.upgrade(engine)
    with engine.connect() as c:
        assert MigrationContext.configure(c).get_current_revision() == "0009"


def test_vm_roundtrip_creates_segment_and_groups(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        registry.create_vm(s, SPEC)
    with sessions() as s:
        row = registry.get_vm(s, "pay-1")
        assert (row.mac, row.segment.name, [a.ip for a in row.ips]) == (
            "00:00:00:00:01:01", "prod", ["10.0.0.11"])
        assert [g.name for g in row.groups] == ["payroll"]
        assert s.scalar(select(func.count()).select_from(m.Segment)) == 1


@pytest.mark.parametrize("spec, field", [
    (registry.VMSpec("pay-1", "00:00:00:00:09:09", (), "prod"), "name"),
    (registry.VMSpec("other", "00:00:00:00:01:01", (), "prod"), "mac"),
    (registry.VMSpec("other", "00:00:00:00:09:09", ("10.0.0.11",), "prod"), "ips[0]"),
])
def test_conflicts_name_the_field_and_write_nothing(engine, spec, field):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        registry.create_vm(s, SPEC)
    with pytest.raises(Conflict) as e, sessions.begin() as s:
        registry.create_vm(s, spec)
    assert e.value.field == field
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(m.VM)) == 1
        assert s.scalar(select(func.count()).select_from(m.VMAddress)) == 1


def test_same_ip_in_another_segment_is_allowed(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        registry.create_vm(s, SPEC)
        registry.create_vm(s, registry.VMSpec("x", "00:00:00:00:09:09", ("10.0.0.11",), "dev"))


def test_location_history_is_appended_and_closed(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        vm = registry.create_vm(s, SPEC)
        registry.set_location(s, vm, Binding("pay-1", PortRef(0x101, 3), "hv1-eth3"), "hv1")
        registry.set_location(s, vm, Binding("pay-1", PortRef(0x102, 4), "hv2-eth4"), "hv2")
    with sessions() as s:
        hist = list(s.scalars(select(m.LocationHistory).order_by(m.LocationHistory.id)))
        assert [(h.switch_name, h.port_no) for h in hist] == [("hv1", 3), ("hv2", 4)]
        assert hist[0].until is not None and hist[1].until is None
        loc = registry.get_vm(s, "pay-1").location
        assert (loc.dpid, loc.port_no, loc.port_name) == ("0000000000000102", 4, "hv2-eth4")
    with sessions.begin() as s:
        registry.delete_vm(s, "pay-1")
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(m.Location)) == 0
        assert s.scalar(select(func.count()).select_from(m.LocationHistory)) == 2
        assert all(h.until is not None for h in s.scalars(select(m.LocationHistory)))


def test_switch_labels_are_unique_and_stable(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        a = registry.ensure_switch(s, 0xFFFF_FFFF_FFFF_FFFF, "big")  # full 64-bit dpid
        b = registry.ensure_switch(s, 0x102, "hv2")
        again = registry.ensure_switch(s, 0xFFFF_FFFF_FFFF_FFFF, "renamed")
    assert (a.label, b.label, again.label, again.name) == (1, 2, 1, "renamed")


def test_router_numbers_stay_while_the_policy_names_the_router(engine):
    """A router keeps its number (its conntrack zone, its cookies) when others are
    removed, added or listed in another order; a removed router's number is free again."""
    from vfence.controller import policy

    def apply(*routers: str) -> dict[str, int]:
        doc = {"segments": [{"name": f"s{i}", "subnet": f"10.{i}.0.0/24",
                             "gateway": f"10.{i}.0.1"} for i in range(4)],
               "routers": [{"name": r, "segments": [f"s{i}"]} for i, r in enumerate(routers)]}
        with db.sessions(engine).begin() as s:
            registry.sync_policy(s, policy.parse(doc))
            return registry.router_numbers(s)

    assert apply("a", "b", "c") == {"a": 0, "b": 1, "c": 2}
    assert apply("c", "b") == {"b": 1, "c": 2}  # a removed, the others stay, any order
    assert apply("d", "b", "c") == {"b": 1, "c": 2, "d": 0}  # d takes the free number


def test_the_upgrade_numbers_the_stored_routers_as_they_were_numbered(tmp_path):
    """Before 0005 a router's number was its index in the newest document: an upgrade
    keeps exactly those numbers (no routed connection moves to another zone)."""
    from sqlalchemy import insert

    engine = db.make_engine(f"sqlite:///{tmp_path}/old.db")
    db.upgrade(engine, "0004")
    policies = m.PolicyDocument.__table__
    with engine.begin() as c:
        for routers in (["old"], ["r2", "r1"]):
            c.execute(insert(policies).values(document={"routers": [
                {"name": n, "segments": []} for n in routers]}))
    db.upgrade(engine)
    with db.sessions(engine).begin() as s:
        assert registry.router_numbers(s) == {"r2": 0, "r1": 1}


def test_dns_records_keep_their_rows_and_take_one_per_zone(engine):
    """0007: the rows the server took survive the new key (records made before vfence
    marked its names are still its own), and a PTR moving zone can be in both."""
    from alembic import command
    from sqlalchemy import text

    command.downgrade(db.alembic_config(engine), "0006")
    row = "('127.0.0.1:53', '{}', '5.0.30.10.in-addr.arpa.', 'PTR', 'web-1.vms.example.')"
    insert = "INSERT INTO dns_records (server, zone, owner, rtype, value) VALUES "
    with engine.begin() as c:
        c.execute(text(insert + row.format("0.30.10.in-addr.arpa.")))
    db.upgrade(engine)
    with engine.begin() as c:
        c.execute(text(insert + row.format("30.10.in-addr.arpa.")))
    with db.sessions(engine)() as s:
        assert sorted(r.zone for r in s.scalars(select(m.DnsRecord))) == [
            "0.30.10.in-addr.arpa.", "30.10.in-addr.arpa."]
