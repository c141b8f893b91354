"""SQLAlchemy 2 models. ``location_history`` and ``events`` are append-only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None:  # (an aware non-UTC time: SQLite would keep its wall time)
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


vm_groups = Table(
    "vm_groups",
    Base.metadata,
    Column("vm_id", ForeignKey("vms.id", ondelete="CASCADE"), primary_key=True),
    Column("group_id", ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)


class DnsRecord(Base):
    """A record the DNS server took from vfence (its answer to an update was NOERROR):
    what the server holds, as far as vfence knows. What VMs ask for and is not here (or
    is here and no VM asks for) is a pending update, retried until the server takes it."""

    __tablename__ = "dns_records"
    __table_args__ = (UniqueConstraint("server", "zone", "owner", "rtype", "value"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    server: Mapped[str] = mapped_column(String(64))  # address:port
    zone: Mapped[str] = mapped_column(String(255))
    owner: Mapped[str] = mapped_column(String(255))
    rtype: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(255))


class ClusterMember(Base):
    """A controller of the cluster: alive while its heartbeat is recent."""

    __tablename__ = "cluster_members"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    advertise: Mapped[str] = mapped_column(String(255))  # where others and clients reach it
    heartbeat: Mapped[datetime] = mapped_column(UTCDateTime)
    reaches: Mapped[str | None] = mapped_column(Text)  # switches it reaches (JSON dpids)


class SwitchLease(Base):
    """Who masters a switch, until when, and in which term. The term grows by one at
    every change of holder and never goes back: it is the OpenFlow role request's
    generation id, so a switch refuses a master whose term is older."""

    __tablename__ = "switch_leases"
    dpid: Mapped[str] = mapped_column(String(16), primary_key=True)  # 16 hex digits
    member: Mapped[str] = mapped_column(String(128))
    term: Mapped[int] = mapped_column(BigInteger)
    expires: Mapped[datetime] = mapped_column(UTCDateTime)


class ClusterState(Base):
    """One row: the shared state's version (one more at every committed change; its row
    lock serialises changes across members) and the key that signs link probes."""

    __tablename__ = "cluster_state"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    lldp_key: Mapped[str] = mapped_column(String(64))  # 32 bytes, hex
    places: Mapped[str | None] = mapped_column(Text)  # the binding machine's (JSON)


class RouterNumber(Base):
    """A router's number (0..MAX_ROUTERS-1, the lowest free one when the policy first
    names it; free again once no policy does): its conntrack zone is ROUTER_ZONE_BASE +
    the number and its flows' cookies carry it, so neither moves when other routers come
    and go or the document lists them in another order."""

    __tablename__ = "routers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)


class Segment(Base):
    """A layer-2 segment. ``tag`` (1..MAX_SEGMENT_TAG, the lowest free one when the row is
    created; never the database id) is what flows carry: metadata bits 0-15, the conntrack
    zone, the owner id of its cookies."""

    __tablename__ = "segments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    subnet: Mapped[str | None] = mapped_column(String(64))
    tag: Mapped[int] = mapped_column(Integer, unique=True)


class Group(Base):
    """An isolation group; ``bit`` is its number (0..65534, the column keeps its first
    name): a VM in this group carries ``bit + 1`` in one of its register slots, and the
    group's conjunctions are named after it."""

    __tablename__ = "groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    bit: Mapped[int | None] = mapped_column(Integer, unique=True)


class VM(Base):
    """A registered VM. ``tag`` (1..MAX_VM_TAG, the lowest free one when the row is created;
    never the database id) is what flows carry: metadata bits 16-31, reg4, the owner id of
    its cookies."""

    __tablename__ = "vms"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    tag: Mapped[int] = mapped_column(Integer, unique=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    segment: Mapped[Segment] = relationship(lazy="joined")
    groups: Mapped[list[Group]] = relationship(secondary=vm_groups, lazy="selectin")
    ips: Mapped[list[VMAddress]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="VMAddress.id"
    )
    location: Mapped[Location | None] = relationship(
        cascade="all, delete-orphan", lazy="joined", uselist=False
    )


class VMAddress(Base):
    """One IP of a VM; unique within its segment."""

    __tablename__ = "vm_addresses"
    __table_args__ = (UniqueConstraint("segment_id", "ip"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), index=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    ip: Mapped[str] = mapped_column(String(45))


class Switch(Base):
    """A datapath vfence has seen. ``label`` is its host label on the fabric (VLAN id)."""

    __tablename__ = "switches"
    id: Mapped[int] = mapped_column(primary_key=True)
    dpid: Mapped[str] = mapped_column(String(16), unique=True)  # 16 hex digits
    name: Mapped[str] = mapped_column(String(64))
    label: Mapped[int] = mapped_column(Integer, unique=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Location(Base):
    """Where a VM is now (one row per bound VM)."""

    __tablename__ = "locations"
    vm_id: Mapped[int] = mapped_column(ForeignKey("vms.id", ondelete="CASCADE"), primary_key=True)
    dpid: Mapped[str] = mapped_column(String(16))
    switch_name: Mapped[str] = mapped_column(String(64))
    port_no: Mapped[int] = mapped_column(Integer)
    port_name: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    how: Mapped[str] = mapped_column(String(16))


class LocationHistory(Base):
    """Every place a VM has been, append-only; ``until`` is set when it left."""

    __tablename__ = "location_history"
    id: Mapped[int] = mapped_column(primary_key=True)
    vm_name: Mapped[str] = mapped_column(String(64), index=True)
    dpid: Mapped[str] = mapped_column(String(16))
    switch_name: Mapped[str] = mapped_column(String(64))
    port_no: Mapped[int] = mapped_column(Integer)
    port_name: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    how: Mapped[str] = mapped_column(String(16))
    convergence_ms: Mapped[float | None] = mapped_column(Float)


class PolicyDocument(Base):
    """Every policy document applied, newest last; the newest is in force."""

    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(primary_key=True)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    # rule name -> its flows' priority: kept across edits and restarts (None before 0004)
    rule_priorities: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)


class Event(Base):
    """Audit trail: bindings, moves, spoofs, switch connects, API changes."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    type: Mapped[str] = mapped_column(String(32), index=True)
    vm: Mapped[str | None] = mapped_column(String(64), index=True)
    host: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
