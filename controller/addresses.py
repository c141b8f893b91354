"""What may be a VM's address, a segment's prefix or a segment's gateway.

One set of rules for every way in (the REST API, the policy document, the registry), so
they cannot drift apart. Each function returns the normalised text or raises ValueError
whose message is the reason, for the caller to report at its own field path.

Refused everywhere: a zone index (``fe80::1%eth0`` names an interface of one host),
multicast, the unspecified address (0.0.0.0, ::), loopback and the IPv4 limited broadcast
(255.255.255.255). Inside a subnet, a host address may not be the subnet's network
address or (IPv4) its broadcast address; /31, /32, /127 and /128 have neither. An IPv6
link-local address without a zone (fe80::5) is a legal VM address in any segment: every
interface has one. Rule CIDRs (``0.0.0.0/0``, ``::/0``) are not addresses and are not
checked here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_LIMITED_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
# ranges a segment's prefix may not touch, by IP version
_FORBIDDEN_RANGES: dict[int, list[tuple[IPNetwork, str]]] = {
    4: [(ipaddress.ip_network("127.0.0.0/8"), "loopback"),
        (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
        (ipaddress.ip_network("255.255.255.255/32"), "the broadcast address")],
    6: [(ipaddress.ip_network("::1/128"), "loopback"),
        (ipaddress.ip_network("ff00::/8"), "multicast")],
}


def _no_zone(text: str) -> None:
    if "%" in text:
        raise ValueError(f"{text!r} is a scoped address (zone index after '%'): it names "
                         "an interface of one host, not an address in the network")


def _host(text: str) -> IPAddress:
    """``text`` as a unicast address that can belong to one machine."""
    _no_zone(text)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    plain = addr.ipv4_mapped if isinstance(addr, ipaddress.IPv6Address) else None
    for a in (addr, plain):
        if a is None:
            continue
        if a.is_unspecified:
            raise ValueError(f"{addr} is the unspecified address")
        if a.is_loopback:
            raise ValueError(f"{addr} is a loopback address")
        if a.is_multicast:
            raise ValueError(f"{addr} is a multicast address")
        if a == _LIMITED_BROADCAST:
            raise ValueError(f"{addr} is the broadcast address")
    return addr


def _inside(addr: IPAddress, net: IPNetwork, name: str, whose: str = "the segment's") -> None:
    if addr not in net:
        raise ValueError(f"{addr} is outside {whose} {name} {net}")
    if net.max_prefixlen - net.prefixlen < 2:
        return  # /31, /32, /127, /128: every address is a host address
    if addr == net.network_address:
        raise ValueError(f"{addr} is the network address of {net}")
    if net.version == 4 and addr == net.broadcast_address:
        raise ValueError(f"{addr} is the broadcast address of {net}")


def vm_address(text: str, prefixes: Iterable[IPNetwork] = ()) -> str:
    """A VM's address, normalised. With the segment's ``prefixes`` (subnet, subnet6) it
    must lie inside the one of its IP version; a link-local IPv6 address may not."""
    addr = _host(text)
    for net in prefixes:
        if net.version == addr.version and not (addr.version == 6 and addr.is_link_local):
            _inside(addr, net, "subnet" if net.version == 4 else "subnet6")
    return str(addr)


def gateway(text: str, net: IPNetwork | None, name: str, whose: str = "the segment's") -> str:
    """A segment's gateway, normalised: a host address inside ``net`` (the segment's
    prefix called ``name``: subnet or subnet6), which it needs. (An external network's
    addresses too, ``whose`` saying so.)"""
    if net is None:
        raise ValueError(f"a gateway needs {whose} {name}")
    addr = _host(text)
    if addr.version != net.version:
        raise ValueError(f"{addr} is not an IPv{net.version} address (the {name} is {net})")
    _inside(addr, net, name, whose)
    return str(addr)


def prefix(text: str, version: int) -> IPNetwork:
    """A segment's prefix of IP ``version`` (subnet: 4, subnet6: 6). Host bits are
    dropped (10.0.0.5/8 is 10.0.0.0/8)."""
    _no_zone(text)
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a valid CIDR") from None
    if net.version != version:
        raise ValueError(f"{net} is an IPv{net.version} prefix; "
                         + ("IPv6 prefixes go in subnet6" if version == 4 else
                            "subnet6 takes an IPv6 prefix"))
    if net.network_address.is_unspecified:
        raise ValueError(f"{net} starts at the unspecified address")
    for bad, what in _FORBIDDEN_RANGES[version]:
        if net.overlaps(bad):
            raise ValueError(f"{net} overlaps {what} ({bad})")
    return net


MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def is_mac(text: str) -> bool:
    """Six colon-separated hex octets (any case)."""
    return bool(MAC_RE.match(text.lower()))


def vm_mac(text: str) -> str:
    """A VM's MAC, lower-case with colons; ValueError saying why it cannot be one."""
    v = text.strip().lower().replace("-", ":")
    if not MAC_RE.match(v):
        raise ValueError("not a MAC address (six colon-separated hex octets)")
    if int(v[:2], 16) & 1:
        raise ValueError(f"{v} is a multicast/broadcast MAC: not a VM's address")
    if v == "00:00:00:00:00:00":
        raise ValueError("the all-zero MAC cannot be a VM's address")
    return v


def router_mac(name: str) -> str:
    """A router's MAC: locally administered unicast (first octet 0x0a), from a hash of
    its name, so every controller and every restart gives the same one."""
    digest = hashlib.sha256(b"vfence-router:" + name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x0A, *digest[:5]))
