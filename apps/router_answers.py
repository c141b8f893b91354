"""What a distributed router says that the datapath cannot: ICMP time exceeded, sent
from the source VM's gateway when a packet's TTL expires at the routing step (so
``traceroute`` shows the gateway as one hop), and router advertisements. Built with
os-ken's packet library."""

from __future__ import annotations

import ipaddress
import struct

from os_ken.lib.packet import arp, ethernet, icmp, icmpv6, ipv4, ipv6, packet

from vfence.controller.dhcp import PREFIX_PREFERRED, PREFIX_VALID, ROUTER_LIFETIME, Advert

from .dhcp_server import dns_name

ETH_TYPE_IP, ETH_TYPE_IPV6 = 0x0800, 0x86DD
QUOTED = 548  # of the expired datagram, at most (576 - IP and ICMP headers, as Linux)
SOLICITED = 0b010  # os-ken's nd_neighbor.res: R, S, O
QUOTED6 = 1184  # IPv6: the answer within the minimum MTU, 1280 (RFC 4443)


def time_exceeded(frame: bytes, router_mac: str, gateway: str) -> bytes | None:
    """The ICMP time exceeded (in transit) answer to an untagged IPv4 ``frame``, from
    ``gateway`` at ``router_mac`` back to the frame's sender; None for anything else
    (an ICMP error is never answered with another)."""
    try:
        pkt = packet.Packet(frame)
    except Exception:  # os-ken raises what it likes on a malformed frame
        return None
    eth, ip = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(ipv4.ipv4)
    if eth is None or ip is None or eth.ethertype != ETH_TYPE_IP:
        return None
    err = pkt.get_protocol(icmp.icmp)
    if err is not None and err.type not in (icmp.ICMP_ECHO_REQUEST, icmp.ICMP_ECHO_REPLY):
        return None
    if ip.offset or ip.dst == "255.255.255.255":  # only a datagram's first fragment
        return None
    quoted = frame[14:14 + min(ip.total_length, QUOTED)]
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=eth.src, src=router_mac, ethertype=ETH_TYPE_IP))
    out.add_protocol(ipv4.ipv4(src=gateway, dst=ip.src, proto=1, ttl=64))
    out.add_protocol(icmp.icmp(type_=icmp.ICMP_TIME_EXCEEDED, code=0,
                               data=icmp.TimeExceeded(data=quoted)))
    out.serialize()
    return bytes(out.data)


def time_exceeded6(frame: bytes, router_mac: str, gateway6: str) -> bytes | None:
    """ICMPv6 time exceeded (hop limit exceeded in transit) for an untagged IPv6
    ``frame``, from ``gateway6`` at ``router_mac`` back to its sender; None for anything
    else (never for an ICMPv6 error, nor to a multicast destination)."""
    try:
        pkt = packet.Packet(frame)
    except Exception:  # os-ken raises what it likes on a malformed frame
        return None
    eth, ip = pkt.get_protocol(ethernet.ethernet), pkt.get_protocol(ipv6.ipv6)
    if eth is None or ip is None or eth.ethertype != ETH_TYPE_IPV6 or ip.dst.startswith("ff"):
        return None
    err = pkt.get_protocol(icmpv6.icmpv6)
    if err is not None and err.type_ < 128:
        return None
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=eth.src, src=router_mac, ethertype=ETH_TYPE_IPV6))
    out.add_protocol(ipv6.ipv6(src=gateway6, dst=ip.src, nxt=58, hop_limit=64))
    out.add_protocol(icmpv6.icmpv6(type_=icmpv6.ICMPV6_TIME_EXCEEDED, code=0,
                                   data=bytes(4) + frame[14:14 + QUOTED6]))
    out.serialize()
    return bytes(out.data)


ALL_NODES, ALL_NODES_MAC = "ff02::1", "33:33:00:00:00:01"
MANAGED, OTHER = 0b10, 0b01  # the advertisement's M and O flags (os-ken shifts them)
ON_LINK = 0b100  # the prefix option's L flag; A (autonomous) stays clear
ND_OPT_MTU, ND_OPT_RDNSS, ND_OPT_DNSSL = 5, 25, 31


def router_advert(ad: Advert) -> bytes:
    """A router advertisement to all nodes (sent out of one VM's port only): the router,
    by its link-local address and MAC, as default router (for ``ad.lifetime`` seconds:
    0 where no router joins the segment); the segment's prefix on-link but not for
    autoconfiguration, addresses and other settings by DHCPv6 (M and O); the segment's
    MTU and IPv6 resolvers (RFC 8106) and search domain where it has them."""
    net = ipaddress.IPv6Network(ad.prefix)
    opts: list = [icmpv6.nd_option_sla(hw_src=ad.router_mac),
                  icmpv6.nd_option_pi(pl=net.prefixlen, res1=ON_LINK, val_l=PREFIX_VALID,
                                      pre_l=PREFIX_PREFERRED, prefix=str(net.network_address))]
    if ad.mtu:
        opts.append(struct.pack("!BBHI", ND_OPT_MTU, 1, 0, ad.mtu))
    if ad.dns:
        opts.append(struct.pack("!BBHI", ND_OPT_RDNSS, 1 + 2 * len(ad.dns), 0, ROUTER_LIFETIME)
                    + b"".join(ipaddress.IPv6Address(a).packed for a in ad.dns))
    if ad.domain:
        name = dns_name(ad.domain)
        name += bytes(-(len(name) + 8) % 8)  # padded to whole 8-octet units
        opts.append(struct.pack("!BBHI", ND_OPT_DNSSL, 1 + len(name) // 8, 0, ROUTER_LIFETIME)
                    + name)
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=ALL_NODES_MAC, src=ad.router_mac,
                                       ethertype=ETH_TYPE_IPV6))
    out.add_protocol(ipv6.ipv6(src=ad.router_ip, dst=ALL_NODES, nxt=58, hop_limit=255))
    out.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_ROUTER_ADVERT, data=icmpv6.nd_router_advert(
        ch_l=64, res=MANAGED | OTHER, rou_l=ad.lifetime, options=opts)))
    out.serialize()
    return bytes(out.data)


def arp_request(src_mac: str, src_ip: str, target: str) -> bytes:
    """A host asking, on its uplink, who has ``target`` (its external gateway)."""
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=src_mac, ethertype=0x0806))
    out.add_protocol(arp.arp(opcode=arp.ARP_REQUEST, src_mac=src_mac, src_ip=src_ip,
                             dst_mac="00:00:00:00:00:00", dst_ip=target))
    out.serialize()
    return bytes(out.data)


def neighbor_solicitation(src_mac: str, src_ip: str, target: str) -> bytes:
    """A host asking, on its uplink, where ``target`` (its external gateway6) is: to the
    target's solicited-node group, with the host's MAC as source link-layer address."""
    group = ipaddress.IPv6Address(int(ipaddress.IPv6Address("ff02::1:ff00:0"))
                                  | int(ipaddress.IPv6Address(target)) & 0xFFFFFF)
    mac = "33:33:" + ":".join(f"{b:02x}" for b in group.packed[-4:])
    out = packet.Packet()
    out.add_protocol(ethernet.ethernet(dst=mac, src=src_mac, ethertype=ETH_TYPE_IPV6))
    out.add_protocol(ipv6.ipv6(src=src_ip, dst=str(group), nxt=58, hop_limit=255))
    out.add_protocol(icmpv6.icmpv6(type_=icmpv6.ND_NEIGHBOR_SOLICIT, data=icmpv6.nd_neighbor(
        dst=target, option=icmpv6.nd_option_sla(hw_src=src_mac))))
    out.serialize()
    return bytes(out.data)


def gateway_answer(pkt: packet.Packet) -> tuple[str, str] | None:
    """(address, MAC) in an external gateway's answer to a probe: an ARP reply, or a
    solicited neighbour advertisement (S set: an answer, not an announcement anyone may
    send), whose link-layer address is the frame's own unicast source. None for
    anything else."""
    eth = pkt.get_protocol(ethernet.ethernet)
    a, icmp6 = pkt.get_protocol(arp.arp), pkt.get_protocol(icmpv6.icmpv6)
    if eth is None or int(eth.src.split(":")[0], 16) & 1:
        return None
    if a is not None and a.opcode == arp.ARP_REPLY:
        ip, mac = a.src_ip, a.src_mac
    elif icmp6 is not None and icmp6.type_ == icmpv6.ND_NEIGHBOR_ADVERT \
            and isinstance(icmp6.data, icmpv6.nd_neighbor) and icmp6.data.res & SOLICITED:
        opt = icmp6.data.option
        ip = icmp6.data.dst
        mac = opt.hw_src if isinstance(opt, icmpv6.nd_option_tla) else eth.src
    else:
        return None
    return (str(ip), str(mac).lower()) if str(mac).lower() == eth.src.lower() else None
