"""Address configuration for registered VMs, answered by the controller as OVN answers
it: DHCPv4 (the VM's registered address and its segment's prefix, gateway, resolvers,
search domain, MTU and lease), DHCPv6 (its registered IPv6 addresses, resolvers, search
domain) and, where a router joins the segment, router advertisements (the router's
link-local address as default router, the segment's prefix on-link, "managed": addresses
come from DHCPv6, never from SLAAC, which port security would refuse). What to answer is
decided here, from the state alone; apps/dhcp_server.py and apps/router_answers.py read
and write the packets. A guest never gets an address that is not its own: the answer is
looked up by the port the request came in on and the VM bound (or standing by) there,
and the client's MAC must be that VM's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from . import addresses, routing
from .model import VM, Binding, NetworkState, SegmentSpec, eui64_link_local

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
# DHCPv6 (RFC 8415) message types
SOLICIT, ADVERTISE, REQUEST6, CONFIRM, RENEW, REBIND, REPLY, RELEASE6, DECLINE6 = range(1, 10)
INFORMATION_REQUEST = 11
ROUTER_LIFETIME = 9000  # seconds a guest keeps the router as its default: RFC 4861's
# longest, so a controller down for hours takes no guest's IPv6 default route away (the
# datapath keeps routing); advertisements repeat every 200 s while it runs
PREFIX_VALID, PREFIX_PREFERRED = 86400, 14400  # the on-link prefix: a day, four hours
MIN_MTU6 = 1280  # an advertised MTU below IPv6's minimum is invalid: not advertised


class Lease(NamedTuple):
    ip: str
    netmask: str
    server: str  # the gateway: server identifier, and where a renewal goes
    server_mac: str  # the router's MAC (a segment no router joins: one of its own)
    router: str
    dns: tuple[str, ...]
    domain: str | None
    mtu: int | None
    seconds: int


class Lease6(NamedTuple):
    addresses: tuple[str, ...]  # the VM's registered IPv6 addresses (never link-local)
    server_mac: str  # as for DHCPv4; its DUID (DUID-LL) and link-local come from it
    server_ip: str  # the link-local address of server_mac: the answers' source
    dns: tuple[str, ...]  # the segment's IPv6 resolvers
    domain: str | None
    seconds: int


class Advert(NamedTuple):
    """A router advertisement for a segment with an IPv6 subnet."""

    router_mac: str
    router_ip: str  # the router's link-local address: the guests' default router
    prefix: str  # the segment's subnet6, on-link (not for autoconfiguration)
    mtu: int | None
    dns: tuple[str, ...]
    domain: str | None
    lifetime: int  # as default router: ROUTER_LIFETIME, or 0 where no router joins


def _sender(state: NetworkState, dpid: int, port_no: int, mac: str
            ) -> tuple[VM, SegmentSpec] | None:
    """The VM sending on ``dpid`` port ``port_no`` (bound or standing by there) from its
    own ``mac``, with its segment's spec; None for anyone else."""
    vm = state.vms.get(routing.port_owners(state).get((dpid, port_no), ""))
    if vm is None or vm.mac != mac.lower():
        return None
    spec = state.policy.specs.get(vm.segment)
    return None if spec is None else (vm, spec)


def _server_mac(state: NetworkState, segment: str, segment_id: int) -> str:
    """The router's MAC, where one joins the segment; else one of the segment's own."""
    d = routing.domains(state).get(segment_id)
    return d.routed.mac if d is not None else addresses.router_mac(f"dhcp:{segment}")


def serves_v4(spec: SegmentSpec) -> bool:
    """DHCPv4 answers in a segment with an IPv4 subnet and gateway."""
    return bool(spec.subnet and spec.gateway)


def lease_for(state: NetworkState, dpid: int, port_no: int, mac: str) -> Lease | None:
    """The lease of the VM sending on ``dpid`` port ``port_no`` from ``mac``; None when no
    VM with that MAC is bound (or standing by) there, or its segment has no IPv4 subnet
    and gateway, or the VM no IPv4 address."""
    found = _sender(state, dpid, port_no, mac)
    if found is None:
        return None
    vm, spec = found
    v4 = next((ip for ip in vm.ips if ":" not in ip), None)
    if not serves_v4(spec) or v4 is None:
        return None
    assert spec.subnet and spec.gateway
    net = ipaddress.IPv4Network(spec.subnet)
    return Lease(v4, str(net.netmask), spec.gateway, _server_mac(state, vm.segment,
                                                                 vm.segment_id), spec.gateway,
                 tuple(a for a in spec.dns_servers if ":" not in a), spec.domain, spec.mtu,
                 spec.lease_time)


def lease6_for(state: NetworkState, dpid: int, port_no: int, mac: str) -> Lease6 | None:
    """The DHCPv6 lease of the VM sending on ``dpid`` port ``port_no`` from ``mac``: its
    registered addresses in its segment's subnet6 (none: still resolvers and domain, for
    an information request); None for a segment without subnet6 or anyone else."""
    found = _sender(state, dpid, port_no, mac)
    if found is None or not found[1].subnet6:
        return None
    vm, spec = found
    mine = tuple(ip for ip in vm.ips if ":" in ip
                 and not ipaddress.IPv6Address(ip).is_link_local)
    server = _server_mac(state, vm.segment, vm.segment_id)
    return Lease6(mine, server, eui64_link_local(server),
                  tuple(a for a in spec.dns_servers if ":" in a), spec.domain, spec.lease_time)


def advert_for(state: NetworkState, vm: VM) -> Advert | None:
    """The router advertisement in the VM's segment, where it has a subnet6: from its
    router (the guests' default router); where no router joins, from the DHCP server
    with router lifetime 0 (a default router nobody is), for the prefix on-link and the
    M and O flags that start the guests' DHCPv6. None without subnet6."""
    spec = state.policy.specs.get(vm.segment)
    if spec is None or not spec.subnet6:
        return None
    mac = _server_mac(state, vm.segment, vm.segment_id)
    routed = routing.domains(state).get(vm.segment_id) is not None
    return Advert(mac, eui64_link_local(mac), spec.subnet6,
                  spec.mtu if spec.mtu and spec.mtu >= MIN_MTU6 else None,
                  tuple(a for a in spec.dns_servers if ":" in a), spec.domain,
                  ROUTER_LIFETIME if routed else 0)


def solicited_advert(state: NetworkState, dpid: int, port_no: int, mac: str
                     ) -> Advert | None:
    """The advertisement answering a router solicitation from ``mac`` on that port."""
    found = _sender(state, dpid, port_no, mac)
    return None if found is None else advert_for(state, found[0])


def adverts(state: NetworkState, bindings: Iterable[tuple[str, Binding]] | None = None
            ) -> list[tuple[int, int, Advert]]:
    """(dpid, port, advertisement) for every bound VM of a segment with subnet6 (or for
    those of ``bindings``): the unsolicited advertisements sent now and then, and to a
    port as soon as a VM is bound there (a guest that solicited before it was bound
    learns its router too)."""
    out = []
    for name, b in state.bindings.items() if bindings is None else bindings:
        vm = state.vms.get(name)
        ad = None if vm is None else advert_for(state, vm)
        if ad is not None:
            out.append((b.port[0], b.port[1], ad))
    return out


def reply_type(msg_type: int, requested: str | None, ciaddr: str, lease: Lease) -> int | None:
    """What a server answers: an offer to a discovery; to a request for the VM's own
    address (selecting, init-reboot: option 50; renewing, rebinding: ciaddr) an ack, to
    one for any other a nak; an ack to an inform. Nothing to a decline or release."""
    if msg_type == DISCOVER:
        return OFFER
    if msg_type == REQUEST:
        wanted = requested or (ciaddr if ciaddr != "0.0.0.0" else None)
        return ACK if wanted == lease.ip else NAK
    if msg_type == INFORM:
        return ACK
    return None


def reply6_type(msg_type: int, server_id: bytes | None, ours: bytes, rapid: bool
                ) -> tuple[int, bool] | None:
    """(message type, whether it carries the addresses) a DHCPv6 server answers with
    (RFC 8415 section 16): a solicitation gets an advertisement, or the reply itself when
    the client asks for rapid commit; a request or renewal for this server, and a
    rebinding for any, a reply with the addresses; a confirmation naming no server, an
    information request naming none or this one, and a release or decline for this
    server, a reply without. A solicitation, rebinding or confirmation naming a server,
    or a request naming another, is not answered."""
    for_us = server_id == ours
    if msg_type == SOLICIT and server_id is None:
        return (REPLY if rapid else ADVERTISE), True
    if msg_type in (REQUEST6, RENEW) and for_us or msg_type == REBIND and server_id is None:
        return REPLY, True
    if msg_type == CONFIRM and server_id is None \
            or msg_type == INFORMATION_REQUEST and server_id in (None, ours):
        return REPLY, False
    if msg_type in (RELEASE6, DECLINE6) and for_us:
        return REPLY, False
    return None
