"""Plain typed objects the compiler works on. No I/O, no ORM, no os-ken."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, NamedTuple

from .pipeline import rule_priority


@dataclass(frozen=True)
class VM:
    id: int  # the VM's tag, 1..MAX_VM_TAG (never its database id): metadata, reg4, cookies
    name: str
    mac: str  # lower-case colon form
    ips: tuple[str, ...]
    segment_id: int  # the segment's tag, 1..MAX_SEGMENT_TAG: metadata, ct zone, cookies
    segment: str
    groups: tuple[str, ...] = ()
    _hash: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # VMs key the compiler's memo: hash the fields once, not at every lookup
        object.__setattr__(self, "_hash", hash((self.id, self.name, self.mac, self.ips,
                                                self.segment_id, self.segment, self.groups)))

    def __hash__(self) -> int:
        return self._hash


def eui64_link_local(mac: str) -> str:
    """The link-local IPv6 address a guest derives from its MAC (modified EUI-64)."""
    b = bytes.fromhex(mac.replace(":", ""))
    iid = bytes([b[0] ^ 0x02, b[1], b[2], 0xFF, 0xFE, b[3], b[4], b[5]])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


@lru_cache(maxsize=1 << 16)
def router_addresses(spec: SegmentSpec, mac: str) -> frozenset[str]:
    """What a router with ``mac`` answers for in a segment it joins (no VM may hold it):
    the gateway, gateway6 and, with a subnet6, its link-local address (the default
    router its advertisements name)."""
    own = {spec.gateway, spec.gateway6, eui64_link_local(mac) if spec.subnet6 else None}
    return frozenset(a for a in own if a)


def ipv6_addresses(vm: VM) -> tuple[str, ...]:
    """Every IPv6 address the VM may use: its registered ones and its EUI-64 link-local."""
    own = {str(ipaddress.IPv6Address(ip)) for ip in vm.ips if ":" in ip}
    return tuple(sorted(own | {eui64_link_local(vm.mac)}))


def dpid_str(dpid: int) -> str:
    """A datapath id as OVS writes it: 16 hex digits."""
    return f"{dpid:016x}"


@dataclass(frozen=True)
class Switch:
    dpid: int
    name: str
    label: int  # host label carried in the VLAN id across the fabric (1..4094)


class PortRef(NamedTuple):
    """A switch port. A named tuple: the binding machine builds and hashes one per OVSDB
    interface on every host listing."""

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


@dataclass(frozen=True)
class VMSpec:
    """A VM as an orchestrator or a policy document describes it."""

    name: str
    mac: str
    ips: tuple[str, ...]
    segment: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Endpoint:
    kind: str  # any | group | vm | cidr | mac
    value: str = ""

    def __str__(self) -> str:
        return self.value or self.kind


ANY = Endpoint("any")


@dataclass(frozen=True)
class Rule:
    index: int
    name: str
    src: Endpoint
    dst: Endpoint
    action: str  # allow | deny | deny-and-log
    protocol: str | int = "any"
    ports: tuple[tuple[int, int], ...] = ()
    icmp_type: int | None = None
    icmp_code: int | None = None
    ethertype: int | None = None
    slot: int | None = None  # its priority, kept across policy edits (policy.py assigns it)

    @property
    def priority(self) -> int:
        """The rule's priority, also its id in cookies (unique among the rules)."""
        return self.slot if self.slot is not None else rule_priority(self.index)


@dataclass(frozen=True)
class Router:
    """A distributed router: the segments it joins, their gateways answered (and routed)
    on every host with ``mac`` (derived from the name: the same on every controller and
    across restarts)."""

    name: str
    segments: tuple[str, ...]
    mac: str
    external: str | None = None  # the external network it reaches through the hosts' uplinks


@dataclass(frozen=True)
class Bgp:
    """vfence's BGP session with an external network's router."""

    local_asn: int
    peer: str
    peer_asn: int


@dataclass(frozen=True)
class External:
    """An external network: the hosts' uplink network and its physical router."""

    name: str
    subnet: str
    gateway: str
    bgp: Bgp | None = None
    subnet6: str | None = None  # its IPv6 prefix, where the hosts route IPv6 out too
    gateway6: str | None = None


@dataclass(frozen=True)
class Uplink:
    """A host's way out: the port of its bridge on an external network, and its address
    there (answered in the datapath; the next hop BGP gives for the host's VMs)."""

    host: str
    port: str
    address: str
    address6: str | None = None  # its IPv6 address there (BGP's next hop for /128s)


@dataclass(frozen=True)
class Tsig:
    """The key that signs vfence's DNS updates (the secret is read from ``secret_file``)."""

    name: str
    algorithm: str = "hmac-sha256"
    secret_file: str = ""


@dataclass(frozen=True)
class Dns:
    """The authoritative server that RFC 2136 updates keep each VM's names current in."""

    server: str
    zone: str  # absolute, lower case
    port: int = 53
    reverse: bool = False
    ttl: int = 30
    tsig: Tsig | None = None
    owner: str = "default"  # which vfence: its marker at every name it keeps


@dataclass(frozen=True)
class SegmentSpec:
    """A segment as the policy document defines it (prefixes and gateways normalised)."""

    name: str
    subnet: str | None = None
    subnet6: str | None = None
    gateway: str | None = None
    gateway6: str | None = None
    # what DHCP gives the segment's guests besides address, prefix and gateway
    dns_servers: tuple[str, ...] = ()
    domain: str | None = None
    mtu: int | None = None
    lease_time: int = 3600
    uplink_vlan: int | None = None  # bridged: carried on the hosts' uplinks with this VLAN


@dataclass(frozen=True)
class Policy:
    segments: tuple[tuple[str, str | None], ...] = ()
    groups: tuple[str, ...] = ()
    vms: tuple[VMSpec, ...] = ()
    rules: tuple[Rule, ...] = ()
    isolation: tuple[tuple[str, str], ...] = ()
    intra_group: str = "allow"
    inter_group: str = "allow"
    routers: tuple[Router, ...] = ()
    segment_specs: tuple[SegmentSpec, ...] = ()
    externals: tuple[External, ...] = ()
    uplinks: tuple[Uplink, ...] = ()
    dns: Dns | None = None
    document: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @functools.cached_property
    def specs(self) -> dict[str, SegmentSpec]:
        """Segment name -> its spec (what the API, the edits and DHCP look up)."""
        return {s.name: s for s in self.segment_specs}

    @functools.cached_property
    def bridged(self) -> dict[str, int]:
        """Segment name -> its uplink VLAN (bridged segments only)."""
        return {s.name: s.uplink_vlan for s in self.segment_specs if s.uplink_vlan}

    @functools.cached_property
    def router_of(self) -> dict[str, str]:
        """Segment name -> the router that joins it (routed segments only)."""
        return {seg: r.name for r in self.routers for seg in r.segments}

    @property
    def restrictive(self) -> bool:
        """True when some traffic between VMs of a segment is denied by default."""
        return bool(self.isolation) or self.inter_group == "deny" or self.intra_group == "deny"


PERMISSIVE = Policy()


@dataclass
class NetworkState:
    """Everything the compiler needs: switches, links, VMs and where they are."""

    switches: dict[int, Switch] = field(default_factory=dict)
    links: set[Link] = field(default_factory=set)
    vms: dict[str, VM] = field(default_factory=dict)
    bindings: dict[str, Binding] = field(default_factory=dict)
    policy: Policy = PERMISSIVE
    group_bits: dict[str, int] = field(default_factory=dict)  # group -> number (0..65534)
    # live migration: the VM's port on the target host, ready but not yet delivered to
    standby: dict[str, Binding] = field(default_factory=dict)
    # pre-announced migrations: VM -> target switch (prepared make-before-break)
    expected: dict[str, int] = field(default_factory=dict)
    # ports the operator marked as facing the fabric (host OVSDB), per switch; only these
    # carry LLDP and host labels
    fabric: dict[int, frozenset[int]] = field(default_factory=dict)
    segment_tags: dict[str, int] = field(default_factory=dict)  # segment -> its tag
    router_numbers: dict[str, int] = field(default_factory=dict)  # router -> its number
    # per switch: interface name -> OpenFlow port, as the host's OVSDB lists them
    port_names: dict[int, dict[str, int]] = field(default_factory=dict)
    # per switch: the MAC its uplink's external gateway answered its own ARP probe with
    gateway_macs: dict[int, str] = field(default_factory=dict)
    # per switch: the MAC its uplink's gateway6 advertised to its own solicitation
    gateway6_macs: dict[int, str] = field(default_factory=dict)

    def migrating(self) -> frozenset[int]:
        """Tags of the VMs with a standby port: what a switch learned for them in the
        datapath (their first frame from it) is theirs until the move ends."""
        return frozenset(self.vms[n].id for n in self.standby if n in self.vms)

    def switch_name(self, dpid: int) -> str:
        """The switch's host name, or its dpid in 16 hex digits while it has none."""
        sw = self.switches.get(dpid)
        return sw.name if sw else dpid_str(dpid)

    def find_switch(self, name_or_dpid: str) -> int | None:
        """A known switch by host name or 16-hex-digit dpid."""
        return next((d for d, sw in self.switches.items()
                     if name_or_dpid in (sw.name, dpid_str(d))), None)

    def copy(self) -> NetworkState:
        """A copy whose containers are its own (the items are frozen): changing it never
        changes this one."""
        return NetworkState(dict(self.switches), set(self.links), dict(self.vms),
                            dict(self.bindings), self.policy, dict(self.group_bits),
                            dict(self.standby), dict(self.expected), dict(self.fabric),
                            dict(self.segment_tags), dict(self.router_numbers),
                            dict(self.port_names), dict(self.gateway_macs),
                            dict(self.gateway6_macs))
