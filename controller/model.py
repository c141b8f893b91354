"""Plain typed objects the compiler works on. No I/O, no ORM, no os-ken."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VM:
    id: int  # small stable integer (database id): lands in metadata and cookies
    name: str
    mac: str  # lower-case colon form
    ips: tuple[str, ...]
    segment_id: int
    segment: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Switch:
    dpid: int
    name: str
    label: int  # host label carried in the VLAN id across the fabric (1..4094)


@dataclass(frozen=True, order=True)
class PortRef:
    dpid: int
    port_no: int


@dataclass(frozen=True, order=True)
class Link:
    """One direction of a switch-to-switch link, as LLDP saw it."""

    src: PortRef
    dst: PortRef


@dataclass(frozen=True)
class Binding:
    """VM attached to a switch port. ``how``: ovsdb, announce, first-frame, restored."""

    vm: str
    port: PortRef
    port_name: str = ""
    how: str = "ovsdb"


@dataclass
class NetworkState:
    """Everything the compiler needs: switches, links, VMs and where they are."""

    switches: dict[int, Switch] = field(default_factory=dict)
    links: set[Link] = field(default_factory=set)
    vms: dict[str, VM] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
