"""VM registry in the database: create, delete, look up, record locations.

Functions take a SQLAlchemy session and leave committing to the caller, so one
API call is one transaction: on any error nothing is written.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, aliased

from . import model
from .addresses import vm_address
from .errors import Conflict, Invalid, NotFound
from .flows import MAX_GROUPS, MAX_LABEL, MAX_SEGMENT_TAG, MAX_VM_TAG
from .model import Policy, VMSpec, dpid_str
from .pipeline import MAX_ROUTERS
from .store import models as m
from .store.models import utcnow


def to_model(row: m.VM) -> model.VM:
    """The compiler's view of a VM: its tags (never database ids) as ``id``/``segment_id``."""
    return model.VM(
        id=row.tag, name=row.name, mac=row.mac, ips=tuple(a.ip for a in row.ips),
        segment_id=row.segment.tag, segment=row.segment.name,
        groups=tuple(sorted(g.name for g in row.groups)),
    )


# --- tags: small numbers that flows carry, allocated densely -------------------------------
# Reaching a limit is a Conflict (409), not Invalid (422): the request itself is fine, what
# is registered already leaves no room (a VM's tag is free again when the VM goes).

_LIMITS: dict[Any, tuple[int, int, str]] = {
    # column: (first, last, what the number is)
    m.VM.tag: (1, MAX_VM_TAG, "VMs can be registered at once (the VM tag is 16 bits: "
                               "metadata bits 16-31 and reg4)"),
    m.Segment.tag: (1, MAX_SEGMENT_TAG, "segments can exist (the segment tag is 16 bits: "
                                         "metadata bits 0-15 and the conntrack zone)"),
    m.Group.bit: (0, MAX_GROUPS - 1, "groups can exist at once (the group number is "
                                      "16 bits: it names the group's conjunctions)"),
    m.Switch.label: (1, MAX_LABEL, "switches can have a host label (the VLAN id "
                                    "on the fabric)"),
    m.RouterNumber.number: (0, MAX_ROUTERS - 1, "routers can exist (each has its own "
                                                "conntrack zone)"),
}


@cache
def _free_queries(column: InstrumentedAttribute[Any]) -> tuple[Select[Any], Select[Any]]:
    """Is the first number taken; the lowest number above a taken one that is free.
    Built once: a policy document can allocate thousands of tags in one go."""
    first = _LIMITS[column][0]
    nxt = getattr(aliased(column.class_), column.key)
    return (select(column).where(column == first),
            select(func.min(column + 1)).where(
                column >= first, ~select(nxt).where(nxt == column + 1).exists()))


def _allocate(session: Session, column: InstrumentedAttribute[Any], who: str,
              field: str) -> int:
    """The lowest number of ``column``'s range that no row holds, or Conflict naming
    ``field`` when every one is taken."""
    first, last, what = _LIMITS[column]
    is_first_taken, lowest_gap = _free_queries(column)
    if session.scalar(is_first_taken) is None:
        return first
    gap = session.scalar(lowest_gap)
    if gap is None or gap > last:
        raise Conflict(f"at most {last - first + 1} {what}; {who} would be one more", field)
    return int(gap)


def _get_or_create(session: Session, cls: Any, name: str, field: str) -> Any:
    """The row named ``name``; a new segment gets a tag and a new group a bit (Conflict at
    ``field`` when none is free)."""
    row = session.scalar(select(cls).where(cls.name == name))
    if row is None:
        row = cls(name=name)
        if cls is m.Group:
            row.bit = _allocate(session, m.Group.bit, f"group {name!r}", field)
        elif cls is m.Segment:
            row.tag = _allocate(session, m.Segment.tag, f"segment {name!r}", field)
        session.add(row)
        session.flush()
    return row


def segments(session: Session) -> list[m.Segment]:
    return list(session.scalars(select(m.Segment).order_by(m.Segment.name)))


def groups(session: Session) -> list[m.Group]:
    return list(session.scalars(select(m.Group).order_by(m.Group.name)))


def _number_routers(session: Session, names: list[str]) -> None:
    """Routers the policy no longer names give their numbers back; new ones take the
    lowest free numbers; the others keep theirs."""
    session.execute(delete(m.RouterNumber).where(m.RouterNumber.name.not_in(names)))
    session.flush()
    have = set(session.scalars(select(m.RouterNumber.name)))
    for i, name in enumerate(names):
        if name not in have:
            session.add(m.RouterNumber(name=name, number=_allocate(
                session, m.RouterNumber.number, f"router {name!r}", f"routers[{i}]")))
            session.flush()


def router_numbers(session: Session) -> dict[str, int]:
    return {r.name: r.number for r in session.scalars(select(m.RouterNumber))}


def segment_tags(session: Session) -> dict[str, int]:
    return {g.name: g.tag for g in session.scalars(select(m.Segment))}


def group_bits(session: Session) -> dict[str, int]:
    return {g.name: g.bit for g in session.scalars(select(m.Group)) if g.bit is not None}


def create_vm(session: Session, spec: VMSpec) -> m.VM:
    """Insert a VM; a segment or group named for the first time is created.

    Raises Conflict naming the field when the name, MAC or an IP (within the
    segment) is taken.
    """
    if session.scalar(select(m.VM).where(m.VM.name == spec.name)) is not None:
        raise Conflict(f"a VM named {spec.name!r} exists", "name")
    other = session.scalar(select(m.VM).where(m.VM.mac == spec.mac))
    if other is not None:
        raise Conflict(f"MAC {spec.mac} belongs to VM {other.name!r}", "mac")
    segment = _get_or_create(session, m.Segment, spec.segment, "segment")
    _check_ips(session, segment, spec)
    row = m.VM(name=spec.name, mac=spec.mac, segment=segment,
                tag=_allocate(session, m.VM.tag, f"VM {spec.name!r}", "name"))
    row.groups = [_get_or_create(session, m.Group, g, f"groups[{j}]")
                  for j, g in enumerate(spec.groups)]
    row.ips = [m.VMAddress(segment_id=segment.id, ip=ip) for ip in spec.ips]
    session.add(row)
    session.flush()
    return row


def _check_ips(session: Session, segment: m.Segment, spec: VMSpec) -> None:
    """Each address parses, sits in the segment's subnet and is no other VM's there."""
    subnet = [ipaddress.ip_network(segment.subnet)] if segment.subnet else []
    for i, ip in enumerate(spec.ips):
        try:
            vm_address(ip, subnet)
        except ValueError as e:
            raise Invalid(str(e), f"ips[{i}]") from None
        taken = session.scalar(
            select(m.VMAddress).where(
                m.VMAddress.segment_id == segment.id, m.VMAddress.ip == ip
            )
        )
        owner = session.get(m.VM, taken.vm_id) if taken is not None else None
        if taken is not None and (owner is None or owner.name != spec.name):
            raise Conflict(
                f"IP {ip} belongs to VM {owner.name if owner else '?'!r} in segment "
                f"{spec.segment!r}", f"ips[{i}]",
            )
    _check_link_locals(session, segment.id, spec)


def readdress_vm(session: Session, name: str, ips: tuple[str, ...] | None,
                 segment: str | None) -> tuple[model.VM, model.VM]:
    """New addresses and/or segment for a registered VM, checked like a new VM's (a
    segment named for the first time is created). Returns the VM before and after."""
    row = get_vm(session, name)
    before = to_model(row)
    spec = VMSpec(name, before.mac, before.ips if ips is None else ips,
                  before.segment if segment is None else segment, before.groups)
    if len(set(spec.ips)) != len(spec.ips):
        raise Invalid("an address is listed twice", "ips")
    _check_ips(session, _get_or_create(session, m.Segment, spec.segment, "segment"), spec)
    update_vm(session, row, spec)
    return before, to_model(row)


def _eui64_mac(ip: str) -> str | None:
    """The MAC an EUI-64 link-local address was made from, if it is one."""
    a = ipaddress.IPv6Address(ip)
    if not a.is_link_local or a.packed[11:13] != b"\xff\xfe":
        return None
    b = a.packed[8:16]
    return ":".join(f"{x:02x}" for x in (b[0] ^ 0x02, b[1], b[2], b[5], b[6], b[7]))


def _check_link_locals(session: Session, segment_id: int, spec: VMSpec) -> None:
    """A VM's EUI-64 link-local address (from its MAC) is its own: no other VM of the
    segment may register it, or it could answer neighbour discovery for it."""
    for i, ip in enumerate(spec.ips):
        mac = _eui64_mac(ip) if ":" in ip else None
        if mac is None or mac == spec.mac:
            continue
        owner = session.scalar(select(m.VM).where(m.VM.mac == mac,
                                                   m.VM.segment_id == segment_id))
        if owner is not None and owner.name != spec.name:
            raise Conflict(f"{ip} is the link-local address of VM {owner.name!r} (made from "
                           f"its MAC)", f"ips[{i}]")
    mine = model.eui64_link_local(spec.mac)
    taken = session.scalar(select(m.VMAddress).where(m.VMAddress.segment_id == segment_id,
                                                      m.VMAddress.ip == mine))
    if taken is not None:
        owner = session.get(m.VM, taken.vm_id)
        if owner is not None and owner.name != spec.name:
            raise Conflict(f"VM {owner.name!r} registered {mine}, the link-local address made "
                           f"from this MAC", "mac")


def update_vm(session: Session, row: m.VM, spec: VMSpec) -> bool:
    """Make ``row`` match ``spec``; True if anything changed."""
    before = to_model(row)
    if (before.mac, before.ips, before.segment, before.groups) == (
            spec.mac, spec.ips, spec.segment, tuple(sorted(spec.groups))):
        return False
    segment = _get_or_create(session, m.Segment, spec.segment, "segment")
    _check_link_locals(session, segment.id, spec)
    row.mac, row.segment = spec.mac, segment
    row.groups = [_get_or_create(session, m.Group, g, f"groups[{j}]")
                  for j, g in enumerate(spec.groups)]
    if (before.ips, before.segment) != (spec.ips, spec.segment):
        row.ips = []
        session.flush()  # old addresses go before new ones arrive (unique per segment)
        row.ips = [m.VMAddress(segment_id=segment.id, ip=ip) for ip in spec.ips]
    session.flush()
    return True


def sync_policy(session: Session, policy: Policy, only: str | None = None
                ) -> dict[str, list[str]]:
    """Make the registry what ``policy`` says and store the document. ``only``: change
    that VM alone (checked against every registered VM, the API's too) and leave the
    VMs the document does not list.

    Returns the VM names added, removed and changed. Raises (and the caller rolls
    back) on any conflict.
    """
    for i, (name, subnet) in enumerate(policy.segments):
        _get_or_create(session, m.Segment, name, f"segments[{i}]").subnet = subnet
    for i, g in enumerate(policy.groups):
        _get_or_create(session, m.Group, g, f"groups[{i}]")
    _number_routers(session, [r.name for r in policy.routers])
    wanted = {v.name: v for v in policy.vms}
    existing = {r.name: r for r in list_vms(session)}
    report: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
    if only is not None:
        spec = wanted[only]
        _check_ips(session, _get_or_create(session, m.Segment, spec.segment, "segment"), spec)
        wanted = {only: spec}
        existing = {only: existing[only]} if only in existing else {}
    for name in sorted(set(existing) - set(wanted)):
        delete_vm(session, name)
        report["removed"].append(name)
    session.flush()
    for name in sorted(set(existing) & set(wanted)):
        if update_vm(session, existing[name], wanted[name]):
            report["changed"].append(name)
    for name in sorted(set(wanted) - set(existing)):
        create_vm(session, wanted[name])
        report["added"].append(name)
    session.add(m.PolicyDocument(document=policy.document, rule_priorities={
        r.name: r.priority for r in policy.rules}))
    session.flush()
    return report


def _newest_policy(session: Session) -> m.PolicyDocument | None:
    return session.scalar(select(m.PolicyDocument).order_by(m.PolicyDocument.id.desc()))


def current_policy(session: Session) -> dict[str, Any] | None:
    row = _newest_policy(session)
    return row.document if row is not None else None


def current_priorities(session: Session) -> dict[str, int]:
    """Each rule's priority in the policy in force (kept across edits and restarts)."""
    row = _newest_policy(session)
    return dict(row.rule_priorities or {}) if row is not None else {}


def get_vm(session: Session, name: str) -> m.VM:
    row = session.scalar(select(m.VM).where(m.VM.name == name))
    if row is None:
        raise NotFound(f"no VM named {name!r}", "name")
    return row


def list_vms(session: Session) -> list[m.VM]:
    return list(session.scalars(select(m.VM).order_by(m.VM.name)))


def delete_vm(session: Session, name: str) -> None:
    row = get_vm(session, name)
    close_location(session, row)
    session.delete(row)


def ensure_switch(session: Session, dpid: int, name: str) -> m.Switch:
    """The switch's row, created with the lowest free host label on first sight."""
    key = dpid_str(dpid)
    row = session.scalar(select(m.Switch).where(m.Switch.dpid == key))
    if row is None:
        label = _allocate(session, m.Switch.label, f"switch {key} ({name})", "label")
        row = m.Switch(dpid=key, name=name, label=label)
        session.add(row)
    row.name = name
    row.last_seen = utcnow()
    session.flush()
    return row


def switches(session: Session) -> list[m.Switch]:
    return list(session.scalars(select(m.Switch).order_by(m.Switch.label)))


def close_location(session: Session, vm: m.VM) -> None:
    """End the VM's current location (history row gets ``until``)."""
    if vm.location is None:
        return
    now = utcnow()
    open_rows = session.scalars(
        select(m.LocationHistory).where(
            m.LocationHistory.vm_name == vm.name, m.LocationHistory.until.is_(None)
        )
    )
    for h in open_rows:
        h.until = now
    session.delete(vm.location)
    vm.location = None
    session.flush()


def set_location(
    session: Session, vm: m.VM, binding: model.Binding, switch_name: str
) -> None:
    """Record that ``vm`` is now at ``binding``; the previous place goes to history."""
    close_location(session, vm)
    now = utcnow()
    key = dpid_str(binding.port.dpid)
    vm.location = m.Location(
        dpid=key, switch_name=switch_name, port_no=binding.port.port_no,
        port_name=binding.port_name, since=now, how=binding.how,
    )
    session.add(
        m.LocationHistory(
            vm_name=vm.name, dpid=key, switch_name=switch_name,
            port_no=binding.port.port_no, port_name=binding.port_name, since=now,
            how=binding.how,
        )
    )
    session.flush()


def set_convergence(session: Session, vm: str, ms: float) -> None:
    """Convergence time of the VM's latest move, on its open history row."""
    row = session.scalar(select(m.LocationHistory).where(
        m.LocationHistory.vm_name == vm, m.LocationHistory.until.is_(None)))
    if row is not None:
        row.convergence_ms = round(ms, 3)


def history(session: Session, vm: str) -> list[m.LocationHistory]:
    return list(session.scalars(select(m.LocationHistory).where(
        m.LocationHistory.vm_name == vm).order_by(m.LocationHistory.id)))


def record_event(
    session: Session, type_: str, vm: str | None = None, host: str | None = None,
    **detail: object,
) -> None:
    session.add(m.Event(type=type_, vm=vm, host=host, detail=dict(detail)))


def events(session: Session, *, type_: str | None = None, vm: str | None = None,
           host: str | None = None, since: datetime | None = None, limit: int = 100,
           offset: int = 0, after: int | None = None) -> list[m.Event]:
    """Audit events, oldest first, filtered and paginated (``after``: ids above it)."""
    q = select(m.Event)
    if after is not None:
        q = q.where(m.Event.id > after)
    if type_:
        q = q.where(m.Event.type == type_)
    if vm:
        q = q.where(m.Event.vm == vm)
    if host:
        q = q.where(m.Event.host == host)
    if since:
        q = q.where(m.Event.ts >= since)
    return list(session.scalars(q.order_by(m.Event.id).offset(offset).limit(limit)))


def latest_events(session: Session, types: tuple[str, ...], limit: int) -> list[m.Event]:
    """The newest events of these types, newest first (the console's timeline)."""
    q = select(m.Event).where(m.Event.type.in_(types))
    return list(session.scalars(q.order_by(m.Event.id.desc()).limit(limit)))


def last_event_id(session: Session) -> int:
    """The newest event's id (0 without any): where a live stream starts."""
    return session.scalar(select(func.max(m.Event.id))) or 0
