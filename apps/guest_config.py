"""A guest configuring itself: which of its packet-ins ask for configuration (DHCP,
DHCPv6, a router solicitation), and the answer to send back out of its port. The state
is read, never changed here (the controller swaps it whole, never edits it in place);
what to answer is controller/dhcp.py's decision."""

from __future__ import annotations

import functools
import logging
import struct
from typing import Any

from os_ken.lib.packet import icmpv6, udp

from vfence.controller import dhcp
from vfence.controller.model import NetworkState

from . import dhcp_server, router_answers

LOG = logging.getLogger("vfence.app")
DHCP4, DHCP6, SOLICITATION = "dhcp", "dhcp6", "router solicitation"


def kind(pkt: Any) -> str | None:
    """What a VM's packet-in asks for, if it asks for configuration."""
    u = pkt.get_protocol(udp.udp)
    if u is not None:
        return {(68, 67): DHCP4, (546, 547): DHCP6}.get((u.src_port, u.dst_port))
    icmp6 = pkt.get_protocol(icmpv6.icmpv6)
    return SOLICITATION if icmp6 is not None and icmp6.type_ == icmpv6.ND_ROUTER_SOLICIT \
        else None


def answer(state: NetworkState, dpid: int, port_no: int, what: str, frame: bytes
           ) -> bytes | None:
    """The answer to a ``what`` from port ``port_no`` of ``dpid``: the VM's own lease,
    or its router's advertisement; None where nobody answers (no lease or router for
    that port and MAC, a message a server ignores)."""
    try:
        reply = _answer(state, dpid, port_no, what, frame)
    except (ValueError, struct.error):  # a message no answer can be built for
        reply = None
    LOG.debug("%s from %016x port %d: %s", what, dpid, port_no,
              "answered" if reply else "nothing to answer")
    return reply


def _answer(state: NetworkState, dpid: int, port_no: int, what: str, frame: bytes
            ) -> bytes | None:
    reply = None
    if what == DHCP4:
        req = dhcp_server.parse(frame)
        lease = None if req is None else dhcp.lease_for(state, dpid, port_no, req.src_mac)
        reply = dhcp_server.answer(req, lease) if req and lease else None
    elif what == DHCP6:
        req6 = dhcp_server.parse6(frame)
        lease6 = None if req6 is None else dhcp.lease6_for(state, dpid, port_no, req6.src_mac)
        reply = dhcp_server.answer6(req6, lease6) if req6 and lease6 else None
    else:
        src = ":".join(f"{b:02x}" for b in frame[6:12])
        ad = dhcp.solicited_advert(state, dpid, port_no, src)
        reply = advert(ad) if ad is not None else None
    return reply


@functools.lru_cache(maxsize=1024)
def advert(ad: dhcp.Advert) -> bytes:
    """A router advertisement, built once per content (the periodic ones repeat)."""
    return router_answers.router_advert(ad)
