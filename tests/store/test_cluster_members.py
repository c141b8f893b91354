"""Cluster members on a real PostgreSQL, with switches faked as OVS behaves for roles.

Every member is a whole Service with its Replica and Member; the switches are one shared
fake that keeps flows and roles as Open vSwitch does: a MASTER request with a generation
id older than one seen is refused, a new master makes the old one a slave, and a slave's
flow-mods are refused (``OFPBRC_IS_SLAVE``). So these tests see what each member wrote
where, and that a member that lost a switch cannot write to it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import pytest

from vfence.controller import leases
from vfence.controller.errors import Refused, VfenceError
from vfence.controller.flows import Flow
from vfence.controller.hosts import Bridge, Interface
from vfence.controller.member import Member, utcnow
from vfence.controller.model import VMSpec
from vfence.controller.reconcile import FlowDiff
from vfence.controller.replica import Replica, flows_json
from vfence.controller.service import Service
from vfence.controller.store import db
from vfence.controller.store import models as m

from ..conftest import fresh_postgres

pytestmark = pytest.mark.postgres

HV1, HV2 = 0x101, 0x102
PORTS = {HV1: {3: "vnet0"}, HV2: {3: "vnet0"}}


class Fabric:
    """The switches, as every member's connection to them sees them."""

    def __init__(self) -> None:
        self.flows: dict[int, dict[Any, Flow]] = {HV1: {}, HV2: {}}
        self.master: dict[int, str] = {}
        self.generation: dict[int, int] = {}
        self.writes: list[tuple[str, int, int]] = []  # (member, dpid, flow-mods) accepted
        self.refused: list[tuple[str, int]] = []  # writes refused: the member is a slave

    def role(self, member: str, dpid: int, master: bool, term: int) -> bool:
        if dpid in self.generation and term < self.generation[dpid]:
            return False  # OFPRRFC_STALE
        self.generation[dpid] = term
        if master:
            self.master[dpid] = member  # (the old master becomes a slave)
        elif self.master.get(dpid) == member:
            del self.master[dpid]
        return True


class Programmer:
    """One member's OpenFlow connections to the fabric's switches."""

    def __init__(self, fabric: Fabric, name: str) -> None:
        self.fabric, self.name = fabric, name

    def program(self, dpid: int, changes: FlowDiff) -> None:
        if self.fabric.master.get(dpid) != self.name:
            self.fabric.refused.append((self.name, dpid))
            raise RuntimeError("OFPBRC_IS_SLAVE")
        have = self.fabric.flows[dpid]
        for f in changes.delete:
            have.pop(f.key, None)
        for f in changes.add:
            have[f.key] = f
        self.fabric.writes.append((self.name, dpid, len(changes)))

    def read_flows(self, dpid: int, table: Any = None, owner: Any = None) -> list:
        return [(f, 0, 0) for f in self.fabric.flows[dpid].values()]


class Roles:
    def __init__(self, fabric: Fabric, name: str, service: Service) -> None:
        self.fabric, self.name, self.service = fabric, name, service

    def connected(self) -> list[int]:
        return self.service.switches.connected()

    def become(self, dpid: int, master: bool, term: int) -> bool:
        return self.fabric.role(self.name, dpid, master, term)


class Cluster:
    def __init__(self, url: str) -> None:
        self.url, self.fabric = url, Fabric()
        self.members: dict[str, tuple[Service, Member]] = {}

    def start(self, name: str) -> tuple[Service, Member]:
        engine = db.make_engine(self.url)
        db.upgrade(engine)
        service = Service(db.sessions(engine))
        service.switches.programmer = Programmer(self.fabric, name)
        replica = service.replica = Replica(service.sessions, service.switches, name,
                                            f"http://{name}")
        replica.presence = leases.hold_presence(engine, name)

        def gain(dpid: int, term: int) -> None:  # what the app's _take_over does
            service.switches.attach(dpid, PORTS[dpid], [
                f for f, _, _ in service.switches.programmer.read_flows(dpid)])
            service.switch_ready(dpid)

        member = Member(service.sessions, name, replica.advertise,
                        Roles(self.fabric, name, service), gain, lambda dpid: None, warmup=0)
        replica.member = member
        service.switches.fence = member.may_write
        for dpid, ports in PORTS.items():
            service.switch_connected(dpid, "br-int", ports, [])
        self.members[name] = (service, member)
        return service, member

    def tick(self, rounds: int = 3) -> None:
        """Rounds of every member (a member starting alone takes all, then hands over)."""
        for _ in range(rounds):
            for _, member in self.members.values():
                member.tick()

    def kill(self, name: str) -> None:
        service, _ = self.members.pop(name)
        service.replica.presence.invalidate()  # the process is gone: its connection too
        deadline = time.monotonic() + 5  # (the server's backend ends a moment later)
        with service.sessions() as s:
            while name in leases.live_members(s, utcnow()) and time.monotonic() < deadline:
                time.sleep(0.01)

    def push(self, replica: Replica, dpid: int, url: str, term: int,
             flows: frozenset[Flow]) -> str | None:
        """The HTTP POST /v1/cluster/apply, delivered in process."""
        target = next((s for s, mem in self.members.values() if mem.advertise == url), None)
        if target is None:
            return f"{url}: connection refused"
        try:
            rows = flows_json(flows)
            at = int(time.time())
            target.replica.apply(dpid, term, rows, f"{replica.name} {at} " + replica._signature(
                replica.name, at, f"{dpid:016x}", term, rows))
        except VfenceError as e:
            return f"{url}: {e.status} {e}"
        return None


@pytest.fixture
def cluster(postgres_url, monkeypatch):
    c = Cluster(fresh_postgres(postgres_url))
    monkeypatch.setattr(Replica, "_push", lambda self, *a: c.push(self, *a))
    yield c
    for service, _ in c.members.values():
        service.replica.presence.close()


PAY1 = VMSpec("pay-1", "00:00:00:00:01:01", ("10.0.0.11",), "prod", ("payroll",))


def _masters(c: Cluster) -> dict[str, list[int]]:
    return {n: sorted(mem.terms) for n, (_, mem) in c.members.items()}


def test_members_split_the_switches_and_each_writes_only_to_its_own(cluster):
    a, _ = cluster.start("c1")
    b, _ = cluster.start("c2")
    cluster.tick()
    assert _masters(cluster) == {"c1": [HV1], "c2": [HV2]}
    assert cluster.fabric.master == {HV1: "c1", HV2: "c2"}
    cluster.fabric.writes.clear()

    a.add_vm(PAY1)  # on c1 (registered, not bound: no flow changes)
    with a.sessions() as s:
        assert leases.read_version(s) == 1 and s.query(m.VM).count() == 1
    # c2 binds it on hv1 (libvirt's ids in hv1's OVSDB): c2 takes c1's change first,
    # then hv1 changes through its master, c1 (no fabric here: hv2 has nothing to change)
    _bind(b)
    assert {(n, d) for n, d, k in cluster.fabric.writes if k} == {("c1", HV1)}
    assert cluster.fabric.refused == []
    with b.sessions() as s:
        assert leases.read_version(s) == 2
    # c1 follows: its copy has the binding, and it sends nothing (hv1 holds it already)
    cluster.fabric.writes.clear()
    a.housekeeping()
    assert "pay-1" in a.state.bindings and a.replica.version == 2
    assert [w for w in cluster.fabric.writes if w[2]] == []
    for dpid in (HV1, HV2):  # every member compiles exactly what each switch holds
        for service in (a, b):
            assert service.desired[dpid] == frozenset(cluster.fabric.flows[dpid].values())


def _bind(service: Service, dpid: int = HV1) -> None:
    """libvirt's ids for pay-1 on the switch's vnet0, in that host's OVSDB."""
    name = f"hv{dpid - 0x100}"
    service.ovsdb_snapshot([Interface(dpid, 3, "vnet0", PAY1.mac, "pay-1")],
                           [Bridge(dpid, "br-int", None, False)], f"unix:/run/{name}/db.sock",
                           name)


def test_a_change_a_master_refuses_is_rolled_back_everywhere(cluster, monkeypatch):
    a, _ = cluster.start("c1")
    b, _ = cluster.start("c2")
    cluster.tick()
    before = {d: dict(f) for d, f in cluster.fabric.flows.items()}
    a.add_vm(PAY1)
    b.switches.programmer.program = lambda *a: (_ for _ in ()).throw(RuntimeError("full"))
    with pytest.raises(Refused) as e:
        _bind(a, HV2)  # on c1, for hv2, which c2 masters and cannot program now
    assert e.value.status == 503 and "rolled back" in str(e.value)
    assert cluster.fabric.flows == before  # hv2 refused; hv1 (c1's) never changed
    with a.sessions() as s:
        assert leases.read_version(s) == 1  # the VM's registration only
        assert s.query(m.Location).count() == 0
    assert "pay-1" not in a.state.bindings


def test_a_change_while_a_switch_has_no_master_is_refused_and_changes_nothing(cluster):
    a, _ = cluster.start("c1")
    cluster.start("c2")
    cluster.tick()
    a.add_vm(PAY1)
    cluster.kill("c2")  # hv2's master is gone; c1 has not taken it yet
    before = {d: dict(f) for d, f in cluster.fabric.flows.items()}
    with pytest.raises(Refused, match="no master now"):
        _bind(a, HV2)
    assert cluster.fabric.flows == before
    assert "pay-1" not in a.state.bindings
    cluster.tick()  # c1 takes hv2 over (the presence lock went with c2's connection)
    assert _masters(cluster) == {"c1": [HV1, HV2]}
    _bind(a, HV2)  # and now it goes through
    assert "pay-1" in a.state.bindings


def test_a_takeover_sends_nothing_when_nothing_changed(cluster):
    a, _ = cluster.start("c1")
    b, _ = cluster.start("c2")
    cluster.tick()
    a.add_vm(PAY1)
    _bind(a)
    b.housekeeping()
    generation = dict(cluster.fabric.generation)
    cluster.kill("c1")
    cluster.fabric.writes.clear()
    cluster.tick()
    assert _masters(cluster) == {"c2": [HV1, HV2]}
    assert cluster.fabric.generation[HV1] == generation[HV1] + 1  # a new term
    assert [w for w in cluster.fabric.writes if w[2]] == []  # 0 flow-mods


def test_a_member_that_lost_its_lease_writes_nothing(cluster):
    a, ma = cluster.start("c1")
    b, mb = cluster.start("c2")
    cluster.tick()
    # c1 stalls (SIGSTOP): its lease runs out by its own clock, c2 takes hv1 meanwhile
    ma.valid = {d: 0.0 for d in ma.valid}
    with a.sessions() as s:
        s.query(m.SwitchLease).filter_by(member="c1").update({"expires": _now()})
        s.query(m.ClusterMember).filter_by(name="c1").update({"heartbeat": _now(-10)})
        s.commit()
    mb.tick()
    assert sorted(mb.terms) == [HV1, HV2] and cluster.fabric.master[HV1] == "c2"
    b.add_vm(PAY1)
    _bind(b)
    # c1 resumes: it refuses itself to write to hv1 (and hv1 would refuse it too)
    cluster.fabric.writes.clear()
    with pytest.raises(Refused):
        a.switches.send(HV1, FlowDiff((next(iter(cluster.fabric.flows[HV1].values())),),
                                      ()))
    assert [w for w in cluster.fabric.writes if w[0] == "c1"] == []
    ma.tick()  # it steps down: c2 keeps both (its share is 1, but c1 holds nothing live)
    assert cluster.fabric.master[HV1] == "c2"
    assert not ma.may_write(HV1)


def _now(delta: float = 0.0) -> datetime:
    return utcnow() + timedelta(seconds=delta)


def test_a_new_member_listens_before_it_joins(cluster, monkeypatch):
    """During its warm-up a member writes no heartbeat (others do not count it, nor hand
    it switches) and claims nothing, but makes itself a slave on every switch at once (a
    new connection is EQUAL, which may write). It joins once warm and its view (links,
    switches) has been still for a while."""
    a, ma = cluster.start("c1")
    cluster.tick()
    b, mb = cluster.start("c2")
    mb.joins_at = mb.joins_by = time.monotonic() + 3600
    told: list[tuple[int, bool, int]] = []
    roles = mb.roles
    real = roles.become
    roles.become = lambda dpid, master, term: told.append((dpid, master, term)) or real(
        dpid, master, term)
    cluster.tick()
    assert _masters(cluster) == {"c1": [HV1, HV2], "c2": []}
    assert sorted(told) == [(HV1, False, 1), (HV2, False, 1)]
    with b.sessions() as s:
        assert "c2" not in leases.members(s)
    mb.joins_at = 0.0  # warm, but its view is still changing: it waits
    mb.settled = lambda: False
    cluster.tick()
    assert _masters(cluster) == {"c1": [HV1, HV2], "c2": []}
    mb.settled = lambda: True
    cluster.tick()
    assert _masters(cluster) == {"c1": [HV1], "c2": [HV2]}


def test_found_by_review_a_new_member_keeps_what_only_the_shared_row_holds(cluster):
    """(A new member's first change wrote its own empty binding state over the
    cluster's: an announced move vanished.) Its first change reloads the shared row."""
    a, _ = cluster.start("c1")
    cluster.start("c2")
    cluster.tick()
    a.add_vm(PAY1)
    _bind(a)
    a.announce_migration("pay-1", f"{HV2:016x}")
    assert a.state.expected == {"pay-1": HV2}
    c, _ = cluster.start("c3")
    cluster.tick()
    c.add_vm(VMSpec("web-1", "00:00:00:00:01:02", ("10.0.0.21",), "prod", ("frontend",)))
    assert c.state.expected == {"pay-1": HV2}
    a.housekeeping()
    assert a.state.expected == {"pay-1": HV2} and "web-1" in a.state.vms


def test_one_member_sends_dns_updates_and_another_goes_on_when_it_dies(cluster):
    """The pending updates are in the database; which member sends them is a lease."""
    cluster.start("c1")
    cluster.start("c2")
    cluster.tick()
    senders = [n for n, (_, m) in cluster.members.items() if m.sends_dns()]
    assert len(senders) == 1
    (first,) = senders
    service, _ = cluster.members[next(n for n in cluster.members if n != first)]
    assert service.replica.status()["dns_updates_by"] == first
    cluster.kill(first)
    cluster.tick()
    assert [n for n, (_, m) in cluster.members.items() if m.sends_dns()] == [
        n for n in cluster.members]
    assert service.replica.status()["dns_updates_by"] != first


def test_found_by_review_a_switch_one_member_no_longer_reaches_goes_to_another(cluster):
    """(Its master lost only its OpenFlow connection to it: nobody took it over.)"""
    a, ma = cluster.start("c1")
    cluster.start("c2")
    cluster.tick()
    assert _masters(cluster) == {"c1": [HV1], "c2": [HV2]}
    a.switch_disconnected(HV1)
    ma.forget(HV1)
    cluster.tick()  # c2 takes hv1; then the shares even out with what c1 reaches
    assert _masters(cluster) == {"c1": [HV2], "c2": [HV1]}
    assert cluster.fabric.master == {HV1: "c2", HV2: "c1"}
