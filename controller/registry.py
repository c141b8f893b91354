"""VM registry in the database: create, delete, look up, record locations.

Functions take a SQLAlchemy session and leave committing to the caller, so one
API call is one transaction: on any error nothing is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import model
from .errors import Conflict, NotFound
from .store import models as db
from .store.models import utcnow


@dataclass(frozen=True)
class VMSpec:
    name: str
    mac: str
    ips: tuple[str, ...]
    segment: str
    groups: tuple[str, ...] = ()


def dpid_str(dpid: int) -> str:
    return f"{dpid:016x}"


def to_model(row: db.VM) -> model.VM:
    return model.VM(
        id=row.id, name=row.name, mac=row.mac, ips=tuple(a.ip for a in row.ips),
        segment_id=row.segment_id, segment=row.segment.name,
        groups=tuple(sorted(g.name for g in row.groups)),
    )


def _get_or_create(session: Session, cls: Any, name: str) -> Any:
    row = session.scalar(select(cls).where(cls.name == name))
    if row is None:
        row = cls(name=name)
        session.add(row)
        session.flush()
    return row


def create_vm(session: Session, spec: VMSpec) -> db.VM:
    """Insert a VM; a segment or group named for the first time is created.

    Raises Conflict naming the field when the name, MAC or an IP (within the
    segment) is taken.
    """
    if session.scalar(select(db.VM).where(db.VM.name == spec.name)) is not None:
        raise Conflict(f"a VM named {spec.name!r} exists", "name")
    other = session.scalar(select(db.VM).where(db.VM.mac == spec.mac))
    if other is not None:
        raise Conflict(f"MAC {spec.mac} belongs to VM {other.name!r}", "mac")
    segment = _get_or_create(session, db.Segment, spec.segment)
    for i, ip in enumerate(spec.ips):
        taken = session.scalar(
            select(db.VMAddress).where(
                db.VMAddress.segment_id == segment.id, db.VMAddress.ip == ip
            )
        )
        if taken is not None:
            owner = session.get(db.VM, taken.vm_id)
            raise Conflict(
                f"IP {ip} belongs to VM {owner.name if owner else '?'!r} in segment "
                f"{spec.segment!r}", f"ips[{i}]",
            )
    row = db.VM(name=spec.name, mac=spec.mac, segment=segment)
    row.groups = [_get_or_create(session, db.Group, g) for g in spec.groups]
    row.ips = [db.VMAddress(segment_id=segment.id, ip=ip) for ip in spec.ips]
    session.add(row)
    session.flush()
    return row


def get_vm(session: Session, name: str) -> db.VM:
    row = session.scalar(select(db.VM).where(db.VM.name == name))
    if row is None:
        raise NotFound(f"no VM named {name!r}", "name")
    return row


def list_vms(session: Session) -> list[db.VM]:
    return list(session.scalars(select(db.VM).order_by(db.VM.name)))


def delete_vm(session: Session, name: str) -> None:
    row = get_vm(session, name)
    close_location(session, row)
    session.delete(row)


def ensure_switch(session: Session, dpid: int, name: str) -> db.Switch:
    """The switch's row, created with the lowest free host label on first sight."""
    key = dpid_str(dpid)
    row = session.scalar(select(db.Switch).where(db.Switch.dpid == key))
    if row is None:
        used = set(session.scalars(select(db.Switch.label)))
        label = next(i for i in range(1, 4095) if i not in used)
        row = db.Switch(dpid=key, name=name, label=label)
        session.add(row)
    row.name = name
    row.last_seen = utcnow()
    session.flush()
    return row


def switches(session: Session) -> list[db.Switch]:
    return list(session.scalars(select(db.Switch).order_by(db.Switch.label)))


def close_location(session: Session, vm: db.VM) -> None:
    """End the VM's current location (history row gets ``until``)."""
    if vm.location is None:
        return
    now = utcnow()
    open_rows = session.scalars(
        select(db.LocationHistory).where(
            db.LocationHistory.vm_name == vm.name, db.LocationHistory.until.is_(None)
        )
    )
    for h in open_rows:
        h.until = now
    session.delete(vm.location)
    vm.location = None
    session.flush()


def set_location(
    session: Session, vm: db.VM, binding: model.Binding, switch_name: str
) -> None:
    """Record that ``vm`` is now at ``binding``; the previous place goes to history."""
    close_location(session, vm)
    now = utcnow()
    key = dpid_str(binding.port.dpid)
    vm.location = db.Location(
        dpid=key, switch_name=switch_name, port_no=binding.port.port_no,
        port_name=binding.port_name, since=now, how=binding.how,
    )
    session.add(
        db.LocationHistory(
            vm_name=vm.name, dpid=key, switch_name=switch_name,
            port_no=binding.port.port_no, port_name=binding.port_name, since=now,
            how=binding.how,
        )
    )
    session.flush()


def record_event(
    session: Session, type_: str, vm: str | None = None, host: str | None = None,
    **detail: object,
) -> None:
    session.add(db.Event(type=type_, vm=vm, host=host, detail=dict(detail)))


def events(session: Session, limit: int = 100) -> Iterable[db.Event]:
    return session.scalars(select(db.Event).order_by(db.Event.id.desc()).limit(limit))
