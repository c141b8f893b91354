"""DHCP on the wire, v4 and v6: read a client's message, write the server's answer
(os-ken's packet library; DHCPv6's identity-association options are packed here, os-ken
carries options as bytes). What to answer is controller/dhcp.py's decision."""

from __future__ import annotations

import ipaddress
import struct

from os_ken.lib.packet import dhcp, dhcp6, ethernet, ipv4, ipv6, packet, udp

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


# --- DHCPv6 ---------------------------------------------------------------------------

OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_STATUS = 1, 2, 3, 5, 13
OPT_RAPID_COMMIT, OPT_DNS, OPT_DOMAINS = 14, 23, 24
SUCCESS, NO_ADDRS_AVAIL, NOT_ON_LINK = 0, 2, 4
MAX_IAS = 4  # identity associations answered per message (the first gets the addresses)


class Request6:
    """The fields of a DHCPv6 client's message the answer needs."""

    def __init__(self, src_mac: str, src_ip: str, msg: dhcp6.dhcp6) -> None:
        self.src_mac, self.src_ip, self.type, self.xid = src_mac, src_ip, msg.msg_type, \
            msg.transaction_id
        opts = msg.options.option_list
        first = {o.code: bytes(o.data) for o in reversed(opts)}
        self.client_id = first.get(OPT_CLIENTID)
        self.server_id = first.get(OPT_SERVERID)
        self.rapid = OPT_RAPID_COMMIT in first
        # (IAID, addresses the client names in it), each identity association asked for
        # once (the first MAX_IAS; a message may ask for many, the answer stays small)
        ias = dict(_ia(bytes(o.data)) for o in opts if o.code == OPT_IA_NA and len(o.data) >= 12)
        self.ias = list(ias.items())[:MAX_IAS]
        self.other_ias = any(o.code in (4, 25) for o in opts)  # IA_TA, IA_PD


def _ia(data: bytes) -> tuple[bytes, list[str]]:
    named, off = [], 12
    while off + 4 <= len(data):
        code, length = struct.unpack_from("!HH", data, off)
        if code == OPT_IAADDR and length >= 24:
            named.append(str(ipaddress.IPv6Address(data[off + 4:off + 20])))
        off += 4 + length
    return data[:4], named


def parse6(frame: bytes) -> Request6 | None:
    """A client's DHCPv6 message (to a server's port; with a client identifier, which
    only an information request may leave out), or None (relayed messages too: no
    relay sits between a VM and its host)."""
    try:
        pkt = packet.Packet(frame)
    except Exception:  # os-ken raises what it likes on a malformed message
        return None
    eth, ip, msg = (pkt.get_protocol(c) for c in (ethernet.ethernet, ipv6.ipv6, dhcp6.dhcp6))
    if eth is None or ip is None or msg is None or msg.msg_type >= dhcp6.DHCPV6_RELAY_FORW:
        return None
    try:
        req = Request6(eth.src.lower(), ip.src, msg)
    except (ValueError, struct.error):
        return None
    if req.type == policy_dhcp.INFORMATION_REQUEST:
        return None if req.ias else req  # one asking for addresses too: discarded
    return req if req.client_id else None


def duid(mac: str) -> bytes:
    """A server's DUID-LL (RFC 8415 11.4): hardware type Ethernet and its MAC."""
    return struct.pack("!HH", 3, 1) + bytes.fromhex(mac.replace(":", ""))


def answer6(req: Request6, lease: policy_dhcp.Lease6) -> bytes | None:
    """The server's reply to ``req`` with ``lease``, ready to send out of the client's
    port (to its link-local source, from the server's); None where a server is silent."""
    ours = duid(lease.server_mac)
    kind = policy_dhcp.reply6_type(req.type, req.server_id, ours, req.rapid)
    if kind is None:
        return None
    msg_type, with_addresses = kind
    opts = [dhcp6.option(OPT_SERVERID, ours)]
    if req.client_id:
        opts.append(dhcp6.option(OPT_CLIENTID, req.client_id))
    if with_addresses:
        # the VM's addresses in the first identity association (an address lives in one);
        # any other the client names goes back with lifetimes 0 when it renews or rebinds
        drop = req.type in (policy_dhcp.RENEW, policy_dhcp.REBIND)
        opts += [dhcp6.option(OPT_IA_NA, _ia_na(iaid, named if drop else [],
                                                lease.addresses if i == 0 else (),
                                                lease.seconds))
                 for i, (iaid, named) in enumerate(req.ias)]
        if not req.ias and (req.other_ias or not lease.addresses):
            opts.append(_status(NO_ADDRS_AVAIL))  # it asked for nothing this server gives
        if msg_type == policy_dhcp.REPLY and req.type == policy_dhcp.SOLICIT:
            opts.append(dhcp6.option(OPT_RAPID_COMMIT, b""))
    elif req.type == policy_dhcp.CONFIRM:
        named = [a for _, n in req.ias for a in n]
        if not named:
            return None  # nothing to confirm: a server stays silent (RFC 8415 18.3.3)
        opts.append(_status(SUCCESS if set(named) <= set(lease.addresses) else NOT_ON_LINK))
    elif req.type != policy_dhcp.INFORMATION_REQUEST:
        opts.append(_status(SUCCESS))
    if lease.dns:
        opts.append(dhcp6.option(OPT_DNS, b"".join(_ip6(a) for a in lease.dns)))
    if lease.domain:
        opts.append(dhcp6.option(OPT_DOMAINS, dns_name(lease.domain)))
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=req.src_mac, src=lease.server_mac,
                                       ethertype=0x86DD))
    out.add_protocol(ipv6.ipv6(src=lease.server_ip, dst=req.src_ip, nxt=17, hop_limit=255))
    out.add_protocol(udp.udp(src_port=547, dst_port=546))
    out.add_protocol(dhcp6.dhcp6(msg_type, dhcp6.options(opts), transaction_id=req.xid))
    out.serialize()
    return bytes(out.data)


def _ia_na(iaid: bytes, named: list[str], addresses: tuple[str, ...], t: int) -> bytes:
    """An identity association with ``addresses`` (renewal at half the lease ``t``,
    rebinding at 4/5), and each other address in ``named`` with lifetimes 0 (the client
    may not keep it); no address at all: status NoAddrsAvail."""
    body = iaid + struct.pack("!II", t // 2, t * 4 // 5)
    for addr in addresses:
        body += _iaaddr(addr, t)
    for addr in named:
        if addr not in addresses:
            body += _iaaddr(addr, 0)
    if not addresses:
        body += _status(NO_ADDRS_AVAIL).serialize()
    return body


def _iaaddr(addr: str, seconds: int) -> bytes:
    return struct.pack("!HH16sII", OPT_IAADDR, 24, _ip6(addr), seconds, seconds)


def _status(code: int) -> dhcp6.option:
    return dhcp6.option(OPT_STATUS, struct.pack("!H", code))


def dns_name(domain: str) -> bytes:
    """A domain name in DNS wire format (RFC 1035 3.1), as DHCPv6's domain list and the
    router advertisement's search list carry it."""
    labels = [lab.encode() for lab in domain.strip(".").split(".") if lab]
    return b"".join(bytes([len(lab)]) + lab for lab in labels) + b"\0"


def _ip6(text: str) -> bytes:
    return ipaddress.IPv6Address(text).packed
