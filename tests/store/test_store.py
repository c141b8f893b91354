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
        assert MigrationContext.configure(c).get_current_revision() == "0004"


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
