"""What the policy allows from each group to each other: the console's matrix.

A pure reading of the policy, in the compiler's order: an isolation pair denies everything
between its groups, above any rule; then the rules in order, the first that matches a
connection deciding it; then the default (``intra_group`` within a group, ``inter_group``
between groups). A rule that names part of a group (one VM, a CIDR or a MAC that VMs of
it have now) or part of the traffic (a protocol, ports, an ICMP type, an ethertype)
decides only that part, so the rules after it still matter; the first rule that covers
both groups whole and all traffic decides the rest, and nothing after it is listed.
Segments still apart: VMs of different segments meet only through a router.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from .model import Endpoint, Policy, Rule

Member = tuple[str, str, tuple[str, ...]]  # a VM of a group: name, MAC, addresses
Verdict = Literal["isolated", "allowed", "denied", "partly allowed"]


@dataclass(frozen=True)
class Line:
    """One step of a cell's story: a rule that applies, or the default."""

    name: str  # the rule's name, or "default" / "isolation pair"
    action: str  # allow | deny | deny-and-log
    what: str  # the traffic it decides: "tcp/8443", "all traffic", "from VM web-1: all"


@dataclass(frozen=True)
class Cell:
    src: str
    dst: str
    verdict: Verdict
    lines: tuple[Line, ...]

    @property
    def summary(self) -> str:
        """What a partly allowed cell lets through, in short: "tcp/8443, icmp" when the
        last word (the default or a rule for all traffic) denies, "all but udp/9000"
        when it allows."""
        *parts, last = self.lines
        if last.action == "allow":
            return "all but " + ", ".join(ln.what for ln in parts if ln.action != "allow")
        return ", ".join(ln.what for ln in parts if ln.action == "allow")


def _covers(e: Endpoint, group: str, members: dict[str, list[Member]]) -> str | None:
    """"whole" if the endpoint is the whole group, "part" if it is some of the group's
    VMs now (a VM, a CIDR or a MAC one of them has), else None."""
    if e.kind == "any" or (e.kind == "group" and e.value == group):
        return "whole"
    vms = members.get(group, [])
    if e.kind == "vm":
        hit = any(name == e.value for name, _, _ in vms)
    elif e.kind == "mac":
        hit = any(mac == e.value.lower() for _, mac, _ in vms)
    elif e.kind == "cidr":
        net = ipaddress.ip_network(e.value, strict=False)
        hit = any(ipaddress.ip_address(ip.split("%")[0]) in net for _, _, ips in vms
                  for ip in ips)
    else:
        hit = False
    return "part" if hit else None


def _traffic(r: Rule) -> str:
    """The traffic a rule names, in short."""
    if r.ethertype is not None:
        return f"ethertype {r.ethertype:#06x}"
    if r.protocol == "any":
        return "all traffic"
    ports = ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in r.ports)
    icmp = "" if r.icmp_type is None else f" type {r.icmp_type}" + (
        "" if r.icmp_code is None else f" code {r.icmp_code}")
    return f"{r.protocol}{'/' + ports if ports else ''}{icmp}"


def cell(policy: Policy, src: str, dst: str, members: dict[str, list[Member]]) -> Cell:
    """From group ``src`` to group ``dst`` (``members``: group -> its VMs)."""
    if (src, dst) in policy.isolation or (dst, src) in policy.isolation:
        return Cell(src, dst, "isolated", (Line("isolation pair", "deny", "all traffic"),))
    lines: list[Line] = []
    for r in policy.rules:
        a, b = _covers(r.src, src, members), _covers(r.dst, dst, members)
        if a is None or b is None:
            continue
        what = _traffic(r)
        parts = [f"{side} {e.kind} {e.value}" for side, e, c in
                 (("from", r.src, a), ("to", r.dst, b)) if c == "part"]
        lines.append(Line(r.name, r.action, f"{' '.join(parts)}: {what}" if parts else what))
        if not parts and what == "all traffic":
            break
    else:
        default = policy.intra_group if src == dst else policy.inter_group
        lines.append(Line("default", default, "everything else"))
    actions = {"allow" if ln.action == "allow" else "deny" for ln in lines}
    verdict: Verdict = "partly allowed" if len(actions) > 1 else \
        "allowed" if actions == {"allow"} else "denied"
    return Cell(src, dst, verdict, tuple(lines))


def matrix(policy: Policy, groups: list[str], members: dict[str, list[Member]]
           ) -> list[list[Cell]]:
    """One row per source group, one cell per destination group, in ``groups`` order."""
    return [[cell(policy, s, d, members) for d in groups] for s in groups]
