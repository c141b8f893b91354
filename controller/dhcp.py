"""DHCPv4 for registered VMs, answered by the controller as OVN answers it: the VM's
registered address and its segment's prefix, gateway, resolvers, search domain, MTU and
lease. What to answer is decided here, from the state alone; apps/dhcp_server.py reads
and writes the packets. A guest never gets an address that is not its own: the lease is
looked up by the port the request came in on and the VM bound (or standing by) there,
and the client's MAC must be that VM's.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from . import addresses, routing
from .model import NetworkState

DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8


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


def lease_for(state: NetworkState, dpid: int, port_no: int, mac: str) -> Lease | None:
    """The lease of the VM sending on ``dpid`` port ``port_no`` from ``mac``; None when no
    VM with that MAC is bound (or standing by) there, or its segment has no IPv4 subnet
    and gateway, or the VM no IPv4 address."""
    vm = state.vms.get(routing.port_owners(state).get((dpid, port_no), ""))
    if vm is None or vm.mac != mac.lower():
        return None
    spec = state.policy.specs.get(vm.segment)
    v4 = next((ip for ip in vm.ips if ":" not in ip), None)
    if spec is None or not spec.subnet or not spec.gateway or v4 is None:
        return None
    net = ipaddress.IPv4Network(spec.subnet)
    routed = routing.gateway_of(state, vm.segment_id)
    server_mac = routed[0] if routed else addresses.router_mac(f"dhcp:{vm.segment}")
    return Lease(v4, str(net.netmask), spec.gateway, server_mac, spec.gateway,
                 spec.dns_servers, spec.domain, spec.mtu, spec.lease_time)


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
