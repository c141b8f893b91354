"""The outside world of the production-shaped lab: an uplink network, a real router and a
client behind it, all on this machine.

    vf-xsw   a Linux bridge: the physical switch of the uplink network 198.18.10.0/24
             and 2001:db8:10::/64 (RFC 2544's benchmarking range and the documentation
             prefix: never this machine's own network)
    vf-xr    FRR (zebra + bgpd) at 198.18.10.1 and 2001:db8:10::1, peering with vfence
             (IPv4 and IPv6 unicast over one session); it routes to 198.51.100.0/24 and
             2001:db8:51::/64, where
    vf-xc    the external client 198.51.100.7 (2001:db8:51::7) sits
    vf-xdns  BIND 9 at 198.18.10.53, authoritative for the VMs' zones (TSIG-keyed
             updates), started with :meth:`ExternalNet.start_dns`
    vf-xphy  a standalone Open vSwitch (NORMAL: a plain learning switch, VLAN-aware), its
             trunk port in the uplink bridge, an access port in a bridged segment's VLAN to
    vf-xl    a physical host of that segment (:meth:`ExternalNet.start_legacy`). The uplink
             bridge carries the VLAN's frames between the hypervisors and it, and learns
             the VMs' MACs from them: it is the switch that must relearn after a move
             (there is no 802.1Q module here for VLAN sub-interfaces or a VLAN-aware Linux
             bridge)
    vfx-ctl  the controller's own interface on the uplink network (198.18.10.2), in the
             root namespace: BGP leaves through it, never through the default route

Each hypervisor gets a port ``upN`` on its ``br-int``, a veth into the bridge. FRR is
started as DESIGN.md says (a directory owned by frr, ``-P 0``); everything is removed by
:meth:`ExternalNet.stop` (and leftovers by :func:`remove_leftovers`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from .named import Named

SW, ROUTER, CLIENT, DNS = "vf-xsw", "vf-xr", "vf-xc", "vf-xdns"
PHY, LEGACY = "vf-xphy", "vf-xl"
CTL = "vfx-ctl"
SUBNET, GATEWAY, CTL_IP = "198.18.10.0/24", "198.18.10.1", "198.18.10.2"
CLIENT_NET, CLIENT_GW, CLIENT_IP = "198.51.100.0/24", "198.51.100.1", "198.51.100.7"
SUBNET6, GATEWAY6 = "2001:db8:10::/64", "2001:db8:10::1"
CLIENT_NET6, CLIENT_GW6, CLIENT_IP6 = "2001:db8:51::/64", "2001:db8:51::1", "2001:db8:51::7"
DNS_IP = "198.18.10.53"
ROUTER_ASN, LOCAL_ASN = 65000, 65010
FRR = Path("/usr/lib/frr")
RUNDIR = Path("/run/vfence-extnet")
DNS_DIR = Path("/run/vfence-extnet-dns")
PHY_DIR = Path("/run/vfence-extnet-phy")
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


def host_address(h: int) -> str:
    return f"198.18.10.{10 + h}"


def host_address6(h: int) -> str:
    return f"2001:db8:10::{10 + h}"


def _sh(*cmd: str, check: bool = True) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def _in(ns: str, *cmd: str, check: bool = True) -> str:
    return _sh("ip", "netns", "exec", ns, *cmd, check=check)


def _no_offload(ns: str, dev: str) -> None:
    _in(ns, "ethtool", "-K", dev, "rx", "off", "tx", "off", check=False)


class ExternalNet:
    """``start()`` builds it and starts FRR; ``attach(lab, h)`` gives hypervisor ``h``
    its uplink; ``stop()`` removes it all."""

    def __init__(self, rundir: Path = RUNDIR, speakers: tuple[str, ...] = (CTL_IP,)) -> None:
        """``speakers``: the controller-side addresses FRR peers with (a cluster's
        members, each with its own address on ``vfx-ctl``)."""
        self.dir = rundir  # FRR's: owned by frr, every parent reachable by it (/run is)
        self.named: Named | None = None
        self.speakers = speakers

    def start(self) -> ExternalNet:
        remove_leftovers()
        for ns in (SW, ROUTER, CLIENT):
            _sh("ip", "netns", "add", ns)
            _in(ns, "ip", "link", "set", "lo", "up")
        # (no MLD snooping: nothing here is a querier, and vfence's hosts send no reports)
        _in(SW, "ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _in(SW, "ip", "link", "set", "br0", "up")
        self._wire(ROUTER, "ext0", f"{GATEWAY}/24", f"{GATEWAY6}/64")
        _sh("ip", "link", "add", CTL, "type", "veth", "peer", "name", "ctl", "netns", SW)
        for address in dict.fromkeys((CTL_IP, *self.speakers)):
            _sh("ip", "addr", "add", f"{address}/24", "dev", CTL)
        _sh("ip", "link", "set", CTL, "up")
        self._bridge_port("ctl")
        _sh("ip", "link", "add", "cli0", "netns", ROUTER, "type", "veth", "peer", "name",
            "eth0", "netns", CLIENT)
        _in(ROUTER, "ip", "addr", "add", f"{CLIENT_GW}/24", "dev", "cli0")
        _in(ROUTER, "ip", "addr", "add", f"{CLIENT_GW6}/64", "dev", "cli0", "nodad")
        _in(ROUTER, "ip", "link", "set", "cli0", "up")
        _in(ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1")
        _in(CLIENT, "ip", "addr", "add", f"{CLIENT_IP}/24", "dev", "eth0")
        _in(CLIENT, "ip", "addr", "add", f"{CLIENT_IP6}/64", "dev", "eth0", "nodad")
        _in(CLIENT, "ip", "link", "set", "eth0", "up")
        _in(CLIENT, "ip", "route", "add", "default", "via", CLIENT_GW)
        _in(CLIENT, "ip", "-6", "route", "add", "default", "via", CLIENT_GW6)
        self._start_frr()
        return self

    def start_dns(self, zones: list[str]) -> Named:
        """BIND 9 in its own namespace on the uplink network, for ``zones``."""
        _sh("ip", "netns", "add", DNS)
        _in(DNS, "ip", "link", "set", "lo", "up")
        self._wire(DNS, "dns0", f"{DNS_IP}/24")
        shutil.rmtree(DNS_DIR, ignore_errors=True)
        self.named = Named(DNS_DIR, DNS_IP, 53, zones, netns=DNS).start()
        return self.named

    def start_legacy(self, vlan: int, addresses: list[str]) -> None:
        """A physical host (``addresses``, CIDR) in a bridged segment's ``vlan``, behind a
        standalone OVS whose trunk port sits in the uplink bridge."""
        for ns in (PHY, LEGACY):
            _sh("ip", "netns", "add", ns)
            _in(ns, "ip", "link", "set", "lo", "up")
        shutil.rmtree(PHY_DIR, ignore_errors=True)
        PHY_DIR.mkdir(parents=True)
        d, env = PHY_DIR, f"OVS_RUNDIR={PHY_DIR}"
        daemon = f"--pidfile={d}/{{0}}.pid --log-file={d}/{{0}}.log --detach --no-chdir"
        db = f"unix:{d}/db.sock"
        _in(PHY, "sh", "-c", " && ".join([
            f"ovsdb-tool create {d}/conf.db {OVS_SCHEMA}",
            f"{env} ovsdb-server {d}/conf.db --remote=punix:{d}/db.sock "
            + daemon.format("ovsdb-server"),
            f"ovs-vsctl --db={db} --no-wait init",
            f"{env} ovs-vswitchd {db} " + daemon.format("ovs-vswitchd"),
            f"ovs-vsctl --db={db} --timeout=20 add-br phy -- set Bridge phy "
            "datapath_type=netdev fail_mode=standalone"]))
        _sh("ip", "link", "add", "trunk", "netns", PHY, "type", "veth", "peer", "name",
            "phy-trunk", "netns", SW)
        _sh("ip", "link", "add", "eth0", "netns", LEGACY, "type", "veth", "peer", "name",
            "leg0", "netns", PHY)
        for ns, dev in ((PHY, "trunk"), (SW, "phy-trunk"), (LEGACY, "eth0"), (PHY, "leg0")):
            _no_offload(ns, dev)
            _in(ns, "ip", "link", "set", dev, "up")
        self._bridge_port("phy-trunk")
        _in(PHY, "ovs-vsctl", f"--db={db}", "add-port", "phy", "trunk", "--", "add-port",
            "phy", "leg0", f"tag={vlan}")
        for a in addresses:
            _in(LEGACY, "ip", "addr", "add", a, "dev", "eth0")

    def legacy(self, *cmd: str, check: bool = False) -> str:
        return _in(LEGACY, *cmd, check=check)

    def legacy_popen(self, cmd: str, out: Path) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", LEGACY, "sh", "-c", cmd],
                                stdout=out.open("w"), stderr=subprocess.STDOUT)

    def learned_port(self, mac: str) -> str | None:
        """The uplink bridge's port it learned ``mac`` on (the physical switch's MAC
        table), or None."""
        for line in _in(SW, "bridge", "fdb", "show", "br", "br0", check=False).splitlines():
            parts = line.split()
            if parts and parts[0] == mac.lower() and "dev" in parts:
                return parts[parts.index("dev") + 1]
        return None

    def _wire(self, ns: str, dev: str, *addresses: str) -> None:
        """A veth from ``ns`` (``dev``, with ``addresses``) into the bridge."""
        peer = f"{ns[-2:]}-{dev}"
        _sh("ip", "link", "add", dev, "netns", ns, "type", "veth", "peer", "name", peer,
            "netns", SW)
        for address in addresses:
            _in(ns, "ip", "addr", "add", address, "dev", dev,
                *(("nodad",) if ":" in address else ()))
        _in(ns, "ip", "link", "set", dev, "up")
        self._bridge_port(peer)

    def _bridge_port(self, dev: str) -> None:
        _in(SW, "ip", "link", "set", dev, "master", "br0")
        _in(SW, "ip", "link", "set", dev, "up")

    def attach(self, netns: str, h: int, add_port) -> str:
        """Hypervisor ``h`` (namespace ``netns``): a veth ``upH`` into the bridge, added to
        its bridge by ``add_port`` (the switch's own ``attach``). Returns the port name."""
        port, peer = f"up{h}", f"hv{h}-up"
        _sh("ip", "link", "add", port, "netns", netns, "type", "veth", "peer", "name", peer,
            "netns", SW)
        _no_offload(netns, port)
        _no_offload(SW, peer)
        self._bridge_port(peer)
        add_port(port)
        return port

    def _start_frr(self) -> None:
        d = self.dir
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "zebra.conf").write_text("hostname vfx-router\n")
        (d / "bgpd.conf").write_text(
            f"router bgp {ROUTER_ASN}\n bgp router-id {GATEWAY}\n no bgp ebgp-requires-policy\n"
            + "".join(f" neighbor {a} remote-as {LOCAL_ASN}\n neighbor {a} timers connect 1\n"
                      f" neighbor {a} timers 3 9\n" for a in self.speakers)
            + " address-family ipv6 unicast\n"
            + "".join(f"  neighbor {a} activate\n" for a in self.speakers)
            + " exit-address-family\n")
        shutil.chown(d, "frr", "frr")
        for f in d.iterdir():
            shutil.chown(f, "frr", "frr")
        for daemon in ("zebra", "bgpd"):
            _in(ROUTER, str(FRR / daemon), "-d", "-f", str(d / f"{daemon}.conf"), "-i",
                str(d / f"{daemon}.pid"), "-z", str(d / "zserv.api"), "--vty_socket", str(d),
                "-P", "0")

    def vtysh(self, command: str) -> str:
        return _sh("vtysh", "--vty_socket", str(self.dir), "-c", command, check=False)

    def route_via(self, prefix: str) -> str | None:
        """The next hop FRR installed in the router's kernel for ``prefix`` (IPv4 or
        IPv6), or None."""
        out = _in(ROUTER, "ip", "-6" if ":" in prefix else "-4", "route", "show", prefix,
                  check=False)
        parts = out.split()
        return parts[parts.index("via") + 1] if "via" in parts else None

    def client(self, *cmd: str, check: bool = False) -> str:
        return _in(CLIENT, *cmd, check=check)

    def client_popen(self, cmd: str, out: Path) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", CLIENT, "sh", "-c", cmd],
                                stdout=out.open("w"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.named is not None:
            self.named.kill()
        for daemon in ("ovs-vswitchd", "ovsdb-server"):  # the standalone switch's
            pidfile = PHY_DIR / f"{daemon}.pid"
            if pidfile.exists():
                subprocess.run(["kill", pidfile.read_text().strip()], capture_output=True)
        for daemon in ("bgpd", "zebra"):
            pidfile = self.dir / f"{daemon}.pid"
            if pidfile.exists():
                subprocess.run(["kill", pidfile.read_text().strip()], capture_output=True)
        time.sleep(0.2)
        remove_leftovers()


def remove_leftovers() -> None:
    """Namespaces, the controller's veth and FRR daemons a previous run left."""
    for ns in (LEGACY, PHY, DNS, CLIENT, ROUTER, SW):
        pids = _sh("ip", "netns", "pids", ns, check=False).split()
        if pids:
            subprocess.run(["kill", "-9", *pids], capture_output=True)
        _sh("ip", "netns", "del", ns, check=False)
    _sh("ip", "link", "del", CTL, check=False)
