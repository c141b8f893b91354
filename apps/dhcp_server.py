"""DHCPv4 on the wire: read a client's message, write the server's answer (os-ken's
packet library). What to answer is controller/dhcp.py's decision."""

from __future__ import annotations

import ipaddress
import struct

from os_ken.lib.packet import dhcp, ethernet, ipv4, packet, udp

from vfence.controller import dhcp as policy_dhcp

BROADCAST_FLAG = 0x8000
BCAST_MAC, BCAST_IP = "ff:ff:ff:ff:ff:ff", "255.255.255.255"


class Request:
    """The fields of a client's message the answer needs."""

    def __init__(self, src_mac: str, msg: dhcp.dhcp) -> None:
        self.src_mac, self.msg = src_mac, msg
        opts = {o.tag: o.value for o in (msg.options.option_list if msg.options else [])}
        kind = opts.get(dhcp.DHCP_MESSAGE_TYPE_OPT, b"")
        self.type = kind[0] if len(kind) == 1 else 0
        wanted = opts.get(dhcp.DHCP_REQUESTED_IP_ADDR_OPT, b"")
        self.requested = str(ipaddress.IPv4Address(wanted)) if len(wanted) == 4 else None


def parse(frame: bytes) -> Request | None:
    """A client's DHCP message (BOOTREQUEST from its own MAC), or None."""
    try:
        pkt = packet.Packet(frame)
    except Exception:  # os-ken raises what it likes on a malformed message
        return None
    eth, msg = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(dhcp.dhcp)
    if eth is None or msg is None or msg.op != dhcp.DHCP_BOOT_REQUEST:
        return None
    if not isinstance(msg.chaddr, str) or msg.chaddr.lower() != eth.src.lower():
        return None  # a client asking for another MAC's lease
    return Request(eth.src.lower(), msg)


def answer(req: Request, lease: policy_dhcp.Lease) -> bytes | None:
    """The server's reply to ``req`` with ``lease``, ready to send out of the client's
    port; None where a server stays silent."""
    kind = policy_dhcp.reply_type(req.type, req.requested, req.msg.ciaddr, lease)
    if kind is None:
        return None
    opts = [dhcp.option(dhcp.DHCP_MESSAGE_TYPE_OPT, bytes([kind])),
            dhcp.option(dhcp.DHCP_SERVER_IDENTIFIER_OPT, _ip(lease.server))]
    yiaddr = "0.0.0.0"
    if kind != policy_dhcp.NAK:
        if req.type != policy_dhcp.INFORM:
            yiaddr = lease.ip
            opts += [dhcp.option(dhcp.DHCP_IP_ADDR_LEASE_TIME_OPT, _u32(lease.seconds)),
                     dhcp.option(dhcp.DHCP_RENEWAL_TIME_OPT, _u32(lease.seconds // 2)),
                     dhcp.option(dhcp.DHCP_REBINDING_TIME_OPT, _u32(lease.seconds * 7 // 8))]
        opts += [dhcp.option(dhcp.DHCP_SUBNET_MASK_OPT, _ip(lease.netmask)),
                 dhcp.option(dhcp.DHCP_GATEWAY_ADDR_OPT, _ip(lease.router))]
        if lease.dns:
            opts.append(dhcp.option(dhcp.DHCP_DNS_SERVER_ADDR_OPT,
                                    b"".join(_ip(a) for a in lease.dns)))
        if lease.domain:
            opts.append(dhcp.option(dhcp.DHCP_DOMAIN_NAME_OPT, lease.domain.encode()))
        if lease.mtu:
            opts.append(dhcp.option(dhcp.DHCP_INTERFACE_MTU_OPT, struct.pack("!H", lease.mtu)))
    m = req.msg
    reply = dhcp.dhcp(dhcp.DHCP_BOOT_REPLY, req.src_mac, dhcp.options(opts), xid=m.xid,
                      flags=m.flags, ciaddr=m.ciaddr if kind != policy_dhcp.NAK else "0.0.0.0",
                      yiaddr=yiaddr, siaddr=lease.server)
    # to the client's own address when it has one (renewing, inform), else broadcast
    # if it asked so (or for a nak), else to the address offered, at its MAC
    if m.ciaddr != "0.0.0.0" and kind != policy_dhcp.NAK:
        dst_ip, dst_mac = m.ciaddr, req.src_mac
    elif m.flags & BROADCAST_FLAG or kind == policy_dhcp.NAK:
        dst_ip, dst_mac = BCAST_IP, BCAST_MAC
    else:
        dst_ip, dst_mac = yiaddr, req.src_mac
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=dst_mac, src=lease.server_mac, ethertype=0x0800))
    out.add_protocol(ipv4.ipv4(src=lease.server, dst=dst_ip, proto=17, ttl=64))
    out.add_protocol(udp.udp(src_port=67, dst_port=68))
    out.add_protocol(reply)
    out.serialize()
    return bytes(out.data)


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _u32(n: int) -> bytes:
    return struct.pack("!I", n)
