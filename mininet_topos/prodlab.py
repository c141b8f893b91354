"""A lab shaped like production: one Open vSwitch per hypervisor, every bridge ``br-int``.

Each hypervisor ``hvN`` and each fabric switch ``spS`` is a machine of its own:

- a named network namespace ``vf-hvN`` (``ip netns``), and a Mininet node whose shell runs
  in it (:class:`NamespacedOVS`), so ``lab.host("hv1").cmd(...)`` is a shell on that host;
- its own ``ovsdb-server`` (``DIR/conf.db`` made by ``ovsdb-tool create``, socket
  ``DIR/db.sock``) and its own ``ovs-vswitchd``, both started inside the namespace, pid,
  unixctl and log files in ``DIR`` = ``/run/vfence-prodlab/hvN``. The node's shell exports
  ``OVS_RUNDIR=DIR`` (and ``OVS_DBDIR``/``OVS_LOGDIR``): ``ovs-vswitchd`` puts the bridge's
  OpenFlow management socket at ``$OVS_RUNDIR/br-int.mgmt``, so without it every instance
  would fight over ``/var/run/openvswitch/br-int.mgmt`` (the system OVS's directory). In
  that shell plain ``ovs-vsctl show``, ``ovs-ofctl -O OpenFlow13 dump-flows br-int`` and
  ``ovs-appctl -t ovs-vswitchd ...`` reach that host's OVS; from anywhere,
  ``ovs-ofctl -O OpenFlow13 dump-flows unix:DIR/br-int.mgmt`` (:meth:`NamespacedOVS.ofctl`,
  :meth:`ProdLab.mgmt`, which the ``tests/lab`` helpers accept as a bridge);
- one bridge, ``br-int``: ``datapath_type=netdev``, OpenFlow13 only, ``fail_mode=secure``,
  in-band off, ``other-config:datapath-id`` 0x100+N (hvN) or 0x200+S (spS);
- identity written into its OVSDB as an installer would: ``external_ids:vfence-host`` (with
  ``system-id``/``hostname``) on the Open_vSwitch row; ``external_ids:vfence-role=fabric``
  on a fabric switch's Bridge; ``external_ids:vfence-fabric=true`` on each hypervisor
  Interface that faces the fabric; libvirt's ``attached-mac``/``iface-id``/``iface-status``
  on a VM's port once the VM is plugged (:meth:`ProdLab.plug`; per VM, see ``libvirt_ids``);
- a veth ``vfc-<name>`` (root namespace, 169.254.64.0/18, a /30 per switch) to ``ctl0`` in
  its namespace: the only way to the controller, which runs in the root namespace and
  listens on 0.0.0.0. Nothing leaves this machine.

Fabric links are veths between a hypervisor's and a fabric switch's namespace (``fab-spS``
on hvN, ``fab-hvN`` on spS); every hypervisor links to every fabric switch, so two or more
fabric switches make loops. VMs are ordinary Mininet hosts (their own namespace): the VM
end of their veth is the host's interface, the other end ``vnetK`` lives in the
hypervisor's namespace and is a port of its ``br-int``. TX/RX checksum offload is off on
every veth end that carries VM traffic (Mininet's ``TCULink``): TCP fails over the
userspace datapath otherwise.

Why named namespaces with Mininet nodes in them, rather than Mininet hosts alone: a named
namespace can be found and emptied after a crash (``ip netns pids``), it outlives no
process we do not know of, and ``ip netns exec vf-hv1 ...`` works for a human too; the
Mininet node on top gives ``cmd()``, Mininet links (so :mod:`.migration` moves VMs here as
in the old lab) and ``net.get()``.

The old lab (:class:`.lab.Lab`) puts every bridge into the system OVS and cleans with
``mn -c``. Both labs call :func:`.datacenter.cleanup`, which removes the leftovers of both
(:func:`remove_leftovers`, then ``mn -c``), so either can start after the other crashed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Collection, Iterable
from pathlib import Path

from mininet.link import Intf, TCULink
from mininet.net import Mininet
from mininet.node import Node

from . import datacenter, migration
from .datacenter import VMPlan, hv_name, plug_like_libvirt, switch_side
from .lab import LabBase

STATE_ROOT = Path("/run/vfence-prodlab")
NETNS_PREFIX = "vf-"  # namespaces vf-hv1, vf-sp1
CTL_PREFIX = "vfc-"  # root-namespace ends of the controller veths
CTL_NET = ipaddress.ip_network("169.254.64.0/18")
BRIDGE = "br-int"
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
DAEMONS = ("ovs-vswitchd", "ovsdb-server")  # stop order


def sp_name(s: int) -> str:
    return f"sp{s}"


def ctl_addresses(index: int) -> tuple[str, str]:
    """(root side, switch side) of switch ``index``'s /30 toward the controller."""
    base = CTL_NET.network_address + 4 * index
    assert base + 3 in CTL_NET, index
    return str(base + 1), str(base + 2)


class NamespacedOVS(Node):
    """A hypervisor or fabric switch: a named netns, a shell in it, its own Open vSwitch.

    The daemons start with :meth:`start_ovs` (or :meth:`send_start_ovs` then
    :meth:`wait_start_ovs`, to start several switches at once)."""

    def __init__(self, name: str, *, dpid: int, index: int, fabric: bool = False,
                 state_root: Path = STATE_ROOT, **params) -> None:
        params.pop("listenPort", None)  # Mininet.addSwitch's defaults
        params.pop("inNamespace", None)
        self.netns = NETNS_PREFIX + name
        self.rundir = state_root / name
        self.dpid, self.index, self.fabric = dpid, index, fabric
        self.ctl_root_ip, self.ctl_ip = ctl_addresses(index)
        subprocess.run(["ip", "netns", "add", self.netns], check=True, capture_output=True)
        self.rundir.mkdir(parents=True)
        # the shell is in the namespace (see _popen); Mininet must not move anything
        super().__init__(name, inNamespace=False, **params)
        d = self.rundir
        self.cmd(f"export OVS_RUNDIR={d} OVS_DBDIR={d} OVS_LOGDIR={d}; ip link set lo up")

    def _popen(self, cmd, **params):
        """Every process of this node (its shell, ``popen()``) starts in the namespace."""
        return super()._popen(["ip", "netns", "exec", self.netns, *cmd], **params)

    # --- where things are -----------------------------------------------------------------

    @property
    def db(self) -> str:
        return f"unix:{self.rundir}/db.sock"

    @property
    def mgmt(self) -> str:
        """The bridge's OpenFlow management socket, an ``ovs-ofctl`` target."""
        return f"unix:{self.rundir}/{BRIDGE}.mgmt"

    def pidfile(self, daemon: str) -> Path:
        return self.rundir / f"{daemon}.pid"

    def daemon_pids(self) -> dict[str, int]:
        """Pid of each daemon that runs (from its pid file)."""
        return {d: pid for d in DAEMONS if (pid := _pid_from(self.pidfile(d))) is not None}

    # --- start and stop -------------------------------------------------------------------

    def start_script(self, controller: str | list[str], ports: Iterable[str] = ()) -> str:
        """Shell commands (run in this node) that create the database, start both daemons
        and create ``br-int`` with ``ports``, pointed at ``controller`` (or at each of a
        list: a cluster's members)."""
        d, name = self.rundir, self.name
        daemon = f"--pidfile={d}/{{0}}.pid --log-file={d}/{{0}}.log --detach --no-chdir " \
                 f"2>>{d}/start.err"
        bridge = [f"add-br {BRIDGE}",
                  f"set Bridge {BRIDGE} datapath_type=netdev protocols=OpenFlow13 "
                  f"fail_mode=secure other-config:disable-in-band=true "
                  f"other-config:datapath-id={self.dpid:016x}"
                  + (" external_ids:vfence-role=fabric" if self.fabric else "")]
        for port in ports:
            bridge.append(f"add-port {BRIDGE} {port}")
            if not self.fabric and port.startswith("fab-"):
                bridge.append(f"set Interface {port} external_ids:vfence-fabric=true")
        # a 30 s inactivity probe (OVS's default is 5 s): a controller busy with a large
        # change for a few seconds is not dropped and re-synchronised for it
        targets = [controller] if isinstance(controller, str) else controller
        bridge += [f"--id=@c{i} create Controller target=\\\"{t}\\\" max_backoff=1000 "
                   "inactivity_probe=30000" for i, t in enumerate(targets)]
        bridge.append(f"set Bridge {BRIDGE} controller="
                      + ",".join(f"@c{i}" for i in range(len(targets))))
        return " && ".join([
            f"ovsdb-tool create {d}/conf.db {SCHEMA}",
            f"ovsdb-server {d}/conf.db --remote=punix:{d}/db.sock "
            + daemon.format("ovsdb-server"),
            f"ovs-vsctl --db={self.db} --no-wait init -- set Open_vSwitch . "
            f"external_ids:vfence-host={name} external_ids:system-id={name} "
            f"external_ids:hostname={name}",
            f"ovs-vswitchd {self.db} " + daemon.format("ovs-vswitchd"),
            f"ovs-vsctl --db={self.db} --timeout=20 -- " + " -- ".join(bridge),
        ]) + "; echo start-rc=$?"

    def send_start_ovs(self, controller: str | list[str], ports: Iterable[str] = ()) -> None:
        self.sendCmd(self.start_script(controller, ports))

    def wait_start_ovs(self) -> None:
        out = self.waitOutput()
        if "start-rc=0" not in out:
            err = (self.rundir / "start.err")
            raise RuntimeError(f"starting Open vSwitch on {self.name}: {out.strip()} "
                               f"{err.read_text() if err.exists() else ''}")

    def start_ovs(self, controller: str | list[str], ports: Iterable[str] = ()) -> None:
        self.send_start_ovs(controller, ports)
        self.wait_start_ovs()

    def stop_ovs(self) -> None:
        """Stop the daemons by their pid files (vswitchd first), and wait for them."""
        for daemon in DAEMONS:
            pid = _pid_from(self.pidfile(daemon))
            if pid is not None:
                _terminate([pid])

    def stop(self, deleteIntfs: bool = False) -> None:
        self.stop_ovs()
        super().stop(deleteIntfs)

    # --- running commands -----------------------------------------------------------------

    def run(self, *argv: str, check: bool = True) -> str:
        """Run a command in this host's namespace and OVS environment, from any thread
        (not through the node's shell); its stdout."""
        env = dict(os.environ, OVS_RUNDIR=str(self.rundir), OVS_DBDIR=str(self.rundir),
                   OVS_LOGDIR=str(self.rundir))
        r = subprocess.run(["ip", "netns", "exec", self.netns, *argv], env=env,
                           capture_output=True, text=True)
        if check and r.returncode:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def vsctl(self, *args: str) -> str:
        """``ovs-vsctl`` against this host's database, through the node's shell (as
        Mininet's ``OVSSwitch.vsctl``); the output, errors included."""
        return self.cmd("ovs-vsctl", f"--db={self.db}", "--timeout=10", *args)

    def ofctl(self, *args: str) -> str:
        """``ovs-ofctl -O OpenFlow13 CMD br-int ARGS...``: ``ofctl("dump-flows")``."""
        cmd, *rest = args
        return self.run("ovs-ofctl", "-O", "OpenFlow13", cmd, self.mgmt, *rest)

    def appctl(self, *args: str) -> str:
        return self.run("ovs-appctl", "-t", "ovs-vswitchd", *args)

    def attach(self, intf: Intf | str) -> None:
        """Add a port to ``br-int`` (Mininet's ``OVSSwitch.attach``)."""
        out = self.vsctl("add-port", BRIDGE, str(intf))
        if out.strip():
            raise RuntimeError(f"add-port {intf} on {self.name}: {out.strip()}")
        self.cmd("ip link set", intf, "up")

    def detach(self, intf: Intf | str) -> None:
        self.vsctl("--if-exists", "del-port", BRIDGE, str(intf))


class ProdLink(TCULink):
    """A veth with checksum offload off on both ends; a VM's port on a hypervisor is named
    ``vnetK`` as libvirt would (unique in that hypervisor's namespace)."""

    def intfName(self, node, n):
        if isinstance(node, NamespacedOVS):
            return f"vnet{n}"
        return super().intfName(node, n)


class ProdLab(LabBase):
    """The production-shaped lab: ``with ProdLab(3, 2, plan, db_url=..., workdir=...) as
    lab:`` starts the controller (one ``--ovsdb`` per switch), the network, registers the
    VMs, plugs their ports and waits for convergence.

    ``libvirt_ids``: which VMs get libvirt's external_ids on their port when plugged
    (after registration): True (all), False (none) or a collection of VM names; the others
    stay unplugged until :meth:`plug` (first-frame learning, rogue VMs).
    ``ipv6``: None leaves the VMs' namespaces as the kernel makes them; True makes sure
    IPv6 is on in every VM (``net.ipv6.conf.*.disable_ipv6=0``), False turns it off."""

    def __init__(self, hosts: int, spines: int, plan: list[VMPlan], *, db_url: str,
                 workdir: Path, of_port: int = 6653, api_port: int = 8080,
                 extra_args: tuple[str, ...] = (), policy: dict | None = None,
                 libvirt_ids: bool | Collection[str] = True, ipv6: bool | None = None,
                 state_root: Path = STATE_ROOT) -> None:
        super().__init__(hosts, spines, plan, db_url=db_url, workdir=workdir, of_port=of_port,
                         api_port=api_port, extra_args=extra_args, policy=policy)
        self.libvirt_ids, self.ipv6, self.state_root = libvirt_ids, ipv6, state_root
        self.plugged: set[str] = set()
        self.timings: dict[str, float] = {}

    # --- names and places -----------------------------------------------------------------

    @property
    def switch_names(self) -> list[str]:
        return [hv_name(h) for h in range(1, self.hosts + 1)] + \
               [sp_name(s) for s in range(1, self.spines + 1)]

    def switch(self, name: str) -> NamespacedOVS:
        node = self.host(name)
        assert isinstance(node, NamespacedOVS), name
        return node

    @property
    def switches(self) -> list[NamespacedOVS]:
        return [self.switch(n) for n in self.switch_names]

    def ovsdb_remotes(self) -> list[str]:
        return [f"unix:{self.state_root / n}/db.sock" for n in self.switch_names]

    def mgmt(self, name: str) -> str:
        """``unix:.../br-int.mgmt`` of a switch: a target for ``ovs-ofctl`` (and for the
        ``tests/lab`` helpers that take a bridge)."""
        return self.switch(name).mgmt

    def plan_of(self, vm: str) -> VMPlan:
        return next(p for p in self.plan if p.name == vm)

    def vm_port(self, vm: str) -> tuple[str, str]:
        """(switch, port name) where a VM's interface is plugged now."""
        assert self.net is not None
        intf = switch_side(self.net, vm)
        return intf.node.name, intf.name

    # --- network --------------------------------------------------------------------------

    def start_network(self) -> Mininet:
        t0 = time.monotonic()
        cleanup(keep=self.controller_pids())
        t1 = time.monotonic()
        self.state_root.mkdir(parents=True, exist_ok=True)
        net = self.net = Mininet(topo=None, controller=None, link=ProdLink, build=False,
                                 autoSetMacs=False, cleanup=False, waitConnected=False)
        for h in range(1, self.hosts + 1):
            net.addSwitch(hv_name(h), cls=NamespacedOVS, dpid=0x100 + h, index=h,
                          state_root=self.state_root)
        for s in range(1, self.spines + 1):
            net.addSwitch(sp_name(s), cls=NamespacedOVS, dpid=0x200 + s, index=128 + s,
                          fabric=True, state_root=self.state_root)
        self._controller_links()
        ports: dict[str, list[str]] = {n: [] for n in self.switch_names}
        for h in range(1, self.hosts + 1):
            for s in range(1, self.spines + 1):
                link = net.addLink(hv_name(h), sp_name(s), intfName1=f"fab-{sp_name(s)}",
                                   intfName2=f"fab-{hv_name(h)}")
                ports[hv_name(h)].append(link.intf1.name)
                ports[sp_name(s)].append(link.intf2.name)
        for p in self.plan:
            ports[hv_name(p.host)].append(self._vm_host(p).name)
        t2 = time.monotonic()
        for sw in self.switches:  # all at once: each waits on its own daemons
            sw.send_start_ovs([f"tcp:{sw.ctl_root_ip}:{p}" for p in self.of_ports()],
                              ports[sw.name])
        for sw in self.switches:
            sw.wait_start_ovs()
        self.timings.update(cleanup=t1 - t0, build=t2 - t1, ovs=time.monotonic() - t2)
        return net

    def controller_pids(self) -> list[int]:
        """Controller processes of this lab (the clean-up before the network spares them)."""
        return [self.proc.pid] if self.proc is not None else []

    def of_ports(self) -> list[int]:
        """The controllers' OpenFlow ports every switch connects to (one here)."""
        return [self.of_port]

    def _vm_host(self, p: VMPlan) -> Intf:
        """The VM's Mininet host, linked to its hypervisor; the hypervisor's end."""
        assert self.net is not None
        host = self.net.addHost(p.name, ip=f"{p.ip}/{p.prefix}")
        link = self.net.addLink(host, hv_name(p.host), addr1=p.mac)
        host.configDefault()
        if self.ipv6 is not None:  # `all` sets the existing interfaces, `default` new ones
            v = 0 if self.ipv6 else 1
            host.cmd(f"sysctl -qw net.ipv6.conf.all.disable_ipv6={v} "
                     f"net.ipv6.conf.default.disable_ipv6={v}")
        return link.intf2

    def add_vm(self, p: VMPlan, *, plug: bool = False):
        """Start a VM on a running lab (its port on ``hv{p.host}``'s br-int); ``plug``:
        with libvirt's ids. It joins ``plan``; registering it is up to the caller."""
        intf = self._vm_host(p)
        intf.node.attach(intf)
        self.plan.append(p)
        if plug:
            self.plug(p.name)
        return self.host(p.name)

    def remove_vm(self, name: str) -> None:
        """The VM's ports leave their bridges, its links and host go (what a hypervisor
        does when a VM is destroyed)."""
        assert self.net is not None
        host = self.host(name)
        for intf in list(host.intfList()):
            if intf.link is not None:
                link = intf.link
                other = link.intf2 if link.intf1 is intf else link.intf1
                other.node.detach(other)
                self.net.delLink(link)
        self.net.delHost(host)
        self.plan = [p for p in self.plan if p.name != name]
        self.plugged.discard(name)

    def _controller_links(self) -> None:
        """A veth per switch from the root namespace (the controller) into its namespace."""
        batch = []
        for sw in self.switches:
            root = CTL_PREFIX + sw.name
            batch += [f"link add {root} type veth peer name ctl0 netns {sw.netns}",
                      f"addr add {sw.ctl_root_ip}/30 dev {root}", f"link set {root} up"]
        subprocess.run(["ip", "-batch", "-"], input="\n".join(batch) + "\n", text=True,
                       check=True, capture_output=True)
        for sw in self.switches:
            sw.cmd(f"ip addr add {sw.ctl_ip}/30 dev ctl0 && ip link set ctl0 up")

    def register(self) -> None:
        """Register the VMs, then plug their ports (libvirt starts the VM once the
        orchestrator has it). In this order each plug is a change in that host's OVSDB
        that the controller sees after it knows the VM; the controller of 447ed04 kept
        only the last OVSDB snapshot of all its ``--ovsdb`` remotes, so VMs plugged before
        registration bound on one host only."""
        super().register()
        for p in self.plan:
            if p.name not in self.plugged and (
                    self.libvirt_ids is True or (
                        not isinstance(self.libvirt_ids, bool) and p.name in self.libvirt_ids)):
                self.plug(p.name)

    def expected_bound(self) -> set[str]:
        """Registered VMs with libvirt's ids on their port (others bind on a first frame,
        if the controller learns from them, or never)."""
        return super().expected_bound() & self.plugged

    def plug(self, vm: str) -> None:
        """libvirt's external_ids on the VM's current port, in its hypervisor's OVSDB."""
        assert self.net is not None
        plug_like_libvirt(switch_side(self.net, vm), self.plan_of(vm))
        self.plugged.add(vm)

    def stop_network(self) -> None:
        try:
            if self.net is not None:
                for sw in self.net.switches:
                    sw.stop_ovs()
                self._keep_logs()
                nodes = set(self.net.values())  # links of hosts a test deleted: gone already
                self.net.links = [ln for ln in self.net.links if ln.intf1 and ln.intf2
                                  and {ln.intf1.node, ln.intf2.node} <= nodes]
                self.net.stop()
        finally:  # whatever failed above (or while starting), nothing of ours stays
            self.net = None
            remove_leftovers(self.state_root)

    def _keep_logs(self) -> None:
        """The daemons' logs, for a post-mortem (the state dirs go)."""
        for name in self.switch_names:
            for log in (self.state_root / name).glob("*.log"):
                dest = self.workdir / "ovs" / name
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, dest / log.name)


def migrate(lab: ProdLab, vm_name: str, target_hv: str, *, libvirt_ids: bool = True,
            announce: bool = True, **kw) -> migration.Migration:
    """Live-migrate a VM to ``target_hv`` as a hypervisor does (:mod:`.migration`): a new
    ``vnetK`` port on the target's ``br-int`` with the same MAC (libvirt's external_ids in
    the target's OVSDB if ``libvirt_ids``), switch-over, QEMU's RARPs if ``announce``, then
    the old port goes from the source's OVSDB."""
    assert lab.net is not None
    return migration.migrate(lab.net, lab.plan_of(vm_name), target_hv,
                             libvirt_ids=libvirt_ids, announce=announce, **kw)


# --- cleanup ------------------------------------------------------------------------------


def cleanup(keep: Collection[int] = ()) -> None:
    """Remove what any lab left, this one's and the old one's (safe at any time when no lab
    runs; ``keep``: pids to spare, the controller a lab has just started)."""
    datacenter.cleanup(keep)


def remove_leftovers(state_root: Path = STATE_ROOT, keep: Collection[int] = ()) -> None:
    """Stop every process in our namespaces, our OVS daemons wherever they are and a crashed
    run's controller; delete the namespaces (their veths go with them), our root-side
    veths and the state dirs."""
    for ns in _our_namespaces():
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        _terminate([int(p) for p in pids])
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    # daemons outside our namespaces (a namespace deleted under them), and the controller
    # of a crashed run (it watches our databases: --ovsdb unix:STATE_ROOT/...)
    _terminate([pid for pid in _all_pids() if pid not in keep and _left_by_us(pid, state_root)])
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                           text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(CTL_PREFIX):
            subprocess.run(["ip", "link", "del", name], capture_output=True)
    shutil.rmtree(state_root, ignore_errors=True)


def _our_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith(NETNS_PREFIX)]


def _all_pids() -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit()]


def _left_by_us(pid: int, state_root: Path) -> bool:
    """One of our OVS daemons, or a controller serving our databases."""
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    if comm in DAEMONS:
        return f"{state_root}/" in cmd
    # (``python -m vfence serve`` since the package became vfence.*: "controller serve"
    # matched no controller, and a killed run's one kept watching the next lab's OVSDBs)
    return " serve " in cmd and f"--ovsdb unix:{state_root}/" in cmd


def _pid_from(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


def _terminate(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM these processes, wait for them, SIGKILL the ones that are left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        end = time.monotonic() + timeout
        while pids and time.monotonic() < end:
            pids = [p for p in pids if _alive(p)]
            if pids:
                time.sleep(0.02)
        if not pids:
            return


def _alive(pid: int) -> bool:
    """Running (a zombie of ours counts as gone: reap it)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
