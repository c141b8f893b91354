"""Where every VM is, and where it is going: the binding and live-migration state machine.

Pure: :func:`step` takes the current :class:`Places`, the facts it may read (:class:`World`)
and one event, and returns new places and the effects the caller carries out (database
rows, audit events, the order to program switches in). The input is never changed, so a
dry run or a refused change cannot touch the live state, and nothing has to be undone.

A VM is *bound* to one port (delivery goes there). During a live migration it also has a
*standby* port on the target host: its policy is in force there from the first packet,
and the first frame from it (or the old port going) switches delivery over. The
orchestrator may *announce* a move: the target is prepared and only a port that appears
after the announcement may take the VM. On a host that learns from first frames, a frame
from a VM that is still up elsewhere is refused but remembered as a *candidate*: the move
completes when the old port goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .hosts import OFPP_MAX, Interface
from .model import VM, Binding, NetworkState, PortRef

ANNOUNCE_LIFETIME = 600.0  # seconds a pre-announced migration waits for the VM
# seconds a refused first frame keeps its port as the VM's candidate: a live migration's
# source port goes within about a second of the target's first frame; a forged frame
# must not hold the VM's next binding for ever
CANDIDATE_LIFETIME = 10.0


@dataclass(frozen=True)
class Announcement:
    dpid: int  # the target switch
    before: frozenset[int]  # its ports at the time: none of them can be the VM's new one
    deadline: float


@dataclass
class Places:
    """The machine's state. Functions here copy it before they change anything."""

    bindings: dict[str, Binding] = field(default_factory=dict)
    standby: dict[str, Binding] = field(default_factory=dict)
    announced: dict[str, Announcement] = field(default_factory=dict)
    # where a VM's frames were refused while its old port was up (a learning host), until
    candidates: dict[str, tuple[Binding, float]] = field(default_factory=dict)
    retired: set[tuple[str, PortRef]] = field(default_factory=set)  # ports VMs left
    vm_ports: set[PortRef] = field(default_factory=set)  # ever bound: never fabric

    def copy(self) -> Places:
        return Places(dict(self.bindings), dict(self.standby), dict(self.announced),
                      dict(self.candidates), set(self.retired), set(self.vm_ports))

    def view(self) -> tuple[dict[str, Binding], dict[str, Binding], dict[str, int]]:
        """What the compiler sees: bindings, standby ports, announced targets."""
        return (dict(self.bindings), dict(self.standby),
                {vm: a.dpid for vm, a in self.announced.items()})

    def owner(self, port: PortRef) -> str | None:
        return next((b.vm for b in self.bindings.values() if b.port == port), None)


@dataclass(frozen=True)
class World:
    """What the machine reads and never changes."""

    vms: Mapping[str, VM]
    ports: Mapping[int, Mapping[int, str]]  # each switch's ports with link up, as reported
    fabric: Mapping[int, frozenset[int]]  # operator-marked fabric ports
    interfaces: tuple[Interface, ...] | None  # every OVSDB's interfaces (None: no OVSDB)
    learns: Callable[[int], bool]  # may this switch bind a VM on its first frame?
    name: Callable[[int], str]  # a switch's host name, for events
    now: float

    @classmethod
    def of(cls, state: NetworkState, ports: Mapping[int, Mapping[int, str]],
           interfaces: tuple[Interface, ...] | None, learn: bool | frozenset[str]) -> World:
        """The world as the service sees it; ``learn``: --learn-first-frame[-on HOST]."""
        return cls(state.vms, ports, _fabric_or_uplink(state, ports), interfaces,
                   lambda dpid: learn is True or (
            isinstance(learn, frozenset) and state.switch_name(dpid) in learn),
            state.switch_name, time.monotonic())


def _fabric_or_uplink(state: NetworkState, ports: Mapping[int, Mapping[int, str]]
                      ) -> Mapping[int, frozenset[int]]:
    """Ports no VM may be bound to: the fabric's, and each host's uplink (by the name the
    policy gives it, in the switch's own port list: known before its OVSDB reports)."""
    if not state.policy.uplinks:
        return state.fabric
    names = {u.host: u.port for u in state.policy.uplinks}
    out = dict(state.fabric)
    for dpid, sw in state.switches.items():
        name = names.get(sw.name)
        nos = frozenset(no for no, n in ports.get(dpid, {}).items() if n == name)
        if name is not None and nos:
            out[dpid] = out.get(dpid, frozenset()) | nos
    return out


# --- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostListed:
    """One OVSDB's interfaces as they are now (``dpids``: the switches it describes)."""

    dpids: frozenset[int]
    present: frozenset[PortRef]


@dataclass(frozen=True)
class PortsChanged:
    """A switch's port list changed (OpenFlow port status); ``World.ports`` has it."""

    dpid: int


@dataclass(frozen=True)
class FirstFrame:
    """A frame from a port no VM is bound to, with this source MAC."""

    port: PortRef
    mac: str
    port_name: str = ""


@dataclass(frozen=True)
class StandbyFrame:
    """A frame from a VM's standby port: the VM runs there now."""

    port: PortRef
    mac: str


@dataclass(frozen=True)
class Announce:
    vm: str
    dpid: int


@dataclass(frozen=True)
class Expire:
    """Announcements whose deadline is before ``now`` end."""

    now: float


@dataclass(frozen=True)
class Forget:
    """The VM was removed from the registry."""

    vm: str


@dataclass(frozen=True)
class Rebind:
    """The registry changed (a VM added, a policy applied): bind VMs OVSDB already shows."""


Event = HostListed | PortsChanged | FirstFrame | StandbyFrame | Announce | Expire | Forget | Rebind


# --- effects --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """An audit event. ``once``: record it only the first time this key happens."""

    kind: str
    vm: str | None = None
    detail: tuple[tuple[str, Any], ...] = ()
    once: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Located:
    """The VM's location row changes (a move or a first binding)."""

    binding: Binding


@dataclass(frozen=True)
class Unlocated:
    vm: str


@dataclass(frozen=True)
class Moved:
    """Program ``target`` first and ``source`` last; record the convergence time."""

    vm: str
    source: int
    target: int


Effect = Audit | Located | Unlocated | Moved


@dataclass(frozen=True)
class Outcome:
    places: Places
    effects: tuple[Effect, ...]

    @property
    def moves(self) -> list[Moved]:
        return [e for e in self.effects if isinstance(e, Moved)]

    @property
    def once(self) -> set[tuple[str, ...]]:
        """Keys of the audit events said only once (they are said now)."""
        return {e.once for e in self.effects if isinstance(e, Audit) and e.once}


def step(places: Places, world: World, event: Event) -> Outcome:
    """The machine: new places and effects for one event; ``places`` stays as it was."""
    if _idle(places, world, event):
        return Outcome(places, ())
    draft = _Draft(places.copy(), world)
    draft.handle(event)
    return Outcome(draft.places, tuple(draft.effects))


def _idle(places: Places, world: World, event: Event) -> bool:
    """Frames the datapath punts that cannot change anything (most of them: a port no VM
    may take, a MAC no VM has), answered without copying the places."""
    match event:
        case StandbyFrame(port, _):
            return all(b.port != port for b in places.standby.values())
        case FirstFrame(port, mac, _):
            mac = mac.lower()  # the MAC first: a flood of random ones stops here
            return all(v.mac != mac for v in world.vms.values()) or places.owner(
                port) is not None
    return False


class _Draft:
    """One event's work on a private copy of the places."""

    def __init__(self, places: Places, world: World) -> None:
        self.places = places
        self.world = world
        self.effects: list[Effect] = []

    def audit(self, kind: str, vm: str | None = None, once: tuple[str, ...] | None = None,
              **detail: Any) -> None:
        self.effects.append(Audit(kind, vm, tuple(detail.items()), once))

    def handle(self, event: Event) -> None:
        p, w = self.places, self.world
        match event:
            case HostListed(dpids, present):
                if w.interfaces is not None:
                    everywhere = {PortRef(i.dpid, i.ofport) for i in w.interfaces}
                    p.retired = {(vm, port) for vm, port in p.retired if port in everywhere}
                self.ports_gone(lambda port: port.dpid in dpids and port not in present)
                self.bind_from_interfaces()
            case PortsChanged(dpid):
                have = w.ports.get(dpid, {})
                listed = None if w.interfaces is None else {
                    PortRef(i.dpid, i.ofport) for i in w.interfaces if i.dpid == dpid}
                self.ports_gone(
                    lambda port: port.dpid == dpid and port.port_no not in have,
                    # a standby waits on a port whose link is down: it goes with the port
                    # (as the host's OVSDB lists them), not with its link
                    lambda port: port.dpid == dpid and port.port_no not in have
                    and (listed is None or port not in listed))
                self.bind_from_interfaces()  # a VM port whose link came back is the VM's
            case FirstFrame(port, mac, port_name):
                self.first_frame(port, mac, port_name)
            case StandbyFrame(port, mac):
                sb = next((b for b in p.standby.values() if b.port == port), None)
                if sb is not None and sb.vm in w.vms and w.vms[sb.vm].mac == mac.lower():
                    self.promote(sb.vm)
            case Announce(vm, dpid):
                p.announced[vm] = Announcement(dpid, frozenset(w.ports.get(dpid, {})),
                                               w.now + ANNOUNCE_LIFETIME)
                self.audit("migration-announced", vm, host=w.name(dpid))
            case Expire(now):
                for vm in [vm for vm, a in p.announced.items() if now > a.deadline]:
                    del p.announced[vm]
                    self.audit("migration-expired", vm)
                for vm in [vm for vm, (_, until) in p.candidates.items() if now > until]:
                    del p.candidates[vm]
            case Forget(vm):
                p.bindings.pop(vm, None)
                self.forget_move(vm)
            case Rebind():
                for vm in {*p.bindings, *p.standby, *p.announced} - set(w.vms):
                    p.bindings.pop(vm, None)
                    self.forget_move(vm)
                self.bind_from_interfaces()

    # --- the transitions --------------------------------------------------------------

    def ports_gone(self, gone: Callable[[PortRef], bool],
                   standby_gone: Callable[[PortRef], bool] | None = None) -> None:
        """Bindings on vanished ports end (or move on); standby ports that vanished go."""
        p = self.places
        for b in [b for b in p.bindings.values() if gone(b.port)]:
            self.port_gone(b)
        for vm in [vm for vm, sb in p.standby.items() if (standby_gone or gone)(sb.port)]:
            del p.standby[vm]

    def port_gone(self, b: Binding) -> None:
        """The VM's port vanished: a migration completes on its standby port, or on the
        port its frames came from while the old one was still up (a learning host)."""
        cand, until = self.places.candidates.pop(b.vm, (None, 0.0))
        if b.vm in self.places.standby:
            self.promote(b.vm)
        elif cand is not None and self.world.now <= until and self.may_take(cand):
            self.bind(cand, direct=True)
        else:
            self.unbind(b.vm, "port-removed")

    def first_frame(self, here: PortRef, mac: str, port_name: str) -> None:
        """The first frame (QEMU's RARP, a GARP) of a VM that arrived here binds it, if
        this host may learn that way or the move was announced."""
        p, w = self.places, self.world
        vm = next((v for v in w.vms.values() if v.mac == mac.lower()), None)
        if vm is None or p.owner(here) is not None:
            return
        announced = self.announced_here(vm.name, here)
        if not (w.learns(here.dpid) or announced):
            return
        if not announced and (why := self.still_there(vm.name, here)):
            # a VM that is up elsewhere does not move on a frame alone: a spoof
            p.candidates[vm.name] = (Binding(vm.name, here, port_name, "first-frame"),
                                     w.now + CANDIDATE_LIFETIME)
            self.audit("move-refused", vm.name,
                       once=("move-refused", vm.name, str(here.dpid), str(here.port_no)),
                       host=w.name(here.dpid), port=here.port_no, reason=why)
            return
        how = "announce" if announced else "first-frame"
        self.bind(Binding(vm.name, here, port_name, how), direct=True)

    def announced_here(self, vm: str, here: PortRef) -> bool:
        """The orchestrator announced ``vm``'s move to this switch, not too long ago, and
        ``here`` is a port that appeared since (a port that was there before, an attacker's
        say, cannot take the VM)."""
        a = self.places.announced.get(vm)
        return (a is not None and a.dpid == here.dpid and here.port_no not in a.before
                and self.world.now <= a.deadline)

    def still_there(self, vm: str, here: PortRef) -> str | None:
        """Why ``vm`` cannot have moved to ``here`` on a frame alone: its port elsewhere
        still exists with its link up (or its switch has not told us yet), or a standby
        port is prepared for it."""
        w = self.world
        b = self.places.bindings.get(vm)
        if b is not None and b.port != here:
            host = w.name(b.port.dpid)
            if b.port.dpid not in w.ports:
                return f"{vm}'s host {host} has not reported its ports"
            if b.port.port_no in w.ports[b.port.dpid]:
                return f"{vm} is still up on {host} port {b.port.port_no}"
        sb = self.places.standby.get(vm)
        if sb is not None and sb.port != here:
            return f"{vm} is moving to {w.name(sb.port.dpid)} port {sb.port.port_no}"
        return None

    def may_take(self, cand: Binding) -> bool:
        """The candidate port still exists, nobody is bound to it, its host still learns."""
        dpid, port = cand.port.dpid, cand.port.port_no
        return (port in self.world.ports.get(dpid, {}) and self.places.owner(cand.port) is None
                and self.world.learns(dpid))

    def bind_from_interfaces(self) -> None:
        """Every OVSDB interface that names a registered VM (iface-id or attached-mac)
        and is not its port already, in port order."""
        p, w = self.places, self.world
        by_mac: dict[str, VM] | None = None
        todo: list[tuple[PortRef, str, str]] = []
        later: list[tuple[PortRef, str, str]] = []
        for i in w.interfaces or ():
            if not 0 < i.ofport < OFPP_MAX or not (i.iface_id or i.attached_mac):
                continue
            vm = w.vms.get(i.iface_id or "")
            if vm is None:
                by_mac = by_mac or {v.mac: v for v in w.vms.values()}
                vm = by_mac.get((i.attached_mac or "").lower())
                if vm is None:
                    continue
            port = PortRef(i.dpid, i.ofport)
            old = p.bindings.get(vm.name)
            if old is not None and old.port == port or (vm.name, port) in p.retired:
                continue
            down = i.ofport not in w.ports.get(i.dpid, (i.ofport,))
            (later if down else todo).append((port, vm.name, i.name))
        for port, name, port_name in sorted(todo):
            self.bind(Binding(name, port, port_name, "ovsdb"))
        # a port whose link is not up cannot hold a VM, but may be a bound VM's standby
        # (or be refused, audited, as a fabric port); the rest waits for its link
        for port, name, port_name in sorted(later):
            if name in p.bindings or port.port_no in w.fabric.get(port.dpid, ()):
                self.bind(Binding(name, port, port_name, "ovsdb"))

    def promote(self, vm: str) -> None:
        """The VM takes its standby port. If that port cannot hold it yet (its switch has
        not said its link is up: a busy or frozen controller hears of it late) the
        standby stays, and the link's coming up completes the move."""
        self.bind(self.places.standby[vm], direct=True)  # on success it ends the move

    def forget_move(self, vm: str) -> None:
        """The VM's move is over (or the VM is gone): no standby, announcement or
        candidate port for it any more."""
        p = self.places
        p.standby.pop(vm, None)
        p.announced.pop(vm, None)
        p.candidates.pop(vm, None)

    def bind(self, b: Binding, direct: bool = False) -> None:
        """Attach a VM to a port. A VM that is attached elsewhere, on a port that still
        exists, gets the new port as standby (live migration in progress) unless
        ``direct``."""
        p, w = self.places, self.world
        old = p.bindings.get(b.vm)
        host = w.name(b.port.dpid)
        on_fabric = b.port.port_no in w.fabric.get(b.port.dpid, ())
        if old is not None and old.port == b.port:
            return
        if old is not None and not direct and old.port.port_no in w.ports.get(
                old.port.dpid, {}):
            if not on_fabric and p.standby.get(b.vm) != b:
                p.vm_ports.add(b.port)
                p.standby[b.vm] = b
                self.audit("vm-standby", b.vm, host=host, port=b.port.port_no, how=b.how)
            return
        if on_fabric:
            self.audit("binding-refused", b.vm, host=host, port=b.port.port_no,
                       reason="the port faces the fabric (or is a host's uplink)")
            return
        if b.port.dpid in w.ports and b.port.port_no not in w.ports[b.port.dpid]:
            return  # its switch says the port is gone or its link down: not yet (a standby
            # may wait on a port that is down; the VM's delivery may not)
        owner = p.owner(b.port)
        if owner is not None and owner != b.vm:
            self.audit("binding-refused", b.vm, host=host, port=b.port.port_no,
                       reason=f"port is bound to {owner}")
            return
        p.bindings[b.vm] = b
        p.vm_ports.add(b.port)
        self.forget_move(b.vm)
        if old is not None:
            self.effects.append(Moved(b.vm, old.port.dpid, b.port.dpid))
            p.retired.add((b.vm, old.port))  # the VM left it; its port may linger
        self.effects.append(Located(b))
        self.audit("vm-moved" if old is not None else "vm-bound", b.vm, host=host,
                   port=b.port.port_no, how=b.how)

    def unbind(self, vm: str, why: str) -> None:
        b = self.places.bindings.pop(vm, None)
        if b is not None:
            self.effects.append(Unlocated(vm))
            self.audit("vm-unbound", vm, host=self.world.name(b.port.dpid), reason=why)
