"""What each host's OVSDB says about itself: its name, its bridges, VM and fabric ports.

Data no VM can shape. Hosts are named by the operator or installer, never by what a
switch reports over OpenFlow (every integration bridge is called ``br-int``), and a port
faces the fabric only when the host's OVSDB marks it so:

- the operator's ``--ovsdb NAME=REMOTE`` names that host, whatever its OVSDB says; else
  ``Bridge external_ids:vfence-host=NAME`` names that bridge; else the host's name
  (``Open_vSwitch external_ids:vfence-host``, or ``external_ids:hostname``) names its
  only bridge, or ``NAME/BRIDGE`` when it has several;
- ``Bridge external_ids:vfence-role=fabric``: a fabric switch, every port faces the fabric;
- ``Interface external_ids:vfence-fabric=true``: that port faces the fabric.

A port that carries a VM's ids (``attached-mac``/``iface-id``) or ever had a VM bound is
never a fabric port, whatever it is marked: a VM must not become part of the fabric.
Pure functions; the OVSDB monitor (apps/ovsdb.py) fills these records.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .model import Link, PortRef

OFPP_MAX = 0xFF00  # above: reserved ports (OVSDB reports the bridge's own as 65534)

HOST_KEY = "vfence-host"
ROLE_KEY = "vfence-role"
FABRIC_KEY = "vfence-fabric"


@dataclass(frozen=True)
class Interface:
    """An OVSDB Interface row, as far as bindings and the fabric care."""

    dpid: int
    ofport: int
    name: str
    attached_mac: str | None = None
    iface_id: str | None = None
    fabric: bool = False  # external_ids:vfence-fabric=true

    @property
    def vm_port(self) -> bool:
        return bool(self.attached_mac or self.iface_id)


@dataclass(frozen=True)
class Bridge:
    dpid: int
    name: str
    host: str | None = None  # Bridge external_ids:vfence-host
    fabric: bool = False  # Bridge external_ids:vfence-role=fabric


@dataclass(frozen=True)
class HostDb:
    """One host's OVSDB, as the monitor last saw it."""

    remote: str
    interfaces: tuple[Interface, ...] = ()
    bridges: tuple[Bridge, ...] = ()
    host: str | None = None  # the host's own: vfence-host, else hostname
    override: str | None = None  # the operator's (--ovsdb NAME=REMOTE): wins over all


def switch_names(dbs: Iterable[HostDb]) -> dict[int, str]:
    """dpid -> name for every bridge some OVSDB describes. A name claimed twice keeps
    its first owner (by dpid); the other gets ``NAME@DPID`` so both stay addressable."""
    wanted: dict[int, str] = {}
    for db in dbs:
        for br in db.bridges:
            if br.host and not db.override:
                wanted[br.dpid] = br.host
            elif host := db.override or db.host:
                wanted[br.dpid] = host if len(db.bridges) == 1 else f"{host}/{br.name}"
    names: dict[int, str] = {}
    taken: set[str] = set()
    for dpid in sorted(wanted):
        name = wanted[dpid]
        if name in taken:
            name = f"{name}@{dpid:016x}"
        taken.add(name)
        names[dpid] = name
    return names


def fabric_ports(dbs: Iterable[HostDb], vm_ports: set[PortRef]
                 ) -> tuple[dict[int, frozenset[int]], list[tuple[Interface, str]]]:
    """Operator-marked fabric ports per switch, and the marked ones refused (with why)."""
    out: dict[int, set[int]] = {}
    refused: list[tuple[Interface, str]] = []
    for db in dbs:
        fabric_switch = {br.dpid for br in db.bridges if br.fabric}
        for i in db.interfaces:
            if not 0 < i.ofport < OFPP_MAX or not (i.fabric or i.dpid in fabric_switch):
                continue
            if i.vm_port:
                refused.append((i, "the port carries a VM's attached-mac/iface-id"))
            elif PortRef(i.dpid, i.ofport) in vm_ports:
                refused.append((i, "a VM has been bound to this port"))
            else:
                out.setdefault(i.dpid, set()).add(i.ofport)
    return {d: frozenset(p) for d, p in out.items()}, refused


def on_fabric(link: Link, fabric: dict[int, frozenset[int]]) -> bool:
    """A link may be used only between two marked fabric ports of two switches."""
    return link.src.dpid != link.dst.dpid and all(
        p.port_no in fabric.get(p.dpid, ()) for p in (link.src, link.dst))
