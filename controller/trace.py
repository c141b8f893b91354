"""``vfence trace``: why can (or can't) web-1 reach api-1 on 8443?

One packet, described by its source VM and its destination (a VM or an address),
protocol and port, is built as the source would send it (to the destination's MAC in
its segment, else to its router's) and walked through the flows *read from the switches*
(controller/walk.py's engine), one switch after another along the links LLDP found: an
output to a fabric port goes on at the switch at the other end. The answer: delivered or
dropped, every flow the packet met with its switch, table, band and owner in words, and
for a drop the flow that dropped it. A flow vfence did not install (a hand-added one) is
named as such. Pure: the caller reads the flows.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from . import addresses
from .errors import Invalid, NotFound
from .flows import OFPP_CONTROLLER, Flow, cookie_owner
from .model import VM, NetworkState, PortRef
from .pipeline import OWNERS, TABLE_SPECS, Band, Owner, table_name
from .walk import Pipeline, Unmodelled

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}
Verdict = Literal["delivered", "dropped", "to the controller", "misdelivered", "unknown"]
CT_NEW, CT_ESTABLISHED = 0x21, 0x22  # tracked + new / tracked + established
MAX_SWITCHES = 16  # switches one packet may cross (a loop ends here, reported)


@dataclass(frozen=True)
class Hop:
    switch: str
    table: int
    table_name: str  # (a table the pipeline does not declare: its number)
    priority: int
    owner: str  # in words: "rule web-db (allow)", "isolation pair front/payroll", ...
    band: str  # the pipeline's name for that priority band, "" for a foreign flow
    job: str  # what the band does, from the declared pipeline
    cookie: int
    match: dict[str, Any]


@dataclass
class Result:
    verdict: Verdict  # misdelivered: it came out, but not at the destination
    packet: dict[str, Any]
    hops: list[Hop] = field(default_factory=list)
    reached: list[str] = field(default_factory=list)  # VMs (or ports) it came out at
    reason: str = ""  # for a drop: the flow that dropped it, in words

    @property
    def dropped_by(self) -> Hop | None:
        return self.hops[-1] if self.verdict == "dropped" and self.hops else None


def _vm(state: NetworkState, text: str) -> VM | None:
    """A VM by name, else by one of its addresses."""
    if text in state.vms:
        return state.vms[text]
    try:
        addr = str(ipaddress.ip_address(text))
    except ValueError:
        return None
    return next((v for v in state.vms.values() if addr in v.ips), None)


def packet(state: NetworkState, src: str, dst: str, protocol: str = "tcp",
           port: int | None = None) -> tuple[PortRef, dict[str, Any]]:
    """Where the source VM's packet enters (its port) and the packet, as it would send
    it. Errors name the field: ``source``, ``destination``, ``protocol``, ``port``."""
    s = _vm(state, src)
    if s is None:
        raise NotFound(f"no VM is named or addressed {src!r}", "source")
    b = state.bindings.get(s.name)
    if b is None:
        raise Invalid(f"VM {s.name!r} is on no switch port", "source")
    d = _vm(state, dst)
    try:
        dst_ip = ipaddress.ip_address(dst) if d is None or dst not in state.vms else None
    except ValueError:
        raise NotFound(f"no VM is named or addressed {dst!r}, and it is no address",
                       "destination") from None
    if d is not None and dst_ip is None and not [i for i in d.ips if not _link_local(i)]:
        raise Invalid(f"VM {d.name!r} has no routable IP address (name one of its "
                      "link-local addresses instead)", "destination")
    src_ip = _address(s, dst_ip.version if dst_ip else None, d)
    if src_ip is None:
        raise Invalid(f"VM {s.name!r} has no IP address" if not s.ips else
                      f"VM {s.name!r} has no address of the destination's IP version",
                      "source")
    if dst_ip is None:
        assert d is not None
        dst_ip = ipaddress.ip_address(next(i for i in d.ips if ipaddress.ip_address(i).version
                                           == src_ip.version and not _link_local(i)))
    v6 = dst_ip.version == 6
    proto = _protocol(protocol, v6)
    pkt: dict[str, Any] = {
        "eth_src": s.mac, "eth_dst": _next_mac(state, s, d), "eth_type": 0x86DD if v6 else 0x0800,
        f"ipv{dst_ip.version}_src": str(src_ip), f"ipv{dst_ip.version}_dst": str(dst_ip),
        "ip_proto": proto}
    if proto in (6, 17):
        if port is None or not 0 < port < 65536:
            raise Invalid(f"{protocol} needs a port, 1..65535", "port")
        name = "tcp" if proto == 6 else "udp"
        pkt |= {f"{name}_src": 40000, f"{name}_dst": port}
        if proto == 6:
            pkt["tcp_flags"] = 0x002  # the first packet: SYN
    elif port is not None:
        raise Invalid(f"{protocol} has no ports", "port")
    else:  # an echo request, code 0
        icmp = "icmpv6" if v6 else "icmpv4"
        pkt |= {f"{icmp}_type": 128 if v6 else 8, f"{icmp}_code": 0}
    pkt |= {"ip_dscp": 0, "ip_ecn": 0}
    return b.port, pkt


def _link_local(ip: str) -> bool:
    return ipaddress.ip_address(ip).is_link_local


def _address(vm: VM, version: int | None, peer: VM | None
             ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The VM's first (not link-local) address of ``version``, or of any version the
    peer has too (IPv4 first)."""
    versions = [version] if version else [4, 6]
    for v in versions:
        ips = [ipaddress.ip_address(i) for i in vm.ips if not _link_local(i)]
        mine = [i for i in ips if i.version == v]
        if mine and (peer is None or version or any(
                ipaddress.ip_address(i).version == v and not _link_local(i)
                for i in peer.ips)):
            return mine[0]
    return None


def _protocol(text: str, v6: bool) -> int:
    if text == "icmp":
        return 58 if v6 else 1
    if text in PROTOCOLS:
        return PROTOCOLS[text]
    raise Invalid(f"{text!r}: one of tcp, udp, icmp", "protocol")


def _next_mac(state: NetworkState, s: VM, d: VM | None) -> str:
    """The destination's MAC in the source's segment, else its router's."""
    if d is not None and d.segment == s.segment:
        return d.mac
    router = state.policy.router_of.get(s.segment)
    if router is not None:
        return addresses.router_mac(router)
    if d is not None:  # another segment, no router: sent to it anyway (and dropped)
        return d.mac
    raise Invalid(f"no VM has that address, and no router joins segment {s.segment!r} "
                  "to take it (its MAC is not known)", "destination")


def walk(state: NetworkState, flows: Mapping[int, list[Flow]], start: PortRef,
         pkt: dict[str, Any], established: bool = False, target: str | None = None
         ) -> Result:
    """The packet from ``start`` through every switch it reaches. ``target``: the VM it
    is for (delivered means there); without one, leaving any port but the controller's
    counts."""
    peers = {lk.src: lk.dst for lk in state.links}
    at_port = {b.port: name for name, b in state.bindings.items()}
    out = Result("dropped", dict(pkt))
    todo, seen = [(start, dict(pkt))], 0
    ended: list[str] = []
    while todo:
        at, p = todo.pop(0)
        seen += 1
        if seen > MAX_SWITCHES:
            return _unknown(out, f"more than {MAX_SWITCHES} switches: a loop?")
        if at.dpid not in flows:
            return _unknown(out, f"switch {state.switch_name(at.dpid)}'s flows were not read")
        pipe = Pipeline(flows[at.dpid])
        try:
            outputs = pipe.run({**p, "in_port": at.port_no},
                               CT_ESTABLISHED if established else CT_NEW)
        except Unmodelled as e:  # the hops so far stay: they show where it stopped
            outputs = []
            _unknown(out, f"on {state.switch_name(at.dpid)}: {e}")
        out.hops += [_hop(state, at.dpid, f) for f in pipe.trace]
        if out.verdict == "unknown":
            return out
        for port, q in outputs:
            ref = PortRef(at.dpid, port)
            if port == OFPP_CONTROLLER:
                ended.append("controller")
            elif ref in peers:
                todo.append((peers[ref], {k: v for k, v in q.items() if k != "in_port"}))
            else:
                out.reached.append(at_port.get(ref, f"{state.switch_name(at.dpid)} port {port}"))
    if target is not None and out.reached == [target] or target is None and out.reached:
        out.verdict = "delivered"
    elif target is not None and target in out.reached:  # and elsewhere too: a leak
        out.verdict = "misdelivered"
        out.reason = f"reached {target} and also {', '.join(r for r in out.reached if r != target)}"
    elif ended and not out.reached and _logged(state, out.hops):
        out.reason = f"{_words(out.hops[-1])} (a sample goes to the controller, which logs it)"
    elif ended and not out.reached:
        out.verdict = "to the controller"
        out.reason = _words(out.hops[-1]) if out.hops else ""
    elif out.reached:
        out.verdict, out.reason = "misdelivered", f"reached {', '.join(out.reached)} only"
    elif out.hops:
        out.reason = _words(out.hops[-1])
    return out


def _logged(state: NetworkState, hops: list[Hop]) -> bool:
    """Whether the last flow is a deny-and-log rule's: the packet is dropped, and only a
    sample of it reaches the controller."""
    owner = cookie_owner(hops[-1].cookie) if hops else None
    return owner is not None and owner[0] == Owner.RULE and any(
        r.priority == owner[1] and r.action == "deny-and-log" for r in state.policy.rules)


def _unknown(out: Result, why: str) -> Result:
    out.verdict, out.reason = "unknown", why
    return out


def trace(state: NetworkState, flows: Mapping[int, list[Flow]], src: str, dst: str,
          protocol: str = "tcp", port: int | None = None, established: bool = False
          ) -> Result:
    """:func:`packet`, then :func:`walk` to the destination VM (if it is one)."""
    start, pkt = packet(state, src, dst, protocol, port)
    d = _vm(state, dst)
    return walk(state, flows, start, pkt, established, d.name if d else None)


def band_of(f: Flow) -> Band | None:
    """The declared band a flow of ours sits in (None for a foreign flow)."""
    spec = TABLE_SPECS.get(f.table)
    return spec.band_at(f.priority) if spec and cookie_owner(f.cookie) is not None else None


def _hop(state: NetworkState, dpid: int, f: Flow) -> Hop:
    spec = TABLE_SPECS.get(f.table)
    band = band_of(f)
    return Hop(state.switch_name(dpid), f.table,
               table_name(f.table) if spec is not None else str(f.table), f.priority,
               owner_words(state, f),
               band.name if band else "", band.job if band else "", f.cookie,
               {k: list(v) if isinstance(v, tuple) else v for k, v in f.match})


def owner_words(state: NetworkState, f: Flow) -> str:
    """Who installed the flow, in words: "rule web-to-api (allow)", "VM api-1", ..."""
    owner = cookie_owner(f.cookie)
    if owner is None:
        return f"a flow vfence did not install (cookie {f.cookie:#x})"
    kind, n = owner
    pol = state.policy
    if kind == Owner.RULE:
        rule = next((r for r in pol.rules if r.priority == n), None)
        return f"rule {rule.name} ({rule.action})" if rule else f"rule #{n} (gone)"
    if kind == Owner.ISOLATION:
        pair = pol.isolation[n] if n < len(pol.isolation) else None
        return f"isolation pair {pair[0]}/{pair[1]}" if pair else f"isolation pair #{n}"
    if kind == Owner.VM:
        vm = next((v.name for v in state.vms.values() if v.id == n), None)
        return f"VM {vm}" if vm else f"VM #{n}"
    if kind == Owner.ROUTER:
        router = next((r for r, k in state.router_numbers.items() if k == n), None)
        return f"router {router}" if router else f"router #{n}"
    if kind == Owner.SEGMENT:
        seg = next((s for s, t in state.segment_tags.items() if t == n), None)
        return f"segment {seg}" if seg else f"segment #{n}"
    if kind == Owner.POLICY and n:
        group = next((g for g, b in state.group_bits.items() if b + 1 == n), None)
        return f"policy: within group {group}"
    return OWNERS[kind].owns.split(":")[0]


def _words(h: Hop) -> str:
    """What dropped it: the owner, the table and what that band does."""
    where = h.table_name if h.table in TABLE_SPECS else f"table {h.table}"
    return f"{h.owner}, in {where} on {h.switch}" + (f": {h.job}" if h.job else "")
