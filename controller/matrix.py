"""What the policy allows from each group to each other: the console's matrix.

A pure reading of the policy, in the compiler's order: an isolation pair denies everything
between its groups, above any rule; then the rules in order, the first that matches a
connection deciding it; then the default (``intra_group`` within a group, ``inter_group``
between groups). A rule that names part of a group (one VM, a CIDR or a MAC that VMs of
it have now) or part of the traffic (a protocol, ports, an ICMP type, an ethertype)
decides only that part, so the rules after it still matter; the first rule that covers
both groups whole and all traffic decides the rest, and nothing after it is listed.
Segments still apart: VMs of different segments meet only through a router. A VM in
several groups is judged with all of them (any of its groups a rule or an isolation pair
names): :func:`elsewhere` lists such VMs, for which one group's cell is not the whole
story.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
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


def _covers(e: Endpoint, group: str, vms: list[Member]) -> str | None:
    """"whole" if the endpoint is the whole group, "part" if it is some of the group's
    VMs now (a VM, a CIDR or a MAC one of them has), else None."""
    if e.kind == "any" or (e.kind == "group" and e.value == group):
        return "whole"
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


class _Coverage:
    """Which rules name each group, as source and as destination: computed once per
    rule and group (the cells only look it up)."""

    def __init__(self, policy: Policy, groups: list[str],
                 members: dict[str, list[Member]]) -> None:
        self.src = {g: [_covers(r.src, g, members.get(g, [])) for r in policy.rules]
                    for g in groups}
        self.dst = {g: [_covers(r.dst, g, members.get(g, [])) for r in policy.rules]
                    for g in groups}
        self.what = [_traffic(r) for r in policy.rules]


def cell(policy: Policy, src: str, dst: str, cov: _Coverage) -> Cell:
    """From group ``src`` to group ``dst``, as the compiler orders it: isolation pairs,
    the rules, the intra-group allow (a group of the policy's, when intra_group is
    allow), the default between groups (for everything else, same group included)."""
    if (src, dst) in policy.isolation or (dst, src) in policy.isolation:
        return Cell(src, dst, "isolated", (Line("isolation pair", "deny", "all traffic"),))
    lines: list[Line] = []
    for i, r in enumerate(policy.rules):
        a, b = cov.src[src][i], cov.dst[dst][i]
        if a is None or b is None:
            continue
        parts = [f"{side} {e.kind} {e.value}" for side, e, c in
                 (("from", r.src, a), ("to", r.dst, b)) if c == "part"]
        what = cov.what[i]
        lines.append(Line(r.name, r.action, f"{' '.join(parts)}: {what}" if parts else what))
        if not parts and r.protocol == "any" and r.ethertype is None:
            break  # all traffic between the two groups: nothing after it is reached
    else:
        if src == dst and policy.intra_group == "allow" and src in policy.groups:
            lines.append(Line("within the group", "allow", "everything else"))
        else:
            lines.append(Line("default", policy.inter_group, "everything else"))
    actions = {"allow" if ln.action == "allow" else "deny" for ln in lines}
    verdict: Verdict = "partly allowed" if len(actions) > 1 else \
        "allowed" if actions == {"allow"} else "denied"
    return Cell(src, dst, verdict, tuple(lines))


def matrix(policy: Policy, groups: list[str], members: dict[str, list[Member]]
           ) -> list[list[Cell]]:
    """One row per source group, one cell per destination group, in ``groups`` order."""
    cov = _Coverage(policy, groups, members)
    return [[cell(policy, s, d, cov) for d in groups] for s in groups]


def elsewhere(groups: list[str], members: dict[str, list[Member]]) -> dict[str, list[str]]:
    """Group -> its VMs that are in other groups too: the datapath judges a VM with all
    its groups (their rules, isolation pairs and intra-group allows), so for these the
    cells of one group are not the whole story (``vfence trace`` is)."""
    count = Counter(name for vms in members.values() for name, _, _ in vms)
    return {g: [name for name, _, _ in members.get(g, []) if count[name] > 1] for g in groups}
