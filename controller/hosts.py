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
Pure functions, and HostBook (what the hosts reported so far, no I/O); the OVSDB
monitor (apps/ovsdb.py) fills these records.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .model import Link, PortRef, Switch, dpid_str

LOG = logging.getLogger("vfence.hosts")
LINK_LIFETIME = 20.0  # seconds a fabric link lives without a fresh LLDP confirmation
NAME_WAIT = 30.0  # seconds a switch-connected event waits for the host's OVSDB name
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


def fallback_name(dpid: int, bridge: str, switches: Mapping[int, Switch]) -> str:
    """A switch no OVSDB names: its bridge name while no other switch has it, else its
    dpid (every hypervisor's bridge is ``br-int``: name hosts in their OVSDB)."""
    taken = {sw.name for d, sw in switches.items() if d != dpid}
    return bridge if bridge and bridge not in taken else dpid_str(dpid)


def on_fabric(link: Link, fabric: dict[int, frozenset[int]]) -> bool:
    """A link may be used only between two marked fabric ports of two switches."""
    return link.src.dpid != link.dst.dpid and all(
        p.port_no in fabric.get(p.dpid, ()) for p in (link.src, link.dst))


class HostBook:
    """What the hosts told us, beside the network state: each OVSDB's last snapshot, the
    host names they give, when LLDP last confirmed each link, and switch-connected events
    waiting (a while) for their host's name."""

    def __init__(self) -> None:
        self.dbs: dict[str, HostDb] = {}
        self.names: dict[int, str] = {}  # dpid -> host name from the OVSDBs
        self.link_times: dict[Link, float] = {}
        self.waiting: dict[int, float] = {}  # dpid -> when it connected
        self.expect_names = False  # OVSDBs are watched (serve --ovsdb): wait for names
        self._interfaces: tuple[Interface, ...] = ()

    def snapshot(self, db: HostDb) -> None:
        self.dbs[db.remote] = db
        self.names = switch_names(self.dbs.values())
        self._interfaces = tuple(i for db in self.dbs.values() for i in db.interfaces)

    def interfaces(self) -> tuple[Interface, ...] | None:
        """Every OVSDB's interfaces (None before the first snapshot)."""
        return self._interfaces if self.dbs else None

    def fabric(self, vm_ports: set[PortRef]
               ) -> tuple[dict[int, frozenset[int]], list[tuple[Interface, str]]]:
        return fabric_ports(self.dbs.values(), vm_ports)

    def confirm(self, link: Link, fabric: dict[int, frozenset[int]], now: float) -> bool:
        """A fresh LLDP probe crossed ``link``: True if it joins two fabric ports of two
        switches (only those count), and then it lives on from ``now``."""
        if not on_fabric(link, fabric):
            LOG.warning("LLDP %s -> %s ignored: not between fabric ports of two switches",
                        link.src, link.dst)
            return False
        if link not in self.link_times:
            LOG.info("link %s -> %s", link.src, link.dst)
        self.link_times[link] = now
        return True

    def expired(self, links: Iterable[Link], now: float) -> set[Link]:
        """Links LLDP has not confirmed for LINK_LIFETIME seconds."""
        return {lk for lk in links if now - self.link_times.get(lk, now) > LINK_LIFETIME}

    def forget(self, links: Iterable[Link]) -> None:
        """The links are gone from the network (only after that change succeeded)."""
        for lk in links:
            self.link_times.pop(lk, None)

    def connected(self, dpid: int, now: float) -> bool:
        """A switch connected: may its event be said now (its name known or not awaited)?"""
        self.waiting[dpid] = now
        return dpid in self.names or not self.expect_names

    def due(self, now: float) -> list[int]:
        """Waiting switches that are named now, or have waited NAME_WAIT seconds."""
        return [d for d, since in self.waiting.items()
                if d in self.names or now - since > NAME_WAIT]
