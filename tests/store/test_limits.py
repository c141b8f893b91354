"""Every tag that flows carry has a width, and the registry allocates within it: at each
real limit the last one succeeds, the next is refused naming the field, and nothing is
written. Rows up to the limit are bulk-inserted (one statement), so each test stays fast
on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic import command
from sqlalchemy import func, insert, select, text

from vfence.controller import desired, registry, verify
from vfence.controller.errors import Conflict
from vfence.controller.flows import (
    MAX_GROUPS,
    MAX_LABEL,
    MAX_SEGMENT_TAG,
    MAX_VM_TAG,
    META_VM_SHIFT,
    Owner,
    cookie,
    cookie_owner,
)
from vfence.controller.model import Binding, Policy, PortRef
from vfence.controller.store import db
from vfence.controller.store import models as m

from ..unit.netfixtures import HV1, HV2, two_hosts_two_spines

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def count(sessions, model) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def mac(n: int) -> str:
    return "02:" + ":".join(f"{(n >> s) & 255:02x}" for s in (32, 24, 16, 8, 0))


def bulk_vms(s, segment_id: int, tags: range) -> None:
    s.execute(insert(m.VM), [{"name": f"bulk-{t}", "mac": mac(t), "segment_id": segment_id,
                              "tag": t, "created_at": NOW} for t in tags])


def spec(name: str, n: int, segment: str = "prod", groups: tuple[str, ...] = ()):
    return registry.VMSpec(name, mac(0x10_0000_0000 + n), (), segment, groups)


def test_vm_tags_stop_at_the_limit_with_a_conflict_naming_the_vm(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        seg = registry.create_vm(s, spec("first", 1)).segment.id  # tag 1
        bulk_vms(s, seg, range(2, MAX_VM_TAG))  # tags 2 .. 65534
    with sessions.begin() as s:
        assert registry.create_vm(s, spec("last", 2)).tag == MAX_VM_TAG  # the 65,535th
    with pytest.raises(Conflict) as e, sessions.begin() as s:
        registry.create_vm(s, spec("one-more", 3, groups=("new-group",)))
    assert e.value.status == 409 and e.value.field == "name"
    assert f"at most {MAX_VM_TAG} VMs" in e.value.reason and "'one-more'" in e.value.reason
    assert count(sessions, m.VM) == MAX_VM_TAG and count(sessions, m.Group) == 0
    with sessions.begin() as s:  # a freed tag is reused: the lowest free one
        registry.delete_vm(s, "bulk-700")
    with sessions.begin() as s:
        assert registry.create_vm(s, spec("again", 4)).tag == 700


def test_segment_tags_stop_at_the_limit_naming_the_segment_field(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        s.execute(insert(m.Segment), [{"name": f"s{t}", "tag": t}
                                      for t in range(1, MAX_SEGMENT_TAG)])
    with sessions.begin() as s:
        row = registry.create_vm(s, spec("a", 1, segment="last-segment"))
        assert row.segment.tag == MAX_SEGMENT_TAG  # the last segment a tag allows
    with pytest.raises(Conflict) as e, sessions.begin() as s:
        registry.create_vm(s, spec("b", 2, segment="one-more"))
    assert e.value.field == "segment" and f"at most {MAX_SEGMENT_TAG} segments" in e.value.reason
    assert count(sessions, m.Segment) == MAX_SEGMENT_TAG and count(sessions, m.VM) == 1
    # through a policy document the field is the segment's place in it
    doc = Policy(segments=(("one-more", None),))
    with pytest.raises(Conflict) as e, sessions.begin() as s:
        registry.sync_policy(s, doc)
    assert e.value.field == "segments[0]"
    assert count(sessions, m.Segment) == MAX_SEGMENT_TAG and count(sessions, m.VM) == 1


def test_group_numbers_stop_at_max_groups_naming_the_group(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        s.execute(insert(m.Group), [{"name": f"g{b}", "bit": b} for b in range(MAX_GROUPS - 1)])
    with sessions.begin() as s:
        row = registry.create_vm(s, spec("a", 1, groups=("g0", "last")))
        assert {g.name: g.bit for g in row.groups}["last"] == MAX_GROUPS - 1  # the 65,535th
    with pytest.raises(Conflict) as e, sessions.begin() as s:
        registry.create_vm(s, spec("b", 2, groups=("g1", "one-more")))
    assert e.value.field == "groups[1]" and f"at most {MAX_GROUPS} groups" in e.value.reason
    assert count(sessions, m.Group) == MAX_GROUPS and count(sessions, m.VM) == 1


def test_switch_labels_stop_at_4094(engine):
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        s.execute(insert(m.Switch), [{"dpid": f"{n:016x}", "name": f"sw{n}", "label": n,
                                      "first_seen": NOW, "last_seen": NOW}
                                     for n in range(1, MAX_LABEL)])
    with sessions.begin() as s:
        assert registry.ensure_switch(s, 0xAAAA, "last").label == MAX_LABEL  # the 4,094th
    with pytest.raises(Conflict) as e, sessions.begin() as s:
        registry.ensure_switch(s, 0xBBBB, "one-more")
    assert e.value.field == "label" and f"at most {MAX_LABEL} switches" in e.value.reason
    assert "000000000000bbbb" in e.value.reason
    assert count(sessions, m.Switch) == MAX_LABEL
    with sessions.begin() as s:  # a switch seen before keeps its label
        assert registry.ensure_switch(s, 0xAAAA, "renamed").label == MAX_LABEL


def _force_vm_ids_past(engine, s, n: int, segment_id: int) -> None:
    """The next VM row gets database id n + 1: a placeholder row holds id n."""
    s.execute(insert(m.VM), [{"id": n, "name": "placeholder", "mac": mac(n), "tag": MAX_VM_TAG,
                              "segment_id": segment_id, "created_at": NOW}])
    if engine.dialect.name == "postgresql":  # an explicit id does not move the sequence
        s.execute(text(f"SELECT setval(pg_get_serial_sequence('vms', 'id'), {n})"))


def test_a_vm_with_a_large_database_id_gets_a_small_tag_and_stays_isolated(engine):
    """Database ids only grow. The id 70,001 used as the VM's number would overflow
    metadata bits 16-31 into bit 32 (frame came from the fabric: policy skipped) and reg4;
    the flows carry its tag instead, and the isolation pair holds."""
    sessions = db.sessions(engine)
    with sessions.begin() as s:
        seg = registry.create_vm(s, spec("web-1", 1, groups=("frontend",)))  # tag 1
        _force_vm_ids_past(engine, s, 70_000, seg.segment.id)
        big = registry.create_vm(s, spec("pay-1", 2, groups=("payroll",)))
        registry.delete_vm(s, "placeholder")
    with sessions.begin() as s:
        other = registry.create_vm(s, spec("web-2", 3, groups=("frontend",)))
        assert (big.id, big.tag) == (70_001, 2)
        assert other.id > 70_001 and other.tag == 3
        state = two_hosts_two_spines()
        state.vms = {r.name: registry.to_model(r) for r in registry.list_vms(s)}
        state.group_bits = registry.group_bits(s)
    vm = state.vms["pay-1"]
    assert (vm.id, vm.segment_id) == (2, 1)
    state.policy = Policy(groups=("payroll", "frontend"), isolation=(("payroll", "frontend"),),
                          inter_group="deny")
    state.bindings = {"pay-1": Binding("pay-1", PortRef(HV1, 3)),
                      "web-1": Binding("web-1", PortRef(HV1, 4)),
                      "web-2": Binding("web-2", PortRef(HV2, 3))}
    flows = desired.compile_network(state)
    hv1 = flows[HV1]
    assert {cookie_owner(f.cookie)[1] for f in hv1 if f.cookie >> 56 == 0xA0 | Owner.VM} \
        == {1, 2, 3}
    mine = [f for f in hv1 if f.cookie == cookie(Owner.VM, 2)]
    assert mine
    metas = [i for f in mine for i in f.instructions if i[0] == "meta"]
    assert metas and all((v >> META_VM_SHIFT) & 0xFFFF == 2 and v < 1 << 32
                         for _, v, _ in metas)
    sets = [a for f in hv1 for i in f.instructions if i[0] == "apply" for a in i[1]
            if a[0] == "set"]
    assert ("set", "reg4", 2) in sets
    assert not [a for a in sets if a[1] in ("reg4", "reg5") and a[2] > MAX_VM_TAG]
    ports = {d: set() for d in state.switches}
    for lk in state.links:
        ports[lk.src.dpid].add(lk.src.port_no)
    for b in state.bindings.values():
        ports[b.port.dpid].add(b.port.port_no)
    (v,) = verify.verify(state, {d: list(f) for d, f in flows.items()}, ports)
    assert v.status == "isolated", (v.reason, v.witness)


def test_migration_gives_existing_rows_dense_tags_and_keeps_what_refers_to_them(engine):
    """From 0001 (before group bits and tags): every row and reference survives, and tags
    are 1, 2, ... in id order. On SQLite, a batch migration rebuilds the table; with
    foreign keys on, that used to cascade-delete vm_groups."""
    command.downgrade(db.alembic_config(engine), "0001")
    with engine.begin() as c:
        c.execute(text("INSERT INTO segments (id, name) VALUES (5, 'prod'), (90000, 'dev')"))
        c.execute(text("INSERT INTO groups (id, name) VALUES (1, 'payroll')"))
        for vid, seg in ((3, 5), (80000, 90000), (70000, 5)):
            c.execute(text("INSERT INTO vms (id, name, mac, segment_id, created_at) VALUES "
                           f"({vid}, 'vm{vid}', '{mac(vid)}', {seg}, '2026-01-01')"))
        c.execute(text("INSERT INTO vm_groups VALUES (70000, 1)"))
        c.execute(text("INSERT INTO vm_addresses (id, vm_id, segment_id, ip) VALUES "
                       "(1, 80000, 90000, '10.0.0.1')"))
        c.execute(text("INSERT INTO locations VALUES (3, '0000000000000101', 'hv1', 3, "
                       "'hv1-eth3', '2026-01-01', 'ovsdb')"))
    db.upgrade(engine)
    sessions = db.sessions(engine)
    with sessions() as s:
        assert [(r.id, r.tag) for r in s.scalars(select(m.VM).order_by(m.VM.id))] == [
            (3, 1), (70000, 2), (80000, 3)]
        assert [(r.id, r.tag) for r in s.scalars(select(m.Segment).order_by(m.Segment.id))] \
            == [(5, 1), (90000, 2)]
        assert [g.name for g in registry.get_vm(s, "vm70000").groups] == ["payroll"]
        assert [a.ip for a in registry.get_vm(s, "vm80000").ips] == ["10.0.0.1"]
        assert registry.get_vm(s, "vm3").location is not None
        model = registry.to_model(registry.get_vm(s, "vm80000"))
        assert (model.id, model.segment_id) == (3, 2)
    with sessions.begin() as s:  # new rows continue after the backfilled tags
        assert registry.create_vm(s, spec("new", 1, segment="prod")).tag == 4
